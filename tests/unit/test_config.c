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
#include <sys/stat.h>

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
    assert_string_equal(cfg.api.listen, "127.0.0.1:8025");
    assert_string_equal(cfg.api.keys_file, "");
    assert_int_equal(cfg.api.max_body, 8 * 1024 * 1024);
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

/*
 * Each error names the file, the line and the key.  A file that loads is
 * then validated (config_validate()): what the daemons run before start.
 */
static void expect_error(const char *text, const char *want)
{
    g_autofree char *path = write_config(text);
    g_autoptr(GPtrArray) problems = g_ptr_array_new_with_free_func(g_free);
    struct postern_config cfg;
    GError *err = NULL;
    gboolean found = FALSE;

    if (!config_load(&cfg, path, &err)) {
        assert_non_null(err);
        g_ptr_array_add(problems, g_strdup(err->message));
        g_error_free(err);
    } else {
        assert_false(config_validate(&cfg, problems));
    }
    for (guint i = 0; i < problems->len; i++) {
        const char *line = problems->pdata[i];

        assert_true(g_str_has_prefix(line, path));
        found |= strstr(line, want) != NULL;
    }
    if (!found)
        fail_msg("\"%s\" does not contain \"%s\"", (char *)problems->pdata[0], want);
    config_free(&cfg);
    g_unlink(path);
}

/* The file a test names as an existing DKIM key. */
static char *existing_file(void)
{
    return write_config("not really a key\n");
}

/* What loads and validates: the defaults, and a file with every check passing. */
static void test_valid(void **state)
{
    g_autofree char *key = existing_file();
    g_autofree char *text = g_strdup_printf(
        "[ingest]\nlisten = 127.0.0.1:2525, [::1]:2526, unix:/tmp/postern.sock\n"
        "[dkim]\nkeys = sel1:%s\n[relay]\nurl = smtp://relay.example:587\nuser = u\n"
        "password_file = %s\nrate = 2.5\n[events]\nurl = https://lego.example:8443/hook\n"
        "secret_file = %s\nca_file = %s\n", key, key, key, key);
    g_autofree char *path = write_config(text);
    g_autoptr(GPtrArray) problems = g_ptr_array_new_with_free_func(g_free);
    struct postern_config cfg;

    g_assert_cmpint(chmod(key, 0600), ==, 0);
    assert_true(config_load(&cfg, NULL, NULL));
    assert_true(config_validate(&cfg, problems));
    config_free(&cfg);
    assert_true(config_load(&cfg, path, NULL));
    if (!config_validate(&cfg, problems))
        fail_msg("%s", (char *)problems->pdata[0]);
    config_free(&cfg);
    g_unlink(path);
    g_unlink(key);
}

