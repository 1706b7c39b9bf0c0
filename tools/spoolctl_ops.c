/*
 * spoolctl_ops.c - `check` (is this installation able to work?) and
 * `metrics` (Prometheus text format, for node_exporter's textfile
 * collector).
 */
#include "tools/spoolctl.h"
#include "common/clock.h"
#include "sender/smtp.h"
#include "transform/dkim.h"
#include "common/secret_file.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHECK_TIMEOUT_MS 10000

/* metrics */

int ctl_metrics(struct ctl *c, int argc, char **argv)
{
    GOptionEntry none[] = { { NULL } };
    g_autoptr(GString) out = g_string_new(NULL);
    struct spool_stats st;
    GError *err = NULL;

    if (!ctl_parse(c, &argc, &argv, "- Prometheus metrics", none))
        return CTL_USAGE;
    ctl_open_spool(c);
    if (!spool_stats_read(c->spool, c->cfg.relays, &st, &err))
        return ctl_fail(err);
    /* The same text as postern-api's GET /metrics (spool/spool_stats.h). */
    spool_stats_prometheus(&st, out);
    fputs(out->str, stdout);
    return CTL_OK;
}

/* check */

struct check {
    struct ctl *c;
    unsigned problems;
};

static void check_say(struct check *ck, gboolean ok, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static void check_say(struct check *ck, gboolean ok, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *text = NULL;

    va_start(ap, fmt);
    text = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    printf("%s: %s\n", ok ? "ok" : "error", text);
    ck->problems += !ok;
}

/* A file holding a secret must not be readable by group or others. */
static void check_secret_file(struct check *ck, const char *key, const char *path)
{
    struct stat st;

    if (!*path)
        return;
    if (stat(path, &st) < 0)
        check_say(ck, FALSE, "%s %s: %s", key, path, g_strerror(errno));
    else if (st.st_mode & 077)
        check_say(ck, FALSE, "%s %s: mode %04o lets group or others read it", key, path,
                  st.st_mode & 07777);
    else
        check_say(ck, TRUE, "%s %s", key, path);
}

/*
 * Open a session as the sender workers would: connect, greeting, EHLO,
 * STARTTLS with [relay] tls's certificate verification, AUTH with the
 * configured user and password; then QUIT.  A relay that only greets can
 * still refuse our certificate check or our password, and each of those
 * defers every copy.
 */
static void check_relay(struct check *ck, const struct relay_url *url)
{
    const struct postern_config *cfg = &ck->c->cfg;
    struct smtp_client_config sc = {
        .url = url, .ca_file = cfg->relay.ca_file, .user = cfg->relay.user,
        .helo_name = cfg->ingest.hostname,
        .timeout_max = (int)MIN(cfg->relay.timeout * 1000, CHECK_TIMEOUT_MS),
    };
    g_autoptr(GError) err = NULL;
    struct smtp_client *client;
    char *password = NULL;

    if (!smtp_tls_parse(cfg->relay.tls, &sc.tls, &err)) {
        check_say(ck, FALSE, "[relay] tls: %s", err->message);
        return;
    }
    /* Without the password AUTH cannot be tried: check_secret_file said why. */
    if (*cfg->relay.user && *cfg->relay.password_file) {
        if (!(password = secret_read("[relay] password_file", cfg->relay.password_file, &err))) {
            check_say(ck, FALSE, "[relay] url %s: AUTH not tried: %s", cfg->relay.url,
                      err->message);
            return;
        }
        password[strcspn(password, "\r\n")] = '\0';
        sc.password = password;
    }
    if (!(client = smtp_client_new(&sc, &err)))
        check_say(ck, FALSE, "[relay] url %s: %s", cfg->relay.url, err->message);
    else if (!smtp_client_probe(client, &err))
        check_say(ck, FALSE, "[relay] url %s: %s", cfg->relay.url, err->message);
    else
        check_say(ck, TRUE, "[relay] url %s: EHLO%s%s", cfg->relay.url,
                  sc.tls == SMTP_TLS_REQUIRE ? ", TLS (certificate verified)"
                  : sc.tls == SMTP_TLS_OPPORTUNISTIC ? ", TLS if offered (not verified)" : "",
                  *cfg->relay.user ? ", AUTH accepted" : "");
    smtp_client_free(client);
    secret_free(password);
}

/* Writable, or creatable by the sender on first delivery; check creates nothing. */
static void check_maildir(struct check *ck, const char *dir)
{
    g_autofree char *parent = g_path_get_dirname(dir);

    if (g_file_test(dir, G_FILE_TEST_IS_DIR))
        check_say(ck, access(dir, W_OK) == 0, "[relay] maildir %s%s", dir,
                  access(dir, W_OK) == 0 ? "" : ": not writable");
    else
        check_say(ck, access(parent, W_OK) == 0, "[relay] maildir %s: %s", dir,
                  access(parent, W_OK) == 0 ? "will be created" : "cannot be created");
}

int ctl_check(struct ctl *c, int argc, char **argv)
{
    GOptionEntry none[] = { { NULL } };
    struct check ck = { c, 0 };
    struct relay_url url;
    struct spool_stats st;
    GPtrArray *keys, *problems;
    GError *err = NULL;

    if (!ctl_parse(c, &argc, &argv, "- check config, keys, spool and relay", none))
        return CTL_USAGE;
    check_say(&ck, TRUE, "config %s", c->cfg.path ? c->cfg.path : "(embedded defaults)");
    /* What would stop the daemons and `postern run` (config.h): all of it. */
    problems = g_ptr_array_new_with_free_func(g_free);
    config_validate(&c->cfg, problems);
    for (guint i = 0; i < problems->len; i++)
        check_say(&ck, FALSE, "%s", (char *)problems->pdata[i]);
    g_ptr_array_unref(problems);

    if (!spool_open(&c->spool, &c->cfg, &err) || !spool_stats_read(c->spool, c->cfg.relays, &st, &err)) {
        check_say(&ck, FALSE, "spool: %s", err->message);
        g_clear_error(&err);
    } else {
        check_say(&ck, TRUE, "spool %s: %" G_GUINT64_FORMAT " bytes, %d stale reader(s) cleared",
                  c->cfg.spool.dir, st.spool_bytes, spool_reader_check(c->spool));
    }

    if ((keys = dkim_keys_load(c->cfg.dkim.keys, &err))) {
        for (guint i = 0; i < keys->len; i++) {
            const struct dkim_key *k = keys->pdata[i];
            g_autofree char *record = dkim_dns_record(k);
            check_say(&ck, TRUE, "[dkim] key %s (%s): publish %s._domainkey.%s TXT \"%s\"",
                      k->path, dkim_key_algorithm(k), k->selector, c->cfg.dkim.domain, record);
        }
        g_ptr_array_unref(keys);
    } else {
        check_say(&ck, FALSE, "[dkim] keys: %s", err->message);
        g_clear_error(&err);
    }

    check_secret_file(&ck, "[relay] password_file", c->cfg.relay.password_file);
    check_secret_file(&ck, "[workers] curve_secret_key_file", c->cfg.workers.curve_secret_key_file);
    if (!relay_url_parse(c->cfg.relay.url, &url, &err)) {
        check_say(&ck, FALSE, "[relay] url: %s", err->message);
        g_clear_error(&err);
    } else {
        if (url.kind == RELAY_MAILDIR)
            check_maildir(&ck, url.path);
        else
            check_relay(&ck, &url);
        relay_url_clear(&url);
    }
    /* A pause in force is no configuration problem, but explains a quiet queue. */
    if (c->spool) {
        struct relay_state rs;
        if (ctl_relay_read(c, &rs, NULL) && relay_state_paused(&rs, unix_ms())) {
            g_autofree char *relay = ctl_relay_describe(&c->cfg, &rs);
            printf("note: %s (spoolctl relay resume ends it)\n", relay);
        }
    }
    if (g_str_has_prefix(c->cfg.workers.dispatch, "tcp://") &&
        (!*c->cfg.workers.curve_secret_key_file || !*c->cfg.workers.curve_allowed_keys_file))
        check_say(&ck, FALSE, "[workers] dispatch %s: tcp:// needs CURVE keys",
                  c->cfg.workers.dispatch);
    printf("%u problem(s)\n", ck.problems);
    return ck.problems ? CTL_USAGE : CTL_OK;
}
