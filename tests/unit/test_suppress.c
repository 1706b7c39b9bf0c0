/*
 * Unit tests of the bounce score and the suppression list
 * (spool/spool_suppress.h) on a temporary spool: Mailman's model, with
 * the days simulated by the time each bounce is counted at; one list
 * per list name.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "spool/spool_events.h"
#include "spool/spool_suppress.h"
#include "temp_spool.h"

#define DAY 86400
#define T0 1765000000               /* a Saturday in December 2025, 05:46 UTC */
#define WEEK (7 * DAY)

struct bounce_at {
    const char *addr;
    gboolean hard;
    int64_t now;
    gboolean suppressed;
};

static gboolean write_bounce(struct spool_txn *t, void *ctx, GError **err)
{
    struct bounce_at *b = ctx;

    return spool_suppress_bounce(t, "default", b->addr, b->hard, "5.1.1", b->now, WEEK, 5.0,
                                 &b->suppressed, err);
}

/* One bounce of addr at now; TRUE when it suppressed the address. */
static gboolean bounce(struct temp_spool *ts, const char *addr, gboolean hard, int64_t now)
{
    struct bounce_at b = { addr, hard, now, FALSE };
    GError *err = NULL;

    assert_true(spool_write(ts->sp, write_bounce, &b, &err));
    return b.suppressed;
}

static struct spool_suppress record_on(struct temp_spool *ts, const char *list, const char *addr)
{
    struct spool_txn t;
    struct spool_suppress s;
    gboolean found = FALSE;

    assert_true(spool_read_begin(ts->sp, &t, NULL));
    assert_true(spool_suppress_get(&t, list, addr, &s, &found, NULL));
    spool_read_end(&t);
    return s;
}

static struct spool_suppress record(struct temp_spool *ts, const char *addr)
{
    return record_on(ts, "default", addr);
}

static gboolean is_suppressed_on(struct temp_spool *ts, const char *list, const char *addr)
{
    struct spool_txn t;
    gboolean yes;

    assert_true(spool_read_begin(ts->sp, &t, NULL));
    yes = spool_suppress_is(&t, list, addr);
    spool_read_end(&t);
    return yes;
}

static gboolean is_suppressed(struct temp_spool *ts, const char *addr)
{
    return is_suppressed_on(ts, "default", addr);
}

/* Five hard bounces on five days suppress; the fifth says so, once. */
static void test_five_days_suppress(void **state)
{
    struct temp_spool *ts = *state;

    for (int d = 0; d < 4; d++) {
        assert_false(bounce(ts, "gone@example.org", TRUE, T0 + d * DAY));
        assert_false(is_suppressed(ts, "gone@example.org"));
    }
    assert_true(bounce(ts, "gone@example.org", TRUE, T0 + 4 * DAY));
    assert_true(is_suppressed(ts, "GONE@example.org"));     /* any case is that address */
    assert_false(bounce(ts, "gone@example.org", TRUE, T0 + 5 * DAY));

    struct spool_suppress s = record(ts, "gone@example.org");
    assert_int_equal(s.hard, 5);
    assert_true(s.since == T0 + 4 * DAY);
    spool_suppress_clear(&s);
}

/* At most one bounce a day counts; soft ones count half. */
static void test_one_a_day_and_soft(void **state)
{
    struct temp_spool *ts = *state;
    struct spool_suppress s;

    for (int i = 0; i < 20; i++)
        assert_false(bounce(ts, "busy@example.org", TRUE, T0 + i * 60));
    s = record(ts, "busy@example.org");
    assert_true(s.score == 1.0 && s.hard == 1);
    spool_suppress_clear(&s);

    assert_false(bounce(ts, "busy@example.org", FALSE, T0 + DAY));
    s = record(ts, "busy@example.org");
    assert_true(s.score == 1.5 && s.soft == 1);
    spool_suppress_clear(&s);
}

