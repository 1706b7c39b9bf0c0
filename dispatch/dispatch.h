/*
 * dispatch.h - postern-dispatch: owns the schedule.
 *
 * One process, one thread, one zmq_poll loop.  It leases `incoming`
 * messages to transform workers and due deliveries to sender workers, by
 * credit, and records the senders' results.  Every lease is written to the
 * spool before the job is sent, so a dispatcher restart forgets nothing:
 * leases run out by their expiry time and the work returns to the queue.
 */
#ifndef POSTERN_DISPATCH_H
#define POSTERN_DISPATCH_H

#include <glib.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/wire.h"
#include "dispatch/retry_policy.h"
#include "sender/smtp.h"
#include "spool/delivery.h"
#include "spool/relay_state.h"
#include "spool/spool.h"

enum worker_kind { WORKER_TRANSFORM, WORKER_SENDER };

struct dispatch_worker {
    void *sock;                     /* the ROUTER it came in on */
    GBytes *identity;               /* ZeroMQ routing id on that socket */
    char *name;                     /* hex of the identity, for logs */
    enum worker_kind kind;
    unsigned credit;                /* jobs it asked for and has not got */
    int64_t last_seen;              /* monotonic ms */
    /* Senders: relay connections (dispatch_conns.c, below). */
    unsigned jobs;                  /* jobs in flight on it, queued ones too */
    unsigned ended;                 /* ... of which ended, their results not recorded */
    unsigned conn_granted;          /* the budget we last sent (CONNMAX) */
    unsigned conn_applied;          /* the budget it last said it applies (CONNS) */
    unsigned conn_held;             /* connections it last said it holds (CONNS) */
};

/*
 * A sender job in flight: what results refer to.  worker is NULL for a
 * job of a worker we do not know (leased before our start, or its worker
 * went silent): it may hold a relay connection until its result comes or
 * its lease expires.
 */
struct dispatch_job {
    uint64_t lease;
    queue_id msg;
    struct dispatch_worker *worker;
    unsigned rcpts;
    const struct postern_relay *account;    /* the relay account it went to */
    struct dispatch_account *acct;  /* ... as scheduled; NULL: leased before our start */
};

/*
 * A relay connection of an account that a worker may keep open, idle,
 * after a job: until a job of that account on that worker takes it again
 * or the worker closes it (WIRE_CONN_IDLE_MS after the job).
 */
struct dispatch_idle {
    char *worker;                   /* its name (the worker may be gone) */
    int64_t until;                  /* monotonic ms */
};

/* A relay account as the dispatcher schedules it (dispatch_accounts.c). */
struct dispatch_account {
    const struct postern_relay *relay;
    gboolean conns_counted;         /* several accounts, not a Maildir: its connections count */
    int64_t paused_until;           /* unix ms: its quota, throttle or AUTH refused */
    unsigned pauses;                /* pauses in a row */
    uint64_t pause_since;           /* id sequence when it began (spool/relay_state.h) */
    gboolean held;                  /* paused at the last look: log the resume once */
    int64_t quota_wait_until;       /* unix ms: its daily_limit reached (spool/relay_quota.h) */
    double rate_tokens;             /* its rate's token bucket */
    int64_t rate_refilled;          /* monotonic ms */
    unsigned jobs;                  /* its jobs in flight */
    GArray *idle;                   /* struct dispatch_idle */
    /* What it may take in this lease round (dispatch_deliver.c): */
    unsigned round_txns, round_conns;   /* its rate and connection budgets at the start */
    unsigned left_txns, left_conns;     /* ... what the jobs picked so far leave */
    uint32_t left_rcpts;                /* its daily_limit's room left (G_MAXUINT32: none) */
};

struct dispatch {
    struct postern_config *cfg;
    struct spool *spool;
    void *zctx;
    void *router;                   /* workers: [workers] dispatch */
    void *local;                    /* workers on this host when router is tcp://, or NULL */
    void *hints;                    /* PULL: ingest and transform ring here */
    void *zap;                      /* CURVE allow-list handler, tcp:// only */
    GHashTable *allowed_keys;       /* Z85 public keys of remote workers */
    GHashTable *workers;            /* name -> struct dispatch_worker */
    GHashTable *jobs;               /* lease -> struct dispatch_job (sender jobs) */
    int64_t conn_grace_until;       /* monotonic ms: no grant before (dispatch_conns.c) */
    struct retry_policy policy;
    char *mail_from;                /* [bounce] envelope_from */

    struct dispatch_account *accounts;  /* one per cfg->relays, in its order */
    guint naccounts;
    struct spool_dlv_ref due_after; /* fair rounds: the message served last (dispatch_deliver.c) */
    guint account_next;             /* accounts: where the next job's turn begins */

