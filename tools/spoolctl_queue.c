/*
 * spoolctl_queue.c - stats, list, show, and the commands that steer
 * messages: hold, release, retry, delete, purge, and approve and discard
 * (a list with approval).
 *
 * Reads page through the spool in short read transactions (a long one
 * would pin pages and grow the file while ingest writes); each change is
 * one write transaction.
 */
#include "tools/spoolctl.h"
#include "common/clock.h"
#include "common/log.h"
#include "spool/relay_json.h"
#include "spool/spool_steer.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define CTL_PAGE 256

static gboolean ctl_parse_id(const char *text, queue_id *id)
{
    if (spool_id_parse(text, id))
        return TRUE;
    fprintf(stderr, "spoolctl: \"%s\" is not a queue id (16 hex digits)\n", text);
    return FALSE;
}

static char *ctl_time(int64_t t)
{
    g_autoptr(GDateTime) dt = g_date_time_new_from_unix_local(t);
    return dt ? g_date_time_format(dt, "%Y-%m-%d %H:%M:%S") : g_strdup("-");
}

static char *ctl_join(GPtrArray *strings)
{
    GString *out = g_string_new(NULL);

    for (guint i = 0; i < strings->len; i++) {
        const char *one = strings->pdata[i];
        if (i)
            g_string_append_c(out, ',');
        log_escape_append(out, one, strlen(one));
    }
    return g_string_free(out, FALSE);
}

/* stats */

int ctl_stats(struct ctl *c, int argc, char **argv)
{
    GOptionEntry none[] = { { NULL } };
    struct spool_stats st;
    GError *err = NULL;

    if (!ctl_parse(c, &argc, &argv, "- counts per state", none))
        return CTL_USAGE;
    if (argc != 1) {
        fprintf(stderr, "spoolctl: stats takes no arguments\n");
        return CTL_USAGE;
    }
    ctl_open_spool(c);
    if (!spool_stats_read(c->spool, c->cfg.relays, &st, &err))
        return ctl_fail(err);
    uint64_t *msgs = st.msgs, *dlvs = st.dlvs, active = st.tokens_active, used = st.tokens_used,
             bytes = st.spool_bytes;
    int64_t age = st.oldest_age;

    if (c->json) {
        g_autoptr(JsonBuilder) b = json_builder_new();
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "messages");
        json_builder_begin_object(b);
        for (int s = 0; s < MSG_STATE_COUNT; s++) {
            json_builder_set_member_name(b, msg_state_name(s));
            json_builder_add_int_value(b, (gint64)msgs[s]);
        }
        json_builder_end_object(b);
        json_builder_set_member_name(b, "deliveries");
        json_builder_begin_object(b);
        for (int s = 0; s < DLV_STATE_COUNT; s++) {
            json_builder_set_member_name(b, dlv_state_name(s));
            json_builder_add_int_value(b, (gint64)dlvs[s]);
        }
        json_builder_end_object(b);
        json_builder_set_member_name(b, "oldest_age");
        json_builder_add_int_value(b, age);
        json_builder_set_member_name(b, "spool_bytes");
        json_builder_add_int_value(b, (gint64)bytes);
        json_builder_set_member_name(b, "tokens");
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "active");
        json_builder_add_int_value(b, (gint64)active);
        json_builder_set_member_name(b, "used");
        json_builder_add_int_value(b, (gint64)used);
        json_builder_end_object(b);
        json_builder_set_member_name(b, "relay");
        ctl_relay_json(b, &st.relay);
        /* "relay" is [relay]'s (the account "default"); the [relay NAME]s follow. */
        json_builder_set_member_name(b, "relay_accounts");
        json_builder_begin_object(b);
        for (guint i = 0; i < st.naccounts; i++) {
            json_builder_set_member_name(b, st.accounts[i].name);
            ctl_relay_json(b, &st.accounts[i].relay);
        }
        json_builder_end_object(b);
        json_builder_set_member_name(b, "quota");
        relay_quota_json(b, &c->cfg, c->cfg.relays->pdata[0], &st.quota, unix_ms());
        /* "quota" is [relay]'s; each [relay NAME] counts against its own limit. */
        json_builder_set_member_name(b, "quota_accounts");
        json_builder_begin_object(b);
        for (guint i = 0; i < st.naccounts; i++) {
            json_builder_set_member_name(b, st.accounts[i].name);
            relay_quota_json(b, &c->cfg, config_relay_find(&c->cfg, st.accounts[i].name),
                             &st.accounts[i].quota, unix_ms());
        }
        json_builder_end_object(b);
        json_builder_end_object(b);
        ctl_json_print(b);
        return CTL_OK;
    }
    printf("%-12s", "messages:");
    for (int s = 0; s < MSG_STATE_COUNT; s++)
        printf(" %s=%" G_GUINT64_FORMAT, msg_state_name(s), msgs[s]);
    printf("\n%-12s", "deliveries:");
    for (int s = 0; s < DLV_STATE_COUNT; s++)
        printf(" %s=%" G_GUINT64_FORMAT, dlv_state_name(s), dlvs[s]);
    printf("\n%-12s active=%" G_GUINT64_FORMAT " used=%" G_GUINT64_FORMAT "\n", "tokens:", active,
           used);
    printf("%-12s %" G_GINT64_FORMAT "s\n%-12s %" G_GUINT64_FORMAT " bytes\n", "oldest age:", age,
           "spool size:", bytes);
    /* Last, so that scripts reading the lines above by position still work. */
    g_autofree char *relay = ctl_relay_describe(&c->cfg, &st.relay);
    printf("%-12s %s\n", "relay:", relay);
    for (guint i = 0; i < st.naccounts; i++) {
        g_autofree char *account = ctl_relay_describe_account(
            &c->cfg, config_relay_find(&c->cfg, st.accounts[i].name), &st.accounts[i].relay);
        printf("%-12s %s\n", "relay:", account);
    }
    g_autofree char *quota = ctl_quota_describe(&c->cfg, c->cfg.relays->pdata[0], &st.quota);
    printf("%-12s %s%s\n", "quota:", st.naccounts ? "account default: " : "", quota);
    for (guint i = 0; i < st.naccounts; i++) {
        g_autofree char *account = ctl_quota_describe(
            &c->cfg, config_relay_find(&c->cfg, st.accounts[i].name), &st.accounts[i].quota);
        printf("%-12s account %s: %s\n", "quota:", st.accounts[i].name, account);
    }
    return CTL_OK;
}