/* Issue 9 item 5: config that cannot work is refused before anything starts. */
static void test_cannot_work(void **state)
{
    g_autofree char *key = existing_file();
    g_autofree char *dup = g_strdup_printf("[dkim]\nkeys = s:%s\n[relay]\nrate = 1\n"
                                           "[dkim]\ndomain = x\n", key);
    g_autofree char *dupkey = g_strdup_printf("[dkim]\nkeys = s:%s\nkeys = t:%s\n", key, key);

    expect_error("[retry]\nlease = 0\n", ":2: [retry] lease: must be more than 0");
    expect_error("[retry]\nlifetime = 0\n", ":2: [retry] lifetime: must be more than 0");
    expect_error("[relay]\nurl = smtp//relay.example\n", ":2: [relay] url: relay url");
    expect_error("[relay]\nurl = smtp://relay.example:587/x\n", ":2: [relay] url:");
    expect_error("[ingest]\nmax_connections = 0\n", ":2: [ingest] max_connections: must be");
    expect_error("[ingest]\ntimeout = 0\n", ":2: [ingest] timeout: must be more than 0");
    expect_error("[relay]\ntimeout = 0\n", ":2: [relay] timeout: must be more than 0");
    expect_error("[workers]\nslots = 0\n", ":2: [workers] slots: must be more than 0");
    expect_error("[spool]\nmap_size = 0\n", ":2: [spool] map_size: must be more than 0");
    expect_error("[relay]\nmax_connections = 0\n", ":2: [relay] max_connections: must be");
    expect_error("[ingest]\nlisten = 127.0.0.1:99999\n",
                 ":2: [ingest] listen: \"127.0.0.1:99999\"");
    expect_error("[ingest]\nlisten = 127.0.0.1:0\n", "port \"0\" is not a number");
    expect_error("[ingest]\nlisten = localhost\n", "expected host:port");
    expect_error("[relay]\nrate = nan\n", ":2: [relay] rate: not a finite number");
    expect_error("[relay]\nrate = inf\n", ":2: [relay] rate: not a finite number");
    expect_error("[relay]\ndaily_window = 0\n", ":2: [relay] daily_window: must be more than 0");
    expect_error("[relay]\ndaily_limit = 4294967296\n", ":2: [relay] daily_limit: more than");
    expect_error("[relay]\nurl = smtp://relay.example\ntls = none\nuser = u\n"
                 "password_file = /etc/hostname\n", ":3: [relay] tls: none with a user");
    expect_error("[relay]\nuser = u\n", ":2: [relay] user: is set but password_file is not");
    expect_error("[relay]\nca_file = /nonexistent/ca.pem\n", "[relay] ca_file: /nonexistent");
    expect_error(dup, ":5: [dkim]: section appears twice (first at line 1)");
    expect_error(dupkey, ":3: [dkim] keys: key appears twice");
    expect_error("[dkim]\nkeys = sel1:/nonexistent/sel1.pem\n",
                 ":2: [dkim] keys: /nonexistent/sel1.pem: No such file");
    expect_error("[dkim]\nkeys = nocolon\n", "is not selector:path");
    expect_error("[api]\nlisten = 127.0.0.1\n", ":2: [api] listen: \"127.0.0.1\": expected");
    expect_error("[api]\nkeys_file = /nonexistent/keys\n", ":2: [api] keys_file: /nonexistent");
    expect_error("[api]\ntls_cert = /etc/hostname\n", "[api] tls_key: tls_cert and tls_key go");
    expect_error("[api]\nmax_body = 0\n", ":2: [api] max_body: must be more than 0");
    expect_error("[api]\nmax_connections = 0\n", ":2: [api] max_connections: must be more");
    /* [events]: an http(s) URL, and its secret, which others may not read. */
    expect_error("[events]\nurl = ftp://x/y\nsecret_file = /etc/hostname\n",
                 ":2: [events] url: \"ftp://x/y\": expected http://");
    expect_error("[events]\nurl = http://\nsecret_file = /etc/hostname\n", "[events] url:");
    expect_error("[events]\nurl = http://lego.example/hook\n",
                 "[events] secret_file: must be set with url");
    expect_error("[events]\nsecret_file = /etc/hostname\n", "is set but url is not");
    g_autofree char *open_key = g_strdup_printf("[events]\nurl = http://h/x\nsecret_file = %s\n",
                                                key);
    g_assert_cmpint(chmod(key, 0644), ==, 0);
    expect_error(open_key, ":3: [events] secret_file: ");
    expect_error("[events]\nurl = http://h/x\nsecret_file = /nonexistent/s\n",
                 ":3: [events] secret_file: /nonexistent/s: No such file");
    g_assert_cmpint(chmod(key, 0600), ==, 0);
    g_autofree char *backoff = g_strdup_printf("[events]\nurl = https://h/x\nsecret_file = %s\n"
                                               "max_backoff = 0\n", key);
    expect_error(backoff, ":4: [events] max_backoff: must be more than 0");
    /* [events] ca_file: readable, and only for an https url. */
    g_autofree char *no_ca = g_strdup_printf("[events]\nurl = https://h/x\nsecret_file = %s\n"
                                             "ca_file = /nonexistent/ca.pem\n", key);
    expect_error(no_ca, ":4: [events] ca_file: /nonexistent/ca.pem: No such file or directory "
                 "(a PEM file of CA certificates)");
    g_autofree char *plain_ca = g_strdup_printf("[events]\nurl = http://h/x\nsecret_file = %s\n"
                                                "ca_file = %s\n", key, key);
    expect_error(plain_ca, ":4: [events] ca_file: is set but url is not https://");
    expect_error("[events]\nca_file = /etc/hostname\n", "[events] ca_file: is set but url is not");
    /* [token] claim_url (pull mode): the same rules, and a timeout well inside the lease. */
    expect_error("[token]\nclaim_url = ftp://x/y\nclaim_secret_file = /etc/hostname\n",
                 ":2: [token] claim_url: \"ftp://x/y\": expected http://");
    expect_error("[token]\nclaim_url = http://lego.example/claim\n",
                 "[token] claim_secret_file: must be set with claim_url");
    expect_error("[token]\nclaim_secret_file = /etc/hostname\n",
                 "[token] claim_secret_file: is set but claim_url is not");
    g_autofree char *slow = g_strdup_printf("[retry]\nlease = 10s\n[token]\n"
                                            "claim_url = http://h/c\nclaim_secret_file = %s\n"
                                            "claim_timeout = 6s\n", key);
    expect_error(slow, "[token] claim_timeout: 6 s: must be at most half of [retry] lease");
    g_autofree char *nowait = g_strdup_printf("[token]\nclaim_url = http://h/c\n"
                                              "claim_secret_file = %s\nclaim_max_backoff = 0\n",
                                              key);
    expect_error(nowait, ":4: [token] claim_max_backoff: must be more than 0");
    g_autofree char *claim_ca = g_strdup_printf("[token]\nclaim_url = https://h/c\n"
                                                "claim_secret_file = %s\n"
                                                "claim_ca_file = /nonexistent/ca.pem\n", key);
    expect_error(claim_ca, ":4: [token] claim_ca_file: /nonexistent/ca.pem: No such file");
    /* [bounce] verp: a key others cannot read, an envelope_from to extend. */
    expect_error("[bounce]\nverp = true\n", "[bounce] secret_file: must be set with verp");
    g_autofree char *plus = g_strdup_printf("[bounce]\nverp = true\nsecret_file = %s\n"
                                            "envelope_from = b+x@abakus.no\n", key);
    expect_error(plus, ":4: [bounce] envelope_from: \"b+x@abakus.no\": verp needs");
    g_autofree char *open_secret = g_strdup_printf("[bounce]\nverp = true\nsecret_file = %s\n",
                                                   key);
    /* [unsubscribe] one_click: the bounce secret, one copy per recipient, a link to offer. */
    expect_error("[unsubscribe]\none_click = true\n[rewrite]\nunsubscribe_url = https://l.no\n",
                 "[bounce] secret_file: must be set with [unsubscribe] one_click");
    g_autofree char *shared = g_strdup_printf("[bounce]\nsecret_file = %s\n[unsubscribe]\n"
                                              "one_click = true\n[rewrite]\npersonalize = false\n"
                                              "unsubscribe_url = https://l.no\n", key);
    expect_error(shared, ":6: [rewrite] personalize: false: [unsubscribe] one_click needs");
    g_autofree char *nolink = g_strdup_printf("[bounce]\nsecret_file = %s\n[unsubscribe]\n"
                                              "one_click = true\n[list styret]\n"
                                              "address = styret@abakus.no\n", key);
    expect_error(nolink, "[list styret] unsubscribe_url: empty, and no [unsubscribe] address");
    g_autofree char *notweb = g_strdup_printf("[bounce]\nsecret_file = %s\n[unsubscribe]\n"
                                              "one_click = true\naddress = u@abakus.no\n"
                                              "[list styret]\naddress = styret@abakus.no\n"
                                              "unsubscribe_url = mailto:x@y\n", key);
    expect_error(notweb, "[list styret] unsubscribe_url: \"mailto:x@y\": one_click needs");
    g_autofree char *plus_addr = g_strdup_printf("[bounce]\nsecret_file = %s\n[unsubscribe]\n"
                                                 "one_click = true\naddress = u+x@abakus.no\n",
                                                 key);
    expect_error(plus_addr, ":5: [unsubscribe] address: \"u+x@abakus.no\": expected");
    g_autofree char *taken = g_strdup_printf("[bounce]\nsecret_file = %s\n[unsubscribe]\n"
                                             "one_click = true\naddress = Restricted@localhost\n",
                                             key);
    expect_error(taken, "[unsubscribe] address: Restricted@localhost is also a restricted");
    /* LOCAL+CODE within 64 octets: a local part of 39 fits the 24-digit code, 40 does not. */
    g_autofree char *local39 = g_strnfill(39, 'u');
    g_autofree char *fits = g_strdup_printf("[bounce]\nsecret_file = %s\n[unsubscribe]\n"
                                            "one_click = true\naddress = %s@abakus.no\n",
                                            key, local39);
    g_autofree char *fits_path = write_config(fits);
    g_autoptr(GPtrArray) problems = g_ptr_array_new_with_free_func(g_free);
    struct postern_config cfg;

    assert_true(config_load(&cfg, fits_path, NULL));
    assert_true(config_validate(&cfg, problems));
    config_free(&cfg);
    g_unlink(fits_path);
    g_autofree char *too_long = g_strdup_printf("[bounce]\nsecret_file = %s\n[unsubscribe]\n"
                                                "one_click = true\naddress = u%s@abakus.no\n",
                                                key, local39);
    expect_error(too_long, "@abakus.no\": the local part with +CODE is 65 octets, over RFC "
                 "5321's 64");
    /* l1098 and l63979 share the first 32 bits of SHA-256: their short codes would too. */
    g_autofree char *clash = g_strdup_printf("[bounce]\nsecret_file = %s\n[unsubscribe]\n"
                                             "one_click = true\naddress = u@abakus.no\n"
                                             "[list l1098]\naddress = a@abakus.no\n"
                                             "[list l63979]\naddress = b@abakus.no\n", key);
    expect_error(clash, "[list l63979]: the mailto unsubscribe code names lists by a hash of "
                 "the name, and \"l63979\" has the hash of \"l1098\": rename one");
    g_assert_cmpint(chmod(key, 0640), ==, 0);
    expect_error(open_secret, ":3: [bounce] secret_file: ");
    g_unlink(key);
}

