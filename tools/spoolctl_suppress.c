/*
 * spoolctl_suppress.c - `spoolctl suppress list | add ADDR | remove ADDR
 * [--list NAME]`: the suppression lists and bounce scores, one per list
 * (spool/spool_suppress.h).
 *
 * list shows every address with a record, suppressed or only scored, of
 * the list named (every list's without --list); add and remove change
 * the list named, the default list without --list; add
 * suppresses at once (the score set to [bounce] score_threshold, with an
 * address.suppressed event as for one that bounced); remove takes the
 * record away, score and all, so copies go to the address again.
 */
#include "tools/spoolctl.h"
#include "spool/spool_suppress.h"
#include "spool/spool_suppress_json.h"
#include "spool/spool_token.h"

#include <stdio.h>

/* "2026-12-06 14:35:00", or "-" for 0. */
static char *ctl_suppress_time(int64_t s)
{
    g_autoptr(GDateTime) dt = s ? g_date_time_new_from_unix_local(s) : NULL;

    return dt ? g_date_time_format(dt, "%Y-%m-%d %H:%M:%S") : g_strdup("-");
}

/* The rows, and the one list they are of (NULL: every list). */
struct ctl_suppress_rows {
    struct ctl_rows rows;
    const char *list;
};

/* One row, formatted inside the read transaction (ctl_json_append). */
static gboolean ctl_suppress_row(const struct spool_suppress *s, void *ctx)
{
    struct ctl_suppress_rows *sr = ctx;
    struct ctl_rows *rows = &sr->rows;

    if (sr->list && !g_str_equal(sr->list, s->list))
        return TRUE;
    if (rows->json) {
        g_autoptr(JsonBuilder) b = json_builder_new();

        spool_suppress_to_json(b, s);
        ctl_json_append(b, rows->out);
    } else {
        g_autofree char *since = ctl_suppress_time(s->since);

        g_string_append_printf(rows->out, "%-12s %-40s %-10s %5.1f %-19s %s\n",
                               ctl_safe(s->list), ctl_safe(s->addr),
                               s->since ? "suppressed" : "scored", s->score, since,
                               ctl_safe(s->reason ? s->reason : ""));
    }
    return TRUE;
}

static int ctl_suppress_list(struct ctl *c, const char *list)
{
    g_autoptr(GString) out = g_string_new(NULL);
    struct ctl_suppress_rows rows = { { c->json, out }, list };
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
        printf("%-12s %-40s %-10s %5s %-19s %s\n", "LIST", "ADDRESS", "STATE", "SCORE", "SINCE",
               "REASON");
    fputs(out->str, stdout);
    return CTL_OK;
}

static int ctl_suppress_change(struct ctl *c, const char *list, const char *addr, gboolean add)
{
    const char *name = list ? list : CONFIG_LIST_DEFAULT;
    gboolean changed = FALSE;
    GError *err = NULL;

    if (!spool_token_addr_valid(addr)) {
        fprintf(stderr, "spoolctl: suppress %s: <%s> is not an address\n",
                add ? "add" : "remove", addr);
        return CTL_USAGE;
    }
    ctl_open_spool(c);
    if (!spool_suppress_change(c->spool, name, addr, add, "added by operator",
                               (double)c->cfg.bounce.score_threshold, &changed, &err))
        return ctl_fail(err);
    if (c->json) {
        g_autoptr(JsonBuilder) b = json_builder_new();

        spool_suppress_change_to_json(b, name, addr, add, changed);
        ctl_json_print(b);
    } else if (add)
        printf("<%s> list %s: %s\n", ctl_safe(addr), ctl_safe(name),
               changed ? "suppressed" : "already suppressed");
    else
        printf("<%s> list %s: %s\n", ctl_safe(addr), ctl_safe(name),
               changed ? "removed" : "not on the list");
    /* Removing what is not there is "not found", as for a queue id. */
    return add || changed ? CTL_OK : CTL_NOT_FOUND;
}

int ctl_suppress(struct ctl *c, int argc, char **argv)
{
    g_autofree char *list = NULL;
    GOptionEntry entries[] = {
        { "list", 0, 0, G_OPTION_ARG_STRING, &list, "the list (add, remove: default)", "NAME" },
        { NULL }
    };

    if (!ctl_parse(c, &argc, &argv, "list | add ADDR | remove ADDR - the suppression lists",
                   entries))
        return CTL_USAGE;
    /* A list the config does not know would hold records nothing reads. */
    if (list && !config_list_find(&c->cfg, list)) {
        fprintf(stderr, "spoolctl: suppress: no list \"%s\" in the config\n", ctl_safe(list));
        return CTL_USAGE;
    }
    if (argc == 2 && g_str_equal(argv[1], "list"))
        return ctl_suppress_list(c, list);
    if (argc == 3 && g_str_equal(argv[1], "add"))
        return ctl_suppress_change(c, list, argv[2], TRUE);
    if (argc == 3 && g_str_equal(argv[1], "remove"))
        return ctl_suppress_change(c, list, argv[2], FALSE);
    fprintf(stderr, "spoolctl: suppress takes one of: list, add ADDR, remove ADDR\n");
    return CTL_USAGE;
}