/* list */

struct ctl_list_filter {
    int state;                      /* -1: any */
    const char *sender;
    int64_t before;                 /* arrival earlier than this, 0: any */
    int64_t limit;                  /* 0: no limit */
};

struct ctl_page {
    GPtrArray *ids;
    queue_id next;
};

static gboolean ctl_page_add(queue_id id, void *ctx)
{
    struct ctl_page *p = ctx;

    g_ptr_array_add(p->ids, g_memdup2(&id, sizeof(id)));
    p->next = id + 1;
    return p->ids->len < CTL_PAGE;
}

static gboolean ctl_list_match(const struct ctl_list_filter *f, const struct spool_msg *m)
{
    if (f->sender && g_ascii_strcasecmp(f->sender, m->sender) != 0)
        return FALSE;
    if (f->before && m->arrival >= f->before)
        return FALSE;
    return TRUE;
}

static void ctl_list_json(const struct spool_msg *m, const uint32_t *counts, GString *out)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    char id[QUEUE_ID_LEN + 1];

    spool_id_format(m->id, id);
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "id");
    json_builder_add_string_value(b, id);
    json_builder_set_member_name(b, "state");
    json_builder_add_string_value(b, msg_state_name(m->state));
    json_builder_set_member_name(b, "arrival");
    json_builder_add_int_value(b, m->arrival);
    json_builder_set_member_name(b, "size");
    json_builder_add_int_value(b, (gint64)m->size);
    json_builder_set_member_name(b, "sender");
    json_builder_add_string_value(b, m->sender);
    json_builder_set_member_name(b, "recipients");
    json_builder_begin_array(b);
    for (guint i = 0; i < m->recipients->len; i++)
        json_builder_add_string_value(b, m->recipients->pdata[i]);
    json_builder_end_array(b);
    json_builder_set_member_name(b, "sent");
    json_builder_add_int_value(b, counts[DLV_SENT]);
    json_builder_set_member_name(b, "deferred");
    json_builder_add_int_value(b, counts[DLV_DEFERRED]);
    json_builder_set_member_name(b, "bounced");
    json_builder_add_int_value(b, counts[DLV_BOUNCED]);
    json_builder_set_member_name(b, "deliveries");
    json_builder_add_int_value(b, counts[DLV_READY] + counts[DLV_LEASED] + counts[DLV_DEFERRED] +
                                      counts[DLV_SENT] + counts[DLV_BOUNCED]);
    json_builder_set_member_name(b, "reason");
    if (m->reason)
        json_builder_add_string_value(b, m->reason);
    else
        json_builder_add_null_value(b);
    json_builder_end_object(b);
    ctl_json_append(b, out);
}

