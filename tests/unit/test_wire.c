/*
 * test_wire.c - the SJOB and SDONE payloads (common/wire_job.c): every
 * field comes back as it went, and a payload cut short anywhere, with a
 * byte too many, of another wire version (a version 2 GVariant among
 * them) or with a string that is not UTF-8 is refused with an error
 * saying so.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "common/wire.h"

#define BODY "Subject: hi\r\n\r\nbody\r\n"

static void add_rcpt(struct wire_send_job *job, uint32_t idx, const char *rcpt,
                     const char *header)
{
    struct wire_rcpt r = { .idx = idx, .rcpt = g_strdup(rcpt) };

    if (header)
        r.header = g_bytes_new(header, strlen(header));
    g_array_append_val(job->rcpts, r);
}

/* Recipients a (shared), Bø with a header block, and an empty header block. */
static GBytes *job_payload(gboolean with_body)
{
    struct wire_send_job job;
    GBytes *b;

    wire_send_job_init(&job);
    job.lease = 0x0102030405060708;
    job.msg = G_MAXUINT64;
    job.mail_from = g_strdup("");
    if (with_body)
        job.body = g_bytes_new_static(BODY, strlen(BODY));
    add_rcpt(&job, 0, "a@example.org", NULL);
    add_rcpt(&job, 7, "b\xc3\xb8@example.org", "To: B\r\n");
    add_rcpt(&job, G_MAXUINT32, "c@example.org", "");
    b = wire_send_job_encode(&job);
    wire_send_job_clear(&job);
    return b;
}

static GBytes *result_payload(void)
{
    struct wire_send_result res;
    struct wire_rcpt_result ok = { .idx = 3, .code = 250, .status = g_strdup("2.0.0"),
                                   .text = g_strdup("ok queued"),
                                   .relay = g_strdup("relay.example[192.0.2.1]:587"),
                                   .seconds = 0.125 };
    struct wire_rcpt_result lost = { .idx = 4, .error = 5, .seconds = -1.5 };
    GBytes *b;

    wire_send_result_init(&res);
    res.credit = 1;
    res.lease = 77;
    res.msg = 0x8000000000000001;
    res.account = g_strdup("bulk");
    g_array_append_val(res.results, ok);
    g_array_append_val(res.results, lost);
    b = wire_send_result_encode(&res);
    wire_send_result_clear(&res);
    return b;
}

static void assert_bytes(GBytes *b, const char *want)
{
    gsize len;
    const char *p = g_bytes_get_data(b, &len);

    assert_int_equal(len, strlen(want));
    assert_memory_equal(p, want, len);
}

static void test_job_round_trip(void **state)
{
    g_autoptr(GBytes) wire = job_payload(TRUE);
    struct wire_send_job job;
    struct wire_rcpt *r;

    assert_int_equal(((const guint8 *)g_bytes_get_data(wire, NULL))[0], WIRE_VERSION);
    assert_true(wire_send_job_decode(wire, &job, NULL));
    assert_true(job.lease == 0x0102030405060708);
    assert_true(job.msg == G_MAXUINT64);
    assert_string_equal(job.mail_from, "");
    assert_string_equal(job.account, WIRE_ACCOUNT_DEFAULT);
    assert_bytes(job.body, BODY);
    assert_int_equal(job.rcpts->len, 3);
    r = &g_array_index(job.rcpts, struct wire_rcpt, 0);
    assert_int_equal(r->idx, 0);
    assert_string_equal(r->rcpt, "a@example.org");
    assert_null(r->header);
    r = &g_array_index(job.rcpts, struct wire_rcpt, 1);
    assert_int_equal(r->idx, 7);
    assert_string_equal(r->rcpt, "b\xc3\xb8@example.org");
    assert_bytes(r->header, "To: B\r\n");
    r = &g_array_index(job.rcpts, struct wire_rcpt, 2);
    assert_int_equal(r->idx, G_MAXUINT32);
    assert_non_null(r->header);
    assert_bytes(r->header, "");
    wire_send_job_clear(&job);

    /* No body, another account. */
    g_bytes_unref(wire);
    wire_send_job_init(&job);
    job.mail_from = g_strdup("bounces@abakus.no");
    job.account = g_strdup("bulk");
    wire = wire_send_job_encode(&job);
    wire_send_job_clear(&job);
    assert_true(wire_send_job_decode(wire, &job, NULL));
    assert_null(job.body);
    assert_string_equal(job.mail_from, "bounces@abakus.no");
    assert_string_equal(job.account, "bulk");
    assert_int_equal(job.rcpts->len, 0);
    wire_send_job_clear(&job);
}

static void test_result_round_trip(void **state)
{
    g_autoptr(GBytes) wire = result_payload();
    struct wire_send_result res;
    struct wire_rcpt_result *r;

    assert_true(wire_send_result_decode(wire, &res, NULL));
    assert_int_equal(res.credit, 1);
    assert_int_equal(res.lease, 77);
    assert_true(res.msg == 0x8000000000000001);
    assert_string_equal(res.account, "bulk");
    assert_int_equal(res.results->len, 2);
    r = &g_array_index(res.results, struct wire_rcpt_result, 0);
    assert_int_equal(r->idx, 3);
    assert_int_equal(r->code, 250);
    assert_string_equal(r->status, "2.0.0");
    assert_string_equal(r->text, "ok queued");
    assert_string_equal(r->relay, "relay.example[192.0.2.1]:587");
    assert_int_equal(r->error, 0);
    assert_true(r->seconds == 0.125);
    /* NULL strings go as "". */
    r = &g_array_index(res.results, struct wire_rcpt_result, 1);
    assert_int_equal(r->code, 0);
    assert_int_equal(r->error, 5);
    assert_string_equal(r->status, "");
    assert_string_equal(r->text, "");
    assert_string_equal(r->relay, "");
    assert_true(r->seconds == -1.5);
    wire_send_result_clear(&res);
}

