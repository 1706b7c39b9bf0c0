/*
 * sender_slot.c - the slot threads: one job at a time each, on the slot's
 * own SMTP client (or into the Maildir), results back to the main thread.
 */
#include "sender/sender.h"
#include "common/bounce_code.h"
#include "common/log.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* Pushed once per thread by sender_slots_stop(): "no more jobs". */
static struct wire_send_job slot_stop;
/* Pushed by sender_conns_budget() when it shrinks: "close idle connections". */
static struct wire_send_job slot_reap;

static GArray *plan_add(GPtrArray *plan)
{
    GArray *txn = g_array_new(FALSE, FALSE, sizeof(guint));

    g_ptr_array_add(plan, txn);
    return txn;
}

GPtrArray *sender_plan(const struct wire_send_job *job, guint max_rcpt)
{
    GPtrArray *plan = g_ptr_array_new_with_free_func((GDestroyNotify)g_array_unref);
    GArray *shared = NULL;

    for (guint i = 0; i < job->rcpts->len; i++) {
        const struct wire_rcpt *r = &g_array_index(job->rcpts, struct wire_rcpt, i);
        GArray *txn;

        if (r->header) {
            txn = plan_add(plan);
        } else {
            if (!shared || shared->len >= max_rcpt)
                shared = plan_add(plan);
            txn = shared;
        }
        g_array_append_val(txn, i);
    }
    return plan;
}

static const struct wire_rcpt *job_rcpt(const struct wire_send_job *job, guint pos)
{
    return &g_array_index(job->rcpts, struct wire_rcpt, pos);
}

static void result_add(struct wire_send_result *res, uint32_t idx, int code, const char *status,
                       const char *text, enum smtp_error error, const char *relay, double seconds)
{
    struct wire_rcpt_result r = {
        .idx = idx, .code = code, .status = g_strdup(status), .text = g_strdup(text ? text : ""),
        .error = error, .relay = g_strdup(relay ? relay : "none"), .seconds = seconds,
    };

    g_array_append_val(res->results, r);
}

/* The bytes of one copy: its own header block, if any, then the common body. */
static size_t copy_parts(const struct wire_send_job *job, const struct wire_rcpt *r,
                         const char *parts[2], size_t lens[2])
{
    size_t n = 0;

    if (r->header) {
        parts[n] = g_bytes_get_data(r->header, &lens[n]);
        n++;
    }
    if (job->body) {
        parts[n] = g_bytes_get_data(job->body, &lens[n]);
        n++;
    }
    return n;
}

/* Give the results gathered so far to the main thread as one SDONE. */
static void deliver_flush(struct sender *s, struct wire_send_result *res,
                          sender_hand_back_fn hand_back)
{
    struct wire_send_result part;
    gsize n;
    struct wire_rcpt_result *moved;

    if (!hand_back || !res->results->len)
        return;
    wire_send_result_init(&part);
    part.lease = res->lease;
    part.msg = res->msg;
    part.account = g_strdup(res->account);
    moved = g_array_steal(res->results, &n);
    g_array_append_vals(part.results, moved, (guint)n);
    g_free(moved);
    hand_back(s, &part);
}

/*
 * One file per recipient, the exact bytes it would have got from a relay.
 * A failure (disk full, permissions) is local and temporary: 451 4.3.0,
 * which the dispatcher defers like a relay's 451.
 */
static void deliver_maildir(struct sender *s, const struct sender_account *a,
                            const struct wire_send_job *job, struct wire_send_result *res,
                            sender_hand_back_fn hand_back)
{
    for (guint i = 0; i < job->rcpts->len; i++) {
        const struct wire_rcpt *r = job_rcpt(job, i);
        const char *parts[2];
        size_t lens[2], n = copy_parts(job, r, parts, lens);
        gint64 start = g_get_monotonic_time();
        g_autoptr(GError) err = NULL;
        gboolean ok = maildir_deliver(a->url.path, parts, lens, n, &err);
        double seconds = (g_get_monotonic_time() - start) / 1e6;

        if (ok)
            result_add(res, r->idx, 250, "2.0.0", "delivered to maildir", SMTP_ERROR_NONE,
                       "maildir", seconds);
        else
            result_add(res, r->idx, 451, "4.3.0", err->message, SMTP_ERROR_NONE, "maildir",
                       seconds);
        deliver_flush(s, res, i + 1 < job->rcpts->len ? hand_back : NULL);
    }
}

