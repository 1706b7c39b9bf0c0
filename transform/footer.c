/*
 * The footer (SPEC §4.4): appended to the text a recipient reads when the
 * message structure allows it, else added as a text/plain part of its own.
 *
 * Body text is handled as bytes in the part's charset; the separators and
 * the HTML insertion point are found and written as ASCII, which holds for
 * every charset used for mail bodies (not for UTF-16, which mail avoids).
 */
#include <string.h>

#include "transform/mime.h"

static gboolean footer_is(GMimeObject *obj, const char *type, const char *subtype)
{
    return g_mime_content_type_is_type(g_mime_object_get_content_type(obj), type, subtype);
}

/*
 * Whether obj is text the reader reads as the message: text/plain (or
 * text/html when html) not marked as an attachment. An attached text file
 * keeps its bytes; the footer goes next to it.
 */
static gboolean footer_is_read(GMimeObject *obj, gboolean html)
{
    const char *disposition = g_mime_object_get_disposition(obj);

    return GMIME_IS_PART(obj)
        && (footer_is(obj, "text", "plain") || (html && footer_is(obj, "text", "html")))
        && (disposition == NULL || g_ascii_strcasecmp(disposition, GMIME_DISPOSITION_ATTACHMENT) != 0);
}

/*
 * The footer as it reads in a text/plain or a text/html body: UTF-8 (bytes
 * that are not become U+FFFD), CRLF line ends, no trailing blank lines. In
 * HTML every character outside printable ASCII and every markup character
 * becomes a character reference, so the footer is ASCII and fits any body
 * charset unconverted.
 *
 * Blanks at line ends go: under format=flowed they would join a line to
 * the next. The signature separator "-- " keeps its blank, which is what
 * makes it one, and RFC 3676 §4.3 exempts it from flowing. In flowed text
 * a line starting with a blank, ">" or "From " is space-stuffed (§4.4), or
 * the reader's client would take it for quoted or flowed text.
 */
static GString *footer_render(const char *text, gboolean html, gboolean flowed)
{
    GString *out = g_string_new(html ? "<div>" : NULL);
    char   *trimmed = g_strchomp(g_utf8_make_valid(text, -1));
    char  **lines = g_strsplit(trimmed, "\n", -1);

    for (char **line = lines; *line; line++) {
        gsize   start = out->len;

        if (flowed && (**line == ' ' || **line == '>' || g_str_has_prefix(*line, "From ")))
            g_string_append_c(out, ' ');
        for (const char *s = *line; *s; s = g_utf8_next_char(s)) {
            gunichar c = g_utf8_get_char(s);

            if (c == '\r')
                continue;
            if (html && (c > '~' || strchr("<>&\"'", (int) c) != NULL))
                g_string_append_printf(out, "&#%u;", c);
            else
                g_string_append_unichar(out, c);
        }
        if (strcmp(out->str + start, "-- ") != 0)
            while (out->len > start && out->str[out->len - 1] == ' ')
                g_string_truncate(out, out->len - 1);
        if (line[1] != NULL)
            g_string_append(out, html ? "<br>\r\n" : "\r\n");
    }
    g_string_append(out, html ? "</div>\r\n" : "\r\n");
    g_strfreev(lines);
    g_free(trimmed);
    return out;
}

/* Charset conversion under GMime's names for charsets; NULL when the text
 * is not valid in from, or to cannot represent it, or either is unknown. */
static char *footer_convert(const char *in, gsize len, const char *to,
                const char *from, gsize *out_len)
{
    return g_convert(in, len, g_mime_charset_iconv_name(to),
             g_mime_charset_iconv_name(from), NULL, out_len, NULL);
}

/* The transfer-decoded content of part (empty when it has none). */
static GByteArray *footer_decode(GMimePart *part)
{
    GMimeDataWrapper *content = g_mime_part_get_content(part);
    GByteArray *text = g_byte_array_new();
    GMimeStream *sink;

    if (content != NULL) {
        sink = g_mime_stream_mem_new_with_byte_array(text);
        g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(sink), FALSE);
        g_mime_data_wrapper_write_to_stream(content, sink);
        g_object_unref(sink);
    }
    return text;
}

