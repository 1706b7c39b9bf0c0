/*
 * spoolctl - inspect and steer the Postern spool.
 *
 * The global options come before the command (stopping at the first
 * word that is not an option); each command parses its own.
 */
#include "tools/spoolctl.h"
#include "common/log.h"

#include <stdio.h>
#include <string.h>


static const struct {
    const char *name;
    int (*run)(struct ctl *c, int argc, char **argv);
    const char *help;
} ctl_commands[] = {
    { "stats", ctl_stats, "counts per state, oldest message, spool size" },
    { "list", ctl_list, "[--state S] [--sender A] [--older-than D] [--limit N]" },
    { "show", ctl_show, "ID [--raw | --outgoing [--rcpt A] | --deliveries]" },
    { "hold", ctl_hold, "ID | --all" },
    { "release", ctl_release, "ID | --all" },
    { "retry", ctl_retry, "ID | --all" },
    { "delete", ctl_delete, "ID | --state S" },
    { "purge", ctl_purge, "--older-than D" },
    { "token", ctl_token, "add|import|list|show|revoke ..." },
    { "check", ctl_check, "config, keys, spool and relay: says what is wrong" },
    { "metrics", ctl_metrics, "Prometheus text format" },
    { "dkim", ctl_dkim, "keygen --type rsa|ed25519 --out FILE [--selector S]" },
    { "api-key", ctl_api_key, "add NAME read|tokens|admin (prints the key once)" },
};

gboolean ctl_parse(struct ctl *c, int *argc, char ***argv, const char *usage,
                   GOptionEntry *entries)
{
    g_autoptr(GOptionContext) octx = g_option_context_new(usage);
    GOptionEntry common[] = {
        { "json", 0, 0, G_OPTION_ARG_NONE, &c->json, "JSON output", NULL },
        { NULL }
    };
    GError *err = NULL;

    g_option_context_add_main_entries(octx, entries, NULL);
    g_option_context_add_main_entries(octx, common, NULL);
    if (!g_option_context_parse(octx, argc, argv, &err)) {
        fprintf(stderr, "spoolctl: %s\n", err->message);
        g_error_free(err);
        return FALSE;
    }
    /* GOption leaves a "--" in place: drop it, what follows are operands. */
    for (int i = 1; i < *argc; i++)
        if (g_str_equal((*argv)[i], "--")) {
            memmove(&(*argv)[i], &(*argv)[i + 1], sizeof(char *) * (size_t)(*argc - i));
            (*argc)--;
            break;
        }
    return TRUE;
}

void ctl_json_append(JsonBuilder *b, GString *out)
{
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autofree char *text = NULL;

    json_generator_set_root(gen, root);
    text = json_generator_to_data(gen, NULL);
    g_string_append_printf(out, "%s\n", text);
}

void ctl_json_print(JsonBuilder *b)
{
    g_autoptr(GString) out = g_string_new(NULL);

    ctl_json_append(b, out);
    fputs(out->str, stdout);
}

int ctl_fail(GError *err)
{
    int code = g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND) ? CTL_NOT_FOUND
               : g_error_matches(err, SPOOL_ERROR, SPOOL_ERR_INVALID) ? CTL_USAGE
               : CTL_FAIL;

    fprintf(stderr, "spoolctl: %s\n", err->message);
    g_error_free(err);
    return code;
}

void ctl_open_spool(struct ctl *c)
{
    GError *err = NULL;

    if (!spool_open(&c->spool, &c->cfg, &err))
        exit(ctl_fail(err));
}

static void ctl_usage(void)
{
    fprintf(stderr, "usage: spoolctl [-c FILE] [--json] COMMAND [ARGS]\ncommands:\n");
    for (size_t i = 0; i < G_N_ELEMENTS(ctl_commands); i++)
        fprintf(stderr, "  %-8s %s\n", ctl_commands[i].name, ctl_commands[i].help);
}

int main(int argc, char **argv)
{
    g_autofree char *config_path = NULL;
    struct ctl c = { 0 };
    GOptionEntry options[] = {
        { "config", 'c', 0, G_OPTION_ARG_FILENAME, &config_path, "configuration file", "FILE" },
        { "json", 0, 0, G_OPTION_ARG_NONE, &c.json, "JSON output", NULL },
        { NULL }
    };
    g_autoptr(GOptionContext) octx = g_option_context_new("COMMAND [ARGS] - Postern spool control");
    GError *err = NULL;
    int rc = CTL_USAGE;

    log_init("spoolctl", TRUE);
    g_option_context_add_main_entries(octx, options, NULL);
    g_option_context_set_strict_posix(octx, TRUE);
    if (!g_option_context_parse(octx, &argc, &argv, &err)) {
        fprintf(stderr, "spoolctl: %s\n", err->message);
        g_error_free(err);
        return CTL_USAGE;
    }
    if (argc < 2) {
        ctl_usage();
        return CTL_USAGE;
    }
    /* State changes go to the mail log with the daemons' lines. */
    log_init("spoolctl", FALSE);
    config_load_or_exit(&c.cfg, config_path);
    for (size_t i = 0; i < G_N_ELEMENTS(ctl_commands); i++)
        if (g_str_equal(argv[1], ctl_commands[i].name)) {
            rc = ctl_commands[i].run(&c, argc - 1, argv + 1);
            goto done;
        }
    fprintf(stderr, "spoolctl: unknown command \"%s\"\n", argv[1]);
    ctl_usage();
done:
    spool_close(c.spool);
    config_free(&c.cfg);
    return rc;
}
