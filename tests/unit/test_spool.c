/*
 * test_spool.c - the LMDB spool: ids, records, state index and counters,
 * chunked bodies, delivery indexes, tokens, map growth and its cap, the
 * message record's layouts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "spool/delivery.h"
#include "common/log.h"
#include "spool/spool.h"
#include "spool/spool_events.h"
#include "spool/spool_hist.h"
#include "spool/spool_stats.h"
#include "tests/unit/temp_spool.h"
#include "spool/spool_lmdb.h"
#include "spool/spool_token.h"
#include "spool/spool_token_json.h"


static queue_id store(struct temp_spool *f, const char *body, size_t len, GError **err)
{
    struct temp_msg p = { body, len, 0, 0 };
    return spool_write(f->sp, temp_spool_put_msg, &p, err) ? p.id : 0;
}

static void test_ids(void **state)
{
    queue_id prev = 0, id;
    char text[QUEUE_ID_LEN + 1];
    struct temp_spool *f = *state;

    for (int i = 0; i < 50; i++) {
        assert_true((id = store(f, "x", 1, NULL)) > prev);
        prev = id;
    }
    spool_id_format(id, text);
    assert_int_equal(strlen(text), 16);
    assert_true(spool_id_parse(text, &prev) && prev == id);
    assert_false(spool_id_parse("12345", &prev));
    assert_false(spool_id_parse("zzzzzzzzzzzzzzzz", &prev));
}

/* Bodies of every size around the chunk boundary come back byte-exact. */
static void test_bodies(void **state)
{
    struct temp_spool *f = *state;
    size_t sizes[] = {0, 1, SPOOL_CHUNK - 1, SPOOL_CHUNK, SPOOL_CHUNK + 1, 3 * SPOOL_CHUNK, 300000};

    for (size_t s = 0; s < G_N_ELEMENTS(sizes); s++) {
        g_autofree char *body = g_malloc(sizes[s] + 1);
        g_autoptr(GByteArray) out = g_byte_array_new();
        struct spool_txn t;
        queue_id id;

        for (size_t i = 0; i < sizes[s]; i++)
            body[i] = (char)(i * 7 + s);
        assert_true((id = store(f, body, sizes[s], NULL)));
        assert_true(spool_read_begin(f->sp, &t, NULL));
        assert_true(spool_body_get(&t, DB_BODIES, id, out, NULL));
        spool_read_end(&t);
        assert_int_equal(out->len, sizes[s]);
        assert_memory_equal(out->data, body, sizes[s]);
    }
}

struct change_state {
    queue_id id;
    enum msg_state to;
};

static gboolean do_change(struct spool_txn *t, void *ctx, GError **err)
{
    struct change_state *c = ctx;
    struct spool_msg m;
    gboolean ok;

    if (!spool_msg_get(t, c->id, &m, err))
        return FALSE;
    ok = spool_msg_set_state(t, &m, c->to, "test", err);
    spool_msg_clear(&m);
    return ok;
}

static gboolean do_delete(struct spool_txn *t, void *ctx, GError **err)
{
    return spool_msg_delete(t, *(queue_id *)ctx, err);
}

static gboolean count_one(queue_id id, void *ctx)
{
    (*(int *)ctx)++;
    return TRUE;
}

static void test_states(void **state)
{
    struct temp_spool *f = *state;
    queue_id a = store(f, "a", 1, NULL), b = store(f, "b", 1, NULL);
    struct change_state c = { a, MSG_REJECTED };
    struct spool_txn t;
    struct spool_msg m;
    int n = 0;

    assert_true(spool_write(f->sp, do_change, &c, NULL));
    assert_true(spool_read_begin(f->sp, &t, NULL));
    assert_int_equal(spool_counter_get(&t, "msg.incoming"), 1);
    assert_int_equal(spool_counter_get(&t, "msg.rejected"), 1);
    assert_true(spool_msg_foreach(&t, MSG_INCOMING, 0, count_one, &n, NULL));
    assert_int_equal(n, 1);
    assert_true(spool_msg_get(&t, a, &m, NULL));
    assert_int_equal(m.state, MSG_REJECTED);
    assert_string_equal(m.reason, "test");
    assert_int_equal(m.history->len, 2);
    spool_msg_clear(&m);
    spool_read_end(&t);

    /* Delete: record, body, index and counter all go. */
    assert_true(spool_write(f->sp, do_delete, &b, NULL));
    assert_true(spool_read_begin(f->sp, &t, NULL));
    assert_int_equal(spool_counter_get(&t, "msg.incoming"), 0);
    assert_false(spool_msg_get(&t, b, &m, NULL));
    g_autoptr(GByteArray) body = g_byte_array_new();
    GError *err = NULL;
    assert_false(spool_body_get(&t, DB_BODIES, b, body, &err));
    assert_true(g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND));
    g_error_free(err);
    spool_read_end(&t);
}

/* Every legal move, one after the other, as the table in spool_msg.c lists them. */
static void test_state_edges(void **state)
{
    static const enum msg_state path[] = {
        MSG_HOLD, MSG_INCOMING, MSG_READY, MSG_DEFERRED, MSG_READY, MSG_HOLD, MSG_READY,
        MSG_HOLD, MSG_READY, MSG_DONE,
    };
    static const enum msg_state path2[] = { MSG_READY, MSG_DEFERRED, MSG_HOLD, MSG_DEFERRED,
                                            MSG_DONE };
    struct temp_spool *f = *state;
    queue_id a = store(f, "a", 1, NULL), b = store(f, "b", 1, NULL), c = store(f, "c", 1, NULL);
    struct change_state ch;
    struct spool_txn t;
    struct spool_msg m;
    int legal = 0;

    for (size_t i = 0; i < G_N_ELEMENTS(path); i++) {
        ch = (struct change_state){ a, path[i] };
        assert_true(spool_write(f->sp, do_change, &ch, NULL));
    }
    for (size_t i = 0; i < G_N_ELEMENTS(path2); i++) {
        ch = (struct change_state){ b, path2[i] };
        assert_true(spool_write(f->sp, do_change, &ch, NULL));
    }
    ch = (struct change_state){ c, MSG_DONE };
    assert_true(spool_write(f->sp, do_change, &ch, NULL));

    assert_true(spool_read_begin(f->sp, &t, NULL));
    assert_true(spool_msg_get(&t, a, &m, NULL));
    assert_int_equal(m.state, MSG_DONE);
    assert_int_equal(m.history->len, G_N_ELEMENTS(path) + 1);
    spool_msg_clear(&m);
    assert_int_equal(spool_counter_get(&t, "msg.done"), 3);
    assert_int_equal(spool_counter_get(&t, "msg.incoming"), 0);
    assert_int_equal(spool_counter_get(&t, "msg.hold"), 0);
    spool_read_end(&t);

    /* The table: 14 moves; nothing leaves rejected or done; no move to incoming but release. */
    for (int from = 0; from < MSG_STATE_COUNT; from++)
        for (int to = 0; to < MSG_STATE_COUNT; to++)
            legal += msg_state_can_move(from, to);
    assert_int_equal(legal, 14);
    for (int to = 0; to < MSG_STATE_COUNT; to++) {
        assert_false(msg_state_can_move(MSG_REJECTED, to));
        assert_false(msg_state_can_move(MSG_DONE, to));
        assert_false(msg_state_can_move(to, to));
        assert_int_equal(msg_state_can_move(to, MSG_INCOMING), to == MSG_HOLD);
    }
    assert_true(msg_state_can_move(MSG_INCOMING, MSG_DONE));
    assert_false(msg_state_can_move(MSG_INCOMING, MSG_DEFERRED));
    assert_false(msg_state_can_move(MSG_REJECTED, MSG_READY));
    /* A discard of a message awaiting approval (spool_steer.h); no other way out to rejected. */
    assert_true(msg_state_can_move(MSG_HOLD, MSG_REJECTED));
    assert_false(msg_state_can_move(MSG_READY, MSG_REJECTED));
}

