/*
 * fuzz_api - postern-api's request handling without HTTP: the routing and
 * authorisation (api_authorise) and every handler (api_route_run), as
 * api_server.c calls them, on a spool of its own (tmpfs when there is
 * one) that holds the requests' effects from one input to the next.
 *
 * An input is "METHOD PATH[?QUERY] [KEY]\n" and then the body.  KEY
 * "admin", "tokens" or "read" stands for the key of that scope in the
 * keys file, any other word is sent as it is, none sends no bearer.  A
 * path part "@msg" is the id of the deferred message stored at start, so
 * that seeds reach hold, release and retry.
 *
 * Checked: the status is one the API documents (never 500: a spool or
 * handler failure on outside input is a bug); every reply is JSON with a
 * string "error" when >= 400, except /metrics' text; nothing without a
 * key but /healthz succeeds; a GET asked twice answers the same status.
 */
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "api/api.h"
#include "common/clock.h"
#include "common/log.h"
#include "spool/delivery.h"
#include "fuzz_util.h"

static const char *const scopes[] = { "admin", "tokens", "read" };
static const char *const keys[] = { "fuzz-admin-key-0123456789", "fuzz-tokens-key-0123456789",
                                    "fuzz-read-key-0123456789" };

static struct postern_config cfg;
static struct api api = { &cfg };
static char *dir;
static char msg_id[QUEUE_ID_LEN + 1];

static void cleanup(void)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", dir);

    api_keys_free(api.keys);
    spool_close(api.spool);
    config_free(&cfg);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz_api: could not remove %s\n", dir);
}

/* One message, deferred, with one delivery: what hold, release and retry act on. */
static gboolean put_message(struct spool_txn *t, void *ctx, GError **err)
{
    struct spool_msg m;
    struct spool_dlv d;
    gboolean ok;

    spool_msg_init(&m);
    if (!(m.id = spool_id_next(t, err)))
        return FALSE;
    m.state = MSG_DEFERRED;
    m.arrival = unix_ms() / 1000;
    m.sender = g_strdup("owner@example.org");
    g_ptr_array_add(m.recipients, g_strdup("restricted@example.org"));
    spool_dlv_init(&d);
    d.msg = m.id;
    d.state = DLV_DEFERRED;
    d.rcpt = (char *)"ada@example.net";
    d.created = d.next_try = m.arrival + 3600;
    d.attempts = 1;
    ok = spool_msg_insert(t, &m, err) && spool_body_put(t, DB_BODIES, m.id, "x\r\n", 3, err) &&
         spool_dlv_put(t, &d, err);
    spool_id_format(m.id, msg_id);
    spool_msg_clear(&m);
    return ok;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* tmpfs when there is one: every accepted change is a durable commit. */
    const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : g_get_tmp_dir();
    g_autofree char *keys_file = NULL;
    g_autoptr(GString) lines = g_string_new(NULL);
    GError *err = NULL;

    log_init("fuzz_api", TRUE);
    dir = g_build_filename(tmp, "postern-fuzz-api-XXXXXX", NULL);
    if (!g_mkdtemp(dir) || !config_load(&cfg, NULL, &err))
        abort();
    for (size_t i = 0; i < G_N_ELEMENTS(scopes); i++) {
        g_autofree char *hex = g_compute_checksum_for_string(G_CHECKSUM_SHA256, keys[i], -1);
        g_string_append_printf(lines, "fuzz-%s %s %s\n", scopes[i], scopes[i], hex);
    }
    keys_file = g_build_filename(dir, "keys", NULL);
    g_free(cfg.spool.dir);
    cfg.spool.dir = g_build_filename(dir, "spool", NULL);
    cfg.spool.max_size = 64 << 20;
    if (!g_file_set_contents(keys_file, lines->str, -1, &err) ||
        !(api.keys = api_keys_load(keys_file, &err)) || !spool_open(&api.spool, &cfg, &err) ||
        !spool_write(api.spool, put_message, NULL, &err)) {
        fprintf(stderr, "fuzz_api: %s\n", err->message);
        abort();
    }
    atexit(cleanup);
    return 0;
}

/* The bearer a request line names: a scope's key, a literal, or none. */
static const char *fuzz_bearer(const char *word)
{
    if (!word)
        return NULL;
    for (size_t i = 0; i < G_N_ELEMENTS(scopes); i++)
        if (g_str_equal(word, scopes[i]))
            return keys[i];
    return word;
}