/*
 * Gives part new decoded content, which GMime encodes on write in the
 * part's transfer encoding. Only a part sent as 7bit (or without an
 * encoding) may now hold what 7bit cannot carry: it gets the encoding GMime
 * finds best within 7 bits, quoted-printable for text. Takes text.
 */
static void footer_set_content(GMimePart *part, GByteArray *text)
{
    GMimeStream *stream = g_mime_stream_mem_new_with_byte_array(text);
    GMimeDataWrapper *content;
    GMimeContentEncoding encoding = g_mime_part_get_content_encoding(part);
    GMimeContentEncoding best;

    content = g_mime_data_wrapper_new_with_stream(stream, GMIME_CONTENT_ENCODING_DEFAULT);
    g_mime_part_set_content(part, content);
    g_object_unref(content);
    g_object_unref(stream);
    if (encoding != GMIME_CONTENT_ENCODING_DEFAULT && encoding != GMIME_CONTENT_ENCODING_7BIT)
        return;
    best = g_mime_part_get_best_content_encoding(part, GMIME_ENCODING_CONSTRAINT_7BIT);
    if (best != GMIME_CONTENT_ENCODING_7BIT)
        g_mime_part_set_content_encoding(part, best);
}

/*
 * Brings footer (UTF-8) into the body's charset; FALSE when that charset
 * cannot hold it (an ASCII or Latin-1 body, a footer with "–") or GMime
 * does not know it. The body is then left as it came and the footer goes
 * into a UTF-8 part of its own, as SPEC §4.4 has it for what cannot take
 * the footer in place. Moving the body to UTF-8 instead would keep every
 * character only in theory: its bytes are decoded by the label, and mail
 * labelled ISO-8859-1 is often Windows-1252, which readers display as
 * such, so "€" (0x80) would become a C1 control; and text signed inline
 * (PGP) would no longer verify. An empty body has no text to keep: it
 * takes the footer in UTF-8 (a message that was only its token).
 */
static gboolean footer_recode(GMimePart *part, const GByteArray *body, GString *footer)
{
    const char *charset = g_mime_object_get_content_type_parameter(GMIME_OBJECT(part), "charset");
    char   *s;
    gsize   len;

    s = footer_convert(footer->str, footer->len, charset ? charset : "us-ascii", "utf-8", &len);
    if (s == NULL && body->len == 0)
        g_mime_object_set_content_type_parameter(GMIME_OBJECT(part), "charset", "utf-8");
    if (s == NULL)
        return body->len == 0;
    g_string_truncate(footer, 0);
    g_string_append_len(footer, s, len);
    g_free(s);
    return TRUE;
}

/* Where the footer goes: before the last </body> of HTML, else at the end. */
static gsize footer_offset(const GByteArray *body, gboolean html)
{
    static const char end[] = "</body>";
    const gsize len = sizeof(end) - 1;

    for (gsize at = body->len; html && at >= len; at--)
        if (g_ascii_strncasecmp((const char *) body->data + at - len, end, len) == 0)
            return at - len;
    return body->len;
}

/*
 * Appends the footer to a text part in place, its charset, format=flowed
 * and transfer encoding kept. Plain text gets a blank line before the
 * footer. FALSE when the charset cannot hold the footer; the part is then
 * unchanged.
 */
