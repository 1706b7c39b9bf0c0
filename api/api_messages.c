/*
 * api_messages.c - /v1/messages (read, list by page, hold, release,
 * retry), /metrics and /healthz.  Reads are one short read transaction
 * each (a page is at most API_PAGE_MAX messages); a change is one write
 * transaction through the moves spoolctl makes (spool/spool_steer.h).
 */
#include "api/api.h"
#include "common/clock.h"
#include "common/log.h"
#include "spool/delivery.h"
#include "spool/relay_json.h"
#include "spool/relay_state.h"
#include "spool/spool_stats.h"
#include "spool/spool_steer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define API_PAGE_DEFAULT 100
#define API_PAGE_MAX 1000

gboolean api_message_path_id(struct api_request *rq, struct api_response *rs, queue_id *id)
{
    if (spool_id_parse(rq->parts[2], id))
        return TRUE;
    api_reply_error(rs, 404, "not_found", "no message %s (a queue id is %d hex digits)",
                    rq->parts[2], QUEUE_ID_LEN);
    return FALSE;
}

static void msg_string(JsonBuilder *b, const char *name, const char *value)
{
    json_builder_set_member_name(b, name);
    if (value)
        json_builder_add_string_value(b, value);
    else
        json_builder_add_null_value(b);
}

/* The summary of one message: what a list shows.  The object stays open. */
static void msg_summary(JsonBuilder *b, const struct spool_msg *m,
                        const uint32_t counts[DLV_STATE_COUNT])
{
    char id[QUEUE_ID_LEN + 1];

    spool_id_format(m->id, id);
    json_builder_begin_object(b);
    msg_string(b, "id", id);
    msg_string(b, "state", msg_state_name(m->state));
    msg_string(b, "kind", m->kind ? m->kind : MSG_KIND_MAIL);
    msg_string(b, "sender", m->sender);
    json_builder_set_member_name(b, "arrival");
    json_builder_add_int_value(b, m->arrival);
    json_builder_set_member_name(b, "since");
    json_builder_add_int_value(b, m->since);
    json_builder_set_member_name(b, "size");
    json_builder_add_int_value(b, (gint64)m->size);
    msg_string(b, "reason", m->reason);
    json_builder_set_member_name(b, "counts");
    json_builder_begin_object(b);
    for (int s = 0; s < DLV_STATE_COUNT; s++) {
        json_builder_set_member_name(b, dlv_state_name(s));
        json_builder_add_int_value(b, counts[s]);
    }
    json_builder_end_object(b);
}

/* GET /v1/messages/{id} */

static gboolean msg_delivery(const struct spool_dlv *d, void *ctx)
{
    JsonBuilder *b = ctx;

    json_builder_begin_object(b);
    msg_string(b, "rcpt", d->rcpt);
    msg_string(b, "state", dlv_state_name(d->state));
    json_builder_set_member_name(b, "attempts");
    json_builder_add_int_value(b, d->attempts);
    json_builder_set_member_name(b, "next_try");
    json_builder_add_int_value(b, d->next_try);
    msg_string(b, "last_reply", d->last_reply);
    json_builder_set_member_name(b, "held");
    json_builder_add_boolean_value(b, d->held);
    json_builder_end_object(b);
    return TRUE;
}

