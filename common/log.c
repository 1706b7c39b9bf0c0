/*
 * log.c - see log.h.
 */
#include "common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <syslog.h>
#include <unistd.h>

static char *log_name;
static gboolean log_to_stderr = TRUE;

void log_init(const char *progname, gboolean foreground)
{
    const char *mode = g_getenv("POSTERN_LOG");

    g_free(log_name);
    log_name = g_strdup(progname);
    log_to_stderr = foreground || (mode && g_str_equal(mode, "stderr"));
    if (!log_to_stderr)
        openlog(log_name, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

const char *log_progname(void)
{
    return log_name ? log_name : "postern";
}

/*
 * One write(2) per line, so lines from the processes that share a stderr
 * (under `postern run`) never interleave mid-line.
 */
static void log_vemit(int priority, const char *severity, const char *fmt, va_list ap)
{
    g_autofree char *text = g_strdup_vprintf(fmt, ap);

    if (log_to_stderr) {
        g_autofree char *line = severity
            ? g_strdup_printf("%s[%d]: %s: %s\n", log_progname(), (int)getpid(), severity, text)
            : g_strdup_printf("%s[%d]: %s\n", log_progname(), (int)getpid(), text);
        ssize_t ignored = write(STDERR_FILENO, line, strlen(line));
        (void)ignored;
    } else if (severity) {
        syslog(priority, "%s: %s", severity, text);
    } else {
        syslog(priority, "%s", text);
    }
}

#define LOG_DEFINE(fn, prio, sev)               \
    void fn(const char *fmt, ...)               \
    {                                           \
        va_list ap;                             \
        va_start(ap, fmt);                      \
        log_vemit(prio, sev, fmt, ap);          \
        va_end(ap);                             \
    }

LOG_DEFINE(msg_info, LOG_INFO, NULL)
LOG_DEFINE(msg_warn, LOG_WARNING, "warning")
LOG_DEFINE(msg_error, LOG_ERR, "error")

void msg_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vemit(LOG_CRIT, "fatal", fmt, ap);
    va_end(ap);
    exit(1);
}

void msg_panic(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vemit(LOG_CRIT, "panic", fmt, ap);
    va_end(ap);
    abort();
}