static gboolean footer_append(GMimePart *part, const char *text)
{
    const char *format = g_mime_object_get_content_type_parameter(GMIME_OBJECT(part), "format");
    gboolean html = footer_is(GMIME_OBJECT(part), "text", "html");
    /* format=flowed (RFC 3676) is a text/plain matter: HTML is not stuffed. */
    GString *footer = footer_render(text, html,
                    !html && format && g_ascii_strcasecmp(format, "flowed") == 0);
    GByteArray *body = footer_decode(part);
    GByteArray *out;
    gsize   at;

    if (!footer_recode(part, body, footer)) {
        g_byte_array_unref(body);
        g_string_free(footer, TRUE);
        return FALSE;
    }
    at = footer_offset(body, html);
    out = g_byte_array_sized_new(body->len + footer->len + 4);
    g_byte_array_append(out, body->data, at);
    if (at > 0 && body->data[at - 1] != '\n')
        g_byte_array_append(out, (const guint8 *) "\r\n", 2);
    if (at > 0 && !html)
        g_byte_array_append(out, (const guint8 *) "\r\n", 2);
    g_byte_array_append(out, (const guint8 *) footer->str, footer->len);
    if (at < body->len)     /* an empty body has data == NULL: no NULL + 0 */
        g_byte_array_append(out, body->data + at, body->len - at);
    footer_set_content(part, out);
    g_byte_array_unref(body);
    g_string_free(footer, TRUE);
    return TRUE;
}

/* The footer as an inline text/plain part of its own, in UTF-8. */
static GMimeObject *footer_part(const char *text)
{
    GMimeObject *part = GMIME_OBJECT(g_mime_text_part_new_with_subtype("plain"));
    GString *footer = footer_render(text, FALSE, FALSE);
    gsize   len = footer->len;

    g_mime_object_set_content_type_parameter(part, "charset", "utf-8");
    g_mime_object_set_disposition(part, GMIME_DISPOSITION_INLINE);
    footer_set_content(GMIME_PART(part),
               g_byte_array_new_take((guint8 *) g_string_free(footer, FALSE), len));
    return part;
}

/* A new multipart/mixed holding obj unchanged, then the footer part. */
static GMimeObject *footer_wrap(GMimeObject *obj, const char *text)
{
    GMimeMultipart *mixed = g_mime_multipart_new_with_subtype("mixed");
    GMimeObject *footer = footer_part(text);

    g_mime_multipart_add(mixed, obj);
    g_mime_multipart_add(mixed, footer);
    g_object_unref(footer);
    return GMIME_OBJECT(mixed);
}

/*
 * Each text alternative gets the footer, so that it shows whichever one
 * the reader's client picks. One whose charset rules that out is wrapped
 * instead, which keeps the footer in that alternative too.
 */
static void footer_alternatives(GMimeMultipart *alt, const char *text)
{
    for (int i = 0; i < g_mime_multipart_get_count(alt); i++) {
        GMimeObject *part = g_mime_multipart_get_part(alt, i);
        GMimeObject *wrapped;

        if (!footer_is_read(part, TRUE) || footer_append(GMIME_PART(part), text))
            continue;
        wrapped = footer_wrap(part, text);
        g_object_unref(g_mime_multipart_replace(alt, i, wrapped));
        g_object_unref(wrapped);
    }
}

void    mime_footer_add(GMimeMessage *msg, const char *text)
{
    GMimeObject *body = g_mime_message_get_mime_part(msg);
    GMimeObject *part;

    /*
     * A multipart whose boundary never occurs has no parts: its text is all
     * preamble, which readers do not show next to a part. Added to, it
     * would show the footer alone; wrapped, it goes on as it came.
     */
    if (GMIME_IS_MULTIPART(body) && g_mime_multipart_get_count(GMIME_MULTIPART(body)) == 0) {
        part = footer_wrap(body, text);
        g_mime_message_set_mime_part(msg, part);
        g_object_unref(part);
    } else if (GMIME_IS_MULTIPART(body) && footer_is(body, "multipart", "alternative")) {
        footer_alternatives(GMIME_MULTIPART(body), text);
    } else if (GMIME_IS_MULTIPART(body) && footer_is(body, "multipart", "mixed")) {
        part = footer_part(text);
        g_mime_multipart_add(GMIME_MULTIPART(body), part);
        g_object_unref(part);
    } else if (!(footer_is_read(body, FALSE) && footer_append(GMIME_PART(body), text))) {
        part = footer_wrap(body, text);
        g_mime_message_set_mime_part(msg, part);
        g_object_unref(part);
    }
}
