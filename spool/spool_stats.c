/*
 * spool_stats.c - see spool_stats.h.
 */
#include "spool/spool_stats.h"
#include "common/clock.h"
#include "spool/spool_events.h"

#include <string.h>

static gboolean stats_take_first(queue_id id, void *ctx)
{
    *(queue_id *)ctx = id;
    return FALSE;
}

gboolean spool_stats_read(struct spool *sp, const GPtrArray *relays, struct spool_stats *st,
                          GError **err)
{
    struct spool_txn t;
    int64_t oldest = 0;

    memset(st, 0, sizeof(*st));
    if (!spool_read_begin(sp, &t, err))
        return FALSE;
    for (int s = 0; s < MSG_STATE_COUNT; s++) {
        g_autofree char *name = g_strdup_printf("msg.%s", msg_state_name(s));
        st->msgs[s] = spool_counter_get(&t, name);
    }
    for (int s = 0; s < DLV_STATE_COUNT; s++) {
        g_autofree char *name = g_strdup_printf("dlv.%s", dlv_state_name(s));
        st->dlvs[s] = spool_counter_get(&t, name);
    }
    st->tokens_active = spool_counter_get(&t, "tok.active");
    st->tokens_used = spool_counter_get(&t, "tok.used");
    st->received = spool_counter_get(&t, SPOOL_COUNTER_RECEIVED);
    for (int i = 0; i <= SPOOL_REJECT_REASONS; i++)
        st->rejected[i] = spool_counter_get(&t, spool_counter_rejected(spool_reject_reasons[i]));
    st->sent = spool_counter_get(&t, SPOOL_COUNTER_SENT);
    st->deferred = spool_counter_get(&t, SPOOL_COUNTER_DEFERRED);
    st->bounced = spool_counter_get(&t, SPOOL_COUNTER_BOUNCED);
    for (int c = 0; c < SPOOL_REPLY_CLASSES; c++)
        st->replies[c] = spool_counter_get(&t, spool_counter_reply(c));
    int64_t oldest_event;
    if (!spool_events_backlog(&t, &st->events_waiting, &oldest_event, err)) {
        spool_read_end(&t);
        return FALSE;
    }
    for (int h = 0; h < SPOOL_HIST_COUNT; h++)
        if (!spool_hist_get(&t, h, &st->latency[h], err)) {
            spool_read_end(&t);
            return FALSE;
        }
    if (!relay_state_get(&t, NULL, &st->relay, err) || !relay_quota_get(&t, NULL, &st->quota, err)) {
        spool_read_end(&t);
        return FALSE;
    }
    for (guint i = 1; relays && i < relays->len && st->naccounts < SPOOL_STATS_ACCOUNTS; i++) {
        const struct postern_relay *r = relays->pdata[i];
        struct spool_stats_account *a = &st->accounts[st->naccounts++];

        g_strlcpy(a->name, r->name, sizeof(a->name));
        if (!relay_state_get(&t, r->name, &a->relay, err) ||
            !relay_quota_get(&t, r->name, &a->quota, err)) {
            spool_read_end(&t);
            return FALSE;
        }
    }

    /* The oldest message still in the queue: first id of each live state. */
    for (int s = MSG_INCOMING; s <= MSG_HOLD; s++) {
        queue_id first = 0;
        if (spool_msg_foreach(&t, s, 0, stats_take_first, &first, NULL) && first) {
            struct spool_msg m;
            if (spool_msg_get(&t, first, &m, NULL)) {
                if (!oldest || m.arrival < oldest)
                    oldest = m.arrival;
                spool_msg_clear(&m);
            }
        }
    }
    spool_read_end(&t);
    st->oldest_age = oldest ? unix_ms() / 1000 - oldest : 0;
    st->spool_bytes = spool_file_size(sp);
    return TRUE;
}

