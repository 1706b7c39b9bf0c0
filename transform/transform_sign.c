/*
 * transform_sign.c - DKIM signatures for the outgoing copies (SPEC §4.5).
 *
 * The rewritten message is serialised once; it is never parsed or written
 * again.  Each copy sent is a raw block (signatures, To:) followed by those
 * bytes, and each signature covers the header block as it will be sent:
 * the copy's own To: (and List-Unsubscribe, with one-click unsubscribe)
 * plus the common header.  The body is the same for
 * every copy, so it is hashed once per message, not once per recipient;
 * the common header's signed fields are selected and canonicalised once
 * too (dkim_header_new()), so a copy adds only its own lines.
 */
#include "transform/transform.h"
#include "transform/mime.h"

#include <string.h>

gboolean transform_sign_copy_init(struct transform_copy *c, GBytes *bytes, GError **err)
{
    gsize len;
    const char *data = g_bytes_get_data(bytes, &len);
    size_t body_offset;

    if (!mime_split(data, len, &c->header_len, &body_offset)) {
        g_set_error(err, MIME_ERROR, MIME_ERROR_WRITE, "serialised copy has no blank line");
        return FALSE;
    }
    if (!(c->header = dkim_header_new(data, c->header_len, err)))
        return FALSE;
    c->bytes = g_bytes_ref(bytes);
    dkim_body_hash(data + body_offset, len - body_offset, c->body_hash);
    return TRUE;
}

void transform_sign_copy_clear(struct transform_copy *c)
{
    g_clear_pointer(&c->bytes, g_bytes_unref);
    g_clear_pointer(&c->header, dkim_header_free);
}

GBytes *sign_block(const struct transform *tf, const struct transform_copy *c, const char *prefix,
                   gint64 now, GError **err)
{
    size_t prefix_len = strlen(prefix);
    GString *block = g_string_new(NULL);

    for (guint i = 0; i < tf->keys->len; i++) {
        g_autofree char *sig = dkim_sign_copy(tf->keys->pdata[i], tf->cfg->dkim.domain, c->header,
                                              prefix, prefix_len, c->body_hash, now, err);
        if (!sig) {
            g_string_free(block, TRUE);
            return NULL;
        }
        g_string_append(block, sig);
    }
    g_string_append(block, prefix);
    return g_string_free_to_bytes(block);
}

GBytes *sign_whole(const struct transform *tf, const struct transform_copy *c, const char *prefix,
                   gint64 now, GError **err)
{
    g_autoptr(GBytes) block = sign_block(tf, c, prefix, now, err);
    GByteArray *out;
    gsize n;
    const guint8 *p;

    if (!block)
        return NULL;
    out = g_byte_array_sized_new((guint)(g_bytes_get_size(block) + g_bytes_get_size(c->bytes)));
    p = g_bytes_get_data(block, &n);
    g_byte_array_append(out, p, (guint)n);
    p = g_bytes_get_data(c->bytes, &n);
    g_byte_array_append(out, p, (guint)n);
    return g_byte_array_free_to_bytes(out);
}

/*
 * personalize = false: one copy for all, so it cannot name one recipient.
 * Naming the restricted address instead would invite "reply all" back into
 * Postern; the empty group of RFC 5322 §3.4 discloses nobody.
 */
#define SIGN_TO_SHARED "To: undisclosed-recipients:;\r\n"

/*
 * One thread's share of a personalised message: the blocks of rcpts
 * [from, to), written to blocks[from..to).  Shares write disjoint slots
 * and read only what no one writes while they run (the key's contexts are
 * copied per signature: dkim.h), so they need no lock.
 */
struct sign_share {
    const struct transform *tf;
    const struct transform_copy *c;
    GPtrArray *rcpts, *own;
    gint64 now;
    GBytes **blocks;
    guint from, to;
    GError *err;
};

static gpointer sign_share_run(gpointer data)
{
    struct sign_share *sh = data;

    for (guint i = sh->from; i < sh->to; i++) {
        g_autofree char *to = g_strdup_printf("To: %s\r\n%s", (const char *)sh->rcpts->pdata[i],
                                              sh->own ? (const char *)sh->own->pdata[i] : "");

        if (!(sh->blocks[i] = sign_block(sh->tf, sh->c, to, sh->now, &sh->err)))
            break;
    }
    return NULL;
}

