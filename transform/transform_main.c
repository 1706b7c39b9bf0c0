/*
 * postern-transform - a transform worker: token, rewrite, footer, DKIM.
 *
 * Set up (config, DKIM keys, spool, hint socket, DEALER socket to the
 * dispatcher), then one loop: wait for jobs or the next heartbeat, run a
 * batch of jobs to their commit, report them (TDONE), ask for more
 * (CREDIT) and ring the dispatcher.  SIGTERM lets the jobs in hand finish.
 */
#include "transform/transform.h"
#include "common/bounce_code.h"
#include "common/secret_file.h"
#include "transform/mime.h"
#include "common/daemon.h"
#include "common/log.h"
#include "common/hint.h"
#include "common/wire.h"
#include "common/worker.h"

#include <errno.h>
#include <string.h>
#include <zmq.h>
#include <openssl/crypto.h>

/*
 * Jobs the dispatcher may lease us at once.  They are planned one after
 * the other and committed together, so that a batch shares one fsync; a
 * batch closes when its messages pass TRANSFORM_BATCH_BYTES (memory) or its
 * planning TRANSFORM_BATCH_MS (latency under load).  A worker process is
 * the unit of parallelism: run one per core.
 */
#define TRANSFORM_SLOTS 32
#define TRANSFORM_BATCH_BYTES (8u << 20)
#define TRANSFORM_BATCH_MS 100

/* A TJOB received and not yet started. */
struct ticket {
    uint64_t lease;
    queue_id id;
};

struct transform_worker {
    struct transform tf;
    struct hint_sender *hints;
    struct worker conn;             /* to the dispatcher (common/worker.h) */
    int sig_fd;
    int stopping;                   /* the signal that stops us, or 0 */
    GArray *pending;                /* struct ticket, in arrival order */
    int64_t next_reader_check;
    int64_t next_release;           /* drop read LMDB pages from our RSS, once a second */
    int64_t last_idle;              /* the last transform_idle() that did its work */
};

/*
 * [dkim] keys left at its default names a key in the spool: create it on
 * the first start, so that the demo signs out of the box.  Several
 * workers may start at once; dkim_keygen() never overwrites, so the one
 * that loses the race just loads the winner's key.
 */
static void transform_default_key(const struct postern_config *cfg)
{
    const char *path;
    g_autofree char *dir = NULL;
    g_autofree char *record = NULL;
    struct dkim_key *key;
    GError *err = NULL;

    if (!config_dkim_keys_default(cfg))
        return;
    /* As config.c derives it: "default:PATH". */
    path = cfg->dkim.keys + strlen("default:");
    if (g_file_test(path, G_FILE_TEST_EXISTS))
        return;
    dir = g_path_get_dirname(path);
    if (g_mkdir_with_parents(dir, 0700) < 0)
        msg_fatal("%s: cannot create: %s", dir, g_strerror(errno));
    if (!(key = dkim_keygen(DKIM_KEY_ED25519, "default", path, &err))) {
        msg_info("DKIM key not created (another worker may have been first): %s", err->message);
        g_error_free(err);
        return;
    }
    record = dkim_dns_record(key);
    msg_info("created DKIM key %s: publish default._domainkey.%s TXT \"%s\"", path,
             cfg->dkim.domain, record ? record : "?");
    dkim_key_free(key);
}

