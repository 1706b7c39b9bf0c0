/*
 * test_relay_state.c - the relay pause in the spool (spool/relay_state.h):
 * its record round trip, records of the older 12-byte layout, and the
 * rule that one event makes one pause.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "spool/relay_state.h"
#include "spool/spool_lmdb.h"

struct fixture {
    char *dir;
    struct postern_config cfg;
    struct spool *sp;
};

static int setup(void **state)
{
    struct fixture *f = g_new0(struct fixture, 1);
    GError *err = NULL;

    f->dir = g_dir_make_tmp("postern-relay-XXXXXX", NULL);
    assert_true(config_load(&f->cfg, NULL, &err));
    g_free(f->cfg.spool.dir);
    f->cfg.spool.dir = g_strdup(f->dir);
    f->cfg.spool.map_size = 1 << 20;
    f->cfg.spool.max_size = 8 << 20;
    assert_true(spool_open(&f->sp, &f->cfg, &err));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", f->dir);

    spool_close(f->sp);
    config_free(&f->cfg);
    assert_int_equal(system(cmd), 0);
    g_free(f->dir);
    g_free(f);
    return 0;
}

static gboolean put_state(struct spool_txn *t, void *ctx, GError **err)
{
    return relay_state_put(t, ctx, err);
}

static gboolean put_raw(struct spool_txn *t, void *ctx, GError **err)
{
    MDB_val key = { 11, (void *)"relay.pause" }, val = { 12, ctx };

    return mdb_put(t->txn, spool_dbi(t->sp, DB_META), &key, &val, 0) == 0;
}

static void get_state(struct fixture *f, struct relay_state *st)
{
    struct spool_txn t;
    GError *err = NULL;

    assert_true(spool_read_begin(f->sp, &t, &err));
    if (!relay_state_get(&t, st, &err))
        fail_msg("relay_state_get: %s", err->message);
    spool_read_end(&t);
}

static void test_round_trip(void **state)
{
    struct fixture *f = *state;
    struct relay_state st = { .paused_until = 1800000000123, .pauses = 3, .since = 77 }, got;

    get_state(f, &got);
    assert_int_equal(got.paused_until, 0);
    assert_false(relay_state_paused(&got, 1));
    g_strlcpy(st.reason, "550 5.4.5 Daily user sending quota exceeded.", sizeof(st.reason));
    assert_true(spool_write(f->sp, put_state, &st, NULL));
    get_state(f, &got);
    assert_int_equal(got.paused_until, st.paused_until);
    assert_int_equal(got.pauses, 3);
    assert_int_equal(got.since, 77);
    assert_string_equal(got.reason, st.reason);
    assert_true(relay_state_paused(&got, 1800000000122));
    assert_false(relay_state_paused(&got, 1800000000123));

    /* A reason too long is cut, never overruns. */
    memset(st.reason, 'x', sizeof(st.reason));
    assert_true(spool_write(f->sp, put_state, &st, NULL));
    get_state(f, &got);
    assert_int_equal(strlen(got.reason), RELAY_REASON_MAX - 1);
}

/* What an older version wrote: until and pauses only. */
static void test_old_record(void **state)
{
    struct fixture *f = *state;
    unsigned char old[12];
    struct relay_state got;

    spool_be64(old, 1800000000000);
    spool_be32(old + 8, 2);
    assert_true(spool_write(f->sp, put_raw, old, NULL));
    get_state(f, &got);
    assert_int_equal(got.paused_until, 1800000000000);
    assert_int_equal(got.pauses, 2);
    assert_int_equal(got.since, 0);
    assert_string_equal(got.reason, "");
}

/*
 * Two jobs leased together both meet the quota: the first reply begins a
 * pause, the second (leased before that pause began) must not begin
 * another and double it; a job leased after the pause began is news.
 */
static void test_one_pause_per_event(void **state)
{
    struct relay_state none = { 0 };
    struct relay_state paused = { .paused_until = 2000, .pauses = 1, .since = 500 };

    assert_true(relay_state_news(&none, 1));
    assert_false(relay_state_news(&paused, 499));
    assert_true(relay_state_news(&paused, 500));
    assert_true(relay_state_news(&paused, 501));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_old_record, setup, teardown),
        cmocka_unit_test(test_one_pause_per_event),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
