/*
 * postern-sender - the stateless sender worker: takes send jobs from the
 * dispatcher by credit, delivers them on its slot threads, answers SDONE.
 *
 * Set up (config, relay password, CURVE keys, DEALER socket, slots), then
 * one zmq_poll loop over the DEALER, the slots' eventfd and the signal
 * pipe (common/daemon.h).  The dispatcher protocol's common part (HELLO,
 * PING, WHO, silence) is common/worker.c.
 */
#include "common/bounce_code.h"
#include "common/secret_file.h"
#include "sender/sender.h"
#include "common/clock.h"
#include "common/daemon.h"
#include "common/log.h"
#include "common/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <zmq.h>

#define MONITOR_ENDPOINT "inproc://sender-monitor"

/* The main thread's side of the conversation with the dispatcher. */
struct conn {
    struct sender *s;
    struct worker w;                    /* DEALER, heartbeats (common/worker.h) */
    void *monitor;                      /* CURVE handshake events, tcp:// only */
    char *public_key;                   /* ours, Z85, for the log */
    int sig_fd;
    guint slots;
    guint busy;                         /* jobs received and not yet answered */
    gboolean stopping;
    gboolean handshake_failing;         /* said once until a handshake succeeds */
    gboolean conns_said;                /* the dispatcher has our CONNS below */
    guint said_budget, said_open;
    struct sender_batch *batch;         /* results of running jobs, held (sender_batch.c) */
    int64_t stop_after;                 /* monotonic ms: stopping, leave no sooner */
};

/*
 * After its HELLO 0 a stopping worker may still get jobs the dispatcher
 * leased before it read that HELLO.  A worker that left as soon as it was
 * idle dropped them, and they waited out their leases ([retry] lease, 2
 * minutes), holding relay connections all that time: bench/dispatch_scale.sh
 * saw up to 15 such leases at the start of a round after its senders were
 * stopped under load.  So a stopping worker listens this long after its
 * HELLO 0 and runs what comes.
 */
#define SENDER_STOP_GRACE_MS 500

/* A config problem: one line on stderr naming the file, exit 2 (SPEC §2). */
static G_NORETURN G_GNUC_PRINTF(2, 3) void sender_config_fail(const struct postern_config *cfg,
                                                             const char *fmt, ...)
{
    va_list ap;
    g_autofree char *why = NULL;

    va_start(ap, fmt);
    why = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: %s: %s\n", log_progname(), cfg->path ? cfg->path : "(defaults)", why);
    exit(CONFIG_EXIT_USAGE);
}

/* A secret from a file that only its owner may read (SPEC §8). */
static char *sender_read_secret(const struct postern_config *cfg, const char *key,
                                const char *path)
{
    g_autoptr(GError) err = NULL;
    char *text = secret_read(key, path, &err);

    if (!text)
        sender_config_fail(cfg, "%s", err->message);
    return text;
}

/*
 * A relay account: URL, TLS level, password, client timeouts, and its TLS
 * context, loaded here once for every client of the account (parsing the
 * trust store costs more CPU than a thousand transactions); a bad ca_file
 * fails here.  Each SMTP phase keeps its own timeout, Postfix's
 * (connect 30 s, RSET 20 s, DATA 120 s, end of data 600 s ...), and [relay]
 * timeout caps them all: a dead relay must not hold a job for 5 minutes
 * at a phase that answers in seconds.
 */
