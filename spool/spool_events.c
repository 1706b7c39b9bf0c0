/*
 * spool_events.c - the outbox of outcome events (see spool_events.h).
 */
#include "spool/spool_events.h"
#include "spool/spool_lmdb.h"
#include "common/clock.h"

#include <string.h>

#define EVENTS_RETRY_KEY "events.retry"
#define EVENTS_RETRY_FIXED 12       /* next_try (8), failures (4), then the error */

void spool_event_init(struct spool_event *ev)
{
    memset(ev, 0, sizeof(*ev));
}

void spool_event_clear(struct spool_event *ev)
{
    g_free(ev->type);
    g_free(ev->token);
    g_free(ev->sender);
    g_free(ev->reason);
    g_free(ev->rcpt);
    g_free(ev->reply);
    g_free(ev->list);
    memset(ev, 0, sizeof(*ev));
}

static GBytes *event_encode(const struct spool_event *ev)
{
    GVariantDict d;

    g_variant_dict_init(&d, NULL);
    g_variant_dict_insert(&d, "type", "s", ev->type);
    g_variant_dict_insert(&d, "time", "x", ev->time);
    if (ev->msg)
        g_variant_dict_insert(&d, "msg", "t", ev->msg);
    if (ev->token)
        g_variant_dict_insert(&d, "token", "s", ev->token);
    if (ev->sender)
        g_variant_dict_insert(&d, "sender", "s", ev->sender);
    if (ev->reason)
        g_variant_dict_insert(&d, "reason", "s", ev->reason);
    if (ev->rcpt)
        g_variant_dict_insert(&d, "rcpt", "s", ev->rcpt);
    if (ev->reply)
        g_variant_dict_insert(&d, "reply", "s", ev->reply);
    if (ev->list)
        g_variant_dict_insert(&d, "list", "s", ev->list);
    if (ev->nrcpt)
        g_variant_dict_insert(&d, "nrcpt", "u", ev->nrcpt);
    if (g_str_equal(ev->type, EVENT_MESSAGE_DONE)) {
        g_variant_dict_insert(&d, "sent", "u", ev->sent);
        g_variant_dict_insert(&d, "bounced", "u", ev->bounced);
    }
    if (ev->until)
        g_variant_dict_insert(&d, "until", "x", ev->until);
    g_autoptr(GVariant) v = g_variant_ref_sink(g_variant_dict_end(&d));
    return g_variant_get_data_as_bytes(v);
}

static void event_decode(const MDB_val *val, struct spool_event *ev)
{
    g_autoptr(GBytes) bytes = g_bytes_new(val->mv_data, val->mv_size);
    g_autoptr(GVariant) v = g_variant_ref_sink(
        g_variant_new_from_bytes(G_VARIANT_TYPE_VARDICT, bytes, FALSE));
    GVariantDict d;

    g_variant_dict_init(&d, v);
    if (!g_variant_dict_lookup(&d, "type", "s", &ev->type))
        ev->type = g_strdup("unknown");
    g_variant_dict_lookup(&d, "time", "x", &ev->time);
    g_variant_dict_lookup(&d, "msg", "t", &ev->msg);
    g_variant_dict_lookup(&d, "token", "s", &ev->token);
    g_variant_dict_lookup(&d, "sender", "s", &ev->sender);
    g_variant_dict_lookup(&d, "reason", "s", &ev->reason);
    g_variant_dict_lookup(&d, "rcpt", "s", &ev->rcpt);
    g_variant_dict_lookup(&d, "reply", "s", &ev->reply);
    g_variant_dict_lookup(&d, "list", "s", &ev->list);
    g_variant_dict_lookup(&d, "nrcpt", "u", &ev->nrcpt);
    g_variant_dict_lookup(&d, "sent", "u", &ev->sent);
    g_variant_dict_lookup(&d, "bounced", "u", &ev->bounced);
    g_variant_dict_lookup(&d, "until", "x", &ev->until);
    g_variant_dict_clear(&d);
}

gboolean spool_event_add(struct spool_txn *t, struct spool_event *ev, GError **err)
{
    unsigned char k[8];
    MDB_val key = { 8, k }, val;
    g_autoptr(GBytes) rec = NULL;
    char id[QUEUE_ID_LEN + 1];
    gsize len;
    int rc;

    if (!spool_events_enabled(t->sp))
        return TRUE;
    /* An id of the spool's one sequence: unique, and growing in commit order. */
    if (!(ev->id = spool_id_next(t, err)))
        return FALSE;
    ev->time = unix_ms();
    rec = event_encode(ev);
    val.mv_data = (void *)g_bytes_get_data(rec, &len);
    val.mv_size = len;
    spool_be64(k, ev->id);
    /* Ids only grow: append, so the outbox's pages fill and stay in order. */
    if ((rc = mdb_put(spool_mdb_txn(t), spool_dbi(t->sp, DB_EVENTS), &key, &val, MDB_APPEND)))
        return spool_mdb_fail(rc, "append event", err);
    spool_id_format(ev->id, id);
    if (ev->msg) {
        char qid[QUEUE_ID_LEN + 1];

        spool_id_format(ev->msg, qid);
        spool_txn_log(t, "%s: event %s %s queued", qid, id, ev->type);
    } else {
        spool_txn_log(t, "event %s %s queued", id, ev->type);
    }
    return TRUE;
}

/* Mail that came in; notices and bounce reports are Postern's own. */
static gboolean event_about_mail(const struct spool_msg *m)
{
    return !m->kind || g_str_equal(m->kind, MSG_KIND_MAIL);
}