void api_message_get(struct api *a, struct api_request *rq, struct api_response *rs)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    uint32_t counts[DLV_STATE_COUNT];
    struct spool_msg m;
    struct spool_txn t;
    GError *err = NULL;
    queue_id id;
    gboolean ok;

    if (!api_message_path_id(rq, rs, &id))
        return;
    if (!spool_read_begin(a->spool, &t, &err) || !spool_msg_get(&t, id, &m, &err)) {
        spool_read_end(&t);
        api_reply_spool_error(rs, err);
        g_error_free(err);
        return;
    }
    ok = spool_dlv_counts(&t, id, counts, &err);
    if (ok) {
        msg_summary(b, &m, counts);
        msg_string(b, "message_id", m.message_id);
        msg_string(b, "owner", m.owner);
        json_builder_set_member_name(b, "recipients");
        json_builder_begin_array(b);
        for (guint i = 0; i < m.recipients->len; i++)
            json_builder_add_string_value(b, m.recipients->pdata[i]);
        json_builder_end_array(b);
        json_builder_set_member_name(b, "history");
        json_builder_begin_array(b);
        for (guint i = 0; i < m.history->len; i++)
            json_builder_add_string_value(b, m.history->pdata[i]);
        json_builder_end_array(b);
        json_builder_set_member_name(b, "deliveries");
        json_builder_begin_array(b);
        ok = spool_dlv_foreach(&t, id, msg_delivery, b, &err);
        json_builder_end_array(b);
        json_builder_end_object(b);
    }
    spool_read_end(&t);
    spool_msg_clear(&m);
    if (!ok) {
        api_reply_spool_error(rs, err);
        g_error_free(err);
        return;
    }
    api_reply_json(rs, 200, b);
}

/* GET /v1/messages?state=&since=&after=&limit= */

struct msg_page {
    GArray *ids;                    /* queue_id */
    guint want;                     /* one more than the page: is there a next one? */
};

static gboolean msg_page_add(queue_id id, void *ctx)
{
    struct msg_page *p = ctx;

    g_array_append_val(p->ids, id);
    return p->ids->len < p->want;
}

static gboolean msg_query_int(struct api_request *rq, struct api_response *rs, const char *name,
                              int64_t min, int64_t max, int64_t *out)
{
    const char *text = g_hash_table_lookup(rq->query, name);
    char *end;
    long long n;

    if (!text)
        return TRUE;
    errno = 0;
    n = strtoll(text, &end, 10);
    if (!*text || *end || errno || n < min || n > max) {
        api_reply_error(rs, 400, "invalid", "%s=%s: expected a number from %" G_GINT64_FORMAT
                        " to %" G_GINT64_FORMAT, name, text, min, max);
        return FALSE;
    }
    *out = n;
    return TRUE;
}

void api_message_list(struct api *a, struct api_request *rq, struct api_response *rs)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(GArray) ids = g_array_new(FALSE, FALSE, sizeof(queue_id));
    const char *state_text = g_hash_table_lookup(rq->query, "state");
    const char *after_text = g_hash_table_lookup(rq->query, "after");
    int64_t since = 0, limit = API_PAGE_DEFAULT;
    struct msg_page page = { ids, 0 };
    enum msg_state state = MSG_INCOMING;
    queue_id from = 0, after = 0;
    struct spool_txn t;
    GError *err = NULL;
    guint shown;

    if (state_text && !msg_state_parse(state_text, &state)) {
        api_reply_error(rs, 400, "invalid", "state=%s: not a message state", state_text);
        return;
    }
    if (after_text && !spool_id_parse(after_text, &after)) {
        api_reply_error(rs, 400, "invalid", "after=%s: not a queue id", after_text);
        return;
    }
    if (!msg_query_int(rq, rs, "since", 0, (int64_t)1 << 36, &since) ||
        !msg_query_int(rq, rs, "limit", 1, API_PAGE_MAX, &limit))
        return;
    /* Queue ids begin with their arrival in ms: `since` is where the walk starts. */
    from = (queue_id)since * 1000 << 16;
    if (after_text && after + 1 > from)
        from = after + 1;
    page.want = (guint)limit + 1;
    if (!spool_read_begin(a->spool, &t, &err) ||
        !spool_msg_foreach(&t, state_text ? (int)state : -1, from, msg_page_add, &page, &err)) {
        spool_read_end(&t);
        api_reply_spool_error(rs, err);
        g_error_free(err);
        return;
    }
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "messages");
    json_builder_begin_array(b);
    shown = MIN(ids->len, (guint)limit);
    for (guint i = 0; i < shown; i++) {
        uint32_t counts[DLV_STATE_COUNT];
        struct spool_msg m;

        if (!spool_msg_get(&t, g_array_index(ids, queue_id, i), &m, NULL))
            continue;
        if (spool_dlv_counts(&t, m.id, counts, NULL)) {
            msg_summary(b, &m, counts);
            json_builder_end_object(b);
        }
        spool_msg_clear(&m);
    }
    spool_read_end(&t);
    json_builder_end_array(b);
    /* The cursor for the next page: pass it back as after=. */
    json_builder_set_member_name(b, "next");
    if (ids->len > shown) {
        char next[QUEUE_ID_LEN + 1];
        spool_id_format(g_array_index(ids, queue_id, shown - 1), next);
        json_builder_add_string_value(b, next);
    } else {
        json_builder_add_null_value(b);
    }
    json_builder_end_object(b);
    api_reply_json(rs, 200, b);
}

