/*
 * Sender worker jobs (sender/sender_slot.c): how recipients are grouped
 * into SMTP transactions, and Maildir delivery of a job, one exact copy
 * per recipient.  The SMTP side runs against real servers in
 * tests/integration/test_deliver*.py.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include <glib/gstdio.h>

#include "sender/sender.h"

static const char BODY[] = "Subject: hi\r\nMIME-Version: 1.0\r\n\r\n.dot line\r\nbody\r\n";

/*
 * rcpts: "a" shared, "B" (upper case) with its own header block "To: B".
 * The job goes through the wire encoding, as the dispatcher's would.
 */
static struct wire_send_job *job_new(const char *const *rcpts)
{
    struct wire_send_job sent = { .lease = 7, .msg = 9, .mail_from = "bounces@abakus.no" };
    struct wire_send_job *job = g_new0(struct wire_send_job, 1);
    g_autoptr(GBytes) wire = NULL;

    sent.body = g_bytes_new_static(BODY, strlen(BODY));
    sent.rcpts = g_array_new(FALSE, TRUE, sizeof(struct wire_rcpt));
    for (uint32_t i = 0; rcpts[i]; i++) {
        struct wire_rcpt r = { .idx = 100 + i, .rcpt = (char *)rcpts[i] };

        if (g_ascii_isupper(rcpts[i][0]))
            r.header = g_bytes_new_take(g_strdup_printf("To: %s\r\n", rcpts[i]),
                                        strlen(rcpts[i]) + 6);
        g_array_append_val(sent.rcpts, r);
    }
    wire = wire_send_job_encode(&sent);
    assert_true(wire_send_job_decode(wire, job, NULL));
    for (guint i = 0; i < sent.rcpts->len; i++)
        if (g_array_index(sent.rcpts, struct wire_rcpt, i).header)
            g_bytes_unref(g_array_index(sent.rcpts, struct wire_rcpt, i).header);
    g_array_unref(sent.rcpts);
    g_bytes_unref(sent.body);
    return job;
}

static void transform_job_free(struct wire_send_job *job)
{
    wire_send_job_clear(job);
    g_free(job);
}

/* The plan as text: "a,c|B|d,f|E". */
static char *plan_text(const struct wire_send_job *job, guint max)
{
    g_autoptr(GPtrArray) plan = sender_plan(job, max);
    GString *out = g_string_new(NULL);

    for (guint t = 0; t < plan->len; t++) {
        GArray *txn = plan->pdata[t];

        for (guint k = 0; k < txn->len; k++)
            g_string_append_printf(out, "%s%s", k ? "," : t ? "|" : "",
                                   g_array_index(job->rcpts, struct wire_rcpt,
                                                 g_array_index(txn, guint, k)).rcpt);
    }
    return g_string_free(out, FALSE);
}

static void test_plan(void **state)
{
    const char *mixed[] = { "a", "B", "c", "d", "E", "f", NULL };
    const char *shared[] = { "a", "b", "c", "d", "e", NULL };
    const char *personal[] = { "A", "B", NULL };
    struct wire_send_job *job = job_new(mixed);
    char *text;

    assert_string_equal(text = plan_text(job, 2), "a,c|B|d,f|E");
    g_free(text);
    assert_string_equal(text = plan_text(job, 100), "a,c,d,f|B|E");
    g_free(text);
    transform_job_free(job);

    job = job_new(shared);
    assert_string_equal(text = plan_text(job, 2), "a,b|c,d|e");
    g_free(text);
    assert_string_equal(text = plan_text(job, 1), "a|b|c|d|e");
    g_free(text);
    transform_job_free(job);

    job = job_new(personal);
    assert_string_equal(text = plan_text(job, 100), "A|B");
    g_free(text);
    transform_job_free(job);
}

static struct wire_send_result *deliver(const char *url, const struct wire_send_job *job)
{
    struct postern_config cfg = { 0 };
    struct sender s = { .cfg = &cfg };
    struct sender_account a = { 0 };
    struct wire_send_result *res = g_new0(struct wire_send_result, 1);
    struct smtp_client *client = NULL;

    cfg.relay.max_rcpt_per_txn = 100;
    assert_true(relay_url_parse(url, &a.url, NULL));
    wire_send_result_init(res);
    sender_deliver(&s, &a, &client, job, res, NULL);
    assert_null(client);
    relay_url_clear(&a.url);
    return res;
}

