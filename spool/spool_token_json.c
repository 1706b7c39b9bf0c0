/*
 * spool_token_json.c - see spool_token_json.h.
 */
#include "spool/spool_token_json.h"

static gboolean token_json_invalid(GError **err, const char *what)
{
    g_set_error(err, SPOOL_ERROR, SPOOL_ERR_INVALID, "%s", what);
    return FALSE;
}

/* "expires": a unix time (number), a duration or an ISO 8601 time (string), or none. */
static gboolean token_json_expires(JsonNode *node, int64_t now, int64_t *out, GError **err)
{
    if (!node || JSON_NODE_HOLDS_NULL(node)) {
        *out = 0;
        return TRUE;
    }
    if (json_node_get_value_type(node) == G_TYPE_INT64) {
        *out = json_node_get_int(node);
        return TRUE;
    }
    if (json_node_get_value_type(node) != G_TYPE_STRING)
        return token_json_invalid(err, "bad \"expires\": a number, a duration or a date");
    return spool_token_parse_expires(json_node_get_string(node), now, out, err);
}

static gboolean token_json_is_string(JsonNode *node)
{
    return node && JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_STRING;
}

gboolean spool_token_from_json(JsonNode *node, int64_t now, const struct postern_config *cfg,
                               struct spool_token *tk, char **text, GError **err)
{
    JsonObject *o = JSON_NODE_HOLDS_OBJECT(node) ? json_node_get_object(node) : NULL;
    JsonNode *rnode = o ? json_object_get_member(o, "recipients") : NULL;
    JsonNode *given = o ? json_object_get_member(o, "token") : NULL;
    JsonNode *hide = o ? json_object_get_member(o, "hide_sender") : NULL;
    JsonNode *list = o ? json_object_get_member(o, "list") : NULL;
    JsonArray *rcpts = rnode && JSON_NODE_HOLDS_ARRAY(rnode) ? json_node_get_array(rnode) : NULL;

    *text = NULL;
    /* The shape first: the checks of spool_token_prepare() need strings. */
    if (!o || !rcpts || !token_json_is_string(json_object_get_member(o, "from")))
        return token_json_invalid(err, "needs \"from\" (string) and \"recipients\" (array)");
    tk->sender = g_strdup(json_object_get_string_member(o, "from"));
    for (guint r = 0; r < json_array_get_length(rcpts); r++) {
        if (!token_json_is_string(json_array_get_element(rcpts, r))) {
            g_set_error(err, SPOOL_ERROR, SPOOL_ERR_INVALID, "recipient %u is not a string", r);
            return FALSE;
        }
        g_ptr_array_add(tk->recipients, g_strdup(json_array_get_string_element(rcpts, r)));
    }
    if (hide && !JSON_NODE_HOLDS_NULL(hide) &&
        !(JSON_NODE_HOLDS_VALUE(hide) && json_node_get_value_type(hide) == G_TYPE_BOOLEAN))
        return token_json_invalid(err, "bad \"hide_sender\": true or false");
    tk->hide_sender = hide && JSON_NODE_HOLDS_VALUE(hide) && json_node_get_boolean(hide);
    /* The list it sends to (spool_token_prepare() knows whether it exists). */
    if (list && !JSON_NODE_HOLDS_NULL(list)) {
        if (!token_json_is_string(list))
            return token_json_invalid(err, "\"list\" must be a string");
        tk->list = g_strdup(json_node_get_string(list));
    }
    if (!token_json_expires(json_object_get_member(o, "expires"), now, &tk->expires, err))
        return FALSE;
    /* A token the caller chose (to hand it out before it is registered). */
    if (given && !JSON_NODE_HOLDS_NULL(given)) {
        if (!token_json_is_string(given))
            return token_json_invalid(err, "\"token\" must be a string");
        if (!spool_token_text_valid(json_node_get_string(given), err))
            return FALSE;
        *text = g_strdup(json_node_get_string(given));
    } else {
        *text = spool_token_generate();
    }
    return spool_token_prepare(tk, *text, now, cfg, err);
}

void spool_token_to_json(JsonBuilder *b, const struct spool_token *tk, int64_t now,
                         gboolean with_rcpts)
{
    char id[TOKEN_ID_LEN + 1];

    spool_token_id(tk->hash, id);
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "id");
    json_builder_add_string_value(b, id);
    json_builder_set_member_name(b, "status");
    json_builder_add_string_value(b, spool_token_status_name(spool_token_status(tk, now)));
    json_builder_set_member_name(b, "from");
    json_builder_add_string_value(b, tk->sender);
    json_builder_set_member_name(b, "list");
    json_builder_add_string_value(b, tk->list ? tk->list : CONFIG_LIST_DEFAULT);
    json_builder_set_member_name(b, "hide_sender");
    json_builder_add_boolean_value(b, tk->hide_sender);
    json_builder_set_member_name(b, "created");
    json_builder_add_int_value(b, tk->created);
    json_builder_set_member_name(b, "expires");
    if (tk->expires)
        json_builder_add_int_value(b, tk->expires);
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "used");
    if (tk->used)
        json_builder_add_int_value(b, tk->used);
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "message");
    if (tk->used_by) {
        char qid[QUEUE_ID_LEN + 1];
        spool_id_format(tk->used_by, qid);
        json_builder_add_string_value(b, qid);
    } else {
        json_builder_add_null_value(b);
    }
    json_builder_set_member_name(b, "nrcpt");
    json_builder_add_int_value(b, tk->recipients->len);
    if (with_rcpts) {
        json_builder_set_member_name(b, "recipients");
        json_builder_begin_array(b);
        for (guint i = 0; i < tk->recipients->len; i++)
            json_builder_add_string_value(b, tk->recipients->pdata[i]);
        json_builder_end_array(b);
    }
    json_builder_end_object(b);
}
