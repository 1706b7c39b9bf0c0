/*
 * Unit tests of the bounce modules: the VERP code (transform/bounce_code.h)
 * and the DSN/auto-reply parser (transform/bounce_parse.h) over the corpus
 * in tests/data/bounces (LF line ends there, read with CRLF as ingest
 * stores mail).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/approval_code.h"
#include "common/bounce_code.h"
#include "transform/bounce_parse.h"
#include "transform/mime.h"
#include "tests/unit/test_data.h"

static const char key[] = "0123456789abcdef-test-secret";
#define KEYLEN (sizeof key - 1)

/* ---- the code ------------------------------------------------------------- */

static void test_code_round_trip(void **state)
{
    char code[BOUNCE_CODE_LEN + 1];
    uint64_t msg = 0;
    uint32_t idx = 0;

    bounce_code_make(key, KEYLEN, 0x0193a1b2c3d40001ULL, 7, code);
    assert_int_equal(strlen(code), BOUNCE_CODE_LEN);
    assert_true(g_str_has_prefix(code, "0193a1b2c3d4000100000007"));
    assert_true(bounce_code_check(key, KEYLEN, code, strlen(code), &msg, &idx));
    assert_true(msg == 0x0193a1b2c3d40001ULL);
    assert_int_equal(idx, 7);

    /* An MTA that upper-cases the local part does not break it. */
    g_autofree char *up = g_ascii_strup(code, -1);
    assert_true(bounce_code_check(key, KEYLEN, up, strlen(up), &msg, &idx));
}

static void test_code_forged(void **state)
{
    char code[BOUNCE_CODE_LEN + 1];
    uint64_t msg = 0;
    uint32_t idx = 0;

    bounce_code_make(key, KEYLEN, 42, 0, code);
    /* Another delivery under the same MAC. */
    code[23] = '1';
    assert_false(bounce_code_check(key, KEYLEN, code, strlen(code), &msg, &idx));
    /* The right code under another key. */
    bounce_code_make(key, KEYLEN, 42, 0, code);
    assert_false(bounce_code_check("another-secret-key!", 19, code, strlen(code), &msg, &idx));
    /* One MAC digit changed; a short code; a non-hex digit. */
    code[BOUNCE_CODE_LEN - 1] = code[BOUNCE_CODE_LEN - 1] == '0' ? '1' : '0';
    assert_false(bounce_code_check(key, KEYLEN, code, strlen(code), &msg, &idx));
    assert_false(bounce_code_check(key, KEYLEN, code, 39, &msg, &idx));
    bounce_code_make(key, KEYLEN, 42, 0, code);
    code[3] = 'g';
    assert_false(bounce_code_check(key, KEYLEN, code, strlen(code), &msg, &idx));
    assert_false(bounce_code_check(key, KEYLEN, "", 0, &msg, &idx));
}

/*
 * Approval links (common/approval_code.h): the same code under a key
 * derived from the secret, so a VERP code under the secret is never an
 * approval code, and neither is a code of another message.
 */
static void test_approval_code(void **state)
{
    unsigned char akey[APPROVAL_KEY_LEN], other[APPROVAL_KEY_LEN];
    char code[APPROVAL_CODE_LEN + 1], verp[BOUNCE_CODE_LEN + 1];
    uint64_t msg = 0;

    approval_key_derive(key, KEYLEN, akey);
    approval_code_make(akey, 0x0193a1b2c3d40001ULL, code);
    assert_true(approval_code_check(akey, code, strlen(code), &msg));
    assert_true(msg == 0x0193a1b2c3d40001ULL);

    /* The VERP code of the same message and number, under the secret itself. */
    bounce_code_make(key, KEYLEN, 0x0193a1b2c3d40001ULL, (uint32_t)strtoul(code + 16, NULL, 16),
                     verp);
    assert_string_not_equal(verp, code);
    assert_false(approval_code_check(akey, verp, strlen(verp), &msg));
    /* The approval code is no VERP code either. */
    uint32_t idx = 0;
    assert_false(bounce_code_check(key, KEYLEN, code, strlen(code), &msg, &idx));
    /* Another secret derives another key. */
    approval_key_derive("another-secret-key!", 19, other);
    assert_false(approval_code_check(other, code, strlen(code), &msg));
    /* Another message named under the same MAC; a damaged MAC. */
    code[15] = code[15] == '1' ? '2' : '1';
    assert_false(approval_code_check(akey, code, strlen(code), &msg));
    approval_code_make(akey, 42, code);
    code[APPROVAL_CODE_LEN - 1] = code[APPROVAL_CODE_LEN - 1] == '0' ? '1' : '0';
    assert_false(approval_code_check(akey, code, strlen(code), &msg));
}

