/*
 * Incremental SMTP reply parser (RFC 5321 4.2) and EHLO keywords.
 *
 * The caller feeds whatever bytes arrived and asks for complete replies.
 * Nothing here does I/O, so the parser can be fed arbitrary input by a
 * fuzzer: malformed input ends in a parse error, never in a crash or in
 * unbounded memory (SMTP_LINE_MAX, SMTP_REPLY_MAX).
 */
#include <string.h>

#include "sender/smtp.h"

/* The module's one error domain lives with its most basic part. */
G_DEFINE_QUARK(postern-smtp-error-quark, smtp_error)

struct smtp_reply_parser {
    GString *buf;                   /* bytes fed and not yet parsed */
    int     code;                   /* of the reply being assembled, 0 between replies */
    GPtrArray *lines;               /* its line texts so far */
    size_t  size;                   /* bytes those lines took, CR LF included */
    gboolean failed;
};

struct smtp_reply_parser *smtp_reply_parser_new(void)
{
    struct smtp_reply_parser *p = g_new0(struct smtp_reply_parser, 1);

    p->buf = g_string_new(NULL);
    p->lines = g_ptr_array_new_with_free_func(g_free);
    return p;
}

void    smtp_reply_parser_free(struct smtp_reply_parser *p)
{
    if (p == NULL)
        return;
    g_string_free(p->buf, TRUE);
    g_ptr_array_free(p->lines, TRUE);
    g_free(p);
}

void    smtp_reply_feed(struct smtp_reply_parser *p, const char *buf, size_t len)
{
    g_string_append_len(p->buf, buf, len);
}

size_t  smtp_reply_pending(const struct smtp_reply_parser *p)
{
    return p->buf->len + p->size;
}

void    smtp_reply_clear(struct smtp_reply *r)
{
    g_free(r->text);
    g_strfreev(r->lines);
    memset(r, 0, sizeof(*r));
}

/* Length of the 1-3 digits at s, or 0 when there are none or more than 3. */
static size_t digits(const char *s)
{
    size_t  n = 0;

    while (g_ascii_isdigit(s[n]))
        n++;
    return n <= 3 ? n : 0;
}

/*
 * Length of an RFC 3463 status code "class.subject.detail" at the start of
 * text, followed by a space or the end; 0 when there is none. The class
 * must agree with the reply code, as RFC 2034 asks: a "5.1.1" on a 250
 * reply is text, not a status.
 */
static size_t status_len(const char *text, int code)
{
    size_t  i, n;

    if (text[0] != '0' + code / 100 || text[1] != '.')
        return 0;
    i = 2;
    if ((n = digits(text + i)) == 0 || text[i + n] != '.')
        return 0;
    i += n + 1;
    if ((n = digits(text + i)) == 0 || (text[i + n] != ' ' && text[i + n] != 0))
        return 0;
    return i + n;
}

/* Build the reply from the lines collected, and forget them. */
static void reply_finish(struct smtp_reply_parser *p, struct smtp_reply *out)
{
    GString *text = g_string_new(NULL);
    size_t  i, n;

    memset(out, 0, sizeof(*out));
    out->code = p->code;
    n = status_len(g_ptr_array_index(p->lines, 0), p->code);
    memcpy(out->status, g_ptr_array_index(p->lines, 0), n);

    /*
     * Servers repeat the status on every line of a multi-line reply; keep
     * it once, in status, and out of the text.
     */
    for (i = 0; i < p->lines->len; i++) {
        const char *line = g_ptr_array_index(p->lines, i);

        n = status_len(line, p->code);
        line += n + (line[n] == ' ');
        if (i > 0)
            g_string_append_c(text, ' ');
        g_string_append(text, line);
    }
    out->text = g_string_free(text, FALSE);
    g_ptr_array_add(p->lines, NULL);
    out->lines = (char **) g_ptr_array_steal(p->lines, NULL);
    p->code = 0;
    p->size = 0;
}

static enum smtp_parse parse_fail(struct smtp_reply_parser *p, GError **err,
                  const char *why)
{
    p->failed = TRUE;
    g_set_error(err, SMTP_ERROR, SMTP_ERROR_PROTOCOL, "malformed SMTP reply: %s", why);
    return SMTP_PARSE_ERROR;
}

/*
 * Take one line "NNN[ -]text" (CR LF already removed) into the reply being
 * assembled: SMTP_PARSE_REPLY when it was the last line.
 */
static enum smtp_parse line_take(struct smtp_reply_parser *p, const char *line,
                 size_t len, GError **err)
{
    int     code;

    if (memchr(line, 0, len) != NULL)
        return parse_fail(p, err, "NUL byte");
    if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '5'
        || !g_ascii_isdigit(line[2]) || (len > 3 && line[3] != ' ' && line[3] != '-'))
        return parse_fail(p, err, "line does not start with a reply code");
    code = g_ascii_digit_value(line[0]) * 100 + g_ascii_digit_value(line[1]) * 10
        + g_ascii_digit_value(line[2]);
    if (p->code != 0 && code != p->code)
        return parse_fail(p, err, "reply code changes within a multi-line reply");
    if (p->size > SMTP_REPLY_MAX)
        return parse_fail(p, err, "multi-line reply too long");
    p->code = code;
    g_ptr_array_add(p->lines, g_strndup(len > 3 ? line + 4 : "", len > 3 ? len - 4 : 0));
    return len > 3 && line[3] == '-' ? SMTP_PARSE_MORE : SMTP_PARSE_REPLY;
}

