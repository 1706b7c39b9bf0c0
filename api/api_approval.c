/*
 * api_approval.c - approval of held messages ([list NAME] approval;
 * docs/operations.md, "Approval"):
 *
 *   GET  /a/<code>                  the moderator's page: what waits, and
 *                                   two buttons; it never acts, since mail
 *                                   scanners fetch the links they see
 *   POST /a/<code>  action=...      approve or discard (a form post)
 *   POST /v1/messages/{id}/approve  the same for the platform (scope tokens)
 *   POST /v1/messages/{id}/discard
 *
 * The code is the key: no bearer key on /a/.  One that does not verify
 * (common/approval_code.h) is 404 and changes nothing.  The moves are
 * spool/spool_steer.h's, one write transaction each, as spoolctl's.
 */
#include "api/api.h"
#include "common/approval_code.h"
#include "common/log.h"
#include "spool/spool_steer.h"

#include <string.h>

enum approval_action { APPROVAL_APPROVE, APPROVAL_DISCARD };

/*
 * What the moderator reads about a message, in its list's language (the
 * notice's).  A link that names no message (a bad code, a message since
 * removed) gets English: there is no list to ask.
 */
struct approval_texts {
    const char *lang;
    const char *ask_title;
    const char *queue_id, *from, *received, *waits;     /* "Queue id X from <Y>, received Z, ..." */
    const char *approve, *discard;  /* the buttons */
    const char *done_title, *decided_title;
    const char *expired, *discarded, *delivered, *on_their_way;
};

static const struct approval_texts approval_en = {
    .lang = "en",
    .ask_title = "Approve or discard",
    .queue_id = "Queue id",
    .from = "from",
    .received = "received",
    .waits = "waits for your decision.",
    .approve = "Approve: send it",
    .discard = "Discard it",
    .done_title = "Done",
    .decided_title = "Already decided",
    .expired = "<p>Nobody decided in time: the message was discarded.</p>\n",
    .discarded = "<p>The message was discarded: no copy was sent.</p>\n",
    .delivered = "<p>The message was approved: its copies are delivered.</p>\n",
    .on_their_way = "<p>The message was approved: its copies are on their way.</p>\n",
};

static const struct approval_texts approval_nb = {
    .lang = "nb",
    .ask_title = "Godkjenn eller forkast",
    .queue_id = "Kø-id",
    .from = "fra",
    .received = "mottatt",
    .waits = "venter på din avgjørelse.",
    .approve = "Godkjenn: send den",
    .discard = "Forkast den",
    .done_title = "Utført",
    .decided_title = "Allerede avgjort",
    .expired = "<p>Ingen avgjorde i tide: meldingen ble forkastet.</p>\n",
    .discarded = "<p>Meldingen ble forkastet: ingen kopi ble sendt.</p>\n",
    .delivered = "<p>Meldingen ble godkjent: kopiene er levert.</p>\n",
    .on_their_way = "<p>Meldingen ble godkjent: kopiene er på vei.</p>\n",
};

struct approval_move {
    const struct postern_config *cfg;
    queue_id id;
    enum approval_action action;
    const char *who;
    gboolean changed;
    enum msg_state state;           /* after the move */
    char *reason;                   /* after the move */
    gint64 arrival;
    char *sender;
    const struct approval_texts *tx;    /* the language of the message's list */
};

static void approval_move_clear(struct approval_move *mv)
{
    g_clear_pointer(&mv->reason, g_free);
    g_clear_pointer(&mv->sender, g_free);
}

