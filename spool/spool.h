/*
 * spool.h - the LMDB spool: the one place where Postern's truth lives.
 *
 * One LMDB environment in [spool] dir, shared by every local process.
 * Every state change is one write transaction, run through spool_write(),
 * which also grows the map on MDB_MAP_FULL (up to [spool] max_size) and
 * retries, and logs the state changes only once they are committed.
 * Read transactions are short and never held across I/O.
 *
 * Named databases (keys are big-endian so that byte order is time order):
 *
 *   meta        name                    -> value (schema version, last id,
 *                                          counters n.*, relay.pause, latency
 *                                          histograms h.*: spool_hist.h)
 *   messages    id                      -> message record (GVariant a{sv}; its
 *                                          transform lease is in it)
 *   bodies      id . chunk#             -> raw message bytes, 2000-byte chunks
 *   by_state    state . id              -> ""       (list, scan by state)
 *   outgoing    id . chunk#             -> common bytes of the outgoing copy
 *   deliveries  id . rcpt#              -> delivery record (fixed binary layout,
 *                                          spool/delivery.c)
 *   due         time_ms . id . rcpt#    -> ""       (ready and deferred deliveries)
 *   leases      expiry_ms . id . rcpt#  -> lease id (leased deliveries only)
 *   tokens      sha256(token)           -> token record (GVariant a{sv})
 *   token_from  sender . 0 . sha256     -> ""       (tokens owned by an address)
 *   events      event id                -> outcome event (spool_events.h)
 *   suppress    address                 -> bounce score, suppressed since
 *                                          (spool_suppress.h)
 *
 * Only spool/ knows these keys and includes lmdb.h (spool_lmdb.h): other
 * programs use the functions here and in delivery.h and spool_token.h.
 *
 * Chunked bodies: values that fit a page never use overflow pages, so the
 * free list cannot fragment under a churn of large messages; chunks of a
 * new message are appended with MDB_APPEND (ids only grow), so pages fill.
 */
#ifndef POSTERN_SPOOL_H
#define POSTERN_SPOOL_H

#include <glib.h>
#include <stdint.h>

#include "common/config.h"

typedef uint64_t queue_id;

#define QUEUE_ID_LEN 16             /* printed as 16 hex digits */
#define SPOOL_CHUNK 2000            /* fits a 4 KiB page with its key */

enum msg_state {
    MSG_INCOMING, MSG_READY, MSG_DEFERRED, MSG_HOLD, MSG_REJECTED, MSG_DONE,
    MSG_STATE_COUNT
};

enum spool_error_code {
    SPOOL_ERR_FULL = 1,             /* map at max_size, or disk full: 452 4.3.1 */
    SPOOL_ERR_NOT_FOUND,
    SPOOL_ERR_CORRUPT,
    SPOOL_ERR_IO,
    SPOOL_ERR_INVALID,              /* the caller's input breaks a rule: fix it, do not retry */
    SPOOL_ERR_MAP_FULL,             /* internal to spool_write: grow and redo */
};
#define SPOOL_ERROR spool_error_quark()
GQuark spool_error_quark(void);

enum spool_db {
    DB_META, DB_MESSAGES, DB_BODIES, DB_BY_STATE, DB_OUTGOING, DB_DELIVERIES,
    DB_DUE, DB_LEASES, DB_TOKENS, DB_TOKEN_FROM,
    DB_NOTICE_RATE,                 /* spool_notice_rate.h */
    DB_EVENTS,                      /* spool_events.h: the outbox for [events] url */
    DB_SUPPRESS,                    /* spool_suppress.h: bounce scores, suppressed addresses */
    DB_COUNT
};

struct spool;

/*
 * A transaction, with the log lines to emit once (and only if) it commits,
 * and the counter changes it made, written once at commit rather than at
 * every record (a batch of 1,000 deliveries changes one key, not 1,000).
 */
struct spool_txn {
    struct spool *sp;
    void *txn;                      /* the LMDB transaction: spool/ only (spool_lmdb.h) */
    GPtrArray *committed_log;
    GHashTable *counter_deltas;     /* name -> int64 delta */
    void *hist_deltas;              /* the latencies it observed (spool_hist.c), or NULL */
};

