/*
 * dispatch_result.c - record what the sender workers report.
 *
 * Each recipient's result is checked against the lease in the spool
 * (fencing: a result for a lease that expired or was never ours changes
 * nothing), classified by the retry policy, logged as one Postfix-style
 * line, and the message moves on: done when every delivery has ended,
 * with a bounce report queued for the token owner if any bounced.
 */
#include "dispatch/dispatch.h"
#include "common/log.h"
#include "spool/relay_state.h"

#include <string.h>

/* What the results of one transaction say about one relay account. */
struct raccount {
    gboolean any_sent;
    gboolean paused;                /* a new pause begins in this transaction */
    gboolean auth;                  /* ... because the relay refused our AUTH */
    int64_t pause_until_us;
    char reason[RELAY_REASON_MAX];  /* the reply that began it */
    struct relay_state before;      /* as the transaction found it */
    struct relay_state relay;       /* as committed; applied to the dispatcher after */
};

struct rresult {
    struct dispatch *d;
    GPtrArray *results;             /* struct wire_send_result* */
    struct raccount *accounts;      /* as d->accounts */
    GHashTable *msgs;               /* queue_id -> struct rmsg: read once per transaction */
    GPtrArray *order;               /* struct rmsg, in the order first seen: settled so */
};

static char *result_reply(const struct wire_rcpt_result *r)
{
    if (r->code)
        return g_strdup_printf("%u%s%s %s", r->code, *r->status ? " " : "", r->status, r->text);
    return g_strdup(r->text);
}

/* next_try is kept in whole seconds: round up, never retry early. */
static int64_t usec_to_sec_up(int64_t usec)
{
    return (usec + G_USEC_PER_SEC - 1) / G_USEC_PER_SEC;
}

/* Is another account, not paused, there to take a delivery at once? */
static gboolean result_elsewhere(const struct rresult *rr, const struct raccount *ra,
                                 int64_t now_ms)
{
    for (guint i = 0; i < rr->d->naccounts; i++) {
        const struct raccount *other = &rr->accounts[i];

        if (other != ra && !other->paused && !relay_state_paused(&other->before, now_ms))
            return TRUE;
    }
    return FALSE;
}

/*
 * Decide a delivery's next state from one attempt.  A quota or throttle
 * reply, or a refused AUTH, pauses the job's relay account and defers the
 * delivery until the pause ends (or, with another account not paused,
 * to the next round), never bouncing it for the reply itself; but a
 * pause that lasts must not keep it forever: past [retry] lifetime it
 * bounces.  One event, one pause: a pausing reply to a job leased before
 * the pause in the spool began (relay_state_news) was already answered by
 * it, and neither pauses again nor doubles the next pause; several in this
 * transaction begin one pause.  Likewise only a copy leased after the
 * pause began, when sent, ends the run of pauses.
 */
static const char *result_apply(struct rresult *rr, struct raccount *ra, struct spool_dlv *dv,
                                 uint64_t lease, const struct wire_rcpt_result *r,
                                 int64_t now_us)
{
    struct dispatch *d = rr->d;
    struct smtp_rcpt_result sr = { .code = r->code, .text = r->text, .error = r->error };
    enum retry_verdict v;
    gint64 next = 0;

    g_strlcpy(sr.status, r->status, sizeof(sr.status));
    dv->attempts++;
    dv->lease = 0;
    g_free(dv->last_reply);
    dv->last_reply = result_reply(r);
    v = retry_classify(&sr);
    if (v == RETRY_PAUSE && !ra->paused && relay_state_news(&ra->before, lease)) {
        ra->pause_until_us = now_us + retry_pause(&d->policy, ra->before.pauses + 1);
        ra->paused = TRUE;
        ra->auth = smtp_result_auth_refused(&sr);
        g_strlcpy(ra->reason, dv->last_reply, sizeof(ra->reason));
    }
    if (v == RETRY_PAUSE && (ra->paused || relay_state_paused(&ra->before, now_us / 1000))) {
        next = ra->paused ? ra->pause_until_us : ra->before.paused_until * 1000;
        /* Another account takes it in the next round: only this one is paused. */
        if (result_elsewhere(rr, ra, now_us / 1000))
            next = now_us;
        v = retry_expired(&d->policy, dv->created * G_USEC_PER_SEC, now_us) ? RETRY_BOUNCE
                                                                            : RETRY_DEFER;
    } else if (v == RETRY_DEFER || v == RETRY_PAUSE) {
        /* A late reply to a pause already over (or resumed): an ordinary retry. */
        v = retry_schedule(&d->policy, dv->attempts, dv->created * G_USEC_PER_SEC, now_us,
                           g_random_double(), &next);
    }
    switch (v) {
    case RETRY_SENT:
        dv->state = DLV_SENT;
        ra->any_sent |= relay_state_news(&ra->before, lease);
        return "sent";
    case RETRY_DEFER:
        dv->state = DLV_DEFERRED;
        dv->next_try = usec_to_sec_up(next);
        return "deferred";
    default:
        dv->state = DLV_BOUNCED;
        return "bounced";
    }
}