/* A score whose last bounce is older than the window starts again. */
static void test_window(void **state)
{
    struct temp_spool *ts = *state;
    struct spool_suppress s;

    for (int d = 0; d < 4; d++)
        assert_false(bounce(ts, "slow@example.org", TRUE, T0 + d * DAY));
    assert_false(bounce(ts, "slow@example.org", TRUE, T0 + 3 * DAY + WEEK + DAY));
    s = record(ts, "slow@example.org");
    assert_true(s.score == 1.0);
    assert_true(s.since == 0);
    spool_suppress_clear(&s);
}

struct change {
    const char *list;
    const char *addr;
    gboolean add;
    gboolean changed;
};

static gboolean write_change(struct spool_txn *t, void *ctx, GError **err)
{
    struct change *c = ctx;

    if (c->add)
        return spool_suppress_add(t, c->list, c->addr, "added by operator",
                                  EVENT_ADDRESS_SUPPRESSED, T0, 5.0, &c->changed, err);
    return spool_suppress_remove(t, c->list, c->addr, &c->changed, err);
}

static void test_add_remove(void **state)
{
    struct temp_spool *ts = *state;
    struct change c = { "default", "op@example.org", TRUE, FALSE };

    assert_true(spool_write(ts->sp, write_change, &c, NULL));
    assert_true(c.changed && is_suppressed(ts, "op@example.org"));
    assert_true(spool_write(ts->sp, write_change, &c, NULL));
    assert_false(c.changed);
    c.add = FALSE;
    assert_true(spool_write(ts->sp, write_change, &c, NULL));
    assert_true(c.changed);
    assert_false(is_suppressed(ts, "op@example.org"));
    assert_true(spool_write(ts->sp, write_change, &c, NULL));
    assert_false(c.changed);
}

static gboolean collect(const struct spool_suppress *s, void *ctx)
{
    g_ptr_array_add(ctx, g_strdup_printf("%s %s", s->list, s->addr));
    return TRUE;
}

/* A list's suppression is that list's alone; the default list's key is the bare address. */
static void test_per_list(void **state)
{
    struct temp_spool *ts = *state;
    struct change c = { "board", "Ada@example.org", TRUE, FALSE };
    g_autoptr(GPtrArray) all = g_ptr_array_new_with_free_func(g_free);
    struct spool_suppress s;
    struct spool_txn t;

    assert_true(spool_write(ts->sp, write_change, &c, NULL));
    assert_true(c.changed);
    assert_true(is_suppressed_on(ts, "board", "ada@example.org"));
    assert_false(is_suppressed(ts, "ada@example.org"));
    assert_false(is_suppressed_on(ts, "boar", "ada@example.org"));
    s = record_on(ts, "board", "ada@example.org");
    assert_string_equal(s.list, "board");
    assert_string_equal(s.addr, "Ada@example.org");
    spool_suppress_clear(&s);

    /* Bounces on the default list do not count on board, nor the other way round. */
    for (int d = 0; d < 5; d++)
        bounce(ts, "ada@example.org", TRUE, T0 + d * DAY);
    assert_true(is_suppressed(ts, "ada@example.org"));
    c.add = FALSE;
    assert_true(spool_write(ts->sp, write_change, &c, NULL));
    assert_false(is_suppressed_on(ts, "board", "ada@example.org"));
    assert_true(is_suppressed(ts, "ada@example.org"));

    c.add = TRUE;
    assert_true(spool_write(ts->sp, write_change, &c, NULL));
    assert_true(spool_read_begin(ts->sp, &t, NULL));
    assert_true(spool_suppress_foreach(&t, collect, all, NULL));
    spool_read_end(&t);
    assert_int_equal(all->len, 2);
    assert_string_equal(all->pdata[0], "default ada@example.org");
    assert_string_equal(all->pdata[1], "board Ada@example.org");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_five_days_suppress, temp_spool_setup,
                                        temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_one_a_day_and_soft, temp_spool_setup,
                                        temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_window, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_add_remove, temp_spool_setup, temp_spool_teardown),
        cmocka_unit_test_setup_teardown(test_per_list, temp_spool_setup, temp_spool_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
