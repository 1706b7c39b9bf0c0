/*
 * spoolctl_token.c - token add, import, list, show, revoke.
 *
 * `add` and `import` print the tokens and nothing else on stdout, so a
 * web application can read them; the spool keeps only their hashes.
 */
#include "tools/spoolctl.h"
#include "common/clock.h"
#include "common/json_text.h"
#include "spool/spool_token.h"
#include "spool/spool_token_json.h"

#include <stdio.h>
#include <string.h>

/* Recipients from a file: one address a line, '#' comments and blanks skipped. */
static gboolean tok_read_rcpt_file(const char *path, GPtrArray *out, GError **err)
{
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;

    if (!g_file_get_contents(g_str_equal(path, "-") ? "/dev/stdin" : path, &text, NULL, err))
        return FALSE;
    lines = g_strsplit(text, "\n", -1);
    for (int i = 0; lines[i]; i++) {
        char *line = g_strstrip(lines[i]);
        if (*line && *line != '#')
            g_ptr_array_add(out, g_strdup(line));
    }
    return TRUE;
}

/* Bad input from the spool's checks: say which, exit as a usage error. */
static int tok_invalid(const char *where, GError *err)
{
    fprintf(stderr, "spoolctl: %s%s%s\n", where ? where : "", where ? ": " : "", err->message);
    g_error_free(err);
    return CTL_USAGE;
}

struct tok_batch {
    GPtrArray *tokens;              /* struct spool_token* */
};

static gboolean tok_insert_all(struct spool_txn *t, void *ctx, GError **err)
{
    struct tok_batch *b = ctx;

    for (guint i = 0; i < b->tokens->len; i++) {
        struct spool_token *tk = b->tokens->pdata[i];
        char id[TOKEN_ID_LEN + 1];

        if (!spool_token_insert(t, tk, err)) {
            spool_token_id(tk->hash, id);
            g_prefix_error(err, "token %s (from %s): ", id, tk->sender);
            return FALSE;
        }
        spool_token_id(tk->hash, id);
        spool_txn_log(t, "token %s: registered, owner=<%s>, nrcpt=%u", id, tk->sender,
                      tk->recipients->len);
    }
    return TRUE;
}

static void tok_free(gpointer p)
{
    spool_token_clear(p);
    g_free(p);
}

static int tok_store(struct ctl *c, GPtrArray *tokens, GPtrArray *texts)
{
    struct tok_batch b = { tokens };
    GError *err = NULL;

    ctl_open_spool(c);
    if (!spool_write(c->spool, tok_insert_all, &b, &err))
        return ctl_fail(err);
    for (guint i = 0; i < texts->len; i++)
        printf("%s\n", (const char *)texts->pdata[i]);
    return CTL_OK;
}

static int tok_add(struct ctl *c, int argc, char **argv)
{
    g_autofree char *from = NULL, *rcpt_file = NULL, *expires = NULL, *list = NULL;
    g_auto(GStrv) rcpts = NULL;
    gboolean hide = FALSE;
    GOptionEntry entries[] = {
        { "from", 0, 0, G_OPTION_ARG_STRING, &from, "owner: the envelope sender allowed", "A" },
        { "rcpt", 0, 0, G_OPTION_ARG_STRING_ARRAY, &rcpts, "a recipient (repeat)", "R" },
        { "rcpt-file", 0, 0, G_OPTION_ARG_FILENAME, &rcpt_file, "recipients, one a line", "F" },
        { "hide-sender", 0, 0, G_OPTION_ARG_NONE, &hide, "do not reveal the sender", NULL },
        { "expires", 0, 0, G_OPTION_ARG_STRING, &expires, "valid for D (e.g. 7d)", "D" },
        { "list", 0, 0, G_OPTION_ARG_STRING, &list, "the list it sends to (default: default)",
          "NAME" },
        { NULL }
    };
    g_autoptr(GPtrArray) tokens = g_ptr_array_new_with_free_func(tok_free);
    g_autoptr(GPtrArray) texts = g_ptr_array_new_with_free_func(g_free);
    struct spool_token *tk = g_new0(struct spool_token, 1);
    char *text = spool_token_generate();
    GError *err = NULL;
    uint64_t d = 0;

    spool_token_init(tk);
    g_ptr_array_add(tokens, tk);
    g_ptr_array_add(texts, text);
    if (!ctl_parse(c, &argc, &argv, "- register a token", entries))
        return CTL_USAGE;
    if (argc != 1 || !from || (!rcpts && !rcpt_file) ||
        (expires && !config_parse_duration(expires, &d))) {
        fprintf(stderr, "spoolctl: token add --from A --rcpt R... [--rcpt-file F] "
                        "[--hide-sender] [--expires D] [--list NAME]\n");
        return CTL_USAGE;
    }
    tk->sender = g_strdup(from);
    tk->hide_sender = hide;
    tk->list = g_steal_pointer(&list);
    tk->expires = d ? unix_ms() / 1000 + (int64_t)d : 0;
    for (int i = 0; rcpts && rcpts[i]; i++)
        g_ptr_array_add(tk->recipients, g_strdup(rcpts[i]));
    if (rcpt_file && !tok_read_rcpt_file(rcpt_file, tk->recipients, &err))
        return tok_invalid(NULL, err);
    /* The spool's rules decide, as for every front end. */
    if (!spool_token_prepare(tk, text, unix_ms() / 1000, &c->cfg, &err))
        return tok_invalid(NULL, err);
    return tok_store(c, tokens, texts);
}

