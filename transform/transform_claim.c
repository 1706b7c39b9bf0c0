/*
 * transform_claim.c - pull mode ([token] claim_url): the platform decides
 * a token when its mail arrives.
 *
 * One POST per message, signed as the events are (common/signature.h),
 * made with no spool transaction open and within [token] claim_timeout.
 * Only the token's SHA-256 leaves Postern.  The queue id is the claim's
 * idempotency key: a job claimed again after a crash gets the same answer
 * (docs/integration.md).  Every answer that is not a decision (no
 * connection, a timeout, a 5xx, a 200 we cannot read) is CLAIM_RETRY: the
 * message stays incoming and is asked about again later, never rejected
 * because the platform is down.
 *
 * Why libcurl's easy interface here: the transform is one thread doing
 * one job at a time, and the call is bounded; the worker's heartbeat is
 * kept up from libcurl's progress callback meanwhile.  One easy handle
 * for the worker's life: its connection to the platform (and TLS
 * session) is kept from one claim to the next, so a claim costs one
 * exchange, not a handshake too (libcurl opens a new one when the
 * platform closed it).
 */
#include "transform/transform.h"
#include "common/json_text.h"
#include "common/log.h"
#include "common/secret_file.h"
#include "common/signature.h"

#include <curl/curl.h>
#include <json-glib/json-glib.h>
#include <string.h>

#define CLAIM_REPLY_MAX (64 * 1024)     /* a longer answer is malformed */
#define CLAIM_REPLY_DEPTH 8             /* so is a deeper one (json_text.h) */
#define CLAIM_BACKOFF_FIRST_MS 1000

/* ---- pure --------------------------------------------------------------- */

void transform_claim_answer_clear(struct claim_answer *a)
{
    g_clear_pointer(&a->recipients, g_ptr_array_unref);
    g_clear_pointer(&a->list, g_free);
    g_clear_pointer(&a->error, g_free);
    a->reason = NULL;
    a->hide_sender = FALSE;
}

/*
 * The wait is the message's age, at least a second and at most max_ms:
 * tries at about 1, 2, 4, 8 s... after arrival, doubling as the events'
 * backoff does, with nothing to count (a restart keeps the rhythm).
 */
int64_t transform_claim_backoff(int64_t age_ms, int64_t max_ms)
{
    return CLAMP(age_ms, CLAIM_BACKOFF_FIRST_MS, MAX(max_ms, CLAIM_BACKOFF_FIRST_MS));
}

char *transform_claim_body(const struct claim_request *r)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autoptr(JsonNode) root = NULL;
    char hex[2 * TOKEN_HASH_LEN + 1];

    for (unsigned i = 0; i < TOKEN_HASH_LEN; i++)
        g_snprintf(hex + 2 * i, 3, "%02x", r->hash[i]);
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "token_sha256");
    json_builder_add_string_value(b, hex);
    json_builder_set_member_name(b, "sender");
    json_builder_add_string_value(b, r->sender ? r->sender : "");
    json_builder_set_member_name(b, "message_id");
    if (r->message_id)
        json_builder_add_string_value(b, r->message_id);
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "queue_id");
    json_builder_add_string_value(b, r->queue_id);
    json_builder_set_member_name(b, "subject");
    json_builder_add_string_value(b, r->subject ? r->subject : "");
    json_builder_end_object(b);
    root = json_builder_get_root(b);
    json_generator_set_root(gen, root);
    return json_generator_to_data(gen, NULL);
}

static void transform_claim_retry(struct claim_answer *a, char *why)
{
    transform_claim_answer_clear(a);
    a->kind = CLAIM_RETRY;
    a->error = why;
}

