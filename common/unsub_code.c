/*
 * unsub_code.c - one-click unsubscribe codes: make and check (unsub_code.h).
 */
#include "common/unsub_code.h"
#include "common/config.h"

#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define UNSUB_VERSION 1             /* the full code: names the address */
#define UNSUB_VERSION_SHORT 2       /* the mailto code: the address is the mail's sender */
#define MAC_BYTES 10                /* 80 bits of HMAC-SHA256: a whole number of base32 digits */
#define SHORT_BYTES (1 + UNSUB_LIST_ID_BYTES + MAC_BYTES)

G_STATIC_ASSERT(SHORT_BYTES * 8 == UNSUB_MAILTO_CODE_LEN * 5);

static const char b32_alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";

/* GLib has base64 but no base32; base64's case matters, which a local part may lose. */
static char *b32_encode(const guint8 *p, size_t n)
{
    GString *out = g_string_sized_new((n * 8 + 4) / 5 + 1);
    guint32 acc = 0;
    int bits = 0;

    for (size_t i = 0; i < n; i++) {
        acc = acc << 8 | p[i];
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            g_string_append_c(out, b32_alphabet[(acc >> bits) & 31]);
        }
    }
    if (bits > 0)
        g_string_append_c(out, b32_alphabet[(acc << (5 - bits)) & 31]);
    return g_string_free(out, FALSE);
}

/* Any case in; NULL on a character outside the alphabet or leftover bits that are not 0. */
static GByteArray *b32_decode(const char *s, size_t n)
{
    GByteArray *out = g_byte_array_sized_new((guint)(n * 5 / 8));
    guint32 acc = 0;
    int bits = 0;

    for (size_t i = 0; i < n; i++) {
        const char *at = s[i] ? strchr(b32_alphabet, g_ascii_tolower(s[i])) : NULL;
        guint8 byte;

        if (!at) {
            g_byte_array_unref(out);
            return NULL;
        }
        acc = acc << 5 | (guint32)(at - b32_alphabet);
        bits += 5;
        if (bits >= 8) {
            bits -= 8;
            byte = (guint8)(acc >> bits);
            g_byte_array_append(out, &byte, 1);
        }
    }
    /* One encoding per byte string: a damaged tail is not read as the same code. */
    if (bits >= 5 || (acc & ((1u << bits) - 1)) != 0) {
        g_byte_array_unref(out);
        return NULL;
    }
    return out;
}

/* HMAC-SHA256 over the label (with its NUL) and the payload: the label is the purpose. */
static void code_mac(const void *key, size_t keylen, const guint8 *payload, size_t n,
                     unsigned char mac[MAC_BYTES])
{
    static const char label[] = "postern-unsubscribe-1";
    unsigned char full[EVP_MAX_MD_SIZE];
    unsigned int full_len = 0;
    g_autoptr(GByteArray) in = g_byte_array_sized_new((guint)(sizeof label + n));

    g_byte_array_append(in, (const guint8 *)label, sizeof label);
    g_byte_array_append(in, payload, (guint)n);
    HMAC(EVP_sha256(), key, (int)keylen, in->data, in->len, full, &full_len);
    memcpy(mac, full, MAC_BYTES);
    OPENSSL_cleanse(full, sizeof full);
}

/*
 * The full code's bytes: version 1 | list name (empty for the default
 * list: 11 characters less in every code) | NUL | lower-cased address |
 * the MAC of all that.
 */
static GByteArray *full_code_bytes(const void *key, size_t keylen, const char *list,
                                   const char *addr)
{
    g_autofree char *lower = g_ascii_strdown(addr, -1);
    GByteArray *b = g_byte_array_new();
    guint8 version = UNSUB_VERSION, nul = 0;
    unsigned char mac[MAC_BYTES];

    if (g_str_equal(list, CONFIG_LIST_DEFAULT))
        list = "";
    g_byte_array_append(b, &version, 1);
    g_byte_array_append(b, (const guint8 *)list, (guint)strlen(list));
    g_byte_array_append(b, &nul, 1);
    g_byte_array_append(b, (const guint8 *)lower, (guint)strlen(lower));
    code_mac(key, keylen, b->data, b->len, mac);
    g_byte_array_append(b, mac, MAC_BYTES);
    return b;
}

