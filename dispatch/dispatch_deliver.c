/*
 * dispatch_deliver.c - lease due deliveries to sender workers, and take
 * back the leases that ran out.
 *
 * Due work is found through the `due` index (time order), never a scan of
 * all deliveries: the cost of a round is the number of deliveries it
 * leases, whatever the size of the spool.
 *
 * A round is fair between messages: it looks at the next few messages
 * with due work (spool_due_runs(), a seek per message, however many
 * recipients each has), in turn from where the last round stopped, and
 * gives each one job at a time, notices first, until the round's jobs,
 * or every account's rate, connections or daily limit, are used up.  A
 * 5,000-recipient send thus takes one job in each round it shares, and a
 * notice or a small message queued behind it goes in the next round, not
 * after it.  A job's account is chosen as the job is opened, in this
 * transaction, so that the job fits what that account has left
 * (dispatch_account_choose()).
 */
#include "dispatch/dispatch.h"
#include "common/log.h"
#include "spool/relay_quota.h"
#include "spool/relay_state.h"
#include "spool/spool_events.h"

#include <string.h>

#define DUE_SCAN_MAX 4096           /* index entries looked at per round */

struct djob {
    queue_id msg;
    gboolean notice;                /* kind notice: null sender (read with the run) */
    GArray *dvs;                    /* struct spool_dlv, as the walk read them */
    unsigned txns;                  /* SMTP transactions: what [relay] rate counts */
    gboolean shared;                /* has recipients of the identical copy */
    struct dispatch_account *acct;  /* the relay account it goes through */
    gboolean closed;                /* its account had no more room: it takes no more */
    gboolean big;                   /* its copy is never queued (DISPATCH_QUEUE_COPY_MAX) */
    struct wire_send_job wire;
};

struct dlease {
    struct dispatch *d;
    gboolean skip;                  /* nothing to lease this round (no room, paused, rate) */
    unsigned max_jobs;
    unsigned big_left;              /* jobs of large copies still allowed: they start at once */
    gboolean capped;                /* due deliveries left behind this round */
    guint account_next;             /* d->account_next at the start of the round */
    struct relay_quota *quota;      /* per account, as this round's transaction leaves it */
    struct spool_dlv_ref after;     /* the last message served: the next round starts past it */
    GPtrArray *jobs;                /* struct djob */
};

/* A message with due work this round: one run of its entries in `due`. */
struct drun {
    struct spool_dlv_ref next;      /* its first entry not yet taken */
    gboolean notice;
    gboolean big;                   /* its copy is over DISPATCH_QUEUE_COPY_MAX */
    gboolean done;                  /* nothing more of it this round */
    gboolean served;                /* it got a job */
};

static void djob_free(gpointer p)
{
    struct djob *j = p;

    for (guint i = 0; i < j->dvs->len; i++)
        spool_dlv_clear(&g_array_index(j->dvs, struct spool_dlv, i));
    g_array_unref(j->dvs);
    wire_send_job_clear(&j->wire);
    g_free(j);
}

/*
 * Open job for msg with room for one more recipient, or a new one; NULL
 * when every job allowed this round is taken.  A message's due entries
 * are next to each other in `due` (time . id . rcpt#), so the last job is
 * looked at first.
 */
static struct djob *dlease_job_for(struct dlease *dl, queue_id msg, gboolean notice,
                                   int64_t now)
{
    struct dispatch_account *a;

    for (guint i = dl->jobs->len; i-- > 0;) {
        struct djob *j = dl->jobs->pdata[i];
        if (j->msg == msg && !j->closed && j->dvs->len < dl->d->cfg->relay.max_rcpt_per_txn)
            return j;
    }
    if (dl->jobs->len >= dl->max_jobs || !(a = dispatch_account_choose(dl->d, now)))
        return NULL;
    struct djob *j = g_new0(struct djob, 1);
    wire_send_job_init(&j->wire);
    j->acct = a;
    j->msg = msg;
    j->notice = notice;
    j->dvs = g_array_new(FALSE, FALSE, sizeof(struct spool_dlv));
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
                            struct spool_dlv *dv, unsigned *cost, GError **err)
{
    if (!spool_dlv_get(t, j->msg, idx, dv, err))
        return FALSE;
    *cost = dv->header != NULL || !j->shared;
    return TRUE;
}

