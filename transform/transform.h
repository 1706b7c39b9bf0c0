/*
 * transform.h - postern-transform internals (SPEC §4).
 *
 * One process, one thread: the dispatcher leases `incoming` messages
 * (TJOB), the worker reads each in a short read transaction, does the
 * GMime and DKIM work with no transaction open, and commits the outcome in
 * a write transaction that first checks the lease is still its own
 * (fencing).  Jobs planned together commit together (group commit: the
 * fsync, not the signature, would otherwise be the cost).  Several workers
 * run side by side; LMDB's write lock orders their commits, and a token is
 * marked used in the same transaction that creates the deliveries, so it
 * can never send twice.
 *
 * transform_main.c    set-up, DKIM keys, the DEALER socket and its loop
 * transform_job.c     jobs: load, plan, commit in batches (fenced)
 * transform_sign.c    DKIM signing of outgoing copies and their To: headers
 * transform_notice.c  notices: rejection, success, bounce report
 * transform_claim.c   pull mode: the platform decides each token (claim_url)
 * bounce_parse.c      what a bounce to a VERP address says (bounce_parse.h;
 *                     pure, on GMime); the code is common/bounce_code.h
 */
#ifndef POSTERN_TRANSFORM_H
#define POSTERN_TRANSFORM_H

#include <glib.h>

#include "common/approval_code.h"
#include "common/clock.h"
#include "common/config.h"
#include "spool/spool.h"
#include "spool/spool_token.h"
#include "transform/dkim.h"

struct transform {
    const struct postern_config *cfg;
    struct spool *spool;
    GPtrArray *keys;                /* struct dkim_key *, one signature each */

    /* Pull mode ([token] claim_url), transform_claim.c. */
    char *claim_secret;             /* NULL: tokens are looked up in the spool */
    gboolean claim_outage;          /* warned once; said again when it answers */
    int64_t claim_hold_until;       /* unix ms: no claim before, after a failed one */
    char *claim_error;              /* why it failed */
    void *claim_easy;               /* CURL *: its connection is kept from claim to claim */
    void (*idle)(void *ctx);        /* called during a claim: the worker's heartbeat */
    void *idle_ctx;
    char *verp_key;                 /* [bounce] secret_file with verp, else NULL */
    size_t verp_keylen;
    char *unsub_key;                /* [bounce] secret_file with [unsubscribe] one_click */
    size_t unsub_keylen;
    unsigned char approval_key[APPROVAL_KEY_LEN];  /* a list has approval: its links' key */
};

/* Errors of the transform itself (the spool, MIME and DKIM have their own). */
#define TRANSFORM_ERROR transform_error_quark()
GQuark transform_error_quark(void);
enum transform_error {
    TRANSFORM_ERR_FENCED,           /* the lease is no longer ours: drop the job */
    TRANSFORM_ERR_REPLAN,           /* the token changed since it was read: plan again */
};

/* ---- transform_job.c ----------------------------------------------------- */

struct transform_job;

/*
 * Load, parse and plan the job `lease` for message id: everything but the
 * commit, with no transaction held across the work.  A job that ends here
 * (lease gone, spool error) already has its outcome.
 */
struct transform_job *transform_job_prepare(struct transform *tf, uint64_t lease, queue_id id);

/*
 * Commit every planned job in one write transaction (re-planning, in
 * further rounds, those whose token changed).  Afterwards every job has
 * its outcome.
 */
void transform_job_commit_batch(struct transform *tf, GPtrArray *jobs);

/*
 * The word for TDONE: "ready", "rejected", "hold", "notice" (a bounce
 * report written), "done" (nothing to report), "stale" (not our lease any
 * more) or "error" (the spool failed; the lease runs out and the job
 * returns); NULL while the job waits for its commit.
 */
const char *transform_job_outcome(const struct transform_job *j);
uint64_t transform_job_lease(const struct transform_job *j);
queue_id transform_job_id(const struct transform_job *j);
size_t
transform_job_bytes(const struct transform_job *j); /* the message's size, for batch limits */
void transform_job_free(struct transform_job *j);

/* ---- transform_sign.c ---------------------------------------------------- */

/*
 * One serialised copy (CRLF, no To:, no signature) split once, its body
 * hashed once and its header prepared for signing once: every recipient's
 * signature reuses both.
 */
struct transform_copy {
    GBytes *bytes;
    size_t header_len;              /* header lines, each with its CRLF */
    unsigned char body_hash[DKIM_HASH_LEN];
    struct dkim_header *header;     /* c's header lines, for dkim_sign_copy() */
};

gboolean transform_sign_copy_init(struct transform_copy *c, GBytes *bytes, GError **err);
void transform_sign_copy_clear(struct transform_copy *c);

/*
 * The block to send before c->bytes: one DKIM-Signature per key, then
 * `prefix` (header lines with CRLFs: "To: ...\r\n"), signed as prefix +
 * c's header exactly as sent.
 */
GBytes *sign_block(const struct transform *tf, const struct transform_copy *c, const char *prefix,
                   gint64 now, GError **err);

/* A whole signed message: sign_block(prefix) followed by c->bytes. */
GBytes *sign_whole(const struct transform *tf, const struct transform_copy *c, const char *prefix,
                   gint64 now, GError **err);

