/*
 * test_dispatch.c - the dispatcher's decisions against a temporary spool,
 * with no worker processes: how results change deliveries and messages,
 * the relay connection budget, and lease expiry.
 *
 * A struct dispatch is built by hand with what these functions use.  The
 * workers' socket is a ROUTER bound to an inproc address with no peer:
 * what the dispatcher sends a worker (CONNMAX) is dropped, as ROUTER does
 * with a routing id it does not know.  The wire version and SDONE's
 * credit are checked with DEALER sockets of the test's own on it.
 *
 * Leasing: fair rounds (one job per message in turn, notices first) and
 * the daily limit's wait (spool/relay_quota.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>
#include <zmq.h>

#include "common/log.h"
#include "dispatch/dispatch.h"
#include "spool/delivery.h"
#include "spool/relay_quota.h"
#include "spool/relay_state.h"
#include "spool/spool.h"
#include "spool/spool_steer.h"
#include "tests/unit/temp_spool.h"

struct fixture {
    struct temp_spool *ts;
    struct dispatch d;
    void *zctx;
    void *sock;                     /* stands for the workers' ROUTER */
};

/* dispatch_conns_setup() makes the job table itself, as at a start. */
static void conns_setup(struct fixture *f)
{
    struct relay_url url = { .kind = RELAY_SMTP };

    g_hash_table_unref(f->d.jobs);
    dispatch_conns_setup(&f->d, &url);
}

static void job_free(gpointer p)
{
    struct dispatch_job *job = p;

    if (job->worker)
        job->worker->jobs--;
    g_free(job);
}

static void worker_free(gpointer p)
{
    struct dispatch_worker *w = p;

    g_bytes_unref(w->identity);
    g_free(w->name);
    g_free(w);
}