/* The envelope and queue state of one message. */
struct spool_msg {
    queue_id id;
    enum msg_state state;
    enum msg_state held_from;       /* state to go back to on release */
    int64_t arrival;                /* unix seconds */
    int64_t since;                  /* when state was entered */
    uint64_t size;                  /* bytes as received */
    char *sender;                   /* MAIL FROM, "" for the null sender */
    GPtrArray *recipients;          /* RCPT TO addresses accepted */
    char *client;                   /* client address */
    char *helo;                     /* LHLO/EHLO/HELO name */
    char *proto;                    /* LMTP, ESMTP, SMTP */
    char *received;                 /* the Received: header we added */
    char *reason;                   /* why rejected or held, or NULL */
    GPtrArray *history;             /* "time state note" lines */

    /* Set by the dispatcher when it leases the message to a transform
     * worker; the worker commits only while both still match (fencing). */
    uint64_t lease;
    int64_t lease_expiry;           /* unix ms */

    /* Set by the transform. */
    char *kind;                     /* MSG_KIND_*: what the transform must do */
    char *owner;                    /* token owner: who gets the notices */
    queue_id ref;                   /* notice or report: the message it is about */
    char *message_id;               /* Message-ID of the outgoing copies */
};

/* Message kinds.  NULL/"mail" came in through ingest.  A "notice" was made
 * by Postern and already has its deliveries.  A "bounce-report" is a
 * request, queued by the dispatcher when a message ends with bounces, for
 * the transform to write the owner's bounce notice about `ref`. */
#define MSG_KIND_MAIL "mail"
#define MSG_KIND_NOTICE "notice"
#define MSG_KIND_BOUNCE_REPORT "bounce-report"
/* A bounce that came back to a VERP address ([bounce] verp), once the
 * transform recorded it against the delivery `ref`. */
#define MSG_KIND_BOUNCE "bounce"
/* Mail to the unsubscribe address's +CODE ([unsubscribe] one_click), once
 * the transform suppressed the address it names (docs/design.md §9). */
#define MSG_KIND_UNSUBSCRIBE "unsubscribe"

/* Environment */
gboolean spool_open(struct spool **out, const struct postern_config *cfg, GError **err);
void spool_close(struct spool *sp);
/*
 * Let this process write into the reserve that ingest and the transforms
 * leave free (spool_env.c): spoolctl, so that delete and purge work on a
 * full spool, and the dispatcher, so that results are still recorded.
 */
void spool_use_reserve(struct spool *sp);
int spool_reader_check(struct spool *sp);
/*
 * The periodic form every loop calls, whatever its kind: a reader slot
 * left by a killed process pins old pages until mdb_reader_check() clears
 * it, so clear them every SPOOL_READER_CHECK_MS.  *next is the caller's
 * deadline (mono_ms(); 0 at start: the first check is one interval after
 * the one spool_open() does).
 */
#define SPOOL_READER_CHECK_MS 30000
void spool_reader_check_every(struct spool *sp, int64_t *next, int64_t now);
/*
 * Drop this process's mapping of the LMDB pages it has read, so its RSS
 * stays its own memory rather than growing towards the spool's size (the
 * pages stay in the page cache; the next access maps them again).  Safe at
 * any time: without MDB_WRITEMAP the map is read-only and file-backed.
 */
void spool_release_pages(struct spool *sp);
uint64_t spool_file_size(struct spool *sp);
const char *spool_dir(struct spool *sp);

/*
 * Run fn inside one write transaction and commit it durably.  On
 * MDB_MAP_FULL the map grows (doubling, up to max_size) and fn runs again
 * from the start, so fn must only act on the transaction it is given.
 */
typedef gboolean (*spool_write_fn)(struct spool_txn *t, void *ctx, GError **err);
gboolean spool_write(struct spool *sp, spool_write_fn fn, void *ctx, GError **err);

gboolean spool_read_begin(struct spool *sp, struct spool_txn *t, GError **err);
void spool_read_end(struct spool_txn *t);

