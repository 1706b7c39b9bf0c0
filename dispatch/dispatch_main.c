/*
 * postern-dispatch - lease work to the transform and sender workers.
 *
 * Set up (config, spool, sockets), then loop: wait for a worker message,
 * a hint or the next tick; record results; take back expired leases;
 * hand out as much due work as the workers have credit for.  A rescan
 * every second means a lost hint delays work by a second at most.
 */
#include "dispatch/dispatch.h"
#include "common/daemon.h"
#include "common/log.h"
#include "spool/relay_state.h"

#include <errno.h>
#include <zmq.h>

#define TICK_MS 1000

/*
 * A pause outlives the dispatcher that saw the reply (spool/relay_state.h):
 * every delivery, old or queued since, waits until it ends, or goes
 * through another account that is not paused.
 */
static void dispatch_load_relay_state(struct dispatch *d)
{
    struct spool_txn t;
    GError *err = NULL;

    dispatch_accounts_setup(d);
    if (!spool_read_begin(d->spool, &t, &err))
        msg_fatal("relay state: %s", err->message);
    for (guint i = 0; i < d->naccounts; i++) {
        struct dispatch_account *a = &d->accounts[i];
        struct relay_state st;

        if (!relay_state_get(&t, a->relay->name, &st, &err))
            msg_fatal("relay state: %s", err->message);
        dispatch_account_adopt(d, a, &st);
        if (a->held)
            dispatch_account_log_pause(d, a, "(recorded before our start)");
    }
    spool_read_end(&t);
}

static void dispatch_setup(struct dispatch *d)
{
    GError *err = NULL;
    struct relay_url url;

    if (!relay_url_parse(d->cfg->relay.url, &url, &err))
        msg_fatal("%s: [relay] url: %s", d->cfg->path ? d->cfg->path : "(defaults)", err->message);
    /* Connections are counted when any account has them (a Maildir has none). */
    for (guint i = 1; url.kind == RELAY_MAILDIR && i < d->cfg->relays->len; i++) {
        const struct postern_relay *r = d->cfg->relays->pdata[i];

        relay_url_clear(&url);
        if (!relay_url_parse(r->url, &url, &err))
            msg_fatal("%s: [relay %s] url: %s", d->cfg->path, r->name, err->message);
    }
    if (!spool_open(&d->spool, d->cfg, &err))
        msg_fatal("%s", err->message);
    /* Results of mail already sent must be recorded even on a full spool. */
    spool_use_reserve(d->spool);
    d->zctx = zmq_ctx_new();
    /* An endpoint taken (another dispatcher) stays taken: no restart loop. */
    if (!dispatch_bind(d, &err))
        daemon_start_fail("%s", err->message);
    /* The accounts first: the connection budget is the sum of theirs. */
    dispatch_load_relay_state(d);
    dispatch_conns_setup(d, &url);
    relay_url_clear(&url);
    d->done = g_ptr_array_new_with_free_func(wire_send_result_free);
    d->policy.initial = (gint64)d->cfg->retry.initial * G_USEC_PER_SEC;
    d->policy.max = (gint64)d->cfg->retry.max * G_USEC_PER_SEC;
    d->policy.lifetime = (gint64)d->cfg->retry.lifetime * G_USEC_PER_SEC;
    d->mail_from = g_strdup(d->cfg->bounce.envelope_from);
    d->work_hinted = TRUE;          /* the rescan at start */
}

/* Read what the workers sent, then record the results among it. */
static void dispatch_drain(struct dispatch *d)
{
    dispatch_receive(d);
    if (d->done->len) {
        dispatch_record_results(d, d->done);
        g_ptr_array_set_size(d->done, 0);
    }
}

/* Until SIGTERM or SIGINT arrives on sig_fd (common/daemon.h). */
static void dispatch_loop(struct dispatch *d, int sig_fd)
{
    g_autoptr(GPtrArray) none = g_ptr_array_new();
    int64_t next_tick = 0, next_reader_check = 0;
    gboolean tick, lease, record;
    int stop = 0;

    while (!stop) {
        zmq_pollitem_t items[5] = {
            { d->router, 0, ZMQ_POLLIN, 0 },
            { d->hints, 0, ZMQ_POLLIN, 0 },
            { NULL, sig_fd, ZMQ_POLLIN, 0 },
        };
        int n_items = 3;
        int64_t now = mono_ms();
        long timeout = d->work_hinted ? 0 : (long)MAX(next_tick - now, 0);

        if (d->results_due)
            timeout = MIN(timeout, (long)MAX(d->results_due - now, 0));

        if (d->local)
            items[n_items++] = (zmq_pollitem_t){ d->local, 0, ZMQ_POLLIN, 0 };
        if (d->zap)
            items[n_items++] = (zmq_pollitem_t){ d->zap, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(items, n_items, timeout) < 0 && errno != EINTR)
            msg_fatal("zmq_poll: %s", zmq_strerror(errno));
        if (items[2].revents && (stop = daemon_signal_read(sig_fd)))
            msg_info("stopping on signal %d", stop);
        dispatch_receive(d);
        now = mono_ms();
        tick = now >= next_tick;
        if (tick) {
            next_tick = now + TICK_MS;
            dispatch_heartbeat(d);
            dispatch_relay_refresh(d);
            dispatch_approval_expire(d, now);
            d->work_hinted = TRUE;
        }
        if (tick || d->read_since_release > DISPATCH_RELEASE_BYTES) {
            spool_release_pages(d->spool);
            d->read_since_release = 0;
        }
        spool_reader_check_every(d->spool, &next_reader_check, now);
        /* Results ask for a lease round too: their jobs freed connections.
         * Held ones go with any round that happens. */
        record = dispatch_results_now(d, now);
        lease = d->work_hinted || record;
        record |= lease && d->done->len;
        if (lease)
            dispatch_lease_transforms(d);
        /* Results, expired leases and new leases: one transaction, one fsync. */
        dispatch_round(d, record ? d->done : none, tick, lease);
        if (record) {
            g_ptr_array_set_size(d->done, 0);
            d->results_due = 0;
        }
    }

    /*
     * Results that arrived with the signal (`postern run` stops the
     * workers first, and their last results may still be queued): record
     * them, or those deliveries would wait out their leases and go twice.
     */
    dispatch_drain(d);
}

int main(int argc, char **argv)
{
    struct postern_config cfg;
    struct dispatch d = { .cfg = &cfg };
    int sig_fd;

    daemon_init(&argc, &argv, "postern-dispatch", "- Postern dispatcher", NULL, &cfg);
    /* Before any thread (ZeroMQ's) starts: see common/daemon.h. */
    sig_fd = daemon_signal_fd();

    dispatch_setup(&d);
    msg_info("daemon started: spool %s, workers at %s, relay %s", cfg.spool.dir,
             cfg.workers.dispatch, cfg.relay.url);
    dispatch_loop(&d, sig_fd);

    /* Leases live in the spool: the next dispatcher picks up from there. */
    msg_info("daemon stopped");
    zmq_close(d.router);
    if (d.local)
        zmq_close(d.local);
    zmq_close(d.hints);
    if (d.zap)
        zmq_close(d.zap);
    zmq_ctx_term(d.zctx);
    g_hash_table_unref(d.jobs);     /* first: a job counts itself off its worker */
    g_hash_table_unref(d.workers);
    g_ptr_array_unref(d.done);
    if (d.allowed_keys)
        g_hash_table_unref(d.allowed_keys);
    g_free(d.mail_from);
    dispatch_accounts_free(&d);
    spool_close(d.spool);
    config_free(&cfg);
    return 0;
}
