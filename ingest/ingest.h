/*
 * ingest.h - postern-ingest internals: listeners, sessions, group commit.
 *
 * One event loop for the protocol (ingest_loop.c), one committer thread
 * for LMDB.
 * Sessions read and parse as their bytes arrive; a session whose DATA is
 * complete joins the pending batch.  Whenever the committer is idle it
 * takes every pending message and writes them in ONE durable LMDB
 * transaction; only then are their 250 replies written: messages that
 * finish together share a commit (group commit), none is acknowledged
 * before its commit is on disk, and the sessions go on talking while the
 * disk syncs.
 */
#ifndef POSTERN_INGEST_H
#define POSTERN_INGEST_H

#include <glib.h>
#include <glib-unix.h>
#include <stdint.h>

#include "ingest/lmtp_proto.h"
#include "common/config.h"
#include "common/hint.h"
#include "spool/spool.h"

enum session_state {
    SESSION_COMMAND,                /* reading commands */
    SESSION_DATA,                   /* reading the message after 354 */
    SESSION_COMMIT,                 /* message complete, waiting for the batch */
    SESSION_CLOSING,                /* flushing the last reply, then close */
};

struct ingest;

struct session {
    struct ingest *ig;
    int fd;
    guint read_source;
    guint write_source;
    gboolean read_paused;           /* input held back: see ingest_session_reading() */
    gboolean held_logged;           /* the hold is logged once per session */
    char *client;                   /* "ip" or "unix" */
    GByteArray *in;                 /* received, not yet parsed */
    GString *out;                   /* replies not yet written */
    enum session_state state;
    gboolean lmtp;                  /* LHLO: one reply per recipient */
    char *helo;
    char *proto;                    /* LMTP, ESMTP, SMTP */
    gboolean have_mail;
    char *sender;
    gboolean smtputf8;              /* MAIL said SMTPUTF8: addresses may be UTF-8 */
    GPtrArray *rcpts;               /* accepted recipients */
    struct lmtp_data_reader data;
    int64_t deadline;               /* monotonic us: 421 4.4.2 when passed (see expire) */
    unsigned errors;
    struct commit_job *job;         /* its message, while the committer writes it */
};

struct ingest {
    struct postern_config *cfg;
    struct spool *spool;
    struct hint_sender *hints;
    GHashTable *recipients;         /* canonical address set */
    GPtrArray *listeners;           /* struct listener (ingest_listen.c) */
    GList *sessions;
    unsigned n_sessions;
    GHashTable *per_client;         /* client address -> open sessions (GUINT_TO_POINTER) */
    GPtrArray *batch;               /* sessions in SESSION_COMMIT, not yet with the committer */
    struct committer *committer;    /* the thread that writes batches */
    gboolean stopping;
};

/*
 * ingest_loop.c: watches on descriptors, GLib's contract (level-triggered,
 * a callback per G_IO_IN or G_IO_OUT, removed when it returns
 * G_SOURCE_REMOVE) on one epoll set.  ingest_fd_add() returns the watch's
 * id for ingest_fd_remove(), never 0; remove before close, or close in
 * the callback that returns G_SOURCE_REMOVE.
 * ingest_loop_wakeup() may be called from any thread.
 */
void ingest_loop_init(void);
void ingest_loop_free(void);
guint ingest_fd_add(int fd, GIOCondition cond, GUnixFDSourceFunc fn, gpointer data);
void ingest_fd_remove(guint id);
void ingest_loop_iterate(int timeout_ms);
void ingest_loop_wakeup(void);

/* ingest_listen.c */
gboolean ingest_listen(struct ingest *ig, GError **err);
void ingest_listen_tick(struct ingest *ig, int64_t now_ms);
void ingest_listen_stop(struct ingest *ig);

/* ingest_session.c */
gboolean ingest_session_admit(struct ingest *ig, int fd, const char *client);
void ingest_session_start(struct ingest *ig, int fd, const char *client);
void ingest_session_deadline_reset(struct session *s);
void ingest_session_input(struct session *s);
void ingest_session_reply(struct session *s, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
gboolean ingest_session_flush(struct session *s);
void ingest_session_end_transaction(struct session *s);
void ingest_session_expire_idle(struct ingest *ig);
void ingest_session_shutdown_all(struct ingest *ig);

/* ingest_commit.c */
void ingest_commit_start(struct ingest *ig);
void ingest_commit_batch(struct ingest *ig);
gboolean ingest_commit_pending(struct ingest *ig);
void ingest_commit_forget(struct session *s);
void ingest_commit_stop(struct ingest *ig);

#endif
