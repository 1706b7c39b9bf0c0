/*
 * lmtp_proto.c - see lmtp_proto.h.
 */
#include "ingest/lmtp_proto.h"

#include <string.h>

/* Command parsing */

static const struct {
    const char *name;
    enum lmtp_verb verb;
} lmtp_verbs[] = {
    { "LHLO", LMTP_LHLO }, { "EHLO", LMTP_EHLO }, { "HELO", LMTP_HELO },
    { "MAIL", LMTP_MAIL }, { "RCPT", LMTP_RCPT }, { "DATA", LMTP_DATA },
    { "RSET", LMTP_RSET }, { "NOOP", LMTP_NOOP }, { "QUIT", LMTP_QUIT },
    { "VRFY", LMTP_VRFY }, { "HELP", LMTP_HELP }, { "STARTTLS", LMTP_STARTTLS },
};

static void lmtp_refuse(struct lmtp_cmd *cmd, const char *reply)
{
    cmd->verb = LMTP_BAD;
    cmd->reply = reply;
}

/* C0 controls and DEL: no part of a path or a host name holds them (RFC 5321 §4.1.2). */
static gboolean lmtp_is_control(char c)
{
    return (unsigned char)c < 32 || (unsigned char)c == 127;
}

static gboolean lmtp_is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 128)
            return FALSE;
    return TRUE;
}

/*
 * The path of MAIL FROM:/RCPT TO:.  Accept what Postfix accepts from a
 * client (strict_rfc821_envelopes = no): a space after the colon, a bare
 * address without brackets; drop an RFC 5321 source route; keep quoted
 * local parts whole even when they hold spaces or '>'.  Returns the
 * position after the path, or NULL when it is malformed.
 */
static const char *lmtp_parse_path(const char *p, char **addr)
{
    GString *out = g_string_new(NULL);
    gboolean bracket = FALSE, quoted = FALSE;

    while (*p == ' ')
        p++;
    if (*p == '<') {
        bracket = TRUE;
        p++;
        if (*p == '@') {                /* source route: @a,@b:user@host */
            const char *colon = strchr(p, ':');
            if (!colon)
                goto bad;
            p = colon + 1;
        }
    }
    for (; *p; p++) {
        if (quoted) {
            /* RFC 5321 qtextSMTP and quoted-pairSMTP hold no controls:
             * a CR must not reach the spool, headers or MAIL FROM. */
            if (lmtp_is_control(*p) || (*p == '\\' && lmtp_is_control(p[1])))
                goto bad;
            if (*p == '\\' && p[1]) {
                g_string_append_c(out, *p++);
            } else if (*p == '"') {
                quoted = FALSE;
            }
        } else if (*p == '"') {
            quoted = TRUE;
        } else if (bracket && *p == '>') {
            break;
        } else if (*p == ' ' || *p == '<' || *p == '>' || lmtp_is_control(*p)) {
            if (bracket)
                goto bad;
            break;
        }
        g_string_append_c(out, *p);
    }
    if (quoted || (bracket && *p != '>'))
        goto bad;
    if (bracket)
        p++;
    if (!bracket && out->len == 0)
        goto bad;
    *addr = g_string_free(out, FALSE);
    return p;
bad:
    g_string_free(out, TRUE);
    return NULL;
}

/* ESMTP parameters after the path: SIZE, BODY, SMTPUTF8 for MAIL; none for RCPT. */
static void lmtp_parse_params(const char *p, struct lmtp_cmd *cmd)
{
    g_auto(GStrv) words = g_strsplit(p, " ", -1);

    for (int i = 0; words[i]; i++) {
        const char *w = words[i];
        char *end;

        if (!*w)
            continue;
        if (cmd->verb == LMTP_MAIL && g_ascii_strncasecmp(w, "SIZE=", 5) == 0) {
            if (!g_ascii_isdigit(w[5]))
                return lmtp_refuse(cmd, "501 5.5.4 Bad SIZE parameter");
            cmd->size = g_ascii_strtoull(w + 5, &end, 10);
            if (*end)
                return lmtp_refuse(cmd, "501 5.5.4 Bad SIZE parameter");
        } else if (cmd->verb == LMTP_MAIL && g_ascii_strncasecmp(w, "BODY=", 5) == 0) {
            if (g_ascii_strcasecmp(w + 5, "8BITMIME") == 0)
                cmd->body_8bit = TRUE;
            else if (g_ascii_strcasecmp(w + 5, "7BIT") != 0)
                return lmtp_refuse(cmd, "501 5.5.4 Unsupported BODY parameter");
        } else if (cmd->verb == LMTP_MAIL && g_ascii_strcasecmp(w, "SMTPUTF8") == 0) {
            cmd->smtputf8 = TRUE;
        } else {
            return lmtp_refuse(cmd, "555 5.5.4 Unsupported parameter");
        }
    }
}

