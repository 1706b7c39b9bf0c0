/*
 * test_token.c - regression tests for transform/token.c: the reads of a
 * part's decoded content that return nothing before its end.
 *
 * A fuzz_mime run in CI stopped on an empty read: the search compared the
 * first bytes of a GByteArray that had none (a NULL data pointer handed
 * to memcmp). The fix must also not give up on a part at the first empty
 * read, since base64 whitespace can make one before the token's bytes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "transform/mime.h"

#define PREFIX "LEGOTOKEN"

static GMimeMessage *parse(const char *raw, size_t len)
{
    GError *err = NULL;
    GMimeMessage *msg = mime_parse(raw, len, &err);

    if (msg == NULL)
        fail_msg("parse: %s", err->message);
    return msg;
}

/* Empty parts before the token part: every read of theirs is empty. */
static void test_empty_parts_before_token(void **state)
{
    static const char raw[] =
        "From: a@b.no\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/plain\r\n\r\n"
        "--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        "--b\r\nContent-Type: text/plain\r\n\r\nLEGOTOKENabc123\r\n"
        "--b--\r\n";
    GMimeMessage *msg = parse(raw, sizeof(raw) - 1);
    char   *token = mime_token_extract(msg, PREFIX);

    assert_non_null(token);
    assert_string_equal(token, "abc123");
    g_free(token);
    g_object_unref(msg);
}

/* A lone empty part (the whole body): no token, no crash. */
static void test_empty_single_part(void **state)
{
    static const char raw[] = "From: a@b.no\r\nContent-Type: text/plain\r\n\r\n";
    GMimeMessage *msg = parse(raw, sizeof(raw) - 1);

    assert_null(mime_token_extract(msg, PREFIX));
    g_object_unref(msg);
}

/*
 * More than one read buffer of base64 whitespace before the encoded
 * token: the first decoded reads are empty, and the token is still found.
 */
static void test_base64_whitespace_before_token(void **state)
{
    GString *raw = g_string_new("From: a@b.no\r\nMIME-Version: 1.0\r\n"
                    "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                    "--b\r\nContent-Type: text/plain\r\n\r\nHello\r\n"
                    "--b\r\nContent-Type: text/plain\r\n"
                    "Content-Transfer-Encoding: base64\r\n\r\n");
    GMimeMessage *msg;
    char   *token;

    for (int i = 0; i < 600; i++)
        g_string_append(raw, "        \r\n");        /* 6000 octets of nothing */
    g_string_append(raw, "TEVHT1RPS0VOd2hpdGVzcGFjZQ==\r\n--b--\r\n");  /* LEGOTOKENwhitespace */
    msg = parse(raw->str, raw->len);
    token = mime_token_extract(msg, PREFIX);
    assert_non_null(token);
    assert_string_equal(token, "whitespace");
    g_free(token);
    g_object_unref(msg);
    g_string_free(raw, TRUE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_parts_before_token),
        cmocka_unit_test(test_empty_single_part),
        cmocka_unit_test(test_base64_whitespace_before_token),
    };

    mime_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
