/*
 * bounce_parse.c - read a bounce or an auto-reply (bounce_parse.h).
 */
#include "transform/bounce_parse.h"
#include "transform/mime.h"

#include <string.h>

const char *bounce_kind_name(enum bounce_kind k)
{
    switch (k) {
    case BOUNCE_HARD: return "hard";
    case BOUNCE_SOFT: return "soft";
    case BOUNCE_AUTOREPLY: return "autoreply";
    default: return "unknown";
    }
}

void bounce_info_clear(struct bounce_info *b)
{
    g_clear_pointer(&b->rcpt, g_free);
    g_clear_pointer(&b->status, g_free);
    b->kind = BOUNCE_UNKNOWN;
    b->format = NULL;
}

/* ---- helpers -------------------------------------------------------------- */

/*
 * An RFC 3463 status code: class 2, 4 or 5, not inside a longer run of
 * digits and dots (an IP address such as 192.0.2.1 holds "2.0.2").
 */
#define STATUS_RE "(?<![0-9.])([245]\\.[0-9]{1,3}\\.[0-9]{1,3})(?![0-9]|\\.[0-9])"
/* An address as bounces print it: enough of RFC 5321 to find it in text. */
#define ADDR_RE "[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\\.[A-Za-z0-9-]+)+"

/* The first match of pattern in text from offset `from` (group 1 if any), or NULL. */
static char *find_first(const char *pattern, const char *text, gssize from, gssize *end)
{
    g_autoptr(GRegex) re = g_regex_new(pattern, G_REGEX_OPTIMIZE, 0, NULL);
    g_autoptr(GMatchInfo) mi = NULL;
    char *found = NULL;
    int group;

    if (re == NULL || text == NULL || from < 0 || (size_t)from > strlen(text))
        return NULL;
    if (g_regex_match_full(re, text, -1, from, 0, &mi, NULL)) {
        group = g_regex_get_capture_count(re) > 0 ? 1 : 0;
        found = g_match_info_fetch(mi, group);
        if (end) {
            int s, e;

            g_match_info_fetch_pos(mi, group, &s, &e);
            *end = e;
        }
    }
    return found;
}

/* Does haystack contain needle, case-insensitively (ASCII)? */
static gboolean has_ci(const char *haystack, const char *needle)
{
    g_autofree char *h = NULL;
    g_autofree char *n = NULL;

    if (haystack == NULL)
        return FALSE;
    h = g_ascii_strdown(haystack, -1);
    n = g_ascii_strdown(needle, -1);
    return strstr(h, n) != NULL;
}

/* The decoded bytes of a leaf part, NUL-terminated. */
static char *part_bytes(GMimeObject *obj)
{
    GMimeDataWrapper *w;
    GMimeStream *mem;
    GByteArray *ba;
    char *out;

    if (GMIME_IS_TEXT_PART(obj))
        return g_mime_text_part_get_text(GMIME_TEXT_PART(obj));
    if (!GMIME_IS_PART(obj) || (w = g_mime_part_get_content(GMIME_PART(obj))) == NULL)
        return NULL;
    mem = g_mime_stream_mem_new();
    g_mime_data_wrapper_write_to_stream(w, mem);
    ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
    out = g_strndup((const char *)ba->data, ba->len);
    g_object_unref(mem);
    return out;
}

/* What the walk over the parts finds. */
struct scan {
    char *dsn;                      /* the message/delivery-status text */
    char *text;                     /* the first text/plain part's text */
};

static void scan_part(GMimeObject *parent, GMimeObject *part, gpointer data)
{
    struct scan *s = data;
    GMimeContentType *ct = g_mime_object_get_content_type(part);

    (void)parent;
    if (ct == NULL)
        return;
    if (s->dsn == NULL && (g_mime_content_type_is_type(ct, "message", "delivery-status")
                           || g_mime_content_type_is_type(ct, "message",
                                                          "global-delivery-status"))) {
        if (GMIME_IS_MESSAGE_PART(part)) {
            /* Were it parsed as a message, its fields would be headers. */
            s->dsn = g_mime_object_to_string(part, NULL);
        } else {
            s->dsn = part_bytes(part);
        }
    } else if (s->text == NULL && g_mime_content_type_is_type(ct, "text", "plain")
               && !GMIME_IS_MULTIPART(part)) {
        s->text = part_bytes(part);
    }
}

