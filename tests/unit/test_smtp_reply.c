/*
 * The pure parsers of the SMTP client: replies, EHLO keywords, relay URLs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "sender/smtp.h"

/* Parse all of input fed in one go into replies; returns how many, -1 on error. */
static int parse_all(const char *input, size_t len, struct smtp_reply *out, int max)
{
    struct smtp_reply_parser *p = smtp_reply_parser_new();
    enum smtp_parse st;
    int     n = 0;

    smtp_reply_feed(p, input, len);
    while (n < max && (st = smtp_reply_next(p, &out[n], NULL)) == SMTP_PARSE_REPLY)
        n++;
    if (n < max && st == SMTP_PARSE_ERROR)
        n = -1;
    smtp_reply_parser_free(p);
    return n;
}

static void clear_all(struct smtp_reply *r, int n)
{
    for (int i = 0; i < n; i++)
        smtp_reply_clear(&r[i]);
}

static void test_single(void **state)
{
    struct smtp_reply r[2];
    const char *in = "250 OK\r\n";

    assert_int_equal(parse_all(in, strlen(in), r, 2), 1);
    assert_int_equal(r[0].code, 250);
    assert_string_equal(r[0].status, "");
    assert_string_equal(r[0].text, "OK");
    assert_string_equal(r[0].lines[0], "OK");
    assert_null(r[0].lines[1]);
    clear_all(r, 1);
}

static void test_code_only_and_bare_lf(void **state)
{
    struct smtp_reply r[3];
    const char *in = "354\r\n221 bye\n";

    assert_int_equal(parse_all(in, strlen(in), r, 3), 2);
    assert_int_equal(r[0].code, 354);
    assert_string_equal(r[0].text, "");
    assert_int_equal(r[1].code, 221);
    assert_string_equal(r[1].text, "bye");
    clear_all(r, 2);
}

static void test_multiline(void **state)
{
    struct smtp_reply r[2];
    const char *in = "550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n";

    assert_int_equal(parse_all(in, strlen(in), r, 2), 1);
    assert_int_equal(r[0].code, 550);
    assert_string_equal(r[0].status, "5.7.1");
    assert_string_equal(r[0].text, "first second third");
    assert_string_equal(r[0].lines[1], "5.7.1 second");
    assert_null(r[0].lines[3]);
    clear_all(r, 1);
}

static void test_enhanced_codes(void **state)
{
    static const struct {
        const char *in, *status, *text;
    }       cases[] = {
        {"250 2.1.0 Sender ok\r\n", "2.1.0", "Sender ok"},
        {"550 5.1.1\r\n", "5.1.1", ""},
        {"421 4.7.0 Try again later\r\n", "4.7.0", "Try again later"},
        {"550 5.123.456 x\r\n", "5.123.456", "x"},
        {"250 5.1.1 class differs\r\n", "", "5.1.1 class differs"},
        {"550 5.1234.1 x\r\n", "", "5.1234.1 x"},
        {"550 5.1.1x\r\n", "", "5.1.1x"},
        {"550 5..1 x\r\n", "", "5..1 x"},
        {"550 5.1 x\r\n", "", "5.1 x"},
        {"550 5.1.\r\n", "", "5.1."},
    };

    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        struct smtp_reply r[1];

        assert_int_equal(parse_all(cases[i].in, strlen(cases[i].in), r, 1), 1);
        assert_string_equal(r[0].status, cases[i].status);
        assert_string_equal(r[0].text, cases[i].text);
        clear_all(r, 1);
    }
}

/* Three replies, split in two feeds at every byte offset, then byte by byte. */
static const char stream[] =
    "220 mx.example ESMTP\r\n"
    "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
    "451 4.3.0 try later\r\n";

static void check_stream(struct smtp_reply *r)
{
    assert_int_equal(r[0].code, 220);
    assert_string_equal(r[0].text, "mx.example ESMTP");
    assert_int_equal(r[1].code, 250);
    assert_string_equal(r[1].text, "mx.example PIPELINING SIZE 1000");
    assert_int_equal(r[2].code, 451);
    assert_string_equal(r[2].status, "4.3.0");
    assert_string_equal(r[2].text, "try later");
}

static void test_split_everywhere(void **state)
{
    size_t  len = strlen(stream);

    for (size_t cut = 0; cut <= len; cut++) {
        struct smtp_reply_parser *p = smtp_reply_parser_new();
        struct smtp_reply r[3];
        int     n = 0;

        smtp_reply_feed(p, stream, cut);
        while (smtp_reply_next(p, &r[n], NULL) == SMTP_PARSE_REPLY)
            n++;
        smtp_reply_feed(p, stream + cut, len - cut);
        while (n < 3 && smtp_reply_next(p, &r[n], NULL) == SMTP_PARSE_REPLY)
            n++;
        assert_int_equal(n, 3);
        assert_int_equal(smtp_reply_next(p, &r[0], NULL), SMTP_PARSE_MORE);
        assert_int_equal(smtp_reply_pending(p), 0);
        check_stream(r);
        clear_all(r, 3);
        smtp_reply_parser_free(p);
    }
}

