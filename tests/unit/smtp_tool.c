/*
 * smtp_tool: drive the SMTP client (or Maildir delivery) from the command
 * line for the integration tests, and print what happened as lines that
 * are easy to parse:
 *
 *   txn N ret R error NAME[: message]
 *   rcpt ADDR code=C status=S error=NAME phase=P verdict=V relay=R text=TEXT
 *   client connected=0|1            (after the last transaction)
 *   maildir ok | maildir error: message
 *
 * The message file is passed as two data parts split at --split (default:
 * the middle), so that dot-stuffing across parts gets exercised.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "dispatch/retry_policy.h"
#include "sender/smtp.h"

static const char *const error_names[] = {
    [SMTP_ERROR_NONE] = "none", [SMTP_ERROR_CONFIG] = "config",
    [SMTP_ERROR_CONNECT] = "connect", [SMTP_ERROR_TIMEOUT] = "timeout",
    [SMTP_ERROR_LOST] = "lost", [SMTP_ERROR_TLS] = "tls",
    [SMTP_ERROR_PROTOCOL] = "protocol", [SMTP_ERROR_SESSION] = "session",
};

static char *opt_url, *opt_tls = "require", *opt_ca, *opt_user, *opt_password;
static char *opt_auth = "any", *opt_helo = "client.test", *opt_from = "", *opt_data;
static char **opt_to;
static int opt_timeout, opt_repeat = 1, opt_split = -1, opt_pause;
static gboolean opt_ahead;

static const GOptionEntry entries[] = {
    {"url", 0, 0, G_OPTION_ARG_STRING, &opt_url, "relay url", "URL"},
    {"tls", 0, 0, G_OPTION_ARG_STRING, &opt_tls, "require|opportunistic|none", "LEVEL"},
    {"ca-file", 0, 0, G_OPTION_ARG_FILENAME, &opt_ca, "trusted CA certificates", "FILE"},
    {"user", 0, 0, G_OPTION_ARG_STRING, &opt_user, "AUTH user", "USER"},
    {"password", 0, 0, G_OPTION_ARG_STRING, &opt_password, "AUTH password", "PW"},
    {"auth", 0, 0, G_OPTION_ARG_STRING, &opt_auth, "any|plain|login", "MECH"},
    {"helo", 0, 0, G_OPTION_ARG_STRING, &opt_helo, "EHLO name", "NAME"},
    {"timeout", 0, 0, G_OPTION_ARG_INT, &opt_timeout, "every phase's timeout", "MS"},
    {"from", 0, 0, G_OPTION_ARG_STRING, &opt_from, "envelope sender", "ADDR"},
    {"to", 0, 0, G_OPTION_ARG_STRING_ARRAY, &opt_to, "recipient (repeat)", "ADDR"},
    {"data", 0, 0, G_OPTION_ARG_FILENAME, &opt_data, "message file, CRLF lines", "FILE"},
    {"split", 0, 0, G_OPTION_ARG_INT, &opt_split, "where the two data parts meet", "N"},
    {"repeat", 0, 0, G_OPTION_ARG_INT, &opt_repeat, "transactions on one client", "N"},
    {"pause", 0, 0, G_OPTION_ARG_INT, &opt_pause, "idle time between transactions", "MS"},
    {"ahead", 0, 0, G_OPTION_ARG_NONE, &opt_ahead,
     "announce the next transaction before each (after the last too: one never sent)", NULL},
    {NULL},
};

static void print_results(int txn, int ret, const GError *err, const char *const *to,
              const struct smtp_rcpt_result *res, size_t n)
{
    printf("txn %d ret %d error %s%s%s\n", txn, ret,
           err ? error_names[err->code] : "none", err ? ": " : "", err ? err->message : "");
    for (size_t i = 0; i < n; i++)
        printf("rcpt %s code=%d status=%s error=%s phase=%s verdict=%s relay=%s text=%s\n",
               to[i], res[i].code, res[i].status, error_names[res[i].error],
               smtp_phase_name(res[i].phase), retry_verdict_name(retry_classify(&res[i])),
               res[i].relay, res[i].text);
    fflush(stdout);
}

static int run_smtp(const struct relay_url *url, const char *const *parts, const size_t *lens)
{
    struct smtp_client_config cfg = {
        .url = url, .ca_file = opt_ca, .user = opt_user, .password = opt_password,
        .helo_name = opt_helo,
        .auth = !g_strcmp0(opt_auth, "plain") ? SMTP_AUTH_PLAIN
            : !g_strcmp0(opt_auth, "login") ? SMTP_AUTH_LOGIN : SMTP_AUTH_ANY,
    };
    size_t  n = g_strv_length(opt_to);
    struct smtp_rcpt_result *res = g_new0(struct smtp_rcpt_result, n);
    struct smtp_client *c;
    GError *err = NULL;

    for (int i = 0; i < SMTP_PHASE_COUNT; i++)
        cfg.timeouts[i] = opt_timeout;
    if (!smtp_tls_parse(opt_tls, &cfg.tls, &err) || (c = smtp_client_new(&cfg, &err)) == NULL) {
        fprintf(stderr, "smtp_tool: %s\n", err->message);
        return 2;
    }
    for (int txn = 1; txn <= opt_repeat; txn++) {
        int     ret;

        if (txn > 1)
            g_usleep((gulong) opt_pause * 1000);
        if (opt_ahead)
            smtp_client_announce(c, opt_from, (const char *const *) opt_to, n, lens, 2);
        ret = smtp_client_send(c, opt_from, (const char *const *) opt_to, n, parts, lens, 2,
                       res, &err);

        print_results(txn, ret, err, (const char *const *) opt_to, res, n);
        g_clear_error(&err);
        smtp_results_clear(res, n);
    }
    printf("client connected=%d\n", smtp_client_connected(c));
    smtp_client_free(c);
    g_free(res);
    return 0;
}

static int deliver(const struct relay_url *url, const char *data, size_t len)
{
    size_t  split = opt_split >= 0 && (size_t) opt_split <= len ? (size_t) opt_split : len / 2;
    const char *parts[2] = {data, data + split};
    const size_t lens[2] = {split, len - split};
    GError *err = NULL;
    int     rc;

    if (url->kind != RELAY_MAILDIR)
        return run_smtp(url, parts, lens);
    rc = maildir_deliver(url->path, parts, lens, 2, &err) ? 0 : 1;
    printf("maildir %s%s\n", err ? "error: " : "ok", err ? err->message : "");
    g_clear_error(&err);
    return rc;
}

int     main(int argc, char **argv)
{
    GOptionContext *ctx = g_option_context_new("- drive the Postern SMTP client");
    struct relay_url url;
    GError *err = NULL;
    char   *data = NULL;
    size_t  len = 0;
    int     rc;

    /* As in every sender worker: a write to a closed socket is an error, not death. */
    signal(SIGPIPE, SIG_IGN);
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err) || opt_url == NULL || opt_data == NULL
        || !relay_url_parse(opt_url, &url, &err)
        || !g_file_get_contents(opt_data, &data, &len, &err)) {
        fprintf(stderr, "smtp_tool: %s\n", err ? err->message : "--url and --data are required");
        return 2;
    }
    rc = opt_to || url.kind == RELAY_MAILDIR ? deliver(&url, data, len) : 2;
    relay_url_clear(&url);
    g_free(data);
    g_strfreev(opt_to);
    g_option_context_free(ctx);
    return rc;
}