static void ctl_list_row(const struct spool_msg *m, const uint32_t *counts, GString *out)
{
    char id[QUEUE_ID_LEN + 1];
    g_autofree char *when = ctl_time(m->arrival);
    g_autofree char *rcpts = ctl_join(m->recipients);

    spool_id_format(m->id, id);
    g_string_append_printf(out, "%-16s  %-19s  %8" G_GUINT64_FORMAT "  %-9s  %u/%u/%u  <%s> -> %s%s%s\n",
                           id, when, m->size, msg_state_name(m->state), counts[DLV_SENT],
                           counts[DLV_DEFERRED], counts[DLV_BOUNCED], ctl_safe(m->sender), rcpts,
                           m->reason ? "  reason=" : "", m->reason ? ctl_safe(m->reason) : "");
}

int ctl_list(struct ctl *c, int argc, char **argv)
{
    g_autofree char *state = NULL, *sender = NULL, *older = NULL;
    gint64 limit = 0;
    GOptionEntry entries[] = {
        { "state", 0, 0, G_OPTION_ARG_STRING, &state, "only messages in this state", "S" },
        { "sender", 0, 0, G_OPTION_ARG_STRING, &sender, "only from this envelope sender", "A" },
        { "older-than", 0, 0, G_OPTION_ARG_STRING, &older, "only older than (30m, 2d)", "D" },
        { "limit", 0, 0, G_OPTION_ARG_INT64, &limit, "at most N messages", "N" },
        { NULL }
    };
    struct ctl_list_filter f = { .state = -1 };
    struct ctl_page page = { 0 };
    int64_t shown = 0;

    if (!ctl_parse(c, &argc, &argv, "- list messages", entries))
        return CTL_USAGE;
    if (argc != 1 || limit < 0) {
        fprintf(stderr, "spoolctl: list takes options only, and --limit N with N >= 0\n");
        return CTL_USAGE;
    }
    if (state) {
        enum msg_state s;
        if (!msg_state_parse(state, &s)) {
            fprintf(stderr, "spoolctl: unknown state \"%s\"\n", state);
            return CTL_USAGE;
        }
        f.state = s;
    }
    if (older) {
        uint64_t d;
        if (!config_parse_duration(older, &d)) {
            fprintf(stderr, "spoolctl: bad duration \"%s\"\n", older);
            return CTL_USAGE;
        }
        f.before = unix_ms() / 1000 - (int64_t)d;
    }
    f.sender = sender;
    f.limit = limit;
    ctl_open_spool(c);
    /* Deferred rows say nothing of a paused relay: say it above them. */
    struct relay_state rs;
    GError *rerr = NULL;
    if (!c->json && !ctl_relay_read(c, &rs, &rerr))
        return ctl_fail(rerr);
    if (!c->json && relay_state_paused(&rs, unix_ms())) {
        g_autofree char *relay = ctl_relay_describe(&c->cfg, &rs);
        printf("%s (spoolctl relay resume to end it)\n", relay);
    }
    if (!c->json)
        printf("%-16s  %-19s  %8s  %-9s  %s\n", "ID", "ARRIVAL", "SIZE", "STATE",
               "SENT/DEFERRED/BOUNCED  SENDER -> RECIPIENTS");

    page.ids = g_ptr_array_new_with_free_func(g_free);
    for (;;) {
        g_autoptr(GString) out = g_string_new(NULL);
        struct spool_txn t;
        GError *err = NULL;

        g_ptr_array_set_size(page.ids, 0);
        if (!spool_read_begin(c->spool, &t, &err) ||
            !spool_msg_foreach(&t, f.state, page.next, ctl_page_add, &page, &err)) {
            spool_read_end(&t);
            g_ptr_array_unref(page.ids);
            return ctl_fail(err);
        }
        for (guint i = 0; i < page.ids->len && (!f.limit || shown < f.limit); i++) {
            struct spool_msg m;
            uint32_t counts[DLV_STATE_COUNT];

            if (!spool_msg_get(&t, *(queue_id *)page.ids->pdata[i], &m, NULL))
                continue;       /* removed since the index was read */
            if (ctl_list_match(&f, &m) && spool_dlv_counts(&t, m.id, counts, NULL)) {
                (c->json ? ctl_list_json : ctl_list_row)(&m, counts, out);
                shown++;
            }
            spool_msg_clear(&m);
        }
        spool_read_end(&t);
        fputs(out->str, stdout);
        if (page.ids->len < CTL_PAGE || (f.limit && shown >= f.limit))
            break;
    }
    g_ptr_array_unref(page.ids);
    return CTL_OK;
}

