/*
 * wire_job.c - the SJOB and SDONE payloads (see wire.h): encoding and a
 * bounds-checked decoding, no I/O.
 *
 * A binary layout like the spool's delivery records (spool/delivery.c):
 * WIRE_VERSION as the first byte, big-endian fixed-size fields, each
 * string or byte block as a 32-bit big-endian length and its bytes.  The
 * GVariants these were cost a sender more than the rest of a delivery
 * (g_variant_is_normal_form() walks every byte of the body) and the
 * dispatcher a third of its user-space instructions (docs/benchmarks.md).
 *
 *   SJOB   0  version     1  flags (WIRE_F_BODY)   2  lease (64)
 *         10  msg (64)   18  recipient count (32)  22  mail_from, account,
 *         body (when WIRE_F_BODY), then each recipient: idx (32), flags
 *         (WIRE_F_HEADER), address, header block (when WIRE_F_HEADER)
 *   SDONE  0  version     1  credit (32)    5  lease (64)   13  msg (64)
 *         21  result count (32)   25  account, then each result: idx (32),
 *         code (16), error (32), seconds (64, IEEE 754 bits), status, text,
 *         relay
 *
 * A payload cut short, with bytes past its end, of another version byte,
 * with flags it does not know or with a string that is not UTF-8 (or
 * holds a NUL) is refused with a GError that says where: what decodes
 * encodes again to the same bytes.  Byte blocks of a decoded job are slices of the
 * payload, not copies.
 */
#include "common/wire.h"

#include <string.h>

#define WIRE_F_BODY 0x01
#define WIRE_F_HEADER 0x01

G_DEFINE_QUARK(postern-wire-error-quark, wire_error)

/* ---- encoding ------------------------------------------------------------------------- */

static void put_u8(GByteArray *out, guint8 v)
{
    g_byte_array_append(out, &v, 1);
}

static void put_u16(GByteArray *out, guint16 v)
{
    v = GUINT16_TO_BE(v);
    g_byte_array_append(out, (const guint8 *)&v, sizeof(v));
}

static void put_u32(GByteArray *out, guint32 v)
{
    v = GUINT32_TO_BE(v);
    g_byte_array_append(out, (const guint8 *)&v, sizeof(v));
}

static void put_u64(GByteArray *out, guint64 v)
{
    v = GUINT64_TO_BE(v);
    g_byte_array_append(out, (const guint8 *)&v, sizeof(v));
}

static void put_data(GByteArray *out, const void *data, gsize len)
{
    g_assert(len <= G_MAXUINT32);
    put_u32(out, (guint32)len);
    if (len)
        g_byte_array_append(out, data, (guint)len);
}

/* NULL is sent as "". */
static void put_str(GByteArray *out, const char *s)
{
    put_data(out, s, s ? strlen(s) : 0);
}

static void put_bytes(GByteArray *out, GBytes *b)
{
    gsize len;
    const void *data = g_bytes_get_data(b, &len);

    put_data(out, data, len);
}

GBytes *wire_send_job_encode(const struct wire_send_job *job)
{
    gsize size = 64 + (job->body ? g_bytes_get_size(job->body) : 0);
    GByteArray *out;

    /* One allocation for the body and the header blocks, the bulk of it. */
    for (guint i = 0; i < job->rcpts->len; i++) {
        const struct wire_rcpt *r = &g_array_index(job->rcpts, struct wire_rcpt, i);
        size += 16 + strlen(r->rcpt) + (r->header ? g_bytes_get_size(r->header) : 0);
    }
    out = g_byte_array_sized_new((guint)size);
    put_u8(out, WIRE_VERSION);
    put_u8(out, job->body ? WIRE_F_BODY : 0);
    put_u64(out, job->lease);
    put_u64(out, job->msg);
    put_u32(out, job->rcpts->len);
    put_str(out, job->mail_from);
    put_str(out, job->account ? job->account : WIRE_ACCOUNT_DEFAULT);
    if (job->body)
        put_bytes(out, job->body);
    for (guint i = 0; i < job->rcpts->len; i++) {
        const struct wire_rcpt *r = &g_array_index(job->rcpts, struct wire_rcpt, i);

        put_u32(out, r->idx);
        put_u8(out, r->header ? WIRE_F_HEADER : 0);
        put_str(out, r->rcpt);
        if (r->header)
            put_bytes(out, r->header);
    }
    return g_byte_array_free_to_bytes(out);
}

