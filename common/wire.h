/*
 * wire.h - what the dispatcher and its workers say over ZeroMQ.
 *
 * Workers are DEALER sockets connected to the dispatcher's ROUTER at
 * [workers] dispatch.  Every message is two frames: a command word and a
 * payload: SJOB's and SDONE's in a binary layout of their own
 * (common/wire_job.c), the others a GVariant (its type string is given
 * with each command below).
 * Nothing here is the truth: the spool is.  A lost or repeated message
 * costs at most a lease expiry, never a delivery.
 *
 *   worker -> dispatcher
 *     HELLO   (suu)  kind ("transform" | "sender"), jobs it takes now (free
 *                    slots; a sender: WIRE_JOBS_PER_SLOT a slot, less its jobs),
 *                    WIRE_VERSION; sent on start and whenever the
 *                    dispatcher seems to have forgotten us
 *     CREDIT  (u)    this many more jobs may be sent (as HELLO's); a sender
 *                    says it only for a job that ends without an SDONE to
 *                    carry its credit, or whose SDONE could not be sent
 *     PING    ()     heartbeat, every WIRE_HEARTBEAT_MS
 *     TDONE   (tts)  transform lease, message id, outcome word
 *     SDONE   see struct wire_send_result (its credit: one ZeroMQ message
 *                    a delivery fewer than an SDONE and a CREDIT)
 *     CONNS   (uu)   senders: the connection budget I apply, relay connections I hold
 *   dispatcher -> worker
 *     TJOB    (tt)   transform lease, message id
 *     SJOB    see struct wire_send_job
 *     PING    ()     heartbeat
 *     WHO     ()     "I do not know you": the worker sends HELLO again
 *     CONNMAX (u)    senders: open at most this many relay connections
 *
 * How the dispatcher shares [relay] max_connections out with CONNMAX and
 * CONNS is in dispatch/dispatch.h (dispatch_conns.c).
 */
#ifndef POSTERN_WIRE_H
#define POSTERN_WIRE_H

#include <glib.h>
#include <stdint.h>

/*
 * What HELLO says: both ends must speak the same.  A dispatcher takes no
 * worker of another version (it logs which), so none gets a job whose
 * SDONE it would misread; a worker of version 1 (HELLO "(su)") is told
 * apart from a malformed HELLO.  An SDONE of version 1 still in flight at
 * an upgrade is refused as malformed (its deliveries go again when their
 * lease expires) or, misread, checked against the spool's lease like any.
 * From version 3 SJOB and SDONE start with the version byte, so one of a
 * later version is refused as such, never misread.  An SDONE of version 2
 * starts with its little-endian credit (0 or 1), never 3; an SJOB goes
 * only to a worker whose HELLO said the dispatcher's own version (one of
 * version 2 takes no worker of 3, and the reverse).
 *   1  HELLO (su); SDONE (ttsa(uqssusd)), a CREDIT after each job
 *   2  HELLO (suu); SDONE (uttsa(uqssusd)): the job's credit first
 *   3  SJOB and SDONE in the binary layout of common/wire_job.c
 */
#define WIRE_VERSION 3

#define WIRE_HEARTBEAT_MS 1000
#define WIRE_DEAD_AFTER_MS 5000     /* a peer silent this long is gone */

/* Frame 0 of every message. */
#define WIRE_HELLO "HELLO"
#define WIRE_CREDIT "CREDIT"
#define WIRE_PING "PING"
#define WIRE_TDONE "TDONE"
#define WIRE_SDONE "SDONE"
#define WIRE_TJOB "TJOB"
#define WIRE_SJOB "SJOB"
#define WIRE_WHO "WHO"
#define WIRE_CONNMAX "CONNMAX"
#define WIRE_CONNS "CONNS"

/*
 * A sender takes up to this many jobs per slot: one running, the others
 * queued behind it, so that a slot whose job ends starts the next at once
 * instead of idling until the dispatcher's next round, a durable commit
 * away; the dispatcher then records the results of many jobs per round
 * (docs/benchmarks.md, "Jobs queued at the sender").  The dispatcher leases
 * a worker at most this many jobs per relay connection it has granted it
 * (dispatch_conns.c), so a queue is never longer than a slot's share.
 */
