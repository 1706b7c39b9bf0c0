/*
 * ingest_loop.c - the event loop of postern-ingest: one epoll set for the
 * listeners, the sessions, the signal pipe and the committer's wakeup.
 *
 * Why not GLib's main loop, which this was: GLib wakes its own context
 * whenever a file descriptor joins or leaves its poll set (an eventfd
 * write, then a poll round and a read to take it), and every session
 * joins and leaves once, while smtp-source and Postfix's lmtp client open
 * a session per message or a few.  That was 6 of the 35 system calls a
 * message cost the main thread (docs/benchmarks.md, "Ingest").  An epoll
 * set costs one epoll_ctl each way instead, and a wait returns only the
 * descriptors that are ready, not a scan of all of them.
 *
 * The watches keep GLib's contract, which the sessions were written
 * against: a callback per descriptor and condition, level-triggered,
 * called with G_IO_IN or G_IO_OUT (hang-ups and errors wake both, as
 * poll() reports them whatever was asked), removed when it returns
 * G_SOURCE_REMOVE or by ingest_fd_remove().  A descriptor loses its
 * watches before it is closed, or in the callback that closes it and
 * returns G_SOURCE_REMOVE.  A generation number in each epoll event
 * tells a descriptor closed and reused within one wait from the one the
 * event was for.
 */
#include "ingest/ingest.h"
#include "common/log.h"

#include <errno.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define LOOP_EVENTS_MAX 64

struct fd_watch {
    GUnixFDSourceFunc fn[2];        /* [0] G_IO_IN, [1] G_IO_OUT */
    gpointer data[2];
    guint32 gen;                    /* 0: not in the epoll set */
};

static int loop_epfd = -1;
static int loop_wake_fd = -1;       /* eventfd: the committer's wakeup */
static GArray *loop_fds;            /* struct fd_watch, indexed by descriptor */
static guint32 loop_gen;

/* The committer's wakeup only ends the wait: what woke us is read after. */
static gboolean loop_woken(int fd, GIOCondition cond, gpointer data)
{
    uint64_t n;

    if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
        msg_panic("eventfd read: %m");
    return G_SOURCE_CONTINUE;
}

void ingest_loop_init(void)
{
    if ((loop_epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
        msg_fatal("epoll_create1: %m");
    if ((loop_wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        msg_fatal("eventfd: %m");
    loop_fds = g_array_new(FALSE, TRUE, sizeof(struct fd_watch));
    ingest_fd_add(loop_wake_fd, G_IO_IN, loop_woken, NULL);
}

void ingest_loop_free(void)
{
    close(loop_wake_fd);
    close(loop_epfd);
    g_clear_pointer(&loop_fds, g_array_unref);
    loop_epfd = loop_wake_fd = -1;
}

/* Any thread: end the wait of the main thread. */
void ingest_loop_wakeup(void)
{
    uint64_t one = 1;

    if (write(loop_wake_fd, &one, sizeof(one)) != sizeof(one))
        msg_panic("eventfd write: %m");
}

static struct fd_watch *loop_watch(int fd)
{
    if ((guint)fd >= loop_fds->len)
        g_array_set_size(loop_fds, (guint)fd + 1);
    return &g_array_index(loop_fds, struct fd_watch, fd);
}

/* Tell epoll what fd's watches now want. */
static void loop_update(int fd, struct fd_watch *w, gboolean was_in)
{
    struct epoll_event ev = { .events = (w->fn[0] ? EPOLLIN : 0) | (w->fn[1] ? EPOLLOUT : 0) };
    int op = !was_in ? EPOLL_CTL_ADD : ev.events ? EPOLL_CTL_MOD : EPOLL_CTL_DEL;

    if (op == EPOLL_CTL_ADD)
        w->gen = ++loop_gen ? loop_gen : ++loop_gen;
    ev.data.u64 = (uint64_t)w->gen << 32 | (uint32_t)fd;
    /* A callback may close its descriptor before it returns G_SOURCE_REMOVE,
     * as GLib allows: the kernel has then dropped it from the set already. */
    if (epoll_ctl(loop_epfd, op, fd, &ev) < 0 &&
        !(op == EPOLL_CTL_DEL && (errno == EBADF || errno == ENOENT)))
        msg_panic("epoll_ctl(%d, fd %d): %m", op, fd);
    if (op == EPOLL_CTL_DEL)
        w->gen = 0;
}

/* The id of fd's watch for cond: its descriptor and direction, never 0. */
guint ingest_fd_add(int fd, GIOCondition cond, GUnixFDSourceFunc fn, gpointer data)
{
    struct fd_watch *w = loop_watch(fd);
    int dir = cond == G_IO_OUT;
    gboolean was_in = w->gen != 0;

    if (cond != G_IO_IN && cond != G_IO_OUT)
        msg_panic("ingest_fd_add: fd %d: condition %#x", fd, cond);
    if (w->fn[dir])
        msg_panic("ingest_fd_add: fd %d already watched for %s", fd, dir ? "output" : "input");
    w->fn[dir] = fn;
    w->data[dir] = data;
    loop_update(fd, w, was_in);
    return ((guint)fd << 1 | (guint)dir) + 1;
}

void ingest_fd_remove(guint id)
{
    int fd = (int)((id - 1) >> 1), dir = (int)((id - 1) & 1);
    struct fd_watch *w = loop_watch(fd);

    if (!w->fn[dir])
        msg_panic("ingest_fd_remove: fd %d has no %s watch", fd, dir ? "output" : "input");
    w->fn[dir] = NULL;
    w->data[dir] = NULL;
    loop_update(fd, w, TRUE);
}

/* One callback of a ready descriptor, if its watch is still the one the event was for. */
static void loop_call(int fd, guint32 gen, int dir)
{
    struct fd_watch *w = loop_watch(fd);
    GUnixFDSourceFunc fn = w->fn[dir];

    if (w->gen != gen || !fn)
        return;
    if (fn(fd, dir ? G_IO_OUT : G_IO_IN, w->data[dir]) == G_SOURCE_CONTINUE)
        return;
    /* Removed: unless the callback already did (and maybe closed fd). */
    w = loop_watch(fd);
    if (w->gen == gen && w->fn[dir] == fn)
        ingest_fd_remove(((guint)fd << 1 | (guint)dir) + 1);
}

/* Wait at most timeout_ms (-1: until an event), then run what is ready. */
void ingest_loop_iterate(int timeout_ms)
{
    struct epoll_event ev[LOOP_EVENTS_MAX];
    int n = epoll_wait(loop_epfd, ev, LOOP_EVENTS_MAX, timeout_ms);

    if (n < 0 && errno != EINTR)
        msg_fatal("epoll_wait: %m");
    for (int i = 0; i < n; i++) {
        int fd = (int)(uint32_t)ev[i].data.u64;
        guint32 gen = (guint32)(ev[i].data.u64 >> 32);
        uint32_t e = ev[i].events;

        if (e & (EPOLLIN | EPOLLHUP | EPOLLERR))
            loop_call(fd, gen, 0);
        if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))
            loop_call(fd, gen, 1);
    }
}
