/*
 * api.h - postern-api: the platform bridge.  An HTTP/JSON interface for
 * the organisation's web platform (on another host) to register and
 * revoke tokens, follow messages and steer them, over the same spool
 * functions spoolctl uses (docs/api.yaml is the contract).
 *
 * One thread: libmicrohttpd in its external epoll mode, driven by the
 * loop in api_main.c, so every handler runs to its end before the next
 * starts and each spool transaction is the handler's own, except token
 * registrations: those of one turn of the loop share a commit
 * (api_server_commit()), each still all or nothing.
 */
#ifndef POSTERN_API_H
#define POSTERN_API_H

#include <glib.h>
#include <json-glib/json-glib.h>

#include "common/approval_code.h"
#include "common/config.h"
#include "spool/spool.h"

/* What a key may do; each scope includes the ones before it. */
enum api_scope { API_SCOPE_NONE, API_SCOPE_READ, API_SCOPE_TOKENS, API_SCOPE_ADMIN };

struct api_keys;

struct api {
    const struct postern_config *cfg;
    struct spool *spool;
    struct api_keys *keys;
    char *unsub_key;                /* [bounce] secret_file with [unsubscribe] one_click */
    size_t unsub_keylen;
    gboolean approval;              /* a list has approval: approval_key is read */
    unsigned char approval_key[APPROVAL_KEY_LEN];
    GPtrArray *held;                /* api_server.c: registrations waiting for their commit */
};

/* One request, as the handlers see it (no libmicrohttpd type in it). */
struct api_request {
    const char *method;
    const char *path;
    char **parts;                   /* path split at '/', without the empty first one */
    GHashTable *query;              /* name -> value (both char *) */
    GByteArray *body;
    const char *key_name;           /* the caller's key, by name: for the logs */
};

struct api_response {
    unsigned status;
    const char *content_type;
    GString *body;
    const char *allow;              /* 405: the methods the path takes */
};

/*
 * A request for url (its path, without the query) as the handlers see
 * it: parts split, an empty query and body for the server to fill.
 * api_request_clear() frees what init made (not method or path: the
 * caller's).
 */
void api_request_init(struct api_request *rq, const char *method, const char *url);
void api_request_clear(struct api_request *rq);

typedef void (*api_handler)(struct api *a, struct api_request *rq, struct api_response *rs);

/* api_keys.c: the bearer keys file, "NAME SCOPE SHA256-HEX" a line. */
struct api_keys *api_keys_load(const char *path, GError **err);
void api_keys_free(struct api_keys *keys);
/* Read the file again if it changed since it was read (a key added or removed). */
void api_keys_refresh(struct api_keys **keys, const char *path);
/*
 * The scope of a presented key, and its name (owned by keys), or
 * API_SCOPE_NONE: every entry is compared, in constant time.
 */
enum api_scope api_keys_check(const struct api_keys *keys, const char *key, const char **name);
const char *api_scope_name(enum api_scope s);
gboolean api_scope_parse(const char *text, enum api_scope *out);

/* api_http.c: replies and the parts of a request every handler needs. */
void api_reply_json(struct api_response *rs, unsigned status, JsonBuilder *b);
void api_reply_error(struct api_response *rs, unsigned status, const char *code,
                     const char *fmt, ...) G_GNUC_PRINTF(4, 5);
/* The status and code for a spool error: 404, 400, 503 or 500. */
void api_reply_spool_error(struct api_response *rs, GError *err);
/* Parse the body as JSON, or reply 400 and return NULL. */
JsonNode *api_body_json(struct api_request *rq, struct api_response *rs);
/*
 * Which route a request takes and whether its key may: decided on the
 * method, path and key alone, before the body is read (a refused request
 * never has its body kept).  NULL with rs holding the 404, 405, 401 or 403.
 */
struct api_route;
const struct api_route *api_authorise(struct api *a, struct api_request *rq,
                                      const char *bearer, struct api_response *rs);
void api_route_run(const struct api_route *route, struct api *a, struct api_request *rq,
                   struct api_response *rs);
/* POST /v1/tokens: the server holds it for a shared commit instead of running it. */
gboolean api_route_shares_commit(const struct api_route *route);
/* Both at once (the unit tests). */
void api_handle(struct api *a, struct api_request *rq, const char *bearer,
                struct api_response *rs);

/*
 * api_tokens.c.  A registration is prepared when its body is complete
 * (parsed and checked: NULL with rs holding the 400), then the
 * registrations the loop gathered are written in one transaction
 * (group commit: one wait for the disk), each still all or nothing, and
 * each batch's rs gets its 201, 409 or spool error.  api_token_create()
 * is both for one request.
 */
struct api_token_batch;
struct api_token_batch *api_token_prepare(struct api *a, struct api_request *rq,
                                          struct api_response *rs);
void api_token_commit(struct api *a, GPtrArray *batches);
void api_token_batch_free(struct api_token_batch *tb);
void api_token_create(struct api *a, struct api_request *rq, struct api_response *rs);
void api_token_get(struct api *a, struct api_request *rq, struct api_response *rs);
void api_token_revoke(struct api *a, struct api_request *rq, struct api_response *rs);
void api_token_recipients(struct api *a, struct api_request *rq, struct api_response *rs);

/* api_suppress.c: /v1/suppressions, the lists spoolctl suppress shows and edits */
void api_suppress_list(struct api *a, struct api_request *rq, struct api_response *rs);
void api_suppress_put(struct api *a, struct api_request *rq, struct api_response *rs);
void api_suppress_delete(struct api *a, struct api_request *rq, struct api_response *rs);

/* api_messages.c */
/* The queue id of /v1/messages/{id}/...: FALSE, with a 404 in rs, if it is none. */
gboolean api_message_path_id(struct api_request *rq, struct api_response *rs, queue_id *id);
void api_message_get(struct api *a, struct api_request *rq, struct api_response *rs);
void api_message_list(struct api *a, struct api_request *rq, struct api_response *rs);
void api_message_hold(struct api *a, struct api_request *rq, struct api_response *rs);
void api_message_release(struct api *a, struct api_request *rq, struct api_response *rs);
void api_message_retry(struct api *a, struct api_request *rq, struct api_response *rs);
void api_metrics(struct api *a, struct api_request *rq, struct api_response *rs);
void api_healthz(struct api *a, struct api_request *rq, struct api_response *rs);

/* api_unsubscribe.c: the one-click links, POST /u/CODE and its page GET /u/CODE */
void api_unsubscribe(struct api *a, struct api_request *rq, struct api_response *rs);
void api_unsubscribe_page(struct api *a, struct api_request *rq, struct api_response *rs);
/* api_approval.c: /a/<code> (the moderator's links) and the platform's approve/discard */
void api_approval_page(struct api *a, struct api_request *rq, struct api_response *rs);
void api_approval_act(struct api *a, struct api_request *rq, struct api_response *rs);
void api_message_approve(struct api *a, struct api_request *rq, struct api_response *rs);
void api_message_discard(struct api *a, struct api_request *rq, struct api_response *rs);

#endif
