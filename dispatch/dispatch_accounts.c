/*
 * dispatch_accounts.c - the relay accounts ([relay] and [relay NAME],
 * common/config.h) as the dispatcher schedules them: each job goes to the
 * next account in turn that is not paused, and each account has a pause
 * of its own (spool/relay_state.h), begun by a quota, throttle or AUTH
 * reply to that account's login only.
 */
#include "dispatch/dispatch.h"
#include "common/log.h"
#include "spool/relay_state.h"

void dispatch_accounts_setup(struct dispatch *d)
{
    GPtrArray *relays = d->cfg->relays;

    g_free(d->accounts);
    d->accounts = g_new0(struct dispatch_account, relays->len);
    d->naccounts = relays->len;
    for (guint i = 0; i < relays->len; i++)
        d->accounts[i].relay = relays->pdata[i];
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

gboolean dispatch_accounts_paused(const struct dispatch *d, int64_t now_ms)
{
    for (guint i = 0; i < d->naccounts; i++)
        if (!dispatch_account_paused(&d->accounts[i], now_ms))
            return FALSE;
    return TRUE;
}

/*
 * The accounts take jobs in turn, [relay] first, so that each carries an
 * even share: the relay's quota is per account (Google Workspace: 10,000
 * messages a user and day), and spreading the jobs spreads it.  A paused
 * account is passed over until its pause ends.
 */
struct dispatch_account *dispatch_account_next(struct dispatch *d)
{
    int64_t now = unix_ms();

    for (guint n = 0; n < d->naccounts; n++) {
        struct dispatch_account *a = &d->accounts[d->account_next++ % d->naccounts];

        if (!dispatch_account_paused(a, now))
            return a;
    }
    return NULL;
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