/* What the round carries from one entry to the next. */
struct dpick {
    struct spool_txn *t;
    struct dlease *dl;
    int64_t now;
    unsigned seen, rcpts;
    gboolean full;                  /* the round can take nothing more */
    gboolean stopped;               /* the walk of the run was stopped, not run out */
    gboolean ok;
    GError **err;
    /* The job being filled from one run: */
    struct drun *run;
    struct djob *job;
};

/* One due entry of p->run: into its job, or FALSE when the job is full. */
static gboolean dlease_pick_one(const struct spool_dlv_ref *ref, void *ctx)
{
    struct dpick *p = ctx;
    struct dlease *dl = p->dl;
    struct drun *run = p->run;
    struct djob *j;
    struct spool_dlv dv;
    unsigned cost;

    if (ref->msg != run->next.msg || ref->at_ms != run->next.at_ms) {
        run->done = TRUE;
        return FALSE;
    }
    run->next = *ref;
    /* One job per message at a time: the others have their turn first. */
    if (p->job && (p->job->closed || p->job->dvs->len >= dl->d->cfg->relay.max_rcpt_per_txn))
        return FALSE;
    /*
     * A job whose account has no daily limit, or no rate for what this
     * recipient costs, takes no more: the message's next recipients open a
     * job of another account (a new job's account has room for at least
     * one, dispatch_account_choose()).
     */
    for (;;) {
        if (p->seen >= DUE_SCAN_MAX || !(j = dlease_job_for(dl, ref->msg, run->notice, p->now))) {
            p->full = TRUE;
            return FALSE;
        }
        if (j->acct->left_rcpts) {
            spool_dlv_init(&dv);
            if (!(p->ok = dlease_cost(p->t, j, ref->idx, &dv, &cost, p->err))) {
                spool_dlv_clear(&dv);
                return FALSE;
            }
            if (cost <= j->acct->left_txns)
                break;
            spool_dlv_clear(&dv);
        }
        j->closed = TRUE;
        if (j == p->job)
            return FALSE;
    }
    p->seen++;
    /* The record read here is the one dlease_fill() replaces: no second read. */
    j->shared |= dv.header == NULL;
    g_array_append_val(j->dvs, dv);
    j->txns += cost;
    j->acct->left_txns -= cost;
    j->acct->left_rcpts--;
    p->rcpts++;
    p->job = j;
    j->big = run->big;
    run->served = TRUE;
    run->next.idx = ref->idx + 1;   /* past the last entry taken, if the walk ends here */
    return TRUE;
}

static gboolean dlease_pick_next(const struct spool_dlv_ref *ref, void *ctx)
{
    struct dpick *p = ctx;

    return !(p->stopped = !dlease_pick_one(ref, p));
}

/* One job's worth of run's entries. */
static gboolean dlease_take(struct dpick *p, struct drun *run, int64_t now)
{
    struct spool_dlv_ref from = run->next;

    /* A large copy goes only where a connection starts it at once. */
    if (run->big && !p->dl->big_left) {
        run->done = TRUE;
        return TRUE;
    }
    p->run = run;
    p->job = NULL;
    p->stopped = FALSE;
    if (!spool_due_foreach_from(p->t, &from, now, dlease_pick_next, p, p->err) || !p->ok)
        return p->ok = FALSE;
    if (run->big && p->job)
        p->dl->big_left--;
    /* The walk ran out of due entries: nothing more of this message now. */
    if (!p->stopped)
        run->done = TRUE;
    return TRUE;
}

/* What spool_due_runs() collects: the messages of this round. */
struct druns {
    GArray *runs;                   /* struct drun */
    unsigned max;
    const struct spool_dlv_ref *stop;   /* the wrapped walk ends where the first began */
};

