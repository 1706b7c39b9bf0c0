/*
 * Entry points of the MIME module that are not about one transform step:
 * GMime set-up, parsing, the automatic-mail test and the header/body split.
 */
#include <string.h>

#include "transform/mime.h"

/* The module's one error domain lives with its most basic part. */
G_DEFINE_QUARK(postern-mime-error-quark, mime_error)

/*
 * What one parse, in this thread, learns from GMime's warnings. GMime keeps
 * the parser options in every header it parsed and may warn again when a
 * value is decoded later: outside mime_parse_stream() the pointer is NULL
 * and those warnings are ignored.
 */
struct mime_scan {
    gint64  body_start;             /* offset of the first byte after the top-level header */
    gint64  first_bad;              /* earliest dropped header line in a part, or -1 */
};

static _Thread_local struct mime_scan *mime_scan_now;

/*
 * GMime drops a line in a part's header block that is no header field
 * ("ignore invalid headers", GMime 3.2 gmime-parser.c), up to the blank
 * line, and drops the whole part when a delimiter comes first. RFC 5322
 * readers (Python's email, Postfix) end the header block at such a line
 * instead: it and what follows are the part's body. Note where it was.
 * The top-level header block is Postfix's to judge; it comes to us clean.
 */
static void mime_on_warning(gint64 offset, GMimeParserWarning code, const gchar *item,
                            gpointer data)
{
    struct mime_scan *scan = mime_scan_now;

    (void)item;
    (void)data;
    if (scan == NULL || code != GMIME_CRIT_INVALID_HEADER_NAME || offset < scan->body_start)
        return;
    if (scan->first_bad < 0 || offset < scan->first_bad)
        scan->first_bad = offset;
}

void    mime_init(void)
{
    static gsize done;
    GMimeParserOptions *opts;

    if (!g_once_init_enter(&done))
        return;
    g_mime_init();

    /*
     * Mail from the wild breaks every RFC, and a message we cannot parse
     * goes to hold: parse as leniently as GMime can. These are GMime's
     * defaults today; saying so here keeps them if the defaults change.
     */
    opts = g_mime_parser_options_get_default();
    g_mime_parser_options_set_warning_callback(opts, mime_on_warning, NULL);
    g_mime_parser_options_set_address_compliance_mode(opts, GMIME_RFC_COMPLIANCE_LOOSE);
    g_mime_parser_options_set_parameter_compliance_mode(opts, GMIME_RFC_COMPLIANCE_LOOSE);
    g_mime_parser_options_set_rfc2047_compliance_mode(opts, GMIME_RFC_COMPLIANCE_LOOSE);
    g_once_init_leave(&done, 1);
}

/*
 * GMime 3.2 writes a parameter whose value needs RFC 2231 encoding and
 * does not fit its line in continuations of 76 - (name + 6) octets
 * (g_mime_param_list_encode()): for a name of 68 to 70 octets a piece
 * makes no progress, and it appends "name*N*=" until memory runs out
 * (fuzz_mime: 24 GB and minutes from a 691-byte message). It writes a
 * part's Content-Type or Content-Disposition anew whenever one changes: a
 * repair here, a new boundary, the footer's charset, a header the rewrite
 * encodes. The names mail uses are a few octets long; one longer than
 * MIME_PARAM_NAME_MAX is no parameter any reader knows, and goes from
 * every part's fields (mime_fix_headers()) before GMime writes any: the
 * field set anew replaces the others of its name, so none is left.
 */
#define MIME_PARAM_NAME_MAX 64

static gboolean mime_params_fit(GMimeParamList *list)
{
    for (int i = 0; i < g_mime_param_list_length(list); i++)
        if (strlen(g_mime_param_get_name(g_mime_param_list_get_parameter_at(list, i)))
            > MIME_PARAM_NAME_MAX)
            return FALSE;
    return TRUE;
}

/* The parameters of from that fit, set on to: a new object, so nothing is written yet. */
static void mime_params_copy_fit(GMimeParamList *from, GMimeParamList *to)
{
    for (int i = 0; i < g_mime_param_list_length(from); i++) {
        GMimeParam *param = g_mime_param_list_get_parameter_at(from, i);
        const char *name = g_mime_param_get_name(param);

        if (strlen(name) <= MIME_PARAM_NAME_MAX && g_mime_param_get_value(param) != NULL)
            g_mime_param_list_set_parameter(to, name, g_mime_param_get_value(param));
    }
}

