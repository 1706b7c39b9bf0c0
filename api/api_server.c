/*
 * api_server.c - libmicrohttpd under postern-api: collect a request's
 * headers, query and body (within [api] max_body), hand it to
 * api_handle(), send what it answers.  A token registration is held
 * (its connection suspended) until api_server_commit() has written it
 * with the others of the same turn of the loop.
 *
 * Why libmicrohttpd: HTTP parsing is not ours to write; it is small,
 * maintained (GNU), packaged by Debian (built with GnuTLS, so HTTPS needs
 * no proxy), and runs its own epoll set, which our loop drives
 * (MHD_USE_EPOLL without its threads: one thread, like every Postern
 * loop).  libsoup would do too, but brings GIO and its main loop.
 */
#include "api/api_server.h"
#include "common/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define API_IDLE_TIMEOUT 30         /* seconds a connection may say nothing */

/*
 * One request in progress: MHD's con_cls.  Its route and key are decided
 * on the headers; a refused request (or one too large) has its body read
 * to the end but not kept, then gets its answer.
 */
struct api_call {
    struct api_request rq;
    const struct api_route *route;  /* NULL: refused, the answer is in `refusal` */
    char *key_name;                 /* a copy: the keys may be read again meanwhile */
    struct api_response refusal;
    gboolean too_big;
    struct MHD_Connection *conn;
    struct api_token_batch *batch;  /* held for the shared commit */
    struct api_response reply;      /* a shared commit's answer; body NULL: not prepared */
};

static enum MHD_Result api_send(struct MHD_Connection *conn, const struct api_response *rs)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(rs->body->len, rs->body->str,
                                                             MHD_RESPMEM_MUST_COPY);
    enum MHD_Result ret;

    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, rs->content_type);
    if (rs->allow)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, rs->allow);
    if (rs->status == 401)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    ret = MHD_queue_response(conn, rs->status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result api_query_add(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    g_hash_table_insert(cls, g_strdup(key), g_strdup(value ? value : ""));
    return MHD_YES;
}

/* "Authorization: Bearer KEY" -> KEY, or NULL. */
static const char *api_bearer(struct MHD_Connection *conn)
{
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                MHD_HTTP_HEADER_AUTHORIZATION);

    if (!h || g_ascii_strncasecmp(h, "Bearer ", 7) != 0)
        return NULL;
    h += 7;
    while (*h == ' ')
        h++;
    return *h ? h : NULL;
}

/*
 * The path as it may be logged: words of our routes and ids (16 hex
 * digits) as they are, anything else as '?'.  A client that puts a token
 * in the path (GET /v1/tokens/TOKEN) must not get it into the mail log.
 */
static char *api_log_path(char **parts)
{
    static const char *const words[] = { "v1", "tokens", "messages", "recipients", "hold",
                                         "release", "retry", "metrics", "healthz", "u", "approve",
                                         "discard", "a", "suppressions", "" };
    GString *out = g_string_new(NULL);

    for (int i = 0; parts[i]; i++) {
        gboolean ok = strlen(parts[i]) == 16 && strspn(parts[i], "0123456789abcdefABCDEF") == 16;

        for (size_t w = 0; !ok && w < G_N_ELEMENTS(words); w++)
            ok = g_str_equal(parts[i], words[w]);
        g_string_append_printf(out, "/%s", ok ? parts[i] : "?");
    }
    return g_string_free(out, FALSE);
}

/* The first call, on the headers: where it goes, and may its key go there? */
static struct api_call *api_call_new(struct api *a, struct MHD_Connection *conn,
                                     const char *method, const char *url)
{
    struct api_call *call = g_new0(struct api_call, 1);

    api_request_init(&call->rq, method, url);
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, api_query_add, call->rq.query);
    call->refusal.body = g_string_new(NULL);
    api_keys_refresh(&a->keys, a->cfg->api.keys_file);
    call->route = api_authorise(a, &call->rq, api_bearer(conn), &call->refusal);
    call->key_name = g_strdup(call->rq.key_name);
    call->rq.key_name = call->key_name;
    call->conn = conn;
    return call;
}