static struct sender_account *sender_setup_account(const struct postern_config *cfg,
                                                   const struct postern_relay *relay)
{
    struct sender_account *a = g_new0(struct sender_account, 1);
    g_autofree char *group = g_str_equal(relay->name, CONFIG_RELAY_DEFAULT)
                                 ? g_strdup("[relay]") : g_strdup_printf("[relay %s]", relay->name);
    g_autofree char *key = g_strdup_printf("%s password_file", group);
    g_autoptr(GError) err = NULL;

    a->relay = relay;
    if (!relay_url_parse(relay->url, &a->url, &err))
        sender_config_fail(cfg, "%s url: %s", group, err->message);
    if (a->url.kind == RELAY_MAILDIR)
        return a;
    if (!smtp_tls_parse(relay->tls, &a->smtp.tls, &err))
        sender_config_fail(cfg, "%s tls: %s", group, err->message);
    if (*relay->password_file) {
        a->password = sender_read_secret(cfg, key, relay->password_file);
        a->password[strcspn(a->password, "\r\n")] = '\0';
    }
    a->smtp.url = &a->url;
    a->smtp.ca_file = relay->ca_file;
    a->smtp.user = relay->user;
    a->smtp.password = a->password;
    a->smtp.helo_name = cfg->ingest.hostname;
    a->smtp.timeout_max = (int)MIN(cfg->relay.timeout * 1000, G_MAXINT);
    if (!(a->smtp.ssl_ctx = smtp_tls_context_new(&a->smtp, &err)))
        sender_config_fail(cfg, "%s: %s", group, err->message);
    return a;
}

static void sender_account_free(gpointer p)
{
    struct sender_account *a = p;

    secret_free(a->password);
    SSL_CTX_free(a->smtp.ssl_ctx);
    relay_url_clear(&a->url);
    g_free(a);
}

/* Every relay account, each password read now: a job never waits on a file. */
static void sender_setup_relay(struct sender *s, const struct postern_config *cfg)
{
    g_autoptr(GError) err = NULL;

    /* [bounce] verp: each copy gets its own return path, made here. */
    if (cfg->bounce.verp && !(s->verp_key = bounce_key_read(cfg->bounce.secret_file,
                                                            &s->verp_keylen, &err)))
        sender_config_fail(cfg, "%s", err->message);
    s->accounts = g_ptr_array_new_with_free_func(sender_account_free);
    for (guint i = 0; i < cfg->relays->len; i++)
        g_ptr_array_add(s->accounts, sender_setup_account(cfg, cfg->relays->pdata[i]));
}

/*
 * tcp:// carries mail across hosts: only with CURVE (SPEC §8).  Our key
 * file holds two Z85 lines, public then secret (the dispatcher's format);
 * curve_server_public_key is the dispatcher's public key.  Handshake
 * events are watched: see sender_watch_handshake().
 */
static void sender_setup_curve(struct conn *c, const struct postern_config *cfg)
{
    const char *server = cfg->workers.curve_server_public_key;
    char *text;
    g_auto(GStrv) lines = NULL;

    if (!*cfg->workers.curve_secret_key_file || !*server)
        sender_config_fail(cfg, "[workers] dispatch %s: tcp:// needs CURVE: set "
                           "curve_secret_key_file and curve_server_public_key",
                           cfg->workers.dispatch);
    text = sender_read_secret(cfg, "[workers] curve_secret_key_file",
                              cfg->workers.curve_secret_key_file);
    lines = g_strsplit(g_strstrip(text), "\n", -1);
    if (g_strv_length(lines) != 2 || strlen(g_strstrip(lines[0])) != 40 ||
        strlen(g_strstrip(lines[1])) != 40)
        sender_config_fail(cfg, "[workers] curve_secret_key_file %s: expected two Z85 lines: "
                           "public key, secret key", cfg->workers.curve_secret_key_file);
    if (strlen(server) != 40)
        sender_config_fail(cfg, "[workers] curve_server_public_key: not a 40-character Z85 key");
    zmq_setsockopt(c->w.sock, ZMQ_CURVE_SERVERKEY, server, 40);
    zmq_setsockopt(c->w.sock, ZMQ_CURVE_PUBLICKEY, lines[0], 40);
    zmq_setsockopt(c->w.sock, ZMQ_CURVE_SECRETKEY, lines[1], 40);
    OPENSSL_cleanse(lines[1], 40);
    secret_free(text);
    c->public_key = g_strdup(lines[0]);
    zmq_socket_monitor(c->w.sock, MONITOR_ENDPOINT,
                       ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                       ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                       ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL);
    c->monitor = zmq_socket(c->w.zctx, ZMQ_PAIR);
    zmq_connect(c->monitor, MONITOR_ENDPOINT);
}

