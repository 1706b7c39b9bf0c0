/*
 * spoolctl_mask.c - `show --raw` without the token in it.
 *
 * docs/security.md promises that no spoolctl output shows a token, but the
 * bytes as received hold one until the transform removes it from the
 * outgoing copy, and a message rejected for SENDER_MISMATCH keeps a token
 * that still works.  The token part is found as the transform finds it
 * (SPEC §4.1: the first leaf part, depth first, whose transfer-decoded
 * content starts with [token] prefix); its content is written again, in
 * its own transfer encoding, with the token replaced by "[token ID]", ID
 * being what `spoolctl token list` shows.  Copies of the token text
 * elsewhere in the message are replaced too.  The rest stays byte for
 * byte as received.
 */
#include "tools/spoolctl.h"
#include "spool/spool_token.h"
#include "transform/mime.h"

#include <string.h>

/* A token shorter than this is not looked for outside its part. */
#define MASK_MIN_COPY 8

/* The transfer-decoded content of part. */
static GByteArray *mask_decoded(GMimePart *part)
{
    GMimeDataWrapper *content = g_mime_part_get_content(part);
    GByteArray *out;
    GMimeStream *mem;

    if (!content)
        return NULL;
    out = g_byte_array_new();
    mem = g_mime_stream_mem_new_with_byte_array(out);
    g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(mem), FALSE);
    g_mime_data_wrapper_write_to_stream(content, mem);
    g_object_unref(mem);
    return out;
}

/* Depth first, attached messages not searched: as transform/mime_token.c. */
static GMimePart *mask_find(GMimeObject *obj, const char *prefix, GByteArray **text)
{
    size_t plen = strlen(prefix);

    if (GMIME_IS_PART(obj)) {
        GByteArray *t = mask_decoded(GMIME_PART(obj));
        if (t && t->len >= plen && memcmp(t->data, prefix, plen) == 0) {
            *text = t;
            return GMIME_PART(obj);
        }
        if (t)
            g_byte_array_unref(t);
        return NULL;
    }
    if (!GMIME_IS_MULTIPART(obj))
        return NULL;
    for (int i = 0; i < g_mime_multipart_get_count(GMIME_MULTIPART(obj)); i++) {
        GMimePart *found = mask_find(g_mime_multipart_get_part(GMIME_MULTIPART(obj), i), prefix,
                                     text);
        if (found)
            return found;
    }
    return NULL;
}

/* Bytes encoded as the part's Content-Transfer-Encoding, CRLF line ends. */
static GByteArray *mask_encode(GMimeContentEncoding enc, const guint8 *data, gsize len)
{
    GByteArray *out = g_byte_array_new();
    GMimeStream *mem = g_mime_stream_mem_new_with_byte_array(out);
    GMimeStream *filtered = g_mime_stream_filter_new(mem);
    GMimeFilter *f;

    g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(mem), FALSE);
    if (enc == GMIME_CONTENT_ENCODING_BASE64 || enc == GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE ||
        enc == GMIME_CONTENT_ENCODING_UUENCODE) {
        f = g_mime_filter_basic_new(enc, TRUE);
        g_mime_stream_filter_add(GMIME_STREAM_FILTER(filtered), f);
        g_object_unref(f);
        f = g_mime_filter_unix2dos_new(FALSE);
        g_mime_stream_filter_add(GMIME_STREAM_FILTER(filtered), f);
        g_object_unref(f);
    }
    g_mime_stream_write(filtered, (const char *)data, len);
    g_mime_stream_flush(filtered);
    g_object_unref(filtered);
    g_object_unref(mem);
    return out;
}

/* Replace every copy of needle in buf by with. */
static void mask_replace_all(GByteArray *buf, const char *needle, const char *with)
{
    size_t n = strlen(needle), w = strlen(with);
    GByteArray *out;
    gsize i = 0, from = 0;

    if (!n || buf->len < n)
        return;
    out = g_byte_array_sized_new(buf->len);
    while (i + n <= buf->len) {
        if (buf->data[i] == (guint8)needle[0] && memcmp(buf->data + i, needle, n) == 0) {
            g_byte_array_append(out, buf->data + from, (guint)(i - from));
            g_byte_array_append(out, (const guint8 *)with, (guint)w);
            i += n;
            from = i;
        } else {
            i++;
        }
    }
    if (from == 0) {                /* nothing found: leave buf alone */
        g_byte_array_unref(out);
        return;
    }
    g_byte_array_append(out, buf->data + from, (guint)(buf->len - from));
    g_byte_array_set_size(buf, 0);
    g_byte_array_append(buf, out->data, out->len);
    g_byte_array_unref(out);
}

