/*
 * Header rewrite (SPEC §4.3) and the one serialisation (§4.5) of the
 * outgoing copy, with the footer (§4.4) in between.
 */
#include <string.h>

#include "transform/mime.h"

/* Kept from the original: GMime files the top-level Content-* headers
 * under the body part, every other header under the message. */
static const char *const message_keep[] = {"Subject", "MIME-Version", NULL};
static const char *const body_keep[] = {
    "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", NULL,
};

/*
 * Drops every header of list but the last of each name in keep. Of
 * duplicates, GMime acts on the last: a second Content-Type decides the
 * structure it parsed, so only that one may go out with it.
 */
static void rewrite_keep(GMimeHeaderList *list, const char *const *keep)
{
    guint   seen = 0;

    for (int i = g_mime_header_list_get_count(list) - 1; i >= 0; i--) {
        const char *name = g_mime_header_get_name(g_mime_header_list_get_header_at(list, i));
        guint   k = 0;

        while (keep[k] != NULL && g_ascii_strcasecmp(keep[k], name) != 0)
            k++;
        if (keep[k] != NULL && !(seen & 1u << k))
            seen |= 1u << k;
        else
            g_mime_header_list_remove_at(list, i);
    }
}

/* Non-empty printable ASCII without any of the characters in bad. */
static gboolean rewrite_is_word(const char *s, const char *bad)
{
    if (s == NULL || *s == 0)
        return FALSE;
    for (; *s; s++)
        if (*s < '!' || *s > '~' || strchr(bad, *s) != NULL)
            return FALSE;
    return TRUE;
}

/*
 * The From and Sender fields of one [rewrite] from, as raw lines: the same
 * for every copy of every message of a list, so formatted once per value.
 * GMime's g_mime_message_add_mailbox() costs ~29 k instructions a field
 * (it re-syncs the message's header list on every change), four fields a
 * message with its success notice: a tenth of what a message costs the
 * transform beyond its signatures (docs/benchmarks.md, "Transform: the
 * fields written as raw lines").  Only values that parse as one mailbox
 * are kept; the cache lives as long as the process, and a process sees
 * the few values of its configuration.
 */
struct rewrite_from {
    char   *from_field;             /* "From: Name <addr>\r\n" */
    char   *sender_field;           /* "Sender: addr\r\n" */
};

static GHashTable *rewrite_from_cache;  /* [rewrite] from -> struct rewrite_from */
G_LOCK_DEFINE_STATIC(rewrite_from_cache);

/*
 * One address field "Name: <mailbox>" CRLF, encoded (RFC 2047) and folded
 * as GMime writes it when a message's address list changes.
 */
static char *rewrite_address_field(const char *name, const char *display, const char *addr)
{
    InternetAddressList *list = internet_address_list_new();
    InternetAddress *mailbox = internet_address_mailbox_new(display, addr);
    GMimeFormatOptions *opts = g_mime_format_options_new();
    GString *field = g_string_new(name);

    g_string_append(field, ": ");
    g_mime_format_options_set_newline_format(opts, GMIME_NEWLINE_FORMAT_DOS);
    internet_address_list_add(list, mailbox);
    internet_address_list_encode(list, opts, field);
    g_mime_format_options_free(opts);
    g_object_unref(mailbox);
    g_object_unref(list);
    return g_string_free(field, FALSE);
}

static void rewrite_from_free(gpointer data)
{
    struct rewrite_from *f = data;

    g_free(f->from_field);
    g_free(f->sender_field);
    g_free(f);
}

/* The fields of from, from the cache or made now; NULL when it is not one mailbox. */
static const struct rewrite_from *rewrite_from_fields(const char *from)
{
    struct rewrite_from *f;
    InternetAddressList *list;
    InternetAddress *mailbox;

    G_LOCK(rewrite_from_cache);
    if (!rewrite_from_cache)
        rewrite_from_cache = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                                   rewrite_from_free);
    f = g_hash_table_lookup(rewrite_from_cache, from);
    if (!f && (list = internet_address_list_parse(NULL, from)) != NULL) {
        if (internet_address_list_length(list) == 1
            && INTERNET_ADDRESS_IS_MAILBOX(mailbox = internet_address_list_get_address(list, 0))) {
            const char *addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(mailbox));

            f = g_new0(struct rewrite_from, 1);
            f->from_field = rewrite_address_field("From", internet_address_get_name(mailbox), addr);
            f->sender_field = rewrite_address_field("Sender", NULL, addr);
            g_hash_table_insert(rewrite_from_cache, g_strdup(from), f);
        }
        g_object_unref(list);
    }
    G_UNLOCK(rewrite_from_cache);
    return f;
}

