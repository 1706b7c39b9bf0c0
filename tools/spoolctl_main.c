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
    { "approve", ctl_approve, "ID | --all (a message awaiting approval: its copies go)" },
    { "discard", ctl_discard, "ID | --all (a message awaiting approval: no copy goes)" },
    { "delete", ctl_delete, "ID | --state S" },
    { "purge", ctl_purge, "--older-than D" },
    { "token", ctl_token, "add|import|list|show|revoke ..." },
    { "relay", ctl_relay, "status | resume (the pause after a quota reply or refused AUTH)" },
    { "check", ctl_check, "config, keys, spool and relay: says what is wrong" },
    { "metrics", ctl_metrics, "Prometheus text format" },
    { "events", ctl_events, "the outbox of outcome events: waiting, oldest, next try" },
    { "suppress", ctl_suppress, "list | add ADDR | remove ADDR (addresses that get no copies)" },
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

/*
 * json-glib escapes C0 controls but writes DEL, C1 controls (CSI), U+2028
 * and U+2029 as they are, and bytes that are not UTF-8 (a record from
 * before ingest refused them) too: write those as \u escapes, so that
 * `spoolctl --json` on a terminal is as safe as the text output and the
 * line stays valid JSON.  Outside strings JSON is ASCII: only strings
 * change, and they decode to the same text.
 */
static void ctl_json_escape_append(GString *out, const char *text)
{
    const char *end = text + strlen(text);

    for (const char *p = text; p < end;) {
        gunichar u;

        /* Most of it is ASCII other than DEL: copied as it is. */
        if ((unsigned char)*p < 0x7f) {
            g_string_append_c(out, *p++);
            continue;
        }
        u = g_utf8_get_char_validated(p, end - p);
        if (u == (gunichar)-1 || u == (gunichar)-2) {
            g_string_append(out, "\\ufffd");
            p++;
        } else if (u == 0x7f || (u >= 0x80 && u < 0xa0) || u == 0x2028 || u == 0x2029) {
            g_string_append_printf(out, "\\u%04x", u);
            p = g_utf8_next_char(p);
        } else {
            const char *next = g_utf8_next_char(p);
            g_string_append_len(out, p, next - p);
            p = next;
        }
    }
}

void ctl_json_append(JsonBuilder *b, GString *out)
{
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autofree char *text = NULL;

    json_generator_set_root(gen, root);
    text = json_generator_to_data(gen, NULL);
    ctl_json_escape_append(out, text);
    g_string_append_c(out, '\n');
}

void ctl_json_print(JsonBuilder *b)
{
    g_autoptr(GString) out = g_string_new(NULL);

    ctl_json_append(b, out);
    fputs(out->str, stdout);
}

/*
 * Text output goes to a terminal: whatever a client chose (addresses, the
 * LHLO name) or a relay replied shows with its control bytes escaped, as
 * in the log (common/log.h).  Each call returns a string of a small ring,
 * so that one printf can take several.
 */
const char *ctl_safe(const char *s)
{
    static char *ring[8];
    static unsigned next;
    char **slot = &ring[next++ % G_N_ELEMENTS(ring)];

    g_free(*slot);
    *slot = log_escape(s ? s : "");
    return *slot;
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
    /* delete and purge must work on a full spool: they are the remedy. */
    spool_use_reserve(c->spool);
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
