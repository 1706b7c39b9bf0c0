/*
 * relay_state.h - what the dispatcher knows about the relay that must
 * outlive the dispatcher: the pause after a quota or throttle reply or a
 * refused AUTH (SPEC §5).  Held in memory only, a restart would send every
 * delivery straight back into the quota.  It is written in the transaction
 * that records the reply that caused it, read by the dispatcher at start
 * and on every tick (so that `spoolctl relay resume` takes effect within a
 * second), and shown by spoolctl list, stats, metrics and relay status.
 */
#ifndef POSTERN_RELAY_STATE_H
#define POSTERN_RELAY_STATE_H

#include <stdint.h>
#include <glib.h>

#include "spool/spool.h"

#define RELAY_REASON_MAX 256

struct relay_state {
    int64_t paused_until;           /* unix ms; in the past or 0: not paused */
    uint32_t pauses;                /* pauses in a row, for the next one's length */
    /*
     * The id sequence (spool_id_next) when the last pause began: a lease
     * id below it was taken before that pause, so a quota reply to it is
     * the same event seen late and must not pause (or double) again.
     */
    uint64_t since;
    char reason[RELAY_REASON_MAX];  /* what caused it: "550 5.4.5 ...", "" when unknown */
};

/*
 * Each relay account (common/config.h) has its own pause: a quota reply to
 * one account's login says nothing of another's.  account is its name;
 * NULL or "default" is [relay], whose record keeps the name it always had.
 */
#define RELAY_ACCOUNT_DEFAULT "default"

/* A spool that never recorded one: not paused. */
gboolean relay_state_get(struct spool_txn *t, const char *account, struct relay_state *out,
                         GError **err);
gboolean relay_state_put(struct spool_txn *t, const char *account, const struct relay_state *st,
                         GError **err);

/* Pure: whether st holds deliveries back at now_ms. */
gboolean relay_state_paused(const struct relay_state *st, int64_t now_ms);

/*
 * Pure: whether the reply to a job leased under `lease` is news about the
 * relay: the job was leased after the last pause began.  A pausing reply
 * is then a new event (pause, and the next one twice as long), a 2xx ends
 * the run of pauses.  A reply to a job leased before was already answered
 * by that pause, and changes neither.
 */
gboolean relay_state_news(const struct relay_state *st, uint64_t lease);

#endif
