/*
 * spool_steer.c - see spool_steer.h.
 */
#include "spool/spool_steer.h"
#include "spool/delivery.h"

gboolean spool_msg_is_live(enum msg_state s)
{
    return s == MSG_INCOMING || s == MSG_READY || s == MSG_DEFERRED;
}

gboolean spool_msg_hold(struct spool_txn *t, struct spool_msg *m, const char *reason,
                        GError **err)
{
    if (!spool_msg_is_live(m->state))
        return FALSE;
    return spool_dlv_set_held(t, m->id, TRUE, err) &&
           spool_msg_set_state(t, m, MSG_HOLD, reason, err);
}

/*
 * Back to the state it was held from; then, for a message that had
 * deliveries, to what they say now: those leased when it was held went on
 * to their results, which the dispatcher recorded but could not act on
 * while the message was held.  Without the settle a message whose last
 * delivery ended while held would stay ready forever.
 */
gboolean spool_msg_release(struct spool_txn *t, struct spool_msg *m, GError **err)
{
    enum msg_state to = spool_msg_is_live(m->held_from) ? m->held_from : MSG_INCOMING;

    if (m->state != MSG_HOLD)
        return FALSE;
    return spool_dlv_set_held(t, m->id, FALSE, err) &&
           spool_msg_set_state(t, m, to, NULL, err) &&
           (to == MSG_INCOMING || spool_msg_settle(t, m->id, err));
}

gboolean spool_msg_retry(struct spool_txn *t, struct spool_msg *m, GError **err)
{
    unsigned n = 0;

    return spool_dlv_retry_now(t, m->id, &n, err) && n > 0;
}
