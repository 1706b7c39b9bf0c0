/*
 * test_transform.c - the transform's signing and notice pieces, without a
 * spool or a dispatcher (the integration tests run the whole worker).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <glib/gstdio.h>
#include <string.h>

#include "transform/mime.h"
#include "transform/transform.h"
#include "spool/delivery.h"

static const char rewritten[] =
    "Subject: hi\r\nFrom: Postern <no-reply@localhost>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
    "Message-ID: <1@localhost>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nbody\r\n";

struct fixture {
    struct postern_config cfg;
    struct transform tf;
    char *dir;
};

static int setup(void **state)
{
    struct fixture *f = g_new0(struct fixture, 1);
    g_autofree char *rsa = NULL, *ed = NULL;
    struct dkim_key *k;

    mime_init();
    assert_true(config_load(&f->cfg, NULL, NULL));
    f->dir = g_dir_make_tmp("test_transform.XXXXXX", NULL);
    rsa = g_build_filename(f->dir, "rsa.pem", NULL);
    ed = g_build_filename(f->dir, "ed.pem", NULL);
    f->tf.cfg = &f->cfg;
    f->tf.keys = g_ptr_array_new_with_free_func((GDestroyNotify)dkim_key_free);
    assert_non_null(k = dkim_keygen(DKIM_KEY_RSA, "rsa", rsa, NULL));
    g_ptr_array_add(f->tf.keys, k);
    assert_non_null(k = dkim_keygen(DKIM_KEY_ED25519, "ed", ed, NULL));
    g_ptr_array_add(f->tf.keys, k);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    g_autofree char *rsa = g_build_filename(f->dir, "rsa.pem", NULL);
    g_autofree char *ed = g_build_filename(f->dir, "ed.pem", NULL);

    g_unlink(rsa);
    g_unlink(ed);
    g_rmdir(f->dir);
    g_free(f->dir);
    g_ptr_array_unref(f->tf.keys);
    config_free(&f->cfg);
    g_free(f);
    return 0;
}

/* The header block: what comes before the given To: line, which ends it. */
static void assert_block(GBytes *block, const char *to, guint nkeys)
{
    gsize len;
    const char *p = g_bytes_get_data(block, &len);
    g_autofree char *text = g_strndup(p, len);
    guint sigs = 0;

    for (const char *s = text; (s = strstr(s, "DKIM-Signature: ")); s++)
        sigs++;
    assert_int_equal(sigs, nkeys);
    assert_true(g_str_has_prefix(text, "DKIM-Signature: v=1; a=rsa-sha256;"));
    assert_true(g_str_has_suffix(text, to));
}

static void test_personal_blocks(void **state)
{
    struct fixture *f = *state;
    g_autoptr(GBytes) common = g_bytes_new_static(rewritten, sizeof(rewritten) - 1);
    g_autoptr(GPtrArray) rcpts = g_ptr_array_new();
    g_autoptr(GPtrArray) headers = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
    g_autoptr(GBytes) outgoing = NULL;

    f->cfg.rewrite.personalize = TRUE;
    g_ptr_array_add(rcpts, "a@example.org");
    g_ptr_array_add(rcpts, "b@example.org");
    assert_true(
        transform_sign_deliveries(&f->tf, common, rcpts, NULL, 1795000000, &outgoing, headers, NULL));
    /* The common copy is stored once, as it was: no signature, no To:. */
    assert_true(g_bytes_equal(outgoing, common));
    assert_int_equal(headers->len, 2);
    assert_block(headers->pdata[0], "To: a@example.org\r\n", 2);
    assert_block(headers->pdata[1], "To: b@example.org\r\n", 2);
    assert_false(g_bytes_equal(headers->pdata[0], headers->pdata[1]));
}

/*
 * n copies signed with threads allowed come out in recipient order and
 * byte for byte as one thread signs them (RSA PKCS#1 v1.5 and Ed25519
 * signatures are deterministic), each of rounds times.
 */
static void assert_threads_sign_alike(struct fixture *f, guint n, guint threads, int rounds)
{
    g_autoptr(GBytes) common = g_bytes_new_static(rewritten, sizeof(rewritten) - 1);
    g_autoptr(GPtrArray) rcpts = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) one = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
    g_autoptr(GBytes) out1 = NULL;

    f->cfg.rewrite.personalize = TRUE;
    for (guint i = 0; i < n; i++)
        g_ptr_array_add(rcpts, g_strdup_printf("r%u@example.org", i));
    f->cfg.dkim.sign_threads = 1;
    assert_true(transform_sign_deliveries(&f->tf, common, rcpts, NULL, 1795000000, &out1, one, NULL));
    f->cfg.dkim.sign_threads = threads;
    for (int round = 0; round < rounds; round++) {
        g_autoptr(GPtrArray) many = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
        g_autoptr(GBytes) out = NULL;

        assert_true(
            transform_sign_deliveries(&f->tf, common, rcpts, NULL, 1795000000, &out, many, NULL));
        assert_int_equal(many->len, n);
        for (guint i = 0; i < n; i++) {
            g_autofree char *to = g_strdup_printf("To: %s\r\n", (char *)rcpts->pdata[i]);

            assert_block(many->pdata[i], to, 2);
            assert_true(g_bytes_equal(many->pdata[i], one->pdata[i]));
        }
    }
}

