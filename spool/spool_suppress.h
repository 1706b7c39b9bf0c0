/*
 * spool_suppress.h - the suppression lists: bounce scores per list and
 * address, and the addresses that no longer get a list's copies ([bounce]
 * verp, and unsubscribe; docs/design.md §4.7 and §9).
 *
 * Mailman's model: a hard bounce counts 1, a soft one 0.5, at most one
 * bounce a day counts; a score whose last counted bounce is older than
 * [bounce] score_window starts again from 0; at [bounce] score_threshold
 * the address is suppressed.  The transform counts (in the transaction
 * that ends the bounce message) and asks, when it plans copies, whether a
 * recipient is suppressed; an unsubscribe (postern-api's one-click link,
 * the transform's mailto form) suppresses at once; spoolctl lists, adds
 * and removes.
 *
 * Per list: an address that leaves one list still gets the others'.  A
 * list is named as config.h names it ("default" for the global keys').
 *
 * Database suppress: key = address (spool_token_addr_key(): any case of
 * it is the same address) for the default list, "list NUL address" for
 * any other (an address holds no NUL: the two never meet, and the records
 * written before lists, keyed by the address alone, are the default
 * list's as they were); value = GVariant a{sv}: "addr" s (as first seen),
 * "list" s, "score" d, "last" x (unix s of the last counted bounce),
 * "since" x (unix s it was suppressed, 0: it is not), "hard" u, "soft" u,
 * "reason" s.
 */
#ifndef POSTERN_SPOOL_SUPPRESS_H
#define POSTERN_SPOOL_SUPPRESS_H

#include "spool/spool.h"

struct spool_suppress {
    char *list;                     /* "default" for the global keys' list */
    char *addr;
    double score;
    int64_t last;                   /* unix s: the last bounce that counted */
    int64_t since;                  /* unix s: suppressed since; 0: not suppressed */
    uint32_t hard, soft;            /* bounces counted */
    char *reason;                   /* why suppressed, or the last bounce's status */
};

void spool_suppress_clear(struct spool_suppress *s);

/* addr's record on list: TRUE with *found FALSE when it has none (no error). */
gboolean spool_suppress_get(struct spool_txn *t, const char *list, const char *addr,
                            struct spool_suppress *s, gboolean *found, GError **err);
gboolean spool_suppress_put(struct spool_txn *t, const struct spool_suppress *s, GError **err);
/* Remove addr's record on list (suppression and score): *found says whether it had one. */
gboolean spool_suppress_remove(struct spool_txn *t, const char *list, const char *addr,
                               gboolean *found, GError **err);
/* Is addr suppressed on list?  A spool error reads as no (the copy goes). */
gboolean spool_suppress_is(struct spool_txn *t, const char *list, const char *addr);

/*
 * Count one bounce of addr at unix time now: hard (1) or soft (0.5).  When
 * it takes the score to threshold, the address is suppressed: a log line
 * and an address.suppressed event at commit, *suppressed TRUE.
 */
gboolean spool_suppress_bounce(struct spool_txn *t, const char *list, const char *addr,
                               gboolean hard,
                               const char *status, int64_t now, int64_t window,
                               double threshold, gboolean *suppressed, GError **err);

/*
 * Suppress addr on list now, whatever its score: the score is set to
 * threshold; a log line and the event `event` (EVENT_ADDRESS_SUPPRESSED
 * for spoolctl suppress add, EVENT_UNSUBSCRIBED for an unsubscribe) with
 * reason as its reply.  *added FALSE when it already was: nothing is
 * written (an unsubscribe is idempotent).
 */
gboolean spool_suppress_add(struct spool_txn *t, const char *list, const char *addr,
                            const char *reason, const char *event, int64_t now,
                            double threshold, gboolean *added, GError **err);

/*
 * An operator's move (spoolctl, the platform's API), as one write
 * transaction: add suppresses addr on list now (spool_suppress_add(),
 * event address.suppressed, reason as given), else its record is
 * removed.  *changed FALSE: it already was suppressed, or had no record.
 */
gboolean spool_suppress_change(struct spool *sp, const char *list, const char *addr, gboolean add,
                               const char *reason, double threshold, gboolean *changed,
                               GError **err);

/* Every record, in key order (scores as well as suppressions; the default list first). */
typedef gboolean (*spool_suppress_fn)(const struct spool_suppress *s, void *ctx);
gboolean spool_suppress_foreach(struct spool_txn *t, spool_suppress_fn fn, void *ctx,
                                GError **err);

#endif
