/*
 * api_tokens.c - /v1/tokens: register (one or a batch), read, revoke,
 * replace the recipients of an unused token.  The checks are the spool's
 * (spool_token_from_json(), spool_token_prepare()), as for spoolctl.
 */
#include "api/api.h"
#include "common/clock.h"
#include "common/log.h"
#include "spool/spool_token.h"
#include "spool/spool_token_json.h"

#include <string.h>

static void tok_free(gpointer p)
{
    spool_token_clear(p);
    g_free(p);
}

/* A token id in a path: the 16 hex digits `spoolctl token list` shows. */
static gboolean tok_path_id(struct api_request *rq, struct api_response *rs)
{
    const char *id = rq->parts[2];
    size_t n = strlen(id);

    for (size_t i = 0; i < n; i++)
        if (!g_ascii_isxdigit(id[i]))
            n = 0;
    if (n != TOKEN_ID_LEN) {
        api_reply_error(rs, 404, "not_found", "no token %s (an id is %d hex digits)", id,
                        TOKEN_ID_LEN);
        return FALSE;
    }
    return TRUE;
}

/* POST /v1/tokens */

/* One request's tokens, checked, waiting for the commit it shares. */
struct api_token_batch {
    GPtrArray *tokens;              /* struct spool_token * */
    GPtrArray *texts;               /* the token of each, as given or made */
    GArray *generated;              /* gboolean: made here, so told once in the answer */
    gboolean array;                 /* the body was an array: so is the answer */
    const char *key_name;
    struct api_response *rs;        /* where its answer goes */
    char *conflict;                 /* a token of it is registered already: 409, why */
};

void api_token_batch_free(struct api_token_batch *tb)
{
    g_ptr_array_unref(tb->tokens);
    g_ptr_array_unref(tb->texts);
    g_array_unref(tb->generated);
    g_free(tb->conflict);
    g_free(tb);
}

static guint tok_hash_hash(gconstpointer p)
{
    guint h;

    memcpy(&h, p, sizeof(h));
    return h;
}

static gboolean tok_hash_equal(gconstpointer a, gconstpointer b)
{
    return memcmp(a, b, TOKEN_HASH_LEN) == 0;
}

/*
 * Is one of the request's tokens registered already (by an earlier
 * request, maybe one in this same transaction), or given twice in it?
 * Asked before any of its tokens is written, so that a refused request
 * leaves nothing behind in a transaction that others share.
 */
static gboolean tok_create_conflict(struct spool_txn *t, struct api_token_batch *tb)
{
    g_autoptr(GHashTable) seen = g_hash_table_new(tok_hash_hash, tok_hash_equal);

    for (guint i = 0; i < tb->tokens->len; i++) {
        struct spool_token *tk = tb->tokens->pdata[i], old;
        gboolean found = !g_hash_table_add(seen, tk->hash);
        char id[TOKEN_ID_LEN + 1];

        if (!found && spool_token_get(t, tk->hash, &old, NULL)) {
            spool_token_clear(&old);
            found = TRUE;
        }
        if (found) {
            spool_token_id(tk->hash, id);
            tb->conflict = g_strdup_printf("entry %u: token %s is registered already", i, id);
            return TRUE;
        }
    }
    return FALSE;
}

static gboolean tok_create_write(struct spool_txn *t, void *ctx, GError **err)
{
    GPtrArray *batches = ctx;

    for (guint b = 0; b < batches->len; b++) {
        struct api_token_batch *tb = batches->pdata[b];

        g_clear_pointer(&tb->conflict, g_free);     /* from a run before a map growth */
        if (tok_create_conflict(t, tb))
            continue;
        for (guint i = 0; i < tb->tokens->len; i++) {
            struct spool_token *tk = tb->tokens->pdata[i];
            char id[TOKEN_ID_LEN + 1];

            if (!spool_token_insert(t, tk, err))
                return FALSE;
            spool_token_id(tk->hash, id);
            spool_txn_log(t, "token %s: registered, owner=<%s>, nrcpt=%u, api key %s", id,
                          tk->sender, tk->recipients->len, tb->key_name);
        }
    }
    return TRUE;
}

struct api_token_batch *api_token_prepare(struct api *a, struct api_request *rq,
                                          struct api_response *rs)
{
    g_autoptr(JsonNode) root = api_body_json(rq, rs);
    struct api_token_batch *tb;
    GError *err = NULL;
    guint n;

