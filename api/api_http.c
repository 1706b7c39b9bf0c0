/*
 * api_http.c - routing, authorisation and JSON replies of postern-api.
 * No libmicrohttpd here (that is api_server.c): a request comes in as a
 * struct api_request and leaves as a struct api_response.
 */
#include "api/api.h"
#include "common/clock.h"
#include "common/json_text.h"
#include "common/log.h"

#include <string.h>

/*
 * The routes.  A '*' part matches any one path part (an id).  What scope
 * each needs: GETs read, token changes need tokens, steering messages
 * needs admin; /healthz needs none (a load balancer has no key), nor do
 * the unsubscribe links, whose code is signed.
 */
static const struct api_route {
    const char *method;
    const char *pattern;
    enum api_scope scope;
    api_handler run;
    gboolean shares_commit;         /* api_token_prepare(), api_token_commit() */
} api_routes[] = {
    { "POST", "v1/tokens", API_SCOPE_TOKENS, api_token_create, TRUE },
    { "GET", "v1/tokens/*", API_SCOPE_READ, api_token_get },
    { "DELETE", "v1/tokens/*", API_SCOPE_TOKENS, api_token_revoke },
    { "PUT", "v1/tokens/*/recipients", API_SCOPE_TOKENS, api_token_recipients },
    { "GET", "v1/messages", API_SCOPE_READ, api_message_list },
    { "GET", "v1/messages/*", API_SCOPE_READ, api_message_get },
    { "POST", "v1/messages/*/hold", API_SCOPE_ADMIN, api_message_hold },
    { "POST", "v1/messages/*/release", API_SCOPE_ADMIN, api_message_release },
    { "POST", "v1/messages/*/retry", API_SCOPE_ADMIN, api_message_retry },
    /* Approval (api_approval.c): the moderator's links carry their own code, no key. */
    { "GET", "a/*", API_SCOPE_NONE, api_approval_page },
    { "POST", "a/*", API_SCOPE_NONE, api_approval_act },
    { "POST", "v1/messages/*/approve", API_SCOPE_TOKENS, api_message_approve },
    { "POST", "v1/messages/*/discard", API_SCOPE_TOKENS, api_message_discard },
    /* The suppression lists (api_suppress.c): edits are the platform's, as tokens are. */
    { "GET", "v1/suppressions", API_SCOPE_READ, api_suppress_list },
    { "PUT", "v1/suppressions/*/*", API_SCOPE_TOKENS, api_suppress_put },
    { "DELETE", "v1/suppressions/*/*", API_SCOPE_TOKENS, api_suppress_delete },
    { "GET", "metrics", API_SCOPE_READ, api_metrics },
    { "GET", "healthz", API_SCOPE_NONE, api_healthz },
    /* One-click unsubscribe: the code in the path is the authority (api_unsubscribe.c). */
    { "POST", "u/*", API_SCOPE_NONE, api_unsubscribe },
    { "GET", "u/*", API_SCOPE_NONE, api_unsubscribe_page },
};

void api_request_init(struct api_request *rq, const char *method, const char *url)
{
    const char *path = url;

    while (*path == '/')
        path++;
    memset(rq, 0, sizeof(*rq));
    rq->method = method;
    rq->path = url;
    rq->parts = g_strsplit(path, "/", -1);
    rq->query = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    rq->body = g_byte_array_new();
}

void api_request_clear(struct api_request *rq)
{
    g_strfreev(rq->parts);
    g_hash_table_unref(rq->query);
    g_byte_array_unref(rq->body);
}

void api_reply_json(struct api_response *rs, unsigned status, JsonBuilder *b)
{
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autofree char *text = NULL;

    json_generator_set_root(gen, root);
    text = json_generator_to_data(gen, NULL);
    rs->status = status;
    rs->content_type = "application/json";
    g_string_assign(rs->body, text);
    g_string_append_c(rs->body, '\n');
}

void api_reply_error(struct api_response *rs, unsigned status, const char *code,
                     const char *fmt, ...)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autofree char *raw = NULL, *text = NULL;
    va_list ap;

    va_start(ap, fmt);
    raw = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    /* The message may quote the path, which libmicrohttpd has %-decoded to
     * any bytes: JSON is UTF-8 (json-glib writes strings as given). */
    text = g_utf8_make_valid(raw, -1);
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "error");
    json_builder_add_string_value(b, code);
    json_builder_set_member_name(b, "message");
    json_builder_add_string_value(b, text);
    json_builder_end_object(b);
    api_reply_json(rs, status, b);
}

