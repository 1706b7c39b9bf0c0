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
#include "common/clock.h"
#include "spool/spool_events.h"
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

struct sup_change {
    const char *list, *addr;
    char *reason;
    gboolean add;
    double threshold;
    gboolean changed;
};

static gboolean sup_change_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct sup_change *ch = ctx;

    if (ch->add)
        return spool_suppress_add(t, ch->list, ch->addr, ch->reason, EVENT_ADDRESS_SUPPRESSED,
                                  unix_ms() / 1000, ch->threshold, &ch->changed, err);
    return spool_suppress_remove(t, ch->list, ch->addr, &ch->changed, err);
}

static void sup_change(struct api *a, struct api_request *rq, struct api_response *rs,
                       gboolean add)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    struct sup_change ch = {
        .list = rq->parts[2], .addr = rq->parts[3], .add = add,
        .threshold = (double)a->cfg->bounce.score_threshold,
        .reason = g_strdup_printf("added by api key %s", rq->key_name),
    };
    GError *err = NULL;

    if (!sup_list_known(a, ch.list, rs))
        goto out;
    /* The test of every address the spool stores (spool_token.h). */
    if (!spool_token_addr_valid(ch.addr)) {
        api_reply_error(rs, 400, "invalid", "<%s> is not an address", ch.addr);
        goto out;
    }
    if (!spool_write(a->spool, sup_change_write, &ch, &err)) {
        api_reply_spool_error(rs, err);
        g_error_free(err);
        goto out;
    }
    if (!add && !ch.changed) {
        api_reply_error(rs, 404, "not_found", "<%s> is not on list %s", ch.addr, ch.list);
        goto out;
    }
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "list");
    json_builder_add_string_value(b, ch.list);
    json_builder_set_member_name(b, "address");
    json_builder_add_string_value(b, ch.addr);
    json_builder_set_member_name(b, add ? "added" : "removed");
    json_builder_add_boolean_value(b, ch.changed);
    json_builder_end_object(b);
    api_reply_json(rs, 200, b);
out:
    g_free(ch.reason);
}

void api_suppress_put(struct api *a, struct api_request *rq, struct api_response *rs)
{
    sup_change(a, rq, rs, TRUE);
}

void api_suppress_delete(struct api *a, struct api_request *rq, struct api_response *rs)
{
    sup_change(a, rq, rs, FALSE);
}
