/*
 * Retry policy: SPEC §5 classification (Google's relay quota replies among
 * them), backoff growth, cap, jitter and lifetime, relay pauses.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "dispatch/retry_policy.h"

#define MIN_US  ((gint64) 60 * G_USEC_PER_SEC)

static enum retry_verdict classify(int code, const char *status, const char *text,
                   enum smtp_error error)
{
    struct smtp_rcpt_result r = {.code = code, .error = error, .text = (char *) text};

    g_strlcpy(r.status, status, sizeof(r.status));
    return retry_classify(&r);
}

static void test_replies(void **state)
{
    static const struct {
        int     code;
        const char *status, *text;
        enum retry_verdict want;
    }       rows[] = {
        {250, "2.0.0", "OK 1700000000 x.123 - gsmtp", RETRY_SENT},
        {251, "2.1.5", "will forward", RETRY_SENT},
        {250, "2.0.0", NULL, RETRY_SENT},
        {451, "4.3.0", "Mail server temporarily rejected message", RETRY_DEFER},
        {452, "4.2.2", "mailbox full", RETRY_DEFER},
        {421, "4.4.2", "timeout, closing connection", RETRY_DEFER},
        {450, "4.2.0", "mailbox busy", RETRY_DEFER},
        {550, "5.1.1", "The email account that you tried to reach does not exist", RETRY_BOUNCE},
        {554, "5.7.1", "Message rejected", RETRY_BOUNCE},
        {552, "5.3.4", "Message size exceeds fixed limit", RETRY_BOUNCE},
        {550, "5.7.1", "Relaying denied", RETRY_BOUNCE},
        {550, "5.7.1", NULL, RETRY_BOUNCE},
        {501, "5.1.3", "bad recipient address syntax", RETRY_BOUNCE},
        /* Quota and throttle replies pause the relay. */
        {421, "4.7.0", "Try again later, closing connection.", RETRY_PAUSE},
        {450, "4.2.1", "The user you are trying to contact is receiving mail too quickly",
         RETRY_PAUSE},
        {550, "5.4.5", "Daily user sending quota exceeded.", RETRY_PAUSE},
        {550, "5.7.1", "Daily SMTP relay limit exceeded for customer.", RETRY_PAUSE},
        {550, "5.7.1", "[192.0.2.1] Daily SMTP relay LIMIT EXCEEDED for user", RETRY_PAUSE},
        /* The status must match, not only the code. */
        {550, "5.7.0", "relay limit exceeded", RETRY_BOUNCE},
        {451, "4.7.0", "Try again later", RETRY_DEFER},
        {421, "", "Try again later", RETRY_DEFER},
    };

    for (size_t i = 0; i < G_N_ELEMENTS(rows); i++) {
        enum retry_verdict got = classify(rows[i].code, rows[i].status, rows[i].text,
                          SMTP_ERROR_NONE);

        if (got != rows[i].want)
            fail_msg("row %zu (%d %s %s): %s, want %s", i, rows[i].code, rows[i].status,
                 rows[i].text, retry_verdict_name(got), retry_verdict_name(rows[i].want));
    }
}

/*
 * Failures without a reply defer; a refused session defers unless
 * throttled or refused at AUTH for good, which pause the relay.
 */
static void test_failures(void **state)
{
    static const enum smtp_error deferred[] = {
        SMTP_ERROR_CONFIG, SMTP_ERROR_CONNECT, SMTP_ERROR_TIMEOUT, SMTP_ERROR_LOST,
        SMTP_ERROR_TLS, SMTP_ERROR_PROTOCOL,
    };

    for (size_t i = 0; i < G_N_ELEMENTS(deferred); i++)
        assert_int_equal(classify(0, "4.4.2", "lost connection", deferred[i]), RETRY_DEFER);
    assert_int_equal(classify(535, "5.7.8", "Username and Password not accepted",
                  SMTP_ERROR_SESSION), RETRY_PAUSE);
    assert_int_equal(classify(534, "5.7.9", "Application-specific password required",
                  SMTP_ERROR_SESSION), RETRY_PAUSE);
    assert_int_equal(classify(530, "5.7.0", "Authentication Required", SMTP_ERROR_SESSION),
                     RETRY_PAUSE);
    /* A passing AUTH failure only defers; a 535 after DATA is about the message. */
    assert_int_equal(classify(454, "4.7.0", "Temporary authentication failure",
                  SMTP_ERROR_SESSION), RETRY_DEFER);
    assert_int_equal(classify(535, "5.7.8", "odd", SMTP_ERROR_NONE), RETRY_BOUNCE);
    assert_int_equal(classify(554, "5.0.0", "no service", SMTP_ERROR_SESSION), RETRY_DEFER);
    assert_int_equal(classify(421, "4.7.0", "Try again later", SMTP_ERROR_SESSION), RETRY_PAUSE);
}