    GPtrArray *done;                /* struct wire_send_result: SDONEs of this round */
    int64_t results_due;            /* monotonic ms: done held until then; 0: none held */
    int64_t version_warned;         /* monotonic ms: a worker of another wire version logged */
    gboolean work_hinted;           /* a hint came: schedule now */
    int64_t next_scan;              /* monotonic ms of the next timed rescan */
    int64_t next_tick;              /* monotonic ms: heartbeats, expiry */
    int64_t next_approval_scan;     /* monotonic ms (dispatch_approval.c) */
    uint64_t read_since_release;    /* copies' bytes read from the map since spool_release_pages() */
    queue_id approval_from;         /* where the next approval scan goes on; 0: the start */
    gboolean stopping;
};


/* dispatch_workers.c */
gboolean dispatch_bind(struct dispatch *d, GError **err);
void dispatch_receive(struct dispatch *d);
void dispatch_heartbeat(struct dispatch *d);
struct dispatch_worker *dispatch_pick_worker(struct dispatch *d, enum worker_kind kind);
unsigned dispatch_credit(struct dispatch *d, enum worker_kind kind);

/* dispatch_conns.c: how the dispatcher keeps [relay] max_connections across
 * all sender workers: open relay connections, idle ones included, not
 * jobs in flight (SPEC §5).
 *
 * The dispatcher grants each sender worker a budget of connections; the
 * sum of what it has granted, plus what workers say they still hold, plus
 * the jobs of workers it no longer knows, never exceeds max_connections.
 * A worker opens a connection only within its budget and closes idle ones
 * beyond it; it reports what it applies and holds, so the dispatcher takes
 * a connection back only once the worker has let it go.
 *
 *   dispatcher -> worker   CONNMAX (u)   your budget: open at most this many
 *   worker -> dispatcher   CONNS   (uu)  the budget I apply, connections I hold
 *
 * A worker that meets a dispatcher which does not know it (WHO, silence)
 * drops its budget to 0 before its HELLO; the dispatcher does the same on
 * a HELLO with free slots.  After a dispatcher start, nothing is granted
 * for WIRE_CONN_IDLE_MS: connections of workers it has not heard from yet are
 * then either closed (idle) or behind a lease in the spool, which it counts.
 */
void dispatch_conns_setup(struct dispatch *d, const struct relay_url *url);
void dispatch_job_add(struct dispatch *d, struct dispatch_job *job);
/* How many jobs the sender workers can take now, on their connections or
 * queued behind them. */
unsigned dispatch_conns_room(struct dispatch *d);
/* ... of them, how many start at once: on a connection granted and idle, or
 * on one more. */
unsigned dispatch_conns_room_now(struct dispatch *d);
/* The worker for the next job, granting it a connection if need be. */
struct dispatch_worker *dispatch_conns_pick(struct dispatch *d);

/*
 * A job whose copy is larger than this (the size received) is leased only
 * while a connection can start it at once (dispatch_conns_room_now()), and
 * is sent before the round's other jobs so that it takes that connection:
 * it never waits in a sender's queue (common/wire.h, WIRE_JOBS_PER_SLOT).
 * Each queued job holds its copy in the sender's memory; a 30 MiB message
 * to a list, queued eight a slot, would hold 64 of them in a sender of 8
 * slots.  A queue saves a slot the round trip to the dispatcher between
 * jobs, which matters for small copies, not for ones that take longer to
 * send than that round trip.
 */
#define DISPATCH_QUEUE_COPY_MAX (256u * 1024)
void dispatch_conns_report(struct dispatch *d, struct dispatch_worker *w, GBytes *payload);
/* A known sender said HELLO with free slots: it starts over with no budget. */
void dispatch_conns_rejoin(struct dispatch *d, struct dispatch_worker *w);

/* dispatch_approval.c: discard what waited for approval past its list's
 * approval_expiry (checked every few seconds; now_mono: mono_ms()). */
void dispatch_approval_expire(struct dispatch *d, int64_t now_mono);

/* dispatch_transform.c */
void dispatch_lease_transforms(struct dispatch *d);

/* dispatch_accounts.c: the relay accounts, made from cfg->relays (again after a change). */
void dispatch_accounts_setup(struct dispatch *d);
/* ... and let them go (after the jobs: a job's end is counted on its account). */
void dispatch_accounts_free(struct dispatch *d);
/* The account called name; the default one for a name we do not know. */
struct dispatch_account *dispatch_account_find(struct dispatch *d, const char *name);
gboolean dispatch_account_paused(const struct dispatch_account *a, int64_t now_ms);
/*
 * Before a lease round: each account's rate and connection budgets
 * (round_txns, round_conns).  TRUE when any account could take a job:
 * not paused, not waiting for its daily limit's window, with budget.
 */
