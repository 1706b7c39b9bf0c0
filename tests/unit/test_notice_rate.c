/*
 * test_notice_rate.c - spool/spool_notice_rate.h: rejection notices per
 * address and hour, duplicates, earlier hours pruned, no limit at 0, and
 * a rolled-back transaction leaving no count behind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "spool/spool.h"
#include "tests/unit/temp_spool.h"
#include "spool/spool_notice_rate.h"

#define HOUR 3600
#define T0 ((int64_t)1796580000 / HOUR * HOUR)


struct take {
    const char *addr;
    int64_t now;
    uint64_t digest;
    unsigned max;
    gboolean fail_after;            /* make the transaction fail once counted */
    enum spool_notice_rate_verdict verdict;
};

static gboolean take_fn(struct spool_txn *t, void *ctx, GError **err)
{
    struct take *k = ctx;

    if (!spool_notice_rate_take(t, k->addr, k->now, k->digest, k->max, &k->verdict, err))
        return FALSE;
    if (k->fail_after) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_IO, "rolled back on purpose");
        return FALSE;
    }
    return TRUE;
}

static enum spool_notice_rate_verdict take(struct temp_spool *f, const char *addr, int64_t now,
                                           uint64_t digest, unsigned max)
{
    struct take k = { addr, now, digest, max, FALSE, NOTICE_RATE_SEND };
    GError *err = NULL;

    assert_true(spool_write(f->sp, take_fn, &k, &err));
    return k.verdict;
}

static unsigned count(struct temp_spool *f, const char *addr, int64_t now)
{
    struct spool_txn t;
    unsigned n;

    assert_true(spool_read_begin(f->sp, &t, NULL));
    n = spool_notice_rate_count(&t, addr, now);
    spool_read_end(&t);
    return n;
}

static void test_limit_per_hour(void **state)
{
    struct temp_spool *f = *state;

    for (uint64_t d = 1; d <= 3; d++)
        assert_int_equal(take(f, "owner@abakus.no", T0 + (int64_t)d, d, 3), NOTICE_RATE_SEND);
    assert_int_equal(take(f, "owner@abakus.no", T0 + 10, 4, 3), NOTICE_RATE_LIMITED);
    /* Another address has its own count; the domain is compared without case. */
    assert_int_equal(take(f, "other@abakus.no", T0 + 10, 4, 3), NOTICE_RATE_SEND);
    assert_int_equal(take(f, "owner@ABAKUS.NO", T0 + 11, 5, 3), NOTICE_RATE_LIMITED);
    assert_int_equal(count(f, "owner@abakus.no", T0), 3);
    /* The next hour starts again, and the earlier hour's record goes. */
    assert_int_equal(take(f, "owner@abakus.no", T0 + HOUR, 6, 3), NOTICE_RATE_SEND);
    assert_int_equal(count(f, "owner@abakus.no", T0), 0);
    assert_int_equal(count(f, "owner@abakus.no", T0 + HOUR), 1);
}

static void test_duplicate(void **state)
{
    struct temp_spool *f = *state;

    assert_int_equal(take(f, "owner@abakus.no", T0, 42, 5), NOTICE_RATE_SEND);
    assert_int_equal(take(f, "owner@abakus.no", T0 + 5, 42, 5), NOTICE_RATE_DUPLICATE);
    assert_int_equal(take(f, "owner@abakus.no", T0 + 6, 43, 5), NOTICE_RATE_SEND);
    assert_int_equal(count(f, "owner@abakus.no", T0), 2);
}

static void test_no_limit(void **state)
{
    struct temp_spool *f = *state;

    for (int i = 0; i < 10; i++)
        assert_int_equal(take(f, "owner@abakus.no", T0, 7, 0), NOTICE_RATE_SEND);
    assert_int_equal(count(f, "owner@abakus.no", T0), 0);
}

static void test_rolled_back(void **state)
{
    struct temp_spool *f = *state;
    struct take k = { "owner@abakus.no", T0, 1, 1, TRUE, NOTICE_RATE_SEND };
    GError *err = NULL;

    assert_false(spool_write(f->sp, take_fn, &k, &err));
    g_clear_error(&err);
    assert_int_equal(count(f, "owner@abakus.no", T0), 0);
    assert_int_equal(take(f, "owner@abakus.no", T0, 1, 1), NOTICE_RATE_SEND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_limit_per_hour, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_duplicate, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_no_limit, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_rolled_back, temp_spool_setup, temp_spool_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