static void lmtp_parse_mail_rcpt(const char *args, struct lmtp_cmd *cmd)
{
    const char *prefix = cmd->verb == LMTP_MAIL ? "FROM:" : "TO:";
    size_t n = strlen(prefix);
    const char *rest;

    while (*args == ' ')
        args++;
    if (g_ascii_strncasecmp(args, prefix, n) != 0)
        return lmtp_refuse(cmd, cmd->verb == LMTP_MAIL
                                    ? "501 5.5.4 Syntax: MAIL FROM:<address>"
                                    : "501 5.5.4 Syntax: RCPT TO:<address>");
    rest = lmtp_parse_path(args + n, &cmd->addr);
    if (!rest)
        return lmtp_refuse(cmd, "501 5.1.7 Bad address syntax");
    if (cmd->verb == LMTP_RCPT && !*cmd->addr)
        return lmtp_refuse(cmd, "501 5.1.3 Bad recipient address syntax");
    if (*rest && *rest != ' ')
        return lmtp_refuse(cmd, "501 5.1.7 Bad address syntax");
    /*
     * Non-ASCII is UTF-8 or nothing (RFC 6531): bytes that are not would
     * be stored as the envelope (GVariant strings must be UTF-8) and
     * shown to operators.  5.6.7: RFC 6531's code for an address the
     * server cannot take.
     */
    if (!g_utf8_validate(cmd->addr, -1, NULL))
        return lmtp_refuse(cmd, "553 5.6.7 Malformed UTF-8 in address");
    lmtp_parse_params(rest, cmd);
    /*
     * SMTPUTF8 is offered (after LHLO and EHLO), but a client must ask
     * for it in MAIL before it uses a non-ASCII address; RCPT is checked
     * by the session, which knows what MAIL said.
     */
    if (cmd->verb == LMTP_MAIL && !cmd->smtputf8 && !lmtp_is_ascii(cmd->addr))
        return lmtp_refuse(cmd, "553 5.6.7 Must declare SMTPUTF8 to send unicode address");
}

gboolean lmtp_addr_is_ascii(const char *addr)
{
    return lmtp_is_ascii(addr);
}