static int setup(void **state)
{
    struct fixture *f = g_new0(struct fixture, 1);

    f->ts = temp_spool_new();
    f->ts->cfg.relay.max_connections = 3;
    f->d.cfg = &f->ts->cfg;
    f->d.spool = f->ts->sp;
    f->d.workers = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, worker_free);
    f->d.jobs = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, job_free);
    f->d.policy.initial = (gint64)f->ts->cfg.retry.initial * G_USEC_PER_SEC;
    f->d.policy.max = (gint64)f->ts->cfg.retry.max * G_USEC_PER_SEC;
    f->d.policy.lifetime = (gint64)f->ts->cfg.retry.lifetime * G_USEC_PER_SEC;
    f->d.mail_from = g_strdup("postern@example.org");
    dispatch_accounts_setup(&f->d);
    f->zctx = zmq_ctx_new();
    f->sock = zmq_socket(f->zctx, ZMQ_ROUTER);
    assert_int_equal(zmq_bind(f->sock, "inproc://test-dispatch"), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    int linger = 0;

    /* Jobs first: they point at workers. */
    g_hash_table_unref(f->d.jobs);
    g_hash_table_unref(f->d.workers);
    g_free(f->d.mail_from);
    dispatch_accounts_free(&f->d);
    zmq_setsockopt(f->sock, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_close(f->sock);
    zmq_ctx_term(f->zctx);
    temp_spool_free(f->ts);
    g_free(f);
    return 0;
}

static struct dispatch_worker *add_sender(struct fixture *f, const char *name, unsigned credit)
{
    struct dispatch_worker *w = g_new0(struct dispatch_worker, 1);

    w->sock = f->sock;
    w->identity = g_bytes_new(name, strlen(name));
    w->name = g_strdup(name);
    w->kind = WORKER_SENDER;
    w->credit = credit;
    g_hash_table_insert(f->d.workers, w->name, w);
    return w;
}

/* ---- a message with leased deliveries, as dispatch_lease_deliveries() leaves it -------- */

struct leased {
    queue_id msg;
    uint64_t lease;
    unsigned n;                     /* recipients */
    int64_t expiry;                 /* unix ms */
    uint32_t attempts;              /* of each, before this lease */
    enum msg_state state;
    int64_t due_at;                 /* not 0: ready, not leased, due then (unix s) */
    const char *kind;               /* MSG_KIND_*; NULL: mail */
    int64_t arrived_ago;            /* not 0: a queue id of that many seconds ago */
    uint64_t size;                  /* of the message as received */
};

static gboolean put_leased(struct spool_txn *t, void *ctx, GError **err)
{
    struct leased *l = ctx;
    struct spool_msg m;
    gboolean ok;

    if (!(l->msg = spool_id_next(t, err)) || !(l->lease = spool_id_next(t, err)))
        return FALSE;
    /* Aged by moving the id's time back: the ids stay as unique as the
     * sequence made them (putting unix_ms() in the time bits instead could
     * give two messages the same id when the millisecond turned between
     * spool_id_next() and unix_ms(): a flaky MDB_KEYEXIST). */
    if (l->arrived_ago)
        l->msg -= (queue_id)(l->arrived_ago * 1000) << 16;
    spool_msg_init(&m);
    m.id = l->msg;
    m.state = l->state;
    m.arrival = unix_ms() / 1000 - 10;
    m.sender = g_strdup("a@example.org");
    m.owner = g_strdup("owner@example.org");
    m.kind = g_strdup(l->kind ? l->kind : MSG_KIND_MAIL);
    m.size = l->size;
    ok = spool_msg_insert(t, &m, err) && spool_body_put(t, DB_OUTGOING, m.id, "x", 1, err);
    for (unsigned i = 0; ok && i < l->n; i++) {
        struct spool_dlv dv;

        spool_dlv_init(&dv);
        dv.msg = l->msg;
        dv.idx = i;
        dv.state = l->due_at ? DLV_READY : DLV_LEASED;
        dv.next_try = l->due_at;
        dv.rcpt = g_strdup_printf("r%u@example.net", i);
        dv.created = m.arrival;
        dv.attempts = l->attempts;
        dv.lease = l->due_at ? 0 : l->lease;
        dv.lease_expiry = l->due_at ? 0 : l->expiry;
        ok = spool_dlv_put(t, &dv, err);
        spool_dlv_clear(&dv);
    }
    spool_msg_clear(&m);
    return ok;
}

static struct leased store_leased(struct fixture *f, unsigned n, int64_t expiry)
{
    struct leased l = { .n = n, .expiry = expiry, .state = MSG_READY };

    assert_true(spool_write(f->d.spool, put_leased, &l, NULL));
    return l;
}

static struct spool_dlv get_dlv(struct fixture *f, queue_id msg, uint32_t idx)
{
    struct spool_txn t;
    struct spool_dlv dv;

    assert_true(spool_read_begin(f->d.spool, &t, NULL));
    assert_true(spool_dlv_get(&t, msg, idx, &dv, NULL));
    spool_read_end(&t);
    return dv;
}

static enum dlv_state dlv_state(struct fixture *f, queue_id msg, uint32_t idx)
{
    struct spool_dlv dv = get_dlv(f, msg, idx);
    enum dlv_state state = dv.state;

    spool_dlv_clear(&dv);
    return state;
}

static enum msg_state msg_state(struct fixture *f, queue_id id)
{
    struct spool_txn t;
    struct spool_msg m;
    enum msg_state s;

    assert_true(spool_read_begin(f->d.spool, &t, NULL));
    assert_true(spool_msg_get(&t, id, &m, NULL));
    s = m.state;
    spool_msg_clear(&m);
    spool_read_end(&t);
    return s;
}

static gboolean count_ref(const struct spool_dlv_ref *ref, void *ctx)
{
    (*(unsigned *)ctx)++;
    return TRUE;
}

/* Entries in `due` (which == 0) or `leases` (which == 1), whatever their time. */
static unsigned index_entries(struct fixture *f, int which)
{
    struct spool_txn t;
    unsigned n = 0;

    assert_true(spool_read_begin(f->d.spool, &t, NULL));
    assert_true(which ? spool_lease_foreach(&t, G_MAXINT64, count_ref, &n, NULL)
                      : spool_due_foreach(&t, G_MAXINT64, count_ref, &n, NULL));
    spool_read_end(&t);
    return n;
}

/* One SDONE as a worker sends it: one reply per recipient. */
struct reply {
    uint16_t code;
    const char *status, *text;
    uint32_t error;
};

static GBytes *sdone_as(const struct leased *l, uint64_t lease, const struct reply *r,
                        unsigned n, const char *account)
{
    struct wire_send_result res;
    GBytes *b;

    wire_send_result_init(&res);
    res.lease = lease;
    res.msg = l->msg;
    res.account = g_strdup(account);
    for (unsigned i = 0; i < n; i++) {
        struct wire_rcpt_result rr = { 0 };

        rr.idx = i;
        rr.code = r[i].code;
        rr.status = g_strdup(r[i].status);
        rr.text = g_strdup(r[i].text);
        rr.error = r[i].error;
        rr.relay = g_strdup("relay.example[192.0.2.1]:587");
        g_array_append_val(res.results, rr);
    }
    b = wire_send_result_encode(&res);
    wire_send_result_clear(&res);
    return b;
}

static GBytes *sdone(const struct leased *l, uint64_t lease, const struct reply *r, unsigned n)
{
    return sdone_as(l, lease, r, n, NULL);
}

/* As the dispatcher takes an SDONE in: decoded, then recorded. */
static void record(struct fixture *f, GBytes *payload)
{
    g_autoptr(GPtrArray) done = g_ptr_array_new_with_free_func(wire_send_result_free);
    struct wire_send_result *res = g_new0(struct wire_send_result, 1);

    assert_true(wire_send_result_decode(payload, res, NULL));
    g_bytes_unref(payload);
    g_ptr_array_add(done, res);
    dispatch_record_results(&f->d, done);
    assert_int_equal(done->len, 0);
}

/* ---- results ---------------------------------------------------------------------------- */

/*
 * sent, deferred and bounced, one recipient each: each delivery takes its
 * state from the retry policy, the lease is cleared, the reply kept; the
 * message waits (deferred) while one delivery has not ended.
 */
static void test_results_classified(void **state)
{
    struct fixture *f = *state;
    struct leased l = store_leased(f, 3, unix_ms() + 60000);
    const struct reply r[] = {
        { 250, "2.0.0", "OK queued", 0 },
        { 451, "4.3.0", "try later", 0 },
        { 550, "5.1.1", "no such user", 0 },
    };
    int64_t before = unix_ms() / 1000;
    struct spool_dlv dv;

    record(f, sdone(&l, l.lease, r, 3));

    dv = get_dlv(f, l.msg, 0);
    assert_int_equal(dv.state, DLV_SENT);
    assert_int_equal(dv.attempts, 1);
    assert_int_equal(dv.lease, 0);
    assert_string_equal(dv.last_reply, "250 2.0.0 OK queued");
    spool_dlv_clear(&dv);
    dv = get_dlv(f, l.msg, 1);
    assert_int_equal(dv.state, DLV_DEFERRED);
    assert_true(dv.next_try > before);
    spool_dlv_clear(&dv);
    dv = get_dlv(f, l.msg, 2);
    assert_int_equal(dv.state, DLV_BOUNCED);
    assert_string_equal(dv.last_reply, "550 5.1.1 no such user");
    spool_dlv_clear(&dv);

    /* Out of `leases`; the deferred one alone is in `due`. */
    assert_int_equal(index_entries(f, 1), 0);
    assert_int_equal(index_entries(f, 0), 1);
    assert_int_equal(msg_state(f, l.msg), MSG_DEFERRED);
    assert_int_equal(f->d.accounts[0].paused_until, 0);
}

/* Every delivery ended with a bounce: done, and a bounce report queued for the owner. */
static void test_results_done_with_report(void **state)
{
    struct fixture *f = *state;
    struct leased l = store_leased(f, 1, unix_ms() + 60000);
    const struct reply r[] = { { 550, "5.1.1", "no such user", 0 } };
    struct spool_txn t;
    unsigned incoming;

    record(f, sdone(&l, l.lease, r, 1));
    assert_int_equal(msg_state(f, l.msg), MSG_DONE);
    assert_true(spool_read_begin(f->d.spool, &t, NULL));
    incoming = (unsigned)spool_counter_get(&t, "msg.incoming");
    spool_read_end(&t);
    assert_int_equal(incoming, 1);
}

/*
 * Held while its deliveries were leased: the results are recorded but the
 * message stays held; on release (spoolctl's hold-from state, then
 * spool_msg_settle) it is done, not ready with nothing left to send.
 */
static gboolean release_settle(struct spool_txn *t, void *ctx, GError **err)
{
    struct spool_msg m;
    gboolean ok;

    if (!spool_msg_get(t, *(queue_id *)ctx, &m, err))
        return FALSE;
    ok = spool_dlv_set_held(t, m.id, FALSE, err) &&
         spool_msg_set_state(t, &m, m.held_from, NULL, err) && spool_msg_settle(t, m.id, err);
    spool_msg_clear(&m);
    return ok;
}

static gboolean hold_msg(struct spool_txn *t, void *ctx, GError **err)
{
    struct spool_msg m;
    gboolean ok;

    if (!spool_msg_get(t, *(queue_id *)ctx, &m, err))
        return FALSE;
    ok = spool_dlv_set_held(t, m.id, TRUE, err) &&
         spool_msg_set_state(t, &m, MSG_HOLD, "held by operator", err);
    spool_msg_clear(&m);
    return ok;
}

static void test_results_while_held(void **state)
{
    struct fixture *f = *state;
    struct leased l = store_leased(f, 1, unix_ms() + 60000);
    const struct reply r[] = { { 250, "2.0.0", "OK queued", 0 } };

    assert_true(spool_write(f->d.spool, hold_msg, &l.msg, NULL));
    record(f, sdone(&l, l.lease, r, 1));
    assert_int_equal(msg_state(f, l.msg), MSG_HOLD);
    assert_true(spool_write(f->d.spool, release_settle, &l.msg, NULL));
    assert_int_equal(msg_state(f, l.msg), MSG_DONE);
}

/*
 * A quota reply pauses the whole relay: the delivery is deferred to the
 * end of the pause (not bounced), and the pause is in the dispatcher and
 * the spool.  A result for a lease that is not the delivery's changes
 * nothing (fencing).
 */
static void test_results_pause_and_fencing(void **state)
{
    struct fixture *f = *state;
    struct leased l = store_leased(f, 2, unix_ms() + 60000);
    const struct reply quota[] = { { 550, "5.4.5", "Daily user sending quota exceeded.", 0 } };
    const struct reply ok[] = { { 250, "2.0.0", "OK", 0 }, { 250, "2.0.0", "OK", 0 } };
    struct spool_dlv dv;

    record(f, sdone(&l, l.lease, quota, 1));
    dv = get_dlv(f, l.msg, 0);
    assert_int_equal(dv.state, DLV_DEFERRED);
    assert_true(f->d.accounts[0].paused_until > unix_ms());
    assert_int_equal(f->d.accounts[0].pauses, 1);
    assert_true(dv.next_try * 1000 >= f->d.accounts[0].paused_until);
    spool_dlv_clear(&dv);

    /* Another lease id: ignored, the second delivery stays leased. */
    record(f, sdone(&l, l.lease + 1, ok, 2));
    dv = get_dlv(f, l.msg, 1);
    assert_int_equal(dv.state, DLV_LEASED);
    assert_int_equal(dv.attempts, 0);
    spool_dlv_clear(&dv);
    dv = get_dlv(f, l.msg, 0);
    assert_int_equal(dv.state, DLV_DEFERRED);
    spool_dlv_clear(&dv);
    assert_int_equal(msg_state(f, l.msg), MSG_READY);
}

/*
 * A job given back unstarted (its worker stops, or it waited half its
 * lease in the worker's queue): back in the queue at once, no attempt
 * counted, the relay not paused; one tried before stays deferred, due now.
 */
static void test_results_given_back_unstarted(void **state)
{
    struct fixture *f = *state;
    struct leased l = { .n = 2, .expiry = unix_ms() + 60000, .state = MSG_READY, .attempts = 1 };
    const struct reply back[] = {
        { 0, "", "not started: the worker is stopping", SMTP_ERROR_NOT_STARTED },
        { 0, "", "not started: the worker is stopping", SMTP_ERROR_NOT_STARTED },
    };
    struct spool_dlv dv;

    assert_true(spool_write(f->d.spool, put_leased, &l, NULL));
    record(f, sdone(&l, l.lease, back, 2));
    for (uint32_t i = 0; i < 2; i++) {
        dv = get_dlv(f, l.msg, i);
        assert_int_equal(dv.state, DLV_DEFERRED);
        assert_int_equal(dv.attempts, 1);
        assert_int_equal(dv.lease, 0);
        assert_true(dv.next_try <= unix_ms() / 1000);
        spool_dlv_clear(&dv);
    }
    assert_int_equal(f->d.accounts[0].paused_until, 0);
    assert_int_equal(msg_state(f, l.msg), MSG_DEFERRED);

    l = store_leased(f, 1, unix_ms() + 60000);
    record(f, sdone(&l, l.lease, back, 1));
    dv = get_dlv(f, l.msg, 0);
    assert_int_equal(dv.state, DLV_READY);
    assert_int_equal(dv.attempts, 0);
    spool_dlv_clear(&dv);
    assert_int_equal(msg_state(f, l.msg), MSG_READY);
}

/* A job keeps its place (and connection) until every recipient has a result. */
static void test_results_release_job(void **state)
{
    struct fixture *f = *state;
    struct leased l = store_leased(f, 2, unix_ms() + 60000);
    struct dispatch_worker *w = add_sender(f, "w1", 0);
    struct dispatch_job *job = g_new0(struct dispatch_job, 1);
    const struct reply ok[] = { { 250, "2.0.0", "OK", 0 } };
    struct wire_send_result res;
    GBytes *second;

    job->lease = l.lease;
    job->msg = l.msg;
    job->worker = w;
    job->rcpts = 2;
    dispatch_job_add(&f->d, job);
    assert_int_equal(w->jobs, 1);

    record(f, sdone(&l, l.lease, ok, 1));
    assert_non_null(g_hash_table_lookup(f->d.jobs, &l.lease));
    assert_int_equal(w->jobs, 1);

    /* The second recipient's transaction: idx 1. */
    wire_send_result_init(&res);
    res.lease = l.lease;
    res.msg = l.msg;
    g_array_append_val(res.results, ((struct wire_rcpt_result){
        .idx = 1, .code = 250, .status = g_strdup("2.0.0"), .text = g_strdup("OK"),
        .relay = g_strdup("none") }));
    second = wire_send_result_encode(&res);
    wire_send_result_clear(&res);
    record(f, second);
    assert_null(g_hash_table_lookup(f->d.jobs, &l.lease));
    assert_int_equal(w->jobs, 0);
    assert_int_equal(msg_state(f, l.msg), MSG_DONE);
}

/* ---- connection budgets ---------------------------------------------------------------- */

/* What may be open: per worker the most of its grant and what it reports. */
static unsigned reserved(struct fixture *f)
{
    GHashTableIter it;
    struct dispatch_worker *w;
    unsigned n = 0;

    g_hash_table_iter_init(&it, f->d.workers);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&w))
        n += MAX(w->conn_granted, MAX(w->conn_applied, w->conn_held));
    return n;
}