/* type, or a copy without the parameters that do not fit; a new reference either way. */
static GMimeContentType *mime_type_fit(GMimeContentType *type)
{
    GMimeContentType *fit;

    if (mime_params_fit(g_mime_content_type_get_parameters(type)))
        return g_object_ref(type);
    fit = g_mime_content_type_new(g_mime_content_type_get_media_type(type),
                                  g_mime_content_type_get_media_subtype(type));
    mime_params_copy_fit(g_mime_content_type_get_parameters(type),
                         g_mime_content_type_get_parameters(fit));
    return fit;
}

static GMimeContentDisposition *mime_disposition_fit(GMimeContentDisposition *disposition)
{
    GMimeContentDisposition *fit;

    if (mime_params_fit(g_mime_content_disposition_get_parameters(disposition)))
        return g_object_ref(disposition);
    fit = g_mime_content_disposition_new();
    g_mime_content_disposition_set_disposition(fit,
        g_mime_content_disposition_get_disposition(disposition));
    mime_params_copy_fit(g_mime_content_disposition_get_parameters(disposition),
                         g_mime_content_disposition_get_parameters(fit));
    return fit;
}

/*
 * GMime writes each parsed header's raw bytes as they came, and keeps them
 * as a C string: a NUL in a header cuts it there, losing the newline after
 * it, and a header at the very end of the input has none. On write, the
 * last header of a block then swallows the blank line and body lines go
 * out as header fields of the signed copy (header injection), or the next
 * header joins its line. End each such raw value with its newline, where
 * GMime parsed it.
 */
static void mime_fix_headers(GMimeObject *obj)
{
    GMimeHeaderList *list = g_mime_object_get_header_list(obj);
    GMimeContentType *type = g_mime_object_get_content_type(obj);
    GMimeContentDisposition *disposition = g_mime_object_get_content_disposition(obj);

    /* What goes back (below) is without the parameters GMime cannot write. */
    type = type ? mime_type_fit(type) : NULL;
    disposition = disposition ? mime_disposition_fit(disposition) : NULL;
    for (int i = 0; i < g_mime_header_list_get_count(list); i++) {
        GMimeHeader *header = g_mime_header_list_get_header_at(list, i);
        const char *value = g_mime_header_get_raw_value(header);
        size_t  n = value ? strlen(value) : 0;

        if (value != NULL && (n == 0 || value[n - 1] != '\n')) {
            char   *fixed = g_strconcat(value, "\n", NULL);

            g_mime_header_set_raw_value(header, fixed);
            g_free(fixed);
        }
    }
    /*
     * A changed Content-Type or Content-Disposition field is parsed again
     * (GMime's header_changed), and when it is not the last of its name,
     * the part takes the value of a field GMime did not parse the structure
     * by: a multipart lost its boundary and was written with "--(null)"
     * delimiters (a fuzz_mime finding). The part gets back what it was
     * parsed with, which leaves one such field, holding that value.
     */
    if (!GMIME_IS_MESSAGE(obj) && type != NULL && g_mime_object_get_content_type(obj) != type)
        g_mime_object_set_content_type(obj, type);
    if (!GMIME_IS_MESSAGE(obj) && disposition != NULL
        && g_mime_object_get_content_disposition(obj) != disposition)
        g_mime_object_set_content_disposition(obj, disposition);
    if (type != NULL)
        g_object_unref(type);
    if (disposition != NULL)
        g_object_unref(disposition);
    if (GMIME_IS_MESSAGE(obj) && g_mime_message_get_mime_part(GMIME_MESSAGE(obj)) != NULL)
        mime_fix_headers(g_mime_message_get_mime_part(GMIME_MESSAGE(obj)));
    else if (GMIME_IS_MULTIPART(obj))
        for (int i = 0; i < g_mime_multipart_get_count(GMIME_MULTIPART(obj)); i++)
            mime_fix_headers(g_mime_multipart_get_part(GMIME_MULTIPART(obj), i));
    else if (GMIME_IS_MESSAGE_PART(obj)
         && g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj)) != NULL)
        mime_fix_headers(GMIME_OBJECT(g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj))));
}

/*
 * RFC 2046 §5.1.1 and GMime's writer disagree on a multipart whose close
 * delimiter never came (GMime 3.2 gmime-multipart.c): GMime writes none
 * either (its private write_end_boundary, cleared by the parser), so a part
 * the footer adds after it is left unclosed, and readers take the message
 * for truncated. Every multipart gets its close delimiter.
 *
 * A multipart that ran to the end of the input with no parts at all keeps
 * everything in its preamble, the input's last line end included; GMime
 * writes a line end after the preamble, which would add an empty line to
 * the sender's text. Where its preamble ended at a parent's delimiter
 * instead, GMime left that line end to the delimiter, as for parts. at_end
 * says whether obj's content ran to the end of the input: only the last
 * child of a multipart that never closed can.
 */
