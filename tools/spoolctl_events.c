/*
 * spoolctl_events.c - `spoolctl events`: the outbox of outcome events
 * (spool/spool_events.h) as the operator sees it: how many wait, since
 * when, and when postern-api tries the endpoint next.
 */
#include "tools/spoolctl.h"
#include "common/clock.h"
#include "spool/spool_events.h"

#include <stdio.h>

/* "2026-12-06 14:35:00", or "-" for 0. */
static char *ctl_events_time(int64_t ms)
{
    g_autoptr(GDateTime) dt = ms ? g_date_time_new_from_unix_local(ms / 1000) : NULL;

    return dt ? g_date_time_format(dt, "%Y-%m-%d %H:%M:%S") : g_strdup("-");
}

int ctl_events(struct ctl *c, int argc, char **argv)
{
    GOptionEntry entries[] = { { NULL } };
    struct spool_events_retry st;
    struct spool_txn t;
    uint64_t count = 0;
    int64_t oldest = 0, now = unix_ms();
    GError *err = NULL;

    if (!ctl_parse(c, &argc, &argv, "- the outbox of outcome events ([events] url)", entries))
        return CTL_USAGE;
    ctl_open_spool(c);
    if (!spool_read_begin(c->spool, &t, &err))
        return ctl_fail(err);
    if (!spool_events_backlog(&t, &count, &oldest, &err) ||
        !spool_events_retry_get(&t, &st, &err)) {
        spool_read_end(&t);
        return ctl_fail(err);
    }
    spool_read_end(&t);
    /* Next try: now when events wait and no failure put it later. */
    int64_t next = count ? MAX(st.next_try, now) : 0;

    if (c->json) {
        g_autoptr(JsonBuilder) b = json_builder_new();

        json_builder_begin_object(b);
        json_builder_set_member_name(b, "url");
        json_builder_add_string_value(b, c->cfg.events.url);
        json_builder_set_member_name(b, "count");
        json_builder_add_int_value(b, (gint64)count);
        json_builder_set_member_name(b, "oldest");
        json_builder_add_int_value(b, oldest / 1000);
        json_builder_set_member_name(b, "next_try");
        json_builder_add_int_value(b, next / 1000);
        json_builder_set_member_name(b, "failures");
        json_builder_add_int_value(b, st.failures);
        json_builder_set_member_name(b, "error");
        if (*st.error)
            json_builder_add_string_value(b, st.error);
        else
            json_builder_add_null_value(b);
        json_builder_end_object(b);
        ctl_json_print(b);
        return CTL_OK;
    }
    g_autofree char *old = ctl_events_time(oldest), *when = ctl_events_time(next);

    printf("events: %s\n", *c->cfg.events.url ? c->cfg.events.url : "([events] url not set)");
    printf("waiting: %" G_GUINT64_FORMAT "\n", count);
    printf("oldest: %s\n", old);
    printf("next try: %s\n", count ? when : "-");
    if (st.failures)
        printf("failed tries in a row: %u, last: %s\n", st.failures, ctl_safe(st.error));
    return CTL_OK;
}