char *unsub_code_make(const void *key, size_t keylen, const char *list, const char *addr)
{
    g_autoptr(GByteArray) b = full_code_bytes(key, keylen, list, addr);

    return b32_encode(b->data, b->len);
}

/*
 * A full code's payload is version 1, a list name, one NUL, an address of
 * a byte at least and no other NUL, then the MAC: where its NUL is, or
 * NULL.  Checked before the MAC too, as the shape is no secret.
 */
static const guint8 *full_code_nul(const GByteArray *b)
{
    size_t payload;
    const guint8 *nul;

    /* version, an empty list name at least, the NUL, an address byte, the MAC */
    if (b->len < 3 + MAC_BYTES || b->data[0] != UNSUB_VERSION)
        return NULL;
    payload = b->len - MAC_BYTES;
    nul = memchr(b->data + 1, 0, payload - 1);
    if (!nul || nul == b->data + payload - 1 ||
        memchr(nul + 1, 0, payload - (size_t)(nul + 1 - b->data)))
        return NULL;
    return nul;
}

gboolean unsub_code_check(const void *key, size_t keylen, const char *code, size_t len,
                          char **list, char **addr)
{
    g_autoptr(GByteArray) b = NULL;
    unsigned char want[MAC_BYTES];
    const guint8 *nul;
    size_t payload;

    if (code == NULL || len > UNSUB_CODE_MAX || !(b = b32_decode(code, len)) ||
        !(nul = full_code_nul(b)))
        return FALSE;
    payload = b->len - MAC_BYTES;
    /* Constant time: how much of a forged MAC matched must not show. */
    code_mac(key, keylen, b->data, payload, want);
    if (CRYPTO_memcmp(want, b->data + payload, MAC_BYTES) != 0)
        return FALSE;
    *list = nul == b->data + 1 ? g_strdup(CONFIG_LIST_DEFAULT)
                               : g_strndup((const char *)b->data + 1, (gsize)(nul - b->data - 1));
    *addr = g_strndup((const char *)nul + 1, payload - (size_t)(nul + 1 - b->data));
    return TRUE;
}

/* A hash, not a secret: the MAC, over the whole name, is what binds the list. */
void unsub_list_id(const char *list, guint8 id[UNSUB_LIST_ID_BYTES])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;

    EVP_Digest(list, strlen(list), md, &md_len, EVP_sha256(), NULL);
    memcpy(id, md, UNSUB_LIST_ID_BYTES);
}

/*
 * The short code's MAC is the full code's of the same list and address:
 * one HMAC a copy for both forms.  Both are in the same header, so one
 * gives no power the other lacks; the version byte keeps either from
 * being read as the other.
 */
static char *short_code_encode(const char *list, const guint8 mac[MAC_BYTES])
{
    guint8 b[SHORT_BYTES] = { UNSUB_VERSION_SHORT };

    unsub_list_id(list, b + 1);
    memcpy(b + 1 + UNSUB_LIST_ID_BYTES, mac, MAC_BYTES);
    return b32_encode(b, sizeof b);
}

char *unsub_mailto_code_make(const void *key, size_t keylen, const char *list, const char *addr)
{
    g_autoptr(GByteArray) full = full_code_bytes(key, keylen, list, addr);

    return short_code_encode(list, full->data + full->len - MAC_BYTES);
}

/* The list of lists whose id is id, or NULL. */
static const char *list_by_id(const GPtrArray *lists, const guint8 *id)
{
    for (guint i = 0; i < lists->len; i++) {
        const struct postern_list *l = lists->pdata[i];
        guint8 other[UNSUB_LIST_ID_BYTES];

        unsub_list_id(l->name, other);
        if (memcmp(id, other, UNSUB_LIST_ID_BYTES) == 0)
            return l->name;
    }
    return NULL;
}