/*
 * An illegal move panics before it writes: in a child, whose stderr must
 * name the queue id and both states.  The check comes before any LMDB
 * call, so the child needs no transaction of its own (an LMDB environment
 * must not be used across fork()).
 */
static void test_state_illegal_panics(void **state)
{
    int fds[2], status;
    char buf[512] = "";
    ssize_t n, got = 0;
    pid_t pid;

    (void)state;
    assert_int_equal(pipe(fds), 0);
    if ((pid = fork()) == 0) {
        struct spool_txn t = { 0 };
        struct spool_msg m;
        struct rlimit no_core = { 0, 0 };

        /* The abort is expected: no core file for it. */
        setrlimit(RLIMIT_CORE, &no_core);
        dup2(fds[1], 2);
        close(fds[0]);
        spool_msg_init(&m);
        m.id = 0x1234;
        m.state = MSG_DONE;
        spool_msg_set_state(&t, &m, MSG_READY, NULL, NULL);
        _exit(0);
    }
    close(fds[1]);
    while ((n = read(fds[0], buf + got, sizeof(buf) - 1 - (size_t)got)) > 0)
        got += n;
    close(fds[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_non_null(strstr(buf, "0000000000001234"));
    assert_non_null(strstr(buf, "from done to ready"));
}

struct dlv_case {
    queue_id msg;
    enum dlv_state state;
    gboolean held;
};

static gboolean put_dlv(struct spool_txn *t, void *ctx, GError **err)
{
    struct dlv_case *c = ctx;
    struct spool_dlv d;
    gboolean ok;

    spool_dlv_init(&d);
    d.msg = c->msg;
    d.idx = 0;
    d.rcpt = g_strdup("x@y.no");
    d.state = c->state;
    d.held = c->held;
    d.next_try = 5;
    d.lease_expiry = 7000;
    d.lease = 42;
    ok = spool_dlv_put(t, &d, err);
    spool_dlv_clear(&d);
    return ok;
}

static uint64_t db_entries(struct temp_spool *f, enum spool_db db)
{
    struct spool_txn t;
    MDB_stat st;

    assert_true(spool_read_begin(f->sp, &t, NULL));
    mdb_stat(t.txn, spool_dbi(f->sp, db), &st);
    spool_read_end(&t);
    return st.ms_entries;
}

/* A delivery is in `due` exactly when ready/deferred and not held, in `leases` when leased. */
static void test_delivery_indexes(void **state)
{
    struct temp_spool *f = *state;
    struct dlv_case c = { store(f, "m", 1, NULL), DLV_READY, FALSE };
    struct { enum dlv_state s; gboolean held; int due, leases; } steps[] = {
        { DLV_READY, FALSE, 1, 0 }, { DLV_LEASED, FALSE, 0, 1 }, { DLV_DEFERRED, FALSE, 1, 0 },
        { DLV_DEFERRED, TRUE, 0, 0 }, { DLV_DEFERRED, FALSE, 1, 0 }, { DLV_SENT, FALSE, 0, 0 },
    };
    struct spool_txn t;

    for (size_t i = 0; i < G_N_ELEMENTS(steps); i++) {
        c.state = steps[i].s;
        c.held = steps[i].held;
        assert_true(spool_write(f->sp, put_dlv, &c, NULL));
        assert_int_equal(db_entries(f, DB_DUE), steps[i].due);
        assert_int_equal(db_entries(f, DB_LEASES), steps[i].leases);
    }
    assert_true(spool_read_begin(f->sp, &t, NULL));
    assert_int_equal(spool_counter_get(&t, "dlv.sent"), 1);
    assert_int_equal(spool_counter_get(&t, "dlv.deferred"), 0);
    spool_read_end(&t);
    assert_true(spool_write(f->sp, do_delete, &c.msg, NULL));
    assert_int_equal(db_entries(f, DB_DELIVERIES), 0);
}

static gboolean put_token(struct spool_txn *t, void *ctx, GError **err)
{
    return spool_token_insert(t, ctx, err);
}

static void test_tokens(void **state)
{
    struct temp_spool *f = *state;
    g_autofree char *text = spool_token_generate();
    g_autofree char *norm = spool_token_normalise_addr(" <Test@ABAKUS.no> ");
    struct spool_token tk, got;
    struct spool_txn t;
    char id[TOKEN_ID_LEN + 1];

    assert_true(strlen(text) >= 43);
    assert_null(strpbrk(text, "+/="));
    /* Never one that a command line would take for an option. */
    for (int i = 0; i < 2000; i++) {
        g_autofree char *other = spool_token_generate();
        assert_true(other[0] != '-');
    }
    assert_string_equal(norm, "Test@abakus.no");
    spool_token_init(&tk);
    tk.sender = g_strdup("Test@abakus.no");
    g_ptr_array_add(tk.recipients, g_strdup("r@x.no"));
    spool_token_hash(text, tk.hash);
    assert_true(spool_write(f->sp, put_token, &tk, NULL));
    assert_false(spool_write(f->sp, put_token, &tk, NULL));    /* no second registration */

    spool_token_id(tk.hash, id);
    assert_true(spool_read_begin(f->sp, &t, NULL));
    assert_true(spool_token_find(&t, text, &got, NULL));
    spool_token_clear(&got);
    assert_true(spool_token_find(&t, id, &got, NULL));
    assert_int_equal(spool_token_status(&got, 0), TOKEN_ACTIVE);
    spool_token_clear(&got);
    assert_false(spool_token_find(&t, "not-a-token", &got, NULL));
    assert_true(spool_token_owner_exists(&t, "Test@ABAKUS.NO"));
    assert_false(spool_token_owner_exists(&t, "test@abakus.no.evil"));
    assert_true(spool_token_owner_exists(&t, "TEST@abakus.no"));   /* as the sender binding */
    assert_int_equal(spool_counter_get(&t, "tok.active"), 1);
    spool_read_end(&t);
    spool_token_clear(&tk);
}

/* The map grows on demand up to max_size, then refuses cleanly and stays readable. */
static void test_map_growth(void **state)
{
    struct temp_spool *f = *state;
    g_autofree char *big = g_malloc0(3 << 20);
    GError *err = NULL;
    queue_id small, grown;
    struct spool_txn t;
    struct spool_msg m;

    assert_true((small = store(f, "small", 5, NULL)));
    assert_true((grown = store(f, big, 3 << 20, &err)));      /* 1 MiB map grows to 4+ */
    assert_false(store(f, big, 3 << 20, &err) && store(f, big, 3 << 20, &err));
    assert_true(g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_FULL));
    assert_non_null(strstr(err->message, "max_size"));
    g_error_free(err);
    assert_true(spool_read_begin(f->sp, &t, NULL));
    assert_true(spool_msg_get(&t, small, &m, NULL));
    spool_msg_clear(&m);
    assert_true(spool_msg_get(&t, grown, &m, NULL));
    spool_msg_clear(&m);
    spool_read_end(&t);
    assert_true(store(f, "after", 5, NULL));
}

/*
 * The message record itself, not its body, is what fills the map: the
 * map must grow all the same. The record's append used to retry as a
 * plain insert in the transaction MDB_MAP_FULL had already spoiled, and
 * the client heard 452 with room left to grow.
 */
static void test_map_growth_on_record(void **state)
{
    struct temp_spool *f = *state;
    struct temp_msg p = { "x", 1, 0, 60000 };          /* a record of about 2 MiB */
    GError *err = NULL;

    assert_true(store(f, "first", 5, NULL));
    if (!spool_write(f->sp, temp_spool_put_msg, &p, &err))
        fail_msg("large record: %s", err->message);
    assert_true(p.id != 0);
}

/*
 * Another process grew the map: a process opening the spool afterwards
 * with a smaller configured map must adopt the new size, not fail with
 * MDB_MAP_RESIZED in its first transaction.
 */
static void test_open_after_growth_elsewhere(void **state)
{
    struct temp_spool *f = *state;
    struct spool *again;
    GError *err = NULL;
    pid_t pid;
    int status;

    spool_close(f->sp);
    f->sp = NULL;
    if ((pid = fork()) == 0) {
        struct spool *sp;
        g_autofree char *big = g_malloc0(3 << 20);
        struct temp_msg p = { big, 3 << 20, 0 };

        if (!spool_open(&sp, &f->cfg, NULL) || !spool_write(sp, temp_spool_put_msg, &p, NULL))
            _exit(1);
        spool_close(sp);
        _exit(0);
    }
    assert_true(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (!spool_open(&again, &f->cfg, &err))
        fail_msg("open after growth: %s", err->message);
    f->sp = again;
    assert_true(store(f, "after", 5, NULL));
}

static gboolean put_schema(struct spool_txn *t, void *ctx, GError **err)
{
    MDB_val key = { 14, (void *)"schema_version" }, val = { 4, ctx };
    int rc = mdb_put(t->txn, spool_dbi(t->sp, DB_META), &key, &val, 0);

    return rc ? spool_mdb_fail(rc, "schema_version", err) : TRUE;
}

/*
 * An older spool opens and is marked with the current schema version (its
 * records are read as they are; new ones an older binary must refuse); a
 * spool of a newer schema is refused with a message that says so.
 */
static void test_schema_version(void **state)
{
    struct temp_spool *f = *state;
    uint32_t version = 1, stored;
    GError *err = NULL;
    struct spool_txn t;
    MDB_val key = { 14, (void *)"schema_version" }, val;

    assert_true(spool_write(f->sp, put_schema, &version, NULL));
    spool_close(f->sp);
    if (!spool_open(&f->sp, &f->cfg, &err))
        fail_msg("an older schema: %s", err->message);
    assert_true(spool_read_begin(f->sp, &t, NULL));
    assert_int_equal(mdb_get(t.txn, spool_dbi(f->sp, DB_META), &key, &val), 0);
    memcpy(&stored, val.mv_data, 4);
    spool_read_end(&t);
    assert_true(stored > 1);

    version = stored + 1;
    assert_true(spool_write(f->sp, put_schema, &version, NULL));
    spool_close(f->sp);
    f->sp = NULL;
    assert_false(spool_open(&f->sp, &f->cfg, &err));
    assert_non_null(strstr(err->message, "schema version"));
    g_error_free(err);
}

struct due_case {
    queue_id msg;
    int64_t next_try[4];            /* unix s; < 0: leased, expiring at -next_try ms */
};

static gboolean put_due(struct spool_txn *t, void *ctx, GError **err)
{
    struct due_case *c = ctx;

    for (uint32_t i = 0; i < G_N_ELEMENTS(c->next_try); i++) {
        struct spool_dlv d;
        gboolean ok;

        spool_dlv_init(&d);
        d.msg = c->msg;
        d.idx = i;
        d.rcpt = g_strdup("x@y.no");
        if (c->next_try[i] < 0) {
            d.state = DLV_LEASED;
            d.lease = 100 + i;
            d.lease_expiry = -c->next_try[i];
        } else {
            d.state = DLV_READY;
            d.next_try = c->next_try[i];
        }
        ok = spool_dlv_put(t, &d, err);
        spool_dlv_clear(&d);
        if (!ok)
            return FALSE;
    }
    return TRUE;
}

struct seen_refs {
    GArray *refs;
    guint stop_after;
};

static gboolean keep_ref(const struct spool_dlv_ref *ref, void *ctx)
{
    struct seen_refs *s = ctx;

    g_array_append_val(s->refs, *ref);
    return s->refs->len < s->stop_after;
}

/* The index walks: time order, up to a time, stopped by the callback; no key in sight. */
static void test_index_walks(void **state)
{
    struct temp_spool *f = *state;
    struct due_case c = { store(f, "m", 1, NULL), { 30, -5000, 10, -7000 } };
    struct seen_refs s = { g_array_new(FALSE, FALSE, sizeof(struct spool_dlv_ref)), 100 };
    struct spool_txn t;
    const struct spool_dlv_ref *r;

    assert_true(spool_write(f->sp, put_due, &c, NULL));
    assert_true(spool_read_begin(f->sp, &t, NULL));
    assert_true(spool_due_foreach(&t, 30000, keep_ref, &s, NULL));
    assert_int_equal(s.refs->len, 2);
    r = &g_array_index(s.refs, struct spool_dlv_ref, 0);
    assert_true(r->msg == c.msg && r->idx == 2 && r->at_ms == 10000 && r->lease == 0);
    r = &g_array_index(s.refs, struct spool_dlv_ref, 1);
    assert_true(r->idx == 0 && r->at_ms == 30000);

    g_array_set_size(s.refs, 0);
    assert_true(spool_due_foreach(&t, 29999, keep_ref, &s, NULL));
    assert_int_equal(s.refs->len, 1);

    g_array_set_size(s.refs, 0);
    assert_true(spool_lease_foreach(&t, G_MAXINT64, keep_ref, &s, NULL));
    assert_int_equal(s.refs->len, 2);
    r = &g_array_index(s.refs, struct spool_dlv_ref, 0);
    assert_true(r->idx == 1 && r->at_ms == 5000 && r->lease == 101);
    r = &g_array_index(s.refs, struct spool_dlv_ref, 1);
    assert_true(r->idx == 3 && r->at_ms == 7000 && r->lease == 103);

    g_array_set_size(s.refs, 0);
    s.stop_after = 1;
    assert_true(spool_lease_foreach(&t, G_MAXINT64, keep_ref, &s, NULL));
    assert_int_equal(s.refs->len, 1);
    spool_read_end(&t);
    g_array_unref(s.refs);
}

/*
 * The config the token checks run against: the default list (no cap) and
 * [list small], at most 2 recipients a token.
 */
static const struct postern_config *lists_cfg(void)
{
    static struct postern_config cfg;
    static gboolean loaded;
    g_autofree char *path = NULL;
    int fd;

    if (loaded)
        return &cfg;
    fd = g_file_open_tmp("postern-lists-XXXXXX.ini", &path, NULL);
    assert_true(fd >= 0);
    close(fd);
    assert_true(g_file_set_contents(path, "[list small]\naddress = small@localhost\n"
                                          "max_recipients = 2\n", -1, NULL));
    assert_true(config_load(&cfg, path, NULL));
    unlink(path);
    loaded = TRUE;
    return &cfg;
}

/* A token request checked as every front end has it checked; 0 when it passes. */
static int token_check(const char *from, const char *const *rcpts, int64_t expires,
                       const char *want_in_message)
{
    struct spool_token tk;
    GError *err = NULL;
    int code = 0;

    spool_token_init(&tk);
    tk.sender = g_strdup(from);
    tk.expires = expires;
    for (int i = 0; rcpts[i]; i++)
        g_ptr_array_add(tk.recipients, g_strdup(rcpts[i]));
    if (!spool_token_prepare(&tk, "0123456789abcdefXYZ", 1000, lists_cfg(), &err)) {
        assert_true(err->domain == SPOOL_ERROR);
        code = err->code;
        if (want_in_message && !strstr(err->message, want_in_message))
            fail_msg("\"%s\" does not name \"%s\"", err->message, want_in_message);
        g_error_free(err);
    }
    spool_token_clear(&tk);
    return code;
}

/* The sender binding and recipient de-duplication: the whole address, any case. */
static void test_addr_same(void **state)
{
    const char *const rcpts[] = { "Ada@Example.org", "ada@example.ORG", "<ADA@example.org>",
                                  "bob@example.org", NULL };
    struct spool_token tk;
    g_autofree char *key = spool_token_addr_key(" <Alice@Abakus.NO> ");
    GError *err = NULL;

    (void)state;
    assert_string_equal(key, "alice@abakus.no");
    assert_true(spool_token_addr_same("Alice@Abakus.NO", "alice@abakus.no"));
    assert_true(spool_token_addr_same("<alice@abakus.no>", "ALICE@ABAKUS.NO"));
    assert_false(spool_token_addr_same("alice@abakus.no", "alice2@abakus.no"));
    assert_false(spool_token_addr_same("alice@abakus.no", "alice@abakus.no.evil"));
    /* Each recipient once, spelt as it came first. */
    spool_token_init(&tk);
    tk.sender = g_strdup("alice@abakus.no");
    for (int i = 0; rcpts[i]; i++)
        g_ptr_array_add(tk.recipients, g_strdup(rcpts[i]));
    assert_true(spool_token_prepare(&tk, "0123456789abcdefXYZ", 1000, lists_cfg(), &err));
    assert_int_equal(tk.recipients->len, 2);
    assert_string_equal(tk.recipients->pdata[0], "Ada@example.org");
    assert_string_equal(tk.recipients->pdata[1], "bob@example.org");
    spool_token_clear(&tk);
}

static gboolean put_event(struct spool_txn *t, void *ctx, GError **err)
{
    struct spool_event ev;
    struct spool_msg m;
    gboolean ok;

    spool_msg_init(&m);
    m.id = 42;
    m.sender = g_strdup("a@b.no");
    ok = spool_event_message(t, &m, ctx, "TOKEN_USED", "0123456789abcdef", 3, err);
    spool_msg_clear(&m);
    /* Postern's own notices are no news for the platform. */
    spool_msg_init(&m);
    m.id = 43;
    m.kind = g_strdup(MSG_KIND_NOTICE);
    ok = ok && spool_event_done(t, &m, 1, 0, err);
    spool_msg_clear(&m);
    spool_event_init(&ev);
    ev.type = g_strdup(EVENT_RELAY_RESUMED);
    ok = ok && spool_event_add(t, &ev, err);
    spool_event_clear(&ev);
    return ok;
}

static gboolean delete_first_event(struct spool_txn *t, void *ctx, GError **err)
{
    return spool_event_delete(t, *(uint64_t *)ctx, err);
}

static gboolean put_events_retry(struct spool_txn *t, void *ctx, GError **err)
{
    return spool_events_retry_put(t, ctx, err);
}

static void events_backlog(struct spool *sp, uint64_t *count, struct spool_event *first,
                           gboolean *found)
{
    struct spool_txn t;
    int64_t oldest;

    assert_true(spool_read_begin(sp, &t, NULL));
    assert_true(spool_events_backlog(&t, count, &oldest, NULL));
    assert_true(spool_event_first(&t, first, found, NULL));
    spool_read_end(&t);
}

/* The outbox: only with [events] url, in order, removed one by one. */
static void test_events_outbox(void **state)
{
    struct temp_spool *f = *state;
    struct spool_event ev;
    struct spool_events_retry rt = { 5000, 3, "status 500" }, got;
    struct spool_txn t;
    uint64_t count, first_id;
    gboolean found;

    /* Not enabled (no url): nothing is written. */
    assert_true(spool_write(f->sp, put_event, (void *)EVENT_MESSAGE_REJECTED, NULL));
    events_backlog(f->sp, &count, &ev, &found);
    assert_int_equal(count, 0);
    assert_false(found);

    spool_close(f->sp);
    f->cfg.events.url = (g_free(f->cfg.events.url), g_strdup("http://127.0.0.1:1/x"));
    assert_true(spool_open(&f->sp, &f->cfg, NULL));
    assert_true(spool_write(f->sp, put_event, (void *)EVENT_MESSAGE_REJECTED, NULL));
    assert_true(spool_write(f->sp, put_event, (void *)EVENT_MESSAGE_ACCEPTED, NULL));
    events_backlog(f->sp, &count, &ev, &found);
    assert_int_equal(count, 4);
    assert_true(found);
    assert_string_equal(ev.type, EVENT_MESSAGE_REJECTED);
    assert_int_equal(ev.msg, 42);
    assert_string_equal(ev.reason, "TOKEN_USED");
    assert_string_equal(ev.token, "0123456789abcdef");
    assert_string_equal(ev.sender, "a@b.no");
    assert_true(ev.time > 0);
    first_id = ev.id;
    spool_event_clear(&ev);
    assert_true(spool_write(f->sp, delete_first_event, &first_id, NULL));
    events_backlog(f->sp, &count, &ev, &found);
    assert_int_equal(count, 3);
    assert_string_equal(ev.type, EVENT_RELAY_RESUMED);
    assert_true(ev.id > first_id);
    spool_event_clear(&ev);

    /* The poster's state, for spoolctl events. */
    assert_true(spool_write(f->sp, put_events_retry, &rt, NULL));
    assert_true(spool_read_begin(f->sp, &t, NULL));
    assert_true(spool_events_retry_get(&t, &got, NULL));
    spool_read_end(&t);
    assert_int_equal(got.next_try, 5000);
    assert_int_equal(got.failures, 3);
    assert_string_equal(got.error, "status 500");
}

static gboolean put_results(struct spool_txn *t, void *ctx, GError **err)
{
    struct spool_msg m;
    struct spool_dlv d;
    gboolean ok;
    /* ready, leased, deferred after an attempt, leased, back to deferred at lease expiry, sent */
    static const enum dlv_state steps[] = { DLV_READY, DLV_LEASED, DLV_DEFERRED, DLV_LEASED,
                                            DLV_DEFERRED, DLV_LEASED, DLV_SENT };
    static const uint32_t attempts[] = { 0, 0, 1, 1, 1, 1, 2 };
    static const char *const replies[] = { NULL, NULL, "451 4.3.0 later", "451 4.3.0 later",
                                           "451 4.3.0 later", "451 4.3.0 later", "250 2.0.0 ok" };

    spool_msg_init(&m);
    if (!(m.id = spool_id_next(t, err)))
        return FALSE;
    m.state = MSG_INCOMING;
    m.sender = g_strdup("a@b.no");
    ok = spool_msg_insert(t, &m, err) && spool_msg_set_state(t, &m, MSG_REJECTED, "TOKEN_USED",
                                                             err);
    spool_dlv_init(&d);
    d.msg = m.id;
    d.rcpt = "x@y.no";
    for (guint i = 0; ok && i < G_N_ELEMENTS(steps); i++) {
        d.state = steps[i];
        d.attempts = attempts[i];
        d.last_reply = (char *)replies[i];
        ok = spool_dlv_put(t, &d, err);
    }
    d.idx = 1;
    d.state = DLV_BOUNCED;
    d.attempts = 0;
    d.last_reply = (char *)"550 5.7.1 suppressed";
    ok = ok && spool_dlv_put(t, &d, err);   /* new and bounced at once: no result recorded */
    spool_msg_clear(&m);
    return ok;
}

/* The /metrics totals: received, rejected by reason, delivery results. */
static void test_result_counters(void **state)
{
    struct temp_spool *f = *state;
    struct spool_stats st;
    g_autoptr(GString) text = g_string_new(NULL);

    assert_true(spool_write(f->sp, put_results, NULL, NULL));
    assert_true(spool_stats_read(f->sp, NULL, &st, NULL));
    assert_int_equal(st.received, 1);
    assert_int_equal(st.rejected[2], 1);                    /* TOKEN_USED */
    assert_int_equal(st.rejected[SPOOL_REJECT_REASONS], 0); /* other */
    assert_int_equal(st.deferred, 1);
    assert_int_equal(st.sent, 1);
    assert_int_equal(st.bounced, 0);
    assert_int_equal(st.msgs[MSG_REJECTED], 1);
    spool_stats_prometheus(&st, text);
    assert_non_null(strstr(text->str,
                           "postern_messages_rejected_total{reason=\"TOKEN_USED\"} 1\n"));
    assert_non_null(strstr(text->str, "postern_delivery_results_total{result=\"deferred\"} 1\n"));
    assert_non_null(strstr(text->str, "postern_events_waiting 0\n"));
    /* Relay replies: one 4xx and one 2xx attempt; the lease expiry and the
     * copy bounced unsent were no attempt. */
    assert_int_equal(st.replies[0], 1);
    assert_int_equal(st.replies[1], 1);
    assert_int_equal(st.replies[2], 0);
    assert_int_equal(st.replies[3], 0);
    assert_non_null(strstr(text->str, "postern_relay_replies_total{class=\"4xx\"} 1\n"));
    assert_non_null(strstr(text->str, "postern_relay_replies_total{class=\"none\"} 0\n"));
    assert_int_equal(spool_reply_class("421 4.7.0 closing"), 1);
    assert_int_equal(spool_reply_class("554 no"), 2);
    assert_int_equal(spool_reply_class("354 go on"), 3);
    assert_int_equal(spool_reply_class("connect to relay: Connection refused"), 3);
    assert_int_equal(spool_reply_class("25"), 3);
    assert_int_equal(spool_reply_class(NULL), 3);
    /* The latencies: the verdict, and the one result (not the bounce made at once). */
    assert_int_equal(st.latency[SPOOL_HIST_TRANSFORM].count, 1);
    assert_int_equal(st.latency[SPOOL_HIST_DELIVERY].count, 1);
    assert_non_null(strstr(text->str, "postern_delivery_latency_seconds_count 1\n"));
    /* A second transaction adds to what the first stored. */
    assert_true(spool_write(f->sp, put_results, NULL, NULL));
    assert_true(spool_stats_read(f->sp, NULL, &st, NULL));
    assert_int_equal(st.latency[SPOOL_HIST_TRANSFORM].count, 2);
    assert_int_equal(st.latency[SPOOL_HIST_DELIVERY].count, 2);
    /* Arrival is the queue id's time: two results within 20 s of it, however loaded; a
     * wrong arrival (0) would put them at +Inf. */
    assert_true(st.latency[SPOOL_HIST_DELIVERY].sum_ms < 20000);
    assert_int_equal(st.latency[SPOOL_HIST_DELIVERY].buckets[SPOOL_HIST_BOUNDS], 0);
}

/* Bucket arithmetic, the record and the Prometheus text of spool_hist.h. */
static void test_hist_buckets(void **state)
{
    struct spool_hist_data h = { 0 }, back;
    unsigned char rec[SPOOL_HIST_RECORD];
    g_autoptr(GString) text = g_string_new(NULL);

    /* "le": a latency equal to a bound is in that bucket. */
    assert_int_equal(spool_hist_bucket(-3), 0);
    assert_int_equal(spool_hist_bucket(0), 0);
    assert_int_equal(spool_hist_bucket(5), 0);
    assert_int_equal(spool_hist_bucket(6), 1);
    assert_int_equal(spool_hist_bucket(1000), 7);
    assert_int_equal(spool_hist_bucket(1001), 8);
    assert_int_equal(spool_hist_bucket(600000), SPOOL_HIST_BOUNDS - 1);
    assert_int_equal(spool_hist_bucket(600001), SPOOL_HIST_BOUNDS);
    for (int i = 1; i < SPOOL_HIST_BOUNDS; i++)
        assert_true(spool_hist_bounds_ms[i] > spool_hist_bounds_ms[i - 1]);

    spool_hist_add(&h, 3);
    spool_hist_add(&h, 7);
    spool_hist_add(&h, 2000);
    spool_hist_add(&h, 3600000);
    spool_hist_add(&h, -20);        /* a clock that stepped back counts as 0 */
    spool_hist_encode(&h, rec);
    assert_true(spool_hist_decode(rec, sizeof(rec), &back));
    assert_memory_equal(&h, &back, sizeof(h));
    assert_false(spool_hist_decode(rec, sizeof(rec) - 8, &back));

    spool_hist_prometheus(&h, "x_seconds", "X.", text);
    assert_non_null(strstr(text->str, "# HELP x_seconds X.\n# TYPE x_seconds histogram\n"));
    assert_non_null(strstr(text->str, "x_seconds_bucket{le=\"0.005\"} 2\n"));
    assert_non_null(strstr(text->str, "x_seconds_bucket{le=\"0.01\"} 3\n"));
    assert_non_null(strstr(text->str, "x_seconds_bucket{le=\"1\"} 3\n"));
    assert_non_null(strstr(text->str, "x_seconds_bucket{le=\"2.5\"} 4\n"));
    assert_non_null(strstr(text->str, "x_seconds_bucket{le=\"600\"} 4\n"));
    assert_non_null(strstr(text->str, "x_seconds_bucket{le=\"+Inf\"} 5\n"));
    assert_non_null(strstr(text->str, "x_seconds_sum 3602.010\n"));
    assert_non_null(strstr(text->str, "x_seconds_count 5\n"));
}

static void test_token_input(void **state)
{
    const char *const good[] = { "a@Example.ORG", "<a@example.org>", " b@example.org ", NULL };
    const char *const bad_rcpt[] = { "a@example.org", "not an address", NULL };
    const char *const none[] = { NULL };
    const char *const no_domain[] = { "nobody@", NULL };
    struct spool_token tk;
    unsigned char hash[TOKEN_HASH_LEN];
    int64_t t = 0;
    GError *err = NULL;

    (void)state;
    /* Normalised and de-duplicated: the domain case-insensitively, <> and blanks gone. */
    spool_token_init(&tk);
    tk.sender = g_strdup("<Owner@Example.ORG>");
    tk.expires = 2000;
    for (int i = 0; good[i]; i++)
        g_ptr_array_add(tk.recipients, g_strdup(good[i]));
    assert_true(spool_token_prepare(&tk, "0123456789abcdefXYZ", 1000, lists_cfg(), &err));
    assert_string_equal(tk.sender, "Owner@example.org");
    assert_string_equal(tk.list, "default");      /* none named: the default list */
    assert_int_equal(tk.recipients->len, 2);
    assert_string_equal(tk.recipients->pdata[0], "a@example.org");
    assert_string_equal(tk.recipients->pdata[1], "b@example.org");
    assert_int_equal(tk.created, 1000);
    spool_token_hash("0123456789abcdefXYZ", hash);
    assert_memory_equal(tk.hash, hash, TOKEN_HASH_LEN);
    spool_token_clear(&tk);

    /* Each broken rule is SPOOL_ERR_INVALID and names what is wrong. */
    assert_int_equal(token_check("owner", good, 0, "\"owner\""), SPOOL_ERR_INVALID);
    assert_int_equal(token_check("a@b, c@d", good, 0, "a@b, c@d"), SPOOL_ERR_INVALID);
    assert_int_equal(token_check("o@example.org", bad_rcpt, 0, "\"not an address\""),
                     SPOOL_ERR_INVALID);
    assert_int_equal(token_check("o@example.org", no_domain, 0, "nobody@"), SPOOL_ERR_INVALID);
    assert_int_equal(token_check("o@example.org", none, 0, "no recipients"), SPOOL_ERR_INVALID);
    assert_int_equal(token_check("o@example.org", good, 999, "not in the future"),
                     SPOOL_ERR_INVALID);
    assert_int_equal(token_check("o@example.org", good, 0, NULL), 0);

    /* A token sends to a list that exists, within its cap (2 for [list small]). */
    spool_token_init(&tk);
    tk.sender = g_strdup("o@example.org");
    tk.list = g_strdup("small");
    g_ptr_array_add(tk.recipients, g_strdup("a@example.org"));
    g_ptr_array_add(tk.recipients, g_strdup("a@EXAMPLE.org"));     /* the same: counted once */
    g_ptr_array_add(tk.recipients, g_strdup("b@example.org"));
    assert_true(spool_token_prepare(&tk, "0123456789abcdefXYZ", 1000, lists_cfg(), &err));
    g_ptr_array_add(tk.recipients, g_strdup("c@example.org"));
    assert_false(spool_token_prepare(&tk, "0123456789abcdefXYZ", 1000, lists_cfg(), &err));
    assert_true(g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_INVALID));
    assert_non_null(strstr(err->message, "at most 2"));
    g_clear_error(&err);
    g_free(tk.list);
    tk.list = g_strdup("nosuch");
    assert_false(spool_token_prepare(&tk, "0123456789abcdefXYZ", 1000, lists_cfg(), &err));
    assert_true(g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_INVALID));
    assert_non_null(strstr(err->message, "\"nosuch\""));
    g_clear_error(&err);
    spool_token_clear(&tk);
    assert_false(spool_token_addr_valid("@example.org"));
    assert_false(spool_token_addr_valid("a@b>"));
    assert_true(spool_token_addr_valid("a.b+c@example.org"));

    /* Expiry as written: a duration from now, or an ISO 8601 time. */
    assert_true(spool_token_parse_expires("7d", 1000, &t, NULL));
    assert_int_equal(t, 1000 + 7 * 86400);
    assert_true(spool_token_parse_expires("2030-01-01T00:00:00Z", 1000, &t, NULL));
    assert_int_equal(t, 1893456000);
    assert_false(spool_token_parse_expires("soon", 1000, &t, &err));
    assert_true(g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_INVALID));
    assert_non_null(strstr(err->message, "soon"));
    g_clear_error(&err);
    assert_false(spool_token_text_valid("short", &err));
    assert_true(g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_INVALID));
    g_clear_error(&err);
}

