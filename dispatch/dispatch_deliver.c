/*
 * dispatch_deliver.c - lease due deliveries to sender workers, and take
 * back the leases that ran out.
 *
 * Due work is found through the `due` index (time order), never a scan of
 * all deliveries: the cost of a round is the number of deliveries it
 * leases, whatever the size of the spool.
 */
#include "dispatch/dispatch.h"
#include "common/log.h"

#include <string.h>

#define DUE_SCAN_MAX 4096           /* index entries looked at per round */

struct djob {
    queue_id msg;
    GArray *idx;                    /* uint32_t recipient numbers */
    unsigned txns;                  /* SMTP transactions: what [relay] rate counts */
    gboolean shared;                /* has recipients of the identical copy */
    struct wire_send_job wire;
};

struct dlease {
    struct dispatch *d;
    unsigned max_jobs;
    unsigned max_txns;              /* [relay] rate budget for this round */
    GPtrArray *jobs;                /* struct djob */
};

static void djob_free(gpointer p)
{
    struct djob *j = p;
    g_array_unref(j->idx);
    wire_send_job_clear(&j->wire);
    g_free(j);
}

/*
 * Open job for msg with room for one more recipient, or a new one; NULL
 * when every job allowed this round is taken.  A message's due entries
 * are next to each other in `due` (time . id . rcpt#), so the last job is
 * looked at first.
 */
static struct djob *dlease_job_for(struct dlease *dl, queue_id msg)
{
    for (guint i = dl->jobs->len; i-- > 0;) {
        struct djob *j = dl->jobs->pdata[i];
        if (j->msg == msg && j->idx->len < dl->d->cfg->relay.max_rcpt_per_txn)
            return j;
    }
    if (dl->jobs->len >= dl->max_jobs)
        return NULL;
    struct djob *j = g_new0(struct djob, 1);
    wire_send_job_init(&j->wire);
    j->msg = msg;
    j->idx = g_array_new(FALSE, FALSE, sizeof(uint32_t));
    g_ptr_array_add(dl->jobs, j);
    return j;
}

/*
 * What one more recipient costs a job in SMTP transactions, as the worker
 * will plan them (sender_plan()): a personalised copy is one of its own;
 * the identical copy is one for all its recipients in the job (a job has
 * at most max_rcpt_per_txn).
 */
static gboolean dlease_cost(struct spool_txn *t, const struct djob *j, uint32_t idx,
                            gboolean *own, unsigned *cost, GError **err)
{
    struct spool_dlv dv;

    if (!spool_dlv_get(t, j->msg, idx, &dv, err))
        return FALSE;
    *own = dv.header != NULL;
    *cost = *own || !j->shared;
    spool_dlv_clear(&dv);
    return TRUE;
}

/* What the walk over `due` carries from one entry to the next. */
struct dpick {
    struct spool_txn *t;
    struct dlease *dl;
    unsigned seen, txns;
    gboolean ok;
    GError **err;
};

/* One due entry: into a job, or FALSE to end the round here. */
static gboolean dlease_pick_one(const struct spool_dlv_ref *ref, void *ctx)
{
    struct dpick *p = ctx;
    struct dlease *dl = p->dl;
    struct djob *j;
    gboolean own;
    unsigned cost;

    if (p->seen++ >= DUE_SCAN_MAX || !(j = dlease_job_for(dl, ref->msg)))
        return FALSE;
    if (!(p->ok = dlease_cost(p->t, j, ref->idx, &own, &cost, p->err)) ||
        p->txns + cost > dl->max_txns) {
        /* A job opened for this entry alone stays out of the round. */
        if (!j->idx->len)
            g_ptr_array_remove_index(dl->jobs, dl->jobs->len - 1);
        return FALSE;
    }
    g_array_append_val(j->idx, ref->idx);
    j->shared |= !own;
    j->txns += cost;
    p->txns += cost;
    return TRUE;
}