/* ---- RFC 3464 ------------------------------------------------------------- */

/* The value of field name in one block of unfolded lines, or NULL. */
static const char *dsn_field(char **lines, const char *name)
{
    size_t n = strlen(name);

    for (; *lines; lines++)
        if (g_ascii_strncasecmp(*lines, name, n) == 0 && (*lines)[n] == ':')
            return g_strstrip(*lines + n + 1);
    return NULL;
}

/* "rfc822; <a@b>" -> "a@b"; a value without a type is taken whole. */
static char *dsn_addr(const char *v)
{
    const char *semi = v ? strchr(v, ';') : NULL;
    g_autofree char *a = g_strstrip(g_strdup(semi ? semi + 1 : v ? v : ""));
    size_t n = strlen(a);

    if (n >= 2 && a[0] == '<' && a[n - 1] == '>') {
        a[n - 1] = '\0';
        memmove(a, a + 1, n - 1);
    }
    /* Only what looks like an address: a mailbox, not a diagnostic. */
    return strchr(a, '@') && !strpbrk(a, "\r\n") ? g_steal_pointer(&a) : NULL;
}

/*
 * The per-recipient blocks follow the per-message one, each ended by a
 * blank line; a field continues on lines that begin with white space.
 * The first failed recipient wins, else the first delayed one.
 */
static gboolean dsn_read(const char *text, struct bounce_info *out)
{
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    g_autoptr(GPtrArray) block = g_ptr_array_new_with_free_func(g_free);
    gboolean found = FALSE;

    for (guint i = 0; !found; i++) {
        char *l = lines[i];
        size_t n = l ? strlen(l) : 0;

        if (l && n > 0 && l[n - 1] == '\r')
            l[--n] = '\0';
        if (l && n > 0 && (l[0] == ' ' || l[0] == '\t') && block->len > 0) {
            char *joined = g_strconcat(block->pdata[block->len - 1], " ", g_strstrip(l), NULL);

            g_free(block->pdata[block->len - 1]);
            block->pdata[block->len - 1] = joined;
            continue;
        }
        if (l && n > 0) {
            g_ptr_array_add(block, g_strdup(l));
            continue;
        }
        /* A blank line or the end: judge the block just read. */
        g_ptr_array_add(block, NULL);
        {
            char **f = (char **)block->pdata;
            const char *action = dsn_field(f, "Action");
            const char *status = dsn_field(f, "Status");
            const char *rcpt = dsn_field(f, "Final-Recipient");
            g_autofree char *code = find_first("^" STATUS_RE, status, 0, NULL);
            gboolean failed = action && g_ascii_strncasecmp(action, "failed", 6) == 0;
            gboolean delayed = action && g_ascii_strncasecmp(action, "delayed", 7) == 0;

            if (rcpt == NULL)
                rcpt = dsn_field(f, "Original-Recipient");
            if (failed || (delayed && out->kind == BOUNCE_UNKNOWN)) {
                bounce_info_clear(out);
                out->kind = failed && !(code && code[0] == '4') ? BOUNCE_HARD : BOUNCE_SOFT;
                out->format = "rfc3464";
                out->rcpt = dsn_addr(rcpt);
                out->status = g_steal_pointer(&code);
                found = failed;
            }
        }
        g_ptr_array_set_size(block, 0);
        if (l == NULL)
            break;
    }
    return out->kind != BOUNCE_UNKNOWN;
}

/* ---- plain-text forms ----------------------------------------------------- */

struct text_form {
    const char *format;
    const char *marker;             /* in the text (or the subject), case-insensitive */
    gboolean in_subject;
};