static unsigned granted(struct fixture *f)
{
    GHashTableIter it;
    struct dispatch_worker *w;
    unsigned n = 0;

    g_hash_table_iter_init(&it, f->d.workers);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&w))
        n += w->conn_granted;
    return n;
}

/* Take jobs as dispatch_lease_deliveries() does, as long as there is room. */
static unsigned take_jobs(struct fixture *f, uint64_t *next_lease)
{
    unsigned taken = 0;

    while (dispatch_conns_room(&f->d)) {
        struct dispatch_worker *w = dispatch_conns_pick(&f->d);
        struct dispatch_job *job;

        if (!w)
            break;
        job = g_new0(struct dispatch_job, 1);
        job->lease = (*next_lease)++;
        job->worker = w;
        job->rcpts = 1;
        w->credit--;
        dispatch_job_add(&f->d, job);
        taken++;
        assert_true(reserved(f) <= f->ts->cfg.relay.max_connections);
        /* The jobs beyond its connections wait in its queue, a slot's share each. */
        assert_true(w->jobs <= w->conn_granted * WIRE_JOBS_PER_SLOT);
    }
    return taken;
}

static void conns(struct fixture *f, struct dispatch_worker *w, unsigned applied, unsigned held)
{
    g_autoptr(GBytes) payload = wire_pack("(uu)", applied, held);

    dispatch_conns_report(&f->d, w, payload);
}

/*
 * Grants never exceed max_connections, however much credit the workers
 * have; a grant is taken back only once the worker has let its
 * connections go, not when it forgets its budget.
 */
static void test_conns_budget(void **state)
{
    struct fixture *f = *state;
    struct dispatch_worker *a = add_sender(f, "a", 30), *b = add_sender(f, "b", 30);
    uint64_t lease = 1000;

    conns_setup(f);
    /* Right after a start nothing is granted (connections of unknown workers). */
    assert_int_equal(dispatch_conns_room(&f->d), 0);
    assert_null(dispatch_conns_pick(&f->d));
    f->d.conn_grace_until = 0;

    /* Three connections, and up to WIRE_JOBS_PER_SLOT jobs on each, credit left. */
    assert_int_equal(take_jobs(f, &lease), 3 * WIRE_JOBS_PER_SLOT);
    assert_int_equal(granted(f), 3);
    assert_int_equal(a->jobs + b->jobs, 3 * WIRE_JOBS_PER_SLOT);
    assert_int_equal(dispatch_conns_room(&f->d), 0);

    /* a's jobs end, giving their credit back, and it reports its
     * connections, all idle but held. */
    struct dispatch_worker *busy = a->jobs ? a : b, *other = busy == a ? b : a;
    unsigned kept = busy->conn_granted;
    GHashTableIter it;
    struct dispatch_job *job;

    g_hash_table_iter_init(&it, f->d.jobs);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&job))
        if (job->worker == busy) {
            g_hash_table_iter_remove(&it);
            busy->credit++;
        }
    conns(f, busy, kept, kept);
    /* Its grant stays its own: room on it, none for the other worker beyond its grant. */
    assert_int_equal(granted(f), 3);
    assert_int_equal(dispatch_conns_room(&f->d), MIN(busy->credit, kept * WIRE_JOBS_PER_SLOT));

    /* It starts over (HELLO): its budget is 0, but what it holds still counts. */
    dispatch_conns_rejoin(&f->d, busy);
    assert_int_equal(busy->conn_granted, 0);
    assert_int_equal(take_jobs(f, &lease), 0);
    /* Only once it says it holds none is the connection free for another grant. */
    conns(f, busy, 0, 0);
    assert_true(take_jobs(f, &lease) >= 1);
    assert_true(reserved(f) <= f->ts->cfg.relay.max_connections);
    assert_true(other->conn_granted >= 1);
}

