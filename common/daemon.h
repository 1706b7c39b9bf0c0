/*
 * daemon.h - what every Postern daemon does before its own setup.
 *
 * Parse -c FILE and -f (plus the daemon's own options), log to stderr
 * with -f and to syslog (facility mail) otherwise, load and validate the
 * config or exit 2 with the one-line error, and ignore SIGPIPE (a peer
 * that goes away is an error return, never a death).
 *
 * Exit statuses every daemon shares, which `postern run` reads:
 *   1                  msg_fatal(): may work later (a peer, a resource):
 *                      the supervisor restarts the daemon
 *   CONFIG_EXIT_USAGE  (2) the config cannot work
 *   DAEMON_EXIT_START  (3) a permanent start error (the listen address is
 *                      taken, the spool is unsafe): restarting cannot help,
 *                      so the supervisor stops everything and exits
 */
#ifndef POSTERN_DAEMON_H
#define POSTERN_DAEMON_H

#include <glib.h>

#include "common/config.h"

#define DAEMON_EXIT_START 3

void daemon_init(int *argc, char ***argv, const char *name, const char *summary,
                 const GOptionEntry *extra, struct postern_config *cfg);

/* Log the error and exit DAEMON_EXIT_START. */
G_NORETURN void daemon_start_fail(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

/*
 * SIGTERM and SIGINT, one way for every program: a sigaction() handler
 * writes the signal number into a pipe (the self-pipe trick) and the loop
 * waits on the read end like on any other descriptor: an item of
 * zmq_poll() in the dispatcher and the workers, a g_unix_fd_add() source
 * in ingest and the supervisor (GLib main loops).  Why this one:
 *  - a bare flag set by a handler is seen only when a poll happens to be
 *    interrupted, and with threads (ZeroMQ's, the sender's slots, the
 *    ingest committer) the signal may interrupt another thread while the
 *    main one sleeps on;
 *  - signalfd needs the signal blocked in every thread, and a blocked mask
 *    survives exec: the supervisor's children would start deaf to SIGTERM;
 *  - g_unix_signal_add needs a GMainContext, which zmq_poll loops do not
 *    run.
 * The pipe works in both kinds of loop and leaves the mask alone.  Call
 * once, before any thread starts.  Returns the read end (non-blocking,
 * close-on-exec).
 */
int daemon_signal_fd(void);
/* The last signal that arrived, or 0 when none; never blocks. */
int daemon_signal_read(int fd);

#endif