/* show */

static void ctl_show_json(const struct spool_msg *m)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    char id[QUEUE_ID_LEN + 1];
    const struct { const char *name; const char *value; } fields[] = {
        { "state", msg_state_name(m->state) }, { "sender", m->sender },
        { "client", m->client }, { "helo", m->helo }, { "proto", m->proto },
        { "received", m->received }, { "kind", m->kind ? m->kind : MSG_KIND_MAIL },
        { "owner", m->owner }, { "message_id", m->message_id },
    };
    char ref[QUEUE_ID_LEN + 1] = "";

    spool_id_format(m->id, id);
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "id");
    json_builder_add_string_value(b, id);
    for (size_t i = 0; i < G_N_ELEMENTS(fields); i++) {
        json_builder_set_member_name(b, fields[i].name);
        json_builder_add_string_value(b, fields[i].value ? fields[i].value : "");
    }
    json_builder_set_member_name(b, "ref");
    if (m->ref)
        spool_id_format(m->ref, ref);
    json_builder_add_string_value(b, ref);
    json_builder_set_member_name(b, "arrival");
    json_builder_add_int_value(b, m->arrival);
    json_builder_set_member_name(b, "since");
    json_builder_add_int_value(b, m->since);
    json_builder_set_member_name(b, "size");
    json_builder_add_int_value(b, (gint64)m->size);
    json_builder_set_member_name(b, "reason");
    if (m->reason)
        json_builder_add_string_value(b, m->reason);
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "recipients");
    json_builder_begin_array(b);
    for (guint i = 0; i < m->recipients->len; i++)
        json_builder_add_string_value(b, m->recipients->pdata[i]);
    json_builder_end_array(b);
    json_builder_set_member_name(b, "history");
    json_builder_begin_array(b);
    for (guint i = 0; i < m->history->len; i++)
        json_builder_add_string_value(b, m->history->pdata[i]);
    json_builder_end_array(b);
    json_builder_end_object(b);
    ctl_json_print(b);
}

static void ctl_show_text(const struct spool_msg *m)
{
    char id[QUEUE_ID_LEN + 1];
    g_autofree char *arrival = ctl_time(m->arrival);
    g_autofree char *since = ctl_time(m->since);

    spool_id_format(m->id, id);
    printf("id:         %s\nstate:      %s (since %s)\n", id, msg_state_name(m->state), since);
    if (m->reason)
        printf("reason:     %s\n", ctl_safe(m->reason));
    printf("arrival:    %s\nsize:       %" G_GUINT64_FORMAT "\nsender:     <%s>\n", arrival,
           m->size, ctl_safe(m->sender));
    for (guint i = 0; i < m->recipients->len; i++)
        printf("recipient:  <%s>\n", ctl_safe(m->recipients->pdata[i]));
    printf("client:     %s (helo %s, %s)\nhistory:\n", ctl_safe(m->client), ctl_safe(m->helo),
           ctl_safe(m->proto));
    for (guint i = 0; i < m->history->len; i++) {
        const char *line = m->history->pdata[i];
        g_autofree char *when = ctl_time(g_ascii_strtoll(line, NULL, 10));
        printf("  %s  %s\n", when, ctl_safe(strchr(line, ' ') ? strchr(line, ' ') + 1 : line));
    }
}

