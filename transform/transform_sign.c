/*
 * transform_sign.c - DKIM signatures for the outgoing copies (SPEC §4.5).
 *
 * The rewritten message is serialised once; it is never parsed or written
 * again.  Each copy sent is a raw block (signatures, To:) followed by those
 * bytes, and each signature covers the header block as it will be sent:
 * the copy's own To: (and List-Unsubscribe, with one-click unsubscribe)
 * plus the common header.  The body is the same for
 * every copy, so it is hashed once per message, not once per recipient.
 */
#include "transform/transform.h"
#include "transform/mime.h"

#include <string.h>

gboolean transform_sign_copy_init(struct transform_copy *c, GBytes *bytes, GError **err)
{
    gsize len;
    const char *data = g_bytes_get_data(bytes, &len);
    size_t body_offset;

    if (!mime_split(data, len, &c->header_len, &body_offset)) {
        g_set_error(err, MIME_ERROR, MIME_ERROR_WRITE, "serialised copy has no blank line");
        return FALSE;
    }
    c->bytes = g_bytes_ref(bytes);
    dkim_body_hash(data + body_offset, len - body_offset, c->body_hash);
    return TRUE;
}

void transform_sign_copy_clear(struct transform_copy *c)
{
    g_clear_pointer(&c->bytes, g_bytes_unref);
}

GBytes *sign_block(const struct transform *tf, const struct transform_copy *c, const char *prefix,
                   gint64 now, GError **err)
{
    const char *common = g_bytes_get_data(c->bytes, NULL);
    g_autoptr(GString) header = g_string_sized_new(strlen(prefix) + c->header_len);
    GString *block = g_string_new(NULL);

    /* dkim_sign() wants the header block in one piece, as it goes out. */
    g_string_append(header, prefix);
    g_string_append_len(header, common, (gssize)c->header_len);
    for (guint i = 0; i < tf->keys->len; i++) {
        g_autofree char *sig = dkim_sign(tf->keys->pdata[i], tf->cfg->dkim.domain, header->str,
                                         header->len, c->body_hash, now, err);
        if (!sig) {
            g_string_free(block, TRUE);
            return NULL;
        }
        g_string_append(block, sig);
    }
    g_string_append(block, prefix);
    return g_string_free_to_bytes(block);
}

GBytes *sign_whole(const struct transform *tf, const struct transform_copy *c, const char *prefix,
                   gint64 now, GError **err)
{
    g_autoptr(GBytes) block = sign_block(tf, c, prefix, now, err);
    GByteArray *out;
    gsize n;
    const guint8 *p;

    if (!block)
        return NULL;
    out = g_byte_array_sized_new((guint)(g_bytes_get_size(block) + g_bytes_get_size(c->bytes)));
    p = g_bytes_get_data(block, &n);
    g_byte_array_append(out, p, (guint)n);
    p = g_bytes_get_data(c->bytes, &n);
    g_byte_array_append(out, p, (guint)n);
    return g_byte_array_free_to_bytes(out);
}

/*
 * personalize = false: one copy for all, so it cannot name one recipient.
 * Naming the restricted address instead would invite "reply all" back into
 * Postern; the empty group of RFC 5322 §3.4 discloses nobody.
 */
#define SIGN_TO_SHARED "To: undisclosed-recipients:;\r\n"

gboolean transform_sign_deliveries(const struct transform *tf, GBytes *rewritten, GPtrArray *rcpts,
                                   GPtrArray *own, gint64 now, GBytes **outgoing,
                                   GPtrArray *headers, GError **err)
{
    struct transform_copy c = { 0 };
    gboolean ok = TRUE;

    if (!transform_sign_copy_init(&c, rewritten, err))
        return FALSE;
    if (!tf->cfg->rewrite.personalize) {
        *outgoing = sign_whole(tf, &c, SIGN_TO_SHARED, now, err);
        for (guint i = 0; i < rcpts->len; i++)
            g_ptr_array_add(headers, NULL);
        transform_sign_copy_clear(&c);
        return *outgoing != NULL;
    }
    for (guint i = 0; ok && i < rcpts->len; i++) {
        g_autofree char *to = g_strdup_printf("To: %s\r\n%s", (const char *)rcpts->pdata[i],
                                              own ? (const char *)own->pdata[i] : "");
        GBytes *block = sign_block(tf, &c, to, now, err);

        ok = block != NULL;
        if (ok)
            g_ptr_array_add(headers, block);
    }
    *outgoing = ok ? g_bytes_ref(rewritten) : NULL;
    transform_sign_copy_clear(&c);
    return ok;
}