/* Leases found at start are jobs of unknown workers: each counts as a connection. */
static void test_conns_adopt_leases(void **state)
{
    struct fixture *f = *state;
    struct leased l1 = store_leased(f, 2, unix_ms() + 60000);
    struct leased l2 = store_leased(f, 1, unix_ms() + 60000);
    struct dispatch_job *job;
    uint64_t lease = 1000;

    add_sender(f, "a", 2 * WIRE_JOBS_PER_SLOT);
    conns_setup(f);
    f->d.conn_grace_until = 0;
    assert_int_equal(g_hash_table_size(f->d.jobs), 2);
    assert_non_null(job = g_hash_table_lookup(f->d.jobs, &l1.lease));
    assert_int_equal(job->rcpts, 2);
    assert_int_equal(job->msg, l1.msg);
    assert_null(job->worker);
    assert_non_null(job = g_hash_table_lookup(f->d.jobs, &l2.lease));
    assert_int_equal(job->rcpts, 1);
    /* max_connections 3, two held by unknown jobs: one grant, and its queue. */
    assert_int_equal(take_jobs(f, &lease), WIRE_JOBS_PER_SLOT);
    assert_int_equal(granted(f), 1);
}

/*
 * A job starts on a connection when one is granted and not in use, or can
 * be granted; only then does it queue behind one, and never more than
 * WIRE_JOBS_PER_SLOT a connection.
 */
static void test_conns_queue_after_connections(void **state)
{
    struct fixture *f = *state;
    struct dispatch_worker *w = add_sender(f, "a", 20);
    uint64_t lease = 1000;
    unsigned max = (unsigned)f->ts->cfg.relay.max_connections;

    conns_setup(f);
    f->d.conn_grace_until = 0;
    for (unsigned i = 1; i <= max; i++) {
        struct dispatch_job *job = g_new0(struct dispatch_job, 1);

        assert_ptr_equal(dispatch_conns_pick(&f->d), w);
        assert_int_equal(w->conn_granted, i);
        job->lease = lease++;
        job->worker = w;
        job->rcpts = 1;
        w->credit--;
        dispatch_job_add(&f->d, job);
    }
    assert_int_equal(take_jobs(f, &lease), MIN(20 - max, max * (WIRE_JOBS_PER_SLOT - 1)));
    assert_int_equal(w->conn_granted, max);
}

/* ---- lease expiry ----------------------------------------------------------------------- */

/* ---- approval expiry (dispatch_approval.c) ------------------------------------ */

struct approval_hold {
    queue_id id;
    const char *reason;             /* held with it; SPOOL_AWAITING_APPROVAL via the steer */
    int64_t age;                    /* seconds since it was held */
};

static gboolean hold_aged(struct spool_txn *t, void *ctx, GError **err)
{
    struct approval_hold *h = ctx;
    struct spool_msg m;
    gboolean ok;

    if (!spool_msg_get(t, h->id, &m, err))
        return FALSE;
    ok = h->reason ? spool_msg_hold(t, &m, h->reason, err)
                   : spool_msg_hold_for_approval(t, &m, "0123456789abcdef", err);
    m.since -= h->age;
    ok = ok && spool_msg_update(t, &m, err);
    spool_msg_clear(&m);
    return ok;
}

static const char *msg_reason(struct fixture *f, queue_id id, char buf[64])
{
    struct spool_txn t;
    struct spool_msg m;

    assert_true(spool_read_begin(f->d.spool, &t, NULL));
    assert_true(spool_msg_get(&t, id, &m, NULL));
    g_strlcpy(buf, m.reason ? m.reason : "", 64);
    spool_msg_clear(&m);
    spool_read_end(&t);
    return buf;
}

/*
 * Past the list's approval_expiry a message awaiting approval is
 * discarded (rejected, its deliveries gone); one still inside it, and one
 * the operator held, stay; nothing is scanned again before the interval.
 * The walk stops at messages that arrived within the shortest expiry: one
 * whose hold claims to be older than its arrival (which cannot be) is not
 * even read.
 */
static void test_approval_expiry(void **state)
{
    struct fixture *f = *state;
    struct postern_list *dflt = f->ts->cfg.lists->pdata[0];
    struct leased l[5];
    struct approval_hold h[5] = {
        { .age = 3700 }, { .age = 3500 }, { .reason = "held by operator", .age = 7200 },
        { .age = 7200 }, { .age = 7200 },
    };
    char buf[64];
    int64_t now = mono_ms();

    dflt->approval = TRUE;
    dflt->approval_expiry = 3600;
    for (int i = 0; i < 5; i++) {
        l[i] = (struct leased){ .n = 2, .state = MSG_READY, .due_at = unix_ms() / 1000,
                                .arrived_ago = i < 4 ? 7200 : 0 };
        assert_true(spool_write(f->d.spool, put_leased, &l[i], NULL));
        h[i].id = l[i].msg;
        if (i != 3)
            assert_true(spool_write(f->d.spool, hold_aged, &h[i], NULL));
    }
    assert_int_equal(index_entries(f, 0), 2);   /* only l[3]'s, not held */

    dispatch_approval_expire(&f->d, now);
    assert_int_equal(msg_state(f, l[0].msg), MSG_REJECTED);
    assert_string_equal(msg_reason(f, l[0].msg, buf), SPOOL_APPROVAL_EXPIRED);
    assert_int_equal(msg_state(f, l[1].msg), MSG_HOLD);
    assert_string_equal(msg_reason(f, l[1].msg, buf), SPOOL_AWAITING_APPROVAL);
    assert_int_equal(msg_state(f, l[2].msg), MSG_HOLD);
    assert_int_equal(msg_state(f, l[3].msg), MSG_READY);
    assert_int_equal(msg_state(f, l[4].msg), MSG_HOLD);
    {
        struct spool_txn t;
        struct spool_dlv dv;
        GError *err = NULL;

        assert_true(spool_read_begin(f->d.spool, &t, NULL));
        assert_false(spool_dlv_get(&t, l[0].msg, 0, &dv, &err));
        assert_true(g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND));
        g_clear_error(&err);
        spool_read_end(&t);
    }

    /* Within the interval nothing is looked at, even what is due by now. */
    assert_true(spool_write(f->d.spool, hold_aged, &h[3], NULL));
    dispatch_approval_expire(&f->d, now + 1000);
    assert_int_equal(msg_state(f, l[3].msg), MSG_HOLD);
    dispatch_approval_expire(&f->d, now + 5000);
    assert_int_equal(msg_state(f, l[3].msg), MSG_REJECTED);

    /* No list with approval: no scan at all. */
    dflt->approval = FALSE;
    h[1].age = 0;
    dispatch_approval_expire(&f->d, now + 60000);
    assert_int_equal(msg_state(f, l[1].msg), MSG_HOLD);
}