/*
 * Lines end in CR LF; a bare LF is accepted too, as most clients do, since
 * rejecting it would only turn a sloppy relay into deferred mail.
 */
enum smtp_parse smtp_reply_next(struct smtp_reply_parser *p, struct smtp_reply *out,
                GError **err)
{
    enum smtp_parse st = SMTP_PARSE_MORE;
    size_t  off = 0;

    if (p->failed)
        return parse_fail(p, err, "parser already failed");
    while (st == SMTP_PARSE_MORE) {
        const char *line = p->buf->str + off;
        const char *nl = memchr(line, '\n', p->buf->len - off);
        size_t  len;

        if (nl == NULL) {
            if (p->buf->len - off > SMTP_LINE_MAX + 1)
                st = parse_fail(p, err, "line too long");
            break;
        }
        len = nl - line;
        off += len + 1;
        p->size += len + 1;
        if (len > 0 && line[len - 1] == '\r')
            len--;
        if (len > SMTP_LINE_MAX)
            st = parse_fail(p, err, "line too long");
        else
            st = line_take(p, line, len, err);
    }
    g_string_erase(p->buf, 0, off);
    if (st == SMTP_PARSE_REPLY)
        reply_finish(p, out);
    return st;
}

/* One EHLO keyword line, split into words. */
static void ehlo_keyword(struct smtp_ehlo *out, char **word)
{
    char  **arg;

    if (!g_ascii_strcasecmp(word[0], "PIPELINING"))
        out->pipelining = TRUE;
    else if (!g_ascii_strcasecmp(word[0], "STARTTLS"))
        out->starttls = TRUE;
    else if (!g_ascii_strcasecmp(word[0], "ENHANCEDSTATUSCODES"))
        out->enhancedstatuscodes = TRUE;
    else if (!g_ascii_strcasecmp(word[0], "8BITMIME"))
        out->eightbitmime = TRUE;
    else if (!g_ascii_strcasecmp(word[0], "SMTPUTF8"))
        out->smtputf8 = TRUE;
    else if (!g_ascii_strcasecmp(word[0], "SIZE")) {
        out->size = TRUE;
        if (word[1] == NULL
            || !g_ascii_string_to_unsigned(word[1], 10, 0, G_MAXUINT64, &out->size_max, NULL))
            out->size_max = 0;
    } else if (!g_ascii_strcasecmp(word[0], "AUTH")) {
        for (arg = word + 1; *arg; arg++) {
            out->auth_plain |= !g_ascii_strcasecmp(*arg, "PLAIN");
            out->auth_login |= !g_ascii_strcasecmp(*arg, "LOGIN");
        }
    }
}

/*
 * EHLO reply: the first line greets, each further line is a keyword with
 * parameters (RFC 5321 4.1.1.1). Unknown keywords are ignored; a SIZE
 * without a valid number means "no limit given". "AUTH=PLAIN" is the form
 * some old servers still send.
 */
void    smtp_ehlo_parse(const struct smtp_reply *r, struct smtp_ehlo *out)
{
    char  **line;

    memset(out, 0, sizeof(*out));
    for (line = r->lines[0] ? r->lines + 1 : r->lines; *line; line++) {
        char  **word = g_strsplit_set(*line, " =", -1);

        if (word[0] != NULL)
            ehlo_keyword(out, word);
        g_strfreev(word);
    }
}

/*
 * The relay's quota and throttle replies (Google: "421 4.7.0 Try again
 * later", "450 4.2.1 ... rate limited", "550 5.4.5 Daily user sending quota
 * exceeded", "550 5.7.1 ... relay limit exceeded"). They say nothing about
 * the message: every delivery would get the same answer for a while.
 */
gboolean smtp_result_throttled(const struct smtp_rcpt_result *r)
{
    return (r->code == 421 && !strcmp(r->status, "4.7.0"))
        || (r->code == 450 && !strcmp(r->status, "4.2.1"))
        || (r->code == 550 && !strcmp(r->status, "5.4.5"))
        || (r->code == 550 && !strcmp(r->status, "5.7.1")
        && r->text && strcasestr(r->text, "limit exceeded"));
}

/*
 * RFC 4954: 530 5.7.0 authentication required, 534 5.7.9 mechanism too
 * weak, 535 5.7.8 credentials invalid, 538 5.7.11 encryption required:
 * refusals of the session at AUTH that no retry of one message can fix,
 * and that every delivery would get.  454 4.7.0 is a passing failure.
 */
gboolean smtp_result_auth_refused(const struct smtp_rcpt_result *r)
{
    return r->error == SMTP_ERROR_SESSION
        && (r->code == 530 || r->code == 534 || r->code == 535 || r->code == 538);
}