static gboolean ctl_show_delivery(const struct spool_dlv *d, void *ctx)
{
    struct ctl_rows *rows = ctx;

    if (rows->json) {
        g_autoptr(JsonBuilder) b = json_builder_new();
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "rcpt");
        json_builder_add_string_value(b, d->rcpt);
        json_builder_set_member_name(b, "state");
        json_builder_add_string_value(b, dlv_state_name(d->state));
        json_builder_set_member_name(b, "attempts");
        json_builder_add_int_value(b, d->attempts);
        json_builder_set_member_name(b, "next_try");
        json_builder_add_int_value(b, d->next_try);
        json_builder_set_member_name(b, "last_reply");
        if (d->last_reply)
            json_builder_add_string_value(b, d->last_reply);
        else
            json_builder_add_null_value(b);
        json_builder_set_member_name(b, "held");
        json_builder_add_boolean_value(b, d->held);
        json_builder_end_object(b);
        ctl_json_append(b, rows->out);
    } else {
        g_autofree char *next = ctl_time(d->next_try);
        g_string_append_printf(rows->out, "%-40s  %-8s  %3u  %-19s  %s\n", ctl_safe(d->rcpt),
                               dlv_state_name(d->state), d->attempts,
                               d->state == DLV_DEFERRED || d->state == DLV_READY ? next : "-",
                               ctl_safe(d->last_reply));
    }
    return TRUE;
}

/* The header block of the delivery to rcpt (case-insensitive), or of the first. */
struct ctl_outgoing {
    const char *rcpt;
    gboolean found;
    GBytes *header;
};

static gboolean ctl_outgoing_pick(const struct spool_dlv *d, void *ctx)
{
    struct ctl_outgoing *o = ctx;

    if (o->rcpt && g_ascii_strcasecmp(o->rcpt, d->rcpt) != 0)
        return TRUE;
    o->found = TRUE;
    o->header = d->header ? g_bytes_ref(d->header) : NULL;
    return FALSE;
}

/*
 * The exact bytes sent to one recipient, appended to out: its header
 * block, then the common copy.
 */
static gboolean ctl_read_outgoing(struct spool_txn *t, queue_id id, const char *rcpt,
                                  GByteArray *out, GError **err)
{
    struct ctl_outgoing o = { .rcpt = rcpt };

    if (!spool_dlv_foreach(t, id, ctl_outgoing_pick, &o, err))
        return FALSE;
    if (!o.found) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND, "no delivery%s%s", rcpt ? " to " : "",
                    rcpt ? rcpt : "");
        return FALSE;
    }
    if (o.header) {
        gsize n;
        const guint8 *p = g_bytes_get_data(o.header, &n);
        g_byte_array_append(out, p, (guint)n);
        g_bytes_unref(o.header);
    }
    return spool_body_get(t, DB_OUTGOING, id, out, err);
}

enum ctl_show_what { CTL_SHOW_MESSAGE, CTL_SHOW_RAW, CTL_SHOW_OUTGOING, CTL_SHOW_DELIVERIES };

/*
 * Copy what show prints out of one read transaction: the message into m,
 * the bytes or formatted rows of the other views into out.
 */
static gboolean ctl_show_read(struct ctl *c, queue_id id, enum ctl_show_what what,
                              const char *rcpt, struct spool_msg *m, GByteArray *out,
                              GError **err)
{
    struct ctl_rows rows = { .json = c->json };
    struct spool_txn t;
    gboolean ok = TRUE;

    if (!spool_read_begin(c->spool, &t, err) || !spool_msg_get(&t, id, m, err)) {
        spool_read_end(&t);
        return FALSE;
    }
    switch (what) {
    case CTL_SHOW_RAW:
        ok = spool_body_get(&t, DB_BODIES, id, out, err);
        break;
    case CTL_SHOW_OUTGOING:
        ok = ctl_read_outgoing(&t, id, rcpt, out, err);
        break;
    case CTL_SHOW_DELIVERIES:
        rows.out = g_string_new(NULL);
        if (!c->json)
            g_string_append_printf(rows.out, "%-40s  %-8s  %3s  %-19s  %s\n", "RECIPIENT",
                                   "STATE", "TRY", "NEXT TRY", "LAST REPLY");
        ok = spool_dlv_foreach(&t, id, ctl_show_delivery, &rows, err);
        g_byte_array_append(out, (const guint8 *)rows.out->str, (guint)rows.out->len);
        g_string_free(rows.out, TRUE);
        break;
    case CTL_SHOW_MESSAGE:
        break;
    }
    spool_read_end(&t);
    if (!ok)
        spool_msg_clear(m);
    return ok;
}

