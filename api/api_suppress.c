/*
 * api_suppress.c - /v1/suppressions: the platform reads and edits the
 * suppression lists as the operator does with `spoolctl suppress`
 * (spool/spool_suppress.h; the record's JSON is spool_suppress_to_json()).
 *
 *   GET    /v1/suppressions[?list=NAME]        every record (of one list)
 *   PUT    /v1/suppressions/{list}/{address}   suppress now (idempotent)
 *   DELETE /v1/suppressions/{list}/{address}   copies go to it again
 *
 * A list the config does not know is 404: records there would be read by
 * nothing.  PUT writes an address.suppressed event, as spoolctl does.
 */
#include "api/api.h"
#include "spool/spool_suppress.h"
#include "spool/spool_suppress_json.h"
#include "spool/spool_token.h"

static gboolean sup_list_known(struct api *a, const char *list, struct api_response *rs)
{
    if (config_list_find(a->cfg, list))
        return TRUE;
    api_reply_error(rs, 404, "not_found", "no list %s in the config", list);
    return FALSE;
}

/* GET /v1/suppressions */

struct sup_rows {
    JsonBuilder *b;
    const char *list;               /* NULL: every list */
};

static gboolean sup_row(const struct spool_suppress *s, void *ctx)
{
    struct sup_rows *rows = ctx;

    if (!rows->list || g_str_equal(rows->list, s->list))
        spool_suppress_to_json(rows->b, s);
    return TRUE;
}

void api_suppress_list(struct api *a, struct api_request *rq, struct api_response *rs)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    struct sup_rows rows = { b, g_hash_table_lookup(rq->query, "list") };
    struct spool_txn t;
    GError *err = NULL;
    gboolean ok;

    if (rows.list && !sup_list_known(a, rows.list, rs))
        return;
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "suppressions");
    json_builder_begin_array(b);
    ok = spool_read_begin(a->spool, &t, &err) && spool_suppress_foreach(&t, sup_row, &rows, &err);
    spool_read_end(&t);
    if (!ok) {
        api_reply_spool_error(rs, err);
        g_error_free(err);
        return;
    }
    json_builder_end_array(b);
    json_builder_end_object(b);
    api_reply_json(rs, 200, b);
}

/* PUT and DELETE /v1/suppressions/{list}/{address} */

static void sup_change(struct api *a, struct api_request *rq, struct api_response *rs,
                       gboolean add)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autofree char *reason = g_strdup_printf("added by api key %s", rq->key_name);
    const char *list = rq->parts[2], *addr = rq->parts[3];
    gboolean changed = FALSE;
    GError *err = NULL;

    if (!sup_list_known(a, list, rs))
        return;
    /* The test of every address the spool stores (spool_token.h). */
    if (!spool_token_addr_valid(addr)) {
        api_reply_error(rs, 400, "invalid", "<%s> is not an address", addr);
        return;
    }
    if (!spool_suppress_change(a->spool, list, addr, add, reason,
                               (double)a->cfg->bounce.score_threshold, &changed, &err)) {
        api_reply_spool_error(rs, err);
        g_error_free(err);
        return;
    }
    if (!add && !changed) {
        api_reply_error(rs, 404, "not_found", "<%s> is not on list %s", addr, list);
        return;
    }
    spool_suppress_change_to_json(b, list, addr, add, changed);
    api_reply_json(rs, 200, b);
}

void api_suppress_put(struct api *a, struct api_request *rq, struct api_response *rs)
{
    sup_change(a, rq, rs, TRUE);
}

void api_suppress_delete(struct api *a, struct api_request *rq, struct api_response *rs)
{
    sup_change(a, rq, rs, FALSE);
}
