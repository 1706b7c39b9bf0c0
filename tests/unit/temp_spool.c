/*
 * temp_spool.c - see temp_spool.h.
 */
#include "tests/unit/temp_spool.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

struct temp_spool *temp_spool_new(void)
{
    struct temp_spool *ts = g_new0(struct temp_spool, 1);
    GError *err = NULL;

    ts->dir = g_dir_make_tmp("postern-test-XXXXXX", NULL);
    assert_non_null(ts->dir);
    assert_true(config_load(&ts->cfg, NULL, &err));
    g_free(ts->cfg.spool.dir);
    ts->cfg.spool.dir = g_strdup(ts->dir);
    ts->cfg.spool.map_size = 1 << 20;
    ts->cfg.spool.max_size = 8 << 20;
    if (!spool_open(&ts->sp, &ts->cfg, &err))
        fail_msg("spool %s: %s", ts->dir, err->message);
    return ts;
}

void temp_spool_free(struct temp_spool *ts)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", ts->dir);

    spool_close(ts->sp);
    config_free(&ts->cfg);
    assert_int_equal(system(cmd), 0);
    g_free(ts->dir);
    g_free(ts);
}

int temp_spool_setup(void **state)
{
    *state = temp_spool_new();
    return 0;
}

int temp_spool_teardown(void **state)
{
    temp_spool_free(*state);
    return 0;
}

gboolean temp_spool_put_msg(struct spool_txn *t, void *ctx, GError **err)
{
    struct temp_msg *p = ctx;
    struct spool_msg m;
    gboolean ok;

    if (!(p->id = spool_id_next(t, err)))
        return FALSE;
    spool_msg_init(&m);
    m.id = p->id;
    m.state = MSG_INCOMING;
    m.arrival = 1000;
    m.size = p->len;
    m.sender = g_strdup("a@b.no");
    g_ptr_array_add(m.recipients, g_strdup("restricted@abakus.no"));
    for (int i = 0; i < p->extra_rcpts; i++)
        g_ptr_array_add(m.recipients, g_strdup_printf("restricted+%06d@abakus.no", i));
    ok = spool_msg_insert(t, &m, err) && spool_body_put(t, DB_BODIES, m.id, p->body, p->len, err);
    spool_msg_clear(&m);
    return ok;
}
