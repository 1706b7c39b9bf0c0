/*
 * test_ingest_loop.c - ingest/ingest_loop.c: GLib's watch contract on one
 * epoll set, over socketpairs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "ingest/ingest.h"

struct probe {
    int calls;
    GIOCondition last;
    gboolean close_it;              /* close the descriptor, then G_SOURCE_REMOVE */
    gboolean remove;
    guint *other;                   /* a watch to remove from inside the callback */
};

static gboolean probe_cb(int fd, GIOCondition cond, gpointer data)
{
    struct probe *p = data;
    char buf[64];

    p->calls++;
    p->last = cond;
    if (cond == G_IO_IN && read(fd, buf, sizeof(buf)) < 0)
        fail_msg("read: %m");
    if (p->other && *p->other) {
        ingest_fd_remove(*p->other);
        *p->other = 0;
    }
    if (p->close_it) {
        close(fd);
        return G_SOURCE_REMOVE;
    }
    return p->remove ? G_SOURCE_REMOVE : G_SOURCE_CONTINUE;
}

static int setup(void **state)
{
    (void)state;
    ingest_loop_init();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ingest_loop_free();
    return 0;
}

/* Called while bytes wait, not otherwise; not once removed. */
static void test_read_watch_and_remove(void **state)
{
    int sv[2];
    struct probe p = { 0 };
    guint id;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    id = ingest_fd_add(sv[0], G_IO_IN, probe_cb, &p);
    assert_int_not_equal(id, 0);
    ingest_loop_iterate(0);
    assert_int_equal(p.calls, 0);
    assert_int_equal(write(sv[1], "x", 1), 1);
    ingest_loop_iterate(1000);
    assert_int_equal(p.calls, 1);
    assert_int_equal(p.last, G_IO_IN);
    ingest_fd_remove(id);
    assert_int_equal(write(sv[1], "y", 1), 1);
    ingest_loop_iterate(0);
    assert_int_equal(p.calls, 1);
    /* The same descriptor can be watched again. */
    id = ingest_fd_add(sv[0], G_IO_IN, probe_cb, &p);
    ingest_loop_iterate(0);
    assert_int_equal(p.calls, 2);
    ingest_fd_remove(id);
    close(sv[0]);
    close(sv[1]);
}

/* Input and output on one descriptor; G_SOURCE_REMOVE ends only its own watch. */
static void test_both_directions(void **state)
{
    int sv[2];
    struct probe in = { 0 }, out = { .remove = TRUE };
    guint in_id;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    in_id = ingest_fd_add(sv[0], G_IO_IN, probe_cb, &in);
    ingest_fd_add(sv[0], G_IO_OUT, probe_cb, &out);
    ingest_loop_iterate(0);
    assert_int_equal(out.calls, 1);
    assert_int_equal(out.last, G_IO_OUT);
    assert_int_equal(in.calls, 0);
    ingest_loop_iterate(0);
    assert_int_equal(out.calls, 1);         /* removed by its return */
    assert_int_equal(write(sv[1], "x", 1), 1);
    ingest_loop_iterate(0);
    assert_int_equal(in.calls, 1);
    ingest_fd_remove(in_id);
    close(sv[0]);
    close(sv[1]);
}

/* A callback closes its descriptor and returns G_SOURCE_REMOVE (GLib allows
 * it); the number, reused, is watched anew with no stale call. */
static void test_close_in_callback_and_reuse(void **state)
{
    int sv[2], again[2];
    struct probe p = { .close_it = TRUE }, q = { 0 };
    guint id;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    ingest_fd_add(sv[0], G_IO_IN, probe_cb, &p);
    close(sv[1]);                           /* a hang-up wakes the input watch */
    ingest_loop_iterate(1000);
    assert_int_equal(p.calls, 1);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, again), 0);
    assert_int_equal(again[0], sv[0]);      /* the lowest number: the one closed */
    id = ingest_fd_add(again[0], G_IO_IN, probe_cb, &q);
    ingest_loop_iterate(0);
    assert_int_equal(q.calls, 0);
    assert_int_equal(p.calls, 1);
    ingest_fd_remove(id);
    close(again[0]);
    close(again[1]);
}

