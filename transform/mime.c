/*
 * Entry points of the MIME module that are not about one transform step:
 * GMime set-up, parsing, the automatic-mail test and the header/body split.
 */
#include <string.h>

#include "transform/mime.h"

/* The module's one error domain lives with its most basic part. */
G_DEFINE_QUARK(postern-mime-error-quark, mime_error)

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
    g_mime_parser_options_set_address_compliance_mode(opts, GMIME_RFC_COMPLIANCE_LOOSE);
    g_mime_parser_options_set_parameter_compliance_mode(opts, GMIME_RFC_COMPLIANCE_LOOSE);
    g_mime_parser_options_set_rfc2047_compliance_mode(opts, GMIME_RFC_COMPLIANCE_LOOSE);
    g_once_init_leave(&done, 1);
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
    if (GMIME_IS_MESSAGE(obj) && g_mime_message_get_mime_part(GMIME_MESSAGE(obj)) != NULL)
        mime_fix_headers(g_mime_message_get_mime_part(GMIME_MESSAGE(obj)));
    else if (GMIME_IS_MULTIPART(obj))
        for (int i = 0; i < g_mime_multipart_get_count(GMIME_MULTIPART(obj)); i++)
            mime_fix_headers(g_mime_multipart_get_part(GMIME_MULTIPART(obj), i));
    else if (GMIME_IS_MESSAGE_PART(obj)
         && g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj)) != NULL)
        mime_fix_headers(GMIME_OBJECT(g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj))));
}

static GMimeMessage *mime_parse_stream(GMimeStream *stream, size_t len, GError **err)
{
    GMimeParser *parser = g_mime_parser_new_with_stream(stream);
    GMimeMessage *msg = g_mime_parser_construct_message(parser, NULL);

    g_object_unref(parser);
    g_object_unref(stream);
    if (msg == NULL) {
        g_set_error(err, MIME_ERROR, MIME_ERROR_PARSE,
                "not a message: no header section at the start (%zu bytes)", len);
    } else if (g_mime_message_get_mime_part(msg) == NULL) {
        /* Every later step relies on a body, even an empty one. */
        g_set_error(err, MIME_ERROR, MIME_ERROR_PARSE, "GMime found no body");
        g_clear_object(&msg);
    }
    if (msg != NULL)
        mime_fix_headers(GMIME_OBJECT(msg));
    return msg;
}

GMimeMessage *mime_parse(const char *raw, size_t len, GError **err)
{
    /*
     * The parser keeps references into its stream rather than copies of
     * each part, so the stream holds its own copy of the bytes: the
     * caller's buffer (an LMDB page, say) may go before the message does.
     */
    return mime_parse_stream(g_mime_stream_mem_new_with_buffer(raw, len), len, err);
}

GMimeMessage *mime_parse_array(GByteArray *raw, GError **err)
{
    GMimeStream *stream = g_mime_stream_mem_new_with_byte_array(raw);

    /* Not the stream's to free: a 30 MiB message is then in memory once. */
    g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(stream), FALSE);
    return mime_parse_stream(stream, raw->len, err);
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