/* Many old messages the operator held, in one transaction. */
static gboolean put_held_many(struct spool_txn *t, void *ctx, GError **err)
{
    for (unsigned i = 0; i < *(unsigned *)ctx; i++) {
        struct leased l = { .state = MSG_READY, .arrived_ago = 7200 };
        struct approval_hold h = { .reason = "held by operator" };

        if (!put_leased(t, &l, err))
            return FALSE;
        h.id = l.msg;
        if (!hold_aged(t, &h, err))
            return FALSE;
    }
    return TRUE;
}

/*
 * One scan reads a bounded number of held records and the next goes on
 * from there: behind 256 old messages the operator held, a due one is
 * discarded at the second scan, not the first.
 */
static void test_approval_expiry_bounded(void **state)
{
    struct fixture *f = *state;
    struct postern_list *dflt = f->ts->cfg.lists->pdata[0];
    unsigned many = 256;
    struct leased due = { .n = 1, .state = MSG_READY, .due_at = unix_ms() / 1000,
                          .arrived_ago = 7000 };
    struct approval_hold h = { .age = 7000 };
    int64_t now = mono_ms();

    dflt->approval = TRUE;
    dflt->approval_expiry = 3600;
    assert_true(spool_write(f->d.spool, put_held_many, &many, NULL));
    assert_true(spool_write(f->d.spool, put_leased, &due, NULL));
    h.id = due.msg;
    assert_true(spool_write(f->d.spool, hold_aged, &h, NULL));

    dispatch_approval_expire(&f->d, now);
    assert_int_equal(msg_state(f, due.msg), MSG_HOLD);
    dispatch_approval_expire(&f->d, now + 5000);
    assert_int_equal(msg_state(f, due.msg), MSG_REJECTED);
    /* And then from the start again. */
    assert_true(f->d.approval_from == 0);
}

/*
 * An expired lease returns its deliveries to the due queue (ready if never
 * tried, deferred if tried before), forgets the job; an unexpired one stays.
 */
static void test_lease_expiry(void **state)
{
    struct fixture *f = *state;
    struct leased gone = store_leased(f, 2, unix_ms() - 1000);
    struct leased tried = { .n = 1, .expiry = unix_ms() - 1, .attempts = 2, .state = MSG_DEFERRED };
    struct leased live = store_leased(f, 1, unix_ms() + 60000);
    struct dispatch_job *job = g_new0(struct dispatch_job, 1);
    struct spool_dlv dv;

    assert_true(spool_write(f->d.spool, put_leased, &tried, NULL));
    job->lease = gone.lease;
    job->msg = gone.msg;
    job->rcpts = 2;
    dispatch_job_add(&f->d, job);
    assert_int_equal(index_entries(f, 1), 4);

    dispatch_expire_leases(&f->d);

    assert_null(g_hash_table_lookup(f->d.jobs, &gone.lease));
    assert_true(f->d.work_hinted);
    for (uint32_t i = 0; i < 2; i++) {
        dv = get_dlv(f, gone.msg, i);
        assert_int_equal(dv.state, DLV_READY);
        assert_int_equal(dv.lease, 0);
        assert_true(dv.next_try <= unix_ms() / 1000);
        spool_dlv_clear(&dv);
    }
    dv = get_dlv(f, tried.msg, 0);
    assert_int_equal(dv.state, DLV_DEFERRED);
    assert_int_equal(dv.attempts, 2);
    spool_dlv_clear(&dv);
    dv = get_dlv(f, live.msg, 0);
    assert_int_equal(dv.state, DLV_LEASED);
    spool_dlv_clear(&dv);
    assert_int_equal(index_entries(f, 1), 1);
    assert_int_equal(index_entries(f, 0), 3);

    /* A result for the expired lease now changes nothing. */
    const struct reply ok[] = { { 250, "2.0.0", "OK", 0 } };
    record(f, sdone(&gone, gone.lease, ok, 1));
    dv = get_dlv(f, gone.msg, 0);
    assert_int_equal(dv.state, DLV_READY);
    spool_dlv_clear(&dv);
}

/* ---- leasing ---------------------------------------------------------------------------- */

/*
 * Due deliveries (through spool_due_foreach()) go to a worker with credit
 * as one job per message: leased in the spool, the job known; a delivery
 * not yet due stays.
 */
static void test_lease_due(void **state)
{
    struct fixture *f = *state;
    struct leased now = { .n = 2, .state = MSG_READY, .due_at = unix_ms() / 1000 - 1 };
    struct leased later = { .n = 1, .state = MSG_READY, .due_at = unix_ms() / 1000 + 600 };
    struct dispatch_worker *a = add_sender(f, "a", 4);
    struct dispatch_job *job;
    GHashTableIter it;
    struct spool_dlv dv;

    assert_true(spool_write(f->d.spool, put_leased, &now, NULL));
    assert_true(spool_write(f->d.spool, put_leased, &later, NULL));
    conns_setup(f);
    f->d.conn_grace_until = 0;
    assert_int_equal(index_entries(f, 0), 3);

    dispatch_lease_deliveries(&f->d);

    assert_int_equal(g_hash_table_size(f->d.jobs), 1);
    g_hash_table_iter_init(&it, f->d.jobs);
    assert_true(g_hash_table_iter_next(&it, NULL, (gpointer *)&job));
    assert_int_equal(job->msg, now.msg);
    assert_int_equal(job->rcpts, 2);
    assert_ptr_equal(job->worker, a);
    assert_int_equal(a->credit, 3);
    for (uint32_t i = 0; i < 2; i++) {
        dv = get_dlv(f, now.msg, i);
        assert_int_equal(dv.state, DLV_LEASED);
        assert_int_equal(dv.lease, job->lease);
        spool_dlv_clear(&dv);
    }
    dv = get_dlv(f, later.msg, 0);
    assert_int_equal(dv.state, DLV_READY);
    spool_dlv_clear(&dv);
    assert_int_equal(index_entries(f, 0), 1);
    assert_int_equal(index_entries(f, 1), 2);
}

/* The job leased for msg this round, or NULL. */
static struct dispatch_job *job_of(struct fixture *f, queue_id msg)
{
    GHashTableIter it;
    struct dispatch_job *job;

    g_hash_table_iter_init(&it, f->d.jobs);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&job))
        if (job->msg == msg)
            return job;
    return NULL;
}

/*
 * A round with three jobs to give: a 250-recipient message due first
 * takes one (100 recipients), not all three; a notice due after it goes
 * first, and the one-recipient message behind it gets the third.
 */
static void test_lease_fair(void **state)
{
    struct fixture *f = *state;
    int64_t now = unix_ms() / 1000;
    struct leased big = { .n = 250, .state = MSG_READY, .due_at = now - 2 };
    struct leased small = { .n = 1, .state = MSG_READY, .due_at = now - 1 };
    struct leased notice = { .n = 1, .state = MSG_READY, .due_at = now - 1,
                             .kind = MSG_KIND_NOTICE };

    add_sender(f, "a", 10);
    assert_true(spool_write(f->d.spool, put_leased, &big, NULL));
    assert_true(spool_write(f->d.spool, put_leased, &small, NULL));
    assert_true(spool_write(f->d.spool, put_leased, &notice, NULL));
    conns_setup(f);
    f->d.conn_grace_until = 0;

    dispatch_lease_deliveries(&f->d);

    assert_int_equal(g_hash_table_size(f->d.jobs), 3);
    assert_non_null(job_of(f, notice.msg));
    assert_non_null(job_of(f, small.msg));
    assert_non_null(job_of(f, big.msg));
    assert_int_equal(job_of(f, big.msg)->rcpts, f->ts->cfg.relay.max_rcpt_per_txn);
    assert_int_equal(index_entries(f, 1), 102);
}

