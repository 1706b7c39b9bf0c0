/*
 * hint.c - see hint.h.
 */
#include "common/hint.h"
#include "common/wire.h"

#include <errno.h>
#include <string.h>
#include <zmq.h>

struct hint_sender {
    void *ctx;
    void *sock;
};

struct hint_sender *hint_sender_open(const char *endpoint, GError **err)
{
    struct hint_sender *h = g_new0(struct hint_sender, 1);
    int zero = 0, hwm = 16;

    /*
     * No ZMQ_IMMEDIATE: the socket queues for the dispatcher from the
     * moment it connects, so a hint sent before the connection is made
     * (just after start, or while the dispatcher restarts) arrives when
     * it is, instead of leaving the first message to wait for the
     * dispatcher's one-second rescan.  SNDHWM 16 bounds that queue, and
     * sending with ZMQ_DONTWAIT drops the hint once it is full: one
     * queued hint wakes the dispatcher as well as sixteen.  LINGER 0:
     * exiting never waits for a hint.
     */
    h->ctx = zmq_ctx_new();
    h->sock = zmq_socket(h->ctx, ZMQ_PUSH);
    zmq_setsockopt(h->sock, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(h->sock, ZMQ_SNDHWM, &hwm, sizeof(hwm));
    if (zmq_connect(h->sock, endpoint) < 0) {
        g_set_error(err, g_quark_from_static_string("postern-hint"), 1,
                    "[workers] hints %s: %s", endpoint, zmq_strerror(errno));
        hint_sender_close(h);
        return NULL;
    }
    return h;
}

void hint_sender_close(struct hint_sender *h)
{
    if (!h)
        return;
    if (h->sock)
        zmq_close(h->sock);
    if (h->ctx)
        zmq_ctx_term(h->ctx);
    g_free(h);
}

/* Framed like every other message (command, empty payload) for wire_recv(). */
void hint_send(struct hint_sender *h, const char *what)
{
    if (h)
        (void)wire_send(h->sock, NULL, what, NULL);
}