static void test_byte_by_byte(void **state)
{
    struct smtp_reply_parser *p = smtp_reply_parser_new();
    struct smtp_reply r[3];
    int     n = 0;

    for (size_t i = 0; stream[i]; i++) {
        smtp_reply_feed(p, stream + i, 1);
        if (smtp_reply_next(p, &r[n], NULL) == SMTP_PARSE_REPLY)
            n++;
        else
            assert_true(smtp_reply_pending(p) > 0);
    }
    assert_int_equal(n, 3);
    check_stream(r);
    clear_all(r, 3);
    smtp_reply_parser_free(p);
}

static void expect_error(const char *in, size_t len)
{
    struct smtp_reply_parser *p = smtp_reply_parser_new();
    struct smtp_reply r;
    GError *err = NULL;
    enum smtp_parse st;

    smtp_reply_feed(p, in, len);
    while ((st = smtp_reply_next(p, &r, &err)) == SMTP_PARSE_REPLY)
        smtp_reply_clear(&r);
    assert_int_equal(st, SMTP_PARSE_ERROR);
    assert_true(g_error_matches(err, SMTP_ERROR, SMTP_ERROR_PROTOCOL));
    g_clear_error(&err);

    /* An error is final, even when good input follows. */
    smtp_reply_feed(p, "250 ok\r\n", 8);
    assert_int_equal(smtp_reply_next(p, &r, NULL), SMTP_PARSE_ERROR);
    smtp_reply_parser_free(p);
}

static void test_bad_input(void **state)
{
    static const char *const bad[] = {
        "hello\r\n", "25\r\n", "250x\r\n", "2500 x\r\n", "650 x\r\n", "160 x\r\n",
        "270 x\r\n", "25a x\r\n", "\r\n", "250-a\r\n251 b\r\n", "250 ok\r\nbad\r\n",
    };

    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++)
        expect_error(bad[i], strlen(bad[i]));
    expect_error("250 a\0b\r\n", 9);
}

static void test_too_long(void **state)
{
    GString *s = g_string_new("250 ");
    struct smtp_reply_parser *p;
    struct smtp_reply r;

    /* Without a line end: refused as soon as it cannot be a line any more. */
    while (s->len <= SMTP_LINE_MAX + 1)
        g_string_append_c(s, 'x');
    expect_error(s->str, s->len);

    /* With one. */
    g_string_append(s, "\r\n");
    expect_error(s->str, s->len);

    /* The longest line accepted. */
    g_string_assign(s, "250 ");
    while (s->len < SMTP_LINE_MAX)
        g_string_append_c(s, 'y');
    g_string_append(s, "\r\n");
    p = smtp_reply_parser_new();
    smtp_reply_feed(p, s->str, s->len);
    assert_int_equal(smtp_reply_next(p, &r, NULL), SMTP_PARSE_REPLY);
    assert_int_equal(strlen(r.text), SMTP_LINE_MAX - 4);
    smtp_reply_clear(&r);
    smtp_reply_parser_free(p);

    /* Endless continuation lines. */
    g_string_truncate(s, 0);
    while (s->len <= SMTP_REPLY_MAX)
        g_string_append(s, "250-more and more\r\n");
    expect_error(s->str, s->len);
    g_string_free(s, TRUE);
}

/* Random bytes, and random bytes that look almost like replies: no crash. */
static void test_garbage(void **state)
{
    static const char alphabet[] = "0123456789 -\r\n.2545abc\0\377";
    GRand  *rand = g_rand_new_with_seed(42);
    char    buf[512];

    for (int round = 0; round < 2000; round++) {
        struct smtp_reply_parser *p = smtp_reply_parser_new();
        struct smtp_reply r;
        size_t  len = g_rand_int_range(rand, 0, sizeof(buf));

        for (size_t i = 0; i < len; i++)
            buf[i] = round % 2 ? (char) g_rand_int(rand)
                : alphabet[g_rand_int_range(rand, 0, sizeof(alphabet) - 1)];
        smtp_reply_feed(p, buf, len);
        while (smtp_reply_next(p, &r, NULL) == SMTP_PARSE_REPLY) {
            assert_true(r.code >= 200 && r.code <= 559);
            smtp_reply_clear(&r);
        }
        smtp_reply_parser_free(p);
    }
    g_rand_free(rand);
}