/* Jobs we take: WIRE_JOBS_PER_SLOT a slot, one running and the rest queued. */
static guint sender_capacity(const struct conn *c)
{
    return c->slots * WIRE_JOBS_PER_SLOT;
}

/* HELLO's credit: the dispatcher's credit for us becomes what is free now. */
static guint sender_free_slots(void *arg)
{
    const struct conn *c = arg;

    return c->stopping || c->busy >= sender_capacity(c) ? 0 : sender_capacity(c) - c->busy;
}

/* Send without blocking; takes the payload. */
static gboolean sender_say(struct conn *c, const char *cmd, GBytes *payload)
{
    return worker_say(&c->w, cmd, payload);
}

/* CONNS when the budget we apply or the connections we hold changed. */
static void sender_report_conns(struct sender *s, struct conn *c)
{
    guint budget, open;

    sender_conns_count(s, &budget, &open);
    if (c->conns_said && budget == c->said_budget && open == c->said_open)
        return;
    if (sender_say(c, WIRE_CONNS, wire_pack("(uu)", budget, open))) {
        c->conns_said = TRUE;
        c->said_budget = budget;
        c->said_open = open;
    }
}

/*
 * The dispatcher does not know us (it restarted, or lost us for a while):
 * common/worker.c has said HELLO; the budget it granted is void, so ours
 * drops to 0 and idle connections close; then what we still hold, which
 * it counts until we let it go.
 */
static void sender_forgotten(void *arg)
{
    struct conn *c = arg;

    sender_conns_budget(c->s, 0);
    c->conns_said = FALSE;
    sender_report_conns(c->s, c);
}

/* CONNMAX: the dispatcher's grant of relay connections. */
static void sender_budget(struct sender *s, struct conn *c, GBytes *payload)
{
    guint32 budget;

    if (!wire_unpack(payload, "(u)", &budget)) {
        msg_warn("malformed CONNMAX from the dispatcher: ignored");
        return;
    }
    sender_conns_budget(s, budget);
    sender_report_conns(s, c);
}

/*
 * A job is ours even when no slot is free (a HELLO crossed jobs already on
 * their way) or we are stopping: it waits in the queue for the next free
 * slot rather than for its lease to run out.
 */
static void sender_take(struct sender *s, struct conn *c, GBytes *payload)
{
    struct wire_send_job *job = g_new0(struct wire_send_job, 1);
    g_autoptr(GError) err = NULL;

    if (!wire_send_job_decode(payload, job, &err)) {
        msg_warn("malformed SJOB from the dispatcher: ignored (%s)", err->message);
        wire_send_job_clear(job);
        g_free(job);
        return;
    }
    c->busy++;
    job->received = g_get_monotonic_time();
    g_async_queue_push(s->jobs, job);
}

/* What the dispatcher says besides PING and WHO (common/worker.c answers those). */
static void sender_command(void *arg, const char *cmd, GBytes *payload)
{
    struct conn *c = arg;

    if (g_str_equal(cmd, WIRE_SJOB))
        sender_take(c->s, c, payload);
    else if (g_str_equal(cmd, WIRE_CONNMAX))
        sender_budget(c->s, c, payload);
    else
        msg_warn("dispatcher sent an unknown command: ignored");
}

static const struct worker_ops sender_ops = {
    .free_slots = sender_free_slots,
    .forgotten = sender_forgotten,
    .command = sender_command,
};

/* At exit, give the last SDONEs a moment (2 s) to leave, not forever. */
static void sender_connect(struct sender *s, struct conn *c, const struct postern_config *cfg)
{
    c->s = s;
    worker_init(&c->w, "sender", cfg->workers.dispatch, 2000, &sender_ops, c);
    if (g_str_has_prefix(cfg->workers.dispatch, "tcp://"))
        sender_setup_curve(c, cfg);
    if (!worker_connect(&c->w))
        sender_config_fail(cfg, "[workers] dispatch %s: %s", cfg->workers.dispatch,
                           zmq_strerror(errno));
}