enum ctl_mask ctl_mask_token(GByteArray *raw, const char *prefix)
{
    GMimeMessage *msg;
    GMimePart *part;
    GByteArray *text = NULL, *masked = NULL, *encoded;
    GMimeStream *stream;
    g_autofree char *token = NULL, *marker = NULL;
    unsigned char hash[TOKEN_HASH_LEN];
    char id[TOKEN_ID_LEN + 1];
    size_t plen = strlen(prefix);
    gint64 start, end;
    const char *at;
    enum ctl_mask rc;

    /* Step 1: find the token part and its token, as the transform would. */
    mime_init();
    if (!raw->len || !(msg = mime_parse_array(raw, NULL)))
        return CTL_MASK_NONE;       /* not a message: no token part either */
    part = mask_find(g_mime_message_get_mime_part(msg), prefix, &text);
    if (!part) {
        g_object_unref(msg);
        return CTL_MASK_NONE;
    }
    /* No token (the transform's rule): empty, or holding a NUL. */
    token = g_strndup((const char *)text->data + plen, text->len - plen);
    if (strlen(token) != text->len - plen || !*g_strstrip(token)) {
        g_byte_array_unref(text);
        g_object_unref(msg);
        return CTL_MASK_NONE;
    }
    spool_token_hash(token, hash);
    spool_token_id(hash, id);
    marker = g_strdup_printf("[token %s]", id);

    /*
     * Step 2: the part's content again, with the marker for the token,
     * in the part's own encoding (a base64 token is no less a token).
     */
    at = g_strstr_len((const char *)text->data + plen, text->len - plen, token);
    masked = g_byte_array_new();
    g_byte_array_append(masked, text->data, (guint)((const guint8 *)at - text->data));
    g_byte_array_append(masked, (const guint8 *)marker, (guint)strlen(marker));
    g_byte_array_append(masked, (const guint8 *)at + strlen(token),
                        (guint)(text->len - ((const guint8 *)at - text->data) - strlen(token)));
    encoded = mask_encode(g_mime_part_get_content_encoding(part), masked->data, masked->len);

    /*
     * Step 3: put it where the encoded content was.  The parser's content
     * streams are windows on raw: their bounds are offsets in it.
     */
    stream = g_mime_data_wrapper_get_stream(g_mime_part_get_content(part));
    start = stream->bound_start;
    end = stream->bound_end < 0 ? (gint64)raw->len : stream->bound_end;
    g_object_unref(msg);
    rc = CTL_MASK_FAILED;           /* not where it should be: print nothing */
    if (start >= 0 && start <= end && end <= (gint64)raw->len) {
        gboolean crlf = end - start >= 2 && raw->data[end - 2] == '\r' &&
                        raw->data[end - 1] == '\n';
        GByteArray *out = g_byte_array_sized_new(raw->len);

        /* The content keeps the line end it had before what follows it. */
        while (encoded->len && (encoded->data[encoded->len - 1] == '\n' ||
                                encoded->data[encoded->len - 1] == '\r'))
            g_byte_array_set_size(encoded, encoded->len - 1);
        if (crlf)
            g_byte_array_append(encoded, (const guint8 *)"\r\n", 2);
        g_byte_array_append(out, raw->data, (guint)start);
        g_byte_array_append(out, encoded->data, encoded->len);
        g_byte_array_append(out, raw->data + end, (guint)(raw->len - (gsize)end));
        g_byte_array_set_size(raw, 0);
        g_byte_array_append(raw, out->data, out->len);
        g_byte_array_unref(out);
        rc = CTL_MASK_DONE;
    }
    /* Step 4: copies of the token anywhere else (a Subject, a quote). */
    if (strlen(token) >= MASK_MIN_COPY)
        mask_replace_all(raw, token, marker);
    g_byte_array_unref(encoded);
    g_byte_array_unref(masked);
    g_byte_array_unref(text);
    return rc;
}
