/*
 * test_claim.c - pull mode's pure pieces (transform_claim.c): the body of
 * a claim, what each answer decides, the backoff.  The integration test
 * (test_claim.py) runs the whole worker against a real HTTP server.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <json-glib/json-glib.h>
#include <string.h>

#include "common/signature.h"
#include "transform/transform.h"

static void parse(long status, const char *body, struct claim_answer *a)
{
    transform_claim_parse(status, body, strlen(body), a);
}

static void test_granted(void **state)
{
    struct claim_answer a = { 0 };

    (void)state;
    parse(200, "{\"recipients\": [\"a@x.no\", \"B@y.no\"], \"hide_sender\": true, "
               "\"list\": \"styret\"}", &a);
    assert_int_equal(a.kind, CLAIM_GRANTED);
    assert_int_equal(a.recipients->len, 2);
    assert_string_equal(a.recipients->pdata[1], "B@y.no");
    assert_true(a.hide_sender);
    assert_string_equal(a.list, "styret");
    /* hide_sender and list may be left out (or null): the sender shown, the message's list. */
    parse(200, "{\"recipients\": [\"a@x.no\"], \"list\": null}", &a);
    assert_int_equal(a.kind, CLAIM_GRANTED);
    assert_false(a.hide_sender);
    assert_null(a.list);
    transform_claim_answer_clear(&a);
}

static void test_refused(void **state)
{
    static const struct { long status; const char *reason; } cases[] = {
        { 404, "TOKEN_INVALID" }, { 409, "TOKEN_USED" },
        { 403, "SENDER_MISMATCH" }, { 410, "TOKEN_EXPIRED" },
    };
    struct claim_answer a = { 0 };

    (void)state;
    for (unsigned i = 0; i < G_N_ELEMENTS(cases); i++) {
        parse(cases[i].status, "whatever the body", &a);
        assert_int_equal(a.kind, CLAIM_REFUSED);
        assert_string_equal(a.reason, cases[i].reason);
    }
    transform_claim_answer_clear(&a);
}

/* Nothing that is not a decision rejects a message: it waits. */
static void test_retry(void **state)
{
    static const struct { long status; const char *body, *error; } cases[] = {
        { 500, "oops\nstack", "status 500: oops stack" },
        { 503, "", "status 503" },
        { 401, "bad signature", "status 401: bad signature" },
        { 200, "not json", "malformed answer" },
        { 200, "[1, 2]", "malformed answer: not a JSON object" },
        { 200, "42", "malformed answer: expected a JSON object or array" },
        { 200, "{\"recipients\": []} {\"recipients\": []}",
          "malformed answer: content after the JSON value" },
        { 200, "{}", "\"recipients\" is not an array" },
        { 200, "{\"recipients\": [1]}", "a recipient is not a string" },
        { 200, "{\"recipients\": [], \"hide_sender\": \"yes\"}", "\"hide_sender\" is not" },
        { 200, "{\"recipients\": [], \"list\": 3}", "\"list\" is not a string" },
    };
    struct claim_answer a = { 0 };

    (void)state;
    for (unsigned i = 0; i < G_N_ELEMENTS(cases); i++) {
        parse(cases[i].status, cases[i].body, &a);
        assert_int_equal(a.kind, CLAIM_RETRY);
        if (!strstr(a.error, cases[i].error))
            fail_msg("%ld %s: \"%s\" lacks \"%s\"", cases[i].status, cases[i].body, a.error,
                     cases[i].error);
        assert_null(a.recipients);
    }
    transform_claim_answer_clear(&a);
}

/* Only the hash of the token is sent, in hex; a missing Message-ID is null. */
static void test_body(void **state)
{
    unsigned char hash[TOKEN_HASH_LEN];
    struct claim_request r = {
        .hash = hash, .sender = "a@x.no", .queue_id = "00000000000000AB", .subject = "Hei",
    };
    g_autoptr(JsonParser) p = json_parser_new();
    g_autofree char *body = NULL;
    JsonObject *o;

    (void)state;
    spool_token_hash("LEGOTOKEN-secret-secret-secret", hash);
    body = transform_claim_body(&r);
    assert_null(strstr(body, "secret"));
    assert_true(json_parser_load_from_data(p, body, -1, NULL));
    o = json_node_get_object(json_parser_get_root(p));
    assert_int_equal(strlen(json_object_get_string_member(o, "token_sha256")), 64);
    assert_string_equal(json_object_get_string_member(o, "sender"), "a@x.no");
    assert_string_equal(json_object_get_string_member(o, "queue_id"), "00000000000000AB");
    assert_string_equal(json_object_get_string_member(o, "subject"), "Hei");
    assert_true(json_node_is_null(json_object_get_member(o, "message_id")));
}

/* The signature the platform checks: RFC 4231 test case 2. */
static void test_signature(void **state)
{
    char sig[SIGNATURE_LEN + 1];

    (void)state;
    signature_sign("Jefe", 4, "what do ya want for nothing?", 28, sig);
    assert_string_equal(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec"
                             "3843");
}

/* About 1, 2, 4, 8 s after arrival, never under a second nor over the cap. */
static void test_backoff(void **state)
{
    (void)state;
    assert_int_equal(transform_claim_backoff(0, 300000), 1000);
    assert_int_equal(transform_claim_backoff(-5000, 300000), 1000);
    assert_int_equal(transform_claim_backoff(4000, 300000), 4000);
    assert_int_equal(transform_claim_backoff(3600000, 300000), 300000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_granted),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_retry),
        cmocka_unit_test(test_body),
        cmocka_unit_test(test_signature),
        cmocka_unit_test(test_backoff),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