static enum MHD_Result api_on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
    struct api *a = cls;
    struct api_call *call = *con_cls;
    struct api_response rs = { 0 };
    const struct api_response *answer = &rs;
    enum MHD_Result ret;

    /* First call: headers only.  A declared body over the limit is refused now. */
    if (!call) {
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        *con_cls = call = api_call_new(a, conn, method, url);
        if (!cl || g_ascii_strtoull(cl, NULL, 10) <= a->cfg->api.max_body)
            return MHD_YES;
        call->too_big = TRUE;
    } else if (*upload_data_size) {
        /* A body is read to its end, but kept only within the limit and when it may be used. */
        if (call->rq.body->len + *upload_data_size > a->cfg->api.max_body)
            call->too_big = TRUE;
        else if (call->route && !call->too_big)
            g_byte_array_append(call->rq.body, (const guint8 *)upload_data,
                                (guint)*upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    rs.body = g_string_new(NULL);
    if (call->too_big)
        api_reply_error(&rs, 413, "too_large", "the body is larger than %" G_GUINT64_FORMAT
                        " bytes ([api] max_body)", a->cfg->api.max_body);
    else if (!call->route)
        answer = &call->refusal;
    else if (!api_route_shares_commit(call->route))
        api_route_run(call->route, a, &call->rq, &rs);
    else {
        /*
         * A registration waits, its connection suspended, for the commit
         * after this turn of the loop; resumed, it comes back here with its
         * answer.  Every request that arrived while the disk was busy with
         * the last commit shares the next one.
         */
        answer = &call->reply;
        if (!call->reply.body) {
            call->reply.body = g_string_new(NULL);
            if ((call->batch = api_token_prepare(a, &call->rq, &call->reply))) {
                g_string_free(rs.body, TRUE);
                g_ptr_array_add(a->held, call);
                MHD_suspend_connection(conn);
                return MHD_YES;
            }
        }
    }
    /* One line per change and per refusal; reads that succeed are not logged. */
    if (!g_str_equal(method, "GET") || answer->status >= 400) {
        g_autofree char *logged = api_log_path(call->rq.parts);
        msg_info("%s %s: %u, key %s", method, logged, answer->status,
                 call->key_name ? call->key_name : "none");
    }
    ret = api_send(conn, answer);
    g_string_free(rs.body, TRUE);
    return ret;
}

static void api_on_done(void *cls, struct MHD_Connection *conn, void **con_cls,
                        enum MHD_RequestTerminationCode toe)
{
    struct api *a = cls;
    struct api_call *call = *con_cls;

    if (!call)
        return;
    api_request_clear(&call->rq);
    g_string_free(call->refusal.body, TRUE);
    if (call->reply.body)
        g_string_free(call->reply.body, TRUE);
    if (call->batch) {
        api_token_batch_free(call->batch);
        g_ptr_array_remove(a->held, call);
    }
    g_free(call->key_name);
    g_free(call);
    *con_cls = NULL;
}

gboolean api_server_commit(struct api *a)
{
    g_autoptr(GPtrArray) batches = NULL;

    if (!a->held->len)
        return FALSE;
    batches = g_ptr_array_new_with_free_func((GDestroyNotify)api_token_batch_free);
    for (guint i = 0; i < a->held->len; i++)
        g_ptr_array_add(batches, g_steal_pointer(&((struct api_call *)a->held->pdata[i])->batch));
    api_token_commit(a, batches);
    for (guint i = 0; i < a->held->len; i++)
        MHD_resume_connection(((struct api_call *)a->held->pdata[i])->conn);
    g_ptr_array_set_size(a->held, 0);
    return TRUE;
}

static void api_mhd_log(void *cls, const char *fmt, va_list ap)
{
    g_autofree char *text = g_strdup_vprintf(fmt, ap);

    g_strchomp(text);
    msg_warn("http: %s", text);
}

struct MHD_Daemon *api_server_start(struct api *a, int listen_fd, const char *cert,
                                    const char *key, GError **err)
{
    struct MHD_OptionItem opts[] = {
        /* The logger first, or libmicrohttpd logs to stderr before it knows it. */
        { MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)api_mhd_log, NULL },
        { MHD_OPTION_LISTEN_SOCKET, listen_fd, NULL },
        /* [api] max_connections; more wait in the kernel's listen queue (docs/operations.md). */
        { MHD_OPTION_CONNECTION_LIMIT, (intptr_t)a->cfg->api.max_connections, NULL },
        { MHD_OPTION_CONNECTION_TIMEOUT, API_IDLE_TIMEOUT, NULL },
        { MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)api_on_done, a },
        { cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, (void *)cert },
        { cert ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, 0, (void *)key },
        { MHD_OPTION_END, 0, NULL },
    };
    unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME |
                     (cert ? MHD_USE_TLS : 0);
    struct MHD_Daemon *d;

    /* This build of libmicrohttpd may lack TLS: say so rather than serve plain HTTP. */
    if (cert && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "[api] tls_cert: this "
                    "libmicrohttpd has no TLS: put a reverse proxy in front instead");
        return NULL;
    }
    d = MHD_start_daemon(flags, 0, NULL, NULL, api_on_request, a, MHD_OPTION_ARRAY, opts,
                         MHD_OPTION_END);
    if (!d)
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "libmicrohttpd did not start (see "
                    "the line above)");
    return d;
}
