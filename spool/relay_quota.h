/*
 * relay_quota.h - the relay's daily limit ([relay] daily_limit, SPEC §5):
 * what was sent towards the relay in the last `daily_window` (24 h), kept
 * in the spool so that a restarted dispatcher does not start the day over.
 *
 * The count is of recipients leased to the sender workers: Google's SMTP
 * relay allows a user 10,000 messages and 10,000 recipients a rolling day,
 * and a recipient is never fewer than a message (with personalize = false
 * one transaction carries up to max_rcpt_per_txn of them), so counting
 * recipients keeps both.  A lease that runs out and is leased again counts
 * again: the relay may have taken it.
 *
 * The window is RELAY_QUOTA_PARTS buckets of window / 24 each (an hour
 * for 24 h) plus the bucket now filling, in one ring of RELAY_QUOTA_SPAN:
 * a recipient leaves the count between `window` and `window + bucket`
 * after it was leased, never before, so the relay's own rolling count is
 * never exceeded.  The pure functions below want relay_quota_setup()
 * first (a record read from a spool that never had one is all zero).
 *
 * The record is meta "relay.quota" for the account "default" ([relay])
 * and "relay.quota.NAME" for [relay NAME] (relay_quota.c has the layout):
 * each account counts against its own daily_limit.  It is written by the
 * dispatcher in the transaction that leases, read by spoolctl stats and
 * the metrics.
 */
#ifndef POSTERN_RELAY_QUOTA_H
#define POSTERN_RELAY_QUOTA_H

#include <stdint.h>
#include <glib.h>

#include "spool/spool.h"

#define RELAY_QUOTA_PARTS 24                        /* buckets a window is cut into */
#define RELAY_QUOTA_SPAN (RELAY_QUOTA_PARTS + 1)    /* ... and the one filling now */

struct relay_quota {
    int64_t bucket_ms;              /* window / RELAY_QUOTA_PARTS; 0: never written */
    int64_t newest;                 /* number (unix ms / bucket_ms) of the newest bucket */
    uint32_t counts[RELAY_QUOTA_SPAN];  /* bucket n is counts[n % RELAY_QUOTA_SPAN] */
    uint32_t limit;                 /* [relay] daily_limit as last written */
    int64_t waiting_until;          /* unix ms: the limit is reached, deliveries wait; 0: not */
};

/* account: its name, NULL or "default" for [relay].  A spool that never recorded one: all zero. */
gboolean relay_quota_get(struct spool_txn *t, const char *account, struct relay_quota *out,
                         GError **err);
gboolean relay_quota_put(struct spool_txn *t, const char *account, const struct relay_quota *q,
                         GError **err);

/*
 * Pure: make q count in buckets of window_ms / RELAY_QUOTA_PARTS against
 * limit.  A record kept for another window length moves its whole count
 * into the newest bucket: it then leaves the count late, never early.
 */
void relay_quota_setup(struct relay_quota *q, int64_t window_ms, uint32_t limit, int64_t now_ms);
/* Pure: recipients counted at now_ms (buckets older than the window dropped). */
uint64_t relay_quota_used(const struct relay_quota *q, int64_t now_ms);
/* Pure: how many more may be leased at now_ms (0 at or over the limit). */
uint32_t relay_quota_room(const struct relay_quota *q, int64_t now_ms);
/* Pure: count n recipients leased at now_ms. */
void relay_quota_add(struct relay_quota *q, int64_t now_ms, uint32_t n);
/* Pure: when the oldest counted bucket leaves the window (now_ms if none is counted). */
int64_t relay_quota_next_room(const struct relay_quota *q, int64_t now_ms);

#endif
