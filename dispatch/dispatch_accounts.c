/*
 * dispatch_accounts.c - the relay accounts ([relay] and [relay NAME],
 * common/config.h) as the dispatcher schedules them: each job goes to the
 * next account in turn that is not paused and has budget left, each
 * account has a pause of its own (spool/relay_state.h), begun by a quota,
 * throttle or AUTH reply to that account's login only, and limits of its
 * own: daily_limit (counted in the lease transaction, dispatch_deliver.c),
 * rate and max_connections (here).
 *
 * An account's connections are what its jobs in flight use plus what
 * workers may keep open idle after its jobs (struct dispatch_idle); with
 * one account, the workers' connection budgets (dispatch_conns.c) bound
 * them already, and nothing is counted here.
 */
#include "dispatch/dispatch.h"
#include "common/log.h"
#include "spool/relay_state.h"

#include <string.h>

/*
 * A worker closes an idle connection WIRE_CONN_IDLE_MS after its job; we
 * hear of the job's end after it began to wait, and allow its reaper (a
 * thread that may wait for a CPU on a busy host) this much more.
 */
#define ACCOUNT_IDLE_SLACK_MS 1000

static void account_idle_clear(gpointer p)
{
    g_free(((struct dispatch_idle *)p)->worker);
}

void dispatch_accounts_free(struct dispatch *d)
{
    for (guint i = 0; i < d->naccounts; i++)
        g_array_unref(d->accounts[i].idle);
    g_clear_pointer(&d->accounts, g_free);
    d->naccounts = 0;
}

void dispatch_accounts_setup(struct dispatch *d)
{
    GPtrArray *relays = d->cfg->relays;

    dispatch_accounts_free(d);
    d->accounts = g_new0(struct dispatch_account, relays->len);
    d->naccounts = relays->len;
    for (guint i = 0; i < relays->len; i++) {
        struct dispatch_account *a = &d->accounts[i];

        a->relay = relays->pdata[i];
        a->conns_counted = relays->len > 1 && !g_str_has_prefix(a->relay->url, "maildir:");
        a->rate_refilled = mono_ms();
        a->idle = g_array_new(FALSE, FALSE, sizeof(struct dispatch_idle));
        g_array_set_clear_func(a->idle, account_idle_clear);
    }
}

unsigned dispatch_accounts_conn_max(const struct dispatch *d)
{
    unsigned sum = 0;

    if (d->naccounts <= 1)
        return (unsigned)d->cfg->relay.max_connections;
    for (guint i = 0; i < d->naccounts; i++) {
        struct postern_relay_limits lim;

        config_relay_limits(d->cfg, d->accounts[i].relay, &lim);
        sum += (unsigned)MIN(lim.max_connections, G_MAXUINT / CONFIG_RELAY_ACCOUNTS);
    }
    return sum;
}

/*
 * A result names its job's account; one no longer in our config (renamed
 * since the job was leased) is counted as the default account's, so that
 * its pause still holds something back.
 */
struct dispatch_account *dispatch_account_find(struct dispatch *d, const char *name)
{
    for (guint i = 0; name && i < d->naccounts; i++)
        if (g_str_equal(d->accounts[i].relay->name, name))
            return &d->accounts[i];
    return &d->accounts[0];
}

gboolean dispatch_account_paused(const struct dispatch_account *a, int64_t now_ms)
{
    return a->paused_until > now_ms;
}

/*
 * [relay NAME] rate is a token bucket of messages per second towards the
 * relay (SPEC §2), one per account: one per SMTP transaction, however many
 * recipients it has, holding at most one second's worth.  Tokens are spent
 * only on the jobs a worker took (dispatch_leases_send()).
 */
static unsigned account_rate_budget(struct dispatch_account *a, double rate, int64_t now)
{
    if (rate <= 0)
        return G_MAXUINT;
    a->rate_tokens = MIN(a->rate_tokens + rate * (double)(now - a->rate_refilled) / 1000.0,
                         MAX(rate, 1.0));
    a->rate_refilled = now;
    return (unsigned)a->rate_tokens;
}

/* Drop the idle connections the workers have closed by now. */
static void account_idle_prune(struct dispatch_account *a, int64_t now)
{
    for (guint i = a->idle->len; i-- > 0;)
        if (g_array_index(a->idle, struct dispatch_idle, i).until <= now)
            g_array_remove_index(a->idle, i);
}

/*
 * The jobs this round may give a: a new connection for each its budget
 * leaves, counting its jobs, its idle connections and the jobs leased
 * before our start (whose account we do not know: they may be any one's);
 * plus one for each idle connection on a worker with credit to take it
 * again (credit: what is left of each worker's, shared between accounts
 * so that two accounts do not count on the same job slot).
 */
static unsigned account_conn_budget(struct dispatch *d, struct dispatch_account *a,
                                    uint64_t max, unsigned unowned, GHashTable *credit)
{
    unsigned used = a->jobs + a->idle->len + unowned, reuse = 0;

    for (guint i = 0; i < a->idle->len; i++) {
        const char *name = g_array_index(a->idle, struct dispatch_idle, i).worker;
        struct dispatch_worker *w = g_hash_table_lookup(d->workers, name);
        gpointer have;
        unsigned left;

        if (!w || w->kind != WORKER_SENDER)
            continue;
        left = g_hash_table_lookup_extended(credit, w, NULL, &have) ? GPOINTER_TO_UINT(have)
                                                                    : w->credit;
        if (left) {
            reuse++;
            g_hash_table_insert(credit, w, GUINT_TO_POINTER(left - 1));
        }
    }
    return (used < max ? (unsigned)MIN(max - used, G_MAXUINT / 2) : 0) + reuse;
}