gboolean dispatch_accounts_budget(struct dispatch *d, int64_t now_ms);
/*
 * Inside the round: the account of the next job, each in turn, passing
 * over one that is paused or has no daily limit, rate or connection left
 * (left_*); it is charged the job's connection.  NULL when none is left.
 */
struct dispatch_account *dispatch_account_choose(struct dispatch *d, int64_t now_ms);
/* Connections all accounts may hold together: [relay] max_connections for one. */
unsigned dispatch_accounts_conn_max(const struct dispatch *d);
/* A sender worker with credit holding an idle connection of a, or NULL. */
struct dispatch_worker *dispatch_account_worker(struct dispatch *d, struct dispatch_account *a);
/* A job of a went to a worker: its connection (an idle one taken again, or new). */
void dispatch_account_job_start(struct dispatch_account *a, const struct dispatch_job *job);
/* A job is over (result, expiry): its connection may stay idle a while. */
void dispatch_account_job_end(struct dispatch_job *job);
/* "relay ... [account NAME] paused until HH:MM:SS <why>": one line per pause. */
void dispatch_account_log_pause(struct dispatch *d, const struct dispatch_account *a,
                                const char *why);
/* Take an account's pause as read from the spool; logs once when it ended. */
void dispatch_account_adopt(struct dispatch *d, struct dispatch_account *a,
                            const struct relay_state *st);
/*
 * Adopt the relay state in the spool (every tick): `spoolctl relay resume`
 * may have cleared a pause; logs once when an account is free again.
 */
void dispatch_relay_refresh(struct dispatch *d);

/*
 * The map pages a lease round reads (each job's copy) count in the
 * dispatcher's RSS until spool_release_pages(): once a second is not
 * enough at 8,000 one-recipient deliveries a second, whose copies alone
 * are 32 MiB (bench/memory.sh figure b: 111 MiB).  The main loop releases
 * them too whenever the copies read since the last release pass this.
 */
#define DISPATCH_RELEASE_BYTES (8u << 20)

/* dispatch_deliver.c: each alone in its own transaction ... */
void dispatch_lease_deliveries(struct dispatch *d);
void dispatch_expire_leases(struct dispatch *d);
/* ... or in parts, for dispatch_round(): new, write in the transaction, then
 * send or done after its commit (committed FALSE: as if never written). */
struct dlease;
struct dlease *dispatch_leases_new(struct dispatch *d);
gboolean dispatch_leases_wanted(const struct dlease *dl);
gboolean dispatch_leases_write(struct spool_txn *t, struct dlease *dl, gboolean hold,
                               GError **err);
void dispatch_leases_send(struct dispatch *d, struct dlease *dl, gboolean committed);
struct expiry;
struct expiry *dispatch_expiry_new(struct dispatch *d);
gboolean dispatch_expiry_write(struct spool_txn *t, struct expiry *ex, GError **err);
void dispatch_expiry_done(struct dispatch *d, struct expiry *ex, gboolean committed);
/*
 * A leased delivery back in the queue, due now_ms, with no attempt counted
 * (its lease ran out, or its worker gave it back unstarted): logged as
 * "<id>: to=<rcpt>, <why>: back in the queue".
 */
gboolean dispatch_dlv_requeue(struct spool_txn *t, const struct spool_dlv *old, int64_t now_ms,
                              const char *why, GError **err);

/*
 * dispatch_result.c: must the results received (d->done) be recorded in
 * this round?  When one leaves a sender short of jobs, or when they have
 * waited RESULT_HOLD_MS (now: mono_ms(); the wait starts at the first
 * call with results, d->results_due).
 */
gboolean dispatch_results_now(struct dispatch *d, int64_t now);
/* ... results alone in one transaction ... */
void dispatch_record_results(struct dispatch *d, GPtrArray *done);
/* ... or in parts: init (takes the decoded SDONEs out of done, leaving it
 * empty), jobs (frees the connections of finished jobs), write, done
 * (adopts the relay state). */
struct rresult;
void dispatch_results_init(struct rresult **out, struct dispatch *d, GPtrArray *done);
void dispatch_results_jobs(struct dispatch *d, struct rresult *rr);
gboolean dispatch_results_write(struct spool_txn *t, struct rresult *rr, GError **err);
/* Is every relay account paused as the results' transaction leaves them? */
gboolean dispatch_results_paused(const struct rresult *rr, int64_t now_ms);
unsigned dispatch_results_count(const struct rresult *rr);
void dispatch_results_done(struct dispatch *d, struct rresult *rr, gboolean ok);

/* dispatch_round.c: results, expiry (expire) and leases (lease) in one transaction. */
void dispatch_round(struct dispatch *d, GPtrArray *done, gboolean expire, gboolean lease);
void dispatch_forget_worker(struct dispatch *d, struct dispatch_worker *w);

#endif