static void test_maildir_one_file_per_recipient(void **state)
{
    const char *rcpts[] = { "a", "B", "c", NULL };
    struct wire_send_job *job = job_new(rcpts);
    g_autofree char *dir = g_dir_make_tmp("test_sender_XXXXXX", NULL);
    g_autofree char *url = g_strdup_printf("maildir:%s", dir);
    g_autofree char *newdir = g_build_filename(dir, "new", NULL);
    struct wire_send_result *res = deliver(url, job);
    GDir *d = g_dir_open(newdir, 0, NULL);
    const char *name;
    unsigned plain = 0, personal = 0;

    assert_int_equal(res->results->len, 3);
    for (guint i = 0; i < 3; i++) {
        struct wire_rcpt_result *r = &g_array_index(res->results, struct wire_rcpt_result, i);
        assert_int_equal(r->idx, 100 + i);
        assert_int_equal(r->code, 250);
        assert_string_equal(r->status, "2.0.0");
        assert_int_equal(r->error, SMTP_ERROR_NONE);
    }
    while ((name = g_dir_read_name(d))) {
        g_autofree char *path = g_build_filename(newdir, name, NULL);
        g_autofree char *data = NULL;
        gsize len;

        assert_true(g_file_get_contents(path, &data, &len, NULL));
        if (len == strlen(BODY)) {
            assert_memory_equal(data, BODY, len);
            plain++;
        } else {
            assert_int_equal(len, strlen("To: B\r\n") + strlen(BODY));
            assert_memory_equal(data, "To: B\r\n", 7);
            assert_memory_equal(data + 7, BODY, strlen(BODY));
            personal++;
        }
        g_unlink(path);
    }
    g_dir_close(d);
    for (const char *const *sub = (const char *const[]){ "new", "tmp", "cur", NULL }; *sub; sub++) {
        g_autofree char *path = g_build_filename(dir, *sub, NULL);
        g_rmdir(path);
    }
    g_rmdir(dir);
    assert_int_equal(plain, 2);
    assert_int_equal(personal, 1);
    wire_send_result_clear(res);
    g_free(res);
    transform_job_free(job);
}

/* A Maildir that cannot be written is a local, temporary failure: 451 4.3.0. */
static void test_maildir_failure_defers(void **state)
{
    const char *rcpts[] = { "a", "B", NULL };
    struct wire_send_job *job = job_new(rcpts);
    struct wire_send_result *res = deliver("maildir:/dev/null/box", job);

    assert_int_equal(res->results->len, 2);
    for (guint i = 0; i < 2; i++) {
        struct wire_rcpt_result *r = &g_array_index(res->results, struct wire_rcpt_result, i);
        assert_int_equal(r->idx, 100 + i);
        assert_int_equal(r->code, 451);
        assert_string_equal(r->status, "4.3.0");
        assert_non_null(strstr(r->text, "/dev/null/box"));
    }
    wire_send_result_clear(res);
    g_free(res);
    transform_job_free(job);
}

/* A part of lease's results, one result per idx given, job_done as said. */
static struct sender_done *batch_part(uint64_t lease, gboolean job_done, guint from, guint n)
{
    struct sender_done *d = g_new0(struct sender_done, 1);

    wire_send_result_init(&d->res);
    d->res.lease = lease;
    d->job_done = job_done;
    for (guint i = 0; i < n; i++) {
        struct wire_rcpt_result r = { .idx = from + i, .code = 250 };
        g_array_append_val(d->res.results, r);
    }
    return d;
}

static void assert_idx(const struct sender_done *d, guint from, guint n)
{
    assert_int_equal(d->res.results->len, n);
    for (guint i = 0; i < n; i++)
        assert_int_equal(g_array_index(d->res.results, struct wire_rcpt_result, i).idx, from + i);
}

