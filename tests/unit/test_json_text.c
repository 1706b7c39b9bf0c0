/*
 * test_json_text.c - json_text_check(): what may reach json-glib.
 */
#include "common/json_text.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

/* The verdict on text at max_depth 32; when refused, why must name it. */
static void assert_verdict(const char *text, size_t len, const char *why)
{
    GError *err = NULL;
    gboolean ok = json_text_check(text, len, 32, &err);

    if (!why) {
        if (!ok)
            fail_msg("\"%s\" refused: %s", text, err->message);
        return;
    }
    if (ok)
        fail_msg("\"%s\" let through, expected \"%s\"", text, why);
    if (!strstr(err->message, why))
        fail_msg("\"%s\": \"%s\", expected \"%s\"", text, err->message, why);
    g_error_free(err);
}

#define ACCEPTED(t) assert_verdict(t, strlen(t), NULL)
#define REFUSED(t, why) assert_verdict(t, strlen(t), why)

static void test_one_object_or_array(void **state)
{
    ACCEPTED("{}");
    ACCEPTED(" \r\n[1, {\"a\": [2, \"]}\"]}]\r\n ");
    ACCEPTED("{\"q\": \"a \\\" ] } still in the string\"}");
    REFUSED("", "expected a JSON object or array");
    REFUSED(" \t", "expected a JSON object or array");
    REFUSED("42", "expected a JSON object or array");
    REFUSED("\"x\"{\"from\": \"a\"}", "expected a JSON object or array");
    REFUSED("var x = {};", "expected a JSON object or array");
}

/* What json-glib 1.6.6 leaked: the value after the first. */
static void test_nothing_after_the_value(void **state)
{
    REFUSED("[]{\"from\": \"a\"}", "content after the JSON value (byte 2)");
    REFUSED("{\"a\": 1} {\"b\": 2}", "content after the JSON value (byte 9)");
    REFUSED("[]]", "content after");
    REFUSED("{}x", "content after");
    REFUSED("[\"]\"] 1", "content after");
}

/* Left for json-glib to name: unclosed, or malformed inside. */
static void test_malformed_inside_passes(void **state)
{
    ACCEPTED("[1, 2");
    ACCEPTED("{\"a\": }");
    ACCEPTED("[\"unclosed");
    /* A backslash as the last byte: nothing read past the end (ASan). */
    g_autofree char *cut = g_memdup2("[\"\\", 3);
    assert_verdict(cut, 3, NULL);
}

static void test_depth(void **state)
{
    char deep[2 * 33 + 1];

    memset(deep, '[', 32);
    memset(deep + 32, ']', 32);
    deep[64] = '\0';
    ACCEPTED(deep);
    memset(deep, '[', 33);
    memset(deep + 33, ']', 33);
    deep[66] = '\0';
    REFUSED(deep, "nested deeper than 32 levels (byte 32)");
    /* Brackets inside strings do not count. */
    ACCEPTED("[\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"]");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_object_or_array),
        cmocka_unit_test(test_nothing_after_the_value),
        cmocka_unit_test(test_malformed_inside_passes),
        cmocka_unit_test(test_depth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