static int dlease_ref_cmp(const struct spool_dlv_ref *a, const struct spool_dlv_ref *b)
{
    if (a->at_ms != b->at_ms)
        return a->at_ms < b->at_ms ? -1 : 1;
    if (a->msg != b->msg)
        return a->msg < b->msg ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

static gboolean dlease_run_one(const struct spool_dlv_ref *ref, void *ctx)
{
    struct druns *r = ctx;
    struct drun run = { .next = *ref };

    if (r->stop && dlease_ref_cmp(ref, r->stop) >= 0)
        return FALSE;
    g_array_append_val(r->runs, run);
    return r->runs->len < r->max;
}

/*
 * The messages this round shares out: the next ones with due work past
 * the one the last round served last, then from the head of `due` up to
 * there; twice as many as the round has jobs for, so that a notice
 * among them goes first.
 */
static gboolean dlease_runs(struct spool_txn *t, struct dlease *dl, GArray *runs, int64_t now,
                            GError **err)
{
    struct spool_dlv_ref start = { .at_ms = dl->after.at_ms, .msg = dl->after.msg + 1 };
    struct druns r = { runs, 2 * dl->max_jobs, NULL };
    gboolean wrap = dl->after.msg != 0;

    if (!spool_due_runs(t, wrap ? &start : NULL, now, dlease_run_one, &r, err))
        return FALSE;
    r.stop = &start;
    if (wrap && runs->len < r.max && !spool_due_runs(t, NULL, now, dlease_run_one, &r, err))
        return FALSE;
    for (guint i = 0; i < runs->len; i++) {
        struct drun *run = &g_array_index(runs, struct drun, i);
        g_autofree char *kind = NULL;
        uint64_t size;

        if (!spool_msg_get_kind(t, run->next.msg, &kind, &size, err))
            return FALSE;
        run->notice = g_strcmp0(kind, MSG_KIND_NOTICE) == 0;
        run->big = size > DISPATCH_QUEUE_COPY_MAX;
    }
    return TRUE;
}

/*
 * Share the round out: a job for each message in turn, notices first,
 * again while any takes more, until the round is full.  The next round
 * starts past the last message other than a notice that was served.
 */
static gboolean dlease_pick(struct spool_txn *t, struct dlease *dl, GError **err)
{
    int64_t now = unix_ms();
    struct dpick p = { .t = t, .dl = dl, .now = now, .ok = TRUE, .err = err };
    g_autoptr(GArray) runs = g_array_new(FALSE, FALSE, sizeof(struct drun));
    gboolean more = TRUE;

    if (!dlease_runs(t, dl, runs, now, err))
        return FALSE;
    while (more && !p.full) {
        more = FALSE;
        for (int notices = 1; notices >= 0 && !p.full; notices--)
            for (guint i = 0; i < runs->len && !p.full; i++) {
                struct drun *run = &g_array_index(runs, struct drun, i);
                guint before = p.rcpts;

                if (run->done || run->notice != notices)
                    continue;
                if (!dlease_take(&p, run, now))
                    return FALSE;
                more |= p.rcpts > before && !run->done;
            }
    }
    for (guint i = runs->len; i-- > 0;) {
        const struct drun *run = &g_array_index(runs, struct drun, i);
        if (run->served && !run->notice) {
            dl->after = run->next;
            break;
        }
    }
    /* Due work left behind: an account out of its daily limit now waits. */
    for (guint i = 0; i < runs->len && !dl->capped; i++)
        dl->capped = !g_array_index(runs, struct drun, i).done;
    return TRUE;
}

/* Mark a job's deliveries leased and fill in what the worker needs. */
static gboolean dlease_fill(struct spool_txn *t, struct dlease *dl, struct djob *j, GError **err)
{
    g_autoptr(GByteArray) body = g_byte_array_new();
    int64_t expiry = unix_ms() + (int64_t)dl->d->cfg->retry.lease * 1000;

    /* The kind alone decides the envelope sender, read with the message's run. */
    j->wire.msg = j->msg;
    j->wire.mail_from = g_strdup(j->notice ? "" : dl->d->mail_from);
    if (!(j->wire.lease = spool_id_next(t, err)) ||
        !spool_body_get(t, DB_OUTGOING, j->msg, body, err))
        return FALSE;
    dl->d->read_since_release += body->len;
    j->wire.body = g_byte_array_free_to_bytes(g_steal_pointer(&body));
    for (guint i = 0; i < j->dvs->len; i++) {
        const struct spool_dlv *old = &g_array_index(j->dvs, struct spool_dlv, i);
        struct spool_dlv dv = *old;     /* shallow: old keeps the strings */
        struct wire_rcpt r = { 0 };

        dv.state = DLV_LEASED;
        dv.lease = j->wire.lease;
        dv.lease_expiry = expiry;
        r.idx = dv.idx;
        r.rcpt = g_strdup(dv.rcpt);
        r.header = dv.header ? g_bytes_ref(dv.header) : NULL;
        g_array_append_val(j->wire.rcpts, r);
        if (!spool_dlv_replace(t, old, &dv, err))
            return FALSE;
    }
    return TRUE;
}

/*
 * Each account's daily_limit: the room left in its window bounds the
 * recipients its jobs take this round; its rate and connection budgets
 * (dispatch_accounts_budget()) bound its jobs.  The window is read in the
 * round's transaction, not kept in memory, so that a restarted dispatcher
 * counts on from where the last one stopped.  With several accounts, their
 * pauses are read here too: results of this same transaction may have
 * begun one.
 */
static gboolean dlease_quota_begin(struct spool_txn *t, struct dlease *dl, int64_t now,
                                   GError **err)
{
    struct dispatch *d = dl->d;

    dl->capped = FALSE;
    d->account_next = dl->account_next;
    for (guint i = 0; i < d->naccounts; i++) {
        struct dispatch_account *a = &d->accounts[i];
        struct postern_relay_limits lim;
        struct relay_state st;

        config_relay_limits(d->cfg, a->relay, &lim);
        a->left_txns = a->round_txns;
        a->left_conns = a->round_conns;
        a->left_rcpts = G_MAXUINT32;
        if (d->naccounts > 1) {
            if (!relay_state_get(t, a->relay->name, &st, err))
                return FALSE;
            if (relay_state_paused(&st, now))
                a->left_conns = 0;
        }
        if (!lim.daily_limit)
            continue;
        if (!relay_quota_get(t, a->relay->name, &dl->quota[i], err))
            return FALSE;
        relay_quota_setup(&dl->quota[i], (int64_t)lim.daily_window * 1000,
                          (uint32_t)lim.daily_limit, now);
        a->left_rcpts = relay_quota_room(&dl->quota[i], now);
    }
    return TRUE;
}

/* "relay URL" or, with several accounts, "relay URL account NAME": how the log names one. */
static char *dlease_account_name(const struct dispatch *d, const struct dispatch_account *a)
{
    if (d->naccounts > 1)
        return g_strdup_printf("relay %s account %s", a->relay->url, a->relay->name);
    return g_strdup_printf("relay %s", a->relay->url);
}

/* A wait for the window begins: the platform hears when it ends, and for which account. */
static gboolean dlease_quota_event(struct spool_txn *t, const struct dlease *dl,
                                   const struct dispatch_account *a, const struct relay_quota *q,
                                   GError **err)
{
    struct spool_event ev;
    gboolean ok;

    spool_event_init(&ev);
    ev.type = g_strdup(EVENT_RELAY_QUOTA_WAIT);
    ev.until = q->waiting_until;
    ev.reason = dl->d->naccounts > 1
                    ? g_strdup_printf("relay account %s: daily limit of %u recipients reached",
                                      a->relay->name, q->limit)
                    : g_strdup_printf("daily limit of %u recipients reached", q->limit);
    ok = spool_event_add(t, &ev, err);
    spool_event_clear(&ev);
    return ok;
}

/*
 * Count what this round leased through account i.  Due deliveries left
 * behind with the account at its limit begin its wait, visible in the
 * spool (spoolctl stats, metrics), as an event and one log line; its
 * first lease after it ends the wait.  An idle round changes nothing and
 * writes nothing.
 */
static gboolean dlease_quota_end(struct spool_txn *t, struct dlease *dl, guint i, int64_t now,
                                 GError **err)
{
    struct dispatch_account *a = &dl->d->accounts[i];
    struct relay_quota *q = &dl->quota[i];
    g_autofree char *name = NULL;
    unsigned leased = 0;
    gboolean was_waiting = q->waiting_until != 0;

    if (!q->limit)
        return TRUE;
    for (guint k = 0; k < dl->jobs->len; k++) {
        const struct djob *j = dl->jobs->pdata[k];

        if (j->acct == a)
            leased += j->dvs->len;
    }
    relay_quota_add(q, now, leased);
    if (leased && was_waiting) {
        name = dlease_account_name(dl->d, a);
        q->waiting_until = 0;
        spool_txn_log(t, "%s: daily limit: leasing again, %" G_GUINT64_FORMAT
                      " of %u recipients in the window", name, relay_quota_used(q, now),
                      q->limit);
    }
    if (dl->capped && !relay_quota_room(q, now) && !q->waiting_until) {
        g_autoptr(GDateTime) until = NULL;
        g_autofree char *when = NULL;

        g_free(name);
        name = dlease_account_name(dl->d, a);
        q->waiting_until = relay_quota_next_room(q, now);
        until = g_date_time_new_from_unix_local(q->waiting_until / 1000);
        when = g_date_time_format(until, "%H:%M:%S");
        spool_txn_log(t, "%s: daily limit of %u recipients reached: deliveries wait until %s",
                      name, q->limit, when);
        if (!dlease_quota_event(t, dl, a, q, err))
            return FALSE;
    }
    if (!leased && was_waiting == (q->waiting_until != 0))
        return TRUE;
    return relay_quota_put(t, a->relay->name, q, err);
}

static gboolean dlease_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct dlease *dl = ctx;
    int64_t now = unix_ms();

    /* spool_write may run us again (map growth): start over from what we knew. */
    g_ptr_array_set_size(dl->jobs, 0);
    dl->after = dl->d->due_after;
    dl->big_left = dispatch_conns_room_now(dl->d);
    memset(dl->quota, 0, dl->d->naccounts * sizeof(*dl->quota));
    if (!dlease_quota_begin(t, dl, now, err) || !dlease_pick(t, dl, err))
        return FALSE;
    for (guint i = 0; i < dl->jobs->len; i++)
        if (!dlease_fill(t, dl, dl->jobs->pdata[i], err))
            return FALSE;
    for (guint i = 0; i < dl->d->naccounts; i++)
        if (!dlease_quota_end(t, dl, i, now, err))
            return FALSE;
    return TRUE;
}