/* The JSON record of token import: shape, then the same rules. */
static int token_json_check(const char *json, const char *want_in_message)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    struct spool_token tk;
    g_autofree char *text = NULL;
    GError *err = NULL;
    int code = 0;

    assert_true(json_parser_load_from_data(parser, json, -1, NULL));
    spool_token_init(&tk);
    if (!spool_token_from_json(json_parser_get_root(parser), 1000, lists_cfg(), &tk, &text,
                               &err)) {
        assert_true(err->domain == SPOOL_ERROR);
        code = err->code;
        if (want_in_message && !strstr(err->message, want_in_message))
            fail_msg("\"%s\" does not name \"%s\"", err->message, want_in_message);
        g_error_free(err);
    } else {
        assert_non_null(text);
    }
    spool_token_clear(&tk);
    return code;
}

static void test_token_json(void **state)
{
    (void)state;
    assert_int_equal(token_json_check("{\"from\": \"a@b.no\", \"recipients\": [\"c@d.no\"], "
                                      "\"expires\": \"7d\", \"hide_sender\": true, "
                                      "\"token\": \"0123456789abcdefXYZ\"}", NULL), 0);
    assert_int_equal(token_json_check("{\"from\": \"a@b.no\", \"recipients\": [\"c@d.no\"], "
                                      "\"expires\": 5000}", NULL), 0);
    assert_int_equal(token_json_check("[]", "\"from\""), SPOOL_ERR_INVALID);
    assert_int_equal(token_json_check("{\"recipients\": []}", "\"from\""), SPOOL_ERR_INVALID);
    assert_int_equal(token_json_check("{\"from\": \"a@b.no\", \"recipients\": [\"c@d.no\", 3]}",
                                      "recipient 1"), SPOOL_ERR_INVALID);
    assert_int_equal(token_json_check("{\"from\": \"a@b.no\", \"recipients\": [\"bad\"]}",
                                      "\"bad\""), SPOOL_ERR_INVALID);
    assert_int_equal(token_json_check("{\"from\": \"a@b.no\", \"recipients\": [\"c@d.no\"], "
                                      "\"expires\": \"never\"}", "never"), SPOOL_ERR_INVALID);
    assert_int_equal(token_json_check("{\"from\": \"a@b.no\", \"recipients\": [\"c@d.no\"], "
                                      "\"expires\": 10}", "not in the future"), SPOOL_ERR_INVALID);
    assert_int_equal(token_json_check("{\"from\": \"a@b.no\", \"recipients\": [\"c@d.no\"], "
                                      "\"token\": \"short\"}", "16 characters"), SPOOL_ERR_INVALID);
    assert_int_equal(token_json_check("{\"from\": \"a@b.no\", \"recipients\": [\"c@d.no\"], "
                                      "\"hide_sender\": \"yes\"}", "hide_sender"),
                     SPOOL_ERR_INVALID);
    /* "list": a known one, within its cap. */
    assert_int_equal(token_json_check("{\"from\": \"a@b.no\", \"recipients\": [\"c@d.no\"], "
                                      "\"list\": \"small\"}", NULL), 0);
    assert_int_equal(token_json_check("{\"from\": \"a@b.no\", \"recipients\": [\"c@d.no\", "
                                      "\"e@d.no\", \"f@d.no\"], \"list\": \"small\"}",
                                      "at most 2"), SPOOL_ERR_INVALID);
    assert_int_equal(token_json_check("{\"from\": \"a@b.no\", \"recipients\": [\"c@d.no\"], "
                                      "\"list\": \"other\"}", "\"other\""), SPOOL_ERR_INVALID);
    assert_int_equal(token_json_check("{\"from\": \"a@b.no\", \"recipients\": [\"c@d.no\"], "
                                      "\"list\": 3}", "\"list\""), SPOOL_ERR_INVALID);
}

