/*
 * spool_events.h - the outbox of outcome events for the web platform
 * ([events] url; docs/integration.md, "Outcome events").
 *
 * Each fact the platform cares about (a message accepted or rejected, a
 * delivery bounced, a message done, the relay paused or resumed, an
 * address suppressed or unsubscribed: spool_suppress.h) is
 * written into the `events` database in the same write transaction as the
 * fact itself, so an event exists exactly when its fact was committed: a
 * kill -9 of any daemon loses neither.  postern-api posts them, oldest
 * first, and removes each only after the endpoint answered 2xx
 * (at least once; the event id lets the receiver drop a repeat).
 *
 * Database events: key = event id (8, big-endian; from spool_id_next(),
 * so ids only grow and byte order is commit order); value = GVariant
 * a{sv}: "type" s, "time" x (unix ms), then the fields of its type.
 * meta "events.retry" holds the delivery state postern-api shares with
 * `spoolctl events`: next try (unix ms), failures in a row, last error.
 *
 * Nothing is written unless [events] url is set (spool_open() reads it):
 * without a platform to tell, the outbox must not grow.
 */
#ifndef POSTERN_SPOOL_EVENTS_H
#define POSTERN_SPOOL_EVENTS_H

#include "spool/spool.h"

/* Event types, as the JSON body names them. */
#define EVENT_MESSAGE_ACCEPTED "message.accepted"
#define EVENT_MESSAGE_REJECTED "message.rejected"
#define EVENT_DELIVERY_BOUNCED "delivery.bounced"
#define EVENT_MESSAGE_DONE "message.done"
#define EVENT_RELAY_PAUSED "relay.paused"
#define EVENT_RELAY_RESUMED "relay.resumed"
#define EVENT_RELAY_QUOTA_WAIT "relay.quota_wait"     /* until; reason: the limit */
#define EVENT_ADDRESS_SUPPRESSED "address.suppressed"  /* rcpt: the address; reply: why */
#define EVENT_UNSUBSCRIBED "unsubscribed"              /* rcpt, list; reply: one-click or mailto */
/* Approval ([list NAME] approval): held (reason "awaiting approval", the
 * token), approved, discarded (reason APPROVAL_DISCARDED or APPROVAL_EXPIRED). */
#define EVENT_MESSAGE_HELD "message.held"
#define EVENT_MESSAGE_APPROVED "message.approved"
#define EVENT_MESSAGE_DISCARDED "message.discarded"

#define EVENT_ERROR_MAX 256

/* One event; the fields a type does not use are 0 / NULL. */
struct spool_event {
    uint64_t id;                    /* set by spool_event_add() */
    char *type;                     /* EVENT_* */
    int64_t time;                   /* unix ms; set by spool_event_add() */
    queue_id msg;                   /* message events: the queue id */
    char *token;                    /* accepted, rejected: the token id, if any */
    char *sender;                   /* accepted, rejected: the envelope sender */
    char *reason;                   /* rejected: TOKEN_USED ...; relay.paused: the reply;
                                     * relay.quota_wait: the limit */
    char *rcpt;                     /* delivery.bounced: the address */
    char *reply;                    /* delivery.bounced: the last reply */
    char *list;                     /* address.suppressed, unsubscribed: the list */
    uint32_t nrcpt;                 /* accepted: recipients */
    uint32_t sent, bounced;         /* done */
    int64_t until;                  /* relay.paused, relay.quota_wait: unix ms */
};

/* Where the poster stands: what `spoolctl events` shows as "next try". */
struct spool_events_retry {
    int64_t next_try;               /* unix ms; 0: as soon as there is an event */
    uint32_t failures;              /* tries in a row that got no 2xx */
    char error[EVENT_ERROR_MAX];    /* the last one's error, "" after a success */
};

void spool_event_init(struct spool_event *ev);
void spool_event_clear(struct spool_event *ev);

/* Is the outbox written at all ([events] url set)? */
gboolean spool_events_enabled(struct spool *sp);

/*
 * Append ev in t (its id and time are set here), with one log line at
 * commit.  Does nothing, successfully, when events are not enabled.
 */
gboolean spool_event_add(struct spool_txn *t, struct spool_event *ev, GError **err);

/*
 * The helpers the writers of the facts call, one line at each site.  The
 * message events are only for mail that came in (kind "mail" or unset):
 * notices and bounce reports are Postern's own.
 */
gboolean spool_event_message(struct spool_txn *t, const struct spool_msg *m, const char *type,
                             const char *reason, const char *token, uint32_t nrcpt,
                             GError **err);
gboolean spool_event_done(struct spool_txn *t, const struct spool_msg *m, uint32_t sent,
                          uint32_t bounced, GError **err);
gboolean spool_event_bounced(struct spool_txn *t, queue_id msg, const char *rcpt,
                             const char *reply, GError **err);

/* The oldest event (*found FALSE when the outbox is empty). */
gboolean spool_event_first(struct spool_txn *t, struct spool_event *ev, gboolean *found,
                           GError **err);
/* Remove event id (delivered); one that is gone already is no error. */
gboolean spool_event_delete(struct spool_txn *t, uint64_t id, GError **err);
/* Events waiting, and the time of the oldest (0 when none). */
gboolean spool_events_backlog(struct spool_txn *t, uint64_t *count, int64_t *oldest,
                              GError **err);

gboolean spool_events_retry_get(struct spool_txn *t, struct spool_events_retry *out,
                                GError **err);
gboolean spool_events_retry_put(struct spool_txn *t, const struct spool_events_retry *st,
                                GError **err);

#endif
