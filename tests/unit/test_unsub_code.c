/*
 * Unit tests of the one-click unsubscribe code (common/unsub_code.h): it
 * reads back what it names in any case, refuses a forged, damaged or
 * truncated code and another key, is never a VERP code's MAC, and the
 * header lines of a copy have the forms RFC 2369 and RFC 8058 ask for.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "common/bounce_code.h"
#include "common/unsub_code.h"

static const char key[] = "0123456789abcdef-test-secret";
#define KEYLEN (sizeof key - 1)

static gboolean check(const char *code, char **list, char **addr)
{
    return unsub_code_check(key, KEYLEN, code, strlen(code), list, addr);
}

static void test_round_trip(void **state)
{
    g_autofree char *code = unsub_code_make(key, KEYLEN, "board", "Ada.Lovelace@Example.org");
    g_autofree char *up = g_ascii_strup(code, -1);
    char *list = NULL, *addr = NULL;

    /* URL- and local-part-safe: lower-case letters and digits only. */
    assert_int_equal(strspn(code, "abcdefghijklmnopqrstuvwxyz234567"), strlen(code));
    assert_true(check(code, &list, &addr));
    assert_string_equal(list, "board");
    assert_string_equal(addr, "ada.lovelace@example.org");
    g_free(list);
    g_free(addr);
    /* An MTA that upper-cases the local part does not break it. */
    assert_true(check(up, &list, &addr));
    g_free(list);
    g_free(addr);
}

/* The default list is named by nothing in the code, and read back by its name. */
static void test_default_list_is_short(void **state)
{
    g_autofree char *dflt = unsub_code_make(key, KEYLEN, "default", "ada@example.org");
    g_autofree char *other = unsub_code_make(key, KEYLEN, "defaulx", "ada@example.org");
    g_autofree char *list = NULL, *addr = NULL;

    /* Version, NUL, 15 bytes of address, 10 of MAC: 27 bytes, 44 base32 digits;
     * with "unsubscribe+" 56, inside RFC 5321's 64. */
    assert_int_equal(strlen(dflt), 44);
    assert_true(strlen(other) > strlen(dflt));
    assert_true(check(dflt, &list, &addr));
    assert_string_equal(list, "default");
    assert_string_equal(addr, "ada@example.org");
}

/* Each byte changed, the code cut short or made longer: never valid. */
static void test_damaged_or_forged(void **state)
{
    g_autofree char *code = unsub_code_make(key, KEYLEN, "default", "bob@example.net");
    g_autofree char *other = unsub_code_make("another-key-of-some-length", 26, "default",
                                             "bob@example.net");
    char *list = NULL, *addr = NULL;
    size_t n = strlen(code);

    for (size_t i = 0; i < n; i++) {
        g_autofree char *bad = g_strdup(code);

        bad[i] = bad[i] == 'a' ? 'b' : 'a';
        assert_false(check(bad, &list, &addr));
    }
    for (size_t len = 0; len < n; len++)
        assert_false(unsub_code_check(key, KEYLEN, code, len, &list, &addr));
    g_autofree char *longer = g_strconcat(code, "a", NULL);
    assert_false(check(longer, &list, &addr));
    assert_false(check(other, &list, &addr));
    assert_false(check("not base32!", &list, &addr));
    assert_false(check("", &list, &addr));
    assert_null(list);
    assert_null(addr);
}

/* The same secret makes VERP codes: neither kind is ever valid as the other. */
static void test_not_a_verp_code(void **state)
{
    char verp[BOUNCE_CODE_LEN + 1];
    char *list = NULL, *addr = NULL;
    uint64_t msg;
    uint32_t idx;
    g_autofree char *code = unsub_code_make(key, KEYLEN, "default", "bob@example.net");

    bounce_code_make(key, KEYLEN, 0x0193a1b2c3d40001ULL, 7, verp);
    assert_false(check(verp, &list, &addr));
    assert_false(bounce_code_check(key, KEYLEN, code, strlen(code), &msg, &idx));
}

static void test_header(void **state)
{
    g_autofree char *code = unsub_code_make(key, KEYLEN, "board", "ada@example.org");
    g_autofree char *both = unsub_header_make(key, KEYLEN, "board", "ada@example.org",
                                              "https://lists.example.org/", "unsub@example.org");
    g_autofree char *want = g_strdup_printf(
        "List-Unsubscribe: <https://lists.example.org/u/%s>,\r\n <mailto:unsub+%s@example.org>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", code, code);
    g_autofree char *mailto = unsub_header_make(key, KEYLEN, "board", "ada@example.org", "",
                                                "unsub@example.org");
    g_autofree char *url = unsub_header_make(key, KEYLEN, "board", "ada@example.org",
                                             "https://lists.example.org", NULL);
    g_autofree char *none = unsub_header_make(key, KEYLEN, "board", "ada@example.org", NULL, "");
    g_autofree char *want_url = g_strdup_printf(
        "List-Unsubscribe: <https://lists.example.org/u/%s>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", code);
    g_autofree char *want_mailto = g_strdup_printf(
        "List-Unsubscribe: <mailto:unsub+%s@example.org>\r\n", code);

    assert_string_equal(both, want);
    /* No https link: no one-click claim either. */
    assert_string_equal(mailto, want_mailto);
    assert_string_equal(url, want_url);
    assert_string_equal(none, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_default_list_is_short),
        cmocka_unit_test(test_damaged_or_forged),
        cmocka_unit_test(test_not_a_verp_code),
        cmocka_unit_test(test_header),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