gboolean dispatch_accounts_budget(struct dispatch *d, int64_t now_ms)
{
    g_autoptr(GHashTable) credit = NULL;
    int64_t mono = mono_ms();
    unsigned unowned = 0;
    gboolean any = FALSE;
    GHashTableIter it;
    struct dispatch_job *job;

    if (d->naccounts > 1) {
        credit = g_hash_table_new(g_direct_hash, g_direct_equal);
        g_hash_table_iter_init(&it, d->jobs);
        while (g_hash_table_iter_next(&it, NULL, (gpointer *)&job))
            unowned += !job->acct;
    }
    for (guint i = 0; i < d->naccounts; i++) {
        struct dispatch_account *a = &d->accounts[i];
        struct postern_relay_limits lim;

        config_relay_limits(d->cfg, a->relay, &lim);
        account_idle_prune(a, mono);
        a->round_txns = account_rate_budget(a, lim.rate, mono);
        a->round_conns = !a->conns_counted
                             ? G_MAXUINT
                             : account_conn_budget(d, a, lim.max_connections, unowned, credit);
        any |= !dispatch_account_paused(a, now_ms) && a->quota_wait_until <= now_ms &&
               a->round_txns && a->round_conns;
    }
    return any;
}

/*
 * The accounts take jobs in turn, [relay] first, so that each carries an
 * even share: the relay's quota is per account (Google Workspace: 10,000
 * messages a user and day), and spreading the jobs spreads it.  An
 * account paused, or out of its daily limit, rate or connections, is
 * passed over until it has them again; the others take its turns.
 */
struct dispatch_account *dispatch_account_choose(struct dispatch *d, int64_t now_ms)
{
    for (guint n = 0; n < d->naccounts; n++) {
        struct dispatch_account *a = &d->accounts[d->account_next++ % d->naccounts];

        if (!dispatch_account_paused(a, now_ms) && a->left_rcpts && a->left_txns &&
            a->left_conns) {
            a->left_conns--;
            return a;
        }
    }
    return NULL;
}

struct dispatch_worker *dispatch_account_worker(struct dispatch *d, struct dispatch_account *a)
{
    for (guint i = a->idle->len; i-- > 0;) {
        struct dispatch_worker *w =
            g_hash_table_lookup(d->workers, g_array_index(a->idle, struct dispatch_idle, i).worker);

        if (w && w->kind == WORKER_SENDER && w->credit)
            return w;
    }
    return NULL;
}

/* A worker takes its idle connection used last for the account's job (sender_slot.c). */
void dispatch_account_job_start(struct dispatch_account *a, const struct dispatch_job *job)
{
    a->jobs++;
    for (guint i = a->idle->len; job->worker && i-- > 0;)
        if (g_str_equal(g_array_index(a->idle, struct dispatch_idle, i).worker,
                        job->worker->name)) {
            g_array_remove_index(a->idle, i);
            break;
        }
}

void dispatch_account_job_end(struct dispatch_job *job)
{
    struct dispatch_account *a = job->acct;
    struct dispatch_idle idle;

    if (!a)
        return;
    a->jobs--;
    if (!job->worker || !a->conns_counted)
        return;
    idle.worker = g_strdup(job->worker->name);
    idle.until = mono_ms() + WIRE_CONN_IDLE_MS + ACCOUNT_IDLE_SLACK_MS;
    g_array_append_val(a->idle, idle);
}

void dispatch_account_log_pause(struct dispatch *d, const struct dispatch_account *a,
                                const char *why)
{
    g_autoptr(GDateTime) until = g_date_time_new_from_unix_local(a->paused_until / 1000);
    g_autofree char *when = g_date_time_format(until, "%H:%M:%S");

    if (d->naccounts > 1)
        msg_warn("relay %s account %s paused until %s %s", a->relay->url, a->relay->name, when,
                 why);
    else
        msg_warn("relay %s paused until %s %s", a->relay->url, when, why);
}

/* Adopt one account's pause as the spool holds it; log once when it ends. */
void dispatch_account_adopt(struct dispatch *d, struct dispatch_account *a,
                            const struct relay_state *st)
{
    gboolean held = relay_state_paused(st, unix_ms());

    if (a->held && !held)
        msg_info("relay %s%s%s resumed: %s", a->relay->url, d->naccounts > 1 ? " account " : "",
                 d->naccounts > 1 ? a->relay->name : "",
                 st->paused_until ? "the pause is over" : "pause cleared by spoolctl relay resume");
    a->held = held;
    a->paused_until = st->paused_until;
    a->pauses = st->pauses;
    a->pause_since = st->since;
}

void dispatch_relay_refresh(struct dispatch *d)
{
    g_autofree struct relay_state *st = g_new0(struct relay_state, d->naccounts);
    struct spool_txn t;
    GError *err = NULL;
    gboolean ok;

    /* A spool we cannot read now keeps what we knew: the next tick tries again. */
    if (!spool_read_begin(d->spool, &t, &err)) {
        msg_warn("relay state: %s", err->message);
        g_clear_error(&err);
        return;
    }
    ok = TRUE;
    for (guint i = 0; ok && i < d->naccounts; i++)
        ok = relay_state_get(&t, d->accounts[i].relay->name, &st[i], &err);
    spool_read_end(&t);
    if (!ok) {
        msg_warn("relay state: %s", err->message);
        g_clear_error(&err);
        return;
    }
    for (guint i = 0; i < d->naccounts; i++)
        dispatch_account_adopt(d, &d->accounts[i], &st[i]);
}