static void stats_family(GString *out, const char *name, const char *type, const char *help)
{
    g_string_append_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One value of an account's daily-limit window, for the metrics. */
typedef int64_t (*stats_quota_value)(const struct relay_quota *q, int64_t now_ms);

static int64_t stats_quota_used(const struct relay_quota *q, int64_t now_ms)
{
    return (int64_t)relay_quota_used(q, now_ms);
}

static int64_t stats_quota_limit(const struct relay_quota *q, int64_t now_ms)
{
    (void)now_ms;
    return q->limit;
}

static int64_t stats_quota_waiting(const struct relay_quota *q, int64_t now_ms)
{
    return q->waiting_until > now_ms;
}

static int64_t stats_quota_until(const struct relay_quota *q, int64_t now_ms)
{
    return q->waiting_until > now_ms ? q->waiting_until / 1000 : 0;
}

/* A quota series: unlabelled for [relay] (as before accounts), account="NAME" for the others. */
static void stats_quota(GString *out, const char *name, const struct spool_stats *st,
                        int64_t now_ms, stats_quota_value value)
{
    g_string_append_printf(out, "%s %" G_GINT64_FORMAT "\n", name, value(&st->quota, now_ms));
    for (guint i = 0; i < st->naccounts; i++)
        g_string_append_printf(out, "%s{account=\"%s\"} %" G_GINT64_FORMAT "\n", name,
                               st->accounts[i].name, value(&st->accounts[i].quota, now_ms));
}

void spool_stats_prometheus(const struct spool_stats *st, GString *out)
{
    stats_family(out, "postern_messages", "gauge", "Messages in the spool by state.");
    for (int s = 0; s < MSG_STATE_COUNT; s++)
        g_string_append_printf(out, "postern_messages{state=\"%s\"} %" G_GUINT64_FORMAT "\n",
                               msg_state_name(s), st->msgs[s]);
    stats_family(out, "postern_deliveries", "gauge", "Deliveries in the spool by state.");
    for (int s = 0; s < DLV_STATE_COUNT; s++)
        g_string_append_printf(out, "postern_deliveries{state=\"%s\"} %" G_GUINT64_FORMAT "\n",
                               dlv_state_name(s), st->dlvs[s]);
    stats_family(out, "postern_tokens", "gauge", "Registered tokens: active (unused) and used.");
    g_string_append_printf(out, "postern_tokens{status=\"active\"} %" G_GUINT64_FORMAT "\n",
                           st->tokens_active);
    g_string_append_printf(out, "postern_tokens{status=\"used\"} %" G_GUINT64_FORMAT "\n",
                           st->tokens_used);
    stats_family(out, "postern_messages_received_total", "counter",
                 "Messages taken in by ingest since the spool was made.");
    g_string_append_printf(out, "postern_messages_received_total %" G_GUINT64_FORMAT "\n",
                           st->received);
    stats_family(out, "postern_messages_rejected_total", "counter",
                 "Messages rejected by the transform, by reason.");
    for (int i = 0; i <= SPOOL_REJECT_REASONS; i++)
        g_string_append_printf(out, "postern_messages_rejected_total{reason=\"%s\"} %"
                               G_GUINT64_FORMAT "\n",
                               spool_reject_reasons[i] ? spool_reject_reasons[i] : "other",
                               st->rejected[i]);
    stats_family(out, "postern_delivery_results_total", "counter",
                 "Delivery attempts by result: sent, deferred, bounced (also at lifetime).");
    g_string_append_printf(out, "postern_delivery_results_total{result=\"sent\"} %"
                           G_GUINT64_FORMAT "\n", st->sent);
    g_string_append_printf(out, "postern_delivery_results_total{result=\"deferred\"} %"
                           G_GUINT64_FORMAT "\n", st->deferred);
    g_string_append_printf(out, "postern_delivery_results_total{result=\"bounced\"} %"
                           G_GUINT64_FORMAT "\n", st->bounced);
    stats_family(out, "postern_relay_replies_total", "counter",
                 "Delivery attempts by the class of the relay's reply; none: no reply.");
    for (int c = 0; c < SPOOL_REPLY_CLASSES; c++)
        g_string_append_printf(out, "postern_relay_replies_total{class=\"%s\"} %"
                               G_GUINT64_FORMAT "\n", spool_reply_classes[c], st->replies[c]);
    spool_hist_prometheus(&st->latency[SPOOL_HIST_TRANSFORM], "postern_transform_latency_seconds",
                          "Mail from its arrival in the spool to the transform's verdict "
                          "(ready or rejected).", out);
    spool_hist_prometheus(&st->latency[SPOOL_HIST_DELIVERY], "postern_delivery_latency_seconds",
                          "From a message's arrival in the spool to each delivery's result "
                          "(sent or bounced).", out);
    stats_family(out, "postern_events_waiting", "gauge",
                 "Outcome events in the outbox, not yet taken by the platform.");
    g_string_append_printf(out, "postern_events_waiting %" G_GUINT64_FORMAT "\n",
                           st->events_waiting);
    stats_family(out, "postern_oldest_message_age_seconds", "gauge",
                 "Age of the oldest message not yet ended.");
    g_string_append_printf(out, "postern_oldest_message_age_seconds %" G_GINT64_FORMAT "\n",
                           st->oldest_age);
    stats_family(out, "postern_spool_bytes", "gauge", "Size of the LMDB data file.");
    g_string_append_printf(out, "postern_spool_bytes %" G_GUINT64_FORMAT "\n", st->spool_bytes);
    /*
     * The relay pause: alert on paused for long, or on pauses in a row.
     * Unlabelled: [relay] (the account "default"), as before accounts;
     * each [relay NAME] with account="NAME".
     */
    int64_t now_ms = unix_ms();
    stats_family(out, "postern_relay_paused", "gauge",
                 "1 while a relay account is paused (quota, throttle, AUTH refused).");
    g_string_append_printf(out, "postern_relay_paused %d\n",
                           relay_state_paused(&st->relay, now_ms));
    for (guint i = 0; i < st->naccounts; i++)
        g_string_append_printf(out, "postern_relay_paused{account=\"%s\"} %d\n",
                               st->accounts[i].name,
                               relay_state_paused(&st->accounts[i].relay, now_ms));
    stats_family(out, "postern_relay_paused_until_seconds", "gauge",
                 "Unix time a relay account's pause ends, 0 when not paused.");
    g_string_append_printf(out, "postern_relay_paused_until_seconds %" G_GINT64_FORMAT "\n",
                           relay_state_paused(&st->relay, now_ms)
                               ? st->relay.paused_until / 1000 : 0);
    for (guint i = 0; i < st->naccounts; i++) {
        const struct relay_state *rs = &st->accounts[i].relay;

        g_string_append_printf(out, "postern_relay_paused_until_seconds{account=\"%s\"} %"
                               G_GINT64_FORMAT "\n", st->accounts[i].name,
                               relay_state_paused(rs, now_ms) ? rs->paused_until / 1000 : 0);
    }
    stats_family(out, "postern_relay_pauses", "gauge", "A relay account's pauses in a row.");
    g_string_append_printf(out, "postern_relay_pauses %u\n", st->relay.pauses);
    for (guint i = 0; i < st->naccounts; i++)
        g_string_append_printf(out, "postern_relay_pauses{account=\"%s\"} %u\n",
                               st->accounts[i].name, st->accounts[i].relay.pauses);
    /* The daily limit, each account's own: alert on used near limit, or on waiting. */
    int64_t now = unix_ms();
    stats_family(out, "postern_relay_quota_used", "gauge",
                 "Recipients leased towards the relay account in its daily window.");
    stats_quota(out, "postern_relay_quota_used", st, now, stats_quota_used);
    stats_family(out, "postern_relay_quota_limit", "gauge",
                 "The account's daily_limit as the dispatcher last applied it, 0 for none.");
    stats_quota(out, "postern_relay_quota_limit", st, now, stats_quota_limit);
    stats_family(out, "postern_relay_quota_waiting", "gauge",
                 "1 while due deliveries wait for the account's daily window to move.");
    stats_quota(out, "postern_relay_quota_waiting", st, now, stats_quota_waiting);
    stats_family(out, "postern_relay_quota_waiting_until_seconds", "gauge",
                 "Unix time the account's daily window next makes room, 0 when not waiting.");
    stats_quota(out, "postern_relay_quota_waiting_until_seconds", st, now, stats_quota_until);
}
