/*
 * relay_conns.h - how the dispatcher keeps [relay] max_connections across
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
 * for SENDER_IDLE_MS: connections of workers it has not heard from yet are
 * then either closed (idle) or behind a lease in the spool, which it counts.
 */
#ifndef POSTERN_RELAY_CONNS_H
#define POSTERN_RELAY_CONNS_H

#define WIRE_CONNMAX "CONNMAX"
#define WIRE_CONNS "CONNS"

/* A slot closes its relay connection after this long without a job. */
#define SENDER_IDLE_MS 2000

#endif