/* POST /v1/messages/{id}/hold|release|retry */

enum msg_move { MSG_MOVE_HOLD, MSG_MOVE_RELEASE, MSG_MOVE_RETRY };

struct msg_change {
    queue_id id;
    enum msg_move move;
    const char *key_name;
    gboolean changed;
    enum msg_state state;           /* after the change */
};

static gboolean msg_change_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct msg_change *mc = ctx;
    g_autofree char *reason = NULL;
    char id[QUEUE_ID_LEN + 1];
    struct spool_msg m;
    GError *local = NULL;

    if (!spool_msg_get(t, mc->id, &m, err))
        return FALSE;
    spool_id_format(mc->id, id);
    switch (mc->move) {
    case MSG_MOVE_HOLD:
        reason = g_strdup_printf("held over the API (key %s)", mc->key_name);
        mc->changed = spool_msg_hold(t, &m, reason, &local);
        break;
    case MSG_MOVE_RELEASE:
        mc->changed = spool_msg_release(t, &m, &local);
        break;
    case MSG_MOVE_RETRY:
        mc->changed = spool_msg_retry(t, &m, &local);
        if (mc->changed)
            spool_txn_log(t, "%s: retry now, api key %s", id, mc->key_name);
        break;
    }
    mc->state = m.state;
    spool_msg_clear(&m);
    if (local) {
        g_propagate_error(err, local);
        return FALSE;
    }
    return TRUE;
}

static void msg_change(struct api *a, struct api_request *rq, struct api_response *rs,
                       enum msg_move move)
{
    static const char *const why[] = {
        "only an incoming, ready or deferred message can be held",
        "only a held message can be released",
        "no deferred delivery to retry",
    };
    g_autoptr(JsonBuilder) b = json_builder_new();
    struct msg_change mc = { .move = move, .key_name = rq->key_name };
    GError *err = NULL;

    if (!api_message_path_id(rq, rs, &mc.id))
        return;
    if (!spool_write(a->spool, msg_change_write, &mc, &err)) {
        api_reply_spool_error(rs, err);
        g_error_free(err);
        return;
    }
    if (!mc.changed) {
        api_reply_error(rs, 409, "conflict", "message %s is %s: %s", rq->parts[2],
                        msg_state_name(mc.state), why[move]);
        return;
    }
    json_builder_begin_object(b);
    msg_string(b, "id", rq->parts[2]);
    msg_string(b, "state", msg_state_name(mc.state));
    json_builder_end_object(b);
    api_reply_json(rs, 200, b);
}

void api_message_hold(struct api *a, struct api_request *rq, struct api_response *rs)
{
    msg_change(a, rq, rs, MSG_MOVE_HOLD);
}

void api_message_release(struct api *a, struct api_request *rq, struct api_response *rs)
{
    msg_change(a, rq, rs, MSG_MOVE_RELEASE);
}