/*
 * Walk `due` from its head while entries are due: group them into jobs.
 * Stop at the first entry that fits no job once every job allowed this
 * round is open: the rest waits for the next round.  (Walking on to
 * DUE_SCAN_MAX then made a round cost 4096 index steps whenever more than
 * that was pending, for the one or two jobs a round usually has credit
 * for: the cost per delivery grew with the queue.)
 */
static gboolean dlease_pick(struct spool_txn *t, struct dlease *dl, GError **err)
{
    struct dpick p = { t, dl, 0, 0, TRUE, err };

    return spool_due_foreach(t, unix_ms(), dlease_pick_one, &p, err) && p.ok;
}

/* Mark a job's deliveries leased and fill in what the worker needs. */
static gboolean dlease_fill(struct spool_txn *t, struct dlease *dl, struct djob *j, GError **err)
{
    struct spool_msg m;
    g_autoptr(GByteArray) body = g_byte_array_new();
    int64_t expiry = unix_ms() + (int64_t)dl->d->cfg->retry.lease * 1000;

    if (!spool_msg_get(t, j->msg, &m, err))
        return FALSE;
    j->wire.msg = j->msg;
    j->wire.mail_from = g_strdup(g_strcmp0(m.kind, MSG_KIND_NOTICE) == 0 ? "" : dl->d->mail_from);
    spool_msg_clear(&m);
    if (!(j->wire.lease = spool_id_next(t, err)) ||
        !spool_body_get(t, DB_OUTGOING, j->msg, body, err))
        return FALSE;
    j->wire.body = g_byte_array_free_to_bytes(g_steal_pointer(&body));
    for (guint i = 0; i < j->idx->len; i++) {
        struct spool_dlv dv;
        struct wire_rcpt r = { 0 };

        if (!spool_dlv_get(t, j->msg, g_array_index(j->idx, uint32_t, i), &dv, err))
            return FALSE;
        dv.state = DLV_LEASED;
        dv.lease = j->wire.lease;
        dv.lease_expiry = expiry;
        r.idx = dv.idx;
        r.rcpt = g_strdup(dv.rcpt);
        r.header = dv.header ? g_bytes_ref(dv.header) : NULL;
        g_array_append_val(j->wire.rcpts, r);
        gboolean ok = spool_dlv_put(t, &dv, err);
        spool_dlv_clear(&dv);
        if (!ok)
            return FALSE;
    }
    return TRUE;
}

static gboolean dlease_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct dlease *dl = ctx;

    g_ptr_array_set_size(dl->jobs, 0);
    if (!dlease_pick(t, dl, err))
        return FALSE;
    for (guint i = 0; i < dl->jobs->len; i++)
        if (!dlease_fill(t, dl, dl->jobs->pdata[i], err))
            return FALSE;
    return TRUE;
}

/*
 * [relay] rate is a token bucket of messages per second towards the relay
 * (SPEC §2): one per SMTP transaction, however many recipients it has,
 * holding at most one second's worth.  Tokens are spent only on the jobs
 * a worker took.
 */
static unsigned dispatch_rate_budget(struct dispatch *d)
{
    double rate = d->cfg->relay.rate;
    int64_t now = mono_ms();

    if (rate <= 0)
        return G_MAXUINT;
    d->rate_tokens = MIN(d->rate_tokens + rate * (double)(now - d->rate_refilled) / 1000.0,
                         MAX(rate, 1.0));
    d->rate_refilled = now;
    return (unsigned)d->rate_tokens;
}

