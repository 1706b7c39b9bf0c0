/*
 * test_relay_state.c - the relay pause in the spool (spool/relay_state.h):
 * its record round trip, records of the older 12-byte layout, and the
 * rule that one event makes one pause.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "spool/relay_state.h"
#include "tests/unit/temp_spool.h"
#include "spool/spool_lmdb.h"


static gboolean put_state(struct spool_txn *t, void *ctx, GError **err)
{
    return relay_state_put(t, NULL, ctx, err);
}

static gboolean put_raw(struct spool_txn *t, void *ctx, GError **err)
{
    MDB_val key = { 11, (void *)"relay.pause" }, val = { 12, ctx };

    return mdb_put(t->txn, spool_dbi(t->sp, DB_META), &key, &val, 0) == 0;
}

static void get_state(struct temp_spool *f, struct relay_state *st)
{
    struct spool_txn t;
    GError *err = NULL;

    assert_true(spool_read_begin(f->sp, &t, &err));
    if (!relay_state_get(&t, NULL, st, &err))
        fail_msg("relay_state_get: %s", err->message);
    spool_read_end(&t);
}

static void test_round_trip(void **state)
{
    struct temp_spool *f = *state;
    struct relay_state st = { .paused_until = 1800000000123, .pauses = 3, .since = 77 }, got;

    get_state(f, &got);
    assert_int_equal(got.paused_until, 0);
    assert_false(relay_state_paused(&got, 1));
    g_strlcpy(st.reason, "550 5.4.5 Daily user sending quota exceeded.", sizeof(st.reason));
    assert_true(spool_write(f->sp, put_state, &st, NULL));
    get_state(f, &got);
    assert_int_equal(got.paused_until, st.paused_until);
    assert_int_equal(got.pauses, 3);
    assert_int_equal(got.since, 77);
    assert_string_equal(got.reason, st.reason);
    assert_true(relay_state_paused(&got, 1800000000122));
    assert_false(relay_state_paused(&got, 1800000000123));

    /* A reason too long is cut, never overruns. */
    memset(st.reason, 'x', sizeof(st.reason));
    assert_true(spool_write(f->sp, put_state, &st, NULL));
    get_state(f, &got);
    assert_int_equal(strlen(got.reason), RELAY_REASON_MAX - 1);
}

/* What an older version wrote: until and pauses only. */
static void test_old_record(void **state)
{
    struct temp_spool *f = *state;
    unsigned char old[12];
    struct relay_state got;

    spool_be64(old, 1800000000000);
    spool_be32(old + 8, 2);
    assert_true(spool_write(f->sp, put_raw, old, NULL));
    get_state(f, &got);
    assert_int_equal(got.paused_until, 1800000000000);
    assert_int_equal(got.pauses, 2);
    assert_int_equal(got.since, 0);
    assert_string_equal(got.reason, "");
}

/*
 * Two jobs leased together both meet the quota: the first reply begins a
 * pause, the second (leased before that pause began) must not begin
 * another and double it; a job leased after the pause began is news.
 */
static void test_one_pause_per_event(void **state)
{
    struct relay_state none = { 0 };
    struct relay_state paused = { .paused_until = 2000, .pauses = 1, .since = 500 };

    assert_true(relay_state_news(&none, 1));
    assert_false(relay_state_news(&paused, 499));
    assert_true(relay_state_news(&paused, 500));
    assert_true(relay_state_news(&paused, 501));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_old_record, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test(test_one_pause_per_event),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
