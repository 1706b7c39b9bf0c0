/*
 * test_lmtp_proto.c - the pure LMTP/SMTP parsers of ingest/lmtp_proto.c:
 * command lines (every verb, paths, ESMTP parameters, refusals), the
 * canonical recipient form, and the DATA reader (unstuffing, line ends,
 * limits, header section, any split of the input).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "ingest/lmtp_proto.h"

/* ---- helpers ------------------------------------------------------------ */

static void parse(const char *line, struct lmtp_cmd *cmd)
{
    lmtp_parse_command(line, strlen(line), cmd);
}

/* Parse line; expect verb (and, for LMTP_BAD, a reply starting with code). */
static void expect_verb(const char *line, enum lmtp_verb verb)
{
    struct lmtp_cmd cmd;

    parse(line, &cmd);
    if (cmd.verb != verb)
        print_error("line <%s>: verb %d, expected %d (reply %s)\n", line, cmd.verb, verb,
                    cmd.reply ? cmd.reply : "-");
    assert_int_equal(cmd.verb, verb);
    lmtp_cmd_clear(&cmd);
}

static void expect_refused(const char *line, const char *reply_prefix)
{
    struct lmtp_cmd cmd;

    parse(line, &cmd);
    if (cmd.verb != LMTP_BAD)
        print_error("line <%s>: accepted as verb %d\n", line, cmd.verb);
    assert_int_equal(cmd.verb, LMTP_BAD);
    assert_non_null(cmd.reply);
    if (strncmp(cmd.reply, reply_prefix, strlen(reply_prefix)) != 0)
        print_error("line <%s>: reply <%s>, expected <%s...>\n", line, cmd.reply, reply_prefix);
    assert_true(strncmp(cmd.reply, reply_prefix, strlen(reply_prefix)) == 0);
    lmtp_cmd_clear(&cmd);
}

/* Parse a MAIL/RCPT line that must be accepted; check the path. */
static void expect_path(const char *line, enum lmtp_verb verb, const char *addr)
{
    struct lmtp_cmd cmd;

    parse(line, &cmd);
    if (cmd.verb != verb)
        print_error("line <%s>: verb %d (reply %s)\n", line, cmd.verb, cmd.reply ? cmd.reply : "-");
    assert_int_equal(cmd.verb, verb);
    assert_non_null(cmd.addr);
    assert_string_equal(cmd.addr, addr);
    lmtp_cmd_clear(&cmd);
}

/* ---- commands ----------------------------------------------------------- */