int ctl_show(struct ctl *c, int argc, char **argv)
{
    gboolean raw = FALSE, deliveries = FALSE, outgoing = FALSE, unmasked = FALSE;
    g_autofree char *rcpt = NULL;
    GOptionEntry entries[] = {
        { "raw", 0, 0, G_OPTION_ARG_NONE, &raw, "the message bytes as received, token masked",
          NULL },
        { "unmasked", 0, 0, G_OPTION_ARG_NONE, &unmasked, "with --raw: the token too", NULL },
        { "outgoing", 0, 0, G_OPTION_ARG_NONE, &outgoing, "the bytes sent to a recipient", NULL },
        { "rcpt", 0, 0, G_OPTION_ARG_STRING, &rcpt, "with --outgoing: this one (default: the first)",
          "A" },
        { "deliveries", 0, 0, G_OPTION_ARG_NONE, &deliveries, "each recipient's delivery", NULL },
        { NULL }
    };
    g_autoptr(GByteArray) out = g_byte_array_new();
    enum ctl_show_what what;
    struct spool_msg m;
    GError *err = NULL;
    queue_id id;

    if (!ctl_parse(c, &argc, &argv, "ID - show a message", entries))
        return CTL_USAGE;
    if (argc != 2) {
        fprintf(stderr, "spoolctl: show needs one queue id\n");
        return CTL_USAGE;
    }
    if (!ctl_parse_id(argv[1], &id))
        return CTL_USAGE;
    if (raw + outgoing + deliveries > 1 || (rcpt && !outgoing) || (unmasked && !raw)) {
        fprintf(stderr, "spoolctl: show takes one of --raw [--unmasked], --outgoing [--rcpt A], "
                        "--deliveries\n");
        return CTL_USAGE;
    }
    what = raw ? CTL_SHOW_RAW : outgoing ? CTL_SHOW_OUTGOING
         : deliveries ? CTL_SHOW_DELIVERIES : CTL_SHOW_MESSAGE;
    ctl_open_spool(c);
    if (!ctl_show_read(c, id, what, rcpt, &m, out, &err))
        return ctl_fail(err);
    /*
     * The token in the bytes as received may still be valid (a message
     * rejected for SENDER_MISMATCH): shown only on request, and that
     * request is logged.
     */
    if (what == CTL_SHOW_RAW && unmasked) {
        msg_info("%s: raw message shown with its token (show --raw --unmasked, uid %d)",
                 argv[1], (int)getuid());
    } else if (what == CTL_SHOW_RAW &&
               ctl_mask_token(out, c->cfg.token.prefix) == CTL_MASK_FAILED) {
        fprintf(stderr, "spoolctl: %s: cannot mask the token; --unmasked shows the message\n",
                argv[1]);
        spool_msg_clear(&m);
        return CTL_FAIL;
    }
    if (what == CTL_SHOW_MESSAGE)
        (c->json ? ctl_show_json : ctl_show_text)(&m);
    else if (out->len)              /* an empty body has no buffer at all */
        fwrite(out->data, 1, out->len, stdout);
    spool_msg_clear(&m);
    return CTL_OK;
}

/* Commands that change messages */

/* Returns TRUE when it changed m; FALSE with *err unset when m is skipped. */
typedef gboolean (*ctl_change_fn)(struct spool_txn *t, struct spool_msg *m, void *arg,
                                  GError **err);

struct ctl_change {
    GPtrArray *ids;                 /* queue_id* */
    ctl_change_fn fn;
    void *arg;
    int64_t done;
};

