/*
 * unsub_code.c - one-click unsubscribe codes: make and check (unsub_code.h).
 */
#include "common/unsub_code.h"
#include "common/config.h"

#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define UNSUB_VERSION 1
#define MAC_BYTES 10                /* 80 bits of HMAC-SHA256: a whole number of base32 digits */

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

char *unsub_code_make(const void *key, size_t keylen, const char *list, const char *addr)
{
    g_autofree char *lower = g_ascii_strdown(addr, -1);
    g_autoptr(GByteArray) b = g_byte_array_new();
    guint8 version = UNSUB_VERSION, nul = 0;
    unsigned char mac[MAC_BYTES];

    /* The default list is named by nothing: 11 characters less in every local part. */
    if (g_str_equal(list, CONFIG_LIST_DEFAULT))
        list = "";
    g_byte_array_append(b, &version, 1);
    g_byte_array_append(b, (const guint8 *)list, (guint)strlen(list));
    g_byte_array_append(b, &nul, 1);
    g_byte_array_append(b, (const guint8 *)lower, (guint)strlen(lower));
    code_mac(key, keylen, b->data, b->len, mac);
    g_byte_array_append(b, mac, MAC_BYTES);
    return b32_encode(b->data, b->len);
}

gboolean unsub_code_check(const void *key, size_t keylen, const char *code, size_t len,
                          char **list, char **addr)
{
    g_autoptr(GByteArray) b = NULL;
    unsigned char want[MAC_BYTES];
    const guint8 *nul;
    size_t payload;

    if (code == NULL || len > UNSUB_CODE_MAX || !(b = b32_decode(code, len)))
        return FALSE;
    /* version, an empty list name at least, the NUL, an address byte, the MAC */
    if (b->len < 3 + MAC_BYTES || b->data[0] != UNSUB_VERSION)
        return FALSE;
    payload = b->len - MAC_BYTES;
    /* Constant time: how much of a forged MAC matched must not show. */
    code_mac(key, keylen, b->data, payload, want);
    if (CRYPTO_memcmp(want, b->data + payload, MAC_BYTES) != 0)
        return FALSE;
    /* Ours, so well formed; checked all the same, as a key may leak. */
    nul = memchr(b->data + 1, 0, payload - 1);
    if (!nul || nul == b->data + payload - 1 ||
        memchr(nul + 1, 0, payload - (size_t)(nul + 1 - b->data)))
        return FALSE;
    *list = nul == b->data + 1 ? g_strdup(CONFIG_LIST_DEFAULT)
                               : g_strndup((const char *)b->data + 1, (gsize)(nul - b->data - 1));
    *addr = g_strndup((const char *)nul + 1, payload - (size_t)(nul + 1 - b->data));
    return TRUE;
}

char *unsub_header_make(const void *key, size_t keylen, const char *list, const char *addr,
                        const char *base, const char *mailto)
{
    g_autofree char *code = NULL;
    const char *at = mailto ? strrchr(mailto, '@') : NULL;
    GString *h = g_string_new(NULL);
    gboolean url = base && *base;

    if (!url && !at)
        return g_string_free(h, FALSE);
    code = unsub_code_make(key, keylen, list, addr);
    g_string_append(h, "List-Unsubscribe: ");
    if (url) {
        size_t n = strlen(base);

        while (n > 0 && base[n - 1] == '/')
            n--;
        g_string_append_printf(h, "<%.*s/u/%s>", (int)n, base, code);
    }
    /* Folded between the two: each is a long line of its own already. */
    if (at)
        g_string_append_printf(h, "%s<mailto:%.*s+%s@%s>", url ? ",\r\n " : "",
                               (int)(at - mailto), mailto, code, at + 1);
    g_string_append(h, "\r\n");
    if (url)
        g_string_append(h, "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
    return g_string_free(h, FALSE);
}
