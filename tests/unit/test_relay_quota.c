/*
 * test_relay_quota.c - the daily limit's rolling window
 * (spool/relay_quota.h): a recipient leaves the count no sooner than the
 * window after it was leased and no later than one bucket after that;
 * room, the time room comes back, a change of window, and the record's
 * round trip through the spool.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "spool/relay_quota.h"
#include "spool/relay_state.h"
#include "tests/unit/temp_spool.h"

#define WINDOW (24 * 3600 * 1000LL)     /* 24 h: buckets of an hour */
#define HOUR (3600 * 1000LL)
#define T0 (1800000000000LL + 17 * 60 * 1000)   /* 17 minutes into an hour */

static void test_counts_within_window(void **state)
{
    struct relay_quota q = { 0 };

    (void)state;
    relay_quota_setup(&q, WINDOW, 20, T0);
    assert_int_equal(relay_quota_used(&q, T0), 0);
    assert_int_equal(relay_quota_room(&q, T0), 20);
    relay_quota_add(&q, T0, 15);
    relay_quota_add(&q, T0 + 2 * HOUR, 5);
    assert_int_equal(relay_quota_used(&q, T0 + 2 * HOUR), 20);
    assert_int_equal(relay_quota_room(&q, T0 + 2 * HOUR), 0);
    /* Never early: a minute short of the window, the first 15 still count. */
    assert_int_equal(relay_quota_used(&q, T0 + WINDOW - 60 * 1000), 20);
    assert_int_equal(relay_quota_used(&q, T0 + WINDOW), 20);
    /* At most a bucket late: they are gone an hour after the window. */
    assert_int_equal(relay_quota_used(&q, T0 + WINDOW + HOUR), 5);
    assert_int_equal(relay_quota_room(&q, T0 + WINDOW + HOUR), 15);
    assert_int_equal(relay_quota_used(&q, T0 + 2 * WINDOW + 3 * HOUR), 0);
}

static void test_next_room(void **state)
{
    struct relay_quota q = { 0 };
    int64_t at;

    (void)state;
    relay_quota_setup(&q, WINDOW, 10, T0);
    assert_int_equal(relay_quota_next_room(&q, T0), T0);
    relay_quota_add(&q, T0, 4);
    relay_quota_add(&q, T0 + 3 * HOUR, 6);
    /* The oldest bucket leaves at the first bucket boundary past the window. */
    at = relay_quota_next_room(&q, T0 + 3 * HOUR);
    assert_true(at >= T0 + WINDOW && at <= T0 + WINDOW + HOUR);
    assert_int_equal(at % HOUR, 0);
    assert_int_equal(relay_quota_used(&q, at - 1), 10);
    assert_int_equal(relay_quota_used(&q, at), 6);
    assert_int_equal(relay_quota_next_room(&q, at), at + 3 * HOUR);
}

static void test_adding_past_the_ring_forgets_old(void **state)
{
    struct relay_quota q = { 0 };

    (void)state;
    relay_quota_setup(&q, WINDOW, 100, T0);
    relay_quota_add(&q, T0, 50);
    /* Long idle: the whole ring has turned over; only the new ones count. */
    relay_quota_add(&q, T0 + 40 * HOUR, 3);
    assert_int_equal(relay_quota_used(&q, T0 + 40 * HOUR), 3);
    /* A clock that went back counts into the newest bucket. */
    relay_quota_add(&q, T0 + 39 * HOUR, 2);
    assert_int_equal(relay_quota_used(&q, T0 + 40 * HOUR), 5);
}

static void test_limit_over_used(void **state)
{
    struct relay_quota q = { 0 };

    (void)state;
    relay_quota_setup(&q, WINDOW, 30, T0);
    relay_quota_add(&q, T0, 30);
    /* A limit lowered below what was sent: no room, not a wrap-around. */
    relay_quota_setup(&q, WINDOW, 10, T0 + 1000);
    assert_int_equal(relay_quota_room(&q, T0 + 1000), 0);
}

static void test_window_change_keeps_count(void **state)
{
    struct relay_quota q = { 0 };

    (void)state;
    relay_quota_setup(&q, WINDOW, 100, T0);
    relay_quota_add(&q, T0, 7);
    relay_quota_add(&q, T0 + 5 * HOUR, 3);
    /* A 12 s window now (tests): the count moves to the newest bucket. */
    relay_quota_setup(&q, 12 * 1000, 100, T0 + 6 * HOUR);
    assert_int_equal(q.bucket_ms, 500);
    assert_int_equal(relay_quota_used(&q, T0 + 6 * HOUR), 10);
    assert_int_equal(relay_quota_used(&q, T0 + 6 * HOUR + 11 * 1000), 10);
    assert_int_equal(relay_quota_used(&q, T0 + 6 * HOUR + 13 * 1000), 0);
}

static gboolean put_quota(struct spool_txn *t, void *ctx, GError **err)
{
    return relay_quota_put(t, NULL, ctx, err);
}

static gboolean put_quota_two(struct spool_txn *t, void *ctx, GError **err)
{
    return relay_quota_put(t, "two", ctx, err);
}

static void test_round_trip(void **state)
{
    struct temp_spool *f = *state;
    struct relay_quota q = { 0 }, got;
    struct spool_txn t;
    GError *err = NULL;

    assert_true(spool_read_begin(f->sp, &t, &err));
    assert_true(relay_quota_get(&t, NULL, &got, &err));
    spool_read_end(&t);
    assert_int_equal(got.bucket_ms, 0);
    assert_int_equal(relay_quota_used(&got, T0), 0);

    relay_quota_setup(&q, WINDOW, 10000, T0);
    relay_quota_add(&q, T0, 9);
    relay_quota_add(&q, T0 + HOUR, 1);
    q.waiting_until = T0 + WINDOW;
    assert_true(spool_write(f->sp, put_quota, &q, NULL));
    assert_true(spool_read_begin(f->sp, &t, &err));
    assert_true(relay_quota_get(&t, RELAY_ACCOUNT_DEFAULT, &got, &err));
    spool_read_end(&t);
    assert_memory_equal(&got, &q, sizeof(q));
    assert_int_equal(relay_quota_used(&got, T0 + HOUR), 10);

    /* Another account's window is a record of its own: default's is untouched. */
    relay_quota_add(&q, T0 + HOUR, 5);
    assert_true(spool_write(f->sp, put_quota_two, &q, NULL));
    assert_true(spool_read_begin(f->sp, &t, &err));
    assert_true(relay_quota_get(&t, "two", &got, &err));
    assert_int_equal(relay_quota_used(&got, T0 + HOUR), 15);
    assert_true(relay_quota_get(&t, NULL, &got, &err));
    assert_int_equal(relay_quota_used(&got, T0 + HOUR), 10);
    spool_read_end(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_within_window),
        cmocka_unit_test(test_next_room),
        cmocka_unit_test(test_adding_past_the_ring_forgets_old),
        cmocka_unit_test(test_limit_over_used),
        cmocka_unit_test(test_window_change_keeps_count),
        cmocka_unit_test_setup_teardown(test_round_trip, temp_spool_setup, temp_spool_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
