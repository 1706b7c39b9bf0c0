/*
 * spool_steer.c - see spool_steer.h.
 */
#include "spool/spool_steer.h"
#include "spool/delivery.h"
#include "spool/spool_events.h"

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
static gboolean msg_release(struct spool_txn *t, struct spool_msg *m, GError **err)
{
    enum msg_state to = spool_msg_is_live(m->held_from) ? m->held_from : MSG_INCOMING;

    return spool_dlv_set_held(t, m->id, FALSE, err) &&
           spool_msg_set_state(t, m, to, NULL, err) &&
           (to == MSG_INCOMING || spool_msg_settle(t, m->id, err));
}

/*
 * Not a message awaiting approval: `release --all` after an incident
 * must not send what the moderator has not seen.  That takes approve.
 */
gboolean spool_msg_release(struct spool_txn *t, struct spool_msg *m, GError **err)
{
    if (m->state != MSG_HOLD || spool_msg_awaits_approval(m))
        return FALSE;
    return msg_release(t, m, err);
}

gboolean spool_msg_retry(struct spool_txn *t, struct spool_msg *m, GError **err)
{
    unsigned n = 0;

    return spool_dlv_retry_now(t, m->id, &n, err) && n > 0;
}

gboolean spool_msg_awaits_approval(const struct spool_msg *m)
{
    return m->state == MSG_HOLD && g_strcmp0(m->reason, SPOOL_AWAITING_APPROVAL) == 0;
}

gboolean spool_msg_hold_for_approval(struct spool_txn *t, struct spool_msg *m,
                                     const char *token_id, GError **err)
{
    return spool_msg_hold(t, m, SPOOL_AWAITING_APPROVAL, err) &&
           spool_event_message(t, m, EVENT_MESSAGE_HELD, SPOOL_AWAITING_APPROVAL, token_id, 0,
                               err);
}

gboolean spool_msg_approve(struct spool_txn *t, struct spool_msg *m, const char *who,
                           GError **err)
{
    char id[QUEUE_ID_LEN + 1];

    if (!spool_msg_awaits_approval(m))
        return FALSE;
    spool_id_format(m->id, id);
    spool_txn_log(t, "%s: approved by %s", id, who);
    return msg_release(t, m, err) &&
           spool_event_message(t, m, EVENT_MESSAGE_APPROVED, NULL, NULL, 0, err);
}

/*
 * The copies were made when the message was held: removing them, not
 * bouncing them, so that no bounce report or bounce score follows a
 * decision that was nobody's failure.
 */
gboolean spool_msg_discard(struct spool_txn *t, struct spool_msg *m, const char *reason,
                           const char *who, GError **err)
{
    char id[QUEUE_ID_LEN + 1];

    if (!spool_msg_awaits_approval(m))
        return FALSE;
    spool_id_format(m->id, id);
    spool_txn_log(t, "%s: discarded by %s", id, who);
    return spool_dlv_delete_all(t, m->id, err) &&
           spool_body_delete(t, DB_OUTGOING, m->id, err) &&
           spool_msg_set_state(t, m, MSG_REJECTED, reason, err) &&
           spool_event_message(t, m, EVENT_MESSAGE_DISCARDED, reason, NULL, 0, err);
}