static void test_every_verb(void **state)
{
    static const struct { const char *line; enum lmtp_verb verb; } cases[] = {
        { "LHLO client.example", LMTP_LHLO }, { "EHLO client.example", LMTP_EHLO },
        { "HELO client.example", LMTP_HELO }, { "MAIL FROM:<a@b.example>", LMTP_MAIL },
        { "RCPT TO:<a@b.example>", LMTP_RCPT }, { "DATA", LMTP_DATA },
        { "RSET", LMTP_RSET }, { "NOOP", LMTP_NOOP }, { "NOOP anything at all", LMTP_NOOP },
        { "QUIT", LMTP_QUIT }, { "VRFY someone", LMTP_VRFY }, { "HELP", LMTP_HELP },
        { "HELP DATA", LMTP_HELP }, { "STARTTLS", LMTP_STARTTLS },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_verb(cases[i].line, cases[i].verb);
}

static void test_verbs_case_insensitive(void **state)
{
    expect_verb("lhlo x", LMTP_LHLO);
    expect_verb("LhLo x", LMTP_LHLO);
    expect_verb("ehlo x", LMTP_EHLO);
    expect_verb("helo x", LMTP_HELO);
    expect_verb("data", LMTP_DATA);
    expect_verb("Rset", LMTP_RSET);
    expect_verb("quit", LMTP_QUIT);
    expect_verb("noop", LMTP_NOOP);
    expect_path("mail from:<a@b>", LMTP_MAIL, "a@b");
    expect_path("Mail From:<a@b>", LMTP_MAIL, "a@b");
    expect_path("rcpt to:<a@b>", LMTP_RCPT, "a@b");
    expect_path("RcPt tO:<a@b>", LMTP_RCPT, "a@b");
}

static void test_helo_argument(void **state)
{
    struct lmtp_cmd cmd;

    parse("LHLO mx.example.org", &cmd);
    assert_int_equal(cmd.verb, LMTP_LHLO);
    assert_string_equal(cmd.arg, "mx.example.org");
    lmtp_cmd_clear(&cmd);

    parse("EHLO   [192.0.2.1]  trailing words", &cmd);
    assert_int_equal(cmd.verb, LMTP_EHLO);
    assert_string_equal(cmd.arg, "[192.0.2.1]");
    lmtp_cmd_clear(&cmd);

    expect_refused("LHLO", "501 5.5.4");
    expect_refused("EHLO ", "501 5.5.4");
    expect_refused("HELO", "501 5.5.4");
}

static void test_unknown_and_malformed(void **state)
{
    expect_refused("BDAT 100 LAST", "500 5.5.2");
    expect_refused("XYZZY", "500 5.5.2");
    expect_refused("", "500 5.5.2");
    expect_refused(" LHLO x", "500 5.5.2");        /* no verb before the space */
    expect_refused("LHLOx", "500 5.5.2");
    expect_refused("DATA now", "501 5.5.4");        /* no parameters allowed */
    expect_refused("RSET x", "501 5.5.4");
    expect_refused("QUIT x", "501 5.5.4");
    expect_refused("MAIL", "501 5.5.4");
    expect_refused("MAIL TO:<a@b>", "501 5.5.4");
    expect_refused("MAIL FROM <a@b>", "501 5.5.4");
    expect_refused("RCPT FROM:<a@b>", "501 5.5.4");
    expect_refused("RCPT", "501 5.5.4");
}

static void test_mail_paths(void **state)
{
    expect_path("MAIL FROM:<user@example.org>", LMTP_MAIL, "user@example.org");
    expect_path("MAIL FROM:user@example.org", LMTP_MAIL, "user@example.org");       /* no brackets */
    expect_path("MAIL FROM: <user@example.org>", LMTP_MAIL, "user@example.org");    /* space after colon */
    expect_path("MAIL FROM:   user@example.org", LMTP_MAIL, "user@example.org");
    expect_path("MAIL  FROM:<user@example.org>", LMTP_MAIL, "user@example.org");    /* two spaces */
    expect_path("MAIL FROM:<>", LMTP_MAIL, "");                                     /* null sender */
    expect_path("MAIL FROM: <>", LMTP_MAIL, "");
    expect_path("MAIL FROM:<@relay1.example,@relay2.example:user@example.org>", LMTP_MAIL,
                "user@example.org");                                                /* source route */
    expect_path("RCPT TO:<@hop.example:restricted@abakus.no>", LMTP_RCPT, "restricted@abakus.no");
    expect_path("MAIL FROM:<\"john doe\"@example.org>", LMTP_MAIL, "\"john doe\"@example.org");
    expect_path("MAIL FROM:<\"a>b\"@example.org>", LMTP_MAIL, "\"a>b\"@example.org");
    expect_path("MAIL FROM:<\"odd > one <\"@example.org> SIZE=10", LMTP_MAIL,
                "\"odd > one <\"@example.org");
    expect_path("MAIL FROM:<\"q\\\"x\"@example.org>", LMTP_MAIL, "\"q\\\"x\"@example.org");
    expect_path("MAIL FROM:<üser@exämple.org> SMTPUTF8", LMTP_MAIL, "üser@exämple.org");
    expect_path("RCPT TO:<Restricted+Tag@Abakus.NO>", LMTP_RCPT, "Restricted+Tag@Abakus.NO");
    expect_path("RCPT TO:restricted@abakus.no", LMTP_RCPT, "restricted@abakus.no");
}

static void test_bad_paths(void **state)
{
    expect_refused("MAIL FROM:<a@b", "501 5.1.7");              /* no closing bracket */
    expect_refused("MAIL FROM:<a b@c>", "501 5.1.7");           /* space inside brackets */
    expect_refused("MAIL FROM:<\"open@example.org>", "501 5.1.7"); /* unterminated quote */
    expect_refused("MAIL FROM:<@relay.example>", "501 5.1.7");  /* route without ':' */
    expect_refused("MAIL FROM:<a\x01@b>", "501 5.1.7");         /* control character */
    expect_refused("MAIL FROM:<a@b>x", "501 5.1.7");            /* junk after the path */
    expect_refused("MAIL FROM:<a@b>SIZE=5", "501 5.1.7");
    expect_refused("MAIL FROM:", "501 5.1.7");                  /* empty, no brackets */
    expect_refused("MAIL FROM:<a@b<c>", "501 5.1.7");
    /* fuzz_lmtp_command/regress_cr_in_quoted_path: no CR into the spool or headers */
    expect_refused("MAIL FROM:<\"a\rb\"@c>", "501 5.1.7");
    expect_refused("RCPT TO:<\"a\\\x01\"@c>", "501 5.1.7");
}

/*
 * Issue 9 item 3: 8-bit bytes in a path are UTF-8 or refused (they were
 * stored, and tripped GVariant's UTF-8 check); DEL and ESC are refused
 * like the other controls; a UTF-8 path in MAIL needs SMTPUTF8.
 */
static void test_paths_utf8_and_controls(void **state)
{
    expect_refused("MAIL FROM:<a\xff@b> SMTPUTF8", "553 5.6.7");      /* not UTF-8 at all */
    expect_refused("MAIL FROM:<\xc3@b> SMTPUTF8", "553 5.6.7");       /* truncated sequence */
    expect_refused("MAIL FROM:<\xc0\xaf@b> SMTPUTF8", "553 5.6.7");   /* overlong '/' */
    expect_refused("MAIL FROM:<\xed\xa0\x80@b> SMTPUTF8", "553 5.6.7"); /* a surrogate */
    expect_refused("MAIL FROM:a\xe9@b", "553 5.6.7");                 /* Latin-1, no brackets */
    expect_refused("RCPT TO:<restricted\x80@abakus.no>", "553 5.6.7");
    expect_refused("RCPT TO:<\"x\xfe\"@abakus.no>", "553 5.6.7");     /* quoted, too */
    expect_refused("MAIL FROM:<üser@exämple.org>", "553 5.6.7");       /* UTF-8 undeclared */
    expect_refused("MAIL FROM:<a\x7f@b>", "501 5.1.7");               /* DEL */
    expect_refused("MAIL FROM:<\"a\x7f\"@b>", "501 5.1.7");
    expect_refused("MAIL FROM:<a\x1b[2J@b>", "501 5.1.7");            /* ESC */
    expect_refused("RCPT TO:<\"a\x1b\"@b>", "501 5.1.7");
    /* RCPT parses alone: the session checks it against MAIL's SMTPUTF8. */
    expect_path("RCPT TO:<rästricted@abakus.no>", LMTP_RCPT, "rästricted@abakus.no");
    expect_path("MAIL FROM:<\"ü ser\"@exämple.org> SMTPUTF8", LMTP_MAIL,
                "\"ü ser\"@exämple.org");
    assert_true(lmtp_addr_is_ascii("a@b.example"));
    assert_false(lmtp_addr_is_ascii("ü@b.example"));
}

/* The LHLO name goes to Received:, the spool and the log: no controls, UTF-8 only. */
static void test_helo_argument_bytes(void **state)
{
    expect_refused("LHLO bad\x1b[1Aname", "501 5.5.2");
    expect_refused("EHLO bad\x7fname", "501 5.5.2");
    expect_refused("HELO bad\rname", "501 5.5.2");
    expect_refused("LHLO bad\tname", "501 5.5.2");
    expect_refused("LHLO caf\xe9.example", "501 5.5.2");
    expect_verb("LHLO bücher.example", LMTP_LHLO);
    expect_verb("LHLO [192.0.2.1]", LMTP_LHLO);
}

static void test_rcpt_null_refused(void **state)
{
    expect_refused("RCPT TO:<>", "501 5.1.3");
    expect_refused("rcpt to: <>", "501 5.1.3");
}

static void test_mail_params(void **state)
{
    struct lmtp_cmd cmd;

    parse("MAIL FROM:<a@b> SIZE=12345", &cmd);
    assert_int_equal(cmd.verb, LMTP_MAIL);
    assert_int_equal(cmd.size, 12345);
    assert_false(cmd.body_8bit);
    assert_false(cmd.smtputf8);
    lmtp_cmd_clear(&cmd);

    parse("MAIL FROM:<a@b> size=7 body=8bitmime smtputf8", &cmd);
    assert_int_equal(cmd.verb, LMTP_MAIL);
    assert_int_equal(cmd.size, 7);
    assert_true(cmd.body_8bit);
    assert_true(cmd.smtputf8);
    lmtp_cmd_clear(&cmd);

    parse("MAIL FROM:<a@b>  BODY=7BIT   SIZE=0 ", &cmd);     /* extra spaces */
    assert_int_equal(cmd.verb, LMTP_MAIL);
    assert_false(cmd.body_8bit);
    assert_int_equal(cmd.size, 0);
    lmtp_cmd_clear(&cmd);

    parse("MAIL FROM:a@b SIZE=99", &cmd);                  /* params after a bare path */
    assert_int_equal(cmd.verb, LMTP_MAIL);
    assert_string_equal(cmd.addr, "a@b");
    assert_int_equal(cmd.size, 99);
    lmtp_cmd_clear(&cmd);

    parse("MAIL FROM:<> BODY=8BITMIME", &cmd);
    assert_int_equal(cmd.verb, LMTP_MAIL);
    assert_string_equal(cmd.addr, "");
    assert_true(cmd.body_8bit);
    lmtp_cmd_clear(&cmd);

    /* A SIZE beyond 64 bits saturates: the session then answers 552. */
    parse("MAIL FROM:<a@b> SIZE=99999999999999999999999999", &cmd);
    assert_int_equal(cmd.verb, LMTP_MAIL);
    assert_true(cmd.size == UINT64_MAX);
    lmtp_cmd_clear(&cmd);
}

static void test_bad_params(void **state)
{
    expect_refused("MAIL FROM:<a@b> FOO=bar", "555 5.5.4");
    expect_refused("MAIL FROM:<a@b> AUTH=<>", "555 5.5.4");
    expect_refused("MAIL FROM:<a@b> RET=HDRS", "555 5.5.4");   /* DSN is not offered */
    expect_refused("MAIL FROM:<a@b> SIZE=10 XYZ", "555 5.5.4");
    expect_refused("RCPT TO:<a@b> NOTIFY=NEVER", "555 5.5.4");
    expect_refused("RCPT TO:<a@b> SIZE=10", "555 5.5.4");      /* MAIL-only parameters */
    expect_refused("RCPT TO:<a@b> SMTPUTF8", "555 5.5.4");
    expect_refused("MAIL FROM:<a@b> SIZE=abc", "501 5.5.4");
    expect_refused("MAIL FROM:<a@b> SIZE=", "501 5.5.4");
    expect_refused("MAIL FROM:<a@b> SIZE=12x", "501 5.5.4");
    expect_refused("MAIL FROM:<a@b> SIZE=-1", "501 5.5.4");
    expect_refused("MAIL FROM:<a@b> SIZE=+1", "501 5.5.4");
    expect_refused("MAIL FROM:<a@b> BODY=BINARYMIME", "501 5.5.4");
    expect_refused("MAIL FROM:<a@b> BODY=", "501 5.5.4");
}

static void test_line_limits(void **state)
{
    char line[LMTP_LINE_MAX + 2];
    struct lmtp_cmd cmd;

    /* Exactly LMTP_LINE_MAX is still parsed; one more is refused. */
    memset(line, 'x', sizeof(line));
    memcpy(line, "NOOP ", 5);
    lmtp_parse_command(line, LMTP_LINE_MAX, &cmd);
    assert_int_equal(cmd.verb, LMTP_NOOP);
    lmtp_cmd_clear(&cmd);
    lmtp_parse_command(line, LMTP_LINE_MAX + 1, &cmd);
    assert_int_equal(cmd.verb, LMTP_BAD);
    assert_string_equal(cmd.reply, "500 5.5.2 Line too long");
    lmtp_cmd_clear(&cmd);

    /* The length given is what counts, not a terminating NUL. */
    lmtp_parse_command("QUITANDMORE", 4, &cmd);
    assert_int_equal(cmd.verb, LMTP_QUIT);
    lmtp_cmd_clear(&cmd);
}

static void test_nul_in_line(void **state)
{
    static const char data_nul[] = "DA\0TA";
    static const char mail_nul[] = "MAIL FROM:<a@b>\0 SIZE=5";
    static const char trailing[] = "NOOP\0";
    struct lmtp_cmd cmd;

    lmtp_parse_command(data_nul, sizeof(data_nul) - 1, &cmd);
    assert_int_equal(cmd.verb, LMTP_BAD);
    assert_true(strncmp(cmd.reply, "500 5.5.2", 9) == 0);
    lmtp_cmd_clear(&cmd);
    lmtp_parse_command(mail_nul, sizeof(mail_nul) - 1, &cmd);
    assert_int_equal(cmd.verb, LMTP_BAD);
    lmtp_cmd_clear(&cmd);
    lmtp_parse_command(trailing, sizeof(trailing) - 1, &cmd);
    assert_int_equal(cmd.verb, LMTP_BAD);
    lmtp_cmd_clear(&cmd);
}

static void test_cmd_clear_resets(void **state)
{
    struct lmtp_cmd cmd;

    parse("MAIL FROM:<a@b> SIZE=5", &cmd);
    lmtp_cmd_clear(&cmd);
    assert_null(cmd.addr);
    assert_null(cmd.arg);
    assert_int_equal(cmd.size, 0);
    lmtp_cmd_clear(&cmd);               /* twice is harmless */
    /* A refused command leaves nothing to free either. */
    parse("MAIL FROM:<a@b> FOO", &cmd);
    assert_int_equal(cmd.verb, LMTP_BAD);
    lmtp_cmd_clear(&cmd);
}

static void expect_canonical(const char *in, const char *out)
{
    char *c = lmtp_addr_canonical(in);
    assert_string_equal(c, out);
    g_free(c);
}

static void test_addr_canonical(void **state)
{
    expect_canonical("restricted@abakus.no", "restricted@abakus.no");
    expect_canonical("Restricted@Abakus.NO", "restricted@abakus.no");
    expect_canonical("restricted+tag@abakus.no", "restricted@abakus.no");
    expect_canonical("RESTRICTED+Some.Tag@ABAKUS.no", "restricted@abakus.no");
    expect_canonical("restricted+a+b@abakus.no", "restricted@abakus.no");
    expect_canonical("restricted+@abakus.no", "restricted@abakus.no");
    expect_canonical("+leading@abakus.no", "+leading@abakus.no");    /* not an extension */
    expect_canonical("plain", "plain");
    expect_canonical("Local+Ext", "local");
    expect_canonical("a@b+c.example", "a@b+c.example");              /* '+' in the domain stays */
    expect_canonical("odd@name@abakus.no", "odd@name@abakus.no");
    expect_canonical("", "");
}

/* ---- the DATA reader ---------------------------------------------------- */

struct fed {
    enum lmtp_data_status status;
    size_t used;                    /* bytes consumed in all */
    GByteArray *out;                /* stolen from the reader */
    uint64_t seen, header_bytes;
    gboolean too_big, header_too_big, in_header;
};

static void fed_clear(struct fed *f)
{
    if (f->out)
        g_byte_array_unref(f->out);
    memset(f, 0, sizeof(*f));
}

/*
 * Feed input in pieces cut at the given offsets (sorted, 0 < cut < len),
 * as reads would deliver them.  Stops feeding at LMTP_DATA_DONE.
 */
static void feed_split(const char *in, size_t len, const size_t *cuts, size_t ncuts,
                       uint64_t max_size, uint64_t max_header, struct fed *f)
{
    struct lmtp_data_reader r;
    size_t start = 0;

    memset(f, 0, sizeof(*f));
    lmtp_data_begin(&r, max_size, max_header);
    f->status = LMTP_DATA_MORE;
    for (size_t k = 0; k <= ncuts && f->status == LMTP_DATA_MORE; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        size_t used = (size_t)-1;

        f->status = lmtp_data_feed(&r, in + start, end - start, &used);
        assert_true(used <= end - start);
        if (f->status == LMTP_DATA_MORE)
            assert_int_equal(used, end - start);   /* MORE consumes everything */
        f->used += used;
        start = end;
    }
    f->seen = r.seen;
    f->header_bytes = r.header_bytes;
    f->too_big = r.too_big;
    f->header_too_big = r.header_too_big;
    f->in_header = r.in_header;
    f->out = r.out;
    r.out = NULL;
    lmtp_data_clear(&r);
}

static void feed_all(const char *in, size_t len, uint64_t max_size, uint64_t max_header,
                     struct fed *f)
{
    feed_split(in, len, NULL, 0, max_size, max_header, f);
}

static void feed_bytewise(const char *in, size_t len, uint64_t max_size, uint64_t max_header,
                          struct fed *f)
{
    size_t *cuts = g_new(size_t, len ? len : 1);

    for (size_t i = 1; i < len; i++)
        cuts[i - 1] = i;
    feed_split(in, len, cuts, len ? len - 1 : 0, max_size, max_header, f);
    g_free(cuts);
}

static void assert_out(const struct fed *f, const char *expect, size_t n)
{
    if (f->out->len != n || (n && memcmp(f->out->data, expect, n) != 0)) {
        g_autofree char *got_raw = g_strndup((const char *)f->out->data, f->out->len);
        g_autofree char *want_raw = g_strndup(expect, n);
        g_autofree char *got = g_strescape(got_raw, NULL);
        g_autofree char *want = g_strescape(want_raw, NULL);
        print_error("stored <%s>\nwanted <%s>\n", got, want);
    }
    assert_int_equal(f->out->len, n);
    if (n)                          /* an empty GByteArray has data == NULL */
        assert_memory_equal(f->out->data, expect, n);
}

#define BIG (64 * 1024 * 1024)

/* The whole input is consumed, DONE, and the stored message is expect. */
static void check_message(const char *in, size_t len, const char *expect, size_t expect_len)
{
    struct fed f;

    feed_all(in, len, BIG, BIG, &f);
    assert_int_equal(f.status, LMTP_DATA_DONE);
    assert_int_equal(f.used, len);
    assert_out(&f, expect, expect_len);
    assert_int_equal(f.seen, expect_len);
    assert_false(f.too_big);
    assert_false(f.header_too_big);
    fed_clear(&f);
}
#define CHECK(in, expect) check_message(in, sizeof(in) - 1, expect, sizeof(expect) - 1)

static void test_data_simple(void **state)
{
    CHECK("Subject: hi\r\n\r\nbody\r\n.\r\n", "Subject: hi\r\n\r\nbody\r\n");
    CHECK(".\r\n", "");                                     /* empty message */
    CHECK("\r\n.\r\n", "\r\n");
    CHECK("x\r\n.\r\n", "x\r\n");
}

static void test_data_unstuffing(void **state)
{
    CHECK("A: b\r\n\r\n..\r\n.\r\n", "A: b\r\n\r\n.\r\n");
    CHECK("A: b\r\n\r\n..leading dot\r\n...two\r\n.\r\n",
          "A: b\r\n\r\n.leading dot\r\n..two\r\n");
    CHECK("A: b\r\n\r\nmid.dle. dots.\r\n.\r\n", "A: b\r\n\r\nmid.dle. dots.\r\n");
    CHECK("A: b\r\n\r\n.\r.\r\n.\r\n", "A: b\r\n\r\n\r.\r\n");  /* ".CR" not followed by LF */
    CHECK("A: b\r\n\r\n..\nx\r\n.\r\n", "A: b\r\n\r\n.\r\nx\r\n");   /* stuffed line with bare LF */
    CHECK("A: b\r\n\r\n. \r\n.\r\n", "A: b\r\n\r\n \r\n");      /* a lone dot is dropped */
}

static void test_data_terminators(void **state)
{
    CHECK("A: b\r\n\r\nbody\r\n.\r\n", "A: b\r\n\r\nbody\r\n");
    /*
     * Only CRLF "." CRLF ends the message: with a bare LF on either side
     * the dot is a stuffed empty line, and what follows is content (SMTP
     * smuggling: the second "message" must not become one).
     */
    CHECK("A: b\n\nbody\n.\nMAIL FROM:<x@y>\r\n.\r\n",
          "A: b\r\n\r\nbody\r\n\r\nMAIL FROM:<x@y>\r\n");
    CHECK("A: b\r\n\r\nbody\r\n.\nRCPT\r\n.\r\n", "A: b\r\n\r\nbody\r\n\r\nRCPT\r\n");
    CHECK("A: b\n\nbody\n.\r\nDATA\r\n.\r\n", "A: b\r\n\r\nbody\r\n\r\nDATA\r\n");
    /* A dot that is not alone on its line does not end the message. */
    CHECK("A: b\r\n\r\nx.\r\n.x\r\n.\r\n", "A: b\r\n\r\nx.\r\nx\r\n");
    /* "\r.\r\n" in mid-line (after a bare CR) is not a terminator. */
    CHECK("A: b\r\n\r\nx\r.\r\n.\r\n", "A: b\r\n\r\nx\r.\r\n");
}

static void test_data_line_ends(void **state)
{
    CHECK("A: b\n\nline1\nline2\r\n.\r\n", "A: b\r\n\r\nline1\r\nline2\r\n");
    CHECK("A: b\r\n\r\na\rb\r\n.\r\n", "A: b\r\n\r\na\rb\r\n");        /* bare CR kept */
    CHECK("A: b\r\n\r\na\r\r\n.\r\n", "A: b\r\n\r\na\r\r\n");
    CHECK("A: b\r\n\r\n\r\r\n.\r\n", "A: b\r\n\r\n\r\r\n");
    CHECK("A: b\r\n\r\nend\r\r.\r\n.\r\n", "A: b\r\n\r\nend\r\r.\r\n");
    CHECK("A: b\r\n\r\n\n\n\r\n.\r\n", "A: b\r\n\r\n\r\n\r\n\r\n");
}

static void test_data_8bit_nul_long(void **state)
{
    static const char in[] = "Subject: \xc3\xa6\xc3\xb8\r\n\r\n\xff\xfe\x00\x01\x80 bin\x00\r\n.\r\n";
    static const char out[] = "Subject: \xc3\xa6\xc3\xb8\r\n\r\n\xff\xfe\x00\x01\x80 bin\x00\r\n";
    check_message(in, sizeof(in) - 1, out, sizeof(out) - 1);

    /* A 5000-octet line (over 998) is stored whole. */
    GString *msg = g_string_new("A: b\r\n\r\n");
    for (int i = 0; i < 5000; i++)
        g_string_append_c(msg, (char)('a' + i % 26));
    g_string_append(msg, "\r\n");
    GString *want = g_string_new_len(msg->str, (gssize)msg->len);
    g_string_append(msg, ".\r\n");
    check_message(msg->str, msg->len, want->str, want->len);
    g_string_free(msg, TRUE);
    g_string_free(want, TRUE);
}

static void test_data_bytes_after_terminator(void **state)
{
    static const char in[] = "A: b\r\n\r\nbody\r\n.\r\nMAIL FROM:<x@y>\r\n";
    static const char in_lf[] = "A: b\n\nbody\n.\nQUIT\n";
    struct fed f;

    feed_all(in, sizeof(in) - 1, BIG, BIG, &f);
    assert_int_equal(f.status, LMTP_DATA_DONE);
    assert_int_equal(f.used, strlen("A: b\r\n\r\nbody\r\n.\r\n"));
    assert_out(&f, "A: b\r\n\r\nbody\r\n", 14);
    fed_clear(&f);

    /* LF "." LF ends nothing: the reader wants more, having used it all. */
    feed_all(in_lf, sizeof(in_lf) - 1, BIG, BIG, &f);
    assert_int_equal(f.status, LMTP_DATA_MORE);
    assert_int_equal(f.used, sizeof(in_lf) - 1);
    fed_clear(&f);

    /* Terminator split across feeds: the second feed's used counts from its start. */
    size_t cut[] = { 16 };          /* "...body\r\n.\r" | "\nMAIL..." */
    feed_split(in, sizeof(in) - 1, cut, 1, BIG, BIG, &f);
    assert_int_equal(f.status, LMTP_DATA_DONE);
    assert_int_equal(f.used, strlen("A: b\r\n\r\nbody\r\n.\r\n"));
    fed_clear(&f);

    /* Two messages back to back: the second is untouched by the first reader. */
    static const char two[] = "A: 1\r\n\r\none\r\n.\r\nA: 2\r\n\r\ntwo\r\n.\r\n";
    feed_all(two, sizeof(two) - 1, BIG, BIG, &f);
    assert_int_equal(f.status, LMTP_DATA_DONE);
    size_t first = f.used;
    assert_int_equal(first, strlen("A: 1\r\n\r\none\r\n.\r\n"));
    fed_clear(&f);
    feed_all(two + first, sizeof(two) - 1 - first, BIG, BIG, &f);
    assert_int_equal(f.status, LMTP_DATA_DONE);
    assert_out(&f, "A: 2\r\n\r\ntwo\r\n", 13);
    fed_clear(&f);
}

static void test_data_incomplete(void **state)
{
    static const char in[] = "A: b\r\n\r\nbody\r\n.";
    struct fed f;

    feed_all(in, sizeof(in) - 1, BIG, BIG, &f);
    assert_int_equal(f.status, LMTP_DATA_MORE);
    assert_int_equal(f.used, sizeof(in) - 1);
    fed_clear(&f);

    struct lmtp_data_reader r;
    size_t used = 99;
    lmtp_data_begin(&r, BIG, BIG);
    assert_int_equal(lmtp_data_feed(&r, "", 0, &used), LMTP_DATA_MORE);
    assert_int_equal(used, 0);
    lmtp_data_clear(&r);
    lmtp_data_clear(&r);            /* twice is harmless */
}

static void test_data_size_limit(void **state)
{
    /* "A: b\r\n\r\n" (8) + "0123456789\r\n" (12) = 20 bytes stored. */
    static const char in[] = "A: b\r\n\r\n0123456789\r\n.\r\nNEXT";
    const size_t msg_in = sizeof(in) - 1 - 4;
    struct fed f;

    feed_all(in, sizeof(in) - 1, 20, BIG, &f);     /* exactly at the limit */
    assert_int_equal(f.status, LMTP_DATA_DONE);
    assert_false(f.too_big);
    assert_int_equal(f.seen, 20);
    assert_int_equal(f.out->len, 20);
    fed_clear(&f);

    feed_all(in, sizeof(in) - 1, 19, BIG, &f);     /* one over */
    assert_int_equal(f.status, LMTP_DATA_DONE);
    assert_true(f.too_big);
    assert_false(f.header_too_big);
    assert_int_equal(f.seen, 20);                  /* keeps counting */
    assert_int_equal(f.used, msg_in);              /* and still finds the end */
    assert_true(f.out->len <= 19);                 /* nothing stored past the limit */
    fed_clear(&f);

    /* A big message: counting goes on to the end, storage stops. */
    GString *msg = g_string_new("A: b\r\n\r\n");
    while (msg->len < 100000)
        g_string_append(msg, "0123456789012345678901234567890123456789\r\n");
    uint64_t total = msg->len;
    g_string_append(msg, ".\r\n");
    feed_all(msg->str, msg->len, 1000, BIG, &f);
    assert_int_equal(f.status, LMTP_DATA_DONE);
    assert_true(f.too_big);
    assert_int_equal(f.seen, total);
    assert_true(f.out->len <= 1000);
    fed_clear(&f);
    feed_bytewise(msg->str, msg->len, 1000, BIG, &f);
    assert_int_equal(f.status, LMTP_DATA_DONE);
    assert_true(f.too_big);
    assert_int_equal(f.seen, total);
    assert_true(f.out->len <= 1000);
    fed_clear(&f);
    g_string_free(msg, TRUE);

    /* Bare LF lines count as the CRLF they are stored as. */
    static const char lf[] = "A: b\n\n0123456789\n";
    feed_all(lf, sizeof(lf) - 1, 19, BIG, &f);
    assert_true(f.too_big);
    assert_int_equal(f.seen, 20);
    fed_clear(&f);
}

static void test_data_header_limit(void **state)
{
    /* Header section: "Subject: 0123456789\r\n" (21) + "X: y\r\n" (6) = 27. */
    static const char in[] = "Subject: 0123456789\r\nX: y\r\n\r\nbody that is long enough\r\n.\r\n";
    struct fed f;

    feed_all(in, sizeof(in) - 1, BIG, 27, &f);
    assert_int_equal(f.status, LMTP_DATA_DONE);
    assert_false(f.header_too_big);
    assert_int_equal(f.header_bytes, 27);          /* the empty line is not counted */
    assert_false(f.in_header);
    fed_clear(&f);

    feed_all(in, sizeof(in) - 1, BIG, 26, &f);
    assert_int_equal(f.status, LMTP_DATA_DONE);
    assert_true(f.header_too_big);
    assert_false(f.too_big);
    assert_int_equal(f.used, sizeof(in) - 1);
    fed_clear(&f);

    /* The body is not counted as header, however long. */
    GString *msg = g_string_new("Subject: x\r\n\r\n");
    while (msg->len < 50000)
        g_string_append(msg, "Looks-Like: a header but is body\r\n");
    g_string_append(msg, ".\r\n");
    feed_all(msg->str, msg->len, BIG, 100, &f);
    assert_false(f.header_too_big);
    assert_int_equal(f.header_bytes, 12);
    fed_clear(&f);
    g_string_free(msg, TRUE);

    /* Folded (continuation) lines belong to the header section. */
    static const char folded[] = "Subject: a\r\n b\r\n\tc\r\n\r\nbody\r\n.\r\n";
    feed_all(folded, sizeof(folded) - 1, BIG, BIG, &f);
    assert_int_equal(f.header_bytes, strlen("Subject: a\r\n b\r\n\tc\r\n"));
    fed_clear(&f);

    /* Bare LF header lines count as CRLF. */
    static const char lf[] = "Subject: a\nX: y\n\nbody\n.\n";
    feed_all(lf, sizeof(lf) - 1, BIG, BIG, &f);
    assert_int_equal(f.header_bytes, strlen("Subject: a\r\nX: y\r\n"));
    fed_clear(&f);
}

static void test_data_header_end(void **state)
{
    struct fed f;

    /* An empty line ends the header section. */
    static const char empty[] = "A: b\r\n\r\nC: d\r\n.\r\n";
    feed_all(empty, sizeof(empty) - 1, BIG, BIG, &f);
    assert_int_equal(f.header_bytes, 6);
    fed_clear(&f);

    /* A line that is not a field (no colon) ends it: the rest is body. */
    static const char nocolon[] = "A: b\r\nthis is text\r\nC: d\r\n.\r\n";
    feed_all(nocolon, sizeof(nocolon) - 1, BIG, BIG, &f);
    assert_false(f.in_header);
    assert_true(f.header_bytes < strlen("A: b\r\nthis is text\r\nC: d\r\n"));
    fed_clear(&f);

    static const char word[] = "A: b\r\nnocolonatall\r\nC: d\r\n.\r\n";
    feed_all(word, sizeof(word) - 1, BIG, BIG, &f);
    assert_false(f.in_header);
    assert_true(f.header_bytes < strlen("A: b\r\nnocolonatall\r\nC: d\r\n"));
    fed_clear(&f);

    /* A message with no header at all: the body starts at once. */
    static const char body_only[] = "just text, no header\r\n.\r\n";
    feed_all(body_only, sizeof(body_only) - 1, BIG, BIG, &f);
    assert_false(f.in_header);
    fed_clear(&f);

    /* A message that is only a header section stays in it. */
    static const char only_header[] = "A: b\r\nC: d\r\n.\r\n";
    feed_all(only_header, sizeof(only_header) - 1, BIG, BIG, &f);
    assert_true(f.in_header);
    assert_int_equal(f.header_bytes, 12);
    fed_clear(&f);

    /* A stuffed dot at the start of a header-looking line is still handled. */
    static const char stuffed[] = "..A: b\r\n\r\nx\r\n.\r\n";
    feed_all(stuffed, sizeof(stuffed) - 1, BIG, BIG, &f);
    assert_out(&f, ".A: b\r\n\r\nx\r\n", 12);
    fed_clear(&f);
}

/*
 * The same result for every split: one feed, byte at a time, and every
 * cut into two or three pieces.
 */
static void same_result(const struct fed *a, const struct fed *b)
{
    assert_int_equal(a->status, b->status);
    assert_int_equal(a->used, b->used);
    assert_int_equal(a->seen, b->seen);
    assert_int_equal(a->header_bytes, b->header_bytes);
    assert_int_equal(a->too_big, b->too_big);
    assert_int_equal(a->header_too_big, b->header_too_big);
    assert_int_equal(a->in_header, b->in_header);
    if (!a->too_big && !a->header_too_big) {
        assert_int_equal(a->out->len, b->out->len);
        if (a->out->len)
            assert_memory_equal(a->out->data, b->out->data, a->out->len);
    }
}

static void check_splits(const char *in, size_t len, uint64_t max_size, uint64_t max_header)
{
    struct fed whole, other;

    feed_all(in, len, max_size, max_header, &whole);
    feed_bytewise(in, len, max_size, max_header, &other);
    same_result(&whole, &other);
    fed_clear(&other);
    for (size_t i = 1; i < len; i++) {
        size_t cut[1] = { i };
        feed_split(in, len, cut, 1, max_size, max_header, &other);
        same_result(&whole, &other);
        fed_clear(&other);
    }
    if (len < 200) {
        for (size_t i = 1; i < len; i++)
            for (size_t j = i + 1; j < len; j++) {
                size_t cut[2] = { i, j };
                feed_split(in, len, cut, 2, max_size, max_header, &other);
                same_result(&whole, &other);
                fed_clear(&other);
            }
    }
    fed_clear(&whole);
}

static const char *const split_messages[] = {
    "Subject: hi\r\nFrom: a@b\r\n\r\nbody\r\n..stuffed\r\n.\r\nMAIL FROM:<x@y>\r\n",
    "Subject: lf\nX: y\n\nbare\nlines\n..x\n.\nQUIT\n",
    "A: b\r\n\r\nbare\rcr\r\r\n.\r.\r\n\r\n.\r\n",
    "A: b\r\n\r\n\xff\x00\x80\r\n.\r\n",
    "A: b\r\nnot a header line\r\nC: d\r\n\r\n.\r\nX",
    "A: b\r\nnoheader\r\nC: d\r\n.\r\n",
    ".\r\n",
    "..\r\n.\n",
    "Subject: x\r\n folded\r\n\tmore\r\n\r\nb\r\n.\r\nRSET\r\n",
};

static void test_data_every_split(void **state)
{
    for (size_t m = 0; m < G_N_ELEMENTS(split_messages); m++) {
        const char *in = split_messages[m];
        size_t len = strlen(in);

        if (m == 3)                 /* holds a NUL: measure by hand */
            len = strlen("A: b\r\n\r\n\xff") + 1 + strlen("\x80\r\n.\r\n");
        check_splits(in, len, BIG, BIG);
        /* and with limits that bite somewhere in the middle */
        check_splits(in, len, 12, BIG);
        check_splits(in, len, BIG, 8);
        check_splits(in, len, BIG, 20);
    }
}

/*
 * The line scan finds a line's LF with memchr and takes every CR before
 * it as content but the last: bare CRs in header values, in field names
 * (which are still read byte by byte), runs of them before the CRLF, and
 * lines longer than a word, whichever way the input is cut.
 */
static void test_data_line_scan(void **state)
{
    static const char *const in[] = {
        "A: x\ry\r\nB\r: z\r\n\r\nbody\r\r\r\n\r\n.\r\n",
        "Subject: 0123456789abcdef0123456789abcdef\r\n\r\n"
        "0123456789abcdef0123456789abcdef\r0123456789\n.\r\n",
        "A: b\r\n\r\nline\r\r\r\r.\r\n",
    };

    CHECK("A: x\ry\r\nB\r: z\r\n\r\nbody\r\r\r\n\r\n.\r\n",
          "A: x\ry\r\nB\r: z\r\n\r\nbody\r\r\r\n\r\n");
    CHECK("A: b\r\n\r\nline\r\r\r\r.\r\n.\r\n", "A: b\r\n\r\nline\r\r\r\r.\r\n");
    for (size_t m = 0; m < G_N_ELEMENTS(in); m++) {
        check_splits(in[m], strlen(in[m]), BIG, BIG);
        check_splits(in[m], strlen(in[m]), BIG, 9);
        check_splits(in[m], strlen(in[m]), 30, BIG);
    }

    /* A bare CR in a field name does not end it; so the header section is its two fields, 13 bytes. */
    struct fed f;
    static const char name_cr[] = "B\r: z\r\nC: d\r\n\r\nx\r\n.\r\n";
    feed_all(name_cr, sizeof(name_cr) - 1, BIG, BIG, &f);
    assert_false(f.in_header);
    assert_int_equal(f.header_bytes, 13);
    fed_clear(&f);
}

static void test_data_split_header_limit_edge(void **state)
{
    /*
     * A non-header line in the header section: whether the reader sees
     * it in one piece or byte by byte must not change whether the header
     * limit is exceeded.
     */
    static const char in[] = "Subject: x\r\nabcdefghij klmnop\r\n\r\nbody\r\n.\r\n";
    for (uint64_t lim = 10; lim < 40; lim++)
        check_splits(in, sizeof(in) - 1, BIG, lim);
}

static void test_data_big_random_splits(void **state)
{
    /* A 300 KB message cut at pseudo-random points, compared with one feed. */
    GString *msg = g_string_new("Subject: big\r\nX-Long: ");
    GRand *rnd = g_rand_new_with_seed(42);

    for (int i = 0; i < 3000; i++)
        g_string_append_c(msg, 'h');
    g_string_append(msg, "\r\n\r\n");
    while (msg->len < 300000) {
        int kind = g_rand_int_range(rnd, 0, 6);
        if (kind == 0)
            g_string_append(msg, "..dot\r\n");
        else if (kind == 1)
            g_string_append(msg, "bare lf\n");
        else if (kind == 2)
            g_string_append(msg, "cr\rinside\r\n");
        else
            g_string_append(msg, "an ordinary line of text for the body\r\n");
    }
    g_string_append(msg, ".\r\nTRAILING");

    struct fed whole, other;
    feed_all(msg->str, msg->len, BIG, BIG, &whole);
    assert_int_equal(whole.status, LMTP_DATA_DONE);
    assert_int_equal(whole.used, msg->len - strlen("TRAILING"));
    for (int round = 0; round < 20; round++) {
        size_t cuts[64];
        size_t n = 0, pos = 0;
        while (n < G_N_ELEMENTS(cuts)) {
            pos += (size_t)g_rand_int_range(rnd, 1, 16000);
            if (pos >= msg->len)
                break;
            cuts[n++] = pos;
        }
        feed_split(msg->str, msg->len, cuts, n, BIG, BIG, &other);
        same_result(&whole, &other);
        fed_clear(&other);
    }
    feed_bytewise(msg->str, msg->len, BIG, BIG, &other);
    same_result(&whole, &other);
    fed_clear(&other);
    fed_clear(&whole);
    g_rand_free(rnd);
    g_string_free(msg, TRUE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_verb),
        cmocka_unit_test(test_verbs_case_insensitive),
        cmocka_unit_test(test_helo_argument),
        cmocka_unit_test(test_unknown_and_malformed),
        cmocka_unit_test(test_mail_paths),
        cmocka_unit_test(test_bad_paths),
        cmocka_unit_test(test_paths_utf8_and_controls),
        cmocka_unit_test(test_helo_argument_bytes),
        cmocka_unit_test(test_rcpt_null_refused),
        cmocka_unit_test(test_mail_params),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_line_limits),
        cmocka_unit_test(test_nul_in_line),
        cmocka_unit_test(test_cmd_clear_resets),
        cmocka_unit_test(test_addr_canonical),
        cmocka_unit_test(test_data_simple),
        cmocka_unit_test(test_data_unstuffing),
        cmocka_unit_test(test_data_terminators),
        cmocka_unit_test(test_data_line_ends),
        cmocka_unit_test(test_data_line_scan),
        cmocka_unit_test(test_data_8bit_nul_long),
        cmocka_unit_test(test_data_bytes_after_terminator),
        cmocka_unit_test(test_data_incomplete),
        cmocka_unit_test(test_data_size_limit),
        cmocka_unit_test(test_data_header_limit),
        cmocka_unit_test(test_data_header_end),
        cmocka_unit_test(test_data_every_split),
        cmocka_unit_test(test_data_split_header_limit_edge),
        cmocka_unit_test(test_data_big_random_splits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