/*
 * What this round may lease: jobs the workers have connections and credit
 * for, and any account has budget for; dl->skip when nothing (every
 * account paused, waiting for its window or out of rate; no room).
 */
struct dlease *dispatch_leases_new(struct dispatch *d)
{
    struct dlease *dl = g_new0(struct dlease, 1);

    dl->d = d;
    dl->after = d->due_after;
    dl->account_next = d->account_next;
    dl->jobs = g_ptr_array_new_with_free_func(djob_free);
    dl->quota = g_new0(struct relay_quota, d->naccounts);
    dl->max_jobs = dispatch_conns_room(d);
    dl->skip = !dl->max_jobs || !dispatch_accounts_budget(d, unix_ms());
    return dl;
}

gboolean dispatch_leases_wanted(const struct dlease *dl)
{
    return !dl->skip;
}

/* Inside the round's transaction: pick due deliveries and lease them, unless held. */
gboolean dispatch_leases_write(struct spool_txn *t, struct dlease *dl, gboolean hold,
                               GError **err)
{
    g_ptr_array_set_size(dl->jobs, 0);
    return dl->skip || hold || dlease_write(t, dl, err);
}

/*
 * The worker for a job: one holding an idle connection of its account
 * first (several accounts: taking it again costs the account nothing),
 * else the one dispatch_conns_pick() finds.  NULL when none can.
 */