/*
 * A record written before lists (no "list" in it) belongs to the default
 * list. It is written through a GVariantDict as records were (its entries
 * in hash table order), with a field from the future and one of the wrong
 * type, which the reader skips.
 */
static gboolean put_old_token(struct spool_txn *t, void *ctx, GError **err)
{
    const unsigned char *hash = ctx;
    GVariantDict d;
    g_autoptr(GVariant) v = NULL;
    const char *rcpts[] = { "r@x.no" };
    MDB_val key = { TOKEN_HASH_LEN, (void *)hash }, val;

    g_variant_dict_init(&d, NULL);
    g_variant_dict_insert(&d, "sender", "s", "old@x.no");
    g_variant_dict_insert_value(&d, "recipients", g_variant_new_strv(rcpts, 1));
    g_variant_dict_insert(&d, "created", "x", (gint64)1000);
    g_variant_dict_insert(&d, "future", "s", "x");
    g_variant_dict_insert(&d, "hide_sender", "s", "yes");
    v = g_variant_ref_sink(g_variant_dict_end(&d));
    val = (MDB_val){ g_variant_get_size(v), (void *)g_variant_get_data(v) };
    (void)err;
    return mdb_put(spool_mdb_txn(t), spool_dbi(t->sp, DB_TOKENS), &key, &val, 0) == 0;
}