GBytes *wire_send_result_encode(const struct wire_send_result *res)
{
    GByteArray *out = g_byte_array_sized_new(64 + 128 * res->results->len);

    put_u8(out, WIRE_VERSION);
    put_u32(out, res->credit);
    put_u64(out, res->lease);
    put_u64(out, res->msg);
    put_u32(out, res->results->len);
    put_str(out, res->account ? res->account : WIRE_ACCOUNT_DEFAULT);
    for (guint i = 0; i < res->results->len; i++) {
        const struct wire_rcpt_result *r = &g_array_index(res->results, struct wire_rcpt_result, i);
        guint64 seconds;

        G_STATIC_ASSERT(sizeof(seconds) == sizeof(r->seconds));
        memcpy(&seconds, &r->seconds, sizeof(seconds));
        put_u32(out, r->idx);
        put_u16(out, r->code);
        put_u32(out, r->error);
        put_u64(out, seconds);
        put_str(out, r->status);
        put_str(out, r->text);
        put_str(out, r->relay);
    }
    return g_byte_array_free_to_bytes(out);
}

/* ---- decoding ------------------------------------------------------------------------- */

/*
 * Every read goes through take(), which checks the length left; after the
 * first failure every read fails, so a decoder checks once per record
 * rather than after each field.
 */
struct reader {
    GBytes *payload;
    const guint8 *data;
    gsize len, off;
    const char *what;               /* "SJOB", "SDONE": for the error */
    GError **err;
    gboolean failed;
};

static void reader_init(struct reader *r, GBytes *payload, const char *what, GError **err)
{
    memset(r, 0, sizeof(*r));
    r->payload = payload;
    r->data = g_bytes_get_data(payload, &r->len);
    r->what = what;
    r->err = err;
}

