/*
 * test_log.c - common/log.c: what log_escape() keeps and what it turns
 * into \xNN, and the stderr line format ("Mon DD HH:MM:SS host prog[pid]: "):
 * long lines whole in one write, the pid right after a fork, batches in
 * few writes of whole lines.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
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

/*
 * What one message logged with log_init(prog, TRUE) wrote to stderr (the
 * pipe holds all of it by the time the write end is closed).
 */
static char *stderr_of(const char *prog, void (*log)(const char *text), const char *text)
{
    int fds[2], saved = dup(STDERR_FILENO);
    char *buf = g_malloc0(65536);
    ssize_t n;

    assert_int_equal(pipe(fds), 0);
    dup2(fds[1], STDERR_FILENO);
    log_init(prog, TRUE);
    log(text);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fds[1]);
    n = read(fds[0], buf, 65535);
    close(fds[0]);
    assert_true(n > 0);
    return buf;
}

static void warn_text(const char *text)
{
    msg_warn("x%sy", text);
}

static void info_text(const char *text)
{
    msg_info("%s", text);
}

/* One stderr line: the syslog-like stamp, then "prog[pid]: severity: text". */
static void test_stderr_line_format(void **state)
{
    g_autofree char *buf = stderr_of("test_log", warn_text, "\x1b[1A");
    g_autoptr(GRegex) re = g_regex_new("^[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} "
                                       "\\S+ test_log\\[[0-9]+\\]: warning: x\\\\x1b\\[1Ay\n$",
                                       0, 0, NULL);

    if (!g_regex_match(re, buf, 0, NULL))
        print_error("line <%s>\n", buf);
    assert_true(g_regex_match(re, buf, 0, NULL));
}

/*
 * Lines around and past the size formatted on the stack (2 KiB), clean
 * and needing escapes: each comes whole, its text unchanged or escaped,
 * in one write, with one newline.
 */
static void test_long_lines_whole(void **state)
{
    for (gsize i = 2 * 1400; i <= 2 * 2200; i++) {
        gsize len = i / 2;
        g_autofree char *text = g_strnfill(len, 'a');
        g_autofree char *buf = NULL;
        g_autofree char *want = NULL;
        const char *got;

        if (i % 2)
            text[len / 2] = '\n';
        want = log_escape(text);
        buf = stderr_of("test_log", info_text, text);
        got = strstr(buf, "]: ");
        assert_non_null(got);
        got += 3;
        assert_int_equal(strlen(got), strlen(want) + 1);
        assert_memory_equal(got, want, strlen(want));
        assert_int_equal(got[strlen(want)], '\n');
    }
}

/* The pid a line names is the process's own, in a forked child too. */
static void test_pid_after_fork(void **state)
{
    int fds[2];
    char buf[512] = "";
    g_autofree char *parent = stderr_of("test_log", info_text, "parent");
    g_autofree char *want_parent = g_strdup_printf("test_log[%d]: parent\n", (int)getpid());
    g_autofree char *want_child = NULL;
    pid_t child;
    int status;
    ssize_t n;

    assert_non_null(strstr(parent, want_parent));
    assert_int_equal(pipe(fds), 0);
    child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        dup2(fds[1], STDERR_FILENO);
        msg_info("child");
        _exit(0);
    }
    close(fds[1]);
    assert_int_equal(waitpid(child, &status, 0), child);
    n = read(fds[0], buf, sizeof(buf) - 1);
    close(fds[0]);
    assert_true(n > 0);
    want_child = g_strdup_printf("test_log[%d]: child\n", (int)child);
    if (!strstr(buf, want_child))
        print_error("line <%s>, expected <%s>\n", buf, want_child);
    assert_non_null(strstr(buf, want_child));
}

/*
 * Lines logged in a batch wait for its end, then go in writes of whole
 * lines of at most PIPE_BUF bytes each (atomic on a shared pipe), in
 * order; a line longer than that goes alone.  A seqpacket socket as
 * stderr keeps each write a record of its own, so their bounds show.
 */
static void test_batch_whole_lines_in_few_writes(void **state)
{
    int fds[2], saved = dup(STDERR_FILENO);
    g_autofree char *record = g_malloc(65536);
    g_autofree char *longline = g_strnfill(PIPE_BUF + 100, 'L');
    g_autoptr(GString) all = g_string_new(NULL);
    unsigned records = 0;
    ssize_t n;

    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, fds), 0);
    dup2(fds[1], STDERR_FILENO);
    log_init("test_log", TRUE);
    log_batch_begin();
    msg_info("line 0");
    assert_int_equal(recv(fds[0], record, 65536, MSG_DONTWAIT), -1);
    for (int i = 1; i < 100; i++)
        msg_info("line %d %s", i, i == 50 ? longline : "of some ordinary length, like a delivery's");
    log_batch_end();
    msg_info("after");
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fds[1]);
    while ((n = recv(fds[0], record, 65536, 0)) > 0) {
        assert_int_equal(record[n - 1], '\n');
        assert_true((size_t)n <= PIPE_BUF || memmem(record, n, longline, PIPE_BUF + 100));
        g_string_append_len(all, record, n);
        records++;
    }
    close(fds[0]);
    for (int i = 0; i < 100; i++) {
        g_autofree char *want = g_strdup_printf("]: line %d%s", i, i ? " " : "\n");
        const char *at = strstr(all->str, want);

        assert_non_null(at);
        assert_true(i == 0 || at > strstr(all->str, "]: line 0\n"));
    }
    assert_non_null(strstr(all->str, "]: after\n"));
    /* 100 lines of ~100 bytes, one of 4 KiB: a handful of writes, not 101. */
    assert_true(records >= 4 && records <= 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape_keeps_text),
        cmocka_unit_test(test_escape_controls_and_bad_utf8),
        cmocka_unit_test(test_stderr_line_format),
        cmocka_unit_test(test_long_lines_whole),
        cmocka_unit_test(test_pid_after_fork),
        cmocka_unit_test(test_batch_whole_lines_in_few_writes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
