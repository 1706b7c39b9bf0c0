/*
 * daemon.c - see daemon.h.
 */
#include "common/daemon.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>

void daemon_init(int *argc, char ***argv, const char *name, const char *summary,
                 const GOptionEntry *extra, struct postern_config *cfg)
{
    g_autofree char *config_path = NULL;
    gboolean foreground = FALSE;
    GOptionEntry common[] = {
        { "config", 'c', 0, G_OPTION_ARG_FILENAME, &config_path, "configuration file", "FILE" },
        { "foreground", 'f', 0, G_OPTION_ARG_NONE, &foreground, "log to stderr", NULL },
        { NULL }
    };
    g_autoptr(GOptionContext) octx = g_option_context_new(summary);
    struct sigaction ignore = { .sa_handler = SIG_IGN };
    GError *err = NULL;

    log_init(name, TRUE);
    g_option_context_add_main_entries(octx, common, NULL);
    if (extra)
        g_option_context_add_main_entries(octx, extra, NULL);
    if (!g_option_context_parse(octx, argc, argv, &err)) {
        g_printerr("%s: %s\n", name, err->message);
        exit(CONFIG_EXIT_USAGE);
    }
    log_init(name, foreground);
    /* The whole config, before anything listens (config.h). */
    config_load_valid_or_exit(cfg, config_path);
    sigaction(SIGPIPE, &ignore, NULL);
}

void daemon_start_fail(const char *fmt, ...)
{
    va_list ap;
    g_autofree char *text = NULL;

    va_start(ap, fmt);
    text = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    msg_error("cannot start: %s", text);
    exit(DAEMON_EXIT_START);
}

static int daemon_signal_pipe[2] = { -1, -1 };

/* Async-signal-safe: one write(2), errno kept for the interrupted code. */
static void daemon_on_signal(int sig)
{
    int saved = errno;
    unsigned char byte = (unsigned char)sig;

    if (write(daemon_signal_pipe[1], &byte, 1) < 0) {
        /* Full pipe: signals already wait to be read; nothing is lost. */
    }
    errno = saved;
}

int daemon_signal_fd(void)
{
    struct sigaction sa = { .sa_handler = daemon_on_signal, .sa_flags = SA_RESTART };

    if (daemon_signal_pipe[0] >= 0)
        msg_panic("daemon_signal_fd: called twice");
    if (pipe2(daemon_signal_pipe, O_NONBLOCK | O_CLOEXEC) < 0)
        msg_fatal("pipe: %m");
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    return daemon_signal_pipe[0];
}

int daemon_signal_read(int fd)
{
    unsigned char buf[16];
    ssize_t n;
    int sig = 0;

    while ((n = read(fd, buf, sizeof(buf))) > 0)
        sig = buf[n - 1];
    return sig;
}
