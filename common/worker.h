/*
 * worker.h - the worker side of the dispatcher protocol (common/wire.h),
 * shared by postern-transform and postern-sender.
 *
 * A worker holds one DEALER socket connected to the dispatcher.  It says
 * HELLO with its kind and free slots, PINGs every WIRE_HEARTBEAT_MS,
 * answers WHO with HELLO, and when the dispatcher has been silent for
 * WIRE_DEAD_AFTER_MS (restarted, or forgot us) says HELLO again on every
 * heartbeat until it answers.  Everything else the dispatcher says (TJOB,
 * SJOB, CONNMAX) goes to the worker's own command function.  All times are
 * monotonic milliseconds (common/clock.h mono_ms()).
 */
#ifndef POSTERN_WORKER_H
#define POSTERN_WORKER_H

#include <glib.h>
#include <stdint.h>

/*
 * The heartbeat state alone, without sockets, so that the timing can be
 * tested: when to PING, when the dispatcher counts as gone.
 */
struct worker_beat {
    int64_t heard;                  /* the dispatcher's last word */
    int64_t next_ping;
    gboolean silent;                /* gone: we said so in the log */
};

/* What worker_beat_due() asks the caller to do now. */
#define WORKER_DUE_PING 0x1         /* send PING */
#define WORKER_DUE_REJOIN 0x2       /* the dispatcher is gone: HELLO again */
#define WORKER_DUE_SILENT 0x4       /* ... and it just went quiet: say so once */

void worker_beat_start(struct worker_beat *b, int64_t now);
/* The dispatcher spoke; TRUE when it had been silent (it is back). */
gboolean worker_beat_heard(struct worker_beat *b, int64_t now);
/* WORKER_DUE_* flags for now; moves next_ping on when a PING is due. */
unsigned worker_beat_due(struct worker_beat *b, int64_t now);
/* Milliseconds until worker_beat_due() has something to do (0 .. heartbeat). */
int64_t worker_beat_wait(const struct worker_beat *b, int64_t now);

/* What differs between the kinds of worker. */
struct worker_ops {
    /* Free slots now: the credit HELLO announces. */
    guint (*free_slots)(void *arg);
    /* Optional: the dispatcher forgot us (WHO, or silence); called after the HELLO. */
    void (*forgotten)(void *arg);
    /* Any command but PING and WHO; payload may be NULL. */
    void (*command)(void *arg, const char *cmd, GBytes *payload);
};

struct worker {
    const char *kind;               /* "transform" | "sender" */
    char *endpoint;
    void *zctx;
    void *sock;                     /* DEALER; the caller may poll it */
    const struct worker_ops *ops;
    void *arg;
    struct worker_beat beat;
};

/*
 * Make the context and the DEALER socket (linger_ms: how long unsent
 * messages may hold the exit).  The caller may set socket options (CURVE)
 * before worker_connect().
 */
void worker_init(struct worker *w, const char *kind, const char *endpoint, int linger_ms,
                 const struct worker_ops *ops, void *arg);
/* Connect and say HELLO.  FALSE with errno set when the endpoint is bad. */
gboolean worker_connect(struct worker *w);
/* Send without blocking; takes the payload (may be NULL). */
gboolean worker_say(struct worker *w, const char *cmd, GBytes *payload);
/* HELLO: our kind and what ops->free_slots() says now. */
void worker_hello(struct worker *w);
/* Read everything waiting, without blocking. */
void worker_receive(struct worker *w);
/* PING when due; HELLO again while the dispatcher is silent. */
void worker_heartbeat(struct worker *w);
/* Milliseconds a poll may wait before worker_heartbeat() has work. */
long worker_wait_ms(const struct worker *w);
void worker_close(struct worker *w);

#endif
