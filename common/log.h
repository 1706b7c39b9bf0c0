/*
 * log.h - one-line logging for every Postern process, Postfix style.
 *
 * Info lines carry no prefix; warning, error, fatal and panic say so, so an
 * operator can grep by severity.  fatal is for conditions outside the
 * program (bad config, missing file): it logs and exits 1.  panic is for a
 * broken invariant inside the program: it logs and aborts for a core file.
 * A warning never changes control flow.
 *
 * In the foreground (or when POSTERN_LOG=stderr) lines go to stderr as
 * "prog[pid]: text"; otherwise to syslog with facility mail.
 */
#ifndef POSTERN_LOG_H
#define POSTERN_LOG_H

#include <glib.h>

void log_init(const char *progname, gboolean foreground);
const char *log_progname(void);

void msg_info(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
void msg_warn(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
void msg_error(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
G_NORETURN void msg_fatal(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
G_NORETURN void msg_panic(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

#endif
