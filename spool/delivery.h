/*
 * delivery.h - one delivery per (message, recipient): its state, its
 * attempts, and the indexes that let the dispatcher find due work without
 * scanning.
 *
 * A delivery in state ready or deferred has exactly one key in `due`
 * (time it may next be tried); a leased one exactly one in `leases` (when
 * the lease runs out); sent and bounced ones are in neither.  Deliveries of
 * a held message are kept out of `due` until release.  spool_dlv_put()
 * keeps all of this true: callers only set fields and put.
 */
#ifndef POSTERN_DELIVERY_H
#define POSTERN_DELIVERY_H

#include "spool/spool.h"

enum dlv_state { DLV_READY, DLV_LEASED, DLV_DEFERRED, DLV_SENT, DLV_BOUNCED, DLV_STATE_COUNT };

struct spool_dlv {
    queue_id msg;
    uint32_t idx;                   /* recipient number within the message */
    enum dlv_state state;
    gboolean held;                  /* message on hold: not in `due` */
    char *rcpt;
    uint32_t attempts;
    int64_t created;                /* unix seconds */
    int64_t next_try;               /* unix seconds: when due */
    char *last_reply;
    uint64_t lease;                 /* lease id while leased */
    int64_t lease_expiry;           /* unix ms */
    GBytes *header;                 /* per-recipient header block, or NULL */
};

const char *dlv_state_name(enum dlv_state s);
gboolean dlv_state_parse(const char *name, enum dlv_state *out);

void spool_dlv_init(struct spool_dlv *d);
void spool_dlv_clear(struct spool_dlv *d);
gboolean spool_dlv_get(struct spool_txn *t, queue_id msg, uint32_t idx, struct spool_dlv *d,
                       GError **err);
/* Store d and move its index entries to match its state. */
gboolean spool_dlv_put(struct spool_txn *t, const struct spool_dlv *d, GError **err);
/*
 * The same when old is the record as read in this transaction (same msg
 * and idx): its index entry and count go without reading it again.
 */
gboolean spool_dlv_replace(struct spool_txn *t, const struct spool_dlv *old,
                           const struct spool_dlv *d, GError **err);

/* Visit the deliveries of one message in recipient order. */
typedef gboolean (*spool_dlv_fn)(const struct spool_dlv *d, void *ctx);
gboolean spool_dlv_foreach(struct spool_txn *t, queue_id msg, spool_dlv_fn fn, void *ctx,
                           GError **err);
gboolean spool_dlv_counts(struct spool_txn *t, queue_id msg, uint32_t counts[DLV_STATE_COUNT],
                          GError **err);

/*
 * One entry of the `due` or `leases` index: which delivery, and when it
 * comes due or its lease runs out.  Callers see this, never the key.
 */
struct spool_dlv_ref {
    queue_id msg;
    uint32_t idx;
    int64_t at_ms;                  /* unix ms: due time, or lease expiry */
    uint64_t lease;                 /* `leases` only: the lease id (0 if unreadable) */
};

/*
 * Visit `due` (ready and deferred deliveries, not held) or `leases`
 * (leased deliveries) from the head, in time order, while at_ms <=
 * until_ms; fn returns FALSE to stop.  ref points into the walk: copy what
 * you keep.  fn may read the spool in t but must not change deliveries
 * (that would move the cursor): collect, then put after the walk.  No
 * allocation per entry: these run on every dispatcher round.
 */
typedef gboolean (*spool_dlv_ref_fn)(const struct spool_dlv_ref *ref, void *ctx);
gboolean spool_due_foreach(struct spool_txn *t, int64_t until_ms, spool_dlv_ref_fn fn, void *ctx,
                           GError **err);
gboolean spool_lease_foreach(struct spool_txn *t, int64_t until_ms, spool_dlv_ref_fn fn,
                             void *ctx, GError **err);
/* The same walk of `due` from the first entry at or after from (its at_ms, msg, idx). */
gboolean spool_due_foreach_from(struct spool_txn *t, const struct spool_dlv_ref *from,
                                int64_t until_ms, spool_dlv_ref_fn fn, void *ctx, GError **err);
/*
 * The messages that have due work, for a fair round: the first entry of
 * each run of one message's entries at one due time, in `due` order from
 * from (NULL: the head), while at_ms <= until_ms.  The rest of a run is
 * skipped by a seek, not read, so a message with 5,000 due recipients
 * costs as little as one with one.
 */
gboolean spool_due_runs(struct spool_txn *t, const struct spool_dlv_ref *from, int64_t until_ms,
                        spool_dlv_ref_fn fn, void *ctx, GError **err);

/*
 * After msg's deliveries changed (results recorded, or the operator
 * released it): the message becomes ready, deferred or done to match
 * them, unless it is held.  Done with a bounce queues the owner's bounce
 * report (kind MSG_KIND_BOUNCE_REPORT, state incoming: the transform
 * writes and signs it), except for a notice, which gets no report.
 */
gboolean spool_msg_settle(struct spool_txn *t, queue_id msg, GError **err);
/* The same for a message record read in t, which it updates: callers that
 * read it already (the dispatcher's results) do not read it again. */
gboolean spool_msg_settle_msg(struct spool_txn *t, struct spool_msg *m, GError **err);

/*
 * A bounce that came back after the relay took the copy ([bounce] verp,
 * recorded by the transform): the one edge out of sent, sent -> bounced,
 * with reply as its last reply.  Then as for an immediate bounce: the
 * delivery.bounced event (spool_dlv_put), and the owner's bounce report
 * (queued at once when the message is done already, else by
 * spool_msg_settle() when it ends).  *changed FALSE, and nothing written,
 * when the delivery is gone or not sent (still queued: the dispatcher's;
 * bounced already).
 */
gboolean spool_dlv_late_bounce(struct spool_txn *t, queue_id msg, uint32_t idx,
                               const char *reply, gboolean *changed, GError **err);

/* Remove every delivery of msg with its index entries (message deletion). */
gboolean spool_dlv_delete_all(struct spool_txn *t, queue_id msg, GError **err);

/* Hold/release every delivery of msg (taking them out of / back into `due`). */
gboolean spool_dlv_set_held(struct spool_txn *t, queue_id msg, gboolean held, GError **err);
/* Make deferred deliveries of msg due now; *n counts them. */
gboolean spool_dlv_retry_now(struct spool_txn *t, queue_id msg, unsigned *n, GError **err);

#endif
