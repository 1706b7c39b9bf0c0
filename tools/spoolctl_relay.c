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
    ok = relay_state_get(&t, st, err);
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

char *ctl_relay_describe(const struct postern_config *cfg, const struct relay_state *st)
{
    int64_t now = unix_ms();
    g_autofree char *until = NULL;

    if (!relay_state_paused(st, now))
        return g_strdup_printf("relay %s: not paused", cfg->relay.url);
    until = ctl_relay_until(st->paused_until, now);
    return g_strdup_printf("relay %s: paused until %s, pause %u in a row%s%s", cfg->relay.url,
                           until, st->pauses, *st->reason ? ", after: " : "", st->reason);
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
 * The daily limit as the spool counted it; the limit is the configured
 * one, since the dispatcher writes the record only when it leases.
 */
char *ctl_quota_describe(const struct postern_config *cfg, const struct relay_quota *q)
{
    int64_t now = unix_ms();
    g_autofree char *window = g_strdup_printf("%" G_GUINT64_FORMAT "s", cfg->relay.daily_window);

    if (!cfg->relay.daily_limit)
        return g_strdup("no daily limit");
    if (q->waiting_until <= now)
        return g_strdup_printf("%" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
                               " recipients in the last %s", relay_quota_used(q, now),
                               cfg->relay.daily_limit, window);
    g_autofree char *until = ctl_relay_until(q->waiting_until, now);
    return g_strdup_printf("%" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
                           " recipients in the last %s, deliveries waiting until %s",
                           relay_quota_used(q, now), cfg->relay.daily_limit, window, until);
}

void ctl_quota_json(JsonBuilder *b, const struct postern_config *cfg,
                    const struct relay_quota *q)
{
    int64_t now = unix_ms();
    gboolean waiting = cfg->relay.daily_limit && q->waiting_until > now;

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "limit");
    json_builder_add_int_value(b, (gint64)cfg->relay.daily_limit);
    json_builder_set_member_name(b, "used");
    json_builder_add_int_value(b, (gint64)relay_quota_used(q, now));
    json_builder_set_member_name(b, "waiting");
    json_builder_add_boolean_value(b, waiting);
    json_builder_set_member_name(b, "waiting_until");
    json_builder_add_int_value(b, waiting ? q->waiting_until / 1000 : 0);
    json_builder_end_object(b);
}

static int ctl_relay_status(struct ctl *c)
{
    struct relay_state st;
    GError *err = NULL;

    ctl_open_spool(c);
    if (!ctl_relay_read(c, &st, &err))
        return ctl_fail(err);
    if (c->json) {
        g_autoptr(JsonBuilder) b = json_builder_new();

        json_builder_begin_object(b);
        json_builder_set_member_name(b, "url");
        json_builder_add_string_value(b, c->cfg.relay.url);
        json_builder_set_member_name(b, "relay");
        ctl_relay_json(b, &st);
        json_builder_end_object(b);
        ctl_json_print(b);
    } else {
        g_autofree char *text = ctl_relay_describe(&c->cfg, &st);
        printf("%s\n", text);
    }
    return CTL_OK;
}

struct ctl_resume {
    struct relay_state was;
    gboolean cleared;
    const char *url;
};

/*
 * Clear the pause and the run of pauses; keep `since`, so that late
 * quota replies to jobs leased before the pause do not pause again.
 */
static gboolean ctl_resume_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct ctl_resume *r = ctx;
    struct relay_state st;

    if (!relay_state_get(t, &r->was, err))
        return FALSE;
    r->cleared = relay_state_paused(&r->was, unix_ms());
    if (!r->cleared)
        return TRUE;
    st = r->was;
    st.paused_until = 0;
    st.pauses = 0;
    if (!relay_state_put(t, &st, err))
        return FALSE;
    {
        g_autoptr(GDateTime) dt = g_date_time_new_from_unix_local(r->was.paused_until / 1000);
        g_autofree char *when = dt ? g_date_time_format(dt, "%H:%M:%S") : g_strdup("-");

        spool_txn_log(t, "relay %s: pause cleared by operator (was until %s, after: %s)", r->url,
                      when, *r->was.reason ? r->was.reason : "unknown");
    }
    return TRUE;
}

static int ctl_relay_resume(struct ctl *c)
{
    struct ctl_resume r = { .url = c->cfg.relay.url };
    GError *err = NULL;

    ctl_open_spool(c);
    if (!spool_write(c->spool, ctl_resume_write, &r, &err))
        return ctl_fail(err);
    if (c->json)
        printf("{\"resumed\": %s}\n", r.cleared ? "true" : "false");
    else if (r.cleared)
        printf("relay %s: pause cleared; the dispatcher delivers again within a second\n",
               c->cfg.relay.url);
    else
        printf("relay %s: not paused\n", c->cfg.relay.url);
    return CTL_OK;
}

int ctl_relay(struct ctl *c, int argc, char **argv)
{
    GOptionEntry none[] = { { NULL } };

    if (!ctl_parse(c, &argc, &argv, "status|resume - the relay pause", none))
        return CTL_USAGE;
    if (argc == 2 && g_str_equal(argv[1], "status"))
        return ctl_relay_status(c);
    if (argc == 2 && g_str_equal(argv[1], "resume"))
        return ctl_relay_resume(c);
    fprintf(stderr, "spoolctl: relay takes one of: status, resume\n");
    return CTL_USAGE;
}