/*
 * Checks the parameters before anything of the message changes. Returns
 * the fields of p->from. The URL and domain go into headers verbatim, so
 * nothing in them may end or fold a header line.
 */
static const struct rewrite_from *rewrite_check(const struct rewrite_params *p, GError **err)
{
    const struct rewrite_from *from;

    if (!rewrite_is_word(p->message_id_domain, "<>@")) {
        g_set_error(err, MIME_ERROR, MIME_ERROR_PARAM, "[dkim] domain \"%s\" is not a domain",
                p->message_id_domain ? p->message_id_domain : "");
        return NULL;
    }
    if (p->unsubscribe_url && *p->unsubscribe_url && !rewrite_is_word(p->unsubscribe_url, "<>")) {
        g_set_error(err, MIME_ERROR, MIME_ERROR_PARAM,
                "[rewrite] unsubscribe_url \"%s\" has blanks, controls or angle brackets",
                p->unsubscribe_url);
        return NULL;
    }
    if (p->from == NULL || (from = rewrite_from_fields(p->from)) == NULL) {
        g_set_error(err, MIME_ERROR, MIME_ERROR_PARAM, "[rewrite] from \"%s\" is not one mailbox",
                p->from ? p->from : "");
        return NULL;
    }
    return from;
}

/*
 * The fields Postern writes itself (SPEC §4.3), as raw lines ahead of the
 * ones GMime writes: From, Sender, Reply-To, Date, a new random
 * Message-ID on p->message_id_domain (returned without brackets in
 * *message_id) and, unless each copy gets its own, List-Unsubscribe with
 * RFC 8058 one-click.  rewrite_check() made sure the domain and URL are
 * one printable word each: GMime would turn a URL longer than a line into
 * RFC 2047 encoded words, which no client reads as a URL.
 */
static void rewrite_own_fields(GString *out, const struct rewrite_params *p,
                               const struct rewrite_from *from, char **message_id)
{
    gboolean known = p->original_sender != NULL && *p->original_sender;
    GDateTime *date = g_date_time_new_from_unix_utc(p->date);
    char   *when = g_mime_utils_header_format_date(date);
    char   *uuid = g_uuid_string_random();
    char   *field;

    if (p->use_original_sender && known) {
        field = rewrite_address_field("From", NULL, p->original_sender);
        g_string_append(out, field);
        g_free(field);
    } else {
        g_string_append(out, from->from_field);
    }
    g_string_append(out, from->sender_field);
    if (known && !p->hide_sender) {
        field = rewrite_address_field("Reply-To", NULL, p->original_sender);
        g_string_append(out, field);
        g_free(field);
    }
    *message_id = g_strdup_printf("%s@%s", uuid, p->message_id_domain);
    g_string_append_printf(out, "Date: %s\r\nMessage-ID: <%s>\r\n", when, *message_id);
    if (p->unsubscribe_url && *p->unsubscribe_url && !p->unsubscribe_per_copy)
        g_string_append_printf(out, "List-Unsubscribe: <%s>\r\n"
                               "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
                               p->unsubscribe_url);
    g_free(uuid);
    g_free(when);
    g_date_time_unref(date);
}

/* The footer template filled in. A hidden sender is not named. */
static char *rewrite_footer(const struct rewrite_params *p)
{
    const char *sender = p->hide_sender || p->original_sender == NULL ? "" : p->original_sender;
    const char *url = p->unsubscribe_url ? p->unsubscribe_url : "";
    GString *out = g_string_new(NULL);

    for (const char *s = p->footer; *s;) {
        if (g_str_has_prefix(s, "{sender}")) {
            g_string_append(out, sender);
            s += strlen("{sender}");
        } else if (g_str_has_prefix(s, "{unsubscribe_url}")) {
            g_string_append(out, url);
            s += strlen("{unsubscribe_url}");
        } else {
            g_string_append_c(out, *s++);
        }
    }
    return g_string_free(out, FALSE);
}