/*
 * Each account's pause goes into the spool with the reply that caused it,
 * so that a restarted dispatcher keeps it; a delivery sent through the
 * account ends its run of pauses.  Nothing is written when neither
 * happened.  The state is the one this transaction read, not the
 * dispatcher's copy: spoolctl relay
 * resume may have cleared it since the last tick.
 */
static gboolean result_relay_state(struct spool_txn *t, struct rresult *rr, GError **err)
{
    for (guint i = 0; i < rr->d->naccounts; i++) {
        struct raccount *ra = &rr->accounts[i];

        ra->relay = ra->before;
        if (ra->paused) {
            ra->relay.paused_until = ra->pause_until_us / 1000;
            ra->relay.pauses++;
            g_strlcpy(ra->relay.reason, ra->reason, sizeof(ra->relay.reason));
            /* Every lease taken so far has a smaller id: their replies are this event. */
            if (!(ra->relay.since = spool_id_next(t, err)))
                return FALSE;
        } else if (ra->any_sent && ra->before.pauses) {
            ra->relay.pauses = 0;
        } else {
            continue;
        }
        if (!relay_state_put(t, rr->d->accounts[i].relay->name, &ra->relay, err))
            return FALSE;
    }
    return TRUE;
}

/* A message as this transaction read it, for every result about it. */
struct rmsg {
    struct spool_msg m;
    gboolean missing;               /* no longer in the spool: its results are ignored */
};

static void rmsg_free(gpointer p)
{
    struct rmsg *rm = p;

    spool_msg_clear(&rm->m);
    g_free(rm);
}

/*
 * Each message is read once per transaction, however many results of the
 * batch are about it, and settled once after all of them: settling counts
 * every delivery of the message, which for a large one costs more than
 * the results themselves.
 */
static struct rmsg *result_msg(struct spool_txn *t, struct rresult *rr, queue_id msg)
{
    struct rmsg *rm = g_hash_table_lookup(rr->msgs, &msg);

    if (rm)
        return rm;
    rm = g_new0(struct rmsg, 1);
    if (!spool_msg_get(t, msg, &rm->m, NULL)) {
        spool_msg_init(&rm->m);
        rm->m.id = msg;
        rm->missing = TRUE;
    }
    g_hash_table_insert(rr->msgs, &rm->m.id, rm);
    g_ptr_array_add(rr->order, rm);
    return rm;
}

/* One recipient's result: fenced by the lease, classified, logged, stored. */
static gboolean result_one(struct spool_txn *t, struct rresult *rr, struct raccount *ra,
                           struct rmsg *rm, const struct wire_send_result *res,
                           const struct wire_rcpt_result *r, int64_t now_us, const char *id,
                           GError **err)
{
    struct spool_dlv old, dv;
    gboolean ok;

    if (!spool_dlv_get(t, res->msg, r->idx, &old, NULL))
        return TRUE;
    if (old.state != DLV_LEASED || old.lease != res->lease) {
        msg_warn("%s: to=<%s>: result for an expired lease ignored", id, old.rcpt);
        spool_dlv_clear(&old);
        return TRUE;
    }
    /* Given back unstarted (sender_slot.c): no attempt, back in the queue now. */
    if (r->error == SMTP_ERROR_NOT_STARTED) {
        g_autofree char *why = g_strdup_printf("lease given back (%s)", r->text);

        ok = dispatch_dlv_requeue(t, &old, now_us / 1000, why, err);
        spool_dlv_clear(&old);
        return ok;
    }
    /* The record read is the one replaced: a shallow copy is changed and stored. */
    dv = old;
    dv.last_reply = NULL;
    const char *status = result_apply(rr, ra, &dv, res->lease, r, now_us);
    spool_txn_log(t, "%s: to=<%s>, relay=%s, delay=%.1f, attempts=%u, dsn=%s, status=%s (%s)",
                  id, dv.rcpt, *r->relay ? r->relay : "none",
                  (double)(now_us / 1000 - rm->m.arrival * 1000) / 1000.0, dv.attempts,
                  *r->status ? r->status : (r->code / 100 == 2 ? "2.0.0" : "4.0.0"), status,
                  dv.last_reply);
    ok = spool_dlv_replace(t, &old, &dv, err);
    g_free(dv.last_reply);
    spool_dlv_clear(&old);
    return ok;
}