/* Read message mv->id; with act, approve or discard it first. */
static gboolean approval_move_write(struct spool_txn *t, struct approval_move *mv,
                                    gboolean act, GError **err)
{
    struct spool_msg m;
    GError *local = NULL;

    /* spool_write() runs this again after growing the map: nothing of a first run stays. */
    approval_move_clear(mv);
    if (!spool_msg_get(t, mv->id, &m, err))
        return FALSE;
    if (act && mv->action == APPROVAL_APPROVE)
        mv->changed = spool_msg_approve(t, &m, mv->who, &local);
    else if (act)
        mv->changed = spool_msg_discard(t, &m, SPOOL_DISCARDED, mv->who, &local);
    mv->state = m.state;
    mv->reason = g_strdup(m.reason);
    mv->arrival = m.arrival;
    mv->sender = g_strdup(m.sender);
    mv->tx = g_str_equal(config_list_of(mv->cfg, (char **)m.recipients->pdata,
                                        m.recipients->len)->language, "nb")
                 ? &approval_nb : &approval_en;
    spool_msg_clear(&m);
    if (local) {
        g_propagate_error(err, local);
        return FALSE;
    }
    return TRUE;
}

static gboolean approval_act(struct spool_txn *t, void *ctx, GError **err)
{
    return approval_move_write(t, ctx, TRUE, err);
}

/* ---- the moderator's page ------------------------------------------------ */

static void approval_html(struct api_response *rs, unsigned status, const char *lang,
                          const char *title, const char *body)
{
    rs->status = status;
    rs->content_type = "text/html; charset=utf-8";
    g_string_printf(rs->body, "<!DOCTYPE html>\n<html lang=\"%s\"><head><meta charset=\"utf-8\">"
                    "<meta name=\"robots\" content=\"noindex\"><title>%s</title></head>\n"
                    "<body><h1>%s</h1>\n%s</body></html>\n", lang, title, title, body);
}

/* The message the code in /a/<code> names, or FALSE with the 404 page. */
static gboolean approval_code_id(struct api *a, struct api_request *rq,
                                 struct api_response *rs, queue_id *id)
{
    const char *code = rq->parts[1];

    if (a->approval && approval_code_check(a->approval_key, code, strlen(code), id))
        return TRUE;
    approval_html(rs, 404, "en", "Link not valid",
                  "<p>This approval link is not one Postern made, or it was damaged. "
                  "Copy the whole link from the notice.</p>\n");
    return FALSE;
}

/* Spool errors as a page: a gone message is 404, the rest 500 or 503. */
static void approval_page_error(struct api_response *rs, GError *err)
{
    if (g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND))
        approval_html(rs, 404, "en", "Message gone", "<p>The message was removed from the "
                      "queue.</p>\n");
    else
        approval_html(rs, g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_FULL) ? 503 : 500, "en",
                      "Try again later", "<p>The queue could not be read or written.</p>\n");
    msg_warn("approval: %s", err->message);
    g_error_free(err);
}

/* What the page says of a message that no longer waits. */
static const char *approval_outcome(const struct approval_move *mv)
{
    if (mv->state == MSG_REJECTED && g_strcmp0(mv->reason, SPOOL_APPROVAL_EXPIRED) == 0)
        return mv->tx->expired;
    if (mv->state == MSG_REJECTED)
        return mv->tx->discarded;
    return mv->state == MSG_DONE ? mv->tx->delivered : mv->tx->on_their_way;
}

void api_approval_page(struct api *a, struct api_request *rq, struct api_response *rs)
{
    struct approval_move mv = { .cfg = a->cfg };
    struct spool_txn t;
    GError *err = NULL;
    gboolean ok;

    if (!approval_code_id(a, rq, rs, &mv.id))
        return;
    ok = spool_read_begin(a->spool, &t, &err) && approval_move_write(&t, &mv, FALSE, &err);
    spool_read_end(&t);
    if (!ok) {
        approval_page_error(rs, err);
    } else if (mv.state == MSG_HOLD && g_strcmp0(mv.reason, SPOOL_AWAITING_APPROVAL) == 0) {
        char id[QUEUE_ID_LEN + 1];
        g_autoptr(GDateTime) when = g_date_time_new_from_unix_utc(mv.arrival);
        g_autofree char *date = g_date_time_format(when, "%Y-%m-%d %H:%M:%S UTC");
        g_autofree char *sender = g_markup_escape_text(mv.sender ? mv.sender : "", -1);
        g_autoptr(GString) body = g_string_new(NULL);

        spool_id_format(mv.id, id);
        g_string_printf(body, "<p>%s %s %s &lt;%s&gt;, %s %s, %s</p>\n", mv.tx->queue_id, id,
                        mv.tx->from, sender, mv.tx->received, date, mv.tx->waits);
        g_string_append_printf(body, "<form method=\"post\">\n"
            "<button type=\"submit\" name=\"action\" value=\"approve\">%s</button>\n"
            "<button type=\"submit\" name=\"action\" value=\"discard\">%s</button>\n"
            "</form>\n", mv.tx->approve, mv.tx->discard);
        approval_html(rs, 200, mv.tx->lang, mv.tx->ask_title, body->str);
    } else {
        approval_html(rs, 200, mv.tx->lang, mv.tx->decided_title, approval_outcome(&mv));
    }
    approval_move_clear(&mv);
}