void api_message_retry(struct api *a, struct api_request *rq, struct api_response *rs)
{
    msg_change(a, rq, rs, MSG_MOVE_RETRY);
}

/* GET /metrics: the text of `spoolctl metrics` (spool_stats.h). */
void api_metrics(struct api *a, struct api_request *rq, struct api_response *rs)
{
    struct spool_stats st;
    GError *err = NULL;

    if (!spool_stats_read(a->spool, a->cfg->relays, &st, &err)) {
        api_reply_spool_error(rs, err);
        g_error_free(err);
        return;
    }
    rs->status = 200;
    rs->content_type = "text/plain; version=0.0.4; charset=utf-8";
    g_string_truncate(rs->body, 0);
    spool_stats_prometheus(&st, rs->body);
}

/* One relay account in /healthz: its pause and its daily limit's window. */
static void healthz_account(JsonBuilder *b, const struct postern_config *cfg,
                            const struct postern_relay *r, const struct relay_state *st,
                            const struct relay_quota *q, int64_t now_ms)
{
    gboolean paused = relay_state_paused(st, now_ms);

    json_builder_begin_object(b);
    msg_string(b, "account", r->name);
    json_builder_set_member_name(b, "paused");
    json_builder_add_boolean_value(b, paused);
    json_builder_set_member_name(b, "paused_until");
    if (paused)
        json_builder_add_int_value(b, st->paused_until / 1000);
    else
        json_builder_add_null_value(b);
    msg_string(b, "pause_reason", paused && *st->reason ? st->reason : NULL);
    json_builder_set_member_name(b, "quota");
    relay_quota_json(b, cfg, r, q, now_ms);
    json_builder_end_object(b);
}

/*
 * GET /healthz: the spool can be read; is the relay paused?  The
 * top-level fields are the default account's, as before accounts (a
 * load balancer's check reads them); "accounts" has every account, the
 * default first, each with its pause and its own daily limit.
 */
void api_healthz(struct api *a, struct api_request *rq, struct api_response *rs)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    GPtrArray *relays = a->cfg->relays;
    g_autofree struct relay_state *st = g_new0(struct relay_state, relays->len);
    g_autofree struct relay_quota *q = g_new0(struct relay_quota, relays->len);
    struct spool_txn t;
    GError *err = NULL;
    int64_t now_ms = unix_ms();
    gboolean ok = spool_read_begin(a->spool, &t, &err);

    for (guint i = 0; ok && i < relays->len; i++) {
        const struct postern_relay *r = relays->pdata[i];

        ok = relay_state_get(&t, r->name, &st[i], &err) &&
             relay_quota_get(&t, r->name, &q[i], &err);
    }
    spool_read_end(&t);
    if (!ok) {
        api_reply_error(rs, 503, "spool", "spool not readable: %s", err->message);
        g_error_free(err);
        return;
    }
    json_builder_begin_object(b);
    msg_string(b, "status", "ok");
    json_builder_set_member_name(b, "relay_paused");
    json_builder_add_boolean_value(b, relay_state_paused(&st[0], now_ms));
    json_builder_set_member_name(b, "paused_until");
    if (relay_state_paused(&st[0], now_ms))
        json_builder_add_int_value(b, st[0].paused_until / 1000);
    else
        json_builder_add_null_value(b);
    /* What caused it: the relay's reply, as `spoolctl relay status` shows it. */
    msg_string(b, "pause_reason", relay_state_paused(&st[0], now_ms) && *st[0].reason
                                      ? st[0].reason : NULL);
    json_builder_set_member_name(b, "accounts");
    json_builder_begin_array(b);
    for (guint i = 0; i < relays->len; i++)
        healthz_account(b, a->cfg, relays->pdata[i], &st[i], &q[i], now_ms);
    json_builder_end_array(b);
    json_builder_end_object(b);
    api_reply_json(rs, 200, b);
}