static struct dispatch_worker *dlease_worker(struct dispatch *d, struct dispatch_account *a)
{
    struct dispatch_worker *w = a->conns_counted ? dispatch_account_worker(d, a) : NULL;

    return w ? w : dispatch_conns_pick(d);
}

/* Send one job after the commit (a job no worker takes waits for its lease to expire). */
static void dlease_send_one(struct dispatch *d, struct djob *j)
{
    struct dispatch_account *a = j->acct;
    struct dispatch_worker *w = dlease_worker(d, a);
    g_autoptr(GBytes) payload = NULL;
    char id[QUEUE_ID_LEN + 1];

    j->wire.account = g_strdup(a->relay->name);
    payload = wire_send_job_encode(&j->wire);

    /* The payload holds its own copy and zmq_send makes another: let
     * the body go first, or a 30 MiB message costs 3 x 30 MiB here. */
    g_clear_pointer(&j->wire.body, g_bytes_unref);

    spool_id_format(j->msg, id);
    if (!w || !wire_send(w->sock, w->identity, WIRE_SJOB, payload)) {
        msg_warn("%s: no sender worker took %u recipient(s): they wait for the lease to expire",
                 id, j->dvs->len);
        return;
    }
    a->rate_tokens -= j->txns;
    w->credit--;
    struct dispatch_job *job = g_new0(struct dispatch_job, 1);
    job->lease = j->wire.lease;
    job->msg = j->msg;
    job->worker = w;
    job->rcpts = j->dvs->len;
    job->account = a->relay;
    job->acct = a;
    dispatch_account_job_start(a, job);
    dispatch_job_add(d, job);
    if (d->cfg->relays->len > 1)
        msg_info("%s: %u recipient(s) leased to worker %s for relay account %s", id,
                 j->dvs->len, w->name, a->relay->name);
    else
        msg_info("%s: %u recipient(s) leased to worker %s", id, j->dvs->len, w->name);
}

