/*
 * Unit tests of the one-click unsubscribe code (common/unsub_code.h): it
 * reads back what it names in any case, refuses a forged, damaged or
 * truncated code and another key, is never a VERP code's MAC, and the
 * header lines of a copy have the forms RFC 2369 and RFC 8058 ask for.
 * The mailto form's short code: 24 digits for any list and address, its
 * shape told without the key, verified for the sender or a From: address
 * only; full codes in old mailto forms still read.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "common/bounce_code.h"
#include "common/config.h"
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

/* The default list is named by nothing in the full code, and read back by its name. */
static void test_default_list_is_short(void **state)
{
    g_autofree char *dflt = unsub_code_make(key, KEYLEN, "default", "ada@example.org");
    g_autofree char *other = unsub_code_make(key, KEYLEN, "defaulx", "ada@example.org");
    g_autofree char *list = NULL, *addr = NULL;

    /* Version, NUL, 15 bytes of address, 10 of MAC: 27 bytes, 44 base32 digits. */
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
    g_autofree char *short_code = unsub_mailto_code_make(key, KEYLEN, "board", "ada@example.org");
    g_autofree char *both = unsub_header_make(key, KEYLEN, "board", "ada@example.org",
                                              "https://lists.example.org/", "unsub@example.org");
    g_autofree char *want = g_strdup_printf(
        "List-Unsubscribe: <https://lists.example.org/u/%s>,\r\n <mailto:unsub+%s@example.org>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", code, short_code);
    g_autofree char *mailto = unsub_header_make(key, KEYLEN, "board", "ada@example.org", "",
                                                "unsub@example.org");
    g_autofree char *url = unsub_header_make(key, KEYLEN, "board", "ada@example.org",
                                             "https://lists.example.org", NULL);
    g_autofree char *none = unsub_header_make(key, KEYLEN, "board", "ada@example.org", NULL, "");
    g_autofree char *want_url = g_strdup_printf(
        "List-Unsubscribe: <https://lists.example.org/u/%s>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", code);
    g_autofree char *want_mailto = g_strdup_printf(
        "List-Unsubscribe: <mailto:unsub+%s@example.org>\r\n", short_code);

    assert_string_equal(both, want);
    /* No https link: no one-click claim either. */
    assert_string_equal(mailto, want_mailto);
    assert_string_equal(url, want_url);
    assert_string_equal(none, "");
}

/* The configured lists the short code's tests resolve against. */
static GPtrArray *lists_of(const char *const *names)
{
    GPtrArray *lists = g_ptr_array_new_with_free_func(g_free);

    for (; *names; names++) {
        struct postern_list *l = g_new0(struct postern_list, 1);

        l->name = (char *)*names;
        g_ptr_array_add(lists, l);
    }
    return lists;
}

static const char *const list_names[] = { "default", "board", NULL };

/* Short codes: the same length for a long list name and a 60-byte address. */
static void test_short_code_size(void **state)
{
    static const char long_addr[] =
        "firstname.middlename.lastname.department@mail.example.org.uk";
    g_autofree char *lname = g_strnfill(200, 'x');
    g_autofree char *a = unsub_mailto_code_make(key, KEYLEN, "default", "a@b.c");
    g_autofree char *b = unsub_mailto_code_make(key, KEYLEN, lname, long_addr);

    assert_int_equal(strlen(long_addr), 60);
    assert_int_equal(strlen(a), UNSUB_MAILTO_CODE_LEN);
    assert_int_equal(strlen(b), UNSUB_MAILTO_CODE_LEN);
    assert_int_equal(strspn(b, "abcdefghijklmnopqrstuvwxyz234567"), strlen(b));
    /* "unsubscribe+" and the code: well inside RFC 5321's 64 octets. */
    assert_true(strlen("unsubscribe+") + strlen(b) <= 64);
}

