/*
 * spoolctl_dkim.c - `spoolctl dkim keygen`: a new signing key, and the DNS
 * TXT record that publishes it at <selector>._domainkey.<[dkim] domain>.
 *
 * The key file is written 0600 and never over an existing one (a key in
 * use must not vanish under the transform).  Printed as a zone-file line,
 * the record split into strings of at most 255 octets as TXT requires
 * (RSA-2048's is longer); --json gives the record whole.
 */
#include "tools/spoolctl.h"
#include "transform/dkim.h"

#include <stdio.h>
#include <string.h>

#define CTL_TXT_STRING_MAX 255

static void ctl_dkim_print(struct ctl *c, const char *selector, const char *type,
                           const char *path, const char *record)
{
    g_autofree char *name = g_strdup_printf("%s._domainkey.%s", selector, c->cfg.dkim.domain);

    if (c->json) {
        g_autoptr(JsonBuilder) b = json_builder_new();
        const char *fields[][2] = {
            { "name", name }, { "selector", selector }, { "domain", c->cfg.dkim.domain },
            { "type", type }, { "file", path }, { "record", record },
        };

        json_builder_begin_object(b);
        for (size_t i = 0; i < G_N_ELEMENTS(fields); i++) {
            json_builder_set_member_name(b, fields[i][0]);
            json_builder_add_string_value(b, fields[i][1]);
        }
        json_builder_end_object(b);
        ctl_json_print(b);
        return;
    }
    printf("%s. IN TXT (", name);
    for (size_t at = 0, len = strlen(record); at < len; at += CTL_TXT_STRING_MAX)
        printf(" \"%.*s\"", (int)MIN(len - at, CTL_TXT_STRING_MAX), record + at);
    printf(" )\n");
}

static int ctl_dkim_keygen(struct ctl *c, const char *type, const char *path,
                           const char *selector)
{
    g_autofree char *record = NULL;
    struct dkim_key *key;
    GError *err = NULL;

    if (!dkim_dns_name_valid(selector)) {
        fprintf(stderr, "spoolctl: selector \"%s\" is not a DNS label\n", selector);
        return CTL_USAGE;
    }
    key = dkim_keygen(g_str_equal(type, "rsa") ? DKIM_KEY_RSA : DKIM_KEY_ED25519, selector, path,
                      &err);
    if (!key) {
        fprintf(stderr, "spoolctl: %s\n", err->message);
        g_error_free(err);
        return CTL_FAIL;
    }
    record = dkim_dns_record(key);
    dkim_key_free(key);
    if (!record) {
        fprintf(stderr, "spoolctl: %s: cannot derive the public key\n", path);
        return CTL_FAIL;
    }
    ctl_dkim_print(c, selector, type, path, record);
    return CTL_OK;
}

int ctl_dkim(struct ctl *c, int argc, char **argv)
{
    g_autofree char *type = NULL, *out = NULL, *selector = NULL;
    GOptionEntry entries[] = {
        { "type", 0, 0, G_OPTION_ARG_STRING, &type, "rsa (2048 bits) or ed25519", "T" },
        { "out", 0, 0, G_OPTION_ARG_FILENAME, &out, "the private key file to write", "FILE" },
        { "selector", 0, 0, G_OPTION_ARG_STRING, &selector, "DNS selector (default: default)",
          "S" },
        { NULL }
    };

    if (!ctl_parse(c, &argc, &argv, "keygen --type rsa|ed25519 --out FILE - new DKIM key",
                   entries))
        return CTL_USAGE;
    if (argc != 2 || !g_str_equal(argv[1], "keygen") || !out || !type ||
        (!g_str_equal(type, "rsa") && !g_str_equal(type, "ed25519"))) {
        fprintf(stderr, "usage: spoolctl dkim keygen --type rsa|ed25519 --out FILE "
                        "[--selector S]\n");
        return CTL_USAGE;
    }
    return ctl_dkim_keygen(c, type, out, selector ? selector : "default");
}
