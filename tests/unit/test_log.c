/*
 * test_log.c - common/log.c: what log_escape() keeps and what it turns
 * into \xNN, and the stderr line format ("Mon DD HH:MM:SS host prog[pid]: ").
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>
#include <unistd.h>

#include "common/log.h"

static void expect_escape(const char *in, const char *out)
{
    g_autofree char *got = log_escape(in);

    if (strcmp(got, out) != 0)
        print_error("log_escape(<%s>) = <%s>, expected <%s>\n", in, got, out);
    assert_string_equal(got, out);
}

static void test_escape_keeps_text(void **state)
{
    expect_escape("", "");
    expect_escape("connect from 127.0.0.1", "connect from 127.0.0.1");
    expect_escape("from=<üser@exämple.org>", "from=<üser@exämple.org>");    /* UTF-8 stays */
    expect_escape("back\\slash ~", "back\\slash ~");
}

static void test_escape_controls_and_bad_utf8(void **state)
{
    expect_escape("a\rb\nc", "a\\x0db\\x0ac");
    expect_escape("\x1b[2J", "\\x1b[2J");                 /* ESC: no terminal escapes */
    expect_escape("del\x7f", "del\\x7f");
    expect_escape("tab\there", "tab\\x09here");
    expect_escape("caf\xe9!", "caf\\xe9!");                /* Latin-1 byte */
    expect_escape("cut \xc3", "cut \\xc3");               /* truncated sequence */
    expect_escape("\xc0\xaf", "\\xc0\\xaf");              /* overlong */
    expect_escape("csi \xc2\x9b" "31m", "csi \\xc2\\x9b31m"); /* C1 control, as UTF-8 */
    expect_escape("nbsp \xc2\xa0.", "nbsp \xc2\xa0.");     /* the first non-control */
    expect_escape("ls \xe2\x80\xa8.", "ls \\xe2\\x80\\xa8.");   /* U+2028 breaks lines */
}

/* One stderr line: the syslog-like stamp, then "prog[pid]: severity: text". */
static void test_stderr_line_format(void **state)
{
    int fds[2], saved = dup(STDERR_FILENO);
    char buf[512] = "";
    ssize_t n;
    g_autofree char *tail = NULL;
    g_autoptr(GRegex) re = g_regex_new("^[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} "
                                       "\\S+ test_log\\[[0-9]+\\]: warning: x\\\\x1b\\[1Ay\n$",
                                       0, 0, NULL);

    assert_int_equal(pipe(fds), 0);
    dup2(fds[1], STDERR_FILENO);
    log_init("test_log", TRUE);
    msg_warn("x%sy", "\x1b[1A");
    dup2(saved, STDERR_FILENO);
    close(fds[1]);
    n = read(fds[0], buf, sizeof(buf) - 1);
    close(fds[0]);
    assert_true(n > 0);
    if (!g_regex_match(re, buf, 0, NULL))
        print_error("line <%s>\n", buf);
    assert_true(g_regex_match(re, buf, 0, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape_keeps_text),
        cmocka_unit_test(test_escape_controls_and_bad_utf8),
        cmocka_unit_test(test_stderr_line_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
