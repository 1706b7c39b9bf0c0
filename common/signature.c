/*
 * signature.c - see signature.h.
 */
#include "common/signature.h"

#include <glib.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>

void signature_sign(const void *key, size_t key_len, const char *body, size_t body_len,
                    char out[SIGNATURE_LEN + 1])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;

    HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)body, body_len, mac, &mac_len);
    memcpy(out, "sha256=", 7);
    for (unsigned i = 0; i < mac_len && i < 32; i++)
        g_snprintf(out + 7 + 2 * i, 3, "%02x", mac[i]);
    out[SIGNATURE_LEN] = '\0';
}