/*
 * The one serialisation: own (Postern's fields, CRLF already), then the
 * message. GMime's DOS newline format gives headers and part content
 * CRLF, but preamble and epilogue are written as they were parsed: a
 * newline filter over the whole output makes every line end CRLF, the
 * last one included.
 */
static GBytes *rewrite_write(GMimeMessage *msg, const GString *own, GError **err)
{
    GMimeFormatOptions *opts = g_mime_format_options_new();
    GByteArray *bytes = g_byte_array_new();
    GMimeStream *mem = g_mime_stream_mem_new_with_byte_array(bytes);
    GMimeStream *crlf = g_mime_stream_filter_new(mem);
    GMimeFilter *filter;
    gboolean ok;

    g_mime_format_options_set_newline_format(opts, GMIME_NEWLINE_FORMAT_DOS);
    g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(mem), FALSE);
    filter = g_mime_format_options_create_newline_filter(opts, TRUE);
    g_mime_stream_filter_add(GMIME_STREAM_FILTER(crlf), filter);
    ok = g_mime_stream_write(crlf, own->str, own->len) == (ssize_t)own->len
        && g_mime_object_write_to_stream(GMIME_OBJECT(msg), opts, crlf) >= 0
        && g_mime_stream_flush(crlf) == 0;
    g_object_unref(filter);
    g_object_unref(crlf);
    g_object_unref(mem);
    g_mime_format_options_free(opts);
    if (!ok) {
        g_byte_array_unref(bytes);
        g_set_error(err, MIME_ERROR, MIME_ERROR_WRITE, "cannot serialise the message");
        return NULL;
    }
    return g_byte_array_free_to_bytes(bytes);
}

/* RFC 5322 §2.1.1: a line holds at most 998 octets, CRLF excluded, and
 * should hold at most 78. */
#define LINE_MAX_OCTETS 998
#define LINE_WIDTH      78

/*
 * Whether a relay may refuse, or change, the decoded content of part sent
 * as it is: a line over 998 octets, a NUL, a CR that does not end a line
 * (RFC 5322 §2.3, RFC 2045 §2.7-2.8), or, when declared 7bit, an 8-bit
 * byte (RFC 6152: only 8bit may hold those). Such a part would be folded,
 * stripped or refused on the way, and any change breaks the signature.
 */
static gboolean rewrite_unsendable(GMimePart *part, gboolean seven)
{
    GMimeDataWrapper *content = g_mime_part_get_content(part);
    GByteArray *bytes;
    GMimeStream *stream;
    gboolean bad = FALSE;
    guint   start = 0;

    if (!content)
        return FALSE;
    bytes = g_byte_array_new();
    stream = g_mime_stream_mem_new_with_byte_array(bytes);
    g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(stream), FALSE);
    g_mime_data_wrapper_write_to_stream(content, stream);
    for (guint i = 0; i < bytes->len && !bad; i++) {
        guint8  c = bytes->data[i];

        if (c == '\n')
            start = i + 1;
        else if (c == '\r')
            bad = i + 1 == bytes->len || bytes->data[i + 1] != '\n';
        else
            bad = c == 0 || (seven && c >= 0x80) || i - start >= LINE_MAX_OCTETS;
    }
    g_object_unref(stream);
    g_byte_array_unref(bytes);
    return bad;
}

/*
 * Re-encodes a part sent as 7bit, 8bit or binary (or without an encoding)
 * that rewrite_unsendable() finds a relay may refuse: quoted-printable for
 * text, which keeps it readable, base64 otherwise. Parts already in base64
 * or quoted-printable are safe as they are.
 */
static void rewrite_encode_part(GMimeObject *parent, GMimeObject *obj, gpointer data)
{
    GMimePart *part;
    GMimeContentEncoding enc;

    if (!GMIME_IS_PART(obj))
        return;
    part = GMIME_PART(obj);
    enc = g_mime_part_get_content_encoding(part);
    if (enc != GMIME_CONTENT_ENCODING_DEFAULT && enc != GMIME_CONTENT_ENCODING_7BIT &&
        enc != GMIME_CONTENT_ENCODING_8BIT && enc != GMIME_CONTENT_ENCODING_BINARY)
        return;
    if (!rewrite_unsendable(part, enc == GMIME_CONTENT_ENCODING_DEFAULT
                || enc == GMIME_CONTENT_ENCODING_7BIT))
        return;
    g_mime_part_set_content_encoding(part,
        g_mime_content_type_is_type(g_mime_object_get_content_type(obj), "text", "*")
            ? GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE : GMIME_CONTENT_ENCODING_BASE64);
}