static const struct text_form text_forms[] = {
    { "postfix", "This is the mail system at host", FALSE },
    { "exim", "This message was created automatically by mail delivery software", FALSE },
    { "gmail", "Delivery Status Notification (Failure)", TRUE },
    { "gmail", "Delivery Status Notification (Delay)", TRUE },
    { "gmail", "Address not found", FALSE },
    { "microsoft", "Delivery has failed to these recipients or groups", FALSE },
    { NULL, NULL, FALSE },
};

/* Words of a delay warning rather than a failure. */
static gboolean text_says_delayed(const char *subject, const char *text)
{
    return has_ci(subject, "delay") || has_ci(subject, "warning")
           || has_ci(text, "THIS IS A WARNING ONLY") || has_ci(text, "has not yet been delivered");
}

static gboolean text_read(const char *subject, const char *text, struct bounce_info *out)
{
    const struct text_form *f;
    const char *at = NULL;
    gssize end = 0;

    if (text == NULL)
        return FALSE;
    for (f = text_forms; f->format; f++) {
        if (f->in_subject ? has_ci(subject, f->marker) : (at = strstr(text, f->marker)) != NULL)
            break;
    }
    if (f->format == NULL)
        return FALSE;
    /* The failed address is the first one after the marker; the status
     * the first code after it. */
    out->format = f->format;
    out->rcpt = find_first(ADDR_RE, text, at ? at - text : 0, &end);
    out->status = find_first(STATUS_RE, text, out->rcpt ? end : 0, NULL);
    if (out->status)
        out->kind = out->status[0] == '4' ? BOUNCE_SOFT : BOUNCE_HARD;
    else
        out->kind = text_says_delayed(subject, text) ? BOUNCE_SOFT : BOUNCE_HARD;
    return TRUE;
}

/* ---- auto-replies --------------------------------------------------------- */

static const char *const vacation_words[] = {
    "out of office", "out of the office", "automatic reply", "auto reply", "auto-reply",
    "autoreply", "vacation", "away from", "abwesenheit", "fravær", "automatisk svar", NULL,
};

static gboolean is_autoreply(GMimeMessage *msg)
{
    GMimeObject *o = GMIME_OBJECT(msg);
    const char *as = g_mime_object_get_header(o, "Auto-Submitted");
    const char *prec = g_mime_object_get_header(o, "Precedence");
    const char *subject = g_mime_message_get_subject(msg);

    while (as && g_ascii_isspace(*as))
        as++;
    if (as && g_ascii_strncasecmp(as, "auto-replied", 12) == 0)
        return TRUE;
    if (g_mime_object_get_header(o, "X-Autoreply") || g_mime_object_get_header(o, "X-Autorespond")
        || g_mime_object_get_header(o, "X-Autoresponder"))
        return TRUE;
    if (prec && has_ci(prec, "auto_reply"))
        return TRUE;
    if (prec && (has_ci(prec, "bulk") || has_ci(prec, "junk")))
        for (int i = 0; vacation_words[i]; i++)
            if (has_ci(subject, vacation_words[i]))
                return TRUE;
    return FALSE;
}

/* ---- entry points --------------------------------------------------------- */

void bounce_parse(GMimeMessage *msg, struct bounce_info *out)
{
    struct scan s = { 0 };

    memset(out, 0, sizeof *out);
    if (msg == NULL)
        return;
    g_mime_message_foreach(msg, scan_part, &s);

    /* A DSN first: some MTAs mark theirs auto-replied as well. */
    if (!(s.dsn && dsn_read(s.dsn, out))
        && !text_read(g_mime_message_get_subject(msg), s.text, out)
        && is_autoreply(msg)) {
        out->kind = BOUNCE_AUTOREPLY;
        out->format = "autoreply";
    }
    g_free(s.dsn);
    g_free(s.text);
}

void bounce_parse_raw(const char *raw, size_t len, struct bounce_info *out)
{
    GMimeMessage *msg = mime_parse(raw, len, NULL);

    memset(out, 0, sizeof *out);
    if (msg == NULL)
        return;
    bounce_parse(msg, out);
    g_object_unref(msg);
}
