/*
 * test_api.c - postern-api without HTTP: the keys file (hashes, scopes,
 * broken lines), api_handle()'s decisions before any handler runs
 * (404, 405 with Allow, 401, 403), which touch no spool, and token
 * registrations sharing one commit (on a spool of their own).
 */
#include "api/api.h"
#include "api/api_events.h"
#include "spool/spool_token.h"
#include "tests/unit/temp_spool.h"

#include <glib/gstdio.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

/* "NAME SCOPE HEX" for key, as spoolctl api-key add writes it. */
static char *key_line(const char *name, const char *scope, const char *key)
{
    g_autofree char *hex = g_compute_checksum_for_string(G_CHECKSUM_SHA256, key, -1);
    return g_strdup_printf("%s %s %s\n", name, scope, hex);
}

static char *write_keys(const char *text)
{
    char *path = g_build_filename(g_get_tmp_dir(), "postern-test-keys-XXXXXX", NULL);
    int fd = g_mkstemp(path);

    assert_true(fd >= 0);
    assert_true(g_file_set_contents(path, text, -1, NULL));
    close(fd);
    return path;
}

static void test_keys(void **state)
{
    g_autofree char *a = key_line("ops", "admin", "admin-key-0123456789");
    g_autofree char *r = key_line("graf", "read", "read-key-0123456789");
    g_autofree char *text = g_strdup_printf("# keys\n\n%s  %s", a, r);
    g_autofree char *path = write_keys(text);
    struct api_keys *keys;
    const char *name;
    GError *err = NULL;

    assert_non_null(keys = api_keys_load(path, &err));
    assert_int_equal(api_keys_check(keys, "admin-key-0123456789", &name), API_SCOPE_ADMIN);
    assert_string_equal(name, "ops");
    assert_int_equal(api_keys_check(keys, "read-key-0123456789", &name), API_SCOPE_READ);
    assert_string_equal(name, "graf");
    assert_int_equal(api_keys_check(keys, "read-key-012345678", &name), API_SCOPE_NONE);
    assert_null(name);
    assert_int_equal(api_keys_check(keys, "", &name), API_SCOPE_NONE);
    api_keys_free(keys);
    g_unlink(path);

    /* No file named: no key at all. */
    assert_non_null(keys = api_keys_load("", &err));
    assert_int_equal(api_keys_check(keys, "admin-key-0123456789", &name), API_SCOPE_NONE);
    api_keys_free(keys);
}

static void test_keys_refused(void **state)
{
    static const char *const bad[] = {
        "ops admin\n", "ops root 00\n", "ops admin 0123\n",
        "ops admin zz00000000000000000000000000000000000000000000000000000000000000\n",
        "a b c d\n",
    };

    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autofree char *path = write_keys(bad[i]);
        GError *err = NULL;

        assert_null(api_keys_load(path, &err));
        assert_non_null(strstr(err->message, ":1: expected NAME SCOPE SHA256-HEX"));
        g_error_free(err);
        g_unlink(path);
    }
    {
        GError *err = NULL;
        assert_null(api_keys_load("/nonexistent/keys", &err));
        g_error_free(err);
    }
}

/* Run api_handle() on method and path with bearer; the reply's status. */
static unsigned handle(struct api *a, const char *method, const char *path, const char *bearer,
                       struct api_response *rs)
{
    struct api_request rq;

    api_request_init(&rq, method, path);
    g_string_truncate(rs->body, 0);
    rs->allow = NULL;
    api_handle(a, &rq, bearer, rs);
    api_request_clear(&rq);
    return rs->status;
}

static void test_handle_refusals(void **state)
{
    g_autofree char *r = key_line("graf", "read", "read-key-0123456789");
    g_autofree char *t = key_line("lego", "tokens", "tok-key-0123456789");
    g_autofree char *text = g_strconcat(r, t, NULL);
    g_autofree char *path = write_keys(text);
    struct api a = { 0 };
    struct api_response rs = { .body = g_string_new(NULL) };

    assert_non_null(a.keys = api_keys_load(path, NULL));
    assert_int_equal(handle(&a, "GET", "/v1/nothing", NULL, &rs), 404);
    assert_non_null(strstr(rs.body->str, "\"not_found\""));
    assert_int_equal(handle(&a, "GET", "/v1/tokens//recipients", NULL, &rs), 404);
    assert_int_equal(handle(&a, "GET", "/v1/tokens", NULL, &rs), 405);
    assert_string_equal(rs.allow, "POST");
    assert_int_equal(handle(&a, "PATCH", "/v1/tokens/0123456789abcdef", NULL, &rs), 405);
    assert_string_equal(rs.allow, "GET, DELETE");
    assert_int_equal(handle(&a, "POST", "/v1/tokens", NULL, &rs), 401);
    assert_non_null(strstr(rs.body->str, "\"unauthorized\""));
    assert_int_equal(handle(&a, "POST", "/v1/tokens", "wrong-key-0123456789", &rs), 401);
    assert_int_equal(handle(&a, "POST", "/v1/tokens", "read-key-0123456789", &rs), 403);
    assert_non_null(strstr(rs.body->str, "needs tokens"));
    assert_int_equal(handle(&a, "POST", "/v1/messages/0123456789abcdef/hold",
                            "tok-key-0123456789", &rs), 403);
    assert_int_equal(handle(&a, "GET", "/metrics", NULL, &rs), 401);
    assert_null(strstr(rs.body->str, "key-0123456789"));
    api_keys_free(a.keys);
    g_string_free(rs.body, TRUE);
    g_unlink(path);
}

