/*
 * spool_hist.h - the latency histograms of /metrics, kept in the spool.
 *
 * Two histograms: transform latency (a mail's arrival to its verdict,
 * incoming -> ready or rejected) and delivery latency (a message's
 * arrival to each delivery's result, sent or bounced).  Arrival is the
 * time in the queue id (milliseconds), so no record is read for it.
 *
 * Each histogram is one record of `meta` ("h.transform", "h.delivery"):
 * the count per bucket (not cumulative) and the sum in milliseconds.
 * Like the counters (spool.h), what a transaction observes is gathered in
 * it and written once at commit: a dispatcher round with 1,000 results
 * rewrites one record, in the transaction that records the results, so
 * every process adds to the same totals and they survive restarts.
 *
 * API:
 *   spool_hist_bucket()       which bucket a latency falls in (pure)
 *   spool_hist_add()          count one latency in a histogram (pure)
 *   spool_hist_encode/decode  the record's bytes (pure)
 *   spool_hist_prometheus()   the _bucket/_sum/_count text (pure)
 *   spool_hist_observe()      count one latency in a write transaction
 *   spool_hist_get()          a histogram as stored, with t's own additions
 *   spool_hist_flush()        spool_write() only: write what t observed
 */
#ifndef POSTERN_SPOOL_HIST_H
#define POSTERN_SPOOL_HIST_H

#include "spool/spool.h"

enum spool_hist { SPOOL_HIST_TRANSFORM, SPOOL_HIST_DELIVERY, SPOOL_HIST_COUNT };

/* Upper bounds in ms, 5 ms to 10 min; one more bucket above is +Inf. */
#define SPOOL_HIST_BOUNDS 16
extern const int64_t spool_hist_bounds_ms[SPOOL_HIST_BOUNDS];

struct spool_hist_data {
    uint64_t buckets[SPOOL_HIST_BOUNDS + 1];   /* per bucket; the last is +Inf */
    uint64_t count;
    uint64_t sum_ms;
};

/* The record: each bucket, then the sum, big-endian 64-bit. */
#define SPOOL_HIST_RECORD ((SPOOL_HIST_BOUNDS + 2) * 8)

/* The first bucket whose bound is >= ms (a negative latency counts as 0). */
unsigned spool_hist_bucket(int64_t ms);
void spool_hist_add(struct spool_hist_data *h, int64_t ms);
void spool_hist_encode(const struct spool_hist_data *h, unsigned char out[SPOOL_HIST_RECORD]);
/* FALSE if len is not a record's size. */
gboolean spool_hist_decode(const unsigned char *p, size_t len, struct spool_hist_data *h);
/* # HELP, # TYPE histogram, the cumulative _bucket{le=...}, _sum (s), _count. */
void spool_hist_prometheus(const struct spool_hist_data *h, const char *name, const char *help,
                           GString *out);

gboolean spool_hist_observe(struct spool_txn *t, enum spool_hist which, int64_t ms,
                            GError **err);
gboolean spool_hist_get(struct spool_txn *t, enum spool_hist which, struct spool_hist_data *h,
                        GError **err);
gboolean spool_hist_flush(struct spool_txn *t, GError **err);

/* A message's arrival in unix ms: the time part of its queue id (spool.h). */
static inline int64_t spool_id_ms(queue_id id)
{
    return (int64_t)(id >> 16);
}

#endif
