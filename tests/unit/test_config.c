/*
 * test_config.c - the config file: defaults, parsing, one-line errors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <glib/gstdio.h>
#include <unistd.h>
#include <string.h>

#include "common/config.h"

static char *write_config(const char *text)
{
    char *path = NULL;
    int fd = g_file_open_tmp("postern-config-XXXXXX.ini", &path, NULL);

    assert_true(fd >= 0);
    assert_true(g_file_set_contents(path, text, -1, NULL));
    close(fd);
    return path;
}

static void test_defaults(void **state)
{
    struct postern_config cfg;
    GError *err = NULL;

    assert_true(config_load(&cfg, NULL, &err));
    assert_string_equal(cfg.spool.dir, "./var/spool");
    assert_string_equal(cfg.ingest.listen[0], "127.0.0.1:8024");
    assert_string_equal(cfg.ingest.recipients[0], "restricted@localhost");
    assert_int_equal(cfg.ingest.max_message_size, 32 * 1024 * 1024);
    assert_int_equal(cfg.ingest.timeout, 300);
    assert_int_equal(cfg.retry.lifetime, 5 * 86400);
    assert_string_equal(cfg.relay.url, "maildir:./var/outbox");
    assert_string_equal(cfg.workers.dispatch, "ipc://./var/spool/run/dispatch");
    assert_true(cfg.rewrite.personalize);
    assert_non_null(strstr(cfg.rewrite.footer, "\n"));
    config_free(&cfg);
}

static void test_values(void **state)
{
    g_autofree char *path = write_config(
        "# comment\n[spool]\ndir = /tmp/x\n[ingest]\nlisten = 127.0.0.1:1, unix:/tmp/s\n"
        "recipients = a@b.no , c@d.no\nmax_message_size = 10K\ntimeout = 2h\n"
        "[relay]\nrate = 2.5\ntls = none\n[rewrite]\npersonalize = false\n");
    struct postern_config cfg;
    GError *err = NULL;

    assert_true(config_load(&cfg, path, &err));
    assert_string_equal(cfg.spool.dir, "/tmp/x");
    assert_string_equal(cfg.ingest.listen[1], "unix:/tmp/s");
    assert_string_equal(cfg.ingest.recipients[1], "c@d.no");
    assert_null(cfg.ingest.recipients[2]);
    assert_int_equal(cfg.ingest.max_message_size, 10240);
    assert_int_equal(cfg.ingest.timeout, 7200);
    assert_true(cfg.relay.rate > 2.4 && cfg.relay.rate < 2.6);
    assert_false(cfg.rewrite.personalize);
    assert_string_equal(cfg.workers.hints, "ipc:///tmp/x/run/hints");
    config_free(&cfg);
    g_unlink(path);
}

/* Each error names the file, the line and the key. */
static void expect_error(const char *text, const char *want)
{
    g_autofree char *path = write_config(text);
    struct postern_config cfg;
    GError *err = NULL;

    assert_false(config_load(&cfg, path, &err));
    assert_non_null(err);
    assert_true(g_str_has_prefix(err->message, path));
    if (!strstr(err->message, want))
        fail_msg("\"%s\" does not contain \"%s\"", err->message, want);
    g_error_free(err);
    config_free(&cfg);
    g_unlink(path);
}

static void test_errors(void **state)
{
    expect_error("[ingest]\n\nmax_message_size = 12Q\n", ":3: [ingest] max_message_size: bad size");
    expect_error("[retry]\ninitial = soon\n", ":2: [retry] initial: bad duration");
    expect_error("[relay]\ntls = maybe\n", ":2: [relay] tls:");
    expect_error("[relay]\nurl = x\nmax_connections = -1\n", ":3: [relay] max_connections: bad number");
    expect_error("[ingest]\nrecipient = a@b\n", ":2: [ingest] recipient: unknown key");
    expect_error("[nonsense]\n", ":1: [nonsense]: unknown section");
    expect_error("[rewrite]\npersonalize = perhaps\n", "bad boolean");
    expect_error("[retry]\ninitial = 10m\nmax = 1m\n", "[retry] max: smaller than initial");
    expect_error("[ingest]\nlisten = 127.0.0.1:1\nnot an ini file\n", ":3: Key file contains line");
    expect_error("# comment\n[spool\n", ":2: Key file contains line");
}

static void test_parsers(void **state)
{
    uint64_t v;

    assert_true(config_parse_duration("90", &v) && v == 90);
    assert_true(config_parse_duration("5m", &v) && v == 300);
    assert_true(config_parse_duration("1d", &v) && v == 86400);
    assert_false(config_parse_duration("-1", &v));
    assert_false(config_parse_duration("5mm", &v));
    assert_false(config_parse_duration("", &v));
    assert_true(config_parse_size("32M", &v) && v == 32ULL << 20);
    assert_true(config_parse_size("1g", &v) && v == 1ULL << 30);
    assert_true(config_parse_size("4KB", &v) && v == 4096);
    assert_false(config_parse_size("99999999999999999999G", &v));
    assert_false(config_parse_size("1X", &v));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_parsers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
