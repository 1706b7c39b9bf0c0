/*
 * ingest_listen.c - the listening sockets: host:port, [v6]:port, unix:/path.
 */
#include "ingest/ingest.h"
#include "common/clock.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <arpa/inet.h>

/*
 * One listening socket. Its source is removed while accept() cannot get a
 * descriptor, and put back by a timer: the socket stays readable, so
 * watching it then would spin the CPU and fill the log.
 */
struct listener {
    struct ingest *ig;
    int fd;
    guint source;                   /* watching fd, or 0 while backing off */
    int64_t resume;                 /* monotonic ms: back off until then; 0: not */
};

#define LISTEN_BACKOFF_MS 1000

static gboolean listen_accept(int lfd, GIOCondition cond, gpointer data);

/* Once a second (ingest_main.c): listeners whose back-off is over accept again. */
void ingest_listen_tick(struct ingest *ig, int64_t now_ms)
{
    for (guint i = 0; ig->listeners && i < ig->listeners->len; i++) {
        struct listener *l = ig->listeners->pdata[i];

        if (!l->resume || now_ms < l->resume)
            continue;
        l->resume = 0;
        l->source = ingest_fd_add(l->fd, G_IO_IN, listen_accept, l);
    }
}

static gboolean listen_fail(GError **err, const char *addr, const char *what)
{
    g_set_error(err, g_quark_from_static_string("postern-ingest"), 1,
                "[ingest] listen %s: %s: %s", addr, what, g_strerror(errno));
    return FALSE;
}

static void client_name(const struct sockaddr_storage *ss, char *out, size_t len)
{
    if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, out, (socklen_t)len);
    else if (ss->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, out, (socklen_t)len);
    else
        g_strlcpy(out, "unix", len);
}

/*
 * Accept every pending connection.  Over max_connections the client
 * hears 421 4.3.2 at once and is closed, as Postfix's anvil would; over
 * max_connections_per_client, 421 4.7.0 (ingest_session_admit).
 */
static gboolean listen_accept(int lfd, GIOCondition cond, gpointer data)
{
    struct listener *l = data;
    struct ingest *ig = l->ig;

    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sslen = sizeof(ss);
        char name[INET6_ADDRSTRLEN];
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sslen, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0 && (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)) {
            msg_warn("accept: %s: not accepting for %d ms (%u sessions open)",
                     g_strerror(errno), LISTEN_BACKOFF_MS, ig->n_sessions);
            l->source = 0;
            l->resume = mono_ms() + LISTEN_BACKOFF_MS;
            return G_SOURCE_REMOVE;
        }
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                msg_warn("accept: %s", g_strerror(errno));
            return G_SOURCE_CONTINUE;
        }
        client_name(&ss, name, sizeof(name));
        if (ig->n_sessions >= ig->cfg->ingest.max_connections) {
            static const char busy[] = "421 4.3.2 Too many connections, try again later\r\n";
            ssize_t ignored = write(fd, busy, sizeof(busy) - 1);
            (void)ignored;
            msg_warn("connect from %s: refused: too many connections (%u)", name,
                     ig->n_sessions);
            close(fd);
            continue;
        }
        if (!ingest_session_admit(ig, fd, name)) {
            close(fd);
            continue;
        }
        ingest_session_start(ig, fd, name);
    }
}

static int listen_unix(const char *path, GError **err)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof(sun.sun_path)) {
        errno = ENAMETOOLONG;
        listen_fail(err, path, "path");
        return -1;
    }
    strcpy(sun.sun_path, path);
    unlink(path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        listen_fail(err, path, "bind");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static int listen_inet(const char *addr, GError **err)
{
    g_autofree char *host = NULL;
    const char *colon = strrchr(addr, ':');
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *res;
    int fd, one = 1, rc;

    if (!colon) {
        errno = EINVAL;
        listen_fail(err, addr, "expected host:port");
        return -1;
    }
    host = g_strndup(addr, (gsize)(colon - addr));
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = '\0';
    }
    if ((rc = getaddrinfo(*host ? host : NULL, colon + 1, &hints, &res))) {
        g_set_error(err, g_quark_from_static_string("postern-ingest"), 1,
                    "[ingest] listen %s: %s", addr, gai_strerror(rc));
        return -1;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) < 0) {
        listen_fail(err, addr, "bind");
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

gboolean ingest_listen(struct ingest *ig, GError **err)
{
    ig->listeners = g_ptr_array_new_with_free_func(g_free);
    for (char **a = ig->cfg->ingest.listen; *a; a++) {
        int fd = g_str_has_prefix(*a, "unix:") ? listen_unix(*a + 5, err) : listen_inet(*a, err);

        if (fd < 0)
            return FALSE;
        if (listen(fd, 512) < 0)
            return listen_fail(err, *a, "listen");
        struct listener *l = g_new0(struct listener, 1);

        l->ig = ig;
        l->fd = fd;
        l->source = ingest_fd_add(fd, G_IO_IN, listen_accept, l);
        g_ptr_array_add(ig->listeners, l);
        msg_info("listening on %s", *a);
    }
    return TRUE;
}

void ingest_listen_stop(struct ingest *ig)
{
    for (guint i = 0; ig->listeners && i < ig->listeners->len; i++) {
        struct listener *l = ig->listeners->pdata[i];

        if (l->source)
            ingest_fd_remove(l->source);
    }
    g_clear_pointer(&ig->listeners, g_ptr_array_unref);
}