/* Collects "--" and each multipart boundary of the message into data. */
static void rewrite_collect_delimiter(GMimeObject *parent, GMimeObject *obj, gpointer data)
{
    const char *boundary;

    if (GMIME_IS_MULTIPART(obj)
        && (boundary = g_mime_object_get_content_type_parameter(obj, "boundary")) != NULL)
        g_ptr_array_add(data, g_strconcat("--", boundary, NULL));
}

/* Does a line of obj's content, encoded as it will be written, start with a delimiter? */
static gboolean rewrite_content_has_delimiter(GMimeObject *obj, const GPtrArray *delimiters)
{
    GByteArray *bytes = g_byte_array_new();
    GMimeStream *stream = g_mime_stream_mem_new_with_byte_array(bytes);
    gboolean found = FALSE;

    g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(stream), FALSE);
    g_mime_object_write_content_to_stream(obj, NULL, stream);
    for (guint at = 0; at < bytes->len && !found;) {
        const guint8 *eol = memchr(bytes->data + at, '\n', bytes->len - at);
        guint   end = eol ? (guint) (eol - bytes->data) : bytes->len;

        for (guint k = 0; k < delimiters->len && !found; k++) {
            size_t  n = strlen(delimiters->pdata[k]);

            found = end - at >= n && memcmp(bytes->data + at, delimiters->pdata[k], n) == 0;
        }
        at = end + 1;
    }
    g_object_unref(stream);
    g_byte_array_unref(bytes);
    return found;
}

/*
 * Quoted-printable breaks a long line with a soft line break wherever the
 * 76th column falls, so what a sender had in the middle of a line, "--"
 * and a boundary of the message, can start a line of the copy: readers
 * take it for a delimiter and cut the parts there (fuzz_mime found it
 * after a re-encoding). Such a part goes out in base64 instead, whose
 * alphabet has no "-". Only a part GMime encodes anew is looked at (its
 * content is not already quoted-printable): one that came so is written
 * as it came and cannot hold such a line, the parse would have split it.
 */
static void rewrite_keep_delimiters_out(GMimeObject *parent, GMimeObject *obj, gpointer data)
{
    GMimeDataWrapper *content;

    if (GMIME_IS_PART(obj)
        && g_mime_part_get_content_encoding(GMIME_PART(obj)) == GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE
        && (content = g_mime_part_get_content(GMIME_PART(obj))) != NULL
        && g_mime_data_wrapper_get_encoding(content) != GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE
        && rewrite_content_has_delimiter(obj, data))
        g_mime_part_set_content_encoding(GMIME_PART(obj), GMIME_CONTENT_ENCODING_BASE64);
}

/*
 * Appends the line s (len octets, no line end; col octets before it on
 * its line) to out, folded (newline, then the blank) before blanks into
 * lines of about LINE_WIDTH:
 * a fold goes before a run of blanks that has text after it, and never
 * right at the start of a line, which would leave a line of blanks only.
 * FALSE when a line stays over LINE_MAX_OCTETS: a run with no blank.
 */
static gboolean rewrite_fold_line(GString *out, const char *s, size_t len, size_t col,
                                  const char *newline)
{
    size_t  longest = 0;
    size_t  i = 0;

    while (i < len) {
        size_t  end = i + strspn(s + i, " \t");
        gboolean text = end < len;

        end += strcspn(s + end, " \t");
        end = MIN(end, len);
        if (i > 0 && text && col + (end - i) > LINE_WIDTH) {
            longest = MAX(longest, col);
            g_string_append(out, newline);
            col = 0;
        }
        g_string_append_len(out, s + i, end - i);
        col += end - i;
        i = end;
    }
    return MAX(longest, col) <= LINE_MAX_OCTETS;
}

/*
 * The raw value of header name with every line over LINE_MAX_OCTETS
 * folded (unfolding restores the value: RFC 5322 §2.2.3); other lines
 * as they came. NULL when a line cannot be folded short enough; *changed
 * says whether any line was folded.
 */
