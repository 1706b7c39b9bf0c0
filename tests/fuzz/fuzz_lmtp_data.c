/*
 * fuzz_lmtp_data - the DATA reader of ingest/lmtp_proto.h
 * (lmtp_data_begin/feed/clear).
 *
 * The input is what a client sends after "354": message lines, the final
 * ".", maybe the next command. It is read three ways: in one piece, in
 * pieces whose lengths are derived from the input, and one byte at a time
 * (inputs up to 4 KiB). The limits are small and also derived from the
 * input, so that too_big and header_too_big are reached. Every way must
 * give the same result (the reader promises any split works), the stored
 * bytes must have CRLF line ends only, and what was used must never exceed
 * what was fed.
 */
#include <stdint.h>
#include <string.h>

#include <glib.h>

#include "ingest/lmtp_proto.h"
#include "fuzz_util.h"

struct result {
    struct lmtp_data_reader r;
    gboolean done;
    size_t consumed;                /* bytes used up to and including the final "." line */
};

static void check_one(const struct result *res, size_t size)
{
    const struct lmtp_data_reader *r = &res->r;
    const char *out = (const char *)r->out->data;
    size_t bare;

    FUZZ_CHECK(res->consumed <= size, "consumed %zu of %zu", res->consumed, size);
    FUZZ_CHECK(res->done || res->consumed == size, "not done yet %zu of %zu left unused",
               size - res->consumed, size);
    bare = fuzz_bare_lf(out, r->out->len);
    FUZZ_CHECK(bare == (size_t)-1, "bare LF stored at %zu of %u", bare, r->out->len);
    FUZZ_CHECK(r->out->len <= r->seen, "stored %u > seen %" G_GUINT64_FORMAT, r->out->len, r->seen);
    FUZZ_CHECK(r->seen <= 2 * (uint64_t)size, "seen %" G_GUINT64_FORMAT " for %zu bytes", r->seen,
               size);
    FUZZ_CHECK(r->header_bytes <= r->seen, "header bytes > seen");
    FUZZ_CHECK(r->too_big == (r->seen > r->max_size), "too_big %d, seen %" G_GUINT64_FORMAT,
               r->too_big, r->seen);
    FUZZ_CHECK(r->header_too_big == (r->header_bytes > r->max_header), "header_too_big %d",
               r->header_too_big);
    if (!r->too_big && !r->header_too_big)
        FUZZ_CHECK(r->out->len == r->seen, "within limits but stored %u of %" G_GUINT64_FORMAT,
                   r->out->len, r->seen);
    else
        FUZZ_CHECK(r->out->len <= r->max_size, "stored %u over max_size", r->out->len);
}

static void same(const struct result *a, const struct result *b, const char *how)
{
    FUZZ_CHECK(a->done == b->done && a->consumed == b->consumed, "%s: done %d/%d used %zu/%zu",
               how, a->done, b->done, a->consumed, b->consumed);
    FUZZ_CHECK(a->r.seen == b->r.seen && a->r.header_bytes == b->r.header_bytes,
               "%s: seen %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT " header %" G_GUINT64_FORMAT
               "/%" G_GUINT64_FORMAT,
               how, a->r.seen, b->r.seen, a->r.header_bytes, b->r.header_bytes);
    FUZZ_CHECK(a->r.too_big == b->r.too_big && a->r.header_too_big == b->r.header_too_big,
               "%s: limits differ", how);
    FUZZ_CHECK(a->r.in_header == b->r.in_header, "%s: in_header differs", how);
    /* Past a limit the message is refused and what was stored is moot: it
     * depends on where the reads were cut. */
    if (a->r.too_big || a->r.header_too_big)
        return;
    FUZZ_CHECK(a->r.out->len == b->r.out->len
                   && (a->r.out->len == 0
                       || memcmp(a->r.out->data, b->r.out->data, a->r.out->len) == 0),
               "%s: stored bytes differ (%u vs %u)", how, a->r.out->len, b->r.out->len);
}

/* Feed data in pieces: piece(state, left) gives each length (0: one byte). */
static void run(struct result *res, const uint8_t *data, size_t size, uint64_t max_size,
                uint64_t max_header, uint64_t split_seed, int mode)
{
    uint64_t state = split_seed;
    size_t off = 0;

    memset(res, 0, sizeof(*res));
    lmtp_data_begin(&res->r, max_size, max_header);
    while (off < size) {
        size_t n = mode == 0 ? size - off : mode == 1 ? fuzz_piece(&state, size - off) : 1;
        char *piece = fuzz_dup(data + off, n);     /* exact size: over-reads show */
        size_t used = (size_t)-1;
        enum lmtp_data_status st = lmtp_data_feed(&res->r, piece, n, &used);

        free(piece);
        FUZZ_CHECK(used <= n, "used %zu of a %zu-byte read", used, n);
        FUZZ_CHECK(st == LMTP_DATA_DONE || used == n, "MORE but used %zu of %zu", used, n);
        off += used;
        if (st == LMTP_DATA_DONE) {
            res->done = TRUE;
            FUZZ_CHECK(off >= 2 && data[off - 1] == '\n', "DONE not after a line end");
            break;
        }
    }
    /* An empty read changes nothing. */
    if (!res->done) {
        size_t used = (size_t)-1;
        FUZZ_CHECK(lmtp_data_feed(&res->r, "", 0, &used) == LMTP_DATA_MORE && used == 0,
                   "empty read");
    }
    res->consumed = off;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t h = fuzz_hash(data, size);
    uint64_t state = h;
    /* Small limits, sometimes generous: both sides of each limit are reached. */
    uint64_t max_size = (fuzz_next(&state) & 1) ? 1 + fuzz_next(&state) % 512 : 1 << 20;
    uint64_t max_header = (fuzz_next(&state) & 1) ? fuzz_next(&state) % 256 : 1 << 20;
    struct result whole, split, bytes;

    run(&whole, data, size, max_size, max_header, 0, 0);
    check_one(&whole, size);
    run(&split, data, size, max_size, max_header, fuzz_next(&state), 1);
    check_one(&split, size);
    same(&whole, &split, "split");
    if (size <= 4096) {
        run(&bytes, data, size, max_size, max_header, 0, 2);
        check_one(&bytes, size);
        same(&whole, &bytes, "byte by byte");
        lmtp_data_clear(&bytes.r);
    }
    lmtp_data_clear(&whole.r);
    lmtp_data_clear(&split.r);
    FUZZ_CHECK(whole.r.out == NULL, "lmtp_data_clear left the buffer");
    return 0;
}