static gboolean ctl_change_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct ctl_change *ch = ctx;

    ch->done = 0;
    for (guint i = 0; i < ch->ids->len; i++) {
        struct spool_msg m;
        GError *local = NULL;
        gboolean changed;

        if (!spool_msg_get(t, *(queue_id *)ch->ids->pdata[i], &m, &local)) {
            if (!g_error_matches(local, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND) || ch->ids->len == 1) {
                g_propagate_error(err, local);
                return FALSE;
            }
            g_clear_error(&local);      /* gone since it was listed */
            continue;
        }
        changed = ch->fn(t, &m, ch->arg, &local);
        spool_msg_clear(&m);
        if (local) {
            g_propagate_error(err, local);
            return FALSE;
        }
        ch->done += changed;
    }
    return TRUE;
}

static gboolean ctl_do_retry(struct spool_txn *t, struct spool_msg *m, void *arg, GError **err);

/*
 * Apply fn to one message (id_text) or to every message in `state` (-1:
 * all), a page of ids per write transaction so that ingest is never kept
 * waiting for the write lock long.
 */
static int ctl_change_run(struct ctl *c, const char *id_text, int state, ctl_change_fn fn,
                          void *arg, const char *verb)
{
    struct ctl_change ch = { .fn = fn, .arg = arg };
    struct ctl_page page = { 0 };
    int64_t total = 0;
    GError *err = NULL;

    ctl_open_spool(c);
    page.ids = ch.ids = g_ptr_array_new_with_free_func(g_free);
    if (id_text) {
        queue_id id;
        if (!ctl_parse_id(id_text, &id)) {
            g_ptr_array_unref(page.ids);
            return CTL_USAGE;
        }
        ctl_page_add(id, &page);
        if (!spool_write(c->spool, ctl_change_write, &ch, &err)) {
            g_ptr_array_unref(page.ids);
            return ctl_fail(err);
        }
        total = ch.done;
    } else {
        for (;;) {
            struct spool_txn t;
            guint listed;

            g_ptr_array_set_size(page.ids, 0);
            if (!spool_read_begin(c->spool, &t, &err) ||
                !spool_msg_foreach(&t, state, page.next, ctl_page_add, &page, &err)) {
                spool_read_end(&t);
                g_ptr_array_unref(page.ids);
                return ctl_fail(err);
            }
            spool_read_end(&t);
            listed = page.ids->len;
            if (listed && !spool_write(c->spool, ctl_change_write, &ch, &err)) {
                g_ptr_array_unref(page.ids);
                return ctl_fail(err);
            }
            total += ch.done;
            ch.done = 0;
            if (listed < CTL_PAGE)
                break;
        }
    }
    g_ptr_array_unref(page.ids);
    /* Retried deliveries are due now, but a paused relay holds them: say until when. */
    struct relay_state rs;
    gboolean held = fn == ctl_do_retry && ctl_relay_read(c, &rs, NULL) &&
                    relay_state_paused(&rs, unix_ms());
    if (c->json && held)
        printf("{\"%s\": %" G_GINT64_FORMAT ", \"relay_paused_until\": %" G_GINT64_FORMAT "}\n",
               verb, total, rs.paused_until / 1000);
    else if (c->json)
        printf("{\"%s\": %" G_GINT64_FORMAT "}\n", verb, total);
    else
        printf("%s: %" G_GINT64_FORMAT " message(s)\n", verb, total);
    if (!c->json && held) {
        g_autofree char *relay = ctl_relay_describe(&c->cfg, &rs);
        printf("%s: they move when it ends, or after spoolctl relay resume\n", relay);
    }
    return CTL_OK;
}

static gboolean ctl_do_hold(struct spool_txn *t, struct spool_msg *m, void *arg, GError **err)
{
    return spool_msg_hold(t, m, "held by operator", err);
}

static gboolean ctl_do_release(struct spool_txn *t, struct spool_msg *m, void *arg, GError **err)
{
    return spool_msg_release(t, m, err);
}

static gboolean ctl_do_retry(struct spool_txn *t, struct spool_msg *m, void *arg, GError **err)
{
    return spool_msg_retry(t, m, err);
}

/* Approval: only messages held "awaiting approval" (spool_steer.h). */
static gboolean ctl_do_approve(struct spool_txn *t, struct spool_msg *m, void *arg, GError **err)
{
    return spool_msg_approve(t, m, "spoolctl", err);
}