static void ehlo_of(const char *in, struct smtp_ehlo *e)
{
    struct smtp_reply r[1];

    assert_int_equal(parse_all(in, strlen(in), r, 1), 1);
    smtp_ehlo_parse(&r[0], e);
    clear_all(r, 1);
}

static void test_ehlo(void **state)
{
    struct smtp_ehlo e;

    ehlo_of("250-smtp-relay.gmail.com at your service, [192.0.2.1]\r\n"
        "250-SIZE 157286400\r\n250-8BITMIME\r\n250-STARTTLS\r\n"
        "250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-CHUNKING\r\n"
        "250-AUTH LOGIN PLAIN XOAUTH2\r\n250 SMTPUTF8\r\n", &e);
    assert_true(e.pipelining && e.starttls && e.enhancedstatuscodes);
    assert_true(e.eightbitmime && e.smtputf8 && e.auth_plain && e.auth_login && e.size);
    assert_int_equal(e.size_max, 157286400);

    /* The greeting line is not a keyword; old "AUTH=", lower case, junk. */
    ehlo_of("250-PIPELINING says the name\r\n250-auth=login\r\n250-size\r\n250-\r\n"
        "250- \r\n250 XFOO STARTTLS\r\n", &e);
    assert_false(e.pipelining || e.starttls || e.auth_plain || e.smtputf8);
    assert_true(e.auth_login && e.size);
    assert_int_equal(e.size_max, 0);

    ehlo_of("250-x\r\n250 SIZE 12abc\r\n", &e);
    assert_true(e.size);
    assert_int_equal(e.size_max, 0);

    /* HELO-style one-line reply: no extensions at all. */
    ehlo_of("250 mx.example\r\n", &e);
    assert_false(e.pipelining || e.size || e.starttls || e.auth_plain || e.auth_login);
}

static void test_url_good(void **state)
{
    static const struct {
        const char *in;
        enum relay_kind kind;
        const char *host;
        int     port;
        const char *path;
    }       cases[] = {
        {"smtp://smtp-relay.gmail.com:587", RELAY_SMTP, "smtp-relay.gmail.com", 587, NULL},
        {"smtp://relay.example", RELAY_SMTP, "relay.example", 587, NULL},
        {"SMTPS://relay.example/", RELAY_SMTPS, "relay.example", 465, NULL},
        {"smtps://127.0.0.1:2465", RELAY_SMTPS, "127.0.0.1", 2465, NULL},
        {"smtp://[::1]:25", RELAY_SMTP, "::1", 25, NULL},
        {"smtp://bücher.example", RELAY_SMTP, "xn--bcher-kva.example", 587, NULL},
        {"maildir:./var/outbox", RELAY_MAILDIR, NULL, 0, "./var/outbox"},
        {"maildir:/var/mail/a b", RELAY_MAILDIR, NULL, 0, "/var/mail/a b"},
    };

    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        struct relay_url u;
        GError *err = NULL;

        assert_true(relay_url_parse(cases[i].in, &u, &err));
        assert_null(err);
        assert_int_equal(u.kind, cases[i].kind);
        if (cases[i].host)
            assert_string_equal(u.host, cases[i].host);
        else
            assert_null(u.host);
        assert_int_equal(u.port, cases[i].port);
        if (cases[i].path)
            assert_string_equal(u.path, cases[i].path);
        else
            assert_null(u.path);
        relay_url_clear(&u);
    }
}

static void test_url_bad(void **state)
{
    static const char *const bad[] = {
        "", "relay.example:587", "http://relay.example", "lmtp://x", "smtp:relay",
        "smtp://", "smtp://:25", "smtp://relay:0", "smtp://relay:65536", "smtp://relay:2a",
        "smtp://user:pw@relay", "smtp://relay/path", "smtp://relay?x=1", "smtp://relay#f",
        "smtp://re lay", "smtp://re%2Flay", "smtp://[::1", "maildir:",
    };

    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        struct relay_url u;
        GError *err = NULL;

        assert_false(relay_url_parse(bad[i], &u, &err));
        assert_true(g_error_matches(err, RELAY_URL_ERROR, 1));
        assert_non_null(strstr(err->message, "relay url"));
        g_error_free(err);
        relay_url_clear(&u);
    }
}

int     main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single),
        cmocka_unit_test(test_code_only_and_bare_lf),
        cmocka_unit_test(test_multiline),
        cmocka_unit_test(test_enhanced_codes),
        cmocka_unit_test(test_split_everywhere),
        cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_too_long),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_ehlo),
        cmocka_unit_test(test_url_good),
        cmocka_unit_test(test_url_bad),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