/* A raw token record, to write what the encoder never would. */
struct raw_token {
    unsigned char hash[TOKEN_HASH_LEN];
    unsigned char rec[42];
    size_t len;
};

static gboolean put_raw_token(struct spool_txn *t, void *ctx, GError **err)
{
    struct raw_token *r = ctx;
    MDB_val key = { TOKEN_HASH_LEN, r->hash }, val = { r->len, r->rec };

    (void)err;
    return mdb_put(spool_mdb_txn(t), spool_dbi(t->sp, DB_TOKENS), &key, &val, 0) == 0;
}

static gboolean count_token(const struct spool_token *tk, void *ctx)
{
    (void)tk;
    ++*(int *)ctx;
    return TRUE;
}

/*
 * A binary token record cut short (within its fixed part, or a length
 * running past its end) reads as SPOOL_ERR_CORRUPT, and a scan stops there.
 */
static void test_token_record_short(void **state)
{
    struct temp_spool *f = *state;
    struct raw_token r = { .rec = { 0x01 } };
    struct spool_token got;
    struct spool_txn t;
    GError *err = NULL;
    int n = 0;

    for (size_t len = 4; len <= sizeof(r.rec); len += sizeof(r.rec) - 4) {
        /* The sender's length, past the fixed part: 100 bytes, of 0. */
        r.rec[41] = 100;
        r.len = len;
        spool_token_hash("0123456789abcdefSHORT", r.hash);
        assert_true(spool_write(f->sp, put_raw_token, &r, NULL));
        assert_true(spool_read_begin(f->sp, &t, NULL));
        assert_false(spool_token_get(&t, r.hash, &got, &err));
        assert_true(g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_CORRUPT));
        assert_non_null(strstr(err->message, "malformed"));
        g_clear_error(&err);
        assert_false(spool_token_foreach(&t, count_token, &n, &err));
        assert_int_equal(n, 0);
        g_clear_error(&err);
        spool_read_end(&t);
    }
}

