/*
 * spoolctl_relay.c - the relay pause (spool/relay_state.h) as the operator
 * sees it: `relay status`, `relay resume`, and the line that list, stats
 * and retry print while deliveries are held.
 */
#include "tools/spoolctl.h"
#include "common/clock.h"
#include "common/log.h"

#include <stdio.h>
#include <string.h>

gboolean ctl_relay_read(struct ctl *c, struct relay_state *st, GError **err)
{
    struct spool_txn t;
    gboolean ok;

    if (!spool_read_begin(c->spool, &t, err))
        return FALSE;
    ok = relay_state_get(&t, NULL, st, err);
    spool_read_end(&t);
    return ok;
}

/* "2026-12-06 14:35:00 (in 4m12s)" */
static char *ctl_relay_until(int64_t until_ms, int64_t now_ms)
{
    g_autoptr(GDateTime) dt = g_date_time_new_from_unix_local(until_ms / 1000);
    g_autofree char *when = dt ? g_date_time_format(dt, "%Y-%m-%d %H:%M:%S") : g_strdup("-");
    int64_t left = (until_ms - now_ms + 999) / 1000;

    return g_strdup_printf("%s (in %" G_GINT64_FORMAT "m%02" G_GINT64_FORMAT "s)", when,
                           left / 60, left % 60);
}

char *ctl_relay_describe_account(const struct postern_config *cfg,
                                        const struct postern_relay *r,
                                        const struct relay_state *st)
{
    int64_t now = unix_ms();
    g_autofree char *until = NULL;
    g_autofree char *who = cfg->relays->len > 1
                               ? g_strdup_printf("relay %s account %s", r->url, r->name)
                               : g_strdup_printf("relay %s", r->url);

    if (!relay_state_paused(st, now))
        return g_strdup_printf("%s: not paused", who);
    until = ctl_relay_until(st->paused_until, now);
    return g_strdup_printf("%s: paused until %s, pause %u in a row%s%s", who, until, st->pauses,
                           *st->reason ? ", after: " : "", st->reason);
}

char *ctl_relay_describe(const struct postern_config *cfg, const struct relay_state *st)
{
    return ctl_relay_describe_account(cfg, cfg->relays->pdata[0], st);
}

void ctl_relay_json(JsonBuilder *b, const struct relay_state *st)
{
    gboolean paused = relay_state_paused(st, unix_ms());

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "paused");
    json_builder_add_boolean_value(b, paused);
    json_builder_set_member_name(b, "paused_until");
    json_builder_add_int_value(b, paused ? st->paused_until / 1000 : 0);
    json_builder_set_member_name(b, "pauses");
    json_builder_add_int_value(b, st->pauses);
    json_builder_set_member_name(b, "reason");
    if (*st->reason)
        json_builder_add_string_value(b, st->reason);
    else
        json_builder_add_null_value(b);
    json_builder_end_object(b);
}

/*
 * Account r's daily limit as the spool counted it; the limit is the
 * configured one, since the dispatcher writes the record only when it
 * leases.
 */
char *ctl_quota_describe(const struct postern_config *cfg, const struct postern_relay *r,
                         const struct relay_quota *q)
{
    int64_t now = unix_ms();
    struct postern_relay_limits lim;
    g_autofree char *window = NULL;

    config_relay_limits(cfg, r, &lim);
    window = g_strdup_printf("%" G_GUINT64_FORMAT "s", lim.daily_window);
    if (!lim.daily_limit)
        return g_strdup("no daily limit");
    if (q->waiting_until <= now)
        return g_strdup_printf("%" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
                               " recipients in the last %s", relay_quota_used(q, now),
                               lim.daily_limit, window);
    g_autofree char *until = ctl_relay_until(q->waiting_until, now);
    return g_strdup_printf("%" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
                           " recipients in the last %s, deliveries waiting until %s",
                           relay_quota_used(q, now), lim.daily_limit, window, until);
}

/* The accounts a relay command is about: the one --account names, or all. */
static gboolean ctl_relay_accounts(struct ctl *c, const char *name, GPtrArray *out)
{
    for (guint i = 0; i < c->cfg.relays->len; i++) {
        const struct postern_relay *r = c->cfg.relays->pdata[i];

        if (!name || g_str_equal(name, r->name))
            g_ptr_array_add(out, (gpointer)r);
    }
    if (out->len)
        return TRUE;
    fprintf(stderr, "spoolctl: no relay account \"%s\" in %s\n", name,
            c->cfg.path ? c->cfg.path : "the defaults");
    return FALSE;
}

/* Each account's pause, read in one transaction. */
static gboolean ctl_relay_read_all(struct ctl *c, GPtrArray *accounts, struct relay_state *st,
                                   GError **err)
{
    struct spool_txn t;
    gboolean ok = TRUE;

    if (!spool_read_begin(c->spool, &t, err))
        return FALSE;
    for (guint i = 0; ok && i < accounts->len; i++)
        ok = relay_state_get(&t, ((const struct postern_relay *)accounts->pdata[i])->name, &st[i],
                             err);
    spool_read_end(&t);
    return ok;
}

/*
 * JSON: "url" and "relay" are the first account's (the default's unless
 * --account names another), as before accounts; "accounts" has them all.
 */