/*
 * A large copy is leased only while a connection can start it at once,
 * never into a sender's queue: with every connection busy the small
 * message behind it goes and it waits; once a job ends it takes the idle
 * connection.
 */
static void test_lease_large_copy_not_queued(void **state)
{
    struct fixture *f = *state;
    int64_t now = unix_ms() / 1000;
    struct leased big = { .n = 1, .state = MSG_READY, .due_at = now - 2,
                          .size = DISPATCH_QUEUE_COPY_MAX + 1 };
    struct leased small = { .n = 1, .state = MSG_READY, .due_at = now - 1, .size = 4096 };
    struct leased small2 = { .n = 1, .state = MSG_READY, .due_at = now - 1, .size = 4096 };
    struct dispatch_worker *w = add_sender(f, "a", 20);
    unsigned max = (unsigned)f->ts->cfg.relay.max_connections;
    uint64_t lease = 1000, first = 1000;

    conns_setup(f);
    f->d.conn_grace_until = 0;
    for (unsigned i = 0; i < max; i++) {
        struct dispatch_job *job = g_new0(struct dispatch_job, 1);

        assert_ptr_equal(dispatch_conns_pick(&f->d), w);
        job->lease = lease++;
        job->worker = w;
        job->rcpts = 1;
        w->credit--;
        dispatch_job_add(&f->d, job);
    }
    assert_int_equal(dispatch_conns_room_now(&f->d), 0);
    assert_true(dispatch_conns_room(&f->d) > 0);
    assert_true(spool_write(f->d.spool, put_leased, &big, NULL));
    assert_true(spool_write(f->d.spool, put_leased, &small, NULL));

    dispatch_lease_deliveries(&f->d);
    assert_non_null(job_of(f, small.msg));
    assert_null(job_of(f, big.msg));
    assert_int_equal(dlv_state(f, big.msg, 0), DLV_READY);

    /* Two jobs end: the small one queued starts on the first connection,
     * the other is idle, and the large copy takes it. */
    for (int i = 0; i < 2; i++, first++) {
        assert_true(g_hash_table_remove(f->d.jobs, &first));
        w->credit++;
    }
    assert_int_equal(dispatch_conns_room_now(&f->d), 1);
    assert_true(spool_write(f->d.spool, put_leased, &small2, NULL));
    dispatch_lease_deliveries(&f->d);
    assert_non_null(job_of(f, big.msg));
    assert_non_null(job_of(f, small2.msg));
    assert_int_equal(dlv_state(f, big.msg, 0), DLV_LEASED);
}

static struct relay_quota read_quota(struct fixture *f, const char *account)
{
    struct spool_txn t;
    struct relay_quota q;

    assert_true(spool_read_begin(f->d.spool, &t, NULL));
    assert_true(relay_quota_get(&t, account, &q, NULL));
    spool_read_end(&t);
    return q;
}

/*
 * [relay] daily_limit 5 with 8 due: 5 leased, the rest waits, the wait
 * written in the spool; no further round leases, not even a dispatcher
 * that starts afresh and knows only the spool.
 */
static void test_lease_daily_limit(void **state)
{
    struct fixture *f = *state;
    struct leased l = { .n = 8, .state = MSG_READY, .due_at = unix_ms() / 1000 - 1 };
    struct relay_quota q;

    f->ts->cfg.relay.daily_limit = 5;
    add_sender(f, "a", 10);
    assert_true(spool_write(f->d.spool, put_leased, &l, NULL));
    conns_setup(f);
    f->d.conn_grace_until = 0;

    dispatch_lease_deliveries(&f->d);
    assert_int_equal(index_entries(f, 1), 5);
    q = read_quota(f, NULL);
    assert_int_equal(relay_quota_used(&q, unix_ms()), 5);
    assert_int_equal(q.limit, 5);
    assert_true(q.waiting_until > unix_ms() + 23 * 3600 * 1000LL);
    assert_int_equal(f->d.accounts[0].quota_wait_until, q.waiting_until);

    dispatch_lease_deliveries(&f->d);
    f->d.accounts[0].quota_wait_until = 0;
    dispatch_lease_deliveries(&f->d);
    assert_int_equal(index_entries(f, 1), 5);
    assert_int_equal(index_entries(f, 0), 3);
    assert_int_equal(read_quota(f, NULL).waiting_until, q.waiting_until);
}

/* The account the next job would get, with every account's budget full. */
static struct dispatch_account *next_account(struct fixture *f)
{
    for (guint i = 0; i < f->d.naccounts; i++) {
        f->d.accounts[i].left_rcpts = G_MAXUINT32;
        f->d.accounts[i].left_txns = f->d.accounts[i].left_conns = G_MAXUINT;
    }
    return dispatch_account_choose(&f->d, unix_ms());
}

/* A second relay account in the fixture's config, as [relay NAME] loads it. */
static const struct postern_relay *add_account(struct fixture *f, const char *name)
{
    struct postern_relay *r = g_new0(struct postern_relay, 1);

    r->name = g_strdup(name);
    r->url = g_strdup("smtp://relay.test");
    r->tls = g_strdup("require");
    r->ca_file = g_strdup("");
    r->user = g_strdup(name);
    r->password_file = g_strdup("");
    g_ptr_array_add(f->ts->cfg.relays, r);
    return r;
}

/*
 * Two accounts: the jobs of a round go to them in turn, [relay] first,
 * and the next round goes on from where this one stopped.
 */
static void test_lease_accounts_in_turn(void **state)
{
    struct fixture *f = *state;
    const struct postern_relay *dflt = f->ts->cfg.relays->pdata[0];
    const struct postern_relay *b = add_account(f, "b");
    struct leased m[5];
    unsigned to_b = 0;

    dispatch_accounts_setup(&f->d);
    f->ts->cfg.relay.max_connections = 10;
    add_sender(f, "a", 10);
    for (int i = 0; i < 5; i++) {
        m[i] = (struct leased){ .n = 1, .state = MSG_READY, .due_at = unix_ms() / 1000 - 1 };
        assert_true(spool_write(f->d.spool, put_leased, &m[i], NULL));
    }
    conns_setup(f);
    f->d.conn_grace_until = 0;

    dispatch_lease_deliveries(&f->d);
    assert_int_equal(g_hash_table_size(f->d.jobs), 5);
    for (int i = 0; i < 5; i++) {
        const struct dispatch_job *job = job_of(f, m[i].msg);

        assert_true(job->account == dflt || job->account == b);
        to_b += job->account == b;
    }
    assert_int_equal(to_b, 2);
    /* The sixth job is b's: the turn goes on across rounds. */
    assert_ptr_equal(next_account(f)->relay, b);
    assert_ptr_equal(next_account(f)->relay, dflt);
}

/* An account's pause as the spool holds it. */
static struct relay_state read_pause(struct fixture *f, const char *account)
{
    struct spool_txn t;
    struct relay_state st;

    assert_true(spool_read_begin(f->d.spool, &t, NULL));
    assert_true(relay_state_get(&t, account, &st, NULL));
    spool_read_end(&t);
    return st;
}

/*
 * A quota reply to account b's job pauses b alone, in the dispatcher and
 * in the spool (relay.pause.b); the default account goes on taking every
 * job until b's pause ends.  With both paused nothing is leased.
 */
