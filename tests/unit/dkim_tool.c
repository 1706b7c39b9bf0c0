/*
 * dkim_tool: the DKIM module on the command line, for tests that check it
 * against an independent verifier.
 *
 *   dkim_tool keygen rsa|ed25519 PATH
 *       write a new key to PATH and print its DNS TXT record
 *   dkim_tool sign SELECTOR:PATH[,SELECTOR:PATH...] DOMAIN < message
 *       sign the CRLF message read from stdin, print signature(s) + message
 */

#include <stdio.h>
#include <string.h>

#include "transform/dkim.h"

static int usage(void)
{
    fprintf(stderr, "usage: dkim_tool keygen rsa|ed25519 PATH\n"
                    "       dkim_tool sign SELECTOR:PATH[,...] DOMAIN\n");
    return 2;
}

static int fail(GError *err)
{
    fprintf(stderr, "dkim_tool: %s\n", err->message);
    g_error_free(err);
    return 1;
}

static int cmd_keygen(const char *type, const char *path)
{
    GError *err = NULL;
    struct dkim_key *key;
    char *record;

    if (strcmp(type, "rsa") != 0 && strcmp(type, "ed25519") != 0)
        return usage();
    key = dkim_keygen(strcmp(type, "rsa") == 0 ? DKIM_KEY_RSA
                                               : DKIM_KEY_ED25519,
                      NULL, path, &err);
    if (key == NULL)
        return fail(err);
    record = dkim_dns_record(key);
    printf("%s\n", record);
    g_free(record);
    dkim_key_free(key);
    return 0;
}

/* Header block: up to and including the CRLF before the empty line. */
static int cmd_sign(const char *spec, const char *domain)
{
    GString *msg = g_string_new(NULL);
    GError *err = NULL;
    GPtrArray *keys;
    unsigned char bh[DKIM_HASH_LEN];
    const char *blank;
    size_t header_len, body_off;
    char buf[65536];
    size_t n;

    if ((keys = dkim_keys_load(spec, &err)) == NULL)
        return fail(err);
    while ((n = fread(buf, 1, sizeof(buf), stdin)) > 0)
        g_string_append_len(msg, buf, (gssize)n);

    if (msg->len >= 2 && memcmp(msg->str, "\r\n", 2) == 0) {
        header_len = 0;
        body_off = 2;
    } else if ((blank = memmem(msg->str, msg->len, "\r\n\r\n", 4)) != NULL) {
        header_len = (size_t)(blank - msg->str) + 2;
        body_off = header_len + 2;
    } else {
        header_len = body_off = msg->len;
    }
    dkim_body_hash(msg->str + body_off, msg->len - body_off, bh);

    for (guint i = 0; i < keys->len; i++) {
        char *sig = dkim_sign(keys->pdata[i], domain, msg->str, header_len,
                              bh, g_get_real_time() / G_USEC_PER_SEC, &err);

        if (sig == NULL) {
            g_ptr_array_free(keys, TRUE);
            g_string_free(msg, TRUE);
            return fail(err);
        }
        fputs(sig, stdout);
        g_free(sig);
    }
    fwrite(msg->str, 1, msg->len, stdout);
    g_ptr_array_free(keys, TRUE);
    g_string_free(msg, TRUE);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "keygen") == 0)
        return cmd_keygen(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "sign") == 0)
        return cmd_sign(argv[2], argv[3]);
    return usage();
}
