/*
 * postern-api - the platform bridge: HTTP/JSON for the web platform
 * (docs/api.yaml, docs/integration.md).
 *
 * Set up (config, keys, spool, the listening socket, libmicrohttpd, the
 * events poster), then one loop: wait on the server's epoll set, the
 * signal pipe and the event transfer, let the server run what is ready,
 * move the events on, clear stale spool readers now and then.  A
 * request runs to its end inside the loop, so SIGTERM stops between two.
 */
#include "api/api_events.h"
#include "api/api_server.h"
#include "common/bounce_code.h"
#include "common/clock.h"
#include "common/daemon.h"
#include "common/log.h"
#include "common/secret_file.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <netdb.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define API_LISTEN_BACKLOG 128

/*
 * Bind [api] listen ourselves: host:port or [v6]:port.  An address in use
 * is a permanent start error (exit 3), as for ingest: restarting will not
 * free it.
 */
static int api_listen(const char *listen_addr)
{
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *res;
    const char *colon = strrchr(listen_addr, ':');
    g_autofree char *host = g_strndup(listen_addr, (gsize)(colon - listen_addr));
    int fd, rc, one = 1;

    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = '\0';
    }
    if ((rc = getaddrinfo(host, colon + 1, &hints, &res)))
        daemon_start_fail("[api] listen %s: %s", listen_addr, gai_strerror(rc));
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        msg_fatal("socket: %s", g_strerror(errno));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, API_LISTEN_BACKLOG) < 0)
        daemon_start_fail("[api] listen %s: %s", listen_addr, g_strerror(errno));
    freeaddrinfo(res);
    return fd;
}

static char *api_read_pem(const char *path)
{
    char *text = NULL;
    GError *err = NULL;

    if (!g_file_get_contents(path, &text, NULL, &err))
        daemon_start_fail("%s", err->message);
    return text;
}

int main(int argc, char **argv)
{
    struct postern_config cfg;
    struct api a = { &cfg, .held = g_ptr_array_new() };
    g_autofree char *cert = NULL, *key = NULL;
    struct MHD_Daemon *d;
    struct api_events *events;
    int64_t next_check = 0;
    int sig_fd, listen_fd, epoll_fd, stopping = 0;
    GError *err = NULL;

    daemon_init(&argc, &argv, "postern-api", "- the HTTP API for the web platform", NULL, &cfg);
    sig_fd = daemon_signal_fd();

    /* The keys before anything listens: a broken file is the operator's to fix. */
    if (!(a.keys = api_keys_load(cfg.api.keys_file, &err)))
        daemon_start_fail("[api] keys_file: %s", err->message);
    /* A list with approval: the key that checks the moderator's links. */
    if ((a.approval = approval_wanted(&cfg)) && !approval_key_read(&cfg, a.approval_key, &err))
        daemon_start_fail("[approval] secret_file: %s", err->message);
    if (!*cfg.api.keys_file)
        msg_warn("[api] keys_file is not set: every request but /healthz is refused");
    /* [unsubscribe] one_click: the key of the links' codes (common/unsub_code.h). */
    if (cfg.unsubscribe.one_click &&
        !(a.unsub_key = bounce_key_read(cfg.bounce.secret_file, &a.unsub_keylen, &err)))
        daemon_start_fail("%s", err->message);
    if (!spool_open(&a.spool, &cfg, &err))
        daemon_start_fail("%s", err->message);
    /* [events] url: its secret before anything listens, as the keys. */
    if (!(events = api_events_start(&cfg, a.spool, &err)) && err)
        daemon_start_fail("%s", err->message);
    if (*cfg.api.tls_cert) {
        cert = api_read_pem(cfg.api.tls_cert);
        key = api_read_pem(cfg.api.tls_key);
    }
    listen_fd = api_listen(cfg.api.listen);
    if (!(d = api_server_start(&a, listen_fd, cert, key, &err)))
        daemon_start_fail("%s", err->message);
    if (key)
        memset(key, 0, strlen(key));
    epoll_fd = MHD_get_daemon_info(d, MHD_DAEMON_INFO_EPOLL_FD)->epoll_fd;
    msg_info("daemon started: %s on %s, spool %s", cert ? "https" : "http", cfg.api.listen,
             cfg.spool.dir);

    while (!stopping) {
        struct pollfd p[2] = { { epoll_fd, POLLIN, 0 }, { sig_fd, POLLIN, 0 } };
        MHD_UNSIGNED_LONG_LONG mhd_ms;
        int timeout = 1000;

        /* Wake for the server's own timers (idle connections), at least once a second. */
        if (MHD_get_timeout(d, &mhd_ms) == MHD_YES && mhd_ms < (MHD_UNSIGNED_LONG_LONG)timeout)
            timeout = (int)mhd_ms;
        if ((events ? api_events_poll(events, p, 2, timeout) : poll(p, 2, timeout)) < 0 &&
            errno != EINTR)
            msg_fatal("poll: %s", g_strerror(errno));
        if (p[1].revents)
            stopping = daemon_signal_read(sig_fd);
        MHD_run(d);
        /*
         * Registrations held by that run share one commit; the next run
         * answers them (and may hold more, for the commit after).
         */
        while (api_server_commit(&a))
            MHD_run(d);
        if (events)
            api_events_run(events, unix_ms());
        spool_reader_check_every(a.spool, &next_check, mono_ms());
    }
    msg_info("stopping on signal %d", stopping);
    MHD_stop_daemon(d);
    api_events_stop(events);
    close(listen_fd);
    api_keys_free(a.keys);
    secret_free(a.unsub_key);
    OPENSSL_cleanse(a.approval_key, sizeof a.approval_key);
    g_ptr_array_unref(a.held);
    spool_close(a.spool);
    config_free(&cfg);
    msg_info("daemon stopped");
    return 0;
}