/* [{"from": ..., "recipients": [...]}, ...] nests 3 deep; json_text.h says why a limit. */
#define IMPORT_JSON_DEPTH 8

static int tok_import(struct ctl *c, int argc, char **argv)
{
    GOptionEntry none[] = { { NULL } };
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GPtrArray) tokens = g_ptr_array_new_with_free_func(tok_free);
    g_autoptr(GPtrArray) texts = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *json = NULL;
    gsize len = 0;
    GError *err = NULL;
    JsonNode *root;

    if (!ctl_parse(c, &argc, &argv, "FILE|- - register tokens from a JSON array", none))
        return CTL_USAGE;
    if (argc != 2) {
        fprintf(stderr, "spoolctl: token import FILE|-\n");
        return CTL_USAGE;
    }
    if (!g_file_get_contents(g_str_equal(argv[1], "-") ? "/dev/stdin" : argv[1], &json, &len,
                             &err) ||
        !json_text_check(json, len, IMPORT_JSON_DEPTH, &err) ||
        !json_parser_load_from_data(parser, json, (gssize)len, &err)) {
        fprintf(stderr, "spoolctl: %s: %s\n", argv[1], err->message);
        g_error_free(err);
        return CTL_USAGE;
    }
    root = json_parser_get_root(parser);
    if (!root || !JSON_NODE_HOLDS_ARRAY(root)) {
        fprintf(stderr, "spoolctl: %s: expected a JSON array\n", argv[1]);
        return CTL_USAGE;
    }
    JsonArray *a = json_node_get_array(root);
    for (guint i = 0; i < json_array_get_length(a); i++) {
        struct spool_token *tk = g_new0(struct spool_token, 1);
        char *text = NULL;

        spool_token_init(tk);
        g_ptr_array_add(tokens, tk);
        if (!spool_token_from_json(json_array_get_element(a, i), unix_ms() / 1000, &c->cfg, tk,
                                   &text, &err)) {
            g_autofree char *where = g_strdup_printf("%s: entry %u", argv[1], i);

            g_free(text);
            return tok_invalid(where, err);
        }
        g_ptr_array_add(texts, text);
    }
    return tok_store(c, tokens, texts);
}

static void tok_json(const struct spool_token *tk, gboolean with_rcpts, GString *out)
{
    g_autoptr(JsonBuilder) b = json_builder_new();

    spool_token_to_json(b, tk, unix_ms() / 1000, with_rcpts);
    ctl_json_append(b, out);
}

static gboolean tok_list_one(const struct spool_token *tk, void *ctx)
{
    struct ctl_rows *rows = ctx;
    char id[TOKEN_ID_LEN + 1];

    if (rows->json) {
        tok_json(tk, FALSE, rows->out);
        return TRUE;
    }
    spool_token_id(tk->hash, id);
    g_string_append_printf(rows->out, "%-16s  %-8s  %5u  %s%s\n", id,
                           spool_token_status_name(spool_token_status(tk, unix_ms() / 1000)),
                           tk->recipients->len, ctl_safe(tk->sender),
                           tk->hide_sender ? " (hidden)" : "");
    return TRUE;
}