static gboolean result_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct rresult *rr = ctx;
    int64_t now_us = g_get_real_time();

    /* spool_write may run us again (map growth): start from what the spool holds. */
    memset(rr->accounts, 0, rr->d->naccounts * sizeof(*rr->accounts));
    g_hash_table_remove_all(rr->msgs);
    g_ptr_array_set_size(rr->order, 0);
    for (guint i = 0; i < rr->d->naccounts; i++)
        if (!relay_state_get(t, rr->d->accounts[i].relay->name, &rr->accounts[i].before, err))
            return FALSE;
    for (guint j = 0; j < rr->results->len; j++) {
        struct wire_send_result *res = rr->results->pdata[j];
        struct rmsg *rm = result_msg(t, rr, res->msg);
        struct raccount *ra = &rr->accounts[dispatch_account_find(rr->d, res->account) -
                                            rr->d->accounts];
        char id[QUEUE_ID_LEN + 1];

        spool_id_format(res->msg, id);
        if (rm->missing) {
            msg_warn("%s: result for a message no longer in the spool: ignored", id);
            continue;
        }
        for (guint i = 0; i < res->results->len; i++)
            if (!result_one(t, rr, ra, rm, res,
                            &g_array_index(res->results, struct wire_rcpt_result, i), now_us, id,
                            err))
                return FALSE;
    }
    for (guint i = 0; i < rr->order->len; i++) {
        struct rmsg *rm = rr->order->pdata[i];

        if (!rm->missing && !spool_msg_settle_msg(t, &rm->m, err))
            return FALSE;
    }
    return result_relay_state(t, rr, err);
}

/*
 * Results that leave every slot busy (a job's transactions before its
 * last, or a job's end while the worker still has jobs queued) may wait
 * this long for company before a round records them.  Each round is a
 * durable commit, two fdatasync and the page writes, and a personalised
 * job sends an SDONE per transaction: recording each alone cost one commit
 * per delivery (75 us of dispatcher CPU a delivery, docs/benchmarks.md).
 * Held, they go in with the round a worker running short of jobs asks for
 * (dispatch_results_now()), or of any other reason, or at the latest
 * after this.  Nothing waits on their commit: the slots have work.  What
 * this widens is the window in which a dispatcher crash loses results
 * already received, from one commit to this; such deliveries go again
 * when their lease runs out, as they would if the crash came a commit
 * later.
 */
#define RESULT_HOLD_MS 20

/*
 * Must the results received so far be recorded in this round?  Yes when
 * they have waited enough, or when a sender runs short of jobs: fewer
 * than two a connection granted, once the jobs that ended are taken away,
 * so that its queue (common/wire.h, WIRE_JOBS_PER_SLOT) is refilled before
 * a slot of it idles.  Until then a job's end frees a place in a queue,
 * and the slot goes on with the next job without us.
 */
gboolean dispatch_results_now(struct dispatch *d, int64_t now)
{
    GHashTableIter it;
    struct dispatch_worker *w;

    if (!d->done->len)
        return FALSE;
    if (!d->results_due)
        d->results_due = now + RESULT_HOLD_MS;
    g_hash_table_iter_init(&it, d->workers);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&w))
        if (w->ended && w->jobs - MIN(w->ended, w->jobs) < 2 * MAX(w->conn_granted, 1))
            return TRUE;
    return now >= d->results_due;
}

void dispatch_results_init(struct rresult **out, struct dispatch *d, GPtrArray *done)
{
    struct rresult *rr = g_new0(struct rresult, 1);
    gsize n;
    gpointer *taken = g_ptr_array_steal(done, &n);

    rr->d = d;
    rr->accounts = g_new0(struct raccount, d->naccounts);
    rr->results = g_ptr_array_new_with_free_func(wire_send_result_free);
    rr->msgs = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, rmsg_free);
    rr->order = g_ptr_array_new();
    for (gsize i = 0; i < n; i++)
        g_ptr_array_add(rr->results, taken[i]);
    g_free(taken);
    *out = rr;
}

