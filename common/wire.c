/*
 * wire.c - see wire.h.
 */
#include "common/wire.h"

#include <errno.h>
#include <string.h>
#include <zmq.h>

GBytes *wire_pack(const char *type, ...)
{
    va_list ap;
    g_autoptr(GVariant) v = NULL;

    va_start(ap, type);
    v = g_variant_ref_sink(g_variant_new_va(type, NULL, &ap));
    va_end(ap);
    return g_variant_get_data_as_bytes(v);
}

gboolean wire_unpack(GBytes *payload, const char *type, ...)
{
    g_autoptr(GVariant) v = g_variant_ref_sink(
        g_variant_new_from_bytes(G_VARIANT_TYPE(type), payload, FALSE));
    va_list ap;

    if (!g_variant_is_normal_form(v))
        return FALSE;
    va_start(ap, type);
    g_variant_get_va(v, type, NULL, &ap);
    va_end(ap);
    return TRUE;
}

static gboolean wire_send_frame(void *sock, const void *data, size_t len, int more)
{
    return zmq_send(sock, data, len, more ? ZMQ_SNDMORE | ZMQ_DONTWAIT : ZMQ_DONTWAIT) >= 0;
}

gboolean wire_send(void *sock, GBytes *identity, const char *cmd, GBytes *payload)
{
    gsize n = 0;
    const void *p = payload ? g_bytes_get_data(payload, &n) : NULL;

    if (identity) {
        gsize ilen;
        const void *id = g_bytes_get_data(identity, &ilen);
        if (!wire_send_frame(sock, id, ilen, 1))
            return FALSE;
    }
    return wire_send_frame(sock, cmd, strlen(cmd), 1) && wire_send_frame(sock, p ? p : "", n, 0);
}

static GBytes *wire_recv_frame(void *sock, int *more)
{
    zmq_msg_t m;
    GBytes *b;
    size_t len = sizeof(*more);

    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return NULL;
    }
    b = g_bytes_new(zmq_msg_data(&m), zmq_msg_size(&m));
    zmq_msg_close(&m);
    zmq_getsockopt(sock, ZMQ_RCVMORE, more, &len);
    return b;
}

gboolean wire_recv(void *sock, gboolean with_identity, GBytes **identity, char **cmd,
                   GBytes **payload)
{
    GBytes *frames[3] = { NULL, NULL, NULL };
    int more = 1, n = 0, want = with_identity ? 3 : 2;

    /* Read every frame of the message, even a malformed one, so the next starts clean. */
    while (more) {
        GBytes *f = wire_recv_frame(sock, &more);
        if (!f)
            break;
        if (n < want)
            frames[n++] = f;
        else
            g_bytes_unref(f);
    }
    if (n != want) {
        for (int i = 0; i < n; i++)
            g_bytes_unref(frames[i]);
        return n != 0 && n < want ? wire_recv(sock, with_identity, identity, cmd, payload) : FALSE;
    }
    if (with_identity)
        *identity = frames[0];
    gsize clen;
    const char *c = g_bytes_get_data(frames[want - 2], &clen);
    *cmd = g_strndup(c, clen);
    g_bytes_unref(frames[want - 2]);
    *payload = frames[want - 1];
    return TRUE;
}