/*
 * The relay will not take more now: the session failed (no connection,
 * timeout, lost, TLS, refused), a 421 closed it, or a quota or throttle
 * reply pauses the whole relay (SPEC §5).
 */
static gboolean relay_stopped(const struct smtp_rcpt_result *r)
{
    return r->error != SMTP_ERROR_NONE || r->code == 421 || smtp_result_throttled(r);
}

/*
 * A transaction's envelope and data: the return path (with VERP each
 * transaction has one recipient, sender_plan with 1, and its return path
 * names that delivery; the null sender stays), the recipients, the parts
 * of the copy.
 */
struct txn_envelope {
    char *verp;
    const char *from;
    const char **rcpts;
    guint n;
    const char *parts[2];
    size_t lens[2];
    size_t n_parts;
};

static void txn_envelope_init(struct sender *s, const struct wire_send_job *job, GArray *txn,
                              struct txn_envelope *e)
{
    const struct wire_rcpt *first = job_rcpt(job, g_array_index(txn, guint, 0));

    e->verp = s->verp_key && *job->mail_from
                  ? bounce_return_path(s->verp_key, s->verp_keylen, job->mail_from, job->msg,
                                       first->idx) : NULL;
    e->from = e->verp ? e->verp : job->mail_from;
    e->n = txn->len;
    e->rcpts = g_new(const char *, txn->len);
    for (guint k = 0; k < txn->len; k++)
        e->rcpts[k] = job_rcpt(job, g_array_index(txn, guint, k))->rcpt;
    e->n_parts = copy_parts(job, first, e->parts, e->lens);
}

static void txn_envelope_clear(struct txn_envelope *e)
{
    g_free(e->verp);
    g_free(e->rcpts);
    memset(e, 0, sizeof(*e));
}

/*
 * One transaction.  When the relay stopped (relay_stopped()), *stop gets a
 * copy of that result for the rest of the job, and TRUE is returned.
 */
static gboolean deliver_txn(struct smtp_client *client, const struct wire_send_job *job,
                            GArray *txn, const struct txn_envelope *e,
                            struct wire_send_result *res, struct wire_rcpt_result *stop)
{
    g_autofree struct smtp_rcpt_result *out = g_new0(struct smtp_rcpt_result, txn->len);
    gint64 start = g_get_monotonic_time();
    gboolean stopped = FALSE;
    double seconds;

    smtp_client_send(client, e->from, e->rcpts, e->n, e->parts, e->lens, e->n_parts, out, NULL);
    seconds = (g_get_monotonic_time() - start) / 1e6;
    for (guint k = 0; k < txn->len; k++) {
        if (!stopped && relay_stopped(&out[k])) {
            stopped = TRUE;
            *stop = (struct wire_rcpt_result){
                .code = out[k].code, .status = g_strdup(out[k].status),
                .text = g_strdup(out[k].text ? out[k].text : ""), .error = out[k].error,
                .relay = g_strdup(out[k].relay ? out[k].relay : "none"),
            };
        }
        result_add(res, job_rcpt(job, g_array_index(txn, guint, k))->idx, out[k].code,
                   out[k].status, out[k].text, out[k].error, out[k].relay, seconds);
    }
    smtp_results_clear(out, txn->len);
    return stopped;
}

/*
 * Transactions one after the other on the slot's connection, each
 * announced to the client while the one before runs, so that its commands
 * go with that one's end of data (smtp_client_announce()).  Once the
 * relay has stopped, the rest of the job gets the same result without
 * another try, as Postfix does: a dead or hanging relay then costs one
 * timeout per job, not one per recipient, and a paused relay gets nothing.
 */