/* A 200: {"recipients": [...], "hide_sender": bool, "list": "NAME"}; anything else is malformed. */
static void transform_claim_parse_granted(const char *body, size_t len, struct claim_answer *a)
{
    g_autoptr(JsonParser) p = json_parser_new();
    GError *err = NULL;
    JsonObject *o;
    JsonNode *n;
    JsonArray *rcpts;

    if (!json_text_check(body, len, CLAIM_REPLY_DEPTH, &err) ||
        !json_parser_load_from_data(p, body, (gssize)len, &err)) {
        transform_claim_retry(a, g_strdup_printf("malformed answer: %s", err->message));
        g_error_free(err);
        return;
    }
    if (!JSON_NODE_HOLDS_OBJECT(json_parser_get_root(p))) {
        transform_claim_retry(a, g_strdup("malformed answer: not a JSON object"));
        return;
    }
    o = json_node_get_object(json_parser_get_root(p));
    if (!(n = json_object_get_member(o, "recipients")) || !JSON_NODE_HOLDS_ARRAY(n)) {
        transform_claim_retry(a, g_strdup("malformed answer: \"recipients\" is not an array"));
        return;
    }
    rcpts = json_node_get_array(n);
    a->kind = CLAIM_GRANTED;
    a->recipients = g_ptr_array_new_with_free_func(g_free);
    for (guint i = 0; i < json_array_get_length(rcpts); i++) {
        JsonNode *r = json_array_get_element(rcpts, i);

        if (!JSON_NODE_HOLDS_VALUE(r) || json_node_get_value_type(r) != G_TYPE_STRING) {
            transform_claim_retry(a, g_strdup("malformed answer: a recipient is not a string"));
            return;
        }
        g_ptr_array_add(a->recipients, g_strdup(json_node_get_string(r)));
    }
    if ((n = json_object_get_member(o, "hide_sender")) && !JSON_NODE_HOLDS_NULL(n)) {
        if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_BOOLEAN) {
            transform_claim_retry(a, g_strdup("malformed answer: \"hide_sender\" is not a "
                                              "boolean"));
            return;
        }
        a->hide_sender = json_node_get_boolean(n);
    }
    if ((n = json_object_get_member(o, "list")) && !JSON_NODE_HOLDS_NULL(n)) {
        if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING) {
            transform_claim_retry(a, g_strdup("malformed answer: \"list\" is not a string"));
            return;
        }
        a->list = g_strdup(json_node_get_string(n));
    }
}

void transform_claim_parse(long status, const char *body, size_t len, struct claim_answer *a)
{
    static const struct { long status; const char *reason; } refusals[] = {
        { 404, "TOKEN_INVALID" }, { 409, "TOKEN_USED" },
        { 403, "SENDER_MISMATCH" }, { 410, "TOKEN_EXPIRED" },
    };
    g_autofree char *shown = NULL;

    transform_claim_answer_clear(a);
    if (status == 200) {
        transform_claim_parse_granted(body, len, a);
        return;
    }
    for (unsigned i = 0; i < G_N_ELEMENTS(refusals); i++)
        if (refusals[i].status == status) {
            a->kind = CLAIM_REFUSED;
            a->reason = refusals[i].reason;
            return;
        }
    /* Anything else (5xx, 401 for a wrong secret, ...) is the platform's to fix: ask again. */
    shown = g_strndup(body, MIN(len, 120));
    g_strdelimit(shown, "\r\n\t", ' ');
    transform_claim_retry(a, g_strdup_printf("status %ld%s%s", status, *shown ? ": " : "",
                                             shown));
}

/* ---- the call ----------------------------------------------------------- */

gboolean transform_claim_start(struct transform *tf, GError **err)
{
    char *secret;
    gboolean global;

    if (!*tf->cfg->token.claim_url)
        return TRUE;
    if (!(secret = secret_read("[token] claim_secret_file", tf->cfg->token.claim_secret_file,
                               err)))
        return FALSE;
    global = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
    if (!global || !(tf->claim_easy = curl_easy_init())) {
        if (global)
            curl_global_cleanup();
        secret_free(secret);
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "libcurl: cannot initialise");
        return FALSE;
    }
    /* A trailing newline is the editor's, not the secret's. */
    tf->claim_secret = g_strchomp(secret);
    msg_info("token: pull mode, claims go to %s", tf->cfg->token.claim_url);
    return TRUE;
}