#define WIRE_JOBS_PER_SLOT 8

/* A sender closes a relay connection after this long without a job; the
 * dispatcher grants nothing for this long after its start, so that the
 * idle connections of workers it has not heard from yet are closed. */
#define WIRE_CONN_IDLE_MS 2000

/* One recipient of a send job: its own header block, or NULL when shared. */
struct wire_rcpt {
    uint32_t idx;
    char *rcpt;
    GBytes *header;
};

/*
 * SJOB: everything a stateless sender needs for one message's recipients.
 * The bytes sent to a recipient are its own header block (personalised
 * copies: DKIM-Signature and To:) followed by `body`; recipients with no
 * header block get `body` alone, identical copies that may share one SMTP
 * transaction.  mail_from "" is the null sender (notices).  account names
 * the relay account (common/config.h) the worker delivers it through.
 */
#define WIRE_ACCOUNT_DEFAULT "default"  /* = CONFIG_RELAY_DEFAULT */
struct wire_send_job {
    uint64_t lease;
    uint64_t msg;
    char *mail_from;
    char *account;                  /* NULL when encoded: "default" */
    GBytes *body;                   /* the outgoing copy's common bytes */
    GArray *rcpts;                  /* struct wire_rcpt */
    int64_t received;               /* not on the wire: monotonic us the worker took it */
};

/*
 * One recipient's outcome, as the SMTP client reported it: a reply (code,
 * status, text) or a failure without one (code 0, error set to an enum
 * smtp_error of sender/smtp.h).  The dispatcher classifies it.
 */
struct wire_rcpt_result {
    uint32_t idx;
    uint16_t code;
    char *status;                   /* RFC 3463 "x.y.z", "" when none */
    char *text;
    uint32_t error;                 /* enum smtp_error, 0 when a reply came */
    char *relay;                    /* host[ip]:port or "none", for the log */
    double seconds;                 /* time spent on the attempt */
};

/*
 * SDONE: account is the job's (a relay pause is that account's).  credit
 * is what CREDIT would say after it: 1 on the job's last SDONE when the
 * worker takes another job, else 0.
 */
struct wire_send_result {
    uint32_t credit;
    uint64_t lease;
    uint64_t msg;
    char *account;                  /* NULL when encoded: "default" */
    GArray *results;                /* struct wire_rcpt_result */
};

/*
 * common/wire_job.c.  A decoder refuses a payload cut short, with bytes
 * past its end, of another version, with flags it does not know or with
 * a string that is not UTF-8, saying why in err (WIRE_ERROR); the struct
 * is then to be cleared all the same.
 */
#define WIRE_ERROR wire_error_quark()
GQuark wire_error_quark(void);

void wire_send_job_init(struct wire_send_job *job);
GBytes *wire_send_job_encode(const struct wire_send_job *job);
gboolean wire_send_job_decode(GBytes *payload, struct wire_send_job *job, GError **err);
void wire_send_job_clear(struct wire_send_job *job);

GBytes *wire_send_result_encode(const struct wire_send_result *res);
gboolean wire_send_result_decode(GBytes *payload, struct wire_send_result *res, GError **err);
void wire_send_result_clear(struct wire_send_result *res);
void wire_send_result_init(struct wire_send_result *res);
/* Clear and free one made with g_new0() (a GDestroyNotify). */
void wire_send_result_free(gpointer res);

/* Small payloads: encode a GVariant of the given type, decode and check it. */
GBytes *wire_pack(const char *type, ...);
gboolean wire_unpack(GBytes *payload, const char *type, ...);

/* zmq framing: [identity] command payload.  identity may be NULL (DEALER side). */
gboolean wire_send(void *sock, GBytes *identity, const char *cmd, GBytes *payload);
/* Receive one message without blocking; FALSE when none is waiting. */
gboolean wire_recv(void *sock, gboolean with_identity, GBytes **identity, char **cmd,
                   GBytes **payload);

#endif