void dispatch_lease_deliveries(struct dispatch *d)
{
    struct dlease dl = { .d = d, .max_jobs = dispatch_conns_room(d) };
    GError *err = NULL;

    if (!dl.max_jobs || d->paused_until > unix_ms())
        return;
    if (!(dl.max_txns = dispatch_rate_budget(d)))
        return;
    dl.jobs = g_ptr_array_new_with_free_func(djob_free);
    if (!spool_write(d->spool, dlease_write, &dl, &err)) {
        msg_warn("lease deliveries: %s", err->message);
        g_clear_error(&err);
        g_ptr_array_set_size(dl.jobs, 0);
    }
    for (guint i = 0; i < dl.jobs->len; i++) {
        struct djob *j = dl.jobs->pdata[i];
        struct dispatch_worker *w = dispatch_conns_pick(d);
        g_autoptr(GBytes) payload = wire_send_job_encode(&j->wire);
        char id[QUEUE_ID_LEN + 1];

        /* The payload holds its own copy and zmq_send makes another: let
         * the body go first, or a 30 MiB message costs 3 x 30 MiB here. */
        g_clear_pointer(&j->wire.body, g_bytes_unref);

        spool_id_format(j->msg, id);
        if (!w || !wire_send(w->sock, w->identity, WIRE_SJOB, payload)) {
            msg_warn("%s: no sender worker took %u recipient(s): they wait for the lease to expire",
                     id, j->idx->len);
            continue;
        }
        if (d->cfg->relay.rate > 0)
            d->rate_tokens -= j->txns;
        w->credit--;
        struct dispatch_job *job = g_new0(struct dispatch_job, 1);
        job->lease = j->wire.lease;
        job->msg = j->msg;
        job->worker = w;
        job->rcpts = j->idx->len;
        dispatch_job_add(d, job);
        msg_info("%s: %u recipient(s) leased to worker %s", id, j->idx->len, w->name);
    }
    g_ptr_array_unref(dl.jobs);
}

/* Lease expiry */

struct expiry {
    struct dispatch *d;
    GArray *expired;                /* uint64 lease ids whose jobs to forget */
};

#define EXPIRE_MAX 1024              /* leases taken back per round */

/* Collect the expired ones first: the walk must not see its index change. */
static gboolean expire_collect(const struct spool_dlv_ref *ref, void *ctx)
{
    GArray *refs = ctx;

    g_array_append_val(refs, *ref);
    return refs->len < EXPIRE_MAX;
}

static gboolean expire_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct expiry *ex = ctx;
    g_autoptr(GArray) refs = g_array_new(FALSE, FALSE, sizeof(struct spool_dlv_ref));
    int64_t now = unix_ms();

    g_array_set_size(ex->expired, 0);
    if (!spool_lease_foreach(t, now, expire_collect, refs, err))
        return FALSE;
    for (guint i = 0; i < refs->len; i++) {
        const struct spool_dlv_ref *ref = &g_array_index(refs, struct spool_dlv_ref, i);
        struct spool_dlv dv;
        char id[QUEUE_ID_LEN + 1];

        if (!spool_dlv_get(t, ref->msg, ref->idx, &dv, err))
            return FALSE;
        spool_id_format(dv.msg, id);
        g_array_append_val(ex->expired, dv.lease);
        spool_txn_log(t, "%s: to=<%s>, lease expired: back in the queue", id, dv.rcpt);
        dv.state = dv.attempts ? DLV_DEFERRED : DLV_READY;
        dv.next_try = now / 1000;
        dv.lease = 0;
        gboolean ok = spool_dlv_put(t, &dv, err);
        spool_dlv_clear(&dv);
        if (!ok)
            return FALSE;
    }
    return TRUE;
}

void dispatch_expire_leases(struct dispatch *d)
{
    struct expiry ex = { d, g_array_new(FALSE, FALSE, sizeof(uint64_t)) };
    GError *err = NULL;

    if (!spool_write(d->spool, expire_write, &ex, &err)) {
        msg_warn("expire leases: %s", err->message);
        g_clear_error(&err);
    }
    for (guint i = 0; i < ex.expired->len; i++)
        g_hash_table_remove(d->jobs, &g_array_index(ex.expired, uint64_t, i));
    if (ex.expired->len)
        d->work_hinted = TRUE;
    g_array_unref(ex.expired);
}