void api_reply_spool_error(struct api_response *rs, GError *err)
{
    if (g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND))
        api_reply_error(rs, 404, "not_found", "%s", err->message);
    else if (g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_INVALID))
        api_reply_error(rs, 400, "invalid", "%s", err->message);
    else if (g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_FULL))
        api_reply_error(rs, 503, "spool_full", "%s", err->message);
    else {
        msg_warn("spool: %s", err->message);
        api_reply_error(rs, 500, "spool", "%s", err->message);
    }
}

/* No request of ours nests deeper (json_text.h says why there is a limit). */
#define API_JSON_DEPTH 32

JsonNode *api_body_json(struct api_request *rq, struct api_response *rs)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    const char *text = (const char *)rq->body->data;
    GError *err = NULL;

    if (!rq->body->len) {
        api_reply_error(rs, 400, "malformed_json", "the request needs a JSON body");
        return NULL;
    }
    /* Every body of ours is one object or array: json-glib sees no other. */
    if (!json_text_check(text, rq->body->len, API_JSON_DEPTH, &err) ||
        !json_parser_load_from_data(parser, text, (gssize)rq->body->len, &err)) {
        api_reply_error(rs, 400, "malformed_json", "%s", err->message);
        g_error_free(err);
        return NULL;
    }
    return json_node_copy(json_parser_get_root(parser));
}

static gboolean api_route_match(const char *pattern, char **parts)
{
    g_auto(GStrv) want = g_strsplit(pattern, "/", -1);
    int i;

    for (i = 0; want[i] && parts[i]; i++)
        if (!g_str_equal(want[i], "*") ? !g_str_equal(want[i], parts[i]) : !*parts[i])
            return FALSE;
    return !want[i] && !parts[i];
}

const struct api_route *api_authorise(struct api *a, struct api_request *rq,
                                      const char *bearer, struct api_response *rs)
{
    const struct api_route *route = NULL;
    g_autoptr(GString) allow = g_string_new(NULL);
    enum api_scope scope;

    /* The route first: an unknown path is 404 and a known one with another method 405. */
    for (size_t i = 0; i < G_N_ELEMENTS(api_routes); i++) {
        if (!api_route_match(api_routes[i].pattern, rq->parts))
            continue;
        g_string_append_printf(allow, "%s%s", allow->len ? ", " : "", api_routes[i].method);
        if (g_str_equal(api_routes[i].method, rq->method))
            route = &api_routes[i];
    }
    if (!allow->len) {
        api_reply_error(rs, 404, "not_found", "no such endpoint: %s", rq->path);
        return NULL;
    }
    if (!route) {
        rs->allow = g_intern_string(allow->str);
        api_reply_error(rs, 405, "method_not_allowed", "%s takes %s", rq->path, allow->str);
        return NULL;
    }
    /* Then who asks: no key or an unknown one is 401, too small a scope 403. */
    if (route->scope != API_SCOPE_NONE) {
        scope = bearer ? api_keys_check(a->keys, bearer, &rq->key_name) : API_SCOPE_NONE;
        if (scope == API_SCOPE_NONE) {
            api_reply_error(rs, 401, "unauthorized", "%s", bearer ? "unknown API key"
                            : "an API key is needed: Authorization: Bearer KEY");
            return NULL;
        }
        if (scope < route->scope) {
            api_reply_error(rs, 403, "forbidden", "key %s has scope %s; %s %s needs %s",
                            rq->key_name, api_scope_name(scope), rq->method, rq->path,
                            api_scope_name(route->scope));
            return NULL;
        }
    }
    return route;
}

void api_route_run(const struct api_route *route, struct api *a, struct api_request *rq,
                   struct api_response *rs)
{
    route->run(a, rq, rs);
}

gboolean api_route_shares_commit(const struct api_route *route)
{
    return route->shares_commit;
}

void api_handle(struct api *a, struct api_request *rq, const char *bearer,
                struct api_response *rs)
{
    const struct api_route *route = api_authorise(a, rq, bearer, rs);

    if (route)
        api_route_run(route, a, rq, rs);
}