void lmtp_parse_command(const char *line, size_t len, struct lmtp_cmd *cmd)
{
    g_autofree char *text = NULL;
    const char *args;
    size_t vlen;

    memset(cmd, 0, sizeof(*cmd));
    if (len > LMTP_LINE_MAX)
        return lmtp_refuse(cmd, "500 5.5.2 Line too long");
    if (memchr(line, '\0', len))
        return lmtp_refuse(cmd, "500 5.5.2 Syntax error: NUL in command");
    text = g_strndup(line, len);
    vlen = strcspn(text, " ");
    args = text + vlen;
    while (*args == ' ')
        args++;

    cmd->verb = LMTP_BAD;
    for (size_t i = 0; i < G_N_ELEMENTS(lmtp_verbs); i++)
        if (strlen(lmtp_verbs[i].name) == vlen &&
            g_ascii_strncasecmp(text, lmtp_verbs[i].name, vlen) == 0)
            cmd->verb = lmtp_verbs[i].verb;

    switch (cmd->verb) {
    case LMTP_BAD:
        return lmtp_refuse(cmd, "500 5.5.2 Error: command not recognized");
    case LMTP_LHLO:
    case LMTP_EHLO:
    case LMTP_HELO:
        if (!*args)
            return lmtp_refuse(cmd, "501 5.5.4 Syntax: LHLO hostname");
        cmd->arg = g_strndup(args, strcspn(args, " "));
        /*
         * The name goes into the Received: header, the spool and the
         * log: a CR, ESC or DEL there could forge header or log lines.
         */
        for (const char *p = cmd->arg; *p; p++)
            if (lmtp_is_control(*p))
                return lmtp_refuse(cmd, "501 5.5.2 Syntax: control character in hostname");
        if (!g_utf8_validate(cmd->arg, -1, NULL))
            return lmtp_refuse(cmd, "501 5.5.2 Syntax: malformed UTF-8 in hostname");
        return;
    case LMTP_MAIL:
    case LMTP_RCPT:
        return lmtp_parse_mail_rcpt(args, cmd);
    case LMTP_DATA:
    case LMTP_RSET:
    case LMTP_QUIT:
        if (*args)
            return lmtp_refuse(cmd, "501 5.5.4 Syntax error: no parameters allowed");
        return;
    default:
        return;
    }
}

void lmtp_cmd_clear(struct lmtp_cmd *cmd)
{
    g_free(cmd->arg);
    g_free(cmd->addr);
    memset(cmd, 0, sizeof(*cmd));
}

char *lmtp_addr_canonical(const char *addr)
{
    const char *at = strrchr(addr, '@');
    g_autofree char *local = at ? g_strndup(addr, (gsize)(at - addr)) : g_strdup(addr);
    char *plus = strchr(local, '+');

    if (plus && plus != local)
        *plus = '\0';
    g_autofree char *joined = g_strconcat(local, at ? at : "", NULL);
    return g_ascii_strdown(joined, -1);
}

/* The DATA reader */

/*
 * Where the reader stands in the input: at the beginning of a line, after
 * a dot that began one, after that dot and a CR, inside a line, or after a
 * CR inside a line.  Keeping this state (rather than whole lines) lets any
 * split of the input be handled without copying partial lines around.
 *
 * Bare LF ends a line (it is stored as CRLF), but only CRLF "." CRLF ends
 * the message, as Postfix's smtpd_forbid_bare_newline = normalize does: a
 * reader that also took LF "." LF would let a sender smuggle a second
 * message, with an envelope of its choice, past a front server that sees
 * one (SMTP smuggling). A "." line that does not end the message is a
 * stuffed empty line.
 */
enum { DR_BOL, DR_DOT, DR_DOT_CR, DR_MID, DR_CR };

void lmtp_data_begin(struct lmtp_data_reader *r, uint64_t max_size, uint64_t max_header)
{
    memset(r, 0, sizeof(*r));
    r->out = g_byte_array_new();
    r->max_size = max_size;
    r->max_header = max_header;
    r->in_header = TRUE;
    r->where = DR_BOL;
}

void lmtp_data_clear(struct lmtp_data_reader *r)
{
    if (r->out)
        g_byte_array_unref(r->out);
    memset(r, 0, sizeof(*r));
}

/* Store message bytes, or only count them once a limit is passed. */
static void dr_emit(struct lmtp_data_reader *r, const char *p, size_t n)
{
    r->seen += n;
    if (r->in_header) {
        r->header_bytes += n;
        if (r->header_bytes > r->max_header)
            r->header_too_big = TRUE;
    }
    if (r->seen > r->max_size)
        r->too_big = TRUE;
    if (!r->too_big && !r->header_too_big)
        g_byte_array_append(r->out, (const guint8 *)p, (guint)n);
}

/*
 * A line of the header section is a field name then ':', or a
 * continuation starting with white space; the first line that is neither
 * (an empty line, most often) ends the header section.
 */
static void dr_header_bol(struct lmtp_data_reader *r, char c)
{
    if (!r->in_header)
        return;
    if (c == '\r' || c == '\n')
        r->in_header = FALSE;
    else if (c != ' ' && c != '\t')
        r->name_pending = TRUE;
}