/* Queue a line to log once t commits. */
void spool_txn_log(struct spool_txn *t, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* Queue ids: (milliseconds since the epoch << 16) | sequence, never reused. */
queue_id spool_id_next(struct spool_txn *t, GError **err);
void spool_id_format(queue_id id, char out[QUEUE_ID_LEN + 1]);
gboolean spool_id_parse(const char *text, queue_id *out);

/* State names as in SPEC §6. */
const char *msg_state_name(enum msg_state s);
gboolean msg_state_parse(const char *name, enum msg_state *out);
/*
 * May a message move from one state to another?  The table in
 * spool_msg.c, drawn in docs/architecture.md; spool_msg_set_state()
 * panics on any other move.
 */
gboolean msg_state_can_move(enum msg_state from, enum msg_state to);

/* Messages */
void spool_msg_init(struct spool_msg *m);
void spool_msg_clear(struct spool_msg *m);
gboolean spool_msg_get(struct spool_txn *t, queue_id id, struct spool_msg *m, GError **err);
/*
 * The stored bytes of id's record, or NULL if there is none: lets a caller
 * tell whether the record changed since it read it (compare the bytes)
 * without decoding it.  They point into the map: valid until t ends or
 * next writes, so copy or compare them at once.
 */
/* Only the record's kind (*kind NULL if it has none) and size (size may be
 * NULL), without decoding the rest. */
gboolean spool_msg_get_kind(struct spool_txn *t, queue_id id, char **kind, uint64_t *size,
                            GError **err);
const void *spool_msg_record(struct spool_txn *t, queue_id id, size_t *len);
/* Insert a new message record with its state index entry. */
gboolean spool_msg_insert(struct spool_txn *t, struct spool_msg *m, GError **err);
/* Rewrite the record of an existing message (state unchanged). */
gboolean spool_msg_update(struct spool_txn *t, const struct spool_msg *m, GError **err);
/*
 * Move to a new state: index, history, record, and one log line on commit.
 * reason (NULL clears it) says why: TOKEN_USED, "held by operator", ...
 * Only the moves msg_state_can_move() allows: any other is a bug in the
 * caller and panics (msg_panic), naming the queue id and both states.
 */
gboolean spool_msg_set_state(struct spool_txn *t, struct spool_msg *m, enum msg_state to,
                             const char *reason, GError **err);
/* Remove the message, its bodies, deliveries and index entries. */
gboolean spool_msg_delete(struct spool_txn *t, queue_id id, GError **err);

/*
 * Visit message ids from `from` on: all (state < 0) or one state, in id
 * (= arrival) order.  Callers that may visit many page through with
 * short transactions, resuming from the last id + 1.
 */
typedef gboolean (*spool_id_fn)(queue_id id, void *ctx);
gboolean spool_msg_foreach(struct spool_txn *t, int state, queue_id from, spool_id_fn fn,
                           void *ctx, GError **err);

/*
 * Counters kept in the same transactions as the records they count, so
 * stats never scans: "msg.<state>", "dlv.<state>", "tok.active", ...
 */
gboolean spool_counter_add(struct spool_txn *t, const char *name, int64_t delta, GError **err);
uint64_t spool_counter_get(struct spool_txn *t, const char *name);
/*
 * Totals since the spool was made, only ever added to (Prometheus
 * counters, spool_stats.h): mail received (by ingest), rejected by reason
 * (spool_msg_set_state), delivery results (spool_dlv_put: sent, deferred
 * after an attempt, bounced).
 */
#define SPOOL_COUNTER_RECEIVED "total.received"
#define SPOOL_COUNTER_SENT "total.dlv.sent"
#define SPOOL_COUNTER_DEFERRED "total.dlv.deferred"
#define SPOOL_COUNTER_BOUNCED "total.dlv.bounced"
/*
 * Relay replies by class, one per attempt: "total.reply.<c>" for the
 * first digit c of the last reply (2, 4, 5), "total.reply.none" when the
 * attempt got no reply (connect failed, timed out, cut).
 */
#define SPOOL_REPLY_CLASSES 4
extern const char *const spool_reply_classes[SPOOL_REPLY_CLASSES];  /* "2xx" ... "none" */
const char *spool_counter_reply(int class_index);
int spool_reply_class(const char *reply);
/* The rejection reasons the transform gives, NULL-terminated; others count as "other". */
#define SPOOL_REJECT_REASONS 5
extern const char *const spool_reject_reasons[];
const char *spool_counter_rejected(const char *reason);

/* Bodies: DB_BODIES for the bytes received, DB_OUTGOING for the common copy. */
gboolean spool_body_put(struct spool_txn *t, enum spool_db db, queue_id id,
                        const char *data, size_t len, GError **err);
gboolean spool_body_get(struct spool_txn *t, enum spool_db db, queue_id id,
                        GByteArray *out, GError **err);
gboolean spool_body_delete(struct spool_txn *t, enum spool_db db, queue_id id, GError **err);

#endif
