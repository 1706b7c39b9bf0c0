/*
 * ingest_commit.c - group commit: every message completed in this
 * main-loop iteration goes into one durable LMDB transaction.
 */
#include "ingest/ingest.h"
#include "spool/log.h"

#include <string.h>

struct commit_batch {
    GPtrArray *sessions;
    queue_id *ids;
};

/* RFC 5322 date in the local zone, as a Received: header wants it. */
static char *commit_date(GDateTime *now)
{
    return g_date_time_format(now, "%a, %d %b %Y %H:%M:%S %z");
}

static char *commit_received(const struct session *s, const char *hostname, const char *id,
                             GDateTime *now)
{
    g_autofree char *date = commit_date(now);
    GString *r = g_string_new(NULL);

    g_string_append_printf(r, "Received: from %s (%s)\r\n\tby %s (Postern) with %s id %s",
                           s->helo, s->client, hostname, s->proto, id);
    if (s->rcpts->len == 1)
        g_string_append_printf(r, "\r\n\tfor <%s>", (const char *)s->rcpts->pdata[0]);
    g_string_append_printf(r, "; %s\r\n", date);
    return g_string_free(r, FALSE);
}

/*
 * The write itself.  It may run twice (the spool grows the map and starts
 * over), so it only touches the transaction and ids[].
 */
static gboolean commit_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct commit_batch *b = ctx;
    g_autoptr(GDateTime) now = g_date_time_new_now_local();

    for (guint i = 0; i < b->sessions->len; i++) {
        struct session *s = b->sessions->pdata[i];
        struct spool_msg m;
        char idtext[QUEUE_ID_LEN + 1];
        gboolean ok;

        if (!(b->ids[i] = spool_id_next(t, err)))
            return FALSE;
        spool_id_format(b->ids[i], idtext);
        spool_msg_init(&m);
        m.id = b->ids[i];
        m.state = MSG_INCOMING;
        m.arrival = g_date_time_to_unix(now);
        m.size = s->data.out->len;
        m.sender = g_strdup(s->sender);
        for (guint r = 0; r < s->rcpts->len; r++)
            g_ptr_array_add(m.recipients, g_strdup(s->rcpts->pdata[r]));
        m.client = g_strdup(s->client);
        m.helo = g_strdup(s->helo);
        m.proto = g_strdup(s->proto);
        m.received = commit_received(s, s->ig->cfg->ingest.hostname, idtext, now);
        ok = spool_msg_insert(t, &m, err) &&
             spool_body_put(t, DB_BODIES, m.id, (const char *)s->data.out->data,
                            s->data.out->len, err);
        if (ok)
            spool_txn_log(t, "%s: from=<%s>, size=%" G_GUINT64_FORMAT ", nrcpt=%u, client=%s, proto=%s (queue active)",
                          idtext, m.sender, m.size, m.recipients->len, m.client, m.proto);
        spool_msg_clear(&m);
        if (!ok)
            return FALSE;
    }
    return TRUE;
}

/* Tell each session how its message fared, then let it read on. */
static void commit_answer(struct session *s, queue_id id, const GError *err)
{
    char idtext[QUEUE_ID_LEN + 1];
    gboolean gone = s->state == SESSION_CLOSING;

    spool_id_format(id, idtext);
    for (guint i = 0; i < (s->lmtp ? s->rcpts->len : 1); i++) {
        if (err)
            session_reply(s, "452 4.3.1 Insufficient system storage");
        else
            session_reply(s, "250 2.0.0 %s queued", idtext);
    }
    session_end_transaction(s);
    if (gone) {
        session_flush(s);       /* closes the session */
        return;
    }
    s->state = SESSION_COMMAND;
    session_input(s);
}

static gboolean commit_try(struct ingest *ig, GPtrArray *sessions, queue_id *ids, GError **err)
{
    struct commit_batch b = { sessions, ids };
    return spool_write(ig->spool, commit_write, &b, err);
}

void ingest_commit_batch(struct ingest *ig)
{
    g_autoptr(GPtrArray) sessions = NULL;
    g_autofree queue_id *ids = NULL;
    GError *err = NULL;

    if (!ig->batch->len)
        return;
    sessions = g_ptr_array_copy(ig->batch, NULL, NULL);
    g_ptr_array_set_size(ig->batch, 0);
    ids = g_new0(queue_id, sessions->len);

    if (commit_try(ig, sessions, ids, &err)) {
        for (guint i = 0; i < sessions->len; i++)
            commit_answer(sessions->pdata[i], ids[i], NULL);
        hint_send(ig->hints, "incoming");
        return;
    }

    /*
     * A full spool refuses the whole batch.  One message too large for
     * what is left should not cost the others their place: commit each
     * alone, so only those that do not fit hear 452 4.3.1.
     */
    msg_warn("spool write of %u message(s) failed: %s", sessions->len, err->message);
    if (sessions->len > 1) {
        for (guint i = 0; i < sessions->len; i++) {
            g_autoptr(GPtrArray) one = g_ptr_array_new();
            GError *e = NULL;

            g_ptr_array_add(one, sessions->pdata[i]);
            if (commit_try(ig, one, &ids[i], &e))
                hint_send(ig->hints, "incoming");
            else
                msg_warn("spool write for %s failed: %s", ((struct session *)sessions->pdata[i])->client, e->message);
            commit_answer(sessions->pdata[i], ids[i], e);
            g_clear_error(&e);
        }
    } else {
        commit_answer(sessions->pdata[0], 0, err);
    }
    g_error_free(err);
}
