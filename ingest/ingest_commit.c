/*
 * ingest_commit.c - group commit in a committer thread.
 *
 * The main thread gathers the sessions whose DATA is complete (ig->batch).
 * When the committer is idle it takes the whole batch: each message
 * becomes a job holding its own copy of the envelope and the body, so the
 * committer never touches a session.  The committer writes every job of
 * the batch in ONE durable LMDB transaction (spool_write: fsync'd commit),
 * hands the batch back and wakes the main loop, which only then writes the
 * 250 replies.  While the committer waits for the disk, the main thread
 * goes on reading and answering the other sessions, so the next batch is
 * ready when the disk is: the fsync is overlapped with protocol work, and
 * batches grow with the load.
 *
 * Only the committer opens write transactions in this process (LMDB allows
 * one writer, and growing the map needs no other transaction open here);
 * ZeroMQ hints are sent from the main thread only.
 */
#include "ingest/ingest.h"
#include "common/log.h"

#include <string.h>

struct commit_job {
    struct session *s;              /* main thread only; NULL once the session is gone */
    GByteArray *body;               /* taken from the session's data reader */
    char *sender, *client, *helo, *proto;
    GPtrArray *rcpts;
    queue_id id;                    /* set by the committer */
    GError *err;                    /* set by the committer: the message was not stored */
};

struct committer {
    GThread *thread;
    GAsyncQueue *todo;              /* GPtrArray of jobs, or &stop_request */
    GAsyncQueue *done;              /* the same arrays, written */
    gboolean busy;                  /* a batch is with the committer */
    GTimeZone *zone;                /* the local zone, looked up once: see commit_run */
};

static int stop_request;

/* RFC 5322 date in the local zone, as a Received: header wants it. */
static char *commit_date(GDateTime *now)
{
    return g_date_time_format(now, "%a, %d %b %Y %H:%M:%S %z");
}

static char *commit_received(const struct commit_job *j, const char *hostname, const char *id,
                             const char *date)
{
    GString *r = g_string_new(NULL);

    g_string_append_printf(r, "Received: from %s (%s)\r\n\tby %s (Postern) with %s id %s",
                           j->helo, j->client, hostname, j->proto, id);
    if (j->rcpts->len == 1)
        g_string_append_printf(r, "\r\n\tfor <%s>", (const char *)j->rcpts->pdata[0]);
    g_string_append_printf(r, "; %s\r\n", date);
    return g_string_free(r, FALSE);
}

struct commit_write_ctx {
    GPtrArray *jobs;
    const char *hostname;
    gint64 arrival;                 /* the batch's time, unix seconds */
    const char *date;               /* the same, for the Received: headers */
};

/*
 * The write itself.  It may run twice (the spool grows the map and starts
 * over), so it only touches the transaction and the jobs' ids.
 */
static gboolean commit_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct commit_write_ctx *w = ctx;

    for (guint i = 0; i < w->jobs->len; i++) {
        struct commit_job *j = w->jobs->pdata[i];
        struct spool_msg m;
        char idtext[QUEUE_ID_LEN + 1];
        gboolean ok;

        if (!(j->id = spool_id_next(t, err)))
            return FALSE;
        spool_id_format(j->id, idtext);
        spool_msg_init(&m);
        m.id = j->id;
        m.state = MSG_INCOMING;
        m.arrival = w->arrival;
        m.size = j->body->len;
        m.sender = g_strdup(j->sender);
        for (guint r = 0; r < j->rcpts->len; r++)
            g_ptr_array_add(m.recipients, g_strdup(j->rcpts->pdata[r]));
        m.client = g_strdup(j->client);
        m.helo = g_strdup(j->helo);
        m.proto = g_strdup(j->proto);
        m.received = commit_received(j, w->hostname, idtext, w->date);
        ok = spool_msg_insert(t, &m, err) &&
             spool_body_put(t, DB_BODIES, m.id, (const char *)j->body->data, j->body->len, err);
        if (ok)
            spool_txn_log(t,
                          "%s: from=<%s>, size=%" G_GUINT64_FORMAT
                          ", nrcpt=%u, client=%s, proto=%s (queue active)",
                          idtext, m.sender, m.size, m.recipients->len, m.client, m.proto);
        spool_msg_clear(&m);
        if (!ok)
            return FALSE;
    }
    return TRUE;
}

/*
 * Committer thread: write a batch; on failure, each job alone.  The
 * messages of a batch share one arrival time and one formatted date; the
 * zone comes from ig->committer->zone, not g_date_time_new_now_local(),
 * which looks at /etc/localtime again (four system calls) on every call,
 * in the path between the last byte of DATA and the 250.  A zone changed
 * while the daemon runs shows in Received: headers after a restart.
 */
static void commit_run(struct ingest *ig, GPtrArray *jobs)
{
    g_autoptr(GDateTime) now = g_date_time_new_now(ig->committer->zone);
    g_autofree char *date = commit_date(now);
    struct commit_write_ctx w = { jobs, ig->cfg->ingest.hostname, g_date_time_to_unix(now), date };
    GError *err = NULL;

    if (spool_write(ig->spool, commit_write, &w, &err))
        return;

    /*
     * A full spool refuses the whole batch.  One message too large for
     * what is left should not cost the others their place: commit each
     * alone, so only those that do not fit hear 452 4.3.1.
     */
    msg_warn("spool write of %u message(s) failed: %s", jobs->len, err->message);
    if (jobs->len == 1) {
        ((struct commit_job *)jobs->pdata[0])->err = err;
        return;
    }
    g_error_free(err);
    for (guint i = 0; i < jobs->len; i++) {
        struct commit_job *j = jobs->pdata[i];
        g_autoptr(GPtrArray) one = g_ptr_array_new();
        struct commit_write_ctx w1 = { one, w.hostname, w.arrival, w.date };

        g_ptr_array_add(one, j);
        if (!spool_write(ig->spool, commit_write, &w1, &j->err))
            msg_warn("spool write for %s failed: %s", j->client, j->err->message);
    }
}