/* After the commit (committed FALSE: nothing was leased): send the jobs, free dl. */
void dispatch_leases_send(struct dispatch *d, struct dlease *dl, gboolean committed)
{
    if (!committed)
        g_ptr_array_set_size(dl->jobs, 0);
    /* Each account's wait is known once written: no round for it before it ends. */
    for (guint i = 0; committed && !dl->skip && i < d->naccounts; i++)
        d->accounts[i].quota_wait_until = dl->quota[i].waiting_until;
    if (committed)
        d->due_after = dl->after;
    /*
     * Jobs that take an idle connection of their account again go first:
     * another account's job could otherwise take the worker's last credit,
     * and the connection budget counted on that connection.  Then, of
     * each, the large copies: dispatch_conns_pick() gives idle and new
     * connections before queue places.
     */
    log_batch_begin();
    for (int reuse = 1; reuse >= 0; reuse--)
        for (int big = 1; big >= 0; big--)
            for (guint i = 0; i < dl->jobs->len; i++) {
                struct djob *j = dl->jobs->pdata[i];

                if (!j->acct || j->big != big
                    || (reuse && !(j->acct->conns_counted && dispatch_account_worker(d, j->acct))))
                    continue;
                dlease_send_one(d, j);
                j->acct = NULL;
            }
    log_batch_end();
    g_ptr_array_unref(dl->jobs);
    g_free(dl->quota);
    g_free(dl);
}

static gboolean dlease_write_alone(struct spool_txn *t, void *ctx, GError **err)
{
    return dispatch_leases_write(t, ctx, FALSE, err);
}

void dispatch_lease_deliveries(struct dispatch *d)
{
    struct dlease *dl = dispatch_leases_new(d);
    GError *err = NULL;
    gboolean ok = TRUE;

    if (!dl->skip && !(ok = spool_write(d->spool, dlease_write_alone, dl, &err))) {
        msg_warn("lease deliveries: %s", err->message);
        g_clear_error(&err);
    }
    dispatch_leases_send(d, dl, ok);
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
        struct spool_dlv old;

        if (!spool_dlv_get(t, ref->msg, ref->idx, &old, err))
            return FALSE;
        g_array_append_val(ex->expired, old.lease);
        gboolean ok = dispatch_dlv_requeue(t, &old, now, "lease expired", err);
        spool_dlv_clear(&old);
        if (!ok)
            return FALSE;
    }
    return TRUE;
}

gboolean dispatch_dlv_requeue(struct spool_txn *t, const struct spool_dlv *old, int64_t now_ms,
                              const char *why, GError **err)
{
    struct spool_dlv dv = *old;     /* shallow: old keeps the strings */
    char id[QUEUE_ID_LEN + 1];

    spool_id_format(old->msg, id);
    spool_txn_log(t, "%s: to=<%s>, %s: back in the queue", id, old->rcpt, why);
    dv.state = old->attempts ? DLV_DEFERRED : DLV_READY;
    dv.next_try = now_ms / 1000;
    dv.lease = 0;
    return spool_dlv_replace(t, old, &dv, err);
}

struct expiry *dispatch_expiry_new(struct dispatch *d)
{
    struct expiry *ex = g_new0(struct expiry, 1);

    ex->d = d;
    ex->expired = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    return ex;
}

gboolean dispatch_expiry_write(struct spool_txn *t, struct expiry *ex, GError **err)
{
    return expire_write(t, ex, err);
}

/* After the commit: forget the jobs of the leases taken back; free ex. */
void dispatch_expiry_done(struct dispatch *d, struct expiry *ex, gboolean committed)
{
    if (committed)
        for (guint i = 0; i < ex->expired->len; i++)
            g_hash_table_remove(d->jobs, &g_array_index(ex->expired, uint64_t, i));
    if (committed && ex->expired->len)
        d->work_hinted = TRUE;
    g_array_unref(ex->expired);
    g_free(ex);
}

static gboolean expire_write_alone(struct spool_txn *t, void *ctx, GError **err)
{
    return expire_write(t, ctx, err);
}

void dispatch_expire_leases(struct dispatch *d)
{
    struct expiry *ex = dispatch_expiry_new(d);
    GError *err = NULL;
    gboolean ok;

    if (!(ok = spool_write(d->spool, expire_write_alone, ex, &err))) {
        msg_warn("expire leases: %s", err->message);
        g_clear_error(&err);
    }
    dispatch_expiry_done(d, ex, ok);
}
