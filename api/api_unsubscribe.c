/*
 * api_unsubscribe.c - one-click unsubscribe (RFC 8058; docs/design.md §9):
 * the links of each copy's List-Unsubscribe, BASE/u/CODE.
 *
 *   POST /u/CODE   the address leaves the list the code names: one write
 *                  transaction for the suppression and its `unsubscribed`
 *                  event; again, it changes nothing and answers the same
 *   GET  /u/CODE   a page with a button that POSTs; it writes nothing,
 *                  as link scanners and previews fetch every GET
 *
 * No key and no cookie: the code is the authority (an HMAC under [bounce]
 * secret_file, common/unsub_code.h).  A code that does not verify is 404,
 * whether forged or damaged, with one log line and nothing written.
 * Answers are small HTML pages: a person may see them.
 */
#include "api/api.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/unsub_code.h"
#include "spool/spool_events.h"
#include "spool/spool_suppress.h"

#include <string.h>

/* The list and address a request's code names, or FALSE with the 404 page in rs. */
static gboolean api_unsub_code(struct api *a, struct api_request *rq, struct api_response *rs,
                               char **list, char **addr)
{
    const char *code = rq->parts[1];

    if (a->unsub_key && unsub_code_check(a->unsub_key, a->unsub_keylen, code, strlen(code), list,
                                         addr)) {
        if (config_list_find(a->cfg, *list))
            return TRUE;
        /* A list since taken out of the config: there is nothing to leave. */
        msg_warn("unsubscribe: %s /u/: code for <%s> on list %s, which the config no longer "
                 "has: 404", rq->method, *addr, *list);
        g_clear_pointer(list, g_free);
        g_clear_pointer(addr, g_free);
    } else {
        msg_warn("unsubscribe: %s /u/: bad code (%zu bytes): 404", rq->method, strlen(code));
    }
    rs->status = 404;
    rs->content_type = "text/html; charset=utf-8";
    g_string_assign(rs->body, "<!DOCTYPE html>\n<title>Unknown link</title>\n"
                    "<p>This unsubscribe link is not valid. Nothing was changed.</p>\n");
    return FALSE;
}

static void api_unsub_page(struct api_response *rs, const char *title, const char *text,
                           const char *form_action)
{
    rs->status = 200;
    rs->content_type = "text/html; charset=utf-8";
    g_string_printf(rs->body, "<!DOCTYPE html>\n<meta name=\"robots\" content=\"noindex\">\n"
                    "<title>%s</title>\n<p>%s</p>\n", title, text);
    if (form_action)
        g_string_append_printf(rs->body, "<form method=\"post\" action=\"%s\">"
                               "<input type=\"hidden\" name=\"List-Unsubscribe\" "
                               "value=\"One-Click\"><button type=\"submit\">Unsubscribe</button>"
                               "</form>\n", form_action);
}

void api_unsubscribe_page(struct api *a, struct api_request *rq, struct api_response *rs)
{
    g_autofree char *list = NULL, *addr = NULL, *text = NULL, *action = NULL;

    if (!api_unsub_code(a, rq, rs, &list, &addr))
        return;
    text = g_markup_printf_escaped("Stop mail from list %s to %s?", list, addr);
    /* Relative: the page is served under whatever base the link had. */
    action = g_markup_printf_escaped("%s", rq->parts[1]);
    api_unsub_page(rs, "Unsubscribe", text, action);
}

struct api_unsub_write {
    const char *list, *addr;
    double threshold;
    gboolean added;
};

static gboolean api_unsub_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct api_unsub_write *w = ctx;

    return spool_suppress_add(t, w->list, w->addr, "unsubscribed (one-click)", EVENT_UNSUBSCRIBED,
                              unix_ms() / 1000, w->threshold, &w->added, err);
}

void api_unsubscribe(struct api *a, struct api_request *rq, struct api_response *rs)
{
    g_autofree char *list = NULL, *addr = NULL, *text = NULL;
    struct api_unsub_write w = { 0 };
    GError *err = NULL;

    if (!api_unsub_code(a, rq, rs, &list, &addr))
        return;
    w.list = list;
    w.addr = addr;
    w.threshold = (double)a->cfg->bounce.score_threshold;
    if (!spool_write(a->spool, api_unsub_write, &w, &err)) {
        api_reply_spool_error(rs, err);
        g_error_free(err);
        return;
    }
    /* The first time, spool_suppress_add() logged it with the commit. */
    if (!w.added)
        msg_info("unsubscribe: <%s> list=%s: unsubscribed already", addr, list);
    text = g_markup_printf_escaped("%s will get no more mail from list %s.", addr, list);
    api_unsub_page(rs, "Unsubscribed", text, NULL);
}