static void test_token_list_field(void **state)
{
    struct temp_spool *f = *state;
    struct spool_token tk, got;
    struct spool_txn t;
    unsigned char old[TOKEN_HASH_LEN];

    /* The list, and every other field, round-trips through the record. */
    spool_token_init(&tk);
    tk.sender = g_strdup("o@x.no");
    tk.list = g_strdup("small");
    g_ptr_array_add(tk.recipients, g_strdup("r@x.no"));
    g_ptr_array_add(tk.recipients, g_strdup("s@x.no"));
    tk.hide_sender = TRUE;
    tk.created = 1001;
    tk.expires = 1002;
    tk.used = 1003;
    tk.used_by = 1004;
    tk.revoked = TRUE;
    spool_token_hash("0123456789abcdefLIST", tk.hash);
    assert_true(spool_write(f->sp, put_token, &tk, NULL));
    spool_token_hash("0123456789abcdefOLD", old);
    assert_true(spool_write(f->sp, put_old_token, old, NULL));

    assert_true(spool_read_begin(f->sp, &t, NULL));
    assert_true(spool_token_get(&t, tk.hash, &got, NULL));
    assert_string_equal(got.list, "small");
    assert_string_equal(got.sender, "o@x.no");
    assert_int_equal(got.recipients->len, 2);
    assert_string_equal(g_ptr_array_index(got.recipients, 1), "s@x.no");
    assert_true(got.hide_sender && got.revoked);
    assert_int_equal(got.created, 1001);
    assert_int_equal(got.expires, 1002);
    assert_int_equal(got.used, 1003);
    assert_int_equal(got.used_by, 1004);
    spool_token_clear(&got);
    assert_true(spool_token_get(&t, old, &got, NULL));
    assert_string_equal(got.sender, "old@x.no");
    assert_string_equal(got.list, "default");
    assert_int_equal(got.recipients->len, 1);
    assert_string_equal(g_ptr_array_index(got.recipients, 0), "r@x.no");
    assert_int_equal(got.created, 1000);
    assert_false(got.hide_sender);
    spool_token_clear(&got);
    spool_read_end(&t);
    spool_token_clear(&tk);
}