static void deliver_smtp(struct sender *s, struct smtp_client *client,
                         const struct wire_send_job *job, struct wire_send_result *res,
                         sender_hand_back_fn hand_back)
{
    guint per_txn = s->verp_key ? 1 : (guint)s->cfg->relay.max_rcpt_per_txn;
    g_autoptr(GPtrArray) plan = sender_plan(job, per_txn);
    struct wire_rcpt_result stop = { 0 };
    struct txn_envelope env[2] = { 0 };
    gboolean stopped = FALSE;

    for (guint t = 0; t < plan->len; t++) {
        GArray *txn = plan->pdata[t];
        struct txn_envelope *cur = &env[t % 2], *next = &env[(t + 1) % 2];

        if (!stopped) {
            if (t == 0)
                txn_envelope_init(s, job, txn, cur);
            if (t + 1 < plan->len) {
                txn_envelope_init(s, job, plan->pdata[t + 1], next);
                smtp_client_announce(client, next->from, next->rcpts, next->n, next->lens,
                                     next->n_parts);
            }
            stopped = deliver_txn(client, job, txn, cur, res, &stop);
            txn_envelope_clear(cur);
            /* The last transaction's results go with the job's end (and its credit). */
            deliver_flush(s, res, t + 1 < plan->len ? hand_back : NULL);
            continue;
        }
        for (guint k = 0; k < txn->len; k++)
            result_add(res, job_rcpt(job, g_array_index(txn, guint, k))->idx, stop.code,
                       stop.status, stop.text, stop.error, stop.relay, 0);
    }
    txn_envelope_clear(&env[0]);
    txn_envelope_clear(&env[1]);
    g_free(stop.status);
    g_free(stop.text);
    g_free(stop.relay);
}

/* The account a job names, or NULL when this worker's config has none of that name. */
static const struct sender_account *sender_account_of(const struct sender *s,
                                                      const struct wire_send_job *job)
{
    const char *name = job->account ? job->account : WIRE_ACCOUNT_DEFAULT;

    for (guint i = 0; i < s->accounts->len; i++) {
        const struct sender_account *a = s->accounts->pdata[i];

        if (g_str_equal(a->relay->name, name))
            return a;
    }
    return NULL;
}

void sender_deliver(struct sender *s, const struct sender_account *a,
                    struct smtp_client **client, const struct wire_send_job *job,
                    struct wire_send_result *res, sender_hand_back_fn hand_back)
{
    if (a->url.kind == RELAY_MAILDIR) {
        deliver_maildir(s, a, job, res, hand_back);
        return;
    }
    /* Cannot fail: the account's TLS context was loaded at start (sender_main.c). */
    if (!*client)
        *client = smtp_client_new(&a->smtp, NULL);
    deliver_smtp(s, *client, job, res, hand_back);
}

/* Wake the main thread: results to send, or the pool to report. */
static void slot_wake(struct sender *s)
{
    uint64_t one = 1;

    if (write(s->wake_fd, &one, sizeof(one)) != sizeof(one))
        msg_panic("slot: eventfd write: %m");
}

static void slot_push(struct sender *s, struct wire_send_result *res, gboolean job_done)
{
    struct sender_done *done = g_new(struct sender_done, 1);

    done->res = *res;
    done->job_done = job_done;
    g_async_queue_push(s->done, done);
    slot_wake(s);
}

/* One transaction's results, while the job goes on. */
static void slot_hand_back(struct sender *s, struct wire_send_result *part)
{
    slot_push(s, part, FALSE);
}

/* The pool */

struct sender_idle {
    struct smtp_client *client;
    const struct sender_account *account;   /* whose login the session holds */
    gint64 since;                   /* monotonic us */
};

/* The idle connection of account a used last, or NULL. */
static struct sender_idle *conn_idle_of(struct sender *s, const struct sender_account *a)
{
    for (GList *l = s->conn_idle.head; l; l = l->next) {
        struct sender_idle *idle = l->data;

        if (idle->account == a) {
            g_queue_delete_link(&s->conn_idle, l);
            return idle;
        }
    }
    return NULL;
}

/*
 * Take a connection of account a for a job: its idle one used last (the
 * session is the freshest, and logged in as a), else room for a new one
 * within the budget (*client NULL: the caller connects), else the place of
 * the oldest idle connection of another account, closed here (a session
 * is never used for another account's mail).  With the budget all busy,
 * wait for one to come back: a job may arrive just before the slot that
 * held its connection has put it back.  FALSE with a budget of 0: the
 * dispatcher that granted one is gone, and the job must not wait for a
 * grant that may never come.
 */
static gboolean conn_take(struct sender *s, const struct sender_account *a,
                          struct smtp_client **client)
{
    struct sender_idle *idle = NULL, *other = NULL;
    gboolean ok;

    *client = NULL;
    g_mutex_lock(&s->conn_lock);
    while (s->conn_budget && !(idle = conn_idle_of(s, a)) && s->conn_open >= s->conn_budget &&
           !(other = g_queue_pop_tail(&s->conn_idle)))
        g_cond_wait(&s->conn_freed, &s->conn_lock);
    if (idle) {
        *client = idle->client;
        g_free(idle);
    } else if (s->conn_budget && !other) {
        s->conn_open++;
    }
    /* Decided under the lock: a budget dropped after conn_open++ must not
     * refuse a job whose connection was counted (conn_put would never come). */
    ok = *client || s->conn_budget;
    g_mutex_unlock(&s->conn_lock);
    if (other) {
        msg_info("closed an idle relay connection of account %s for one of account %s",
                 other->account->relay->name, a->relay->name);
        smtp_client_free(other->client);
        g_free(other);
    }
    return ok;
}

