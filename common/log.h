/*
 * log.h - one-line logging for every Postern process, Postfix style.
 *
 * Info lines carry no prefix; warning, error, fatal and panic say so, so an
 * operator can grep by severity.  fatal is for conditions outside the
 * program (bad config, missing file): it logs and exits 1.  panic is for a
 * broken invariant inside the program: it logs and aborts for a core file.
 * A warning never changes control flow.
 *
 * In the foreground, when POSTERN_LOG=stderr, or when no syslog daemon
 * listens on /dev/log, lines go to stderr as syslog would write them,
 * "Mon DD HH:MM:SS host prog[pid]: text"; otherwise to syslog with
 * facility mail.  Either way the text is escaped (log_escape): control
 * bytes, DEL and bytes that are not UTF-8 show as \xNN.
 */
#ifndef POSTERN_LOG_H
#define POSTERN_LOG_H

#include <glib.h>

void log_init(const char *progname, gboolean foreground);
const char *log_progname(void);

/*
 * s as it may reach a terminal: C0 and C1 controls, DEL, U+2028, U+2029
 * and invalid UTF-8 become \xNN, the rest is kept.  log_escape() returns a new string.
 */
char *log_escape(const char *s);
void log_escape_append(GString *out, const char *s, gsize len);

/*
 * Lines this thread logs to stderr until the matching end go out together,
 * in as few writes as fit PIPE_BUF each (a round's state changes: one
 * write for many lines instead of one each).  Batches nest; fatal and
 * panic write what is held first.  Syslog lines go one by one as before.
 */
void log_batch_begin(void);
void log_batch_end(void);

void msg_info(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
void msg_warn(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
void msg_error(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
G_NORETURN void msg_fatal(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
G_NORETURN void msg_panic(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

#endif