/* POST /v1/tokens with body, prepared for a shared commit (NULL: refused, rs says why). */
static struct api_token_batch *prepare(struct api *a, const char *body, struct api_response *rs)
{
    struct api_request rq = { .method = "POST", .path = "/v1/tokens", .key_name = "lego" };
    struct api_token_batch *tb;

    rq.body = g_byte_array_new();
    g_byte_array_append(rq.body, (const guint8 *)body, (guint)strlen(body));
    tb = api_token_prepare(a, &rq, rs);
    g_byte_array_unref(rq.body);
    return tb;
}

static gboolean count_token(const struct spool_token *tk, void *ctx)
{
    (*(guint *)ctx)++;
    return TRUE;
}

static guint token_count(struct spool *sp)
{
    struct spool_txn t;
    guint n = 0;

    assert_true(spool_read_begin(sp, &t, NULL));
    assert_true(spool_token_foreach(&t, count_token, &n, NULL));
    spool_read_end(&t);
    return n;
}

#define SHARED "{\"from\": \"leader@abakus.no\", \"recipients\": [\"a@example.org\"], " \
               "\"token\": \"shared-token-0123456789\"}"
#define FRESH(rcpt) "{\"from\": \"leader@abakus.no\", \"recipients\": [\"" rcpt "\"]}"

/*
 * Requests that share a commit are each all or nothing: one whose token
 * an earlier request of the same commit registered, or that gives a token
 * twice, is 409 and writes none of its tokens; the others are written.
 */
static void test_shared_commit(void **state)
{
    struct temp_spool *ts = temp_spool_new();
    struct api a = { &ts->cfg, ts->sp };
    static const char *const bodies[] = {
        SHARED,
        "[" FRESH("b@example.org") ", " SHARED "]",
        "[" FRESH("c@example.org") ", {\"from\": \"leader@abakus.no\", \"recipients\": "
            "[\"c@example.org\"], \"token\": \"twice-token-0123456789\"}, {\"from\": "
            "\"leader@abakus.no\", \"recipients\": [\"d@example.org\"], \"token\": "
            "\"twice-token-0123456789\"}]",
        FRESH("e@example.org"),
    };
    static const unsigned want[] = { 201, 409, 409, 201 };
    struct api_response rs[G_N_ELEMENTS(bodies)];
    g_autoptr(GPtrArray) batches =
        g_ptr_array_new_with_free_func((GDestroyNotify)api_token_batch_free);

    for (size_t i = 0; i < G_N_ELEMENTS(bodies); i++) {
        struct api_token_batch *tb;

        rs[i] = (struct api_response){ .body = g_string_new(NULL) };
        assert_non_null(tb = prepare(&a, bodies[i], &rs[i]));
        g_ptr_array_add(batches, tb);
    }
    api_token_commit(&a, batches);
    for (size_t i = 0; i < G_N_ELEMENTS(bodies); i++)
        assert_int_equal(rs[i].status, want[i]);
    assert_non_null(strstr(rs[1].body->str, "entry 1: token "));
    assert_non_null(strstr(rs[2].body->str, "entry 2: token "));
    assert_non_null(strstr(rs[3].body->str, "\"token\""));
    assert_int_equal(token_count(ts->sp), 2);
    for (size_t i = 0; i < G_N_ELEMENTS(bodies); i++)
        g_string_free(rs[i].body, TRUE);
    temp_spool_free(ts);
}

/*
 * A shared commit that fails (here the spool's map at max_size)
 * answers every request that shared it with the spool's error, and none
 * of their tokens is written; a lone request afterwards still is.
 */
