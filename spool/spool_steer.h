/*
 * spool_steer.h - the operator's moves on one message: hold, release,
 * retry.  Shared by every front end (spoolctl, postern-api) so that they
 * cannot differ; each runs inside the caller's write transaction.
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
/* Back to the state it was held in. */
gboolean spool_msg_release(struct spool_txn *t, struct spool_msg *m, GError **err);
/* Make its deferred deliveries due now. */
gboolean spool_msg_retry(struct spool_txn *t, struct spool_msg *m, GError **err);

#endif
