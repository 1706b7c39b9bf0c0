/*
 * spoolctl_ops.c - `check` (is this installation able to work?) and
 * `metrics` (Prometheus text format, for node_exporter's textfile
 * collector).
 */
#include "tools/spoolctl.h"
#include "sender/smtp.h"
#include "transform/dkim.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
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
    if (!spool_stats_read(c->spool, &st, &err))
        return ctl_fail(err);
    /* The same text as the API's GET /metrics (spool_stats.h). */
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

/* Connect and read the greeting: the relay is there and speaks SMTP. */
static void check_relay(struct check *ck, const struct relay_url *url)
{
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res;
    g_autofree char *port = g_strdup_printf("%d", url->port);
    char greeting[512] = "";
    int fd = -1, rc;

    if ((rc = getaddrinfo(url->host, port, &hints, &res))) {
        check_say(ck, FALSE, "[relay] url %s: %s", ck->c->cfg.relay.url, gai_strerror(rc));
        return;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    rc = fd < 0 ? -1 : connect(fd, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (rc == 0 && url->kind == RELAY_SMTP) {
        struct pollfd p = { fd, POLLIN, 0 };
        ssize_t n = poll(&p, 1, CHECK_TIMEOUT_MS) == 1 ? read(fd, greeting, sizeof(greeting) - 1) : -1;
        greeting[MAX(n, 0)] = '\0';
        *strchrnul(greeting, '\r') = '\0';
    }
    if (rc < 0)
        check_say(ck, FALSE, "[relay] url %s: connect: %s", ck->c->cfg.relay.url, g_strerror(errno));
    else if (url->kind == RELAY_SMTP && strncmp(greeting, "220", 3) != 0)
        check_say(ck, FALSE, "[relay] url %s: no 220 greeting (got \"%s\")", ck->c->cfg.relay.url,
                  greeting);
    else
        check_say(ck, TRUE, "[relay] url %s reachable%s%s", ck->c->cfg.relay.url,
                  *greeting ? ": " : "", greeting);
    if (fd >= 0)
        close(fd);
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

    if (!spool_open(&c->spool, &c->cfg, &err) || !spool_stats_read(c->spool, &st, &err)) {
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
    if (g_str_has_prefix(c->cfg.workers.dispatch, "tcp://") &&
        (!*c->cfg.workers.curve_secret_key_file || !*c->cfg.workers.curve_allowed_keys_file))
        check_say(&ck, FALSE, "[workers] dispatch %s: tcp:// needs CURVE keys",
                  c->cfg.workers.dispatch);
    printf("%u problem(s)\n", ck.problems);
    return ck.problems ? CTL_USAGE : CTL_OK;
}