static void test_shared_commit_fails_for_all(void **state)
{
    struct temp_spool *ts = temp_spool_new();
    struct api a = { &ts->cfg, ts->sp };
    g_autoptr(GPtrArray) batches =
        g_ptr_array_new_with_free_func((GDestroyNotify)api_token_batch_free);
    g_autoptr(GString) big = g_string_new("{\"from\": \"leader@abakus.no\", \"recipients\": [");
    struct api_response rs[16], one = { .body = g_string_new(NULL) };

    /* A spool that may not grow past its first 1 MiB map... */
    spool_close(ts->sp);
    ts->cfg.spool.max_size = 1 << 20;
    assert_true(spool_open(&ts->sp, &ts->cfg, NULL));
    a.spool = ts->sp;
    /* ...and 16 tokens of 1,000 addresses of 107 bytes: 1.7 MB of records. */
    for (int r = 0; r < 1000; r++)
        g_string_append_printf(big, "%s\"member%04d.of.a.rather.long.mailing.list@a-long-sub"
                               "domain-name.for-the-shared-commit-test.lists.example.org\"",
                               r ? ", " : "", r);
    g_string_append(big, "]}");
    for (size_t i = 0; i < G_N_ELEMENTS(rs); i++) {
        struct api_token_batch *tb;

        rs[i] = (struct api_response){ .body = g_string_new(NULL) };
        assert_non_null(tb = prepare(&a, big->str, &rs[i]));
        g_ptr_array_add(batches, tb);
    }
    api_token_commit(&a, batches);
    for (size_t i = 0; i < G_N_ELEMENTS(rs); i++) {
        assert_int_equal(rs[i].status, 503);
        assert_non_null(strstr(rs[i].body->str, "\"spool_full\""));
        g_string_free(rs[i].body, TRUE);
    }
    assert_int_equal(token_count(ts->sp), 0);
    assert_null(prepare(&a, "[]", &one));
    assert_int_equal(one.status, 400);
    g_string_truncate(one.body, 0);
    {
        g_autoptr(GPtrArray) lone =
            g_ptr_array_new_with_free_func((GDestroyNotify)api_token_batch_free);

        g_ptr_array_add(lone, prepare(&a, FRESH("a@example.org"), &one));
        api_token_commit(&a, lone);
    }
    assert_int_equal(one.status, 201);
    assert_int_equal(token_count(ts->sp), 1);
    g_string_free(one.body, TRUE);
    temp_spool_free(ts);
}

/* The event body, its signature (RFC 4231 case 2) and the backoff. */
static void test_events(void **state)
{
    struct spool_event ev;
    char sig[API_EVENT_SIGNATURE_LEN + 1];
    g_autofree char *json = NULL, *done = NULL;
    g_autoptr(JsonParser) p = json_parser_new();
    JsonObject *o;

    (void)state;
    api_event_sign("Jefe", 4, "what do ya want for nothing?", 28, sig);
    assert_string_equal(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b9"
                             "64ec3843");
    assert_int_equal(api_event_backoff(1, 300000), 1000);
    assert_int_equal(api_event_backoff(4, 300000), 8000);
    assert_int_equal(api_event_backoff(40, 300000), 300000);
    assert_int_equal(api_event_backoff(3, 2000), 2000);

    spool_event_init(&ev);
    ev.id = 0x0123456789ABCDEFULL;
    ev.type = g_strdup(EVENT_MESSAGE_ACCEPTED);
    ev.time = 1765000000123;
    ev.msg = 0x42;
    ev.sender = g_strdup("alice@abakus.no");
    ev.token = g_strdup("00aa11bb22cc33dd");
    ev.nrcpt = 3;
    json = api_event_json(&ev);
    assert_true(json_parser_load_from_data(p, json, -1, NULL));
    o = json_node_get_object(json_parser_get_root(p));
    assert_string_equal(json_object_get_string_member(o, "id"), "0123456789ABCDEF");
    assert_string_equal(json_object_get_string_member(o, "type"), "message.accepted");
    assert_int_equal(json_object_get_int_member(o, "time"), 1765000000);
    assert_string_equal(json_object_get_string_member(o, "message"), "0000000000000042");
    assert_string_equal(json_object_get_string_member(o, "token"), "00aa11bb22cc33dd");
    assert_int_equal(json_object_get_int_member(o, "recipients"), 3);
    assert_false(json_object_has_member(o, "sent"));
    g_free(ev.type);
    ev.type = g_strdup(EVENT_MESSAGE_DONE);
    ev.bounced = 1;
    done = api_event_json(&ev);
    assert_non_null(strstr(done, "\"sent\":0"));
    assert_non_null(strstr(done, "\"bounced\":1"));
    assert_null(strstr(done, "recipients"));
    spool_event_clear(&ev);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_keys_refused),
        cmocka_unit_test(test_handle_refusals),
        cmocka_unit_test(test_shared_commit),
        cmocka_unit_test(test_shared_commit_fails_for_all),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
