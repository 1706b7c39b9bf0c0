/*
 * approval_code.c - approval links: their key and code (approval_code.h).
 */
#include "common/approval_code.h"

#include "common/secret_file.h"

#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

/*
 * The number the code carries after the queue id.  Fixed: the code names
 * a message, and the action is chosen on the page it opens.
 */
#define APPROVAL_INDEX 0xa99u

gboolean approval_wanted(const struct postern_config *cfg)
{
    for (guint i = 0; i < cfg->lists->len; i++)
        if (((const struct postern_list *)cfg->lists->pdata[i])->approval)
            return TRUE;
    return FALSE;
}

void approval_key_derive(const void *secret, size_t len, unsigned char key[APPROVAL_KEY_LEN])
{
    static const char label[] = "postern approval v1";
    unsigned int key_len = 0;

    HMAC(EVP_sha256(), secret, (int)len, (const unsigned char *)label, strlen(label), key,
         &key_len);
}

gboolean approval_key_read(const struct postern_config *cfg,
                           unsigned char key[APPROVAL_KEY_LEN], GError **err)
{
    size_t len = 0;
    char *secret = bounce_key_read(cfg->approval.secret_file, &len, err);

    if (!secret)
        return FALSE;
    approval_key_derive(secret, len, key);
    secret_free(secret);
    return TRUE;
}

void approval_code_make(const unsigned char key[APPROVAL_KEY_LEN], uint64_t msg,
                        char out[APPROVAL_CODE_LEN + 1])
{
    bounce_code_make(key, APPROVAL_KEY_LEN, msg, APPROVAL_INDEX, out);
}

gboolean approval_code_check(const unsigned char key[APPROVAL_KEY_LEN], const char *code,
                             size_t len, uint64_t *msg)
{
    uint32_t idx = 0;

    return bounce_code_check(key, APPROVAL_KEY_LEN, code, len, msg, &idx) &&
           idx == APPROVAL_INDEX;
}

char *approval_link(const struct postern_config *cfg, const unsigned char key[APPROVAL_KEY_LEN],
                    uint64_t msg)
{
    char code[APPROVAL_CODE_LEN + 1];
    size_t n = strlen(cfg->approval.url);

    approval_code_make(key, msg, code);
    /* A trailing slash in the key would make "//a/". */
    return g_strdup_printf("%.*s/a/%s", (int)(n && cfg->approval.url[n - 1] == '/' ? n - 1 : n),
                           cfg->approval.url, code);
}