gboolean spool_event_message(struct spool_txn *t, const struct spool_msg *m, const char *type,
                             const char *reason, const char *token, uint32_t nrcpt,
                             GError **err)
{
    struct spool_event ev;
    gboolean ok;

    if (!spool_events_enabled(t->sp) || !event_about_mail(m))
        return TRUE;
    spool_event_init(&ev);
    ev.type = g_strdup(type);
    ev.msg = m->id;
    ev.sender = g_strdup(m->sender ? m->sender : "");
    ev.reason = g_strdup(reason);
    ev.token = token && *token ? g_strdup(token) : NULL;
    ev.nrcpt = nrcpt;
    ok = spool_event_add(t, &ev, err);
    spool_event_clear(&ev);
    return ok;
}

gboolean spool_event_done(struct spool_txn *t, const struct spool_msg *m, uint32_t sent,
                          uint32_t bounced, GError **err)
{
    struct spool_event ev;
    gboolean ok;

    if (!spool_events_enabled(t->sp) || !event_about_mail(m))
        return TRUE;
    spool_event_init(&ev);
    ev.type = g_strdup(EVENT_MESSAGE_DONE);
    ev.msg = m->id;
    ev.sent = sent;
    ev.bounced = bounced;
    ok = spool_event_add(t, &ev, err);
    spool_event_clear(&ev);
    return ok;
}

gboolean spool_event_bounced(struct spool_txn *t, queue_id msg, const char *rcpt,
                             const char *reply, GError **err)
{
    struct spool_msg m;
    struct spool_event ev;
    gboolean ok;

    if (!spool_events_enabled(t->sp))
        return TRUE;
    /* Bounces are rare: reading the message to know its kind costs little. */
    if (!spool_msg_get(t, msg, &m, err))
        return FALSE;
    ok = event_about_mail(&m);
    spool_msg_clear(&m);
    if (!ok)
        return TRUE;
    spool_event_init(&ev);
    ev.type = g_strdup(EVENT_DELIVERY_BOUNCED);
    ev.msg = msg;
    ev.rcpt = g_strdup(rcpt ? rcpt : "");
    ev.reply = g_strdup(reply ? reply : "");
    ok = spool_event_add(t, &ev, err);
    spool_event_clear(&ev);
    return ok;
}

gboolean spool_event_first(struct spool_txn *t, struct spool_event *ev, gboolean *found,
                           GError **err)
{
    MDB_cursor *cur;
    MDB_val key, val;
    int rc;

    *found = FALSE;
    spool_event_init(ev);
    if ((rc = mdb_cursor_open(spool_mdb_txn(t), spool_dbi(t->sp, DB_EVENTS), &cur)))
        return spool_mdb_fail(rc, "open events", err);
    /* A key of another size is not ours: skip it rather than stall the outbox. */
    for (rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST); rc == 0 && key.mv_size != 8;
         rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT))
        ;
    if (rc == 0) {
        ev->id = spool_get_be64(key.mv_data);
        event_decode(&val, ev);
        *found = TRUE;
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return spool_mdb_fail(rc, "read events", err);
    return TRUE;
}

gboolean spool_event_delete(struct spool_txn *t, uint64_t id, GError **err)
{
    unsigned char k[8];
    MDB_val key = { 8, k };
    int rc;

    spool_be64(k, id);
    rc = mdb_del(spool_mdb_txn(t), spool_dbi(t->sp, DB_EVENTS), &key, NULL);
    if (rc && rc != MDB_NOTFOUND)
        return spool_mdb_fail(rc, "delete event", err);
    return TRUE;
}

gboolean spool_events_backlog(struct spool_txn *t, uint64_t *count, int64_t *oldest,
                              GError **err)
{
    struct spool_event ev;
    gboolean found;
    MDB_stat st;
    int rc;

    /* The B-tree knows its entries: no scan. */
    if ((rc = mdb_stat(spool_mdb_txn(t), spool_dbi(t->sp, DB_EVENTS), &st)))
        return spool_mdb_fail(rc, "events stat", err);
    *count = st.ms_entries;
    *oldest = 0;
    if (!spool_event_first(t, &ev, &found, err))
        return FALSE;
    if (found)
        *oldest = ev.time;
    spool_event_clear(&ev);
    return TRUE;
}

gboolean spool_events_retry_get(struct spool_txn *t, struct spool_events_retry *out,
                                GError **err)
{
    const unsigned char *p;
    size_t len;

    memset(out, 0, sizeof(*out));
    if (!spool_meta_get(t, EVENTS_RETRY_KEY, &p, &len, "the events retry state", err))
        return FALSE;
    if (!p)
        return TRUE;
    if (len < EVENTS_RETRY_FIXED || len >= EVENTS_RETRY_FIXED + EVENT_ERROR_MAX) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_CORRUPT, "events retry state: %zu bytes", len);
        return FALSE;
    }
    out->next_try = (int64_t)spool_get_be64(p);
    out->failures = spool_get_be32(p + 8);
    memcpy(out->error, p + EVENTS_RETRY_FIXED, len - EVENTS_RETRY_FIXED);
    return TRUE;
}

gboolean spool_events_retry_put(struct spool_txn *t, const struct spool_events_retry *st,
                                GError **err)
{
    size_t len = strnlen(st->error, EVENT_ERROR_MAX - 1);
    unsigned char v[EVENTS_RETRY_FIXED + EVENT_ERROR_MAX];
    spool_be64(v, (uint64_t)st->next_try);
    spool_be32(v + 8, st->failures);
    memcpy(v + EVENTS_RETRY_FIXED, st->error, len);
    return spool_meta_put(t, EVENTS_RETRY_KEY, v, EVENTS_RETRY_FIXED + len,
                          "the events retry state", err);
}
