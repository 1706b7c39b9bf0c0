/*
 * MIME work of the transform (SPEC §4.1, §4.3-4.5), on GMime.
 *
 * mime.c     init, parse, the automatic-mail test, and the header/body split.
 * token.c    finds the token part and removes it.
 * rewrite.c  header rewrite and the one serialisation (CRLF, no To:).
 * footer.c   the footer, in place or as a part of its own.
 *
 * Pure: bytes in, bytes out, no spool, no sockets, no logging. Call
 * mime_init() once per process first. A GMimeMessage belongs to one thread
 * at a time. Text handed in (prefix, rewrite parameters) is UTF-8.
 */
#ifndef POSTERN_TRANSFORM_MIME_H
#define POSTERN_TRANSFORM_MIME_H

#include <stddef.h>
#include <glib.h>
#include <gmime/gmime.h>

#define MIME_ERROR (mime_error_quark())
GQuark  mime_error_quark(void);

enum mime_error {
    MIME_ERROR_PARSE,               /* GMime cannot make a message of the bytes */
    MIME_ERROR_PARAM,               /* an unusable rewrite parameter */
    MIME_ERROR_WRITE,               /* serialisation failed */
};

/* ---- mime.c ------------------------------------------------------------ */

/* Initialises GMime and its parser options; once per process, thread-safe. */
void    mime_init(void);

/*
 * Parses a message. The bytes are copied: raw may go away afterwards. Never
 * crashes on garbage (NUL bytes, 8-bit headers, long lines are all parsed);
 * returns NULL and MIME_ERROR_PARSE only when GMime finds no message at all,
 * such as empty input or input that does not start with a header.
 *
 * Where GMime and RFC 5322 readers part ways, the message is made to read
 * as those readers have it: a line in a part's header block that is no
 * header field starts that part's body (GMime would drop it), and every
 * multipart is written with its close delimiter, a preamble that ran to
 * the end of the input without its last line end doubled.
 */
GMimeMessage *mime_parse(const char *raw, size_t len, GError **err);

/*
 * The same without the copy, for large messages: the message refers into
 * raw, which must outlive it (unref the message first).
 */
GMimeMessage *mime_parse_array(GByteArray *raw, GError **err);

/*
 * TRUE for mail that must not be answered (no backscatter): delivery and
 * disposition reports (multipart/report, message/delivery-status),
 * Auto-Submitted other than "no", Precedence bulk/junk/list, mailing-list
 * mail (List-Id), as RFC 3834 §2 lists them.
 */
gboolean mime_is_automatic(GMimeMessage *msg);

/*
 * Splits a serialised message at its blank line: header_len counts the
 * header lines with their CRLFs (0 when the message starts with the blank
 * line), the body starts at body_offset. FALSE when there is no blank line.
 */
gboolean mime_split(const char *msg, size_t len, size_t *header_len, size_t *body_offset);

/* ---- token.c ----------------------------------------------------------- */

/*
 * SPEC §4.1: the token is in the first non-multipart part, depth first,
 * whose transfer-decoded content starts with prefix; the rest of that
 * content, with surrounding whitespace trimmed, is the token. Returns it
 * newly allocated and removes the part, with every multipart that this
 * leaves empty; a message that was only its token keeps an empty text/plain
 * body. Returns NULL, leaving msg as it was, when no part starts with the
 * prefix or when the token is empty or holds a NUL byte. Preambles and
 * epilogues are not parts; attached messages (message/rfc822) are not
 * searched, as their content starts with their own headers.
 */
char   *mime_token_extract(GMimeMessage *msg, const char *prefix);

/* ---- rewrite.c --------------------------------------------------------- */