static char *rewrite_fold(const char *name, const char *raw, gboolean *changed)
{
    GString *out = g_string_sized_new(strlen(raw) + 16);
    size_t  col = strlen(name) + 1; /* "Name:" */
    gboolean ok = TRUE;

    *changed = FALSE;
    for (const char *s = raw; *s && ok;) {
        size_t  len = strcspn(s, "\n");
        size_t  text = len > 0 && s[len - 1] == '\r' ? len - 1 : len;

        if (col + text > LINE_MAX_OCTETS) {
            *changed = TRUE;
            ok = rewrite_fold_line(out, s, text, col, "\n");
        } else {
            g_string_append_len(out, s, text);
        }
        g_string_append_len(out, s + text, len - text + (s[len] == '\n'));
        s += len + (s[len] == '\n');
        col = 0;
    }
    return g_string_free(out, !ok);
}

/*
 * A decoded header value made fit for GMime to encode and fold anew: what
 * an encoded word decoded to may hold line ends and NULs, which GMime
 * writes as they are (a line end starts a new header field: injection),
 * and GMime's folding splits an encoded word in two when a run of blanks
 * fills a line. Controls become blanks, each run of blanks one space.
 */
static char *rewrite_plain_value(const char *value)
{
    GString *out = g_string_new(NULL);

    for (const char *c = value ? value : ""; *c; c++) {
        gboolean blank = (unsigned char)*c <= ' ' || *c == 0x7f;

        if (!blank)
            g_string_append_c(out, *c);
        else if (out->len && out->str[out->len - 1] != ' ')
            g_string_append_c(out, ' ');
    }
    if (out->len && out->str[out->len - 1] == ' ')
        g_string_truncate(out, out->len - 1);
    return g_string_free(out, FALSE);
}

/*
 * Appends the raw value of field name (from after its colon): the plain
 * value as RFC 2047 encoded words in charset (NULL: the smallest that
 * holds it; GMime's encoder), folded here between the words, ending in
 * newline.
 */
static void rewrite_encoded_value(GString *raw, const char *name, const char *plain,
                                  const char *charset, const char *newline)
{
    char   *encoded = g_mime_utils_header_encode_text(NULL, plain, charset);

    g_string_append_c(raw, ' ');
    (void)rewrite_fold_line(raw, encoded, strlen(encoded), strlen(name) + 2, newline);
    g_string_append(raw, newline);
    g_free(encoded);
}

/*
 * Writes header anew from its decoded value. Content-Type and
 * Content-Disposition go through GMime, which writes their parameters per
 * RFC 2231. The others become
 * RFC 2047 encoded words (GMime's encoder), folded here between the words:
 * GMime's own folding of such a value split an encoded word across lines
 * (a fuzz_mime finding), leaving a line that is no header field at all.
 */
static void rewrite_encode_header(GMimeHeader *header)
{
    const char *name = g_mime_header_get_name(header);
    char   *value = rewrite_plain_value(g_mime_header_get_value(header));

    /* Only these have parameters; GMime folds other values as it does text
     * (Content-Transfer-Encoding: the same split encoded word, fuzz_mime). */
    if (g_ascii_strcasecmp(name, "Content-Type") == 0
        || g_ascii_strcasecmp(name, "Content-Disposition") == 0) {
        g_mime_header_set_value(header, NULL, value, NULL);
    } else {
        GString *raw = g_string_new(NULL);

        rewrite_encoded_value(raw, name, value, NULL, "\n");
        g_mime_header_set_raw_value(header, raw->str);
        g_string_free(raw, TRUE);
    }
    g_free(value);
}

/*
 * Kept headers go out as they came (GMime writes their raw bytes), so
 * they must be fit to send. A line over 998 octets, which a relay folds
 * or refuses, is folded before blanks. A header with no blank to fold at,
 * or with 8-bit bytes that are not UTF-8 (a charset nobody named, which
 * no reader can display and RFC 6532 does not allow) is written anew by
 * GMime from its decoded value: RFC 2047 encoded words, RFC 2231
 * parameters for Content-*, in lines of 78.
 *
 * Valid UTF-8 is left as it is. RFC 6532 allows it, the relays Postern
 * sends to (Gmail, Postfix) take it without SMTPUTF8, and encoding it
 * would change what the sender wrote for a relay we cannot know: the copy
 * is serialised and signed once, before any relay is chosen.
 */