/* action=approve|discard from a form body (application/x-www-form-urlencoded). */
static gboolean approval_form_action(struct api_request *rq, enum approval_action *out)
{
    g_autofree char *text = g_strndup((const char *)rq->body->data, rq->body->len);
    g_autoptr(GHashTable) form = g_uri_parse_params(text, -1, "&", G_URI_PARAMS_WWW_FORM, NULL);
    const char *action = form ? g_hash_table_lookup(form, "action") : NULL;

    if (g_strcmp0(action, "approve") == 0)
        *out = APPROVAL_APPROVE;
    else if (g_strcmp0(action, "discard") == 0)
        *out = APPROVAL_DISCARD;
    else
        return FALSE;
    return TRUE;
}

void api_approval_act(struct api *a, struct api_request *rq, struct api_response *rs)
{
    struct approval_move mv = { .cfg = a->cfg, .who = "link" };
    GError *err = NULL;

    if (!approval_code_id(a, rq, rs, &mv.id))
        return;
    if (!approval_form_action(rq, &mv.action)) {
        approval_html(rs, 400, "en", "Nothing done", "<p>Choose approve or discard on the page "
                      "the link opens.</p>\n");
        return;
    }
    if (!spool_write(a->spool, approval_act, &mv, &err)) {
        approval_page_error(rs, err);
    } else {
        approval_html(rs, mv.changed ? 200 : 409, mv.tx->lang,
                      mv.changed ? mv.tx->done_title : mv.tx->decided_title,
                      approval_outcome(&mv));
    }
    approval_move_clear(&mv);
}

/* ---- the platform: POST /v1/messages/{id}/approve|discard ----------------- */

static void approval_platform(struct api *a, struct api_request *rq, struct api_response *rs,
                              enum approval_action action)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autofree char *who = g_strdup_printf("api key %s", rq->key_name);
    struct approval_move mv = { .cfg = a->cfg, .action = action, .who = who };
    GError *err = NULL;

    if (!api_message_path_id(rq, rs, &mv.id))
        return;
    if (!spool_write(a->spool, approval_act, &mv, &err)) {
        api_reply_spool_error(rs, err);
        g_error_free(err);
        return;
    }
    if (!mv.changed) {
        api_reply_error(rs, 409, "conflict", "message %s is %s%s%s: only a message awaiting "
                        "approval can be approved or discarded", rq->parts[2],
                        msg_state_name(mv.state), mv.reason ? ", " : "",
                        mv.reason ? mv.reason : "");
    } else {
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "id");
        json_builder_add_string_value(b, rq->parts[2]);
        json_builder_set_member_name(b, "state");
        json_builder_add_string_value(b, msg_state_name(mv.state));
        json_builder_end_object(b);
        api_reply_json(rs, 200, b);
    }
    approval_move_clear(&mv);
}

void api_message_approve(struct api *a, struct api_request *rq, struct api_response *rs)
{
    approval_platform(a, rq, rs, APPROVAL_APPROVE);
}

void api_message_discard(struct api *a, struct api_request *rq, struct api_response *rs)
{
    approval_platform(a, rq, rs, APPROVAL_DISCARD);
}