static const struct retry_policy policy = {
    .initial = 5 * MIN_US, .max = 60 * MIN_US, .lifetime = 5 * 24 * 60 * MIN_US,
};

static gint64 delay(unsigned attempts, double u)
{
    gint64  next = -1;

    assert_int_equal(retry_schedule(&policy, attempts, 1000, 2000, u, &next), RETRY_DEFER);
    return next - 2000;
}

static void test_backoff_growth_and_cap(void **state)
{
    static const gint64 want_min[] = {0, 5, 10, 20, 40, 60, 60, 60};

    for (unsigned a = 1; a < G_N_ELEMENTS(want_min); a++)
        assert_int_equal(delay(a, 0.5), want_min[a] * MIN_US);
    assert_int_equal(delay(1000, 0.5), 60 * MIN_US);
    assert_int_equal(delay(UINT_MAX, 0.5), 60 * MIN_US);
}

static void test_jitter_bounds(void **state)
{
    GRand  *rand = g_rand_new_with_seed(7);

    assert_int_equal(delay(1, 0.0), 4 * MIN_US);
    assert_true(delay(1, 0.999999) < 6 * MIN_US);
    assert_true(delay(1, 0.999999) > 6 * MIN_US - G_USEC_PER_SEC);
    assert_int_equal(delay(9, 0.0), 48 * MIN_US);
    for (int i = 0; i < 10000; i++) {
        unsigned a = g_rand_int_range(rand, 1, 12);
        gint64  base = MIN(policy.initial << (MIN(a, 5) - 1), policy.max);
        gint64  d = delay(a, g_rand_double(rand));

        assert_true(d >= base * 8 / 10 && d < base * 12 / 10);
    }
    g_rand_free(rand);
}

static void test_lifetime(void **state)
{
    gint64  first = (gint64) 1700000000 * G_USEC_PER_SEC, next = 0;

    assert_int_equal(retry_schedule(&policy, 40, first, first + policy.lifetime - 1, 0.5, &next),
             RETRY_DEFER);
    assert_int_equal(next, first + policy.lifetime - 1 + policy.max);
    next = 0;
    assert_int_equal(retry_schedule(&policy, 40, first, first + policy.lifetime, 0.5, &next),
             RETRY_BOUNCE);
    assert_int_equal(next, 0);
    assert_int_equal(retry_schedule(&policy, 1, first, first + 6 * policy.lifetime, 0.5, &next),
             RETRY_BOUNCE);
    /* The same limit for paused deliveries, which the dispatcher checks alone. */
    assert_false(retry_expired(&policy, first, first + policy.lifetime - 1));
    assert_true(retry_expired(&policy, first, first + policy.lifetime));
}

static void test_pause(void **state)
{
    assert_int_equal(retry_pause(&policy, 1), 5 * MIN_US);
    assert_int_equal(retry_pause(&policy, 2), 10 * MIN_US);
    assert_int_equal(retry_pause(&policy, 4), 40 * MIN_US);
    assert_int_equal(retry_pause(&policy, 5), 60 * MIN_US);
    assert_int_equal(retry_pause(&policy, 100000), 60 * MIN_US);
}

static void test_names(void **state)
{
    assert_string_equal(retry_verdict_name(RETRY_SENT), "sent");
    assert_string_equal(retry_verdict_name(RETRY_DEFER), "deferred");
    assert_string_equal(retry_verdict_name(RETRY_BOUNCE), "bounced");
    assert_string_equal(retry_verdict_name(RETRY_PAUSE), "paused");
}

int     main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replies),
        cmocka_unit_test(test_failures),
        cmocka_unit_test(test_backoff_growth_and_cap),
        cmocka_unit_test(test_jitter_bounds),
        cmocka_unit_test(test_lifetime),
        cmocka_unit_test(test_pause),
        cmocka_unit_test(test_names),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