/*
 * A job holds its connection until every recipient has a result: workers
 * report each SMTP transaction as it ends.  The worker is done with what
 * it reported whether or not the results commit, so this comes first:
 * the leases of the same round may use the connections freed.
 */
void dispatch_results_jobs(struct dispatch *d, struct rresult *rr)
{
    GHashTableIter it;
    struct dispatch_worker *w;

    for (guint i = 0; i < rr->results->len; i++) {
        struct wire_send_result *res = rr->results->pdata[i];
        struct dispatch_job *job = g_hash_table_lookup(d->jobs, &res->lease);

        if (job && (job->rcpts -= MIN(job->rcpts, res->results->len)) == 0)
            g_hash_table_remove(d->jobs, &res->lease);
    }
    /* rr took every result received (done is left empty): none is pending. */
    g_hash_table_iter_init(&it, d->workers);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&w))
        w->ended = 0;
}

gboolean dispatch_results_write(struct spool_txn *t, struct rresult *rr, GError **err)
{
    return result_write(t, rr, err);
}

/* The accounts as the results' transaction left them (what dispatch_results_done() adopts). */
gboolean dispatch_results_paused(const struct rresult *rr, int64_t now_ms)
{
    for (guint i = 0; i < rr->d->naccounts; i++) {
        const struct raccount *ra = &rr->accounts[i];

        if (!relay_state_paused(&ra->relay, now_ms))
            return FALSE;
    }
    return TRUE;
}

/* After the commit (ok) or its failure: adopt the relay state, free rr. */
void dispatch_results_done(struct dispatch *d, struct rresult *rr, gboolean ok)
{
    for (guint i = 0; ok && i < d->naccounts; i++) {
        struct raccount *ra = &rr->accounts[i];
        struct dispatch_account *a = &d->accounts[i];

        a->pauses = ra->relay.pauses;
        a->paused_until = ra->relay.paused_until;
        a->pause_since = ra->relay.since;
        if (ra->paused) {
            g_autofree char *why = ra->auth
                ? g_strdup_printf("after the relay refused AUTH (%s): check [relay%s%s] user and "
                                  "password_file, then spoolctl relay resume", ra->reason,
                                  i ? " " : "", i ? a->relay->name : "")
                : g_strdup_printf("after a quota or throttle reply (%s)", ra->reason);

            a->held = TRUE;
            dispatch_account_log_pause(d, a, why);
        }
    }
    g_free(rr->accounts);
    g_ptr_array_unref(rr->results);
    g_hash_table_unref(rr->msgs);
    g_ptr_array_unref(rr->order);
    g_free(rr);
    d->work_hinted = TRUE;
}

unsigned dispatch_results_count(const struct rresult *rr)
{
    return rr->results->len;
}

static gboolean results_write_alone(struct spool_txn *t, void *ctx, GError **err)
{
    return result_write(t, ctx, err);
}

/*
 * Results that arrive together are recorded in one transaction: one
 * fsync for a whole round of workers' reports.  (The main loop records
 * them with the round's leases, dispatch_round(); this is the path alone.)
 */
void dispatch_record_results(struct dispatch *d, GPtrArray *done)
{
    struct rresult *rr;
    GError *err = NULL;
    gboolean ok;

    dispatch_results_init(&rr, d, done);
    dispatch_results_jobs(d, rr);
    if (!(ok = spool_write(d->spool, results_write_alone, rr, &err))) {
        /* The leases stay: they expire and the deliveries are tried again. */
        msg_error("recording %u result(s) failed: %s", rr->results->len, err->message);
        g_clear_error(&err);
    }
    dispatch_results_done(d, rr, ok);
}

void dispatch_forget_worker(struct dispatch *d, struct dispatch_worker *w)
{
    GHashTableIter it;
    struct dispatch_job *j;

    /*
     * A worker cut off may still be at work: its jobs stay, as those of a
     * worker we do not know, and count against max_connections until
     * their results come or their leases expire.
     */
    g_hash_table_iter_init(&it, d->jobs);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&j))
        if (j->worker == w)
            j->worker = NULL;
    w->jobs = 0;
}