/*
 * The last part of a multipart that never closed runs to the end of the
 * input and keeps the input's last line end; GMime writes one more before
 * the delimiter that now follows it, which RFC 2046 readers take as a line
 * of the part. Its content (as sent, still encoded) loses that line end.
 */
static void mime_trim_last_line(GMimePart *part)
{
    GMimeDataWrapper *content = g_mime_part_get_content(part);
    GMimeStream *stream = content ? g_mime_data_wrapper_get_stream(content) : NULL;
    GByteArray *bytes;
    GMimeStream *mem;
    GMimeDataWrapper *trimmed;
    guint   cut;

    if (stream == NULL)
        return;
    bytes = g_byte_array_new();
    mem = g_mime_stream_mem_new_with_byte_array(bytes);
    g_mime_stream_reset(stream);
    g_mime_stream_write_to_stream(stream, mem);
    g_mime_stream_reset(stream);
    cut = bytes->len > 0 && bytes->data[bytes->len - 1] == '\n'
        ? (bytes->len > 1 && bytes->data[bytes->len - 2] == '\r' ? 2 : 1) : 0;
    if (cut > 0) {
        /* The same bytes in the same encoding, so GMime writes them as they came. */
        g_byte_array_set_size(bytes, bytes->len - cut);
        g_mime_stream_reset(mem);
        trimmed = g_mime_data_wrapper_new_with_stream(mem,
                                                      g_mime_data_wrapper_get_encoding(content));
        g_mime_part_set_content(part, trimmed);
        g_object_unref(trimmed);
    }
    g_object_unref(mem);
}

/* obj, or the body of the message obj attaches. */
static GMimeObject *mime_inside(GMimeObject *obj)
{
    GMimeMessage *inner;

    if (GMIME_IS_MESSAGE_PART(obj)
        && (inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj))) != NULL)
        return g_mime_message_get_mime_part(inner);
    return obj;
}

/*
 * GMime parses a boundary the way it came, but where it writes the
 * Content-Type anew (a repaired header) it puts a control or 8-bit byte
 * into an RFC 2047 encoded word, which its lenient parser reads back as
 * something else next to "=?" text the sender had there: the copy's
 * delimiters then match no boundary and the multipart reads as unclosed
 * (a fuzz_mime finding). RFC 2046 §5.1.1 allows neither, nor a blank at
 * the end, which GMime leaves out of the parameter it writes but keeps in
 * the delimiters (another), nor more than 70 octets; past 994 the close
 * delimiter line does not cross SMTP. Printable ASCII outside the RFC's
 * set (a quote) round-trips and stays.
 */
static gboolean mime_boundary_fits(const char *boundary)
{
    size_t  n = 0;

    for (; boundary[n]; n++)
        if ((unsigned char) boundary[n] < 0x20 || (unsigned char) boundary[n] > 0x7e)
            return FALSE;
    return n >= 1 && n <= 994 && boundary[n - 1] != ' ';
}

static void mime_fix_multiparts(GMimeObject *obj, gboolean at_end)
{
    GMimeMultipart *mp;
    char   *prologue;
    size_t  n;
    int     count;
    gboolean bounded;

    obj = mime_inside(obj);
    if (obj == NULL || !GMIME_IS_MULTIPART(obj))
        return;
    mp = GMIME_MULTIPART(obj);
    count = g_mime_multipart_get_count(mp);
    /* Without a boundary GMime scans all of it into the preamble, up to a
     * parent's delimiter or the end, and leaves the flag as it was. */
    bounded = g_mime_object_get_content_type_parameter(obj, "boundary") != NULL;
    at_end = at_end && (!mp->write_end_boundary || !bounded);
    for (int i = 0; i < count; i++) {
        GMimeObject *child = g_mime_multipart_get_part(mp, i);
        GMimeObject *inside = mime_inside(child);

        if (at_end && i == count - 1 && inside != NULL && GMIME_IS_PART(inside))
            mime_trim_last_line(GMIME_PART(inside));
        mime_fix_multiparts(child, at_end && i == count - 1);
    }
    prologue = (char *) g_mime_multipart_get_prologue(mp);
    n = prologue ? strlen(prologue) : 0;
    if (count == 0 && at_end && n > 0 && prologue[n - 1] == '\n') {
        /* GMime stores the preamble with LF line ends and writes them anew. */
        prologue = g_strndup(prologue, n - 1);
        g_mime_multipart_set_prologue(mp, prologue);
        g_free(prologue);
    }
    /*
     * Without a boundary there is nothing to close, and the flag also has
     * the parent write a line end after this multipart: its preamble then
     * ends with the one line end GMime writes after it, as it came.
     */
    mp->write_end_boundary = bounded;

    /* The parts are objects now: GMime writes them between new delimiters. */
    if (bounded && !mime_boundary_fits(g_mime_object_get_content_type_parameter(obj, "boundary")))
        g_mime_multipart_set_boundary(mp, NULL);
}