/*
 * How many threads sign n copies.  A worker process is the unit of
 * parallelism ([workers] transforms: one per CPU), so while messages
 * queue the cores are busy without threads, and a thread more per message
 * only contends for them: two workers signing ten RSA copies a message on
 * two threads each relayed 30% less than on one (bench/e2e.sh, 3,082
 * against 4,404 recipients/s) and spent 30% more CPU a recipient.
 * Threads are for a send whose signing alone holds one core for tens of
 * milliseconds: a 5,000-recipient send would wait ~1.2 s on one core while
 * the others idle (issue 12).  The work is counted in Ed25519 signatures
 * (≈ 30 us here), an RSA-2048 one worth SIGN_RSA_WEIGHT of them (openssl
 * speed: 4,750 against 42,000 a second): one thread for each
 * SIGN_THREADED_MIN / 2 of them, from SIGN_THREADED_MIN (~30 ms) on, up to
 * [dkim] sign_threads (0: one per CPU).
 */
#define SIGN_THREADED_MIN 1024
#define SIGN_RSA_WEIGHT 8

/* [dkim] sign_threads, or the CPUs (read once: g_get_num_processors()
 * opens and reads /sys each time, 0.6% of an RSA worker's CPU when every
 * message asked). */
static guint sign_threads_max(const struct transform *tf)
{
    static gsize cpus;

    if (g_once_init_enter(&cpus))
        g_once_init_leave(&cpus, g_get_num_processors());
    return tf->cfg->dkim.sign_threads ? (guint)MIN(tf->cfg->dkim.sign_threads, G_MAXUINT)
                                      : (guint)cpus;
}

guint transform_sign_threads(const struct transform *tf, guint n)
{
    guint64 work = 0;

    for (guint i = 0; i < tf->keys->len; i++)
        work += (guint64)n * (((const struct dkim_key *)tf->keys->pdata[i])->type == DKIM_KEY_RSA
                              ? SIGN_RSA_WEIGHT : 1);
    if (work < SIGN_THREADED_MIN)
        return 1;
    return (guint)MIN(MIN((guint64)sign_threads_max(tf), (guint64)n),
                      work / (SIGN_THREADED_MIN / 2));
}

/* Sign every copy in shares, the caller's thread taking the first. */
static gboolean sign_personal(const struct transform *tf, const struct transform_copy *c,
                              GPtrArray *rcpts, GPtrArray *own, gint64 now, GPtrArray *headers,
                              GError **err)
{
    guint n = rcpts->len, nthreads = transform_sign_threads(tf, n);
    g_autofree GBytes **blocks = g_new0(GBytes *, n);
    g_autofree struct sign_share *shares = g_new0(struct sign_share, nthreads);
    g_autofree GThread **threads = g_new0(GThread *, nthreads);
    gboolean ok = TRUE;

    for (guint t = 0; t < nthreads; t++) {
        shares[t] = (struct sign_share){ tf, c, rcpts, own, now, blocks,
                                         (guint)((guint64)n * t / nthreads),
                                         (guint)((guint64)n * (t + 1) / nthreads), NULL };
        /* A thread that cannot start leaves its share to the caller. */
        if (t > 0)
            threads[t] = g_thread_try_new("sign", sign_share_run, &shares[t], NULL);
    }
    for (guint t = 0; t < nthreads; t++)
        if (!threads[t])
            sign_share_run(&shares[t]);
    for (guint t = 0; t < nthreads; t++) {
        if (threads[t])
            g_thread_join(threads[t]);
        if (shares[t].err && ok) {
            g_propagate_error(err, shares[t].err);
            shares[t].err = NULL;
            ok = FALSE;
        }
        g_clear_error(&shares[t].err);
    }
    for (guint i = 0; i < n; i++) {
        if (ok)
            g_ptr_array_add(headers, blocks[i]);
        else if (blocks[i])
            g_bytes_unref(blocks[i]);
    }
    return ok;
}

gboolean transform_sign_deliveries(const struct transform *tf, GBytes *rewritten, GPtrArray *rcpts,
                                   GPtrArray *own, gint64 now, GBytes **outgoing,
                                   GPtrArray *headers, GError **err)
{
    struct transform_copy c = { 0 };
    gboolean ok;

    if (!transform_sign_copy_init(&c, rewritten, err))
        return FALSE;
    if (!tf->cfg->rewrite.personalize) {
        *outgoing = sign_whole(tf, &c, SIGN_TO_SHARED, now, err);
        for (guint i = 0; i < rcpts->len; i++)
            g_ptr_array_add(headers, NULL);
        transform_sign_copy_clear(&c);
        return *outgoing != NULL;
    }
    ok = sign_personal(tf, &c, rcpts, own, now, headers, err);
    *outgoing = ok ? g_bytes_ref(rewritten) : NULL;
    transform_sign_copy_clear(&c);
    return ok;
}