/* Decodes p (len bytes) as an SJOB and an SDONE: FALSE, and err says `why`. */
static void assert_refused(gboolean sjob, const void *p, gsize len, const char *why)
{
    g_autoptr(GBytes) b = g_bytes_new(p, len);
    g_autoptr(GError) err = NULL;
    gboolean ok;

    if (sjob) {
        struct wire_send_job job;
        ok = wire_send_job_decode(b, &job, &err);
        wire_send_job_clear(&job);
    } else {
        struct wire_send_result res;
        ok = wire_send_result_decode(b, &res, &err);
        wire_send_result_clear(&res);
    }
    assert_false(ok);
    assert_non_null(err);
    assert_true(err->domain == WIRE_ERROR);
    if (!strstr(err->message, why))
        fail_msg("%zu bytes: \"%s\" does not say \"%s\"", len, err->message, why);
}

/* Every prefix is cut short; one byte more is past the end. */
static void assert_cut_and_overlong(gboolean sjob, GBytes *wire)
{
    gsize len;
    const guint8 *p = g_bytes_get_data(wire, &len);
    g_autofree guint8 *longer = g_malloc(len + 1);

    for (gsize n = 0; n < len; n++)
        assert_refused(sjob, p, n, "cut short");
    memcpy(longer, p, len);
    longer[len] = 0;
    assert_refused(sjob, longer, len + 1, "1 bytes past its end");
}

static void test_job_cut_short_or_overlong(void **state)
{
    g_autoptr(GBytes) with_body = job_payload(TRUE);
    g_autoptr(GBytes) without = job_payload(FALSE);

    assert_cut_and_overlong(TRUE, with_body);
    assert_cut_and_overlong(TRUE, without);
}

static void test_result_cut_short_or_overlong(void **state)
{
    g_autoptr(GBytes) wire = result_payload();

    assert_cut_and_overlong(FALSE, wire);
}

/* A copy of wire with the byte at `at` (counted from the end when < 0) set to v. */
static guint8 *patched(GBytes *wire, gssize at, guint8 v, gsize *len)
{
    const guint8 *p = g_bytes_get_data(wire, len);
    guint8 *copy = g_memdup2(p, *len);

    copy[at < 0 ? (gssize)*len + at : at] = v;
    return copy;
}

static void test_garbled_refused(void **state)
{
    g_autoptr(GBytes) job = job_payload(TRUE);
    g_autoptr(GBytes) res = result_payload();
    /* A version 2 SDONE, as a worker of the last release sends it. */
    g_autoptr(GBytes) v2 = wire_pack("(uttsa(uqssusd))", 1, (guint64)7, (guint64)9, "default",
                                     NULL);
    gsize len;
    guint8 *p;

    p = patched(job, 0, WIRE_VERSION - 1, &len);
    assert_refused(TRUE, p, len, "wire version 2, this end 3");
    g_free(p);
    p = patched(res, 0, WIRE_VERSION + 1, &len);
    assert_refused(FALSE, p, len, "wire version 4, this end 3");
    g_free(p);
    assert_refused(FALSE, g_bytes_get_data(v2, NULL), g_bytes_get_size(v2), "wire version 1");

    /* Flags it does not know: the job's, the first recipient's. */
    p = patched(job, 1, 0x03, &len);
    assert_refused(TRUE, p, len, "unknown flags 0x03");
    g_free(p);
    p = patched(job, 22 + 4 + 4 + 7 + 4 + strlen(BODY) + 4, 0x80, &len);
    assert_refused(TRUE, p, len, "unknown flags 0x80 of recipient 0");
    g_free(p);
    /* The last recipient's address (its empty header block after it): "c@example.or\xff",
     * then with a NUL. */
    p = patched(job, -5, 0xff, &len);
    assert_refused(TRUE, p, len, "a recipient at byte");
    p[len - 5] = 0;
    assert_refused(TRUE, p, len, "is not UTF-8 text");
    g_free(p);
    /* The last result's relay is "": its length says 1 where nothing follows. */
    p = patched(res, -1, 1, &len);
    assert_refused(FALSE, p, len, "cut short");
    g_free(p);
    /* The account's length near 4 GiB is cut short, not a read past the end ... */
    p = patched(res, 25, 0xff, &len);
    assert_refused(FALSE, p, len, "cut short at byte 29");
    g_free(p);
    /* ... and so is a count of results near 4 G. */
    p = patched(res, 21, 0xff, &len);
    assert_refused(FALSE, p, len, "cut short");
    g_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_round_trip),
        cmocka_unit_test(test_result_round_trip),
        cmocka_unit_test(test_job_cut_short_or_overlong),
        cmocka_unit_test(test_result_cut_short_or_overlong),
        cmocka_unit_test(test_garbled_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