/* Offset of the first byte after the top-level header block (len if none). */
static gint64 mime_body_start(const guint8 *raw, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (raw[i] == '\n' && (i == 0 || (i + 1 < len && raw[i + 1] == '\n')
                               || (i + 2 < len && raw[i + 1] == '\r' && raw[i + 2] == '\n')))
            return (gint64) i + 1;
    return (gint64) len;
}

/* One GMime parse of stream, with the dropped header lines noted in scan. */
static GMimeMessage *mime_parse_once(GMimeStream *stream, struct mime_scan *scan)
{
    GMimeParser *parser = g_mime_parser_new_with_stream(stream);
    GMimeMessage *msg;

    scan->first_bad = -1;
    mime_scan_now = scan;
    msg = g_mime_parser_construct_message(parser, NULL);
    mime_scan_now = NULL;
    g_object_unref(parser);
    return msg;
}

/*
 * Repairs of one message: each costs a parse, so a crafted message cannot
 * have many, nor a large one make the worker parse more than about
 * MIME_REPAIR_BYTES; past that the rest of its lines go as GMime reads them.
 */
#define MIME_MAX_REPAIRS 16
#define MIME_REPAIR_BYTES (64u << 20)

/*
 * Is there a NUL in a line of raw that starts with "--"?  With blank (raw
 * itself, writable), each such NUL becomes a space (mime_parse_stream()
 * says why).
 */
static gboolean mime_nul_in_dash_line(const guint8 *raw, size_t len, guint8 *blank)
{
    gboolean found = FALSE;

    for (size_t at = 0; at < len;) {
        const guint8 *eol = memchr(raw + at, '\n', len - at);
        size_t end = eol ? (size_t) (eol - raw) : len;

        if (end - at >= 2 && raw[at] == '-' && raw[at + 1] == '-')
            for (size_t i = at; i < end; i++)
                if (raw[i] == 0) {
                    found = TRUE;
                    if (!blank)
                        return TRUE;
                    blank[i] = ' ';
                }
        at = end + 1;
    }
    return found;
}

/*
 * Parses stream, which holds the len bytes at raw, and takes it. Where
 * GMime dropped a line of a part's header block that is no header field,
 * an empty line is put before it and the bytes parsed again, so that the
 * line starts the part's body as RFC 5322 readers have it; the repaired
 * bytes belong to the message's stream. One line per round, the earliest
 * first: a later dropped line of the same block is body after the repair.
 */
