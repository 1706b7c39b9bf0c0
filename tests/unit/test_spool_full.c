/*
 * test_spool_full.c - a full spool can still be emptied (issue 9, item 8).
 *
 * Ingest fills the spool until it is refused (452); then spoolctl delete
 * and purge, in another process, must still commit: LMDB copies every
 * page a delete changes, so without a reserve a full map or a full file
 * system refuses the remedy too.  The file-system case mounts a small
 * tmpfs in a mount namespace of its own, and is skipped where that is
 * not allowed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include "spool/spool.h"
#include "tests/unit/temp_spool.h"

#define BODY_LEN 3000               /* two chunks: about two pages a message */
#define SKIPPED 77

struct del_msgs {
    GArray *ids;                    /* queue_id */
    guint from, n;
};

static gboolean delete_messages(struct spool_txn *t, void *ctx, GError **err)
{
    struct del_msgs *d = ctx;

    for (guint i = d->from; i < d->from + d->n && i < d->ids->len; i++)
        if (!spool_msg_delete(t, g_array_index(d->ids, queue_id, i), err))
            return FALSE;
    return TRUE;
}

/* Store messages of body_len until the spool refuses: their ids, and the refusal. */
static GArray *fill(struct spool *sp, size_t body_len, GError **refusal)
{
    g_autofree char *body = g_malloc(body_len);
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(queue_id));

    memset(body, 'z', body_len);
    for (int i = 0; i < 100000; i++) {
        struct temp_msg p = { body, body_len, 0 };

        if (!spool_write(sp, temp_spool_put_msg, &p, refusal))
            break;
        g_array_append_val(ids, p.id);
    }
    return ids;
}

static void config_for(struct postern_config *cfg, const char *dir, uint64_t map, uint64_t max)
{
    GError *err = NULL;

    assert_true(config_load(cfg, NULL, &err));
    g_free(cfg->spool.dir);
    cfg->spool.dir = g_strdup(dir);
    cfg->spool.map_size = map;
    cfg->spool.max_size = max;
}

/*
 * The map at max_size: ingest is refused with a warning that says what is
 * full and what to do; spoolctl (another process, with the reserve)
 * deletes a page of messages; ingest then stores again.
 */
static void test_full_map_still_deletes(void **state)
{
    g_autofree char *dir = g_dir_make_tmp("postern-full-XXXXXX", NULL);
    g_autofree char *rm = g_strdup_printf("rm -rf '%s'", dir);
    struct postern_config cfg;
    struct spool *sp;
    GError *err = NULL;
    g_autoptr(GArray) ids = NULL;
    char body[BODY_LEN] = { 0 };
    struct temp_msg p = { body, sizeof(body), 0 };
    pid_t pid;
    int status;

    config_for(&cfg, dir, 1 << 20, 2 << 20);
    assert_true(spool_open(&sp, &cfg, &err));
    ids = fill(sp, BODY_LEN, &err);
    assert_true(ids->len > 100);
    assert_true(g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_FULL));
    assert_non_null(strstr(err->message, dir));
    assert_non_null(strstr(err->message, "max_size"));
    assert_non_null(strstr(err->message, "spoolctl purge"));
    g_clear_error(&err);

    /* spoolctl: its own process, its own environment. */
    if ((pid = fork()) == 0) {
        struct spool *ctl;
        struct del_msgs d = { ids, 0, 256 };
        GError *e = NULL;

        if (!spool_open(&ctl, &cfg, &e)) {
            fprintf(stderr, "spoolctl open: %s\n", e->message);
            _exit(1);
        }
        spool_use_reserve(ctl);
        for (d.from = 0; d.from < ids->len; d.from += d.n)
            if (!spool_write(ctl, delete_messages, &d, &e)) {
                fprintf(stderr, "delete from %u: %s\n", d.from, e->message);
                _exit(2);
            }
        spool_close(ctl);
        _exit(0);
    }
    assert_true(waitpid(pid, &status, 0) == pid && WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    /* The room is back for ingest, and the reserve still kept. */
    if (!spool_write(sp, temp_spool_put_msg, &p, &err))
        fail_msg("store after the delete: %s", err->message);
    g_array_unref(fill(sp, BODY_LEN, &err));
    assert_true(g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_FULL));
    g_clear_error(&err);
    spool_close(sp);
    config_free(&cfg);
    assert_int_equal(system(rm), 0);
}

/*
 * The child of test_full_fs_still_deletes, in its own mount namespace
 * with a 3 MiB tmpfs: fill it (small messages, then one too large for
 * what is left, which fails on the disk, not in the map); the refusals
 * must say "file system"; then deletes with the reserve must commit.
 */
static int full_fs_child(const char *dir)
{
    struct postern_config cfg;
    struct spool *sp;
    GError *err = NULL;
    GArray *ids;
    struct del_msgs d;
    g_autofree char *big = g_malloc0(2 << 20);
    struct temp_msg p = { big, 2 << 20, 0 };

    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
        mount("tmpfs", dir, "tmpfs", 0, "size=3m") < 0) {
        fprintf(stderr, "no tmpfs here (%s): skipped\n", g_strerror(errno));
        return SKIPPED;
    }
    /* max_size far beyond the disk: the file system is what fills. */
    config_for(&cfg, dir, 1 << 20, 64 << 20);
    if (!spool_open(&sp, &cfg, &err)) {
        fprintf(stderr, "open: %s\n", err->message);
        return 1;
    }
    ids = fill(sp, BODY_LEN, &err);
    if (!ids->len || !g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_FULL) ||
        !strstr(err->message, "file system")) {
        fprintf(stderr, "fill: %u stored, then: %s\n", ids->len, err ? err->message : "-");
        return 2;
    }
    fprintf(stderr, "refused after %u: %s\n", ids->len, err->message);
    g_clear_error(&err);

    /*
     * Now as spoolctl: a message larger than the disk has left fails in
     * the commit (ENOSPC, or EIO from a short write), and says why.
     */
    spool_use_reserve(sp);
    if (spool_write(sp, temp_spool_put_msg, &p, &err) ||
        !g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_FULL) ||
        !strstr(err->message, "file system")) {
        fprintf(stderr, "too large a message: %s\n", err ? err->message : "stored");
        return 3;
    }
    fprintf(stderr, "too large: %s\n", err->message);
    g_clear_error(&err);
    d = (struct del_msgs){ ids, 0, 256 };
    for (d.from = 0; d.from < ids->len; d.from += d.n)
        if (!spool_write(sp, delete_messages, &d, &err)) {
            fprintf(stderr, "delete from %u of %u: %s\n", d.from, ids->len, err->message);
            return 4;
        }
    g_array_unref(ids);
    spool_close(sp);
    config_free(&cfg);
    return 0;
}

static void test_full_fs_still_deletes(void **state)
{
    g_autofree char *dir = g_dir_make_tmp("postern-fullfs-XXXXXX", NULL);
    pid_t pid;
    int status;

    if ((pid = fork()) == 0)
        _exit(full_fs_child(dir));
    assert_true(waitpid(pid, &status, 0) == pid && WIFEXITED(status));
    rmdir(dir);
    if (WEXITSTATUS(status) == SKIPPED)
        skip();
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_map_still_deletes),
        cmocka_unit_test(test_full_fs_still_deletes),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
