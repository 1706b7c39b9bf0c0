/*
 * daemon.h - what every Postern daemon does before its own setup.
 *
 * Parse -c FILE and -f (plus the daemon's own options), log to stderr
 * with -f and to syslog (facility mail) otherwise, load the config or
 * exit 2 with the one-line error, and ignore SIGPIPE (a peer that goes
 * away is an error return, never a death).
 */
#ifndef POSTERN_DAEMON_H
#define POSTERN_DAEMON_H

#include <glib.h>

#include "common/config.h"

void daemon_init(int *argc, char ***argv, const char *name, const char *summary,
                 const GOptionEntry *extra, struct postern_config *cfg);

#endif