/*
 * A job is over: keep its connection idle for the next one, unless it is
 * gone (no client, or the relay dropped it) or beyond the budget.  The
 * QUIT of a closed one happens outside the lock.
 */
static void conn_put(struct sender *s, const struct sender_account *a,
                     struct smtp_client *client)
{
    gboolean keep;

    g_mutex_lock(&s->conn_lock);
    keep = client && smtp_client_connected(client) && s->conn_open <= s->conn_budget;
    if (keep) {
        struct sender_idle *idle = g_new(struct sender_idle, 1);

        idle->client = client;
        idle->account = a;
        idle->since = g_get_monotonic_time();
        g_queue_push_head(&s->conn_idle, idle);
    } else {
        s->conn_open--;
    }
    g_cond_signal(&s->conn_freed);
    g_mutex_unlock(&s->conn_lock);
    if (!keep) {
        smtp_client_free(client);
        slot_wake(s);
    }
}

/*
 * Close the idle connections that waited WIRE_CONN_IDLE_MS, or are beyond
 * the budget; the oldest are at the tail.  Returns how long, in us, until
 * the next idle one expires, or -1 when none is idle.
 */
static gint64 conn_reap(struct sender *s)
{
    g_autoptr(GPtrArray) closing = g_ptr_array_new();
    gint64 now = g_get_monotonic_time(), wait = -1;
    struct sender_idle *idle;

    g_mutex_lock(&s->conn_lock);
    while ((idle = g_queue_peek_tail(&s->conn_idle)) &&
           (now - idle->since >= WIRE_CONN_IDLE_MS * 1000 || s->conn_open > s->conn_budget)) {
        g_ptr_array_add(closing, idle->client);
        g_free(g_queue_pop_tail(&s->conn_idle));
        s->conn_open--;
    }
    if (idle)
        wait = idle->since + WIRE_CONN_IDLE_MS * 1000 - now;
    g_mutex_unlock(&s->conn_lock);
    for (guint i = 0; i < closing->len; i++)
        smtp_client_free(closing->pdata[i]);
    if (closing->len) {
        msg_info("closed %u idle relay connection(s)", closing->len);
        slot_wake(s);
    }
    return wait;
}

void sender_conns_budget(struct sender *s, guint budget)
{
    guint was;

    g_mutex_lock(&s->conn_lock);
    was = s->conn_budget;
    s->conn_budget = budget;
    g_cond_broadcast(&s->conn_freed);
    g_mutex_unlock(&s->conn_lock);
    if (budget == was)
        return;
    msg_info("relay connection budget %u (was %u)", budget, was);
    /* A slot waiting for a job closes what is now beyond the budget. */
    if (budget < was)
        g_async_queue_push_front(s->jobs, &slot_reap);
    slot_wake(s);
}

void sender_conns_count(struct sender *s, guint *budget, guint *open)
{
    g_mutex_lock(&s->conn_lock);
    *budget = s->conn_budget;
    *open = s->conn_open;
    g_mutex_unlock(&s->conn_lock);
}

/* Every recipient of a job that got no connection: deferred, tried again later. */
static void slot_refuse(const struct wire_send_job *job, struct wire_send_result *res)
{
    for (guint i = 0; i < job->rcpts->len; i++)
        result_add(res, job_rcpt(job, i)->idx, 0, "4.3.0",
                   "no relay connection granted by the dispatcher", SMTP_ERROR_CONFIG, "none", 0);
}

/* Every recipient of a job that names an account we do not have: deferred. */
static void slot_unknown(const struct wire_send_job *job, struct wire_send_result *res)
{
    g_autofree char *why = g_strdup_printf("no relay account \"%s\" in this worker's config",
                                           job->account);

    msg_warn("job %" G_GUINT64_FORMAT ": %s", job->lease, why);
    for (guint i = 0; i < job->rcpts->len; i++)
        result_add(res, job_rcpt(job, i)->idx, 0, "4.3.5", why, SMTP_ERROR_CONFIG, "none", 0);
}