static void rewrite_fix_headers(GMimeHeaderList *list)
{
    for (int i = 0; i < g_mime_header_list_get_count(list); i++) {
        GMimeHeader *header = g_mime_header_list_get_header_at(list, i);
        const char *raw = g_mime_header_get_raw_value(header);
        char   *folded = NULL;
        gboolean changed;

        if (raw == NULL)
            continue;
        /* Most headers need nothing: GMime keeps their raw bytes untouched. */
        if (g_utf8_validate(raw, -1, NULL)
            && (folded = rewrite_fold(g_mime_header_get_name(header), raw, &changed)) != NULL) {
            if (changed)
                g_mime_header_set_raw_value(header, folded);
        } else {
            rewrite_encode_header(header);
        }
        g_free(folded);
    }
}

/* Type, subtype and boundary: what the structure GMime parsed rests on. */
static gboolean rewrite_same_structure(GMimeContentType *a, GMimeContentType *b)
{
    char   *ta = g_mime_content_type_get_mime_type(a);
    char   *tb = g_mime_content_type_get_mime_type(b);
    gboolean same = g_ascii_strcasecmp(ta, tb) == 0
        && g_strcmp0(g_mime_content_type_get_parameter(a, "boundary"),
                     g_mime_content_type_get_parameter(b, "boundary")) == 0;

    g_free(ta);
    g_free(tb);
    return same;
}

/*
 * The top-level Content-* fields made fit to send. A Content-Type written
 * anew from its decoded value can say something else than GMime parsed:
 * a field GMime found invalid (a control before the value) made the body
 * application/octet-stream, and its decoded value then read as a
 * multipart whose boundary never occurs, hiding the content (a fuzz_mime
 * finding). The body then says what GMime parsed it as.
 */
static void rewrite_fix_body_headers(GMimeObject *body)
{
    GMimeContentType *parsed = g_object_ref(g_mime_object_get_content_type(body));

    rewrite_fix_headers(g_mime_object_get_header_list(body));
    if (!rewrite_same_structure(parsed, g_mime_object_get_content_type(body)))
        g_mime_object_set_content_type(body, parsed);
    g_object_unref(parsed);
}

/*
 * A multipart/mixed that the token's removal left with one part (Lego
 * attaches the token next to the text) is replaced by that part: a reader
 * then gets the message as the sender wrote it, and the footer goes into
 * the text in place (SPEC §4.4) rather than into a part of its own, which
 * many clients list as an attachment. The only part's Content-* headers
 * become the top-level ones. A lone attached message stays inside: as the
 * whole body, clients show it as a bare header block. So does a part
 * followed by text after the close delimiter: the epilogue, where mail
 * with two boundary parameters has the parts a reader that takes the
 * other one shows. (A preamble goes: clients show neither, and mail
 * clients put "This is a multi-part message in MIME format." there.)
 */
/* NULL, or nothing but blanks and line ends. */
static gboolean rewrite_is_blank(const char *s)
{
    return s == NULL || s[strspn(s, " \t\r\n")] == 0;
}

static void rewrite_unwrap(GMimeMessage *msg)
{
    GMimeObject *body = g_mime_message_get_mime_part(msg);
    GMimeObject *only;

    while (GMIME_IS_MULTIPART(body)
           && g_mime_content_type_is_type(g_mime_object_get_content_type(body), "multipart", "mixed")
           && g_mime_multipart_get_count(GMIME_MULTIPART(body)) == 1
           && rewrite_is_blank(g_mime_multipart_get_epilogue(GMIME_MULTIPART(body)))
           && !GMIME_IS_MESSAGE_PART(only = g_mime_multipart_get_part(GMIME_MULTIPART(body), 0))) {
        /* GMime drops the old body before it takes the new one. */
        g_object_ref(only);
        g_mime_message_set_mime_part(msg, only);
        g_object_unref(only);
        body = only;
    }
}