    if (!root)
        return NULL;
    if (!JSON_NODE_HOLDS_ARRAY(root) && !JSON_NODE_HOLDS_OBJECT(root)) {
        api_reply_error(rs, 400, "invalid", "expected a token object or an array of them");
        return NULL;
    }
    tb = g_new0(struct api_token_batch, 1);
    tb->tokens = g_ptr_array_new_with_free_func(tok_free);
    tb->texts = g_ptr_array_new_with_free_func(g_free);
    tb->generated = g_array_new(FALSE, TRUE, sizeof(gboolean));
    tb->array = JSON_NODE_HOLDS_ARRAY(root);
    tb->key_name = rq->key_name;
    tb->rs = rs;
    n = tb->array ? json_array_get_length(json_node_get_array(root)) : 1;
    if (!n) {
        api_reply_error(rs, 400, "invalid", "an empty array registers nothing");
        api_token_batch_free(tb);
        return NULL;
    }
    /* Every entry is checked before anything is written. */
    for (guint i = 0; i < n; i++) {
        JsonNode *node = tb->array ? json_array_get_element(json_node_get_array(root), i) : root;
        JsonObject *o = JSON_NODE_HOLDS_OBJECT(node) ? json_node_get_object(node) : NULL;
        JsonNode *given = o ? json_object_get_member(o, "token") : NULL;
        gboolean gen = !given || JSON_NODE_HOLDS_NULL(given);
        struct spool_token *tk = g_new0(struct spool_token, 1);
        char *text = NULL;

        spool_token_init(tk);
        g_ptr_array_add(tb->tokens, tk);
        if (!spool_token_from_json(node, unix_ms() / 1000, a->cfg, tk, &text, &err)) {
            g_free(text);
            if (tb->array)
                api_reply_error(rs, 400, "invalid", "entry %u: %s", i, err->message);
            else
                api_reply_error(rs, 400, "invalid", "%s", err->message);
            g_error_free(err);
            api_token_batch_free(tb);
            return NULL;
        }
        g_ptr_array_add(tb->texts, text);
        g_array_append_val(tb->generated, gen);
    }
    return tb;
}

/* 201 with the ids (and the tokens we made), once the commit is on disk. */
static void tok_create_answer(struct api_token_batch *tb)
{
    g_autoptr(JsonBuilder) b = json_builder_new();

    if (tb->array) {
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "tokens");
        json_builder_begin_array(b);
    }
    for (guint i = 0; i < tb->tokens->len; i++) {
        struct spool_token *tk = tb->tokens->pdata[i];
        char id[TOKEN_ID_LEN + 1];

        spool_token_id(tk->hash, id);
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "id");
        json_builder_add_string_value(b, id);
        /* The token itself only when we made it: the caller who chose one knows it. */
        if (g_array_index(tb->generated, gboolean, i)) {
            json_builder_set_member_name(b, "token");
            json_builder_add_string_value(b, tb->texts->pdata[i]);
        }
        json_builder_set_member_name(b, "nrcpt");
        json_builder_add_int_value(b, tk->recipients->len);
        json_builder_end_object(b);
    }
    if (tb->array) {
        json_builder_end_array(b);
        json_builder_end_object(b);
    }
    api_reply_json(tb->rs, 201, b);
}

void api_token_commit(struct api *a, GPtrArray *batches)
{
    GError *err = NULL;

    /* One write transaction for them all: one wait for the disk instead of one each. */
    if (!spool_write(a->spool, tok_create_write, batches, &err)) {
        for (guint b = 0; b < batches->len; b++)
            api_reply_spool_error(((struct api_token_batch *)batches->pdata[b])->rs, err);
        g_error_free(err);
        return;
    }
    for (guint b = 0; b < batches->len; b++) {
        struct api_token_batch *tb = batches->pdata[b];

        if (tb->conflict)
            api_reply_error(tb->rs, 409, "conflict", "%s", tb->conflict);
        else
            tok_create_answer(tb);
    }
}

void api_token_create(struct api *a, struct api_request *rq, struct api_response *rs)
{
    struct api_token_batch *tb = api_token_prepare(a, rq, rs);
    g_autoptr(GPtrArray) one = g_ptr_array_new_with_free_func((GDestroyNotify)api_token_batch_free);

    if (!tb)
        return;
    g_ptr_array_add(one, tb);
    api_token_commit(a, one);
}

/* GET /v1/tokens/{id} */

void api_token_get(struct api *a, struct api_request *rq, struct api_response *rs)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    struct spool_token tk;
    struct spool_txn t;
    GError *err = NULL;

    if (!tok_path_id(rq, rs))
        return;
    if (!spool_read_begin(a->spool, &t, &err) || !spool_token_find(&t, rq->parts[2], &tk, &err)) {
        spool_read_end(&t);
        api_reply_spool_error(rs, err);
        g_error_free(err);
        return;
    }
    spool_read_end(&t);
    spool_token_to_json(b, &tk, unix_ms() / 1000, FALSE);
    spool_token_clear(&tk);
    api_reply_json(rs, 200, b);
}