void transform_claim_stop(struct transform *tf)
{
    if (!tf->claim_secret)
        return;
    secret_free(tf->claim_secret);
    tf->claim_secret = NULL;
    g_clear_pointer(&tf->claim_error, g_free);
    g_clear_pointer(&tf->claim_easy, curl_easy_cleanup);
    curl_global_cleanup();
}

struct claim_reply {
    GString *body;
    gboolean too_long;
};

static size_t transform_claim_keep(char *data, size_t size, size_t n, void *ctx)
{
    struct claim_reply *r = ctx;
    size_t len = size * n;

    if (r->body->len + len > CLAIM_REPLY_MAX)
        r->too_long = TRUE;
    else
        g_string_append_len(r->body, data, (gssize)len);
    return len;
}

/* While the platform thinks, the worker stays alive to the dispatcher. */
static int transform_claim_progress(void *ctx, curl_off_t dt, curl_off_t dn, curl_off_t ut,
                                    curl_off_t un)
{
    struct transform *tf = ctx;

    (void)dt, (void)dn, (void)ut, (void)un;
    if (tf->idle)
        tf->idle(tf->idle_ctx);
    return 0;
}

void transform_claim_post(struct transform *tf, const struct claim_request *r,
                          struct claim_answer *a)
{
    g_autofree char *body = transform_claim_body(r);
    g_autofree char *sig_hdr = NULL, *id_hdr = NULL;
    char sig[SIGNATURE_LEN + 1], errbuf[CURL_ERROR_SIZE] = "";
    struct claim_reply reply = { .body = g_string_new(NULL) };
    struct curl_slist *headers = NULL;
    CURL *easy = tf->claim_easy;
    CURLcode rc;
    long status = 0;
    gint64 start = g_get_monotonic_time();

    /* Options from scratch each time; the open connection stays. */
    curl_easy_reset(easy);
    /* The body is signed as sent: the platform checks the bytes it got. */
    signature_sign(tf->claim_secret, strlen(tf->claim_secret), body, strlen(body), sig);
    sig_hdr = g_strdup_printf("X-Postern-Signature: %s", sig);
    id_hdr = g_strdup_printf("X-Postern-Queue-Id: %s", r->queue_id);
    headers = curl_slist_append(headers, "Content-Type: application/json");
    headers = curl_slist_append(headers, sig_hdr);
    headers = curl_slist_append(headers, id_hdr);
    headers = curl_slist_append(headers, "Expect:");
    curl_easy_setopt(easy, CURLOPT_URL, tf->cfg->token.claim_url);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)tf->cfg->token.claim_timeout * 1000);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, body);
    curl_easy_setopt(easy, CURLOPT_USERAGENT, "postern-transform");
    if (*tf->cfg->token.claim_ca_file)
        curl_easy_setopt(easy, CURLOPT_CAINFO, tf->cfg->token.claim_ca_file);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, transform_claim_keep);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &reply);
    curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, transform_claim_progress);
    curl_easy_setopt(easy, CURLOPT_XFERINFODATA, tf);
    curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
    rc = curl_easy_perform(easy);
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    if (rc != CURLE_OK)
        transform_claim_retry(a, g_strdup(*errbuf ? errbuf : curl_easy_strerror(rc)));
    else if (reply.too_long)
        transform_claim_retry(a, g_strdup_printf("status %ld: answer over %d bytes", status,
                                                 CLAIM_REPLY_MAX));
    else
        transform_claim_parse(status, reply.body->str, reply.body->len, a);
    /*
     * The claim's round trip as the mail waits for it, from before the
     * body is signed to the answer read: a slow platform shows here first
     * (bench/api.sh takes its percentiles from these lines).
     */
    msg_info("claim: %s: %s in %.2f ms", r->queue_id,
             a->kind == CLAIM_GRANTED ? "granted"
             : a->kind == CLAIM_REFUSED ? a->reason : "no decision",
             (double)(g_get_monotonic_time() - start) / 1000.0);
    curl_slist_free_all(headers);
    g_string_free(reply.body, TRUE);
}