static gboolean ctl_do_discard(struct spool_txn *t, struct spool_msg *m, void *arg, GError **err)
{
    return spool_msg_discard(t, m, SPOOL_DISCARDED, "spoolctl", err);
}

static gboolean ctl_do_delete(struct spool_txn *t, struct spool_msg *m, void *arg, GError **err)
{
    return spool_msg_delete(t, m->id, err);
}

/* purge: only ended messages whose last change is older than the cutoff. */
static gboolean ctl_do_purge(struct spool_txn *t, struct spool_msg *m, void *arg, GError **err)
{
    if ((m->state != MSG_DONE && m->state != MSG_REJECTED) || m->since >= *(int64_t *)arg)
        return FALSE;
    return spool_msg_delete(t, m->id, err);
}

/* hold, release, retry: ID or --all. */
static int ctl_id_or_all(struct ctl *c, int argc, char **argv, ctl_change_fn fn,
                         const char *verb, int all_state)
{
    gboolean all = FALSE;
    GOptionEntry entries[] = {
        { "all", 0, 0, G_OPTION_ARG_NONE, &all, "every message", NULL },
        { NULL }
    };

    if (!ctl_parse(c, &argc, &argv, "ID | --all", entries))
        return CTL_USAGE;
    if ((all && argc != 1) || (!all && argc != 2)) {
        fprintf(stderr, "spoolctl: give one queue id or --all\n");
        return CTL_USAGE;
    }
    return ctl_change_run(c, all ? NULL : argv[1], all_state, fn, NULL, verb);
}

int ctl_hold(struct ctl *c, int argc, char **argv)
{
    return ctl_id_or_all(c, argc, argv, ctl_do_hold, "held", -1);
}

int ctl_release(struct ctl *c, int argc, char **argv)
{
    return ctl_id_or_all(c, argc, argv, ctl_do_release, "released", MSG_HOLD);
}

int ctl_approve(struct ctl *c, int argc, char **argv)
{
    return ctl_id_or_all(c, argc, argv, ctl_do_approve, "approved", MSG_HOLD);
}

int ctl_discard(struct ctl *c, int argc, char **argv)
{
    return ctl_id_or_all(c, argc, argv, ctl_do_discard, "discarded", MSG_HOLD);
}

int ctl_retry(struct ctl *c, int argc, char **argv)
{
    return ctl_id_or_all(c, argc, argv, ctl_do_retry, "retried", -1);
}

int ctl_delete(struct ctl *c, int argc, char **argv)
{
    g_autofree char *state = NULL;
    GOptionEntry entries[] = {
        { "state", 0, 0, G_OPTION_ARG_STRING, &state, "every message in this state", "S" },
        { NULL }
    };
    enum msg_state s = MSG_INCOMING;

    if (!ctl_parse(c, &argc, &argv, "ID | --state S", entries))
        return CTL_USAGE;
    if (state && !msg_state_parse(state, &s)) {
        fprintf(stderr, "spoolctl: unknown state \"%s\"\n", state);
        return CTL_USAGE;
    }
    if ((state && argc != 1) || (!state && argc != 2)) {
        fprintf(stderr, "spoolctl: give one queue id or --state S\n");
        return CTL_USAGE;
    }
    return ctl_change_run(c, state ? NULL : argv[1], (int)s, ctl_do_delete, NULL, "deleted");
}

int ctl_purge(struct ctl *c, int argc, char **argv)
{
    g_autofree char *older = NULL;
    GOptionEntry entries[] = {
        { "older-than", 0, 0, G_OPTION_ARG_STRING, &older, "ended longer ago than D", "D" },
        { NULL }
    };
    uint64_t d;
    int64_t cutoff;

    if (!ctl_parse(c, &argc, &argv, "--older-than D", entries))
        return CTL_USAGE;
    if (!older || argc != 1 || !config_parse_duration(older, &d)) {
        fprintf(stderr, "spoolctl: purge needs --older-than D (e.g. 7d)\n");
        return CTL_USAGE;
    }
    cutoff = unix_ms() / 1000 - (int64_t)d;
    return ctl_change_run(c, NULL, -1, ctl_do_purge, &cutoff, "purged");
}