/*
 * The copies of a transformed message.  personalize: *outgoing is the
 * common copy and headers[i] the block of rcpts[i] (its signatures, its
 * own To: and, when own is not NULL, the header lines own[i]: its
 * List-Unsubscribe).  Otherwise *outgoing is the whole signed message
 * with "To: undisclosed-recipients:;" and every headers[i] is NULL.
 */
gboolean transform_sign_deliveries(const struct transform *tf, GBytes *rewritten, GPtrArray *rcpts,
                                   GPtrArray *own, gint64 now, GBytes **outgoing,
                                   GPtrArray *headers, GError **err);

/*
 * How many threads sign n personalised copies under tf's keys: one until
 * the work is worth a thread's hand-over (transform_sign.c), then up to
 * [dkim] sign_threads (0: one per CPU), never more than n.
 */
guint transform_sign_threads(const struct transform *tf, guint n);

/* ---- transform_claim.c --------------------------------------------------- */

struct claim_request {
    const unsigned char *hash;      /* TOKEN_HASH_LEN bytes: all that is sent of the token */
    const char *sender;
    const char *message_id;         /* of the mail received, or NULL */
    const char *queue_id;           /* the idempotency key */
    const char *subject;
};

enum claim_kind {
    CLAIM_GRANTED,                  /* 200: send to recipients */
    CLAIM_REFUSED,                  /* 404, 409, 403, 410: reject with reason */
    CLAIM_RETRY,                    /* no decision: the message waits and asks again */
};

struct claim_answer {
    enum claim_kind kind;
    const char *reason;             /* CLAIM_REFUSED: TOKEN_INVALID, TOKEN_USED, ... */
    GPtrArray *recipients;          /* CLAIM_GRANTED: as answered, not yet checked */
    gboolean hide_sender;
    char *list;                     /* CLAIM_GRANTED: NULL when not named */
    char *error;                    /* CLAIM_RETRY: why, for the log and the record */
};

/* Read the secret (claim_url set); FALSE with err if it cannot be. */
gboolean transform_claim_start(struct transform *tf, GError **err);
void transform_claim_stop(struct transform *tf);
/* Pure: the signed JSON body of a claim. */
char *transform_claim_body(const struct claim_request *r);
/* Pure: what an HTTP answer (status, body) decides. */
void transform_claim_parse(long status, const char *body, size_t len, struct claim_answer *a);
/* Pure: how long a message aged age_ms waits after a failed claim. */
int64_t transform_claim_backoff(int64_t age_ms, int64_t max_ms);
/* POST the claim (no transaction may be open) and read its answer into a. */
void transform_claim_post(struct transform *tf, const struct claim_request *r,
                          struct claim_answer *a);
void transform_claim_answer_clear(struct claim_answer *a);

/* ---- transform_notice.c -------------------------------------------------- */

/* A notice written and signed outside any transaction, stored by transform_notice_store(). */
struct notice {
    char *to;
    queue_id ref;                   /* the message it is about */
    GBytes *bytes;                  /* complete signed message */
    char *message_id;
    unsigned limit;                 /* > 0: at most this many such per address and hour */
    uint64_t digest;                /* what makes two notices the same (reason, Subject) */
};

void transform_notice_free(struct notice *n);

/*
 * The notices, each in the language and from the From of list (the
 * message's: config_list_of()); a hide-sender list's names no member.
 */
/* To the sender of a rejected message: why nothing was sent. */
struct notice *transform_notice_rejected(const struct transform *tf,
                                         const struct postern_list *list,
                                         const struct spool_msg *m, const char *subject,
                                         const char *reason, gint64 now, GError **err);
/* To the token owner of a transformed message: how many copies go out. */
struct notice *transform_notice_accepted(const struct transform *tf,
                                         const struct postern_list *list,
                                         const struct spool_msg *m, const char *subject,
                                         const char *owner, unsigned nrcpt, gint64 now,
                                         GError **err);
/*
 * To the list's moderator, for a message held for approval: who sent what
 * to how many, the link that approves or discards it (approval_link()),
 * and when it is discarded if nobody decides.
 */
struct notice *transform_notice_approval(const struct transform *tf,
                                         const struct postern_list *list,
                                         const struct spool_msg *m, const char *subject,
                                         const char *owner, unsigned nrcpt, gint64 now,
                                         GError **err);
/* To the owner of message ref: who bounced and why (bounced: struct spool_dlv *). */
struct notice *transform_notice_bounced(const struct transform *tf,
                                        const struct postern_list *list,
                                        const struct spool_msg *ref, const char *subject,
                                        const char *owner, GPtrArray *bounced, unsigned total,
                                        gint64 now, GError **err);

/*
 * Inside a write transaction: store n as a new message of kind notice in
 * state ready with its one delivery.  into, when not NULL, is an existing
 * message (a bounce report) that becomes the notice instead.  A notice
 * with a limit (the rejection notice, which anyone can cause by forging a
 * token owner's address) is counted in the spool first
 * (spool_notice_rate.h): one that repeats a notice of the same hour, or
 * goes over [notice] max_per_hour, is dropped with one log line, and TRUE.
 */
gboolean transform_notice_store(struct spool_txn *t, const struct notice *n, struct spool_msg *into,
                      gint64 now, GError **err);

/* The Subject of a serialised message, decoded to UTF-8 ("" when none). */
char *transform_notice_subject_of(const char *data, size_t len);

#endif