/* A callback removes another descriptor's watch that is ready in the same
 * wait: that one is not called. */
static void test_remove_other_ready_watch(void **state)
{
    int a[2], b[2];
    struct probe pa = { 0 }, pb = { 0 };
    guint ia, ib;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, a), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, b), 0);
    ia = ingest_fd_add(a[0], G_IO_IN, probe_cb, &pa);
    ib = ingest_fd_add(b[0], G_IO_IN, probe_cb, &pb);
    pa.other = &ib;
    pb.other = &ia;
    assert_int_equal(write(a[1], "x", 1), 1);
    assert_int_equal(write(b[1], "x", 1), 1);
    ingest_loop_iterate(1000);
    assert_int_equal(pa.calls + pb.calls, 1);
    if (ia)
        ingest_fd_remove(ia);
    if (ib)
        ingest_fd_remove(ib);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
}

/*
 * A callback closes another descriptor that is ready in the same wait and
 * a new one gets its number and a watch: the old event must not reach the
 * new watch (whose read would fail: nothing was written to it).
 */
struct swap {
    int calls;
    int *victim;                    /* the other pair: closed and made again */
    guint *victim_id;
    struct probe *fresh;
};

static gboolean swap_cb(int fd, GIOCondition cond, gpointer data)
{
    struct swap *sw = data;
    char buf[8];

    (void)cond;
    sw->calls++;
    assert_int_equal(read(fd, buf, sizeof(buf)), 1);
    if (!*sw->victim_id)
        return G_SOURCE_CONTINUE;
    ingest_fd_remove(*sw->victim_id);
    close(sw->victim[0]);
    close(sw->victim[1]);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sw->victim), 0);
    *sw->victim_id = ingest_fd_add(sw->victim[0], G_IO_IN, probe_cb, sw->fresh);
    return G_SOURCE_CONTINUE;
}

static void test_stale_event_after_reuse(void **state)
{
    int a[2], b[2];
    guint ia, ib;
    struct probe fa = { 0 }, fb = { 0 };
    struct swap sa = { .victim = b, .victim_id = &ib, .fresh = &fb };
    struct swap sb = { .victim = a, .victim_id = &ia, .fresh = &fa };

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, a), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, b), 0);
    ia = ingest_fd_add(a[0], G_IO_IN, swap_cb, &sa);
    ib = ingest_fd_add(b[0], G_IO_IN, swap_cb, &sb);
    assert_int_equal(write(a[1], "x", 1), 1);
    assert_int_equal(write(b[1], "x", 1), 1);
    ingest_loop_iterate(1000);
    /* Whichever ran first replaced the other, which then got no call. */
    assert_int_equal(sa.calls + sb.calls, 1);
    assert_int_equal(fa.calls + fb.calls, 0);
    ingest_fd_remove(ia);
    ingest_fd_remove(ib);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
}

/* Another thread's wakeup ends a wait that would block. */
static gpointer wake_later(gpointer data)
{
    (void)data;
    g_usleep(50000);
    ingest_loop_wakeup();
    return NULL;
}

static void test_wakeup_ends_the_wait(void **state)
{
    GThread *t = g_thread_new("wake", wake_later, NULL);
    gint64 start = g_get_monotonic_time();

    (void)state;
    ingest_loop_iterate(10000);
    assert_true(g_get_monotonic_time() - start < 5 * G_USEC_PER_SEC);
    g_thread_join(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_read_watch_and_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_both_directions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_in_callback_and_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove_other_ready_watch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_event_after_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wakeup_ends_the_wait, setup, teardown),
    };

    log_init("test_ingest_loop", TRUE);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