static GMimeMessage *mime_parse_stream(GMimeStream *stream, const guint8 *raw, size_t len,
                                       GError **err)
{
    struct mime_scan scan = {.body_start = mime_body_start(raw, len)};
    int     rounds = (int) MIN(MIME_MAX_REPAIRS, MAX(1, MIME_REPAIR_BYTES / (len + 1)));
    GMimeMessage *msg;

    /*
     * A close delimiter at the very end of the input, with no line end,
     * leaves the CR before it in the last part's content (GMime 3.2), and
     * a bare CR has the part re-encoded. Mail that came by SMTP ends with
     * CRLF; other input gets one.
     */
    /*
     * A line that starts "--" and holds a NUL: GMime 3.2 compares a
     * candidate delimiter as a C string, so such a line (no delimiter of
     * ours, a NUL is in no boundary) can make it misplace a part's end
     * (fuzz_mime: an outer multipart left unclosed in the copy). Those NULs
     * become spaces; a NUL anywhere else is content and is kept (the
     * rewrite sends such a part quoted-printable).
     */
    if (len > 0 && (raw[len - 1] != '\n' || mime_nul_in_dash_line(raw, len, NULL))) {
        GByteArray *ended = g_byte_array_sized_new(len + 2);

        g_byte_array_append(ended, raw, len);
        if (raw[len - 1] != '\n')
            g_byte_array_append(ended, (const guint8 *) "\r\n", 2);
        mime_nul_in_dash_line(ended->data, ended->len, ended->data);
        g_object_unref(stream);
        raw = ended->data;
        len = ended->len;
        stream = g_mime_stream_mem_new_with_byte_array(ended);
    }
    msg = mime_parse_once(stream, &scan);

    for (int round = 0; msg != NULL && scan.first_bad >= 0 && scan.first_bad < (gint64) len
         && round < rounds; round++) {
        size_t  at = (size_t) scan.first_bad;
        const guint8 *eol = memchr(raw + at, '\n', len - at);
        gboolean crlf = eol != NULL && eol > raw + at && eol[-1] == '\r';
        GByteArray *next = g_byte_array_sized_new(len + 2);

        /* The empty line takes the line end style of the line it precedes. */
        g_byte_array_append(next, raw, at);
        g_byte_array_append(next, (const guint8 *) (crlf ? "\r\n" : "\n"), crlf ? 2 : 1);
        g_byte_array_append(next, raw + at, len - at);
        /* raw is the stream's until both go: our reference keeps it to here. */
        g_object_unref(msg);
        g_object_unref(stream);
        raw = next->data;
        len = next->len;
        stream = g_mime_stream_mem_new_with_byte_array(next);
        msg = mime_parse_once(stream, &scan);
    }
    g_object_unref(stream);
    if (msg == NULL) {
        g_set_error(err, MIME_ERROR, MIME_ERROR_PARSE,
                "not a message: no header section at the start (%zu bytes)", len);
    } else if (g_mime_message_get_mime_part(msg) == NULL) {
        /* Every later step relies on a body, even an empty one. */
        g_set_error(err, MIME_ERROR, MIME_ERROR_PARSE, "GMime found no body");
        g_clear_object(&msg);
    }
    if (msg != NULL) {
        mime_fix_headers(GMIME_OBJECT(msg));
        mime_fix_multiparts(g_mime_message_get_mime_part(msg), TRUE);
    }
    return msg;
}

GMimeMessage *mime_parse(const char *raw, size_t len, GError **err)
{
    /*
     * The parser keeps references into its stream rather than copies of
     * each part, so the stream holds its own copy of the bytes: the
     * caller's buffer (an LMDB page, say) may go before the message does.
     */
    GMimeStream *stream = g_mime_stream_mem_new_with_buffer(raw, len);
    GByteArray *copy = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(stream));

    return mime_parse_stream(stream, copy->data, copy->len, err);
}

GMimeMessage *mime_parse_array(GByteArray *raw, GError **err)
{
    GMimeStream *stream = g_mime_stream_mem_new_with_byte_array(raw);

    /* Not the stream's to free: a 30 MiB message is then in memory once. */
    g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(stream), FALSE);
    return mime_parse_stream(stream, raw->data, raw->len, err);
}

/* Whether the first word of a header value (up to a blank or ';') is word. */
static gboolean first_word_is(const char *value, const char *word)
{
    size_t  len = strlen(word);

    value += strspn(value, " \t");
    return g_ascii_strncasecmp(value, word, len) == 0
        && (value[len] == 0 || strchr(" \t;", value[len]) != NULL);
}

gboolean mime_is_automatic(GMimeMessage *msg)
{
    GMimeObject *obj = GMIME_OBJECT(msg);
    GMimeObject *body = g_mime_message_get_mime_part(msg);
    GMimeContentType *type = body ? g_mime_object_get_content_type(body) : NULL;
    const char *v;

    if ((v = g_mime_object_get_header(obj, "Auto-Submitted")) != NULL && !first_word_is(v, "no"))
        return TRUE;
    if ((v = g_mime_object_get_header(obj, "Precedence")) != NULL
        && (first_word_is(v, "bulk") || first_word_is(v, "junk") || first_word_is(v, "list")))
        return TRUE;
    if (g_mime_object_get_header(obj, "List-Id") != NULL)
        return TRUE;

    /* Any report: delivery (RFC 3464), disposition (RFC 8098), feedback. */
    return type != NULL
        && (g_mime_content_type_is_type(type, "multipart", "report")
        || g_mime_content_type_is_type(type, "message", "delivery-status"));
}

gboolean mime_split(const char *msg, size_t len, size_t *header_len, size_t *body_offset)
{
    const char *blank;

    if (len >= 2 && msg[0] == '\r' && msg[1] == '\n') {
        *header_len = 0;
        *body_offset = 2;
        return TRUE;
    }
    if ((blank = memmem(msg, len, "\r\n\r\n", 4)) == NULL)
        return FALSE;
    *header_len = blank - msg + 2;
    *body_offset = blank - msg + 4;
    return TRUE;
}
