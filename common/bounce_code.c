/*
 * bounce_code.c - VERP codes: make and check (bounce_code.h).
 */
#include "common/bounce_code.h"

#include "common/secret_file.h"

#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define MAC_BYTES 8                 /* 64 bits of HMAC-SHA256 */

/*
 * HMAC-SHA256 over a fixed label and the 12 big-endian bytes of the
 * delivery: the label keeps this MAC apart from any other use of a key.
 */
static void code_mac(const void *key, size_t keylen, uint64_t msg, uint32_t idx,
                     unsigned char mac[MAC_BYTES])
{
    static const char label[] = "postern-verp-1";
    unsigned char in[sizeof label + 12];
    unsigned char full[EVP_MAX_MD_SIZE];
    unsigned int full_len = 0;

    memcpy(in, label, sizeof label);
    for (int i = 0; i < 8; i++)
        in[sizeof label + i] = (unsigned char)(msg >> (56 - 8 * i));
    for (int i = 0; i < 4; i++)
        in[sizeof label + 8 + i] = (unsigned char)(idx >> (24 - 8 * i));
    HMAC(EVP_sha256(), key, (int)keylen, in, sizeof in, full, &full_len);
    memcpy(mac, full, MAC_BYTES);
    OPENSSL_cleanse(full, sizeof full);
}

void bounce_code_make(const void *key, size_t keylen, uint64_t msg, uint32_t idx,
                      char out[BOUNCE_CODE_LEN + 1])
{
    unsigned char mac[MAC_BYTES];
    int n;

    code_mac(key, keylen, msg, idx, mac);
    n = snprintf(out, BOUNCE_CODE_LEN + 1, "%016" G_GINT64_MODIFIER "x%08x", msg, idx);
    for (int i = 0; i < MAC_BYTES; i++)
        n += snprintf(out + n, BOUNCE_CODE_LEN + 1 - (size_t)n, "%02x", mac[i]);
}

/* Hex digits to a number, or FALSE on any other character. */
static gboolean hex_value(const char *p, size_t n, uint64_t *out)
{
    uint64_t v = 0;

    for (size_t i = 0; i < n; i++) {
        int d = g_ascii_xdigit_value(p[i]);

        if (d < 0)
            return FALSE;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return TRUE;
}

gboolean bounce_code_check(const void *key, size_t keylen, const char *code, size_t len,
                           uint64_t *msg, uint32_t *idx)
{
    unsigned char want[MAC_BYTES], got[MAC_BYTES];
    uint64_t m, i, b;

    if (code == NULL || len != BOUNCE_CODE_LEN)
        return FALSE;
    if (!hex_value(code, 16, &m) || !hex_value(code + 16, 8, &i))
        return FALSE;
    for (int k = 0; k < MAC_BYTES; k++) {
        if (!hex_value(code + 24 + 2 * k, 2, &b))
            return FALSE;
        got[k] = (unsigned char)b;
    }
    /* Constant time: how much of a forged MAC matched must not show. */
    code_mac(key, keylen, m, (uint32_t)i, want);
    if (CRYPTO_memcmp(want, got, MAC_BYTES) != 0)
        return FALSE;
    *msg = m;
    *idx = (uint32_t)i;
    return TRUE;
}

char *bounce_address_make(const void *key, size_t keylen, const char *local, const char *domain,
                          uint64_t msg, uint32_t idx)
{
    char code[BOUNCE_CODE_LEN + 1];

    bounce_code_make(key, keylen, msg, idx, code);
    return g_strdup_printf("%s+%s@%s", local, code, domain);
}

gboolean bounce_address_split(const char *addr, const char *local, const char *domain,
                              const char **code, size_t *code_len)
{
    size_t ll = strlen(local);
    const char *at = addr ? strrchr(addr, '@') : NULL;

    /* local, then the delimiter, then at least one byte, then @domain. */
    if (at == NULL || g_ascii_strcasecmp(at + 1, domain) != 0)
        return FALSE;
    if ((size_t)(at - addr) < ll + 2 || g_ascii_strncasecmp(addr, local, ll) != 0
        || addr[ll] != '+')
        return FALSE;
    *code = addr + ll + 1;
    *code_len = (size_t)(at - *code);
    return TRUE;
}

char *bounce_key_read(const char *path, size_t *len, GError **err)
{
    char *key = secret_read("[bounce] secret_file", path, err);

    if (key == NULL)
        return NULL;
    g_strchomp(key);
    /* A short key would make the 64-bit MAC the weaker part. */
    if ((*len = strlen(key)) < BOUNCE_KEY_MIN) {
        g_set_error(err, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                    "[bounce] secret_file %s: under %d bytes", path, BOUNCE_KEY_MIN);
        secret_free(key);
        return NULL;
    }
    return key;
}

char *bounce_return_path(const void *key, size_t keylen, const char *envelope_from,
                         uint64_t msg, uint32_t idx)
{
    const char *at = strrchr(envelope_from, '@');
    g_autofree char *local = NULL;

    if (at == NULL)
        return g_strdup(envelope_from);
    local = g_strndup(envelope_from, (gsize)(at - envelope_from));
    return bounce_address_make(key, keylen, local, at + 1, msg, idx);
}
