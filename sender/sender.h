/*
 * sender.h - postern-sender: the stateless sender worker (SPEC §5).
 *
 * sender_main.c  the main thread: config, secrets, one DEALER socket to the
 *                dispatcher ([workers] dispatch; tcp:// only with CURVE),
 *                the wire protocol of common/wire.h (HELLO, CREDIT, PING,
 *                WHO, SJOB, SDONE) and a clean stop on SIGTERM.
 * sender_slot.c  [workers] slots slot threads; each runs one job at a time
 *                on its own SMTP client and hands the result back.
 * sender_batch.c the results of a running job, held a few ms in the main
 *                thread to go as one SDONE; job ends held to go together.
 *
 * The worker never opens the spool: a job carries every byte it needs, so
 * a worker may run on another host.  It keeps no state worth saving either:
 * killed, its leases run out and the dispatcher gives the jobs to others.
 *
 * Connections: the slots share a pool of relay connections, at most the
 * budget the dispatcher granted (dispatch/dispatch.h (dispatch_conns.c)), busy and idle
 * together.  An idle connection is reused by the next job of the same relay
 * account (RSET, no new TLS handshake or AUTH), never by another account's,
 * and closed after WIRE_CONN_IDLE_MS without one, or at once when the
 * budget shrinks below what is open or another account needs its place.
 */
#ifndef POSTERN_SENDER_H
#define POSTERN_SENDER_H

#include <glib.h>

#include "sender/smtp.h"
#include "common/config.h"
#include "common/wire.h"

/*
 * What a slot hands back: the results of one or more SMTP transactions of
 * a job, and whether the job is over (then its slot is free: CREDIT).
 */
struct sender_done {
    struct wire_send_result res;
    gboolean job_done;
};

/* A relay account (common/config.h): where and as whom its jobs go. */
struct sender_account {
    const struct postern_relay *relay;
    struct relay_url url;
    struct smtp_client_config smtp;     /* read-only once the slots run */
    char *password;                     /* its password_file, never logged */
};

struct sender {
    const struct postern_config *cfg;
    GPtrArray *accounts;                /* struct sender_account *, as cfg->relays */
    char *verp_key;                     /* [bounce] secret_file with verp, else NULL */
    size_t verp_keylen;
    GAsyncQueue *jobs;                  /* struct wire_send_job *: main -> slots */
    GAsyncQueue *done;                  /* struct sender_done *: slots -> main */
    int wake_fd;                        /* eventfd: results, or the pool changed */
    gint stopping;                      /* atomic: SIGTERM came, start no queued job */
    GPtrArray *threads;

    /* The relay connection pool (sender_slot.c), under conn_lock. */
    GMutex conn_lock;
    GCond conn_freed;                   /* a connection went idle or closed */
    GQueue conn_idle;                   /* struct sender_idle *, last used first */
    guint conn_open;                    /* clients in use or idle */
    guint conn_budget;                  /* the dispatcher's grant */
};

/* sender_slot.c */
void sender_slots_start(struct sender *s);
/* After the last job: stop every slot thread, close the connections, join. */
void sender_slots_stop(struct sender *s);
/* The dispatcher's grant (CONNMAX); idle connections beyond it are closed. */
void sender_conns_budget(struct sender *s, guint budget);
/* What to report (CONNS): the budget applied, the connections held. */
void sender_conns_count(struct sender *s, guint *budget, guint *open);

/*
 * The SMTP transactions of a job, each a GArray of guint positions in
 * job->rcpts: every recipient with its own header block alone, those
 * without one (identical copies) together, at most max_rcpt at a time.
 */
GPtrArray *sender_plan(const struct wire_send_job *job, guint max_rcpt);

/*
 * Deliver a job, filling res->results with one result per recipient.
 * *client is an SMTP client of account a from the pool, created here when
 * NULL (SMTP relays) on the account's TLS context (smtp.ssl_ctx).
 * With hand_back set (the slot threads), the results of each transaction
 * but the last are handed back as soon as it ends, so that a worker killed
 * later in the job makes the dispatcher send again only the transaction
 * then in flight; res then holds the last transaction's results, which go
 * in the job's last SDONE with its credit (common/wire.h).
 */
typedef void (*sender_hand_back_fn)(struct sender *s, struct wire_send_result *part);
void sender_deliver(struct sender *s, const struct sender_account *a,
                    struct smtp_client **client, const struct wire_send_job *job,
                    struct wire_send_result *res, sender_hand_back_fn hand_back);

/*
 * sender_batch.c: the parts of a running job held up to SENDER_BATCH_MS,
 * and its end too when hold_end says so.  add takes done: NULL when it is
 * held (a part of a job that goes on, or an end held), else what to send
 * now (a job's end, after the parts held for it).  due takes out a held
 * job's parts, or its whole result, once their time has come (now
 * G_MAXINT64: all of them), NULL when none has; ends is how many jobs
 * that ended are held; wait_ms is how long a poll may sleep, at most
 * wait_ms (-1: no limit).  Times are monotonic microseconds.
 */
#define SENDER_BATCH_MS 5
struct sender_batch;
struct sender_batch *sender_batch_new(void);
void sender_batch_free(struct sender_batch *b);
struct sender_done *sender_batch_add(struct sender_batch *b, struct sender_done *done, gint64 now,
                                     gboolean hold_end);
struct sender_done *sender_batch_due(struct sender_batch *b, gint64 now);
guint sender_batch_ends(const struct sender_batch *b);
long sender_batch_wait_ms(const struct sender_batch *b, gint64 now, long wait_ms);
void sender_done_free(struct sender_done *done);

#endif