static int ctl_relay_status(struct ctl *c, GPtrArray *accounts)
{
    g_autofree struct relay_state *st = g_new0(struct relay_state, accounts->len);
    GError *err = NULL;

    ctl_open_spool(c);
    if (!ctl_relay_read_all(c, accounts, st, &err))
        return ctl_fail(err);
    if (c->json) {
        g_autoptr(JsonBuilder) b = json_builder_new();

        json_builder_begin_object(b);
        json_builder_set_member_name(b, "url");
        json_builder_add_string_value(b, ((const struct postern_relay *)accounts->pdata[0])->url);
        json_builder_set_member_name(b, "relay");
        ctl_relay_json(b, &st[0]);
        json_builder_set_member_name(b, "accounts");
        json_builder_begin_array(b);
        for (guint i = 0; i < accounts->len; i++) {
            const struct postern_relay *r = accounts->pdata[i];

            json_builder_begin_object(b);
            json_builder_set_member_name(b, "account");
            json_builder_add_string_value(b, r->name);
            json_builder_set_member_name(b, "url");
            json_builder_add_string_value(b, r->url);
            json_builder_set_member_name(b, "relay");
            ctl_relay_json(b, &st[i]);
            json_builder_end_object(b);
        }
        json_builder_end_array(b);
        json_builder_end_object(b);
        ctl_json_print(b);
        return CTL_OK;
    }
    for (guint i = 0; i < accounts->len; i++) {
        g_autofree char *text = ctl_relay_describe_account(&c->cfg, accounts->pdata[i], &st[i]);
        printf("%s\n", text);
    }
    return CTL_OK;
}

struct ctl_resume {
    GPtrArray *accounts;            /* const struct postern_relay * */
    gboolean *cleared;              /* per account */
    gboolean multi;                 /* the config has several: name them */
};

/*
 * Clear the pause and the run of pauses; keep `since`, so that late
 * quota replies to jobs leased before the pause do not pause again.
 */
static gboolean ctl_resume_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct ctl_resume *r = ctx;

    for (guint i = 0; i < r->accounts->len; i++) {
        const struct postern_relay *a = r->accounts->pdata[i];
        struct relay_state was, st;

        if (!relay_state_get(t, a->name, &was, err))
            return FALSE;
        r->cleared[i] = relay_state_paused(&was, unix_ms());
        if (!r->cleared[i])
            continue;
        st = was;
        st.paused_until = 0;
        st.pauses = 0;
        if (!relay_state_put(t, a->name, &st, err))
            return FALSE;
        g_autoptr(GDateTime) dt = g_date_time_new_from_unix_local(was.paused_until / 1000);
        g_autofree char *when = dt ? g_date_time_format(dt, "%H:%M:%S") : g_strdup("-");

        spool_txn_log(t, "relay %s%s%s: pause cleared by operator (was until %s, after: %s)",
                      a->url, r->multi ? " account " : "", r->multi ? a->name : "", when,
                      *was.reason ? was.reason : "unknown");
    }
    return TRUE;
}

static int ctl_relay_resume(struct ctl *c, GPtrArray *accounts)
{
    g_autofree gboolean *cleared = g_new0(gboolean, accounts->len);
    struct ctl_resume r = { accounts, cleared, c->cfg.relays->len > 1 };
    gboolean any = FALSE;
    GError *err = NULL;

    ctl_open_spool(c);
    if (!spool_write(c->spool, ctl_resume_write, &r, &err))
        return ctl_fail(err);
    for (guint i = 0; i < accounts->len; i++)
        any |= cleared[i];
    if (c->json) {
        printf("{\"resumed\": %s}\n", any ? "true" : "false");
        return CTL_OK;
    }
    for (guint i = 0; i < accounts->len; i++) {
        const struct postern_relay *a = accounts->pdata[i];
        g_autofree char *who = r.multi ? g_strdup_printf("relay %s account %s", a->url, a->name)
                                       : g_strdup_printf("relay %s", a->url);

        if (cleared[i])
            printf("%s: pause cleared; the dispatcher delivers again within a second\n", who);
        else
            printf("%s: not paused\n", who);
    }
    return CTL_OK;
}

/* Without --account: status of every account, resume of every one paused. */
int ctl_relay(struct ctl *c, int argc, char **argv)
{
    g_autofree char *account = NULL;
    g_autoptr(GPtrArray) accounts = g_ptr_array_new();
    GOptionEntry options[] = {
        { "account", 0, 0, G_OPTION_ARG_STRING, &account, "only this relay account", "NAME" },
        { NULL }
    };

    if (!ctl_parse(c, &argc, &argv, "status|resume [--account NAME] - the relay pause", options))
        return CTL_USAGE;
    if (argc != 2 || (!g_str_equal(argv[1], "status") && !g_str_equal(argv[1], "resume"))) {
        fprintf(stderr, "spoolctl: relay takes one of: status, resume\n");
        return CTL_USAGE;
    }
    if (!ctl_relay_accounts(c, account, accounts))
        return CTL_USAGE;
    if (g_str_equal(argv[1], "status"))
        return ctl_relay_status(c, accounts);
    return ctl_relay_resume(c, accounts);
}