/* DELETE /v1/tokens/{id}, PUT /v1/tokens/{id}/recipients */

struct tok_change {
    const char *id;
    const char *key_name;
    GPtrArray *recipients;          /* NULL: revoke */
    const struct postern_config *cfg;   /* the token's list: its cap */
    struct spool_token result;
    gboolean conflict;
};

static gboolean tok_change_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct tok_change *tc = ctx;
    struct spool_token *tk = &tc->result;
    char id[TOKEN_ID_LEN + 1];

    spool_token_clear(tk);          /* from a run before a map growth */
    tc->conflict = FALSE;
    if (!spool_token_find(t, tc->id, tk, err))
        return FALSE;
    spool_token_id(tk->hash, id);
    if (!tc->recipients) {
        tk->revoked = TRUE;
        spool_txn_log(t, "token %s: revoked, owner=<%s>, api key %s", id, tk->sender,
                      tc->key_name);
        return spool_token_update(t, tk, err);
    }
    /* Once used (or revoked, or expired) the list is history: 409. */
    if (spool_token_status(tk, unix_ms() / 1000) != TOKEN_ACTIVE) {
        tc->conflict = TRUE;
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_INVALID, "token %s is %s: its recipients stay",
                    id, spool_token_status_name(spool_token_status(tk, unix_ms() / 1000)));
        return FALSE;
    }
    struct spool_token check;
    gboolean ok;

    /* The rules of a new token (spool_token_prepare()), on a copy: hash and dates stay. */
    spool_token_init(&check);
    check.sender = g_strdup(tk->sender);
    check.expires = tk->expires;
    check.list = g_strdup(tk->list);
    for (guint i = 0; i < tc->recipients->len; i++)
        g_ptr_array_add(check.recipients, g_strdup(tc->recipients->pdata[i]));
    ok = spool_token_prepare(&check, "-", unix_ms() / 1000, tc->cfg, err);
    if (ok) {
        g_ptr_array_unref(tk->recipients);
        tk->recipients = g_ptr_array_ref(check.recipients);
        spool_txn_log(t, "token %s: recipients replaced, owner=<%s>, nrcpt=%u, api key %s", id,
                      tk->sender, tk->recipients->len, tc->key_name);
        ok = spool_token_update(t, tk, err);
    }
    spool_token_clear(&check);
    return ok;
}

static void tok_change(struct api *a, struct api_request *rq, struct api_response *rs,
                       GPtrArray *recipients)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    struct tok_change tc = { rq->parts[2], rq->key_name, recipients, a->cfg };
    GError *err = NULL;

    spool_token_init(&tc.result);
    if (!spool_write(a->spool, tok_change_write, &tc, &err)) {
        if (tc.conflict)
            api_reply_error(rs, 409, "conflict", "%s", err->message);
        else
            api_reply_spool_error(rs, err);
        g_error_free(err);
    } else {
        spool_token_to_json(b, &tc.result, unix_ms() / 1000, FALSE);
        api_reply_json(rs, 200, b);
    }
    spool_token_clear(&tc.result);
}

void api_token_revoke(struct api *a, struct api_request *rq, struct api_response *rs)
{
    if (tok_path_id(rq, rs))
        tok_change(a, rq, rs, NULL);
}

void api_token_recipients(struct api *a, struct api_request *rq, struct api_response *rs)
{
    g_autoptr(JsonNode) root = NULL;
    g_autoptr(GPtrArray) rcpts = g_ptr_array_new_with_free_func(g_free);
    JsonNode *list = NULL;
    JsonArray *arr;

    if (!tok_path_id(rq, rs) || !(root = api_body_json(rq, rs)))
        return;
    /* {"recipients": [...]} or the bare array. */
    if (JSON_NODE_HOLDS_OBJECT(root))
        list = json_object_get_member(json_node_get_object(root), "recipients");
    else if (JSON_NODE_HOLDS_ARRAY(root))
        list = root;
    if (!list || !JSON_NODE_HOLDS_ARRAY(list)) {
        api_reply_error(rs, 400, "invalid", "expected {\"recipients\": [\"a@b\", ...]}");
        return;
    }
    arr = json_node_get_array(list);
    for (guint i = 0; i < json_array_get_length(arr); i++) {
        JsonNode *e = json_array_get_element(arr, i);
        if (!JSON_NODE_HOLDS_VALUE(e) || json_node_get_value_type(e) != G_TYPE_STRING) {
            api_reply_error(rs, 400, "invalid", "recipient %u is not a string", i);
            return;
        }
        g_ptr_array_add(rcpts, g_strdup(json_node_get_string(e)));
    }
    tok_change(a, rq, rs, rcpts);
}