/* Well formed or why not, with no key: what ingest answers at RCPT. */
static void test_mailto_parse(void **state)
{
    g_autoptr(GPtrArray) lists = lists_of(list_names);
    g_autoptr(GPtrArray) other = lists_of((const char *const[]){ "default", NULL });
    g_autofree char *board = unsub_mailto_code_make(key, KEYLEN, "board", "ada@example.org");
    g_autofree char *dflt = unsub_mailto_code_make(key, KEYLEN, "default", "ada@example.org");
    g_autofree char *full = unsub_code_make(key, KEYLEN, "board", "ada@example.org");
    g_autofree char *up = g_ascii_strup(board, -1);
    g_autofree char *v3 = g_strdup(board);
    g_autofree char *huge = g_strnfill(UNSUB_CODE_MAX + 8, 'a');
    const char *list = NULL;

    assert_null(unsub_mailto_parse(board, strlen(board), lists, &list));
    assert_string_equal(list, "board");
    assert_null(unsub_mailto_parse(up, strlen(up), lists, &list));
    assert_string_equal(list, "board");
    assert_null(unsub_mailto_parse(dflt, strlen(dflt), lists, &list));
    assert_string_equal(list, "default");
    /* An old full code is read too. */
    assert_null(unsub_mailto_parse(full, strlen(full), lists, &list));
    assert_string_equal(list, "board");

    assert_string_equal(unsub_mailto_parse(board, strlen(board), other, &list), "unknown list");
    assert_string_equal(unsub_mailto_parse(full, strlen(full), other, &list), "unknown list");
    assert_string_equal(unsub_mailto_parse("ab!d", 4, lists, &list), "bad base32");
    /* 23 digits leave 3 bits that are not a whole byte: not an encoding we make. */
    assert_string_equal(unsub_mailto_parse(board, 23, lists, &list), "bad base32");
    /* 16 digits are 10 whole bytes: too short for either form. */
    assert_string_equal(unsub_mailto_parse(board, 16, lists, &list), "bad length");
    assert_string_equal(unsub_mailto_parse(full, 16, lists, &list), "bad length");
    assert_string_equal(unsub_mailto_parse("", 0, lists, &list), "bad length");
    assert_string_equal(unsub_mailto_parse(huge, strlen(huge), lists, &list), "bad length");
    /* The first digit holds the version's top 5 bits: "b" is version 8. */
    v3[0] = 'b';
    assert_string_equal(unsub_mailto_parse(v3, strlen(v3), lists, &list), "unknown version");
}

/* The MAC verifies for the address the copy was sent to, in any case, and no other. */
static void test_mailto_address(void **state)
{
    g_autofree char *code = unsub_mailto_code_make(key, KEYLEN, "board", "Ada@Example.org");
    g_autofree char *full = unsub_code_make(key, KEYLEN, "board", "ada@example.org");
    g_autofree char *bad = g_strdup(code);
    g_autofree char *other_key = unsub_mailto_code_make("another-key-of-some-length", 26,
                                                        "board", "ada@example.org");
    const char *sender_first[] = { "ADA@example.ORG", "bob@example.net", NULL };
    const char *from_second[] = { "", "mallory@example.net", "ada@example.org", NULL };
    const char *neither[] = { "bob@example.net", "mallory@example.net", NULL };
    const char *none[] = { NULL };
    g_autofree char *a = unsub_mailto_address(key, KEYLEN, code, strlen(code), "board",
                                              sender_first);
    g_autofree char *b = unsub_mailto_address(key, KEYLEN, code, strlen(code), "board",
                                              from_second);
    g_autofree char *f = unsub_mailto_address(key, KEYLEN, full, strlen(full), "board", none);

    assert_string_equal(a, "ada@example.org");
    assert_string_equal(b, "ada@example.org");
    /* A full code carries its address: no candidate needed. */
    assert_string_equal(f, "ada@example.org");
    assert_null(unsub_mailto_address(key, KEYLEN, code, strlen(code), "board", neither));
    assert_null(unsub_mailto_address(key, KEYLEN, code, strlen(code), "board", none));
    /* The MAC covers the list: the same code read as another list's fails. */
    assert_null(unsub_mailto_address(key, KEYLEN, code, strlen(code), "default", sender_first));
    assert_null(unsub_mailto_address(key, KEYLEN, full, strlen(full), "default", none));
    assert_null(unsub_mailto_address(key, KEYLEN, other_key, strlen(other_key), "board",
                                     sender_first));
    for (size_t i = 0; i < strlen(code); i++) {
        bad[i] = code[i] == 'a' ? 'b' : 'a';
        assert_null(unsub_mailto_address(key, KEYLEN, bad, strlen(bad), "board", sender_first));
        bad[i] = code[i];
    }
}

/* Neither form is valid as the other, nor at /u/ (an HTTP POST brings no address). */
static void test_forms_apart(void **state)
{
    g_autofree char *code = unsub_mailto_code_make(key, KEYLEN, "default", "bob@example.net");
    char *list = NULL, *addr = NULL;

    assert_false(check(code, &list, &addr));
    assert_null(list);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_default_list_is_short),
        cmocka_unit_test(test_damaged_or_forged),
        cmocka_unit_test(test_not_a_verp_code),
        cmocka_unit_test(test_header),
        cmocka_unit_test(test_short_code_size),
        cmocka_unit_test(test_mailto_parse),
        cmocka_unit_test(test_mailto_address),
        cmocka_unit_test(test_forms_apart),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
