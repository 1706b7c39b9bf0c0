/*
 * postern-ingest - the LMTP (and SMTP) front: accept, store durably, hint.
 *
 * Set up (config, spool, listeners, hint socket), then one event loop
 * (ingest_loop.c) whose every iteration ends in the group commit of the
 * messages it completed.
 */
#include "ingest/ingest.h"
#include "common/clock.h"
#include "common/daemon.h"
#include "common/log.h"

#include <glib-unix.h>
#include <stdlib.h>

/* SIGTERM or SIGINT, through the signal pipe (common/daemon.h). */
static gboolean ingest_stop(int fd, GIOCondition cond, gpointer data)
{
    struct ingest *ig = data;
    int sig = daemon_signal_read(fd);

    if (!sig)
        return G_SOURCE_CONTINUE;
    msg_info("stopping on signal %d", sig);
    ig->stopping = TRUE;
    return G_SOURCE_REMOVE;
}

/* Once a second: idle sessions, listeners backing off, the spool's reader check. */
static void ingest_tick(struct ingest *ig, int64_t now)
{
    static int64_t next_reader_check;

    ingest_session_expire_idle(ig);
    ingest_listen_tick(ig, now);
    spool_reader_check_every(ig->spool, &next_reader_check, now);
}

static GHashTable *ingest_recipient_set(char **list)
{
    GHashTable *set = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);

    for (; *list; list++)
        g_hash_table_add(set, lmtp_addr_canonical(*list));
    return set;
}

int main(int argc, char **argv)
{
    struct postern_config cfg;
    struct ingest ig = { .cfg = &cfg };
    GError *err = NULL;
    int64_t next_tick;
    int sig_fd;

    daemon_init(&argc, &argv, "postern-ingest", "- Postern LMTP/SMTP ingest daemon", NULL, &cfg);
    /* Before the committer thread starts: see common/daemon.h. */
    sig_fd = daemon_signal_fd();

    if (!spool_open(&ig.spool, &cfg, &err))
        msg_fatal("%s", err->message);
    if (!(ig.hints = hint_sender_open(cfg.workers.hints, &err)))
        msg_fatal("%s", err->message);
    ig.recipients = ingest_recipient_set(cfg.accept);
    ig.batch = g_ptr_array_new();
    ingest_loop_init();
    /* An address in use or refused stays so: a restart loop would not help. */
    if (!ingest_listen(&ig, &err))
        daemon_start_fail("%s", err->message);

    ingest_fd_add(sig_fd, G_IO_IN, ingest_stop, &ig);
    msg_info("daemon started: spool %s", cfg.spool.dir);

    /*
     * The group commit (ingest_commit.c): every session whose DATA ended
     * while the committer was busy is in ig.batch when it is idle again,
     * and they share one fsync.
     */
    ingest_commit_start(&ig);
    next_tick = mono_ms() + 1000;
    while (!ig.stopping) {
        int64_t now = mono_ms();

        if (now >= next_tick) {
            ingest_tick(&ig, now);
            next_tick = now + 1000;
        }
        /*
         * Block until an event: a session's bytes, or the committer's
         * wakeup when a batch is on disk, or the tick.  Do not block while
         * a batch waits for an idle committer (a pipelined message may
         * complete inside ingest_commit_batch() itself, with no event to
         * come).
         */
        ingest_loop_iterate(ingest_commit_pending(&ig) ? 0 : (int)(next_tick - now));
        ingest_commit_batch(&ig);
    }

    ingest_listen_stop(&ig);
    ingest_commit_stop(&ig);
    ingest_session_shutdown_all(&ig);
    ingest_loop_free();
    g_ptr_array_unref(ig.batch);
    g_hash_table_unref(ig.recipients);
    hint_sender_close(ig.hints);
    spool_close(ig.spool);
    config_free(&cfg);
    msg_info("daemon stopped");
    return 0;
}
