/*
 * fuzz_lmtp_command - ingest/lmtp_proto.h lmtp_parse_command() and
 * lmtp_addr_canonical().
 *
 * The input is a session: each LF-terminated line (a CR before the LF
 * dropped) is one command, copied into a buffer of its exact length with no
 * NUL after it, as the session code hands it over.
 */
#include <stdint.h>
#include <string.h>

#include <glib.h>

#include "ingest/lmtp_proto.h"
#include "fuzz_util.h"

static void check_addr(const char *addr)
{
    char *canon = lmtp_addr_canonical(addr);
    char *again = lmtp_addr_canonical(canon);

    FUZZ_CHECK(strlen(canon) <= strlen(addr), "canonical form longer: <%s> -> <%s>", addr, canon);
    FUZZ_CHECK(strcmp(canon, again) == 0, "not idempotent: <%s> -> <%s> -> <%s>", addr, canon,
               again);
    for (const char *p = canon; *p; p++)
        FUZZ_CHECK(!g_ascii_isupper(*p), "upper case left in <%s>", canon);
    g_free(again);
    g_free(canon);
}

static void one_line(const uint8_t *data, size_t len, gboolean session)
{
    char *line = fuzz_dup(data, len);
    struct lmtp_cmd cmd;

    lmtp_parse_command(line, len, &cmd);
    FUZZ_CHECK(cmd.verb >= LMTP_LHLO && cmd.verb <= LMTP_BAD, "verb %d", (int)cmd.verb);
    if (cmd.verb == LMTP_BAD) {
        FUZZ_CHECK(cmd.reply != NULL, "refused without a reply");
        FUZZ_CHECK(strlen(cmd.reply) > 4 && cmd.reply[0] == '5' && g_ascii_isdigit(cmd.reply[1])
                       && g_ascii_isdigit(cmd.reply[2]) && cmd.reply[3] == ' '
                       && !strpbrk(cmd.reply, "\r\n"),
                   "bad reply <%s>", cmd.reply);
    } else {
        FUZZ_CHECK(cmd.reply == NULL, "accepted with a reply <%s>", cmd.reply);
    }
    if (cmd.verb == LMTP_LHLO || cmd.verb == LMTP_EHLO || cmd.verb == LMTP_HELO) {
        FUZZ_CHECK(cmd.arg && *cmd.arg && !strchr(cmd.arg, ' '), "bad hello name");
        /* The name goes to Received:, the spool (UTF-8 only) and the log. */
        FUZZ_CHECK(g_utf8_validate(cmd.arg, -1, NULL), "hello name not UTF-8");
        for (const char *p = cmd.arg; *p; p++)
            FUZZ_CHECK((unsigned char)*p >= 32 && *p != 127, "control character in hello name");
    }
    if (cmd.verb == LMTP_MAIL || cmd.verb == LMTP_RCPT) {
        FUZZ_CHECK(cmd.addr != NULL, "MAIL/RCPT accepted without a path");
        FUZZ_CHECK(cmd.verb != LMTP_RCPT || *cmd.addr, "RCPT accepted with a null path");
        /*
         * RFC 5321 allows no control character in a path, quoted or not;
         * the path goes into the spool, headers and the relay's MAIL FROM.
         * (A whole-input "line" may hold LFs the session never passes on.)
         */
        for (const char *p = cmd.addr; session && *p; p++)
            FUZZ_CHECK((unsigned char)*p >= 32 && *p != 127, "control character in path <%s>",
                       cmd.addr);
        /* Stored as a GVariant string: UTF-8, and only with SMTPUTF8 in MAIL. */
        FUZZ_CHECK(g_utf8_validate(cmd.addr, -1, NULL), "path not UTF-8 <%s>", cmd.addr);
        FUZZ_CHECK(cmd.verb != LMTP_MAIL || cmd.smtputf8 || lmtp_addr_is_ascii(cmd.addr),
                   "UTF-8 path without SMTPUTF8 <%s>", cmd.addr);
    }
    if (cmd.addr)
        check_addr(cmd.addr);
    lmtp_cmd_clear(&cmd);
    FUZZ_CHECK(cmd.arg == NULL && cmd.addr == NULL, "lmtp_cmd_clear left pointers");
    free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t start = 0;

    while (start <= size) {
        const uint8_t *nl = memchr(data + start, '\n', size - start);
        size_t end = nl ? (size_t)(nl - data) : size;
        size_t len = end - start;

        if (len > 0 && data[start + len - 1] == '\r' && nl)
            len--;
        if (len > 0 || nl)
            one_line(data + start, len, TRUE);
        if (!nl)
            break;
        start = end + 1;
    }
    /* And the whole input as one line: NULs, CRs and LFs inside a command. */
    one_line(data, size, FALSE);
    return 0;
}
