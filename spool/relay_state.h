/*
 * relay_state.h - what the dispatcher knows about the relay that must
 * outlive the dispatcher: the pause after a quota or throttle reply
 * (SPEC §5).  Held in memory only, a restart would send every delivery
 * straight back into the quota.  It is written in the transaction that
 * records the reply that caused it, and read at start.
 */
#ifndef POSTERN_RELAY_STATE_H
#define POSTERN_RELAY_STATE_H

#include <stdint.h>
#include <glib.h>

#include "spool/spool.h"

struct relay_state {
    int64_t paused_until;           /* unix ms; in the past: not paused */
    uint32_t pauses;                /* pauses in a row, for the next one's length */
};

/* A spool that never recorded one: not paused. */
gboolean relay_state_get(struct spool_txn *t, struct relay_state *out, GError **err);
gboolean relay_state_put(struct spool_txn *t, const struct relay_state *st, GError **err);

#endif
