/*
 * Token extraction (SPEC §4.1): find the part that carries the token, take
 * the token out of it, and remove the part from the message.
 */
#include <string.h>

#include "transform/mime.h"

/*
 * The transfer-decoded content of part when it starts with prefix, else
 * NULL. Most parts are not the token part: decoding stops as soon as the
 * first bytes tell the prefix apart, so a large attachment costs one read
 * buffer, not a decoded copy of itself.
 */
static GByteArray *mime_token_content(GMimePart *part, const char *prefix)
{
    GMimeDataWrapper *content = g_mime_part_get_content(part);
    size_t  plen = strlen(prefix);
    GMimeStream *decoded;
    GMimeFilter *decoder;
    GByteArray *text;
    char    buf[4096];
    ssize_t n;

    if (content == NULL)
        return NULL;
    decoded = g_mime_stream_filter_new(g_mime_data_wrapper_get_stream(content));
    decoder = g_mime_filter_basic_new(g_mime_data_wrapper_get_encoding(content), FALSE);
    g_mime_stream_filter_add(GMIME_STREAM_FILTER(decoded), decoder);
    g_object_unref(decoder);
    g_mime_stream_reset(decoded);

    text = g_byte_array_new();
    /*
     * A filter stream may return nothing for one source read (a block of
     * whitespace in base64) before its end, and an empty GByteArray has
     * no data pointer: compare only once there are bytes.
     */
    while (!g_mime_stream_eos(decoded) &&
           (n = g_mime_stream_read(decoded, buf, sizeof(buf))) >= 0) {
        if (n == 0)
            continue;
        g_byte_array_append(text, (const guint8 *) buf, n);
        if (memcmp(text->data, prefix, MIN(text->len, plen)) != 0)
            break;
    }
    g_object_unref(decoded);
    if (text->len == 0 || text->len < plen || memcmp(text->data, prefix, plen) != 0) {
        g_byte_array_unref(text);
        return NULL;
    }
    return text;
}

/*
 * Depth-first search for the token part. parents holds the multiparts on
 * the way down to the part found, for its removal; *text gets its content.
 */
static GMimeObject *mime_token_find(GMimeObject *obj, const char *prefix,
                   GPtrArray *parents, GByteArray **text)
{
    GMimeMultipart *multi;
    GMimeObject *found;

    if (GMIME_IS_PART(obj))
        return (*text = mime_token_content(GMIME_PART(obj), prefix)) ? obj : NULL;
    if (!GMIME_IS_MULTIPART(obj))
        return NULL;
    multi = GMIME_MULTIPART(obj);
    g_ptr_array_add(parents, multi);
    for (int i = 0; i < g_mime_multipart_get_count(multi); i++)
        if ((found = mime_token_find(g_mime_multipart_get_part(multi, i), prefix, parents, text)) !=
            NULL)
            return found;
    g_ptr_array_remove_index(parents, parents->len - 1);
    return NULL;
}

/* The content after the prefix, trimmed; NULL when empty or holding a NUL. */
static char *mime_token_value(const GByteArray *text, size_t plen)
{
    size_t  len = text->len - plen;
    char   *token = g_strndup((const char *) text->data + plen, len);

    if (strlen(token) != len || *g_strstrip(token) == 0) {
        g_free(token);
        return NULL;
    }
    return token;
}

/*
 * Removes part, then each multipart that this leaves empty, innermost
 * first. GMime needs a body for the message: when the body itself goes,
 * an empty text/plain part takes its place.
 */
static void mime_token_remove(GMimeMessage *msg, GMimeObject *part, GPtrArray *parents)
{
    GMimeTextPart *empty;

    for (guint i = parents->len; i > 0; i--) {
        GMimeMultipart *multi = g_ptr_array_index(parents, i - 1);

        g_mime_multipart_remove(multi, part);
        if (g_mime_multipart_get_count(multi) > 0)
            return;
        part = GMIME_OBJECT(multi);
    }
    empty = g_mime_text_part_new_with_subtype("plain");
    g_mime_message_set_mime_part(msg, GMIME_OBJECT(empty));
    g_object_unref(empty);
}

char   *mime_token_extract(GMimeMessage *msg, const char *prefix)
{
    GPtrArray *parents = g_ptr_array_new();
    GByteArray *text = NULL;
    GMimeObject *part;
    char   *token = NULL;

    part = mime_token_find(g_mime_message_get_mime_part(msg), prefix, parents, &text);
    if (part != NULL) {
        if ((token = mime_token_value(text, strlen(prefix))) != NULL)
            mime_token_remove(msg, part, parents);
        g_byte_array_unref(text);
    }
    g_ptr_array_unref(parents);
    return token;
}
