/*
 * spool_stats.h - what `spoolctl stats`, `spoolctl metrics` and the API's
 * GET /metrics report, read from the counters in `meta` (never a scan),
 * and its one Prometheus text rendering, so the command and the endpoint
 * print the same text.
 */
#ifndef POSTERN_SPOOL_STATS_H
#define POSTERN_SPOOL_STATS_H

#include "spool/delivery.h"
#include "spool/relay_quota.h"
#include "spool/relay_state.h"
#include "spool/spool_hist.h"
#include "spool/spool.h"
#include "common/config.h"

#define SPOOL_STATS_ACCOUNTS 16      /* [relay NAME] accounts: config.h CONFIG_RELAY_ACCOUNTS */
#define SPOOL_STATS_NAME 64          /* ... and their names' length, with the NUL */

struct spool_stats {
    uint64_t msgs[MSG_STATE_COUNT];
    uint64_t dlvs[DLV_STATE_COUNT];
    uint64_t tokens_active, tokens_used;
    int64_t oldest_age;             /* seconds, oldest message not ended */
    uint64_t spool_bytes;
    struct relay_state relay;       /* the relay pause ([relay], the account "default") */
    guint naccounts;                /* the [relay NAME] accounts' pauses and windows, in config order */
    struct spool_stats_account {
        char name[SPOOL_STATS_NAME];
        struct relay_state relay;
        struct relay_quota quota;   /* its daily_limit's window */
    } accounts[SPOOL_STATS_ACCOUNTS];
    struct relay_quota quota;       /* [relay] daily_limit's window (the account "default") */
    /* Totals (Prometheus counters): spool.h SPOOL_COUNTER_* */
    uint64_t received;
    uint64_t rejected[SPOOL_REJECT_REASONS + 1];   /* spool_reject_reasons, then other */
    uint64_t sent, deferred, bounced;
    uint64_t replies[SPOOL_REPLY_CLASSES];          /* spool_reply_classes */
    uint64_t events_waiting;        /* the outbox of outcome events */
    struct spool_hist_data latency[SPOOL_HIST_COUNT];  /* spool_hist.h */
};

/*
 * One short read transaction.  relays (struct postern_relay *, config.h;
 * may be NULL): the accounts whose pauses to read besides the default's.
 */
gboolean spool_stats_read(struct spool *sp, const GPtrArray *relays, struct spool_stats *st,
                          GError **err);
/* Append the Prometheus text format (version 0.0.4) of st to out. */
void spool_stats_prometheus(const struct spool_stats *st, GString *out);

#endif