/* A message record as a test stores it raw: key, bytes. */
struct raw_msg {
    queue_id id;
    const void *data;
    size_t len;
};

static gboolean put_raw_msg(struct spool_txn *t, void *ctx, GError **err)
{
    struct raw_msg *r = ctx;
    unsigned char k[8];
    MDB_val key = { 8, k }, val = { r->len, (void *)r->data };
    int rc;

    spool_be64(k, r->id);
    rc = mdb_put(spool_mdb_txn(t), spool_dbi(t->sp, DB_MESSAGES), &key, &val, 0);
    return rc ? spool_mdb_fail(rc, "raw message record", err) : TRUE;
}

static gboolean insert_msg(struct spool_txn *t, void *ctx, GError **err)
{
    return spool_msg_insert(t, ctx, err);
}

static gboolean update_msg(struct spool_txn *t, void *ctx, GError **err)
{
    return spool_msg_update(t, ctx, err);
}

/* A record as schema 2 wrote it: a GVariant a{sv} dictionary. */
static GVariant *old_msg_record(void)
{
    const char *rcpts[] = { "r1@x.no", "r2@x.no" }, *hist[] = { "1000 incoming" };
    GVariantDict d;

    g_variant_dict_init(&d, NULL);
    g_variant_dict_insert(&d, "state", "y", (guint8)MSG_READY);
    g_variant_dict_insert(&d, "held_from", "y", (guint8)MSG_INCOMING);
    g_variant_dict_insert(&d, "arrival", "x", (gint64)1000);
    g_variant_dict_insert(&d, "since", "x", (gint64)1001);
    g_variant_dict_insert(&d, "size", "t", (guint64)4096);
    g_variant_dict_insert(&d, "sender", "s", "old@x.no");
    g_variant_dict_insert_value(&d, "recipients", g_variant_new_strv(rcpts, 2));
    g_variant_dict_insert(&d, "client", "s", "127.0.0.1");
    g_variant_dict_insert(&d, "helo", "s", "h");
    g_variant_dict_insert(&d, "proto", "s", "LMTP");
    g_variant_dict_insert(&d, "received", "s", "Received: x");
    g_variant_dict_insert_value(&d, "history", g_variant_new_strv(hist, 1));
    g_variant_dict_insert(&d, "lease", "t", (guint64)7);
    g_variant_dict_insert(&d, "lease_expiry", "x", (gint64)8);
    g_variant_dict_insert(&d, "ref", "t", (guint64)9);
    g_variant_dict_insert(&d, "kind", "s", MSG_KIND_NOTICE);
    g_variant_dict_insert(&d, "owner", "s", "owner@x.no");
    return g_variant_ref_sink(g_variant_dict_end(&d));
}

static void assert_old_fields(const struct spool_msg *m)
{
    assert_int_equal(m->state, MSG_READY);
    assert_int_equal(m->arrival, 1000);
    assert_int_equal(m->since, 1001);
    assert_int_equal(m->size, 4096);
    assert_string_equal(m->sender, "old@x.no");
    assert_string_equal(m->received, "Received: x");
    assert_int_equal(m->recipients->len, 2);
    assert_string_equal(m->recipients->pdata[1], "r2@x.no");
    assert_int_equal(m->history->len, 1);
    assert_int_equal(m->lease, 7);
    assert_int_equal(m->lease_expiry, 8);
    assert_int_equal(m->ref, 9);
    assert_string_equal(m->kind, MSG_KIND_NOTICE);
    assert_string_equal(m->owner, "owner@x.no");
    assert_null(m->reason);
    assert_null(m->message_id);
}