/* 300 copies on four threads. */
static void test_personal_blocks_threaded(void **state)
{
    assert_threads_sign_alike(*state, 300, 4, 1);
}

/*
 * Threads by the signing work, not the count of copies: under an RSA and
 * an Ed25519 key (9 units a copy) a list of ten signs on one thread and
 * 114 copies (1,026 units) on two; under Ed25519 alone 1,023 copies on
 * one.  The RSA threshold's copies sign alike on two threads, twice.
 */
static void test_personal_blocks_by_work(void **state)
{
    struct fixture *f = *state;
    gpointer rsa;

    f->cfg.dkim.sign_threads = 2;
    assert_int_equal(transform_sign_threads(&f->tf, 10), 1);
    assert_int_equal(transform_sign_threads(&f->tf, 113), 1);
    assert_int_equal(transform_sign_threads(&f->tf, 114), 2);
    assert_int_equal(transform_sign_threads(&f->tf, 1000), 2);
    f->cfg.dkim.sign_threads = 1;
    assert_int_equal(transform_sign_threads(&f->tf, 1000), 1);
    f->cfg.dkim.sign_threads = 8;
    rsa = g_ptr_array_steal_index(f->tf.keys, 0);
    assert_int_equal(transform_sign_threads(&f->tf, 1023), 1);
    assert_int_equal(transform_sign_threads(&f->tf, 1024), 2);
    assert_int_equal(transform_sign_threads(&f->tf, 100000), 8);
    g_ptr_array_insert(f->tf.keys, 0, rsa);
    assert_threads_sign_alike(f, 114, 2, 2);
}

static void test_shared_copy(void **state)
{
    struct fixture *f = *state;
    g_autoptr(GBytes) common = g_bytes_new_static(rewritten, sizeof(rewritten) - 1);
    g_autoptr(GPtrArray) rcpts = g_ptr_array_new();
    g_autoptr(GPtrArray) headers = g_ptr_array_new();
    g_autoptr(GBytes) outgoing = NULL;
    gsize len;
    const char *p;

    f->cfg.rewrite.personalize = FALSE;
    g_ptr_array_add(rcpts, "a@example.org");
    g_ptr_array_add(rcpts, "b@example.org");
    assert_true(
        transform_sign_deliveries(&f->tf, common, rcpts, NULL, 1795000000, &outgoing, headers, NULL));
    assert_int_equal(headers->len, 2);
    assert_null(headers->pdata[0]);
    assert_null(headers->pdata[1]);
    p = g_bytes_get_data(outgoing, &len);
    assert_true(len > sizeof(rewritten));
    assert_memory_equal(p + len - (sizeof(rewritten) - 1), rewritten, sizeof(rewritten) - 1);
    assert_non_null(
        g_strstr_len(p, (gssize)len, "\r\nTo: undisclosed-recipients:;\r\nSubject: hi\r\n"));
}

static void test_copy_without_blank_line(void **state)
{
    struct transform_copy c = { 0 };
    g_autoptr(GBytes) bad = g_bytes_new_static("Subject: x\r\n", 12);
    GError *err = NULL;

    (void)state;
    assert_false(transform_sign_copy_init(&c, bad, &err));
    assert_non_null(err);
    g_error_free(err);
}

static void test_rejection_notice(void **state)
{
    struct fixture *f = *state;
    struct spool_msg m = { .id = 0x0000018f2a3b4c5dULL, .arrival = 1795000000,
                           .sender = "owner@example.org" };
    struct notice *n =
        transform_notice_rejected(&f->tf, f->cfg.lists->pdata[0], &m, "Blåbær", "TOKEN_USED",
                                  1795000000, NULL);
    gsize len;
    const char *p;
    g_autofree char *text = NULL, *subject = NULL;

    assert_non_null(n);
    assert_string_equal(n->to, "owner@example.org");
    assert_int_equal(n->ref, m.id);
    assert_true(g_str_has_suffix(n->message_id, "@localhost"));
    p = g_bytes_get_data(n->bytes, &len);
    text = g_strndup(p, len);
    assert_true(g_str_has_prefix(text, "DKIM-Signature: "));
    assert_non_null(strstr(text, "\r\nTo: owner@example.org\r\nAuto-Submitted: auto-replied\r\n"));
    assert_non_null(strstr(text, "\r\nFrom: Postern <no-reply@localhost>\r\n"));
    assert_non_null(strstr(text, "charset=utf-8"));
    assert_null(strstr(text, "\r\nReply-To:"));     /* h= names it: oversigned */
    subject = transform_notice_subject_of(p, len);
    assert_string_equal(subject, "Not sent: Blåbær");
    transform_notice_free(n);
}

