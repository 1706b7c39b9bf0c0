/*
 * bounce_parse.h - what a message sent to a VERP bounce address says
 * ([bounce] verp; docs/design.md, "Bounces and suppression").
 *
 * A delivery status notification in RFC 3464 form (multipart/report with a
 * message/delivery-status part: Action failed with Status 5.x.x is hard,
 * Status 4.x.x or Action delayed is soft), or one of the plain-text forms
 * common MTAs still send: Postfix ("This is the mail system at host"),
 * Exim ("This message was created automatically by mail delivery
 * software"), Gmail ("Delivery Status Notification (Failure)", "Address
 * not found") and Microsoft ("Delivery has failed to these recipients or
 * groups").  From those the failed recipient and the status code are taken
 * when the text has them; a plain-text failure without a code is hard,
 * one that says it is delayed soft.
 *
 * Auto-replies (Auto-Submitted: auto-replied, X-Autoreply, X-Autorespond,
 * Precedence auto_reply, or Precedence bulk/junk with a vacation subject)
 * are BOUNCE_AUTOREPLY: the caller ignores them.  A DSN is looked for
 * first, since some MTAs (Exim) mark their DSNs auto-replied too.
 *
 * Pure, on GMime (mime_init() first): no spool, no I/O, no logging.
 */
#ifndef POSTERN_BOUNCE_PARSE_H
#define POSTERN_BOUNCE_PARSE_H

#include <glib.h>
#include <gmime/gmime.h>

enum bounce_kind {
    BOUNCE_UNKNOWN,                 /* neither a bounce nor an auto-reply we know */
    BOUNCE_HARD,                    /* permanent failure: counts 1 */
    BOUNCE_SOFT,                    /* transient failure or delay: counts 0.5 */
    BOUNCE_AUTOREPLY,               /* vacation and the like: ignored */
};

struct bounce_info {
    enum bounce_kind kind;
    const char *format;             /* "rfc3464", "postfix", "exim", "gmail", "microsoft",
                                     * "autoreply", or NULL: static text */
    char *rcpt;                     /* the failed recipient, or NULL when not given */
    char *status;                   /* "5.1.1", or NULL when not given */
};

const char *bounce_kind_name(enum bounce_kind k);

/* Read msg into *out (cleared first); never fails, at worst BOUNCE_UNKNOWN. */
void bounce_parse(GMimeMessage *msg, struct bounce_info *out);
/* The same from raw bytes (as stored by ingest); unparseable is BOUNCE_UNKNOWN. */
void bounce_parse_raw(const char *raw, size_t len, struct bounce_info *out);
void bounce_info_clear(struct bounce_info *b);

#endif
