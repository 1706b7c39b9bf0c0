/*
 * log.c - see log.h.
 */
#include "common/log.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define LOG_SYSLOG_SOCKET "/dev/log"
/* A line formatted on the stack (longer ones go to the heap), and the part
 * of it its prefix may take. */
#define LOG_LINE_MAX 2048
#define LOG_HEAD_MAX 512

static char *log_name;
static char *log_host;
static gboolean log_to_stderr = TRUE;

/*
 * Is there a syslog daemon to take the lines?  syslog(3) drops them
 * silently when nothing listens on /dev/log (a container, a chroot), and
 * an operator would then see nothing at all.
 */
static gboolean log_syslog_present(void)
{
    struct stat st;

    return stat(LOG_SYSLOG_SOCKET, &st) == 0 && S_ISSOCK(st.st_mode);
}

void log_init(const char *progname, gboolean foreground)
{
    const char *mode = g_getenv("POSTERN_LOG");

    g_free(log_name);
    log_name = g_strdup(progname);
    /* The short host name, as syslog shows it. */
    if (!log_host)
        log_host = g_strndup(g_get_host_name(), strcspn(g_get_host_name(), "."));
    log_to_stderr = foreground || (mode && g_str_equal(mode, "stderr")) || !log_syslog_present();
    if (!log_to_stderr)
        openlog(log_name, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

const char *log_progname(void)
{
    return log_name ? log_name : "postern";
}

/*
 * Append the bytes of s as they may safely reach a terminal or a log
 * reader: C0 controls, DEL, C1 controls, U+2028 and U+2029 and bytes that
 * are not UTF-8 become \xNN; printable ASCII and other UTF-8 stay.
 */
void log_escape_append(GString *out, const char *s, gsize len)
{
    const char *end = s + len;

    while (s < end) {
        unsigned char c = (unsigned char)*s;
        gunichar u;
        int n;

        if (c >= 0x20 && c < 0x7f) {
            g_string_append_c(out, (char)c);
            s++;
            continue;
        }
        if (c < 0x80) {
            g_string_append_printf(out, "\\x%02x", c);
            s++;
            continue;
        }
        u = g_utf8_get_char_validated(s, end - s);
        n = (u == (gunichar)-1 || u == (gunichar)-2) ? 0 : g_unichar_to_utf8(u, NULL);
        /*
         * Invalid UTF-8 and C1 controls (CSI is one) byte by byte; so too
         * the line and paragraph separators, which some viewers break at.
         */
        if (!n || u < 0xa0 || u == 0x2028 || u == 0x2029) {
            for (int i = 0; i < MAX(n, 1); i++)
                g_string_append_printf(out, "\\x%02x", (unsigned char)s[i]);
            s += MAX(n, 1);
            continue;
        }
        g_string_append_len(out, s, n);
        s += n;
    }
}

/* Does s need log_escape_append()?  The common case is a quick scan. */
static gboolean log_needs_escape(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            return TRUE;
    return FALSE;
}

char *log_escape(const char *s)
{
    GString *out;

    if (!log_needs_escape(s))
        return g_strdup(s);
    out = g_string_sized_new(strlen(s) + 16);
    log_escape_append(out, s, strlen(s));
    return g_string_free(out, FALSE);
}

/*
 * "Mon DD HH:MM:SS" in the local zone, as syslog writes it.  Formatted
 * once a second per thread: the sender and ingest log from several
 * threads, and localtime_r() with strftime() per line would cost more
 * than the line itself.
 */
static const char *log_stamp(void)
{
    static __thread time_t cached_sec = -1;
    static __thread char cached[32];
    time_t now = time(NULL);
    struct tm tm;

    if (now != cached_sec) {
        if (!localtime_r(&now, &tm) || !strftime(cached, sizeof(cached), "%b %e %H:%M:%S", &tm))
            g_strlcpy(cached, "-", sizeof(cached));
        cached_sec = now;
    }
    return cached;
}

/*
 * The pid in every stderr line.  getpid() is a system call on every call
 * (glibc stopped caching it), and the dispatcher logs about three lines
 * per delivery; so it is read once and again in the child of each fork(),
 * where it changes.
 */
static pid_t log_pid;
static pthread_once_t log_pid_once = PTHREAD_ONCE_INIT;

static void log_pid_refresh(void)
{
    log_pid = getpid();
}

static void log_pid_setup(void)
{
    log_pid_refresh();
    pthread_atfork(NULL, NULL, log_pid_refresh);
}

static pid_t log_getpid(void)
{
    pthread_once(&log_pid_once, log_pid_setup);
    return log_pid;
}

/*
 * Format the text after the head bytes of line (the stderr prefix, or
 * nothing for syslog), or, when it is too long for line or must be
 * escaped, into a new string in *slow.  Lines are short
 * and clean nearly always, and formatting them on the stack saves the two
 * allocations per line of building them on the heap.  Returns the whole
 * line (prefix, text, "\n"), its length in *len and where the text starts
 * in *text.
 */
static const char *log_format(char *line, size_t size, int head, const char *fmt, va_list ap,
                              char **slow, size_t *len, const char **text)
{
    va_list again;
    int n;

    va_copy(again, ap);
    n = vsnprintf(line + head, size - head - 1, fmt, ap);
    if (n >= 0 && (size_t)n < size - head - 1 && !log_needs_escape(line + head)) {
        n = strlen(line + head);    /* a NUL (%c of 0) ends the text, as in the slow path */
        line[head + n] = '\n';
        *len = head + n + 1;
        *text = line + head;
        va_end(again);
        return line;
    }

    /*
     * What the text holds came partly from clients (addresses, LHLO
     * names): it is escaped here, once for every caller, so no byte of it
     * can move a terminal's cursor or forge a line.
     */
    g_autofree char *raw = g_strdup_vprintf(fmt, again);
    GString *out = g_string_new_len(line, head);

    va_end(again);
    log_escape_append(out, raw ? raw : "", raw ? strlen(raw) : 0);
    g_string_append_c(out, '\n');
    *len = out->len;
    *slow = g_string_free(out, FALSE);
    *text = *slow + head;
    return *slow;
}

/*
 * A batch: the lines a thread logs between log_batch_begin() and
 * log_batch_end(), held to go out in as few write(2)s as they fit.  A
 * write of at most PIPE_BUF bytes to a pipe is atomic, so the lines of
 * processes that share a stderr (under `postern run`) still never
 * interleave mid-line.  Per thread: a slot thread's lines do not wait
 * for the main thread's batch.
 */
static __thread char log_batch[PIPE_BUF];
static __thread size_t log_batch_len;
static __thread unsigned log_batch_depth;

static void log_batch_flush(void)
{
    if (log_batch_len) {
        ssize_t ignored = write(STDERR_FILENO, log_batch, log_batch_len);
        (void)ignored;
    }
    log_batch_len = 0;
}

void log_batch_begin(void)
{
    log_batch_depth++;
}

void log_batch_end(void)
{
    if (log_batch_depth && !--log_batch_depth)
        log_batch_flush();
}

/* One line to stderr: into the batch if one is open and it fits. */
static void log_write(const char *line, size_t len)
{
    if (log_batch_depth && len <= sizeof(log_batch)) {
        if (log_batch_len + len > sizeof(log_batch))
            log_batch_flush();
        memcpy(log_batch + log_batch_len, line, len);
        log_batch_len += len;
        return;
    }
    log_batch_flush();
    ssize_t ignored = write(STDERR_FILENO, line, len);
    (void)ignored;
}

/*
 * One write(2) per line, or per batch of whole lines, so lines from the
 * processes that share a stderr (under `postern run`) never interleave
 * mid-line.
 */
static void log_vemit(int priority, const char *severity, const char *fmt, va_list ap)
{
    char buf[LOG_LINE_MAX];
    g_autofree char *slow = NULL;
    const char *line, *text;
    size_t len;
    int head = 0;

    if (log_to_stderr)
        head = snprintf(buf, LOG_HEAD_MAX, "%s %s %s[%d]: %s%s", log_stamp(),
                        log_host ? log_host : "-", log_progname(), (int)log_getpid(),
                        severity ? severity : "", severity ? ": " : "");
    head = CLAMP(head, 0, LOG_HEAD_MAX - 1);
    line = log_format(buf, sizeof(buf), head, fmt, ap, &slow, &len, &text);

    if (log_to_stderr) {
        log_write(line, len);
    } else if (severity) {
        syslog(priority, "%s: %.*s", severity, (int)(line + len - 1 - text), text);
    } else {
        syslog(priority, "%.*s", (int)(line + len - 1 - text), text);
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

/* The last lines before an exit or abort go out, the batch first. */
static void log_batch_close(void)
{
    log_batch_flush();
    log_batch_depth = 0;
}

void msg_fatal(const char *fmt, ...)
{
    va_list ap;
    log_batch_close();
    va_start(ap, fmt);
    log_vemit(LOG_CRIT, "fatal", fmt, ap);
    va_end(ap);
    exit(1);
}

void msg_panic(const char *fmt, ...)
{
    va_list ap;
    log_batch_close();
    va_start(ap, fmt);
    log_vemit(LOG_CRIT, "panic", fmt, ap);
    va_end(ap);
    abort();
}
