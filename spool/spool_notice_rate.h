/*
 * spool_notice_rate.h - how many rejection notices an address got this hour.
 *
 * Anyone can mail the restricted address with a token owner's envelope
 * sender and a made-up token; each such message would make a signed "Not
 * sent" notice to that owner. The transform asks here, in the write
 * transaction that stores the notice, whether one more may go: at most max
 * per address per clock hour, and none that repeats one already sent that
 * hour (same digest: reason and Subject). The count is in the spool, so
 * every transform worker sees the others' notices, and a rolled-back
 * transaction takes its count back with it.
 *
 * Database notice_rate: key = address (spool_token_addr_key(): any case of
 * it is the same address) \0 hour (8, big-endian,
 * unix time / 3600); value = GVariant a{sv}: "count" u, "digests" at (the
 * digests of the notices that went).  Older hours of an address are
 * removed when it gets a new one.
 */
#ifndef POSTERN_SPOOL_NOTICE_RATE_H
#define POSTERN_SPOOL_NOTICE_RATE_H

#include "spool/spool.h"

enum spool_notice_rate_verdict {
    NOTICE_RATE_SEND,               /* counted: store the notice */
    NOTICE_RATE_DUPLICATE,          /* the same notice went this hour */
    NOTICE_RATE_LIMITED,            /* max notices went this hour */
};

/*
 * Inside a write transaction: the verdict for one more notice to addr at
 * unix time now with this digest, counting it when it may go. max 0 means
 * no limit (and no record). FALSE only on a spool error.
 */
gboolean spool_notice_rate_take(struct spool_txn *t, const char *addr, int64_t now,
                                uint64_t digest, unsigned max,
                                enum spool_notice_rate_verdict *verdict, GError **err);

/* The number counted for addr in the hour of now (0 when none); for tests and spoolctl. */
unsigned spool_notice_rate_count(struct spool_txn *t, const char *addr, int64_t now);

#endif