static gboolean reader_fail(struct reader *r, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static gboolean reader_fail(struct reader *r, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *why = NULL;

    if (r->failed)
        return FALSE;
    r->failed = TRUE;
    va_start(ap, fmt);
    why = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(r->err, WIRE_ERROR, 0, "%s of %zu bytes: %s", r->what,
                r->len, why);
    return FALSE;
}

static const guint8 *take(struct reader *r, gsize n)
{
    const guint8 *p;

    if (r->failed)
        return NULL;
    if (n > r->len - r->off) {
        reader_fail(r, "cut short at byte %zu (%zu more wanted)", r->off, n);
        return NULL;
    }
    p = r->data + r->off;
    r->off += n;
    return p;
}

static guint8 get_u8(struct reader *r)
{
    const guint8 *p = take(r, 1);
    return p ? p[0] : 0;
}

static guint16 get_u16(struct reader *r)
{
    const guint8 *p = take(r, 2);
    return p ? (guint16)(p[0] << 8 | p[1]) : 0;
}

static guint32 get_u32(struct reader *r)
{
    const guint8 *p = take(r, 4);
    return p ? (guint32)p[0] << 24 | (guint32)p[1] << 16 | (guint32)p[2] << 8 | p[3] : 0;
}

static guint64 get_u64(struct reader *r)
{
    guint64 hi = get_u32(r);
    return hi << 32 | get_u32(r);
}

/* A string: UTF-8 without NUL, as the GVariant "s" it replaces; NULL when refused. */
static char *get_str(struct reader *r, const char *field)
{
    guint32 len = get_u32(r);
    gsize at = r->off;
    const guint8 *p = take(r, len);

    if (!p)
        return NULL;
    if (memchr(p, 0, len) || !g_utf8_validate_len((const char *)p, len, NULL)) {
        reader_fail(r, "%s at byte %zu is not UTF-8 text", field, at);
        return NULL;
    }
    return g_strndup((const char *)p, len);
}

/* A byte block: a slice of the payload. */
static GBytes *get_bytes(struct reader *r)
{
    guint32 len = get_u32(r);
    gsize at = r->off;

    return take(r, len) ? g_bytes_new_from_bytes(r->payload, at, len) : NULL;
}

static gboolean get_version(struct reader *r)
{
    guint8 version = get_u8(r);

    if (!r->failed && version != WIRE_VERSION)
        return reader_fail(r, "wire version %u, this end %u", version, WIRE_VERSION);
    return !r->failed;
}

static gboolean reader_end(struct reader *r)
{
    if (!r->failed && r->off != r->len)
        reader_fail(r, "%zu bytes past its end", r->len - r->off);
    return !r->failed;
}

static void wire_rcpt_clear(gpointer p)
{
    struct wire_rcpt *r = p;
    g_free(r->rcpt);
    if (r->header)
        g_bytes_unref(r->header);
}

void wire_send_job_init(struct wire_send_job *job)
{
    memset(job, 0, sizeof(*job));
    job->rcpts = g_array_new(FALSE, TRUE, sizeof(struct wire_rcpt));
    g_array_set_clear_func(job->rcpts, wire_rcpt_clear);
}

gboolean wire_send_job_decode(GBytes *payload, struct wire_send_job *job, GError **err)
{
    struct reader r;
    guint8 flags;
    guint32 n;

    wire_send_job_init(job);
    reader_init(&r, payload, "SJOB", err);
    if (!get_version(&r))
        return FALSE;
    flags = get_u8(&r);
    if (flags & ~WIRE_F_BODY)
        reader_fail(&r, "unknown flags 0x%02x", flags);
    job->lease = get_u64(&r);
    job->msg = get_u64(&r);
    n = get_u32(&r);
    job->mail_from = get_str(&r, "the sender");
    job->account = get_str(&r, "the account");
    if (flags & WIRE_F_BODY)
        job->body = get_bytes(&r);
    /* The array grows as recipients are read: a false count allocates nothing. */
    for (guint32 i = 0; i < n && !r.failed; i++) {
        struct wire_rcpt rc = { 0 };

        rc.idx = get_u32(&r);
        flags = get_u8(&r);
        if (flags & ~WIRE_F_HEADER)
            reader_fail(&r, "unknown flags 0x%02x of recipient %u", flags, i);
        rc.rcpt = get_str(&r, "a recipient");
        if (flags & WIRE_F_HEADER)
            rc.header = get_bytes(&r);
        g_array_append_val(job->rcpts, rc);
    }
    return reader_end(&r);
}

void wire_send_job_clear(struct wire_send_job *job)
{
    g_free(job->mail_from);
    g_free(job->account);
    if (job->body)
        g_bytes_unref(job->body);
    if (job->rcpts)
        g_array_unref(job->rcpts);
    memset(job, 0, sizeof(*job));
}

static void wire_result_clear(gpointer p)
{
    struct wire_rcpt_result *r = p;
    g_free(r->status);
    g_free(r->text);
    g_free(r->relay);
}

void wire_send_result_init(struct wire_send_result *res)
{
    memset(res, 0, sizeof(*res));
    res->results = g_array_new(FALSE, TRUE, sizeof(struct wire_rcpt_result));
    g_array_set_clear_func(res->results, wire_result_clear);
}

gboolean wire_send_result_decode(GBytes *payload, struct wire_send_result *res, GError **err)
{
    struct reader r;
    guint32 n;

    wire_send_result_init(res);
    reader_init(&r, payload, "SDONE", err);
    if (!get_version(&r))
        return FALSE;
    res->credit = get_u32(&r);
    res->lease = get_u64(&r);
    res->msg = get_u64(&r);
    n = get_u32(&r);
    res->account = get_str(&r, "the account");
    for (guint32 i = 0; i < n && !r.failed; i++) {
        struct wire_rcpt_result rr = { 0 };
        guint64 seconds;

        rr.idx = get_u32(&r);
        rr.code = get_u16(&r);
        rr.error = get_u32(&r);
        seconds = get_u64(&r);
        memcpy(&rr.seconds, &seconds, sizeof(rr.seconds));
        rr.status = get_str(&r, "a status");
        rr.text = get_str(&r, "a reply text");
        rr.relay = get_str(&r, "a relay");
        g_array_append_val(res->results, rr);
    }
    return reader_end(&r);
}

void wire_send_result_clear(struct wire_send_result *res)
{
    g_free(res->account);
    if (res->results)
        g_array_unref(res->results);
    memset(res, 0, sizeof(*res));
}

void wire_send_result_free(gpointer res)
{
    wire_send_result_clear(res);
    g_free(res);
}
