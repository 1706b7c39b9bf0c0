/*
 * worker.c - see worker.h.
 */
#include "common/worker.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/wire.h"

#include <errno.h>
#include <zmq.h>

void worker_beat_start(struct worker_beat *b, int64_t now)
{
    b->heard = now;
    b->next_ping = now + WIRE_HEARTBEAT_MS;
    b->silent = FALSE;
}

gboolean worker_beat_heard(struct worker_beat *b, int64_t now)
{
    gboolean back = b->silent;

    b->heard = now;
    b->silent = FALSE;
    return back;
}

/*
 * A PING per heartbeat; past WIRE_DEAD_AFTER_MS of silence, a HELLO with
 * each PING, so a restarted dispatcher knows us within a heartbeat of its
 * start, and a worker never floods one that is merely slow.
 */
unsigned worker_beat_due(struct worker_beat *b, int64_t now)
{
    unsigned due = 0;

    if (now < b->next_ping)
        return 0;
    b->next_ping = now + WIRE_HEARTBEAT_MS;
    due |= WORKER_DUE_PING;
    if (now - b->heard >= WIRE_DEAD_AFTER_MS) {
        due |= WORKER_DUE_REJOIN;
        if (!b->silent)
            due |= WORKER_DUE_SILENT;
        b->silent = TRUE;
    }
    return due;
}

int64_t worker_beat_wait(const struct worker_beat *b, int64_t now)
{
    return CLAMP(b->next_ping - now, 0, WIRE_HEARTBEAT_MS);
}

void worker_init(struct worker *w, const char *kind, const char *endpoint, int linger_ms,
                 const struct worker_ops *ops, void *arg)
{
    w->kind = kind;
    w->endpoint = g_strdup(endpoint);
    w->ops = ops;
    w->arg = arg;
    w->zctx = zmq_ctx_new();
    w->sock = zmq_socket(w->zctx, ZMQ_DEALER);
    if (!w->sock)
        msg_fatal("zmq_socket: %s", zmq_strerror(errno));
    zmq_setsockopt(w->sock, ZMQ_LINGER, &linger_ms, sizeof(linger_ms));
}

gboolean worker_connect(struct worker *w)
{
    /* ZeroMQ reconnects by itself: a dispatcher not up yet is no error. */
    if (zmq_connect(w->sock, w->endpoint) < 0)
        return FALSE;
    worker_beat_start(&w->beat, mono_ms());
    worker_hello(w);
    return TRUE;
}

gboolean worker_say(struct worker *w, const char *cmd, GBytes *payload)
{
    gboolean ok = wire_send(w->sock, NULL, cmd, payload);

    if (payload)
        g_bytes_unref(payload);
    return ok;
}

/* HELLO resets the dispatcher's credit for us to what is free now. */
void worker_hello(struct worker *w)
{
    worker_say(w, WIRE_HELLO, wire_pack("(suu)", w->kind, (guint32)w->ops->free_slots(w->arg),
                                        (guint32)WIRE_VERSION));
}

/* The dispatcher has lost us: introduce ourselves again, then the worker's own part. */
static void worker_rejoin(struct worker *w)
{
    worker_hello(w);
    if (w->ops->forgotten)
        w->ops->forgotten(w->arg);
}

void worker_receive(struct worker *w)
{
    GBytes *payload;
    char *cmd;

    while (wire_recv(w->sock, FALSE, NULL, &cmd, &payload)) {
        if (worker_beat_heard(&w->beat, mono_ms()))
            msg_info("dispatcher %s is back", w->endpoint);
        if (g_str_equal(cmd, WIRE_WHO)) {
            msg_info("dispatcher does not know us (restarted?): HELLO again");
            worker_rejoin(w);
        } else if (!g_str_equal(cmd, WIRE_PING)) {
            w->ops->command(w->arg, cmd, payload);
        }
        g_free(cmd);
        if (payload)
            g_bytes_unref(payload);
    }
}

void worker_heartbeat(struct worker *w)
{
    int64_t now = mono_ms();
    unsigned due = worker_beat_due(&w->beat, now);

    if (due & WORKER_DUE_PING)
        worker_say(w, WIRE_PING, NULL);
    if (due & WORKER_DUE_SILENT)
        msg_warn("dispatcher %s silent for %" G_GINT64_FORMAT "s: HELLO again until it answers",
                 w->endpoint, (now - w->beat.heard) / 1000);
    if (due & WORKER_DUE_REJOIN)
        worker_rejoin(w);
}

long worker_wait_ms(const struct worker *w)
{
    return (long)worker_beat_wait(&w->beat, mono_ms());
}

void worker_close(struct worker *w)
{
    if (w->sock)
        zmq_close(w->sock);
    if (w->zctx)
        zmq_ctx_term(w->zctx);
    g_free(w->endpoint);
    w->sock = w->zctx = NULL;
    w->endpoint = NULL;
}