GBytes *mime_rewrite(GMimeMessage *msg, const struct rewrite_params *p,
             char **message_id, GError **err)
{
    GMimeObject *obj = GMIME_OBJECT(msg);
    gboolean as_original = p->use_original_sender && p->original_sender && *p->original_sender;
    const struct rewrite_from *from;
    GPtrArray *delimiters;
    GString *own;
    GBytes *out;
    char   *id;
    char   *footer;

    if ((from = rewrite_check(p, err)) == NULL)
        return NULL;
    rewrite_unwrap(msg);
    rewrite_keep(g_mime_object_get_header_list(obj), message_keep);
    rewrite_keep(g_mime_object_get_header_list(g_mime_message_get_mime_part(msg)), body_keep);
    rewrite_fix_headers(g_mime_object_get_header_list(obj));
    rewrite_fix_body_headers(g_mime_message_get_mime_part(msg));
    if (g_mime_object_get_header(obj, "MIME-Version") == NULL)
        g_mime_object_append_header(obj, "MIME-Version", "1.0", NULL);

    if (!as_original && p->footer && *p->footer) {
        footer = rewrite_footer(p);
        mime_footer_add(msg, footer);
        g_free(footer);
    }
    g_mime_message_foreach(msg, rewrite_encode_part, NULL);
    delimiters = g_ptr_array_new_with_free_func(g_free);
    g_mime_message_foreach(msg, rewrite_collect_delimiter, delimiters);
    if (delimiters->len > 0)
        g_mime_message_foreach(msg, rewrite_keep_delimiters_out, delimiters);
    g_ptr_array_unref(delimiters);
    own = g_string_sized_new(512);
    rewrite_own_fields(own, p, from, &id);
    out = rewrite_write(msg, own, err);
    g_string_free(own, TRUE);
    if (out == NULL) {
        g_free(id);
        return NULL;
    }
    *message_id = id;
    return out;
}

/*
 * A text/plain body as it goes out: 7bit when it is printable ASCII in
 * lines a relay takes as they are, else quoted-printable (GMime's
 * encoder), which keeps it readable; either way with CRLF line ends and
 * one at the end.  Returns the Content-Transfer-Encoding.
 */
static const char *rewrite_text_body(GString *out, const char *text)
{
    size_t  len = strlen(text), col = 0;
    gboolean plain = TRUE;
    GMimeEncoding enc;
    char   *qp = NULL, *ended = NULL;
    const char *s;

    /* GMime's encoder ends a last line without a line end in a soft break. */
    if (len && text[len - 1] != '\n') {
        text = ended = g_strconcat(text, "\n", NULL);
        len++;
    }
    s = text;

    for (size_t i = 0; i < len && plain; i++) {
        unsigned char c = (unsigned char)text[i];

        col = c == '\n' ? 0 : col + 1;
        plain = (c == '\n' || c == '\t' || (c >= ' ' && c < 0x7f)) && col <= LINE_MAX_OCTETS;
    }
    if (!plain) {
        g_mime_encoding_init_encode(&enc, GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE);
        qp = g_malloc(g_mime_encoding_outlen(&enc, len) + 1);
        qp[g_mime_encoding_flush(&enc, text, len, qp)] = 0;
        s = qp;
    }
    for (const char *nl; (nl = strchr(s, '\n')); s = nl + 1) {
        g_string_append_len(out, s, nl - s);
        g_string_append(out, "\r\n");
    }
    if (*s)
        g_string_append_printf(out, "%s\r\n", s);
    g_free(qp);
    g_free(ended);
    return plain ? "7bit" : "quoted-printable";
}

GBytes *mime_compose_text(const struct rewrite_params *p, const char *subject, const char *text,
                          char **message_id, GError **err)
{
    const struct rewrite_from *from = rewrite_check(p, err);
    GString *out, *body;
    char   *plain;

    if (from == NULL)
        return NULL;
    out = g_string_sized_new(1024 + strlen(text));
    body = g_string_sized_new(strlen(text) + 64);
    rewrite_own_fields(out, p, from, message_id);
    g_string_append(out, "MIME-Version: 1.0\r\nSubject:");
    plain = rewrite_plain_value(subject);
    rewrite_encoded_value(out, "Subject", plain, "utf-8", "\r\n");
    g_string_append_printf(out, "Content-Type: text/plain; charset=utf-8\r\n"
                           "Content-Transfer-Encoding: %s\r\n\r\n", rewrite_text_body(body, text));
    g_string_append_len(out, body->str, body->len);
    g_string_free(body, TRUE);
    g_free(plain);
    return g_string_free_to_bytes(out);
}
