/*
 * spoolctl_suppress.c - `spoolctl suppress list | add ADDR | remove ADDR`:
 * the suppression list and bounce scores (spool/spool_suppress.h).
 *
 * list shows every address with a record, suppressed or only scored; add
 * suppresses at once (the score set to [bounce] score_threshold, with an
 * address.suppressed event as for one that bounced); remove takes the
 * record away, score and all, so copies go to the address again.
 */
#include "tools/spoolctl.h"
#include "common/clock.h"
#include "spool/spool_suppress.h"

#include <stdio.h>

/* "2026-12-06 14:35:00", or "-" for 0. */
static char *ctl_suppress_time(int64_t s)
{
    g_autoptr(GDateTime) dt = s ? g_date_time_new_from_unix_local(s) : NULL;

    return dt ? g_date_time_format(dt, "%Y-%m-%d %H:%M:%S") : g_strdup("-");
}

/* One row, formatted inside the read transaction (ctl_json_append). */
static gboolean ctl_suppress_row(const struct spool_suppress *s, void *ctx)
{
    struct ctl_rows *rows = ctx;

    if (rows->json) {
        g_autoptr(JsonBuilder) b = json_builder_new();

        json_builder_begin_object(b);
        json_builder_set_member_name(b, "address");
        json_builder_add_string_value(b, s->addr);
        json_builder_set_member_name(b, "suppressed");
        json_builder_add_boolean_value(b, s->since != 0);
        json_builder_set_member_name(b, "since");
        json_builder_add_int_value(b, s->since);
        json_builder_set_member_name(b, "score");
        json_builder_add_double_value(b, s->score);
        json_builder_set_member_name(b, "hard");
        json_builder_add_int_value(b, s->hard);
        json_builder_set_member_name(b, "soft");
        json_builder_add_int_value(b, s->soft);
        json_builder_set_member_name(b, "last_bounce");
        json_builder_add_int_value(b, s->last);
        json_builder_set_member_name(b, "reason");
        if (s->reason)
            json_builder_add_string_value(b, s->reason);
        else
            json_builder_add_null_value(b);
        json_builder_end_object(b);
        ctl_json_append(b, rows->out);
    } else {
        g_autofree char *since = ctl_suppress_time(s->since);

        g_string_append_printf(rows->out, "%-40s %-10s %5.1f %-19s %s\n", ctl_safe(s->addr),
                               s->since ? "suppressed" : "scored", s->score, since,
                               ctl_safe(s->reason ? s->reason : ""));
    }
    return TRUE;
}

static int ctl_suppress_list(struct ctl *c)
{
    g_autoptr(GString) out = g_string_new(NULL);
    struct ctl_rows rows = { c->json, out };
    struct spool_txn t;
    GError *err = NULL;
    gboolean ok;

    ctl_open_spool(c);
    if (!spool_read_begin(c->spool, &t, &err))
        return ctl_fail(err);
    ok = spool_suppress_foreach(&t, ctl_suppress_row, &rows, &err);
    spool_read_end(&t);
    if (!ok)
        return ctl_fail(err);
    if (!c->json)
        printf("%-40s %-10s %5s %-19s %s\n", "ADDRESS", "STATE", "SCORE", "SINCE", "REASON");
    fputs(out->str, stdout);
    return CTL_OK;
}

struct ctl_suppress_change {
    const char *addr;
    gboolean add;
    double threshold;
    gboolean changed;
};

static gboolean ctl_suppress_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct ctl_suppress_change *ch = ctx;

    if (ch->add)
        return spool_suppress_add(t, ch->addr, "added by operator", unix_ms() / 1000,
                                  ch->threshold, &ch->changed, err);
    return spool_suppress_remove(t, ch->addr, &ch->changed, err);
}

static int ctl_suppress_change(struct ctl *c, const char *addr, gboolean add)
{
    struct ctl_suppress_change ch = {
        .addr = addr, .add = add, .threshold = (double)c->cfg.bounce.score_threshold,
    };
    GError *err = NULL;

    if (!strchr(addr, '@')) {
        fprintf(stderr, "spoolctl: suppress %s: <%s> is not an address\n",
                add ? "add" : "remove", addr);
        return CTL_USAGE;
    }
    ctl_open_spool(c);
    if (!spool_write(c->spool, ctl_suppress_write, &ch, &err))
        return ctl_fail(err);
    if (c->json) {
        g_autoptr(JsonBuilder) b = json_builder_new();

        json_builder_begin_object(b);
        json_builder_set_member_name(b, "address");
        json_builder_add_string_value(b, addr);
        json_builder_set_member_name(b, add ? "added" : "removed");
        json_builder_add_boolean_value(b, ch.changed);
        json_builder_end_object(b);
        ctl_json_print(b);
    } else if (add)
        printf("<%s>: %s\n", ctl_safe(addr), ch.changed ? "suppressed" : "already suppressed");
    else
        printf("<%s>: %s\n", ctl_safe(addr), ch.changed ? "removed" : "not on the list");
    /* Removing what is not there is "not found", as for a queue id. */
    return add || ch.changed ? CTL_OK : CTL_NOT_FOUND;
}

int ctl_suppress(struct ctl *c, int argc, char **argv)
{
    GOptionEntry entries[] = { { NULL } };

    if (!ctl_parse(c, &argc, &argv, "list | add ADDR | remove ADDR - the suppression list",
                   entries))
        return CTL_USAGE;
    if (argc == 2 && g_str_equal(argv[1], "list"))
        return ctl_suppress_list(c);
    if (argc == 3 && g_str_equal(argv[1], "add"))
        return ctl_suppress_change(c, argv[2], TRUE);
    if (argc == 3 && g_str_equal(argv[1], "remove"))
        return ctl_suppress_change(c, argv[2], FALSE);
    fprintf(stderr, "spoolctl: suppress takes one of: list, add ADDR, remove ADDR\n");
    return CTL_USAGE;
}