static void transform_keys(struct transform *tf)
{
    GError *err = NULL;

    transform_default_key(tf->cfg);
    if (!(tf->keys = dkim_keys_load(tf->cfg->dkim.keys, &err)))
        msg_fatal("[dkim] keys: %s", err->message);
    /* [bounce] verp: the key that tells our bounce codes from forged ones. */
    if (tf->cfg->bounce.verp &&
        !(tf->verp_key = bounce_key_read(tf->cfg->bounce.secret_file, &tf->verp_keylen, &err)))
        msg_fatal("%s", err->message);
    /* [unsubscribe] one_click: the same secret, a key of its own by label (unsub_code.h). */
    if (tf->cfg->unsubscribe.one_click &&
        !(tf->unsub_key = bounce_key_read(tf->cfg->bounce.secret_file, &tf->unsub_keylen, &err)))
        msg_fatal("%s", err->message);
    /* A list with approval: the key of the links in the moderator's notices. */
    if (approval_wanted(tf->cfg) && !approval_key_read(tf->cfg, tf->approval_key, &err))
        msg_fatal("[approval] secret_file: %s", err->message);
    for (guint i = 0; i < tf->keys->len; i++) {
        const struct dkim_key *k = tf->keys->pdata[i];
        msg_info("DKIM key %s (%s) for d=%s", k->selector, dkim_key_algorithm(k),
                 tf->cfg->dkim.domain);
    }
}

/*
 * HELLO carries our slots, which the dispatcher takes as our whole credit.
 * Said again (after WHO, or a silence) while jobs wait here, it may grant
 * a few too many: those wait in `pending` too, none is lost.
 */
static guint transform_free_slots(void *arg)
{
    return TRANSFORM_SLOTS;
}

/*
 * Plan jobs until the batch is full, commit them together, then report
 * each (TDONE: the commit is on disk by now), ask for as many again, and
 * ring the dispatcher once for all the deliveries made ready.
 */
static void transform_batch(struct transform_worker *w)
{
    g_autoptr(GPtrArray) jobs = g_ptr_array_new_with_free_func((GDestroyNotify)transform_job_free);
    int64_t start = mono_ms();
    size_t bytes = 0;
    gboolean ready = FALSE;

    while (w->pending->len && bytes < TRANSFORM_BATCH_BYTES &&
           mono_ms() - start < TRANSFORM_BATCH_MS) {
        struct ticket t = g_array_index(w->pending, struct ticket, 0);
        char id[QUEUE_ID_LEN + 1];
        struct transform_job *j;

        g_array_remove_index(w->pending, 0);
        spool_id_format(t.id, id);
        msg_info("%s: transform job, lease %" G_GINT64_MODIFIER "x", id, t.lease);
        j = transform_job_prepare(&w->tf, t.lease, t.id);
        bytes += transform_job_bytes(j);
        g_ptr_array_add(jobs, j);
    }
    transform_job_commit_batch(&w->tf, jobs);
    for (guint i = 0; i < jobs->len; i++) {
        const struct transform_job *j = jobs->pdata[i];
        const char *outcome = transform_job_outcome(j);

        worker_say(&w->conn, WIRE_TDONE,
                   wire_pack("(tts)", transform_job_lease(j), transform_job_id(j), outcome));
        ready |= strcmp(outcome, "stale") != 0 && strcmp(outcome, "error") != 0;
    }
    worker_say(&w->conn, WIRE_CREDIT, wire_pack("(u)", (guint32)jobs->len));
    if (ready)
        hint_send(w->hints, "ready");
}

static void transform_tjob(struct transform_worker *w, GBytes *payload)
{
    struct ticket t;

    if (!wire_unpack(payload, "(tt)", &t.lease, &t.id)) {
        msg_warn("malformed TJOB from the dispatcher: ignored");
        return;
    }
    g_array_append_val(w->pending, t);
}

/* What the dispatcher says besides PING and WHO (common/worker.c answers those). */
static void transform_command(void *arg, const char *cmd, GBytes *payload)
{
    struct transform_worker *w = arg;

    if (g_str_equal(cmd, WIRE_TJOB))
        transform_tjob(w, payload);
    else
        msg_warn("dispatcher: unknown command \"%s\"", cmd);
}

static const struct worker_ops transform_ops = {
    .free_slots = transform_free_slots,
    .command = transform_command,
};

/*
 * A transform worker opens the spool, so it runs on the dispatcher's host:
 * it connects to the local ipc:// endpoint (a 0700 directory), which the
 * dispatcher binds beside a tcp:// one for remote senders; no CURVE needed.
 * Unsent messages are dropped at exit: a TDONE lost costs a lease expiry.
 */