/*
 * A queued job is given back unstarted, its recipients with
 * SMTP_ERROR_NOT_STARTED: the dispatcher puts them back in the queue at
 * once, with no attempt counted (dispatch_result.c), as if their lease had
 * run out.  Two reasons:
 *  - we are stopping: a queue of jobs run at a slow relay would make the
 *    stop last minutes (a service manager kills what outlasts its
 *    timeout, in the middle of a transaction), and another worker can
 *    take them now;
 *  - it waited in our queue for half its lease: the dispatcher takes a
 *    lease back when it runs out and leases its deliveries again, and a
 *    copy sent after that could be the second one a recipient gets.  The
 *    lease is our config's [retry] lease: the dispatcher's, when both
 *    read the same file.
 */
static gboolean slot_give_back(struct sender *s, const struct wire_send_job *job,
                               struct wire_send_result *res)
{
    gint64 waited = g_get_monotonic_time() - job->received;
    g_autofree char *why = NULL;

    if (g_atomic_int_get(&s->stopping))
        why = g_strdup("not started: the worker is stopping");
    else if (job->received && waited >= (gint64)s->cfg->retry.lease * G_USEC_PER_SEC / 2)
        why = g_strdup_printf("not started: waited %.1f s in the worker's queue, half of "
                              "[retry] lease", (double)waited / G_USEC_PER_SEC);
    else
        return FALSE;
    msg_warn("job %" G_GUINT64_FORMAT ": %u recipient(s) given back, %s", job->lease,
             job->rcpts->len, why);
    for (guint i = 0; i < job->rcpts->len; i++)
        result_add(res, job_rcpt(job, i)->idx, 0, "", why, SMTP_ERROR_NOT_STARTED, "none", 0);
    return TRUE;
}

/* One job, on a connection from the pool for its account's relay. */
static void slot_run(struct sender *s, const struct wire_send_job *job,
                     struct wire_send_result *res)
{
    const struct sender_account *a = sender_account_of(s, job);
    struct smtp_client *client = NULL;

    if (slot_give_back(s, job, res))
        return;
    if (!a) {
        slot_unknown(job, res);
        return;
    }
    if (a->url.kind == RELAY_MAILDIR) {
        sender_deliver(s, a, &client, job, res, slot_hand_back);
        return;
    }
    if (!conn_take(s, a, &client)) {
        slot_refuse(job, res);
        return;
    }
    sender_deliver(s, a, &client, job, res, slot_hand_back);
    conn_put(s, a, client);
}

/*
 * Wait for a job; with connections idle, only until the oldest of them
 * expires, and close it then, so that idle slots hold no relay connection
 * for long.
 */
static gpointer slot_main(gpointer data)
{
    struct sender *s = data;

    for (;;) {
        gint64 wait = conn_reap(s);
        struct wire_send_job *job = wait < 0 ? g_async_queue_pop(s->jobs)
                                             : g_async_queue_timeout_pop(s->jobs, (guint64)wait);
        struct wire_send_result res;

        if (!job || job == &slot_reap)
            continue;
        if (job == &slot_stop)
            break;
        wire_send_result_init(&res);
        res.lease = job->lease;
        res.msg = job->msg;
        res.account = g_strdup(job->account);
        slot_run(s, job, &res);
        wire_send_job_clear(job);
        g_free(job);
        slot_push(s, &res, TRUE);      /* what is left (often nothing), and the slot is free */
    }
    return NULL;
}

void sender_slots_start(struct sender *s)
{
    g_mutex_init(&s->conn_lock);
    g_cond_init(&s->conn_freed);
    g_queue_init(&s->conn_idle);
    s->threads = g_ptr_array_new();
    for (guint i = 0; i < s->cfg->workers.slots; i++) {
        g_autofree char *name = g_strdup_printf("slot%u", i);

        g_ptr_array_add(s->threads, g_thread_new(name, slot_main, s));
    }
}

void sender_slots_stop(struct sender *s)
{
    for (guint i = 0; i < s->threads->len; i++)
        g_async_queue_push(s->jobs, &slot_stop);
    for (guint i = 0; i < s->threads->len; i++)
        g_thread_join(s->threads->pdata[i]);
    g_ptr_array_free(s->threads, TRUE);
    s->threads = NULL;
    /* No slot runs now: a budget of 0 makes every idle connection go. */
    s->conn_budget = 0;
    conn_reap(s);
    g_mutex_clear(&s->conn_lock);
    g_cond_clear(&s->conn_freed);
}