/* The list of lists called the n bytes at name ("" is the default list), or NULL. */
static const char *list_by_name(const GPtrArray *lists, const guint8 *name, size_t n)
{
    for (guint i = 0; i < lists->len; i++) {
        const struct postern_list *l = lists->pdata[i];
        const char *want = g_str_equal(l->name, CONFIG_LIST_DEFAULT) ? "" : l->name;

        if (strlen(want) == n && memcmp(want, name, n) == 0)
            return l->name;
    }
    return NULL;
}

const char *unsub_mailto_parse(const char *code, size_t len, const GPtrArray *lists,
                               const char **list)
{
    g_autoptr(GByteArray) b = NULL;
    const guint8 *nul;

    if (len > UNSUB_CODE_MAX)
        return "bad length";
    if (!(b = b32_decode(code, len)))
        return "bad base32";
    if (b->len == 0)
        return "bad length";
    switch (b->data[0]) {
    case UNSUB_VERSION_SHORT:
        if (b->len != SHORT_BYTES)
            return "bad length";
        *list = list_by_id(lists, b->data + 1);
        break;
    case UNSUB_VERSION:
        if (!(nul = full_code_nul(b)))
            return "bad length";
        *list = list_by_name(lists, b->data + 1, (size_t)(nul - b->data - 1));
        break;
    default:
        return "unknown version";
    }
    return *list ? NULL : "unknown list";
}

char *unsub_mailto_address(const void *key, size_t keylen, const char *code, size_t len,
                           const char *list, const char *const *candidates)
{
    g_autoptr(GByteArray) b = b32_decode(code, len);
    char *full_list = NULL, *addr = NULL;
    guint8 id[UNSUB_LIST_ID_BYTES];

    if (!b || b->len == 0)
        return NULL;
    /* A full code (mail sent before short codes) carries its address. */
    if (b->data[0] == UNSUB_VERSION) {
        if (unsub_code_check(key, keylen, code, len, &full_list, &addr) &&
            !g_str_equal(full_list, list))
            g_clear_pointer(&addr, g_free);
        g_free(full_list);
        return addr;
    }
    if (b->data[0] != UNSUB_VERSION_SHORT || b->len != SHORT_BYTES)
        return NULL;
    unsub_list_id(list, id);
    if (memcmp(id, b->data + 1, UNSUB_LIST_ID_BYTES) != 0)
        return NULL;
    for (; *candidates; candidates++) {
        g_autoptr(GByteArray) full = NULL;

        if (!**candidates)
            continue;
        /* Constant time: how much of a forged MAC matched must not show. */
        full = full_code_bytes(key, keylen, list, *candidates);
        if (CRYPTO_memcmp(full->data + full->len - MAC_BYTES, b->data + 1 + UNSUB_LIST_ID_BYTES,
                          MAC_BYTES) == 0)
            return g_ascii_strdown(*candidates, -1);
    }
    return NULL;
}

char *unsub_header_make(const void *key, size_t keylen, const char *list, const char *addr,
                        const char *base, const char *mailto)
{
    g_autofree char *code = NULL, *short_code = NULL;
    g_autoptr(GByteArray) full = NULL;
    const char *at = mailto ? strrchr(mailto, '@') : NULL;
    GString *h = g_string_new(NULL);
    gboolean url = base && *base;

    if (!url && !at)
        return g_string_free(h, FALSE);
    full = full_code_bytes(key, keylen, list, addr);
    g_string_append(h, "List-Unsubscribe: ");
    if (url) {
        size_t n = strlen(base);

        while (n > 0 && base[n - 1] == '/')
            n--;
        code = b32_encode(full->data, full->len);
        g_string_append_printf(h, "<%.*s/u/%s>", (int)n, base, code);
    }
    /* Folded between the two: each is a long line of its own already. */
    if (at) {
        short_code = short_code_encode(list, full->data + full->len - MAC_BYTES);
        g_string_append_printf(h, "%s<mailto:%.*s+%s@%s>", url ? ",\r\n " : "",
                               (int)(at - mailto), mailto, short_code, at + 1);
    }
    g_string_append(h, "\r\n");
    if (url)
        g_string_append(h, "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
    return g_string_free(h, FALSE);
}