/* Run the request as api_server.c does; the reply's status.  *open: the
 * path is /healthz, the one that needs no key. */
static unsigned fuzz_run(char **line, const char *body, size_t body_len, GString *out,
                         const char **ctype, gboolean *open)
{
    g_auto(GStrv) url = g_strsplit(line[1], "?", 2);
    struct api_response rs = { .body = out };
    struct api_request rq;
    const struct api_route *route;
    GHashTable *query;

    api_request_init(&rq, line[0], url[0]);
    for (int i = 0; rq.parts[i]; i++)
        if (g_str_equal(rq.parts[i], "@msg")) {
            g_free(rq.parts[i]);
            rq.parts[i] = g_strdup(msg_id);
        }
    if (url[1] && (query = g_uri_parse_params(url[1], -1, "&", G_URI_PARAMS_NONE, NULL))) {
        g_hash_table_unref(rq.query);
        rq.query = query;
    }
    *open = g_strcmp0(rq.parts[0], "healthz") == 0 && !rq.parts[1];
    g_string_truncate(out, 0);
    if ((route = api_authorise(&api, &rq, fuzz_bearer(line[2]), &rs))) {
        g_byte_array_append(rq.body, (const guint8 *)body, (guint)body_len);
        api_route_run(route, &api, &rq, &rs);
    }
    api_request_clear(&rq);
    *ctype = rs.content_type;
    return rs.status;
}

static void check_reply(unsigned status, const char *ctype, const GString *out, char **line)
{
    static const unsigned documented[] = { 200, 201, 400, 401, 403, 404, 405, 409, 503 };
    gboolean known = FALSE;

    for (size_t i = 0; i < G_N_ELEMENTS(documented); i++)
        known |= status == documented[i];
    FUZZ_CHECK(known, "%s %s: status %u: %s", line[0], line[1], status, out->str);
    FUZZ_CHECK(ctype != NULL, "%s %s: no content type", line[0], line[1]);
    if (g_str_has_prefix(ctype, "application/json")) {
        g_autoptr(JsonParser) p = json_parser_new();
        JsonNode *root;

        FUZZ_CHECK(json_parser_load_from_data(p, out->str, (gssize)out->len, NULL),
                   "%s %s: reply is not JSON: %s", line[0], line[1], out->str);
        root = json_parser_get_root(p);
        if (status >= 400)
            FUZZ_CHECK(JSON_NODE_HOLDS_OBJECT(root) &&
                       json_object_get_string_member_with_default(json_node_get_object(root),
                                                                  "error", NULL),
                       "%s %s: %u without an error code", line[0], line[1], status);
    } else if (g_str_has_prefix(ctype, "text/html")) {
        /* The pages for people (/a/CODE approval, /u/CODE unsubscribe) answer in HTML. */
        FUZZ_CHECK(out->len > 0, "%s %s: %u, an empty page", line[0], line[1], status);
    } else {
        FUZZ_CHECK(status == 200 && g_str_has_prefix(ctype, "text/plain"),
                   "%s %s: %u as %s", line[0], line[1], status, ctype);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *nl = memchr(data, '\n', size);
    g_autofree char *head = NULL;
    char *body;
    g_auto(GStrv) line = NULL;
    g_autoptr(GString) out = g_string_new(NULL), again = g_string_new(NULL);
    size_t body_len;
    const char *ctype;
    unsigned status;
    gboolean open;

    if (!nl)
        return 0;
    head = g_strndup((const char *)data, (gsize)(nl - (const char *)data));
    line = g_strsplit(head, " ", 3);
    /* libmicrohttpd hands over no request without a method and a target. */
    if (!line[0] || !line[1] || !*line[0] || !*line[1] ||
        strlen(head) != (size_t)(nl - (const char *)data))
        return 0;
    body_len = size - (size_t)(nl + 1 - (const char *)data);
    body = fuzz_dup(nl + 1, body_len);

    status = fuzz_run(line, body, body_len, out, &ctype, &open);
    check_reply(status, ctype, out, line);
    if (!line[2])
        FUZZ_CHECK(status >= 400 || open,
                   "%s %s without a key: %u", line[0], line[1], status);
    if (g_str_equal(line[0], "GET"))
        FUZZ_CHECK(fuzz_run(line, body, body_len, again, &ctype, &open) == status,
                   "GET %s twice: %u then another status", line[1], status);
    free(body);
    return 0;
}