/* Issue 9 item 7: a spool directory or LMDB file others may write is refused. */
static void test_spool_modes(void **state)
{
    g_autofree char *dir = g_dir_make_tmp("postern-spool-XXXXXX", NULL);
    g_autofree char *data = g_build_filename(dir, "data.mdb", NULL);
    g_autofree char *text = g_strdup_printf("[spool]\ndir = %s\n", dir);
    g_autofree char *want_dir = g_strdup_printf("[spool] dir: %s: mode 0777", dir);
    g_autofree char *want_data = g_strdup_printf("[spool] dir: %s: mode 0666", data);

    assert_true(g_file_set_contents(data, "", 0, NULL));
    assert_int_equal(chmod(dir, 0777), 0);
    expect_error(text, want_dir);
    assert_int_equal(chmod(dir, 0750), 0);
    assert_int_equal(chmod(data, 0666), 0);
    expect_error(text, want_data);
    g_unlink(data);
    g_rmdir(dir);
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

/* Issue 11: [list NAME] sections, the global keys their defaults. */
static void test_lists(void **state)
{
    g_autofree char *path = write_config(
        "[rewrite]\nfrom = Global <g@localhost>\nfooter = global footer\n"
        "[token]\nmax_recipients = 30\n"
        "[list styret]\naddress = Styret@Localhost\nfooter = -- \\nstyret\n"
        "language = nb\nmax_recipients = 5\n"
        "[list alle]\naddress = alle@localhost\nfrom = Alle <alle@localhost>\n"
        "hide_sender = yes\n");
    const struct postern_list *l;
    struct postern_config cfg;
    char *to_styret[] = { "nobody@localhost", "styret+x@localhost" };
    char *to_none[] = { "restricted@localhost" };

    (void)state;
    /* No file: the default list alone, from the global keys. */
    assert_true(config_load(&cfg, NULL, NULL));
    assert_int_equal(cfg.lists->len, 1);
    l = cfg.lists->pdata[0];
    assert_string_equal(l->name, "default");
    assert_null(l->address);
    assert_string_equal(l->from, cfg.rewrite.from);
    assert_string_equal(l->language, "en");
    assert_int_equal(l->max_recipients, 0);
    assert_true(config_list_of(&cfg, to_none, 1) == l);
    config_free(&cfg);

    assert_true(config_load(&cfg, path, NULL));
    assert_int_equal(cfg.lists->len, 3);
    l = config_list_find(&cfg, "default");
    assert_int_equal(l->max_recipients, 30);
    l = config_list_find(&cfg, "styret");
    assert_non_null(l);
    assert_string_equal(l->address, "Styret@Localhost");
    assert_string_equal(l->from, "Global <g@localhost>");       /* inherited */
    assert_string_equal(l->footer, "-- \nstyret");
    assert_string_equal(l->footer_hidden, cfg.rewrite.footer_hidden);
    assert_string_equal(l->language, "nb");
    assert_int_equal(l->max_recipients, 5);
    l = config_list_find(&cfg, "alle");
    assert_string_equal(l->from, "Alle <alle@localhost>");
    assert_string_equal(l->footer, "global footer");
    assert_string_equal(l->language, "en");
    assert_int_equal(l->max_recipients, 30);
    assert_true(l->hide_sender);
    assert_false(config_list_find(&cfg, "styret")->hide_sender);
    assert_null(config_list_find(&cfg, "nosuch"));
    /* A message's list: its first recipient that is a list's address (case, +detail aside). */
    assert_string_equal(config_list_of(&cfg, to_styret, 2)->name, "styret");
    assert_string_equal(config_list_of(&cfg, to_none, 1)->name, "default");
    /* Ingest takes mail for every list. */
    assert_true(g_strv_contains((const char *const *)cfg.accept, "restricted@localhost"));
    assert_true(g_strv_contains((const char *const *)cfg.accept, "Styret@Localhost"));
    assert_true(g_strv_contains((const char *const *)cfg.accept, "alle@localhost"));
    config_free(&cfg);
    g_unlink(path);

    expect_error("[list x]\naddress = x@localhost\nmax_recipients = many\n",
                 ":3: [list x] max_recipients: bad number");
    expect_error("[list x]\nadress = x@localhost\n", ":2: [list x] adress: unknown key");
    expect_error("[list x]\naddress = x@localhost\nhide_sender = maybe\n",
                 ":3: [list x] hide_sender: bad boolean");
    expect_error("[list x]\nlanguage = de\n", "[list x] address: a list needs an address");
    expect_error("[list x]\naddress = x@localhost\nlanguage = de\n",
                   "[list x] language: \"de\" is not en or nb");
    expect_error("[notice]\nlanguage = sv\n", "[notice] language: \"sv\" is not en or nb");
    expect_error("[list a]\naddress = same@localhost\n[list b]\naddress = SAME@localhost\n",
                   "[list b] address: SAME@localhost is also the address of list \"a\"");
    expect_error("[list a]\naddress = restricted@localhost\n",
                   "also the address of list \"default\" ([ingest] recipients)");
    expect_error("[list default]\naddress = d@localhost\n", "cannot name a list");
    expect_error("[list a]\naddress = not-an-address\n", "is not local@domain");
}

/* Approval on a list: its keys, their defaults, and what validation wants. */
/*
 * [relay] is the account "default"; a [relay NAME] takes tls and ca_file
 * from it, never its user.  Each account is checked as [relay] is, and
 * the accounts together: names, and one url + user per account.
 */
static void test_relay_accounts(void **state)
{
    g_autofree char *pw = existing_file();
    g_autofree char *text = g_strdup_printf(
        "[relay]\nurl = smtp://relay.test:587\ntls = opportunistic\nuser = a\n"
        "password_file = %s\ndaily_limit = 100\nrate = 3\n[relay b]\n"
        "url = smtp://relay.test:587\nuser = b\npassword_file = %s\ndaily_limit = 10\n"
        "max_connections = 1\ndaily_window = 1h\n", pw, pw);
    g_autofree char *path = write_config(text);
    g_autofree char *same = g_strdup_printf(
        "[relay]\nurl = smtp://r.test\nuser = a\npassword_file = %s\n"
        "[relay b]\nurl = smtp://r.test\nuser = a\npassword_file = %s\n", pw, pw);
    g_autoptr(GPtrArray) problems = g_ptr_array_new_with_free_func(g_free);
    const struct postern_relay *r;
    struct postern_relay_limits lim;
    struct postern_config cfg;

    (void)state;
    assert_true(config_load(&cfg, NULL, NULL));
    assert_int_equal(cfg.relays->len, 1);
    r = cfg.relays->pdata[0];
    assert_string_equal(r->name, "default");
    assert_string_equal(r->url, cfg.relay.url);
    config_free(&cfg);

    assert_true(config_load(&cfg, path, NULL));
    assert_true(config_validate(&cfg, problems));
    assert_int_equal(cfg.relays->len, 2);
    r = config_relay_find(&cfg, "b");
    assert_non_null(r);
    assert_string_equal(r->user, "b");
    assert_string_equal(r->tls, "opportunistic");           /* from [relay] */
    assert_string_equal(config_relay_find(&cfg, "default")->user, "a");
    assert_null(config_relay_find(&cfg, "c"));
    /* b's own limits where it set them, a budget of [relay]'s size where not. */
    config_relay_limits(&cfg, r, &lim);
    assert_int_equal(lim.daily_limit, 10);
    assert_int_equal(lim.max_connections, 1);
    assert_int_equal(lim.daily_window, 3600);
    assert_true(lim.rate > 2.9 && lim.rate < 3.1);
    config_relay_limits(&cfg, config_relay_find(&cfg, "default"), &lim);
    assert_int_equal(lim.daily_limit, 100);
    assert_int_equal(lim.max_connections, 10);
    assert_int_equal(lim.daily_window, 86400);
    config_free(&cfg);

    expect_error(same, "[relay b] user: url smtp://r.test and user \"a\" are also relay "
                       "account \"default\"'s");
    expect_error("[relay b]\nurl = smtp://r.test\nuser = b\n",
                 "[relay b] user: is set but password_file is not");
    expect_error("[relay b]\nurl = smtp://r.test\nuser = b\npassword_file = /nonexistent\n",
                 "[relay b] password_file: /nonexistent: No such file");
    expect_error("[relay b]\nuser = b\n", "[relay b] url: a relay account needs a url");
    expect_error("[relay b]\nurl = ftp://r.test\n", "[relay b] url:");
    expect_error("[relay b]\nurl = smtp://r.test\ntls = sometimes\n",
                 "[relay b] tls: \"sometimes\" is not require");
    expect_error("[relay default]\nurl = smtp://r.test\n",
                 "\"default\" cannot name a relay account");
    expect_error("[relay b]\nurl = smtp://r.test\n[relay  b]\nurl = smtp://s.test\n",
                 "a second relay account called \"b\"");
    /* An account's limits are checked as [relay]'s. */
    expect_error("[relay b]\nurl = smtp://r.test\ndaily_limit = ten\n",
                 "[relay b] daily_limit: bad number \"ten\"");
    expect_error("[relay b]\nurl = smtp://r.test\nmax_connections = 0\n",
                 "[relay b] max_connections: must be more than 0");
    expect_error("[relay b]\nurl = smtp://r.test\ndaily_window = 0s\n",
                 "[relay b] daily_window: must be more than 0");
    expect_error("[relay b]\nurl = smtp://r.test\nrate = inf\n",
                 "[relay b] rate: not a finite number");
    expect_error("[relay b]\nurl = smtp://r.test\ndaily_limit = 5000000000\n",
                 "[relay b] daily_limit: more than");
    expect_error("[relay b]\nurl = smtp://r.test\ntimeout = 1m\n",
                 "[relay b] timeout: unknown key");
    g_unlink(pw);
}

static void test_approval(void **state)
{
    g_autofree char *path = write_config(
        "[bounce]\nsecret_file = /nonexistent/bounce.secret\n"
        "[api]\nlisten = 127.0.0.1:9999\n"
        "[list styret]\naddress = styret@localhost\napproval = on\n"
        "moderator = leder@localhost\napproval_expiry = 2h\n"
        "[list alle]\naddress = alle@localhost\n");
    const struct postern_list *l;
    struct postern_config cfg;

    (void)state;
    assert_true(config_load(&cfg, path, NULL));
    l = config_list_find(&cfg, "styret");
    assert_true(l->approval);
    assert_string_equal(l->moderator, "leder@localhost");
    assert_int_equal(l->approval_expiry, 7200);
    l = config_list_find(&cfg, "alle");
    assert_false(l->approval);
    assert_null(l->moderator);
    assert_int_equal(l->approval_expiry, 7 * 86400);
    /* One secret file for both uses unless [approval] names its own. */
    assert_string_equal(cfg.approval.secret_file, "/nonexistent/bounce.secret");
    assert_string_equal(cfg.approval.url, "http://127.0.0.1:9999");
    config_free(&cfg);
    g_unlink(path);

    expect_error("[bounce]\nsecret_file = /nonexistent/s\n[list x]\naddress = x@localhost\n"
                 "approval = on\nmoderator = m@localhost\n",
                 "[approval] secret_file: /nonexistent/s: No such file or directory");
    expect_error("[list x]\naddress = x@localhost\napproval = on\nmoderator = m@localhost\n",
                 "[approval] secret_file: must be set with a list with approval");
    expect_error("[list x]\naddress = x@localhost\napproval_expiry = soon\n",
                 ":3: [list x] approval_expiry: bad duration");
    expect_error("[list x]\naddress = x@localhost\napproval = yes please\n",
                 ":3: [list x] approval: bad boolean");
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
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_cannot_work),
        cmocka_unit_test(test_spool_modes),
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_relay_accounts),
        cmocka_unit_test(test_approval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