/* The serialised notice n, whole (headers and body, as signed). */
static char *notice_text(const struct notice *n)
{
    gsize len;
    const char *p = g_bytes_get_data(n->bytes, &len);

    return g_strndup(p, len);
}

/* Issue 11: a list's notices in its language, from its From; a hidden list names no member. */
static void test_list_notices(void **state)
{
    struct fixture *f = *state;
    struct postern_list nb = { .name = "styret", .address = "styret@localhost",
                               .from = "Styret <styret@localhost>", .language = "nb",
                               .hide_sender = TRUE };
    struct spool_msg m = { .id = 0x0000018f2a3b4c5dULL, .arrival = 1795000000,
                           .sender = "owner@example.org" };
    struct spool_dlv d = { .msg = m.id, .idx = 1, .state = DLV_BOUNCED,
                           .rcpt = "bob@example.org",
                           .last_reply = "550 5.1.1 <BOB@example.org>: no such user" };
    g_autoptr(GPtrArray) bounced = g_ptr_array_new();
    struct notice *n;
    g_autofree char *text = NULL, *subject = NULL, *text2 = NULL, *subject2 = NULL;
    g_autofree char *text3 = NULL, *subject3 = NULL;

    n = transform_notice_rejected(&f->tf, &nb, &m, "Møte", "TOKEN_WRONG_LIST", 1795000000, NULL);
    assert_non_null(n);
    text = notice_text(n);
    subject = transform_notice_subject_of(text, strlen(text));
    assert_string_equal(subject, "Ikke sendt: Møte");
    assert_non_null(strstr(text, "\r\nFrom: Styret <styret@localhost>\r\n"));
    transform_notice_free(n);

    n = transform_notice_accepted(&f->tf, &nb, &m, "", "owner@example.org", 3, 1795000000, NULL);
    assert_non_null(n);
    text2 = notice_text(n);
    subject2 = transform_notice_subject_of(text2, strlen(text2));
    assert_string_equal(subject2, "Sendt til 3 mottakere: (uten emne)");
    transform_notice_free(n);

    g_ptr_array_add(bounced, &d);
    n = transform_notice_bounced(&f->tf, &nb, &m, "x", "owner@example.org", bounced, 2,
                                 1795000000, NULL);
    assert_non_null(n);
    text3 = notice_text(n);
    subject3 = transform_notice_subject_of(text3, strlen(text3));
    assert_string_equal(subject3, "Ikke levert til 1 av 2: x");
    assert_null(g_strstr_len(text3, -1, "bob@example.org"));
    assert_null(g_strstr_len(text3, -1, "BOB@example.org"));
    assert_non_null(strstr(text3, "(hidden)"));
    transform_notice_free(n);

    /* The default list (English, members named) is as it always was. */
    n = transform_notice_bounced(&f->tf, f->cfg.lists->pdata[0], &m, "x", "owner@example.org",
                                 bounced, 2, 1795000000, NULL);
    assert_non_null(n);
    g_free(text3);
    text3 = notice_text(n);
    assert_non_null(strstr(text3, "  bob@example.org: 550 5.1.1"));
    assert_non_null(strstr(text3, "Your message could not be delivered to 1 of its 2 recipients."));
    transform_notice_free(n);
}

static void test_subject_of(void **state)
{
    static const char msg[] = "Subject: =?utf-8?q?Bl=C3=A5?= b\r\nFrom: x@y\r\n\r\nbody\r\n";
    g_autofree char *s = transform_notice_subject_of(msg, sizeof(msg) - 1);
    g_autofree char *none = transform_notice_subject_of("From: x@y\r\n\r\n", 13);
    g_autofree char *broken = transform_notice_subject_of("garbage", 7);

    (void)state;
    assert_string_equal(s, "Blå b");
    assert_string_equal(none, "");
    assert_string_equal(broken, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_personal_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_personal_blocks_threaded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_personal_blocks_by_work, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_copy, setup, teardown),
        cmocka_unit_test(test_copy_without_blank_line),
        cmocka_unit_test_setup_teardown(test_rejection_notice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_notices, setup, teardown),
        cmocka_unit_test(test_subject_of),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
