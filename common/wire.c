/*
 * wire.c - see wire.h.
 */
#include "common/wire.h"

#include <errno.h>
#include <string.h>
#include <zmq.h>

#define SJOB_TYPE "(ttssmaya(usmay))"
#define SDONE_TYPE "(uttsa(uqssusd))"

static GVariant *bytes_or_nothing(GBytes *b)
{
    return b ? g_variant_new_from_bytes(G_VARIANT_TYPE_BYTESTRING, b, TRUE) : NULL;
}

GBytes *wire_send_job_encode(const struct wire_send_job *job)
{
    GVariantBuilder rcpts;
    g_autoptr(GVariant) v = NULL;

    g_variant_builder_init(&rcpts, G_VARIANT_TYPE("a(usmay)"));
    for (guint i = 0; i < job->rcpts->len; i++) {
        const struct wire_rcpt *r = &g_array_index(job->rcpts, struct wire_rcpt, i);
        g_variant_builder_add(&rcpts, "(usm@ay)", r->idx, r->rcpt, bytes_or_nothing(r->header));
    }
    v = g_variant_ref_sink(g_variant_new("(ttssm@aya(usmay))", job->lease, job->msg,
                                         job->mail_from,
                                         job->account ? job->account : WIRE_ACCOUNT_DEFAULT,
                                         bytes_or_nothing(job->body), &rcpts));
    return g_variant_get_data_as_bytes(v);
}

static GBytes *maybe_bytes(GVariant *maybe)
{
    g_autoptr(GVariant) inner = maybe ? g_variant_get_maybe(maybe) : NULL;
    return inner ? g_variant_get_data_as_bytes(inner) : NULL;
}

static void wire_rcpt_clear(gpointer p)
{
    struct wire_rcpt *r = p;
    g_free(r->rcpt);
    if (r->header)
        g_bytes_unref(r->header);
}

void wire_send_job_init(struct wire_send_job *job)
{
    memset(job, 0, sizeof(*job));
    job->rcpts = g_array_new(FALSE, TRUE, sizeof(struct wire_rcpt));
    g_array_set_clear_func(job->rcpts, wire_rcpt_clear);
}

gboolean wire_send_job_decode(GBytes *payload, struct wire_send_job *job)
{
    g_autoptr(GVariant) v = g_variant_ref_sink(
        g_variant_new_from_bytes(G_VARIANT_TYPE(SJOB_TYPE), payload, FALSE));
    g_autoptr(GVariant) body = NULL, rcpts = NULL;

    wire_send_job_init(job);
    if (!g_variant_is_normal_form(v))
        return FALSE;
    g_variant_get(v, "(ttss@may@a(usmay))", &job->lease, &job->msg, &job->mail_from,
                  &job->account, &body, &rcpts);
    job->body = maybe_bytes(body);
    for (gsize i = 0; i < g_variant_n_children(rcpts); i++) {
        g_autoptr(GVariant) child = g_variant_get_child_value(rcpts, i);
        g_autoptr(GVariant) h = NULL;
        struct wire_rcpt r = { 0 };

        g_variant_get(child, "(us@may)", &r.idx, &r.rcpt, &h);
        r.header = maybe_bytes(h);
        g_array_append_val(job->rcpts, r);
    }
    return TRUE;
}

void wire_send_job_clear(struct wire_send_job *job)
{
    g_free(job->mail_from);
    g_free(job->account);
    if (job->body)
        g_bytes_unref(job->body);
    if (job->rcpts)
        g_array_unref(job->rcpts);
    memset(job, 0, sizeof(*job));
}

static void wire_result_clear(gpointer p)
{
    struct wire_rcpt_result *r = p;
    g_free(r->status);
    g_free(r->text);
    g_free(r->relay);
}

void wire_send_result_init(struct wire_send_result *res)
{
    memset(res, 0, sizeof(*res));
    res->results = g_array_new(FALSE, TRUE, sizeof(struct wire_rcpt_result));
    g_array_set_clear_func(res->results, wire_result_clear);
}

GBytes *wire_send_result_encode(const struct wire_send_result *res)
{
    GVariantBuilder b;
    g_autoptr(GVariant) v = NULL;

    g_variant_builder_init(&b, G_VARIANT_TYPE("a(uqssusd)"));
    for (guint i = 0; i < res->results->len; i++) {
        const struct wire_rcpt_result *r = &g_array_index(res->results, struct wire_rcpt_result, i);
        g_variant_builder_add(&b, "(uqssusd)", r->idx, r->code, r->status ? r->status : "",
                              r->text ? r->text : "", r->error, r->relay ? r->relay : "",
                              r->seconds);
    }
    v = g_variant_ref_sink(g_variant_new(SDONE_TYPE, res->credit, res->lease, res->msg,
                                         res->account ? res->account : WIRE_ACCOUNT_DEFAULT, &b));
    return g_variant_get_data_as_bytes(v);
}

gboolean wire_send_result_decode(GBytes *payload, struct wire_send_result *res)
{
    g_autoptr(GVariant) v = g_variant_ref_sink(
        g_variant_new_from_bytes(G_VARIANT_TYPE(SDONE_TYPE), payload, FALSE));
    g_autoptr(GVariantIter) it = NULL;
    struct wire_rcpt_result r;

    wire_send_result_init(res);
    if (!g_variant_is_normal_form(v))
        return FALSE;
    g_variant_get(v, SDONE_TYPE, &res->credit, &res->lease, &res->msg, &res->account, &it);
    memset(&r, 0, sizeof(r));
    while (g_variant_iter_next(it, "(uqssusd)", &r.idx, &r.code, &r.status, &r.text, &r.error,
                               &r.relay, &r.seconds)) {
        g_array_append_val(res->results, r);
        memset(&r, 0, sizeof(r));
    }
    return TRUE;
}

void wire_send_result_clear(struct wire_send_result *res)
{
    g_free(res->account);
    if (res->results)
        g_array_unref(res->results);
    memset(res, 0, sizeof(*res));
}

void wire_send_result_free(gpointer res)
{
    wire_send_result_clear(res);
    g_free(res);
}

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