static int tok_list(struct ctl *c, int argc, char **argv)
{
    GOptionEntry none[] = { { NULL } };
    g_autoptr(GString) out = g_string_new(NULL);
    struct ctl_rows rows = { c->json, out };
    struct spool_txn t;
    GError *err = NULL;
    gboolean ok;

    if (!ctl_parse(c, &argc, &argv, "- list tokens", none))
        return CTL_USAGE;
    ctl_open_spool(c);
    if (!c->json)
        g_string_append_printf(out, "%-16s  %-8s  %5s  %s\n", "ID", "STATUS", "RCPTS", "OWNER");
    ok = spool_read_begin(c->spool, &t, &err) && spool_token_foreach(&t, tok_list_one, &rows, &err);
    spool_read_end(&t);
    if (!ok)
        return ctl_fail(err);
    fputs(out->str, stdout);
    return CTL_OK;
}

static int tok_show(struct ctl *c, int argc, char **argv)
{
    GOptionEntry none[] = { { NULL } };
    struct spool_txn t;
    struct spool_token tk;
    GError *err = NULL;

    if (!ctl_parse(c, &argc, &argv, "ID - show a token", none) || argc != 2)
        return CTL_USAGE;
    ctl_open_spool(c);
    if (!spool_read_begin(c->spool, &t, &err) || !spool_token_find(&t, argv[1], &tk, &err)) {
        spool_read_end(&t);
        return ctl_fail(err);
    }
    spool_read_end(&t);
    if (c->json) {
        g_autoptr(GString) out = g_string_new(NULL);
        tok_json(&tk, TRUE, out);
        fputs(out->str, stdout);
    } else {
        char id[TOKEN_ID_LEN + 1];
        spool_token_id(tk.hash, id);
        printf("id:          %s\nstatus:      %s\nowner:       %s\nhide sender: %s\n", id,
               spool_token_status_name(spool_token_status(&tk, unix_ms() / 1000)), ctl_safe(tk.sender),
               tk.hide_sender ? "yes" : "no");
        printf("list:        %s\n", ctl_safe(tk.list));
        for (guint i = 0; i < tk.recipients->len; i++)
            printf("recipient:   %s\n", ctl_safe(tk.recipients->pdata[i]));
    }
    spool_token_clear(&tk);
    return CTL_OK;
}

static gboolean tok_revoke_write(struct spool_txn *t, void *ctx, GError **err)
{
    const char *which = ctx;
    struct spool_token tk;
    char id[TOKEN_ID_LEN + 1];
    gboolean ok;

    if (!spool_token_find(t, which, &tk, err))
        return FALSE;
    spool_token_id(tk.hash, id);
    tk.revoked = TRUE;
    ok = spool_token_update(t, &tk, err);
    spool_txn_log(t, "token %s: revoked, owner=<%s>", id, tk.sender);
    spool_token_clear(&tk);
    return ok;
}

static int tok_revoke(struct ctl *c, int argc, char **argv)
{
    GOptionEntry none[] = { { NULL } };
    GError *err = NULL;

    if (!ctl_parse(c, &argc, &argv, "ID - revoke a token", none) || argc != 2)
        return CTL_USAGE;
    ctl_open_spool(c);
    if (!spool_write(c->spool, tok_revoke_write, argv[1], &err))
        return ctl_fail(err);
    return CTL_OK;
}

int ctl_token(struct ctl *c, int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*run)(struct ctl *c, int argc, char **argv);
    } verbs[] = {
        { "add", tok_add }, { "import", tok_import }, { "list", tok_list },
        { "show", tok_show }, { "revoke", tok_revoke },
    };

    for (size_t i = 0; argc >= 2 && i < G_N_ELEMENTS(verbs); i++)
        if (g_str_equal(argv[1], verbs[i].name))
            return verbs[i].run(c, argc - 1, argv + 1);
    fprintf(stderr, "usage: spoolctl token add|import|list|show|revoke ...\n");
    return CTL_USAGE;
}