static void dr_header_char(struct lmtp_data_reader *r, char c)
{
    if (!r->name_pending)
        return;
    if (c == ':')
        r->name_pending = FALSE;
    else if ((unsigned char)c <= 32 || (unsigned char)c >= 127) {
        r->name_pending = FALSE;
        r->in_header = FALSE;
    }
}

enum lmtp_data_status lmtp_data_feed(struct lmtp_data_reader *r, const char *buf, size_t len,
                                     size_t *used)
{
    size_t i = 0;

    while (i < len) {
        char c = buf[i];

        switch (r->where) {
        case DR_BOL:
            if (c == '.') {
                r->where = DR_DOT;
                i++;
                continue;
            }
            dr_header_bol(r, c);
            r->where = DR_MID;
            continue;
        case DR_DOT:
            if (c == '\r') {
                r->where = DR_DOT_CR;
                i++;
                continue;
            }
            dr_header_bol(r, c); /* the stuffed dot is dropped */
            r->where = DR_MID;
            continue;
        case DR_DOT_CR:
            if (c == '\n' && !r->bare_lf_line) {
                *used = i + 1;
                return LMTP_DATA_DONE;
            }
            if (c == '\n') {        /* LF "." CRLF: an empty line */
                dr_header_bol(r, '\r');
                dr_emit(r, "\r\n", 2);
                r->bare_lf_line = FALSE;
                r->where = DR_BOL;
                i++;
                continue;
            }
            dr_header_bol(r, '\r');
            dr_emit(r, "\r", 1);
            r->where = DR_MID;
            continue;
        case DR_CR:
            if (c == '\n') {
                dr_emit(r, "\r\n", 2);
                if (r->name_pending)     /* a header line with no colon: body */
                    r->in_header = r->name_pending = FALSE;
                r->bare_lf_line = FALSE;
                r->where = DR_BOL;
                i++;
                continue;
            }
            dr_emit(r, "\r", 1);    /* a bare CR is kept as it came */
            r->where = DR_MID;
            continue;
        case DR_MID: {
            size_t start = i;
            /*
             * A header field name is looked at byte by byte (it may end
             * the header section); nothing else in a line is, so the rest
             * is found a word at a time with memchr.
             */
            while (i < len && r->name_pending && buf[i] != '\r' && buf[i] != '\n') {
                /*
                 * Bytes before the one that ends the header section
                 * count as header, as they do when they come in an
                 * earlier read: the result must not depend on how the
                 * input is split.
                 */
                gboolean was_header = r->in_header;
                dr_header_char(r, buf[i]);
                if (was_header && !r->in_header && i > start) {
                    r->in_header = TRUE;
                    dr_emit(r, buf + start, i - start);
                    r->in_header = FALSE;
                    start = i;
                }
                i++;
            }
            if (!r->name_pending) {
                /*
                 * Up to the line's LF, a CR is content (a bare CR is kept
                 * as it came) unless it is the one before the LF.  LF
                 * first: a CR search could rescan the buffer per line.
                 */
                const char *lf = memchr(buf + i, '\n', len - i);
                size_t end = lf ? (size_t)(lf - buf) : len;

                if (lf && end > i && buf[end - 1] == '\r') {
                    /* The usual line: content and CRLF stored as one. */
                    dr_emit(r, buf + start, end + 1 - start);
                    r->bare_lf_line = FALSE;
                    r->where = DR_BOL;
                    i = end + 1;
                    continue;
                }
                i = !lf && end > i && buf[end - 1] == '\r' ? end - 1 : end;
            }
            if (i > start)
                dr_emit(r, buf + start, i - start);
            if (i == len)
                break;
            if (buf[i] == '\r') {
                r->where = DR_CR;
            } else {                /* bare LF: stored as CRLF */
                dr_emit(r, "\r\n", 2);
                if (r->name_pending)
                    r->in_header = r->name_pending = FALSE;
                r->bare_lf_line = TRUE;
                r->where = DR_BOL;
            }
            i++;
            continue;
        }
        }
    }
    *used = len;
    return LMTP_DATA_MORE;
}