static void test_results_pause_one_account(void **state)
{
    struct fixture *f = *state;
    const struct postern_relay *b = add_account(f, "b");
    struct leased l = store_leased(f, 1, unix_ms() + 60000);
    const struct reply quota[] = { { 421, "4.7.0", "Try again later, closing connection.", 0 } };
    struct leased m[2];
    struct relay_state st;

    dispatch_accounts_setup(&f->d);
    record(f, sdone_as(&l, l.lease, quota, 1, "b"));
    assert_true(f->d.accounts[1].paused_until > unix_ms());
    assert_int_equal(f->d.accounts[0].paused_until, 0);
    st = read_pause(f, "b");
    assert_true(relay_state_paused(&st, unix_ms()));
    assert_string_equal(st.reason, "421 4.7.0 Try again later, closing connection.");
    st = read_pause(f, NULL);
    assert_false(relay_state_paused(&st, unix_ms()));
    assert_ptr_equal(next_account(f), &f->d.accounts[0]);

    f->ts->cfg.relay.max_connections = 10;
    add_sender(f, "a", 10);
    for (int i = 0; i < 2; i++) {
        m[i] = (struct leased){ .n = 1, .state = MSG_READY, .due_at = unix_ms() / 1000 - 1 };
        assert_true(spool_write(f->d.spool, put_leased, &m[i], NULL));
    }
    g_hash_table_remove_all(f->d.jobs);
    conns_setup(f);
    f->d.conn_grace_until = 0;
    dispatch_lease_deliveries(&f->d);
    for (int i = 0; i < 2; i++)
        assert_ptr_equal(job_of(f, m[i].msg)->account, f->ts->cfg.relays->pdata[0]);
    assert_ptr_not_equal(next_account(f)->relay, b);

    /* Both paused: no round, and no account for a job. */
    f->d.accounts[0].paused_until = unix_ms() + 60000;
    assert_false(dispatch_accounts_budget(&f->d, unix_ms()));
    assert_null(next_account(f));
}

/*
 * The choice of a job's account: the next in turn that is not paused and
 * has daily limit, rate and connections left; passing over the others;
 * none when every account is out.
 */
static void test_account_choice(void **state)
{
    struct fixture *f = *state;
    struct dispatch_account *dflt, *b, *c;

    add_account(f, "b");
    add_account(f, "c");
    dispatch_accounts_setup(&f->d);
    dflt = &f->d.accounts[0];
    b = &f->d.accounts[1];
    c = &f->d.accounts[2];
    assert_ptr_equal(next_account(f), dflt);
    assert_ptr_equal(next_account(f), b);
    assert_ptr_equal(next_account(f), c);

    /* b paused, c out of its daily limit: default takes every turn. */
    next_account(f);
    b->paused_until = unix_ms() + 60000;
    c->left_rcpts = 0;
    for (int i = 0; i < 3; i++)
        assert_ptr_equal(dispatch_account_choose(&f->d, unix_ms()), dflt);
    /* A job costs its account a connection: default's run out, then nothing. */
    dflt->left_conns = 2;
    assert_ptr_equal(dispatch_account_choose(&f->d, unix_ms()), dflt);
    assert_ptr_equal(dispatch_account_choose(&f->d, unix_ms()), dflt);
    assert_int_equal(dflt->left_conns, 0);
    assert_null(dispatch_account_choose(&f->d, unix_ms()));
    /* No rate left is out too; b's pause over, it is chosen again. */
    dflt->left_conns = 1;
    dflt->left_txns = 0;
    assert_null(dispatch_account_choose(&f->d, unix_ms()));
    b->paused_until = 0;
    assert_ptr_equal(dispatch_account_choose(&f->d, unix_ms()), b);
}

/*
 * Each account has a daily limit of its own (b inherits [relay]'s 3 as a
 * budget of its own): 8 due, 3 through each, each window in its own
 * record, both waiting; the next round leases nothing.
 */
static void test_lease_daily_limit_per_account(void **state)
{
    struct fixture *f = *state;
    const struct postern_relay *b = add_account(f, "b");
    struct leased m[8];
    unsigned to_b = 0, leased = 0;
    struct relay_quota q;

    dispatch_accounts_setup(&f->d);
    f->ts->cfg.relay.daily_limit = 3;
    f->ts->cfg.relay.max_connections = 10;
    add_sender(f, "a", 10);
    for (int i = 0; i < 8; i++) {
        m[i] = (struct leased){ .n = 1, .state = MSG_READY, .due_at = unix_ms() / 1000 - 1 };
        assert_true(spool_write(f->d.spool, put_leased, &m[i], NULL));
    }
    conns_setup(f);
    f->d.conn_grace_until = 0;

    dispatch_lease_deliveries(&f->d);
    for (int i = 0; i < 8; i++) {
        const struct dispatch_job *job = job_of(f, m[i].msg);

        leased += job != NULL;
        to_b += job && job->account == b;
    }
    assert_int_equal(leased, 6);
    assert_int_equal(to_b, 3);
    q = read_quota(f, NULL);
    assert_int_equal(relay_quota_used(&q, unix_ms()), 3);
    assert_true(q.waiting_until > unix_ms());
    assert_int_equal(f->d.accounts[0].quota_wait_until, q.waiting_until);
    q = read_quota(f, "b");
    assert_int_equal(relay_quota_used(&q, unix_ms()), 3);
    assert_int_equal(q.limit, 3);
    assert_true(q.waiting_until > unix_ms());
    assert_int_equal(f->d.accounts[1].quota_wait_until, q.waiting_until);

    /* Both wait: no round; nor one that ignores the waits, from the spool alone. */
    f->d.accounts[0].quota_wait_until = f->d.accounts[1].quota_wait_until = 0;
    dispatch_lease_deliveries(&f->d);
    assert_int_equal(g_hash_table_size(f->d.jobs), 6);
    assert_int_equal(index_entries(f, 0), 2);
}

/*
 * b's max_connections 1 is its own: one job of b in flight, the rest to
 * the default account; b's connection, idle after its job, still counts
 * until b's next job takes it again on the same worker.
 */
static void test_lease_connections_per_account(void **state)
{
    struct fixture *f = *state;
    struct postern_relay *b = (struct postern_relay *)add_account(f, "b");
    struct leased m[6];
    unsigned to_b = 0;

    b->limits.max_connections = 1;
    b->limits_set = CONFIG_RELAY_SET_MAX_CONNECTIONS;
    dispatch_accounts_setup(&f->d);
    f->ts->cfg.relay.max_connections = 10;
    add_sender(f, "a", 10);
    for (int i = 0; i < 6; i++) {
        m[i] = (struct leased){ .n = 1, .state = MSG_READY, .due_at = unix_ms() / 1000 - 1 };
        assert_true(spool_write(f->d.spool, put_leased, &m[i], NULL));
    }
    conns_setup(f);
    f->d.conn_grace_until = 0;
    assert_int_equal(dispatch_accounts_conn_max(&f->d), 11);

    dispatch_lease_deliveries(&f->d);
    assert_int_equal(g_hash_table_size(f->d.jobs), 6);
    for (int i = 0; i < 6; i++)
        to_b += job_of(f, m[i].msg)->account == b;
    assert_int_equal(to_b, 1);
    assert_int_equal(f->d.accounts[1].jobs, 1);

    /* Its job over, its connection idle on worker a: counted, and a takes it again. */
    for (int i = 0; i < 6; i++)
        if (job_of(f, m[i].msg)->account == b)
            g_hash_table_remove(f->d.jobs, &job_of(f, m[i].msg)->lease);
    assert_int_equal(f->d.accounts[1].jobs, 0);
    assert_int_equal(f->d.accounts[1].idle->len, 1);
    assert_true(dispatch_accounts_budget(&f->d, unix_ms()));
    assert_int_equal(f->d.accounts[1].round_conns, 1);      /* the idle one, again */
    assert_ptr_equal(dispatch_account_worker(&f->d, &f->d.accounts[1]),
                     g_hash_table_lookup(f->d.workers, "a"));
    /* With no credit on a, the idle connection still counts: no room for b. */
    ((struct dispatch_worker *)g_hash_table_lookup(f->d.workers, "a"))->credit = 0;
    dispatch_accounts_budget(&f->d, unix_ms());
    assert_int_equal(f->d.accounts[1].round_conns, 0);
}