static void test_address(void **state)
{
    g_autofree char *a = bounce_address_make(key, KEYLEN, "bounces", "lists.example.com", 5, 2);
    const char *code;
    size_t n;
    uint64_t msg;
    uint32_t idx;

    assert_true(g_str_has_prefix(a, "bounces+"));
    assert_true(g_str_has_suffix(a, "@lists.example.com"));
    assert_true(bounce_address_split(a, "bounces", "LISTS.example.com", &code, &n));
    assert_true(bounce_code_check(key, KEYLEN, code, n, &msg, &idx));
    assert_true(msg == 5 && idx == 2);

    assert_false(bounce_address_split("bounces@lists.example.com", "bounces",
                                      "lists.example.com", &code, &n));
    assert_false(bounce_address_split("bounces+@lists.example.com", "bounces",
                                      "lists.example.com", &code, &n));
    assert_false(bounce_address_split("bouncesx+abc@lists.example.com", "bounces",
                                      "lists.example.com", &code, &n));
    assert_false(bounce_address_split("bounces+abc@other.example.com", "bounces",
                                      "lists.example.com", &code, &n));
    assert_false(bounce_address_split("no-at-sign", "bounces", "lists.example.com", &code, &n));
}

/* ---- the parser ----------------------------------------------------------- */

static void parse_file(const char *name, struct bounce_info *b)
{
    g_autoptr(GBytes) raw = test_data_crlf("bounces", name);
    gsize len;
    const char *data = g_bytes_get_data(raw, &len);

    bounce_parse_raw(data, len, b);
}

static void expect(const char *file, enum bounce_kind kind, const char *format, const char *rcpt,
                   const char *status)
{
    struct bounce_info b;

    parse_file(file, &b);
    if (b.kind != kind)
        fail_msg("%s: kind %s, expected %s", file, bounce_kind_name(b.kind),
                 bounce_kind_name(kind));
    if (format)
        assert_string_equal(b.format, format);
    if (rcpt)
        assert_string_equal(b.rcpt, rcpt);
    else
        assert_null(b.rcpt);
    if (status)
        assert_string_equal(b.status, status);
    else
        assert_null(b.status);
    bounce_info_clear(&b);
}

static void test_rfc3464(void **state)
{
    expect("rfc3464.eml", BOUNCE_HARD, "rfc3464", "nobody@example.org", "5.1.1");
    expect("rfc3464_delayed.eml", BOUNCE_SOFT, "rfc3464", "slow@example.net", "4.4.1");
}

static void test_text_forms(void **state)
{
    expect("postfix_text.eml", BOUNCE_HARD, "postfix", "gone@example.org", "5.1.1");
    expect("exim.eml", BOUNCE_HARD, "exim", "lost@example.net", "5.1.1");
    expect("gmail.eml", BOUNCE_HARD, "gmail", "missing.person@gmail.com", "5.1.1");
    expect("microsoft.eml", BOUNCE_HARD, "microsoft", "ghost@contoso.com", "5.1.10");
}

static void test_autoreply(void **state)
{
    expect("vacation.eml", BOUNCE_AUTOREPLY, "autoreply", NULL, NULL);
    expect("vacation_precedence.eml", BOUNCE_AUTOREPLY, "autoreply", NULL, NULL);
}

static void test_garbage(void **state)
{
    struct bounce_info b;
    static const char *const junk[] = {
        "", "\r\n", "not a message at all", "Subject: x\r\n\r\n",
        "Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\n"
        "Content-Type: message/delivery-status\r\n\r\nAction: failed\r\n--x--\r\n",
        NULL,
    };

    expect("garbage.eml", BOUNCE_UNKNOWN, NULL, NULL, NULL);
    for (int i = 0; junk[i]; i++) {
        bounce_parse_raw(junk[i], strlen(junk[i]), &b);
        assert_true(b.kind == BOUNCE_UNKNOWN || b.kind == BOUNCE_HARD);
        bounce_info_clear(&b);
    }
    /* A DSN that fails with no recipient given is still hard, unnamed. */
    bounce_parse_raw(junk[4], strlen(junk[4]), &b);
    assert_int_equal(b.kind, BOUNCE_HARD);
    assert_null(b.rcpt);
    bounce_info_clear(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_code_round_trip),
        cmocka_unit_test(test_code_forged),
        cmocka_unit_test(test_address),
        cmocka_unit_test(test_approval_code),
        cmocka_unit_test(test_rfc3464),
        cmocka_unit_test(test_text_forms),
        cmocka_unit_test(test_autoreply),
        cmocka_unit_test(test_garbage),
    };

    mime_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