/* Refused whole; its kind, first after the fixed part, only if that is cut too. */
static void assert_corrupt(struct temp_spool *f, queue_id id, const char *kind_left)
{
    struct spool_txn t;
    struct spool_msg m;
    GError *err = NULL;
    char *kind = (char *)"unset";

    assert_true(spool_read_begin(f->sp, &t, NULL));
    assert_false(spool_msg_get(&t, id, &m, &err));
    assert_true(g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_CORRUPT));
    g_clear_error(&err);
    assert_true(spool_msg_get_kind(&t, id, &kind, NULL, NULL));
    if (kind_left)
        assert_string_equal(kind, kind_left);
    else
        assert_null(kind);
    g_free(kind);
    spool_read_end(&t);
}

/*
 * Message records: every field round-trips through the binary layout, an
 * unset optional one stays unset; a schema-2 GVariant record is still read
 * (its kind too) and is written in the binary layout at its next change;
 * a binary record cut short or with bytes beyond its end is refused.
 */
static void test_msg_record(void **state)
{
    struct temp_spool *f = *state;
    struct spool_msg full, bare, got;
    struct spool_txn t;
    g_autoptr(GVariant) old = old_msg_record();
    struct raw_msg raw = { 0x100, g_variant_get_data(old), g_variant_get_size(old) };
    const void *rec;
    size_t len;
    char *kind;
    uint64_t size;

    spool_msg_init(&full);
    full.id = 0x10;
    full.state = MSG_HOLD;
    full.held_from = MSG_DEFERRED;
    full.arrival = -5;
    full.since = 1234567890123;
    full.size = G_MAXUINT64;
    full.sender = g_strdup("");
    full.client = g_strdup("c");
    full.helo = g_strdup("h");
    full.proto = g_strdup("ESMTP");
    full.received = g_strdup("Received: from c\r\n\tby h");
    full.reason = g_strdup("held by operator");
    full.lease = 42;
    full.lease_expiry = 43;
    full.kind = g_strdup(MSG_KIND_BOUNCE_REPORT);
    full.owner = g_strdup("o@x.no");
    full.ref = 0x0f;
    full.message_id = g_strdup("<id@x.no>");
    g_ptr_array_add(full.recipients, g_strdup("a@x.no"));
    g_ptr_array_add(full.recipients, g_strdup("b@x.no"));
    g_ptr_array_add(full.history, g_strdup("1 incoming"));
    spool_msg_init(&bare);
    bare.id = 0x11;
    bare.state = MSG_INCOMING;
    assert_true(spool_write(f->sp, insert_msg, &full, NULL));
    assert_true(spool_write(f->sp, insert_msg, &bare, NULL));
    assert_true(spool_write(f->sp, put_raw_msg, &raw, NULL));

    assert_true(spool_read_begin(f->sp, &t, NULL));
    assert_true(spool_msg_get(&t, full.id, &got, NULL));
    assert_int_equal(got.state, MSG_HOLD);
    assert_int_equal(got.held_from, MSG_DEFERRED);
    assert_int_equal(got.arrival, -5);
    assert_int_equal(got.since, 1234567890123);
    assert_true(got.size == G_MAXUINT64);
    assert_string_equal(got.sender, "");
    assert_string_equal(got.client, "c");
    assert_string_equal(got.helo, "h");
    assert_string_equal(got.proto, "ESMTP");
    assert_string_equal(got.received, full.received);
    assert_string_equal(got.reason, "held by operator");
    assert_int_equal(got.lease, 42);
    assert_int_equal(got.lease_expiry, 43);
    assert_string_equal(got.kind, MSG_KIND_BOUNCE_REPORT);
    assert_string_equal(got.owner, "o@x.no");
    assert_int_equal(got.ref, 0x0f);
    assert_string_equal(got.message_id, "<id@x.no>");
    assert_int_equal(got.recipients->len, 2);
    assert_string_equal(got.recipients->pdata[1], "b@x.no");
    assert_int_equal(got.history->len, 1);
    assert_string_equal(got.history->pdata[0], "1 incoming");
    spool_msg_clear(&got);
    assert_true(spool_msg_get_kind(&t, full.id, &kind, &size, NULL));
    assert_string_equal(kind, MSG_KIND_BOUNCE_REPORT);
    assert_true(size == G_MAXUINT64);
    g_free(kind);

    /* Unset: the optional fields stay NULL, the others read "" as ever. */
    assert_true(spool_msg_get(&t, bare.id, &got, NULL));
    assert_null(got.kind);
    assert_null(got.owner);
    assert_null(got.reason);
    assert_null(got.message_id);
    assert_string_equal(got.sender, "");
    assert_string_equal(got.received, "");
    assert_int_equal(got.recipients->len, 0);
    assert_int_equal(got.history->len, 1);      /* insert notes the first state */
    spool_msg_clear(&got);
    assert_true(spool_msg_get_kind(&t, bare.id, &kind, NULL, NULL));
    assert_null(kind);

    /* The old layout, read as it is. */
    assert_true(spool_msg_get(&t, raw.id, &got, NULL));
    assert_old_fields(&got);
    assert_true(spool_msg_get_kind(&t, raw.id, &kind, &size, NULL));
    assert_string_equal(kind, MSG_KIND_NOTICE);
    assert_int_equal(size, 4096);
    g_free(kind);
    spool_read_end(&t);

    /* ... and in the new one after a change, with nothing lost. */
    assert_true(spool_write(f->sp, update_msg, &got, NULL));
    spool_msg_clear(&got);
    assert_true(spool_read_begin(f->sp, &t, NULL));
    assert_non_null(rec = spool_msg_record(&t, raw.id, &len));
    assert_int_equal(((const unsigned char *)rec)[0], 0x01);
    assert_true(spool_msg_get(&t, raw.id, &got, NULL));
    assert_old_fields(&got);
    spool_msg_clear(&got);

    /* Cut short (in the strings, then in the fixed part) or overlong: refused. */
    g_autofree unsigned char *copy = g_memdup2(rec, len + 1);
    spool_read_end(&t);
    raw = (struct raw_msg){ 0x101, copy, len - 3 };
    assert_true(spool_write(f->sp, put_raw_msg, &raw, NULL));
    assert_corrupt(f, raw.id, MSG_KIND_NOTICE);
    raw = (struct raw_msg){ 0x102, copy, 20 };
    assert_true(spool_write(f->sp, put_raw_msg, &raw, NULL));
    assert_corrupt(f, raw.id, NULL);
    copy[len] = 'x';
    raw = (struct raw_msg){ 0x103, copy, len + 1 };
    assert_true(spool_write(f->sp, put_raw_msg, &raw, NULL));
    assert_true(spool_read_begin(f->sp, &t, NULL));
    assert_false(spool_msg_get(&t, raw.id, &got, NULL));
    spool_read_end(&t);

    spool_msg_clear(&full);
    spool_msg_clear(&bare);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ids, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_bodies, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_states, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_state_edges, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test(test_state_illegal_panics),
        cmocka_unit_test_setup_teardown(test_index_walks, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test(test_token_input),
        cmocka_unit_test(test_addr_same),
        cmocka_unit_test_setup_teardown(test_result_counters, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_events_outbox, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test(test_token_json),
        cmocka_unit_test(test_hist_buckets),
        cmocka_unit_test_setup_teardown(test_delivery_indexes, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_tokens, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_token_record_short, temp_spool_setup,
                                        temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_token_list_field, temp_spool_setup,
                                        temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_map_growth, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_map_growth_on_record, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_open_after_growth_elsewhere, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_schema_version, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_msg_record, temp_spool_setup, temp_spool_teardown),
    };
    log_init("test_spool", TRUE);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