struct rewrite_params {
    const char *from;               /* [rewrite] from, "Abakus <no-reply@abakus.no>" */
    gboolean use_original_sender;   /* allow_original_sender && !hide_sender */
    gboolean hide_sender;           /* no Reply-To, {sender} expands to nothing */
    const char *original_sender;    /* envelope sender address; NULL or "" for <> */
    const char *footer;             /* template with {sender}, {unsubscribe_url}; NULL or "": none */
    const char *unsubscribe_url;    /* NULL or "": no List-Unsubscribe headers */
    gboolean unsubscribe_per_copy;  /* the caller adds each copy's List-Unsubscribe: none here */
    const char *message_id_domain;  /* right-hand side of the new Message-ID */
    gint64  date;                   /* unix time for the Date header */
};

/*
 * SPEC §4.3-4.5, modifying msg. A top-level multipart/mixed with one part
 * left (the token's removal took the other) becomes that part, unless it
 * is an attached message. Keeps
 * Subject, MIME-Version (adding MIME-Version: 1.0 when missing) and the
 * top-level Content-Type, Content-Transfer-Encoding and Content-Disposition,
 * of duplicates the last one, which GMime parsed by; drops every other
 * header. Kept headers go out as they came but folded where a line is over
 * 998 octets, or RFC 2047/2231-encoded when that cannot be done at blanks
 * or when they hold 8-bit bytes that are not UTF-8. Adds From (p->from,
 * or the original sender when p->use_original_sender and there is one),
 * Sender (the address of p->from), Reply-To (the original sender, unless
 * hidden or null), Date (UTC), Message-ID (random, on p->message_id_domain),
 * and List-Unsubscribe with List-Unsubscribe-Post when p->unsubscribe_url
 * is set and not p->unsubscribe_per_copy: these first, as raw lines, the
 * kept ones after them. When From is not the original sender and p->footer
 * is set, adds the footer (mime_footer_add).
 *
 * Returns the message serialised once, CRLF line ends throughout and a final
 * CRLF, with no To: header: the caller prepends To: and DKIM-Signature as raw
 * bytes and never re-serialises. A part sent as 7bit, 8bit or binary with
 * a line over 998 octets, a NUL, a bare CR, or (7bit) an 8-bit byte is
 * re-encoded: quoted-printable for text, base64 otherwise. *message_id
 * gets the new Message-ID without angle brackets. On error
 * (MIME_ERROR_PARAM: p->from is not a mailbox, or
 * the domain or URL holds spaces, controls or angle brackets) returns NULL
 * and leaves msg as it was.
 */
GBytes *mime_rewrite(GMimeMessage *msg, const struct rewrite_params *p,
             char **message_id, GError **err);

/*
 * A new message of Postern's own (a notice): the fields mime_rewrite()
 * gives a copy from p (no footer; List-Unsubscribe as for a copy), the
 * subject (UTF-8; controls and runs of blanks become one space) as RFC 2047
 * encoded words, and text (UTF-8, LF or CRLF line ends) as a text/plain UTF-8
 * body: 7bit when it is printable ASCII in lines of at most 998 octets,
 * else quoted-printable.  CRLF line ends throughout.  NULL, with err set,
 * for the parameters mime_rewrite() refuses.
 */
GBytes *mime_compose_text(const struct rewrite_params *p, const char *subject, const char *text,
                          char **message_id, GError **err);

/* ---- footer.c ---------------------------------------------------------- */

/*
 * SPEC §4.4: adds text (UTF-8; LF or CRLF line ends) to the message, which
 * has a body (every message from mime_parse() has).
 * A single text/plain body not marked as an attachment gets it appended
 * after a blank line; so does each such text/plain and text/html
 * alternative of a multipart/alternative, HTML escaped, before </body> when
 * there is one. Appending keeps the part's charset, format=flowed (the
 * footer space-stuffed, a "-- " separator kept) and transfer encoding (a
 * 7bit part that now holds 8-bit text becomes quoted-printable or base64).
 * A multipart/mixed gets an inline text/plain part (UTF-8) at its end.
 * Anything else, a multipart with no parts (its boundary never occurs: all
 * text is preamble), and a text part whose charset cannot hold the footer or
 * is unknown to GMime, is wrapped in a multipart/mixed with that footer
 * part after it, the original unchanged.
 */
void    mime_footer_add(GMimeMessage *msg, const char *text);

#endif