/* A worker's DEALER says cmd with payload; the dispatcher reads what came. */
static void worker_says(struct fixture *f, void *dealer, const char *cmd, GBytes *payload)
{
    zmq_pollitem_t in = { f->sock, 0, ZMQ_POLLIN, 0 };

    assert_true(wire_send(dealer, NULL, cmd, payload));
    g_bytes_unref(payload);
    assert_int_equal(zmq_poll(&in, 1, 5000), 1);
    dispatch_receive(&f->d);
}

/* The dispatcher's sockets for worker_says(): the fixture's ROUTER, hints, done. */
static void wire_setup(struct fixture *f)
{
    f->d.router = f->sock;
    f->d.hints = zmq_socket(f->zctx, ZMQ_PULL);
    assert_int_equal(zmq_bind(f->d.hints, "inproc://test-hints"), 0);
    f->d.done = g_ptr_array_new_with_free_func(wire_send_result_free);
}

static void wire_teardown(struct fixture *f)
{
    zmq_close(f->d.hints);
    g_ptr_array_unref(f->d.done);
}

/* A worker's DEALER, connected to the fixture's ROUTER. */
static void *dealer_new(struct fixture *f)
{
    void *s = zmq_socket(f->zctx, ZMQ_DEALER);
    int linger = 0;

    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
    assert_int_equal(zmq_connect(s, "inproc://test-dispatch"), 0);
    return s;
}

static struct dispatch_worker *only_worker(struct fixture *f)
{
    GHashTableIter it;
    gpointer w = NULL;

    assert_int_equal(g_hash_table_size(f->d.workers), 1);
    g_hash_table_iter_init(&it, f->d.workers);
    g_hash_table_iter_next(&it, NULL, &w);
    return w;
}

/*
 * The wire version: a HELLO of version 1 (no version) or of another
 * version is not taken; a sender's last SDONE of a job carries its
 * credit, counted where it arrives, and its result is kept for the round.
 */
static void test_wire_version_and_sdone_credit(void **state)
{
    struct fixture *f = *state;
    void *old, *other, *cur;
    struct leased l = { .msg = 0x42 };
    const struct reply ok = { 250, "2.0.0", "ok", 0 };
    struct wire_send_result res, *got;

    wire_setup(f);
    old = dealer_new(f);
    other = dealer_new(f);
    cur = dealer_new(f);

    worker_says(f, old, WIRE_HELLO, wire_pack("(su)", "sender", 4));
    assert_int_equal(g_hash_table_size(f->d.workers), 0);
    assert_true(f->d.version_warned != 0);
    f->d.version_warned = 0;
    worker_says(f, other, WIRE_HELLO, wire_pack("(suu)", "sender", 4, WIRE_VERSION + 1));
    assert_int_equal(g_hash_table_size(f->d.workers), 0);
    assert_true(f->d.version_warned != 0);

    worker_says(f, cur, WIRE_HELLO, wire_pack("(suu)", "sender", 2, WIRE_VERSION));
    assert_int_equal(only_worker(f)->credit, 2);
    /* A transaction's SDONE before the job's end gives nothing back ... */
    worker_says(f, cur, WIRE_SDONE, sdone(&l, 7, &ok, 1));
    assert_int_equal(only_worker(f)->credit, 2);
    /* ... its last one gives its slot back, as a CREDIT did. */
    res = *(struct wire_send_result *)f->d.done->pdata[0];
    res.credit = 1;
    worker_says(f, cur, WIRE_SDONE, wire_send_result_encode(&res));
    assert_int_equal(only_worker(f)->credit, 3);
    assert_int_equal(f->d.done->len, 2);
    got = f->d.done->pdata[1];
    assert_int_equal(got->credit, 1);
    assert_int_equal(got->lease, 7);
    assert_int_equal(got->results->len, 1);
    /* Garbage where an SDONE should be: no credit, no result. */
    worker_says(f, cur, WIRE_SDONE, g_bytes_new_static("\x01\x02", 2));
    assert_int_equal(only_worker(f)->credit, 3);
    assert_int_equal(f->d.done->len, 2);

    zmq_close(old);
    zmq_close(other);
    zmq_close(cur);
    wire_teardown(f);
}

/*
 * A job's end while its worker still has two jobs a connection waits for
 * company, up to RESULT_HOLD_MS (20 ms); ends that leave it shorter ask
 * for the round at once, so that its queue is filled before a slot idles.
 */
static void test_results_held_while_the_worker_has_jobs(void **state)
{
    struct fixture *f = *state;
    void *dealer;
    struct dispatch_worker *w;
    struct wire_send_result res;
    int64_t t0 = mono_ms();

    wire_setup(f);
    dealer = dealer_new(f);
    worker_says(f, dealer, WIRE_HELLO, wire_pack("(suu)", "sender", 0, WIRE_VERSION));
    w = only_worker(f);
    w->conn_granted = 2;
    for (uint64_t lease = 1; lease <= 8; lease++) {
        struct dispatch_job *job = g_new0(struct dispatch_job, 1);

        job->lease = lease;
        job->worker = w;
        job->rcpts = 1;
        dispatch_job_add(&f->d, job);
    }
    assert_false(dispatch_results_now(&f->d, t0));
    wire_send_result_init(&res);
    res.credit = 1;
    for (uint64_t lease = 1; lease <= 5; lease++) {
        res.lease = lease;
        worker_says(f, dealer, WIRE_SDONE, wire_send_result_encode(&res));
        /* Up to four ends, four jobs or more are left: two a connection. */
        if (lease == 1) {
            assert_false(dispatch_results_now(&f->d, t0));
            assert_false(dispatch_results_now(&f->d, t0 + 19));
            assert_true(dispatch_results_now(&f->d, t0 + 20));
            assert_false(dispatch_results_now(&f->d, t0));
        }
        assert_true(dispatch_results_now(&f->d, t0) == (lease == 5));
    }
    assert_int_equal(w->ended, 5);
    assert_int_equal(w->credit, 5);
    wire_send_result_clear(&res);
    zmq_close(dealer);
    wire_teardown(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_results_classified, setup, teardown),
        cmocka_unit_test_setup_teardown(test_account_choice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_daily_limit_per_account, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_connections_per_account, setup, teardown),
        cmocka_unit_test_setup_teardown(test_results_done_with_report, setup, teardown),
        cmocka_unit_test_setup_teardown(test_results_while_held, setup, teardown),
        cmocka_unit_test_setup_teardown(test_results_pause_and_fencing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_results_release_job, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conns_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_results_given_back_unstarted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conns_adopt_leases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_large_copy_not_queued, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conns_queue_after_connections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_results_held_while_the_worker_has_jobs, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_lease_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_approval_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_approval_expiry_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_due, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_fair, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_daily_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_accounts_in_turn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_results_pause_one_account, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wire_version_and_sdone_credit, setup, teardown),
    };
    log_init("test_dispatch", TRUE);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