static gpointer committer_main(gpointer data)
{
    struct ingest *ig = data;
    struct committer *c = ig->committer;

    for (;;) {
        gpointer item = g_async_queue_pop(c->todo);

        if (item == &stop_request)
            return NULL;
        commit_run(ig, item);
        g_async_queue_push(c->done, item);
        ingest_loop_wakeup();
    }
}

static void commit_job_free(gpointer data)
{
    struct commit_job *j = data;

    if (j->body)
        g_byte_array_unref(j->body);
    g_free(j->sender);
    g_free(j->client);
    g_free(j->helo);
    g_free(j->proto);
    g_ptr_array_unref(j->rcpts);
    if (j->err)
        g_error_free(j->err);
    g_free(j);
}

static struct commit_job *commit_job_new(struct session *s)
{
    struct commit_job *j = g_new0(struct commit_job, 1);

    j->s = s;
    j->body = s->data.out;          /* the body moves; lmtp_data_clear copes */
    s->data.out = NULL;
    j->sender = g_strdup(s->sender);
    j->client = g_strdup(s->client);
    j->helo = g_strdup(s->helo);
    j->proto = g_strdup(s->proto);
    j->rcpts = g_ptr_array_new_full(s->rcpts->len, g_free);
    for (guint i = 0; i < s->rcpts->len; i++)
        g_ptr_array_add(j->rcpts, g_strdup(s->rcpts->pdata[i]));
    s->job = j;
    return j;
}

/* Tell the session how its message fared, then let it read on. */
static void commit_answer(struct session *s, const struct commit_job *j)
{
    char idtext[QUEUE_ID_LEN + 1];
    gboolean gone = s->state == SESSION_CLOSING;

    s->job = NULL;
    spool_id_format(j->id, idtext);
    for (guint i = 0; i < (s->lmtp ? s->rcpts->len : 1); i++) {
        if (j->err)
            ingest_session_reply(s, "452 4.3.1 Insufficient system storage");
        else
            ingest_session_reply(s, "250 2.0.0 %s queued", idtext);
    }
    ingest_session_end_transaction(s);
    if (gone) {
        ingest_session_flush(s);       /* closes the session */
        return;
    }
    s->state = SESSION_COMMAND;
    /* The next command's time starts now, not while the disk synced. */
    ingest_session_deadline_reset(s);
    ingest_session_input(s);           /* may complete a pipelined next message */
}

static void commit_finish(struct ingest *ig, GPtrArray *jobs)
{
    gboolean stored = FALSE;

    ig->committer->busy = FALSE;
    for (guint i = 0; i < jobs->len; i++) {
        struct commit_job *j = jobs->pdata[i];

        stored |= j->err == NULL;
        if (j->s)
            commit_answer(j->s, j);
    }
    if (stored)
        hint_send(ig->hints, "incoming");
    g_ptr_array_unref(jobs);
}

void ingest_commit_start(struct ingest *ig)
{
    struct committer *c = g_new0(struct committer, 1);

    c->todo = g_async_queue_new();
    c->done = g_async_queue_new();
    c->zone = g_time_zone_new_local();
    ig->committer = c;
    c->thread = g_thread_new("committer", committer_main, ig);
}

/*
 * From the main loop, after every iteration: answer the batch the
 * committer has finished, then hand it the next one if it is idle.
 */
void ingest_commit_batch(struct ingest *ig)
{
    struct committer *c = ig->committer;
    GPtrArray *jobs;

    while ((jobs = g_async_queue_try_pop(c->done)))
        commit_finish(ig, jobs);
    if (c->busy || !ig->batch->len)
        return;
    jobs = g_ptr_array_new_full(ig->batch->len, commit_job_free);
    for (guint i = 0; i < ig->batch->len; i++)
        g_ptr_array_add(jobs, commit_job_new(ig->batch->pdata[i]));
    g_ptr_array_set_size(ig->batch, 0);
    c->busy = TRUE;
    g_async_queue_push(c->todo, jobs);
}

/* True when the main loop must not block: a batch waits for an idle committer. */
gboolean ingest_commit_pending(struct ingest *ig)
{
    return ig->batch->len && !ig->committer->busy;
}

/* A session that ends while its message is being written hears nothing. */
void ingest_commit_forget(struct session *s)
{
    if (s->job)
        s->job->s = NULL;
    s->job = NULL;
}

/*
 * Stop: answer the batch being written (those messages are stored), then
 * end the thread.  Messages still waiting in ig->batch were never
 * acknowledged: their sessions hear 421 and the clients keep them.
 */
void ingest_commit_stop(struct ingest *ig)
{
    struct committer *c = ig->committer;

    if (!c)
        return;
    if (c->busy)
        commit_finish(ig, g_async_queue_pop(c->done));
    g_async_queue_push(c->todo, &stop_request);
    g_thread_join(c->thread);
    g_async_queue_unref(c->todo);
    g_async_queue_unref(c->done);
    g_time_zone_unref(c->zone);
    g_free(c);
    ig->committer = NULL;
}
