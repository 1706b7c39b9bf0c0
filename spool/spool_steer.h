/*
 * spool_steer.h - the operator's moves on one message: hold, release,
 * retry; and the moderator's on a list with approval: approve, discard.
 * Shared by every front end (spoolctl, postern-api) so that they cannot
 * differ; each runs inside the caller's write transaction.
 *
 * Each returns TRUE when it changed m, FALSE with *err unset when the
 * move does not apply to m (hold of an ended message, release of one not
 * held, retry with nothing deferred), FALSE with *err set on a spool error.
 */
#ifndef POSTERN_SPOOL_STEER_H
#define POSTERN_SPOOL_STEER_H

#include "spool/spool.h"

/* incoming, ready or deferred: a message still on its way. */
gboolean spool_msg_is_live(enum msg_state s);
/* Take m and its deliveries out of the schedule; reason goes into its history. */
gboolean spool_msg_hold(struct spool_txn *t, struct spool_msg *m, const char *reason,
                        GError **err);
/* Back to the state it was held in (not when awaiting approval: that is spool_msg_approve()). */
gboolean spool_msg_release(struct spool_txn *t, struct spool_msg *m, GError **err);
/* Make its deferred deliveries due now. */
gboolean spool_msg_retry(struct spool_txn *t, struct spool_msg *m, GError **err);

/*
 * Approval ([list NAME] approval; docs/operations.md, "Approval").  The
 * transform makes the deliveries as for any list and then holds the
 * message with the reason SPOOL_AWAITING_APPROVAL: the hold keeps its
 * deliveries out of the schedule, and approving is releasing it.  Each
 * move writes its event (message.held, .approved, .discarded) and one log
 * line naming who decided.
 */
#define SPOOL_AWAITING_APPROVAL "awaiting approval"
#define SPOOL_DISCARDED "APPROVAL_DISCARDED"   /* rejected: the moderator said no */
#define SPOOL_APPROVAL_EXPIRED "APPROVAL_EXPIRED" /* rejected: nobody decided in time */

/* Is m held for approval (and so something approve or discard acts on)? */
gboolean spool_msg_awaits_approval(const struct spool_msg *m);
/* A ready message of an approval list: hold it until the moderator decides. */
gboolean spool_msg_hold_for_approval(struct spool_txn *t, struct spool_msg *m,
                                     const char *token_id, GError **err);
/* Approved by who (a log word: "link", "spoolctl", "api key NAME"): its copies go. */
gboolean spool_msg_approve(struct spool_txn *t, struct spool_msg *m, const char *who,
                           GError **err);
/*
 * Discarded (reason SPOOL_DISCARDED or SPOOL_APPROVAL_EXPIRED) by who:
 * its deliveries and outgoing copy are removed and it ends rejected, so
 * no copy goes and `spoolctl purge` removes it like any rejected message.
 */
gboolean spool_msg_discard(struct spool_txn *t, struct spool_msg *m, const char *reason,
                           const char *who, GError **err);

#endif
