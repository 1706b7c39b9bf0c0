/*
 * test_worker.c - the worker runtime's heartbeat timing (common/worker.h):
 * when a worker PINGs, when it takes the dispatcher for gone and says
 * HELLO again, and that it says so once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/wire.h"
#include "common/worker.h"

static void test_ping_every_heartbeat(void **state)
{
    struct worker_beat b;

    worker_beat_start(&b, 1000);
    assert_int_equal(worker_beat_due(&b, 1000), 0);
    assert_int_equal(worker_beat_wait(&b, 1000), WIRE_HEARTBEAT_MS);
    assert_int_equal(worker_beat_due(&b, 1000 + WIRE_HEARTBEAT_MS - 1), 0);
    assert_int_equal(worker_beat_wait(&b, 1000 + WIRE_HEARTBEAT_MS - 1), 1);
    worker_beat_heard(&b, 1000 + WIRE_HEARTBEAT_MS - 1);
    assert_int_equal(worker_beat_due(&b, 1000 + WIRE_HEARTBEAT_MS), WORKER_DUE_PING);
    /* Once per heartbeat, however often the loop asks. */
    assert_int_equal(worker_beat_due(&b, 1000 + WIRE_HEARTBEAT_MS), 0);
    /* A late loop: the wait never goes negative nor past a heartbeat. */
    assert_int_equal(worker_beat_wait(&b, 1000 + 10 * WIRE_HEARTBEAT_MS), 0);
    assert_int_equal(worker_beat_wait(&b, 0), WIRE_HEARTBEAT_MS);
}

static void test_silence_rejoin(void **state)
{
    struct worker_beat b;
    int64_t t = 0;
    unsigned due;

    worker_beat_start(&b, 0);
    /* Heard from until 2 s; silent from then on. */
    worker_beat_heard(&b, 2000);
    for (t = WIRE_HEARTBEAT_MS; t < 2000 + WIRE_DEAD_AFTER_MS; t += WIRE_HEARTBEAT_MS)
        assert_int_equal(worker_beat_due(&b, t), WORKER_DUE_PING);
    /* Gone: HELLO again, and say so once. */
    due = worker_beat_due(&b, t);
    assert_int_equal(due, WORKER_DUE_PING | WORKER_DUE_REJOIN | WORKER_DUE_SILENT);
    assert_true(b.silent);
    /* HELLO with every PING until it answers; said in the log only once. */
    t += WIRE_HEARTBEAT_MS;
    assert_int_equal(worker_beat_due(&b, t), WORKER_DUE_PING | WORKER_DUE_REJOIN);
    /* It answers: it is back (once), and the next PING is a PING alone. */
    assert_true(worker_beat_heard(&b, t + 1));
    assert_false(worker_beat_heard(&b, t + 2));
    assert_int_equal(worker_beat_due(&b, t + WIRE_HEARTBEAT_MS), WORKER_DUE_PING);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ping_every_heartbeat),
        cmocka_unit_test(test_silence_rejoin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