/*
 * One job's results: an SDONE, the job's last with credit 1 when its slot
 * takes another job (a CREDIT of its own only when there is no SDONE to
 * carry it, or it could not be sent).  A result that cannot be sent costs
 * a lease expiry and a second delivery elsewhere, never a lost one.
 */
static void sender_answer_one(struct conn *c, struct sender_done *done)
{
    gboolean said = FALSE;

    if (done->job_done) {
        c->busy--;
        done->res.credit = !c->stopping && c->busy < sender_capacity(c);
    }
    if (done->res.results->len &&
        !(said = sender_say(c, WIRE_SDONE, wire_send_result_encode(&done->res))))
        msg_warn("lease %" G_GUINT64_FORMAT ": result not sent to the dispatcher: %s",
                 done->res.lease, zmq_strerror(errno));
    if (done->res.credit && !said)
        sender_say(c, WIRE_CREDIT, wire_pack("(u)", 1));
    sender_done_free(done);
}

/*
 * May this job's end wait for company in the batch?  While we still hold
 * two jobs a connection after it, the dispatcher would hold its result for
 * company too (its own rule, dispatch_main.c), so nothing is lost by
 * sending it with the next.  Once fewer are left, the dispatcher must hear
 * at once to fill our queue before a slot idles.
 */
static gboolean sender_end_may_wait(struct sender *s, struct conn *c)
{
    guint budget, open, left = c->busy - MIN(c->busy, sender_batch_ends(c->batch) + 1);

    sender_conns_count(s, &budget, &open);
    return !c->stopping && left >= 2 * MAX(MIN(budget, c->slots), 1);
}

/* Everything held, parts and ends. */
static void sender_answer_held(struct conn *c)
{
    struct sender_done *done;

    while ((done = sender_batch_due(c->batch, G_MAXINT64)))
        sender_answer_one(c, done);
}

/* Results from the slots, through the batch (sender_batch.c); then CONNS
 * if the pool changed.  A job's end not held goes with everything held. */