static void transform_connect(struct transform_worker *w)
{
    const char *endpoint = w->tf.cfg->workers.local_dispatch;

    worker_init(&w->conn, "transform", endpoint, 0, &transform_ops, w);
    if (!worker_connect(&w->conn))
        msg_fatal("[workers] dispatch %s: %s", endpoint, zmq_strerror(errno));
}

/* Heartbeats both ways (common/worker.c), the reader check, our RSS. */
static void transform_timers(struct transform_worker *w)
{
    int64_t now = mono_ms();

    worker_heartbeat(&w->conn);
    spool_reader_check_every(w->tf.spool, &w->next_reader_check, now);
    if (now >= w->next_release) {
        spool_release_pages(w->tf.spool);
        w->next_release = now + 1000;
    }
}

/*
 * During a claim (pull mode, up to [token] claim_timeout): the loop's
 * heartbeat both ways, or the dispatcher would take us for dead and we
 * it.  Jobs that arrive meanwhile join w->pending as in the loop.
 */
static void transform_idle(void *ctx)
{
    struct transform_worker *w = ctx;
    int64_t now = mono_ms();

    if (now - w->last_idle < 200)
        return;
    w->last_idle = now;
    worker_receive(&w->conn);
    worker_heartbeat(&w->conn);
}

/* SIGTERM: the jobs in hand (received) are finished first; no new ones are read. */
static void transform_loop(struct transform_worker *w)
{
    while (!w->stopping || w->pending->len) {
        zmq_pollitem_t items[] = {
            { w->conn.sock, 0, ZMQ_POLLIN, 0 },
            { NULL, w->sig_fd, ZMQ_POLLIN, 0 },
        };
        long wait = w->pending->len ? 0 : worker_wait_ms(&w->conn);

        if (!w->stopping && zmq_poll(items, 2, wait) > 0) {
            if (items[1].revents)
                w->stopping = daemon_signal_read(w->sig_fd);
            if (!w->stopping)
                worker_receive(&w->conn);
        }
        if (w->pending->len)
            transform_batch(w);
        transform_timers(w);
    }
}

int main(int argc, char **argv)
{
    struct postern_config cfg;
    struct transform_worker w = { .tf.cfg = &cfg };
    GError *err = NULL;

    daemon_init(&argc, &argv, "postern-transform", "- Postern transform worker", NULL, &cfg);
    /* Before any thread (ZeroMQ's) starts: see common/daemon.h. */
    w.sig_fd = daemon_signal_fd();

    mime_init();
    transform_keys(&w.tf);
    if (!spool_open(&w.tf.spool, &cfg, &err))
        msg_fatal("%s", err->message);
    if (!transform_claim_start(&w.tf, &err))
        msg_fatal("%s", err->message);
    w.tf.idle = transform_idle;
    w.tf.idle_ctx = &w;
    if (!(w.hints = hint_sender_open(cfg.workers.hints, &err)))
        msg_fatal("%s", err->message);
    w.pending = g_array_new(FALSE, FALSE, sizeof(struct ticket));
    transform_connect(&w);
    msg_info("daemon started: spool %s, dispatcher %s", cfg.spool.dir, cfg.workers.local_dispatch);

    transform_loop(&w);

    msg_info("stopping on signal %d", w.stopping);
    g_array_unref(w.pending);
    worker_close(&w.conn);
    hint_sender_close(w.hints);
    transform_claim_stop(&w.tf);
    spool_close(w.tf.spool);
    g_ptr_array_unref(w.tf.keys);
    secret_free(w.tf.verp_key);
    secret_free(w.tf.unsub_key);
    OPENSSL_cleanse(w.tf.approval_key, sizeof w.tf.approval_key);
    config_free(&cfg);
    msg_info("daemon stopped");
    return 0;
}