/* A running job's parts wait, then go with its end, in order. */
static void test_batch_end_takes_the_held_parts(void **state)
{
    struct sender_batch *b = sender_batch_new();
    struct sender_done *d;
    gint64 t = 1000000;

    (void)state;
    assert_null(sender_batch_add(b, batch_part(7, FALSE, 0, 1), t, FALSE));
    assert_null(sender_batch_add(b, batch_part(9, FALSE, 0, 1), t, FALSE));
    assert_null(sender_batch_add(b, batch_part(7, FALSE, 1, 2), t + 1000, FALSE));
    assert_int_equal(sender_batch_wait_ms(b, t + 1000, -1), SENDER_BATCH_MS - 1);
    assert_int_equal(sender_batch_wait_ms(b, t + 1000, 1), 1);
    assert_null(sender_batch_due(b, t + 1000));
    d = sender_batch_add(b, batch_part(7, TRUE, 3, 1), t + 2000, FALSE);
    assert_non_null(d);
    assert_true(d->job_done);
    assert_int_equal(d->res.lease, 7);
    assert_idx(d, 0, 4);
    sender_done_free(d);
    /* A job with nothing held goes at once. */
    d = sender_batch_add(b, batch_part(8, TRUE, 0, 2), t + 2000, FALSE);
    assert_non_null(d);
    assert_idx(d, 0, 2);
    sender_done_free(d);
    sender_batch_free(b);       /* lease 9 still held: freed with it */
}

/*
 * A job's end held when the caller says so: counted, merged after its
 * parts, out when due or when the caller takes everything (G_MAXINT64).
 */
static void test_batch_holds_ends_when_told(void **state)
{
    struct sender_batch *b = sender_batch_new();
    struct sender_done *d;
    gint64 t = 1000000, due = t + SENDER_BATCH_MS * G_TIME_SPAN_MILLISECOND;

    (void)state;
    assert_null(sender_batch_add(b, batch_part(7, FALSE, 0, 1), t, TRUE));
    assert_int_equal(sender_batch_ends(b), 0);
    assert_null(sender_batch_add(b, batch_part(7, TRUE, 1, 1), t + 1, TRUE));
    assert_null(sender_batch_add(b, batch_part(8, TRUE, 0, 1), t + 2, TRUE));
    assert_int_equal(sender_batch_ends(b), 2);
    d = sender_batch_due(b, due);
    assert_non_null(d);
    assert_true(d->job_done);
    assert_int_equal(d->res.lease, 7);
    assert_idx(d, 0, 2);
    sender_done_free(d);
    assert_int_equal(sender_batch_ends(b), 1);
    assert_null(sender_batch_due(b, due));
    d = sender_batch_due(b, G_MAXINT64);
    assert_non_null(d);
    assert_int_equal(d->res.lease, 8);
    sender_done_free(d);
    assert_int_equal(sender_batch_ends(b), 0);
    assert_null(sender_batch_due(b, G_MAXINT64));
    sender_batch_free(b);
}

/* Held parts go when due, with no job end (a slot stuck at its relay). */
static void test_batch_parts_go_when_due(void **state)
{
    struct sender_batch *b = sender_batch_new();
    struct sender_done *d;
    gint64 t = 1000000, due = t + SENDER_BATCH_MS * G_TIME_SPAN_MILLISECOND;

    (void)state;
    assert_int_equal(sender_batch_wait_ms(b, t, -1), -1);
    assert_null(sender_batch_add(b, batch_part(7, FALSE, 0, 1), t, FALSE));
    assert_null(sender_batch_add(b, batch_part(7, FALSE, 1, 1), due - 1, FALSE));
    assert_null(sender_batch_due(b, due - 1));
    assert_int_equal(sender_batch_wait_ms(b, due, 1000), 0);
    d = sender_batch_due(b, due);
    assert_non_null(d);
    assert_false(d->job_done);
    assert_idx(d, 0, 2);
    sender_done_free(d);
    assert_null(sender_batch_due(b, due + 1000000));
    /* Its next part starts a new wait; the end then takes it along. */
    assert_null(sender_batch_add(b, batch_part(7, FALSE, 2, 1), due + 1, FALSE));
    d = sender_batch_add(b, batch_part(7, TRUE, 3, 1), due + 2, FALSE);
    assert_idx(d, 2, 2);
    sender_done_free(d);
    assert_int_equal(sender_batch_wait_ms(b, due, -1), -1);
    sender_batch_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan),
        cmocka_unit_test(test_maildir_one_file_per_recipient),
        cmocka_unit_test(test_maildir_failure_defers),
        cmocka_unit_test(test_batch_end_takes_the_held_parts),
        cmocka_unit_test(test_batch_parts_go_when_due),
        cmocka_unit_test(test_batch_holds_ends_when_told),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