static void sender_answer(struct sender *s, struct conn *c)
{
    struct sender_done *done;
    uint64_t n;

    if (read(s->wake_fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
        msg_panic("eventfd read: %m");
    while ((done = g_async_queue_try_pop(s->done))) {
        gboolean hold_end = done->job_done && sender_end_may_wait(s, c);

        if ((done = sender_batch_add(c->batch, done, g_get_monotonic_time(), hold_end))) {
            sender_answer_held(c);
            sender_answer_one(c, done);
        }
    }
    sender_report_conns(s, c);
}

/* Held results whose time has come. */
static void sender_answer_due(struct conn *c)
{
    struct sender_done *done;

    while ((done = sender_batch_due(c->batch, g_get_monotonic_time())))
        sender_answer_one(c, done);
}

/*
 * CURVE trouble would otherwise look like a dispatcher with no work.  A key
 * the dispatcher refuses ends the connection for good (ZeroMQ does not
 * retry after an authentication failure), so the worker exits and its
 * supervisor tries again later; a wrong server key makes every attempt
 * fail, which is said once.
 */
static void sender_watch_handshake(struct sender *s, struct conn *c)
{
    zmq_msg_t event, endpoint;

    for (;;) {
        uint16_t what;

        zmq_msg_init(&event);
        if (zmq_msg_recv(&event, c->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&event);
            return;
        }
        memcpy(&what, zmq_msg_data(&event), sizeof(what));
        zmq_msg_close(&event);
        zmq_msg_init(&endpoint);
        zmq_msg_recv(&endpoint, c->monitor, 0);
        zmq_msg_close(&endpoint);
        if (what == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
            msg_fatal("dispatcher %s refused our CURVE key %s: it is not in the dispatcher's "
                      "curve_allowed_keys_file", s->cfg->workers.dispatch, c->public_key);
        if (what == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            if (c->handshake_failing)
                msg_info("CURVE handshake with dispatcher %s succeeded", s->cfg->workers.dispatch);
            c->handshake_failing = FALSE;
        } else if (!c->handshake_failing) {
            msg_error("CURVE handshake with dispatcher %s failed: is curve_server_public_key "
                      "its public key?", s->cfg->workers.dispatch);
            c->handshake_failing = TRUE;
        }
    }
}

/*
 * SIGTERM: tell the dispatcher we have no free slot (HELLO 0), finish the
 * jobs running (each bounded by the client timeouts), give back those
 * queued unstarted (sender_slot.c), answer them all, exit.
 */
static void sender_stop(struct conn *c)
{
    int sig = daemon_signal_read(c->sig_fd);
    guint queued;

    if (!sig || c->stopping)
        return;
    queued = MIN((guint)MAX(g_async_queue_length(c->s->jobs), 0), c->busy);
    msg_info("stopping on signal: finishing %u job(s) running, giving back %u queued",
             c->busy - queued, queued);
    c->stopping = TRUE;
    g_atomic_int_set(&c->s->stopping, TRUE);
    c->stop_after = mono_ms() + SENDER_STOP_GRACE_MS;
    worker_hello(&c->w);
}

static void sender_loop(struct sender *s, struct conn *c)
{
    while (!c->stopping || c->busy > 0 || mono_ms() < c->stop_after) {
        zmq_pollitem_t items[] = {
            { c->w.sock, 0, ZMQ_POLLIN, 0 },
            { NULL, s->wake_fd, ZMQ_POLLIN, 0 },
            { NULL, c->sig_fd, ZMQ_POLLIN, 0 },
            { c->monitor, 0, ZMQ_POLLIN, 0 },
        };

        long wait = sender_batch_wait_ms(c->batch, g_get_monotonic_time(), worker_wait_ms(&c->w));
        int64_t grace = c->stopping ? c->stop_after - mono_ms() : 0;

        if (grace > 0 && (wait < 0 || grace < wait))
            wait = (long)grace;
        if (zmq_poll(items, c->monitor ? 4 : 3, wait) < 0 && errno != EINTR)
            msg_fatal("zmq_poll: %s", zmq_strerror(errno));
        if (items[2].revents)
            sender_stop(c);
        worker_receive(&c->w);
        if (items[1].revents)
            sender_answer(s, c);
        sender_answer_due(c);
        if (c->monitor && items[3].revents)
            sender_watch_handshake(s, c);
        worker_heartbeat(&c->w);
    }
}

int main(int argc, char **argv)
{
    gboolean local = FALSE;
    GOptionEntry options[] = {
        { "local", 0, 0, G_OPTION_ARG_NONE, &local, "on the dispatcher's host: use its ipc socket",
          NULL },
        { NULL }
    };
    struct postern_config cfg;
    struct sender s = { .cfg = &cfg };
    struct conn c = { 0 };

    daemon_init(&argc, &argv, "postern-sender", "- Postern sender worker", options, &cfg);
    if (local) {
        g_free(cfg.workers.dispatch);
        cfg.workers.dispatch = g_strdup(cfg.workers.local_dispatch);
    }
    sender_setup_relay(&s, &cfg);

    /* Before any thread exists (ZeroMQ's too): see common/daemon.h. */
    c.sig_fd = daemon_signal_fd();
    c.slots = cfg.workers.slots;
    c.batch = sender_batch_new();
    sender_connect(&s, &c, &cfg);
    s.jobs = g_async_queue_new();
    s.done = g_async_queue_new();
    if ((s.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        msg_fatal("eventfd: %m");
    sender_slots_start(&s);
    msg_info("daemon started: %u slot(s), dispatcher %s, relay %s", c.slots,
             cfg.workers.dispatch, cfg.relay.url);
    sender_loop(&s, &c);

    sender_slots_stop(&s);
    if (c.monitor) {
        zmq_socket_monitor(c.w.sock, NULL, 0);
        zmq_close(c.monitor);
    }
    worker_close(&c.w);
    g_async_queue_unref(s.jobs);
    g_async_queue_unref(s.done);
    sender_batch_free(c.batch);
    close(s.wake_fd);
    close(c.sig_fd);
    g_ptr_array_unref(s.accounts);
    secret_free(s.verp_key);
    g_free(c.public_key);
    config_free(&cfg);
    msg_info("daemon stopped");
    return 0;
}
