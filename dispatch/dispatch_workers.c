/*
 * dispatch_workers.c - the worker table: binding, HELLO (and its wire
 * version), CREDIT (also in SDONE), PING, heartbeats, dead workers, and
 * the CURVE allow-list for tcp:// workers.
 */
#include "dispatch/dispatch.h"
#include "common/secret_file.h"
#include "common/log.h"

#include <errno.h>
#include <string.h>
#include <openssl/crypto.h>
#include <zmq.h>

/*
 * "r" or "l" (which socket) and the routing id in hex: unique across both.
 * Made for every message a worker sends, so without printf (which cost
 * more than the rest of receiving an SDONE).
 */
static char *worker_name(struct dispatch *d, void *sock, GBytes *identity)
{
    static const char hex[] = "0123456789abcdef";
    gsize n;
    const unsigned char *id = g_bytes_get_data(identity, &n);
    char *name = g_malloc(2 + 2 * n), *p = name;

    *p++ = sock == d->local ? 'l' : 'r';
    for (gsize i = 0; i < n; i++) {
        *p++ = hex[id[i] >> 4];
        *p++ = hex[id[i] & 0x0f];
    }
    *p = '\0';
    return name;
}

static struct dispatch_worker *worker_lookup(struct dispatch *d, void *sock, GBytes *identity)
{
    g_autofree char *name = worker_name(d, sock, identity);
    return g_hash_table_lookup(d->workers, name);
}

static struct dispatch_worker *worker_add(struct dispatch *d, void *sock, GBytes *identity,
                                 enum worker_kind kind)
{
    struct dispatch_worker *w = g_new0(struct dispatch_worker, 1);

    w->sock = sock;
    w->identity = g_bytes_ref(identity);
    w->name = worker_name(d, sock, identity);
    w->kind = kind;
    g_hash_table_replace(d->workers, w->name, w);
    return w;
}

static void worker_free(gpointer p)
{
    struct dispatch_worker *w = p;
    g_bytes_unref(w->identity);
    g_free(w->name);
    g_free(w);
}

/*
 * A remote worker must hold one of the allowed CURVE keys.  libzmq asks
 * the ZAP handler (RFC 27) on inproc://zeromq.zap.01; we answer from the
 * allow-list file, and log refusals by key so an operator can see them.
 */
static void dispatch_zap(struct dispatch *d)
{
    zmq_msg_t part;
    GPtrArray *frames = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
    int more = 1;
    size_t len = sizeof(more);

    while (more) {
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, d->zap, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&part);
            break;
        }
        g_ptr_array_add(frames, g_bytes_new(zmq_msg_data(&part), zmq_msg_size(&part)));
        zmq_msg_close(&part);
        zmq_getsockopt(d->zap, ZMQ_RCVMORE, &more, &len);
    }
    if (frames->len < 7) {
        g_ptr_array_unref(frames);
        return;
    }
    /* version, request id, domain, address, identity, mechanism, credentials */
    gsize klen;
    const void *key = g_bytes_get_data(frames->pdata[6], &klen);
    char z85[41] = "";
    gboolean ok = klen == 32 && zmq_z85_encode(z85, key, 32) &&
                  g_hash_table_contains(d->allowed_keys, z85);
    gsize rlen;
    const void *reqid = g_bytes_get_data(frames->pdata[1], &rlen);
    if (!ok)
        msg_warn("refused worker with CURVE key %s: not in [workers] curve_allowed_keys_file",
                 *z85 ? z85 : "(none)");
    zmq_send(d->zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(d->zap, reqid, rlen, ZMQ_SNDMORE);
    zmq_send(d->zap, ok ? "200" : "400", 3, ZMQ_SNDMORE);
    zmq_send(d->zap, ok ? "OK" : "key not allowed", ok ? 2 : 15, ZMQ_SNDMORE);
    zmq_send(d->zap, z85, ok ? 40 : 0, ZMQ_SNDMORE);
    zmq_send(d->zap, "", 0, 0);
    g_ptr_array_unref(frames);
}

/*
 * The secret key file "public\nsecret\n" (Z85), readable by its owner
 * only, as the workers' (sender/secret.h); the key goes into the socket
 * and every copy of it is wiped.
 */
static gboolean dispatch_curve_secret(struct dispatch *d, GError **err)
{
    const char *path = d->cfg->workers.curve_secret_key_file;
    char *text = secret_read("[workers] curve_secret_key_file", path, err);
    g_auto(GStrv) lines = NULL;
    gboolean ok;

    if (!text)
        return FALSE;
    lines = g_strsplit(g_strstrip(text), "\n", -1);
    ok = g_strv_length(lines) == 2 && strlen(g_strstrip(lines[1])) == 40;
    if (ok)
        zmq_setsockopt(d->router, ZMQ_CURVE_SECRETKEY, lines[1], 40);
    else
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_IO,
                    "[workers] curve_secret_key_file %s: expected two Z85 lines: "
                    "public key, secret key", path);
    for (int i = 0; lines[i]; i++)
        OPENSSL_cleanse(lines[i], strlen(lines[i]));
    secret_free(text);
    return ok;
}

/* The allow-list file holds one Z85 public key a line. */
static gboolean dispatch_load_curve(struct dispatch *d, GError **err)
{
    const struct postern_config *cfg = d->cfg;
    g_autofree char *allowed_text = NULL;
    g_auto(GStrv) allowed = NULL;
    int one = 1;

    if (!*cfg->workers.curve_secret_key_file || !*cfg->workers.curve_allowed_keys_file) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_IO,
                    "[workers] dispatch %s: tcp:// needs curve_secret_key_file and "
                    "curve_allowed_keys_file (ZeroMQ over TCP only with CURVE)",
                    cfg->workers.dispatch);
        return FALSE;
    }
    if (!dispatch_curve_secret(d, err) ||
        !g_file_get_contents(cfg->workers.curve_allowed_keys_file, &allowed_text, NULL, err))
        return FALSE;
    d->allowed_keys = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    allowed = g_strsplit(allowed_text, "\n", -1);
    for (int i = 0; allowed[i]; i++) {
        char *k = g_strstrip(allowed[i]);
        if (strlen(k) == 40)
            g_hash_table_add(d->allowed_keys, g_strdup(k));
    }
    d->zap = zmq_socket(d->zctx, ZMQ_REP);
    if (zmq_bind(d->zap, "inproc://zeromq.zap.01") < 0) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_IO, "ZAP handler: %s", zmq_strerror(errno));
        return FALSE;
    }
    zmq_setsockopt(d->router, ZMQ_CURVE_SERVER, &one, sizeof(one));
    msg_info("CURVE on %s: %u worker key(s) allowed", cfg->workers.dispatch,
             g_hash_table_size(d->allowed_keys));
    return TRUE;
}

static void *dispatch_router(struct dispatch *d)
{
    void *sock = zmq_socket(d->zctx, ZMQ_ROUTER);
    int zero = 0, one = 1;

    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof(zero));
    /* An unroutable job must fail loudly, not vanish: we then forget the worker. */
    zmq_setsockopt(sock, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
    return sock;
}

static gboolean dispatch_bind_one(void *sock, const char *endpoint, GError **err)
{
    if (zmq_bind(sock, endpoint) == 0)
        return TRUE;
    g_set_error(err, SPOOL_ERROR, SPOOL_ERR_IO, "[workers] dispatch %s: %s", endpoint,
                zmq_strerror(errno));
    return FALSE;
}

/*
 * Workers connect to [workers] dispatch.  When that is tcp:// (CURVE, for
 * other hosts), a second socket on the spool's 0700 ipc path serves the
 * workers on this host, which then need no keys.
 */
gboolean dispatch_bind(struct dispatch *d, GError **err)
{
    const struct postern_config *cfg = d->cfg;
    int zero = 0;

    d->workers = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, worker_free);
    d->router = dispatch_router(d);
    d->hints = zmq_socket(d->zctx, ZMQ_PULL);
    zmq_setsockopt(d->hints, ZMQ_LINGER, &zero, sizeof(zero));
    if (g_str_has_prefix(cfg->workers.dispatch, "tcp://") && !dispatch_load_curve(d, err))
        return FALSE;
    if (!dispatch_bind_one(d->router, cfg->workers.dispatch, err))
        return FALSE;
    if (!g_str_equal(cfg->workers.local_dispatch, cfg->workers.dispatch)) {
        d->local = dispatch_router(d);
        if (!dispatch_bind_one(d->local, cfg->workers.local_dispatch, err))
            return FALSE;
    }
    if (zmq_bind(d->hints, cfg->workers.hints) < 0) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_IO, "[workers] hints %s: %s",
                    cfg->workers.hints, zmq_strerror(errno));
        return FALSE;
    }
    return TRUE;
}

/*
 * A worker of another wire version (common/wire.h) gets no job: its
 * results would be misread.  It says HELLO again at every WHO, a second
 * apart, so the line is logged once a minute, not each time.
 */
static void dispatch_refuse_version(struct dispatch *d, void *sock, GBytes *identity,
                                    guint32 version)
{
    int64_t now = mono_ms();
    g_autofree char *name = NULL;

    if (d->version_warned && now - d->version_warned < 60000)
        return;
    d->version_warned = now;
    name = worker_name(d, sock, identity);
    msg_warn("worker %s speaks wire version %u, this dispatcher %u: not taken "
             "(run the same release of postern-dispatch and its workers)",
             name, version, WIRE_VERSION);
}

static void dispatch_hello(struct dispatch *d, void *sock, GBytes *identity, GBytes *payload)
{
    g_autofree char *kind = NULL;
    guint32 slots, version;
    struct dispatch_worker *w;

    if (!wire_unpack(payload, "(suu)", &kind, &slots, &version)) {
        g_clear_pointer(&kind, g_free);
        /* Version 1 said no version. */
        if (wire_unpack(payload, "(su)", &kind, &slots))
            dispatch_refuse_version(d, sock, identity, 1);
        else
            msg_warn("malformed HELLO from a worker: ignored");
        return;
    }
    if (version != WIRE_VERSION) {
        dispatch_refuse_version(d, sock, identity, version);
        return;
    }
    if (!g_str_equal(kind, "transform") && !g_str_equal(kind, "sender")) {
        msg_warn("malformed HELLO from a worker: ignored");
        return;
    }
    w = worker_lookup(d, sock, identity);
    if (!w) {
        w = worker_add(d, sock, identity,
                       g_str_equal(kind, "sender") ? WORKER_SENDER : WORKER_TRANSFORM);
        msg_info("worker %s (%s) connected with %u slot(s)", w->name, kind, slots);
    } else if (w->kind == WORKER_SENDER) {
        /*
         * Every HELLO of a known sender follows its budget's drop to 0,
         * also one with no free slot (all busy, or stopping): keeping the
         * old grant would let jobs go to a worker that refuses them all.
         */
        dispatch_conns_rejoin(d, w);
    }
    w->credit = slots;
    d->work_hinted = TRUE;
}

static void dispatch_receive_from(struct dispatch *d, void *sock)
{
    GBytes *identity, *payload;
    char *cmd;

    while (wire_recv(sock, TRUE, &identity, &cmd, &payload)) {
        struct dispatch_worker *w = worker_lookup(d, sock, identity);

        if (g_str_equal(cmd, WIRE_HELLO)) {
            dispatch_hello(d, sock, identity, payload);
        } else if (g_str_equal(cmd, WIRE_SDONE)) {
            /*
             * A result counts even from a worker we do not know (we have
             * restarted): the lease in the spool decides whether it
             * applies, not our memory.  Dropping it would send again what
             * the relay already has.
             */
            struct wire_send_result *res = g_new0(struct wire_send_result, 1);
            g_autoptr(GError) err = NULL;

            /* Decoded once, here: its credit counts now, its results in the round. */
            if (wire_send_result_decode(payload, res, &err)) {
                if (w) {
                    w->credit += res->credit;
                    w->ended += res->credit;
                }
                g_ptr_array_add(d->done, res);
            } else {
                msg_warn("malformed SDONE from worker %s: ignored (%s)",
                         w ? w->name : "(unknown)", err->message);
                wire_send_result_free(res);
            }
            if (!w)
                wire_send(sock, identity, WIRE_WHO, NULL);
        } else if (!w) {
            /* We restarted, or forgot it: it must introduce itself again. */
            wire_send(sock, identity, WIRE_WHO, NULL);
        } else if (g_str_equal(cmd, WIRE_CREDIT)) {
            guint32 n;
            if (wire_unpack(payload, "(u)", &n))
                w->credit += n;
            d->work_hinted = TRUE;
        } else if (g_str_equal(cmd, WIRE_CONNS)) {
            dispatch_conns_report(d, w, payload);
        } else if (g_str_equal(cmd, WIRE_TDONE)) {
            d->work_hinted = TRUE;      /* its deliveries are ready now */
        } else if (!g_str_equal(cmd, WIRE_PING)) {
            msg_warn("worker %s: unknown command \"%s\"", w->name, cmd);
        }
        if (w || (w = worker_lookup(d, sock, identity)))
            w->last_seen = mono_ms();
        g_bytes_unref(identity);
        g_bytes_unref(payload);
        g_free(cmd);
    }
}

void dispatch_receive(struct dispatch *d)
{
    GBytes *payload;
    char *cmd;

    while (wire_recv(d->hints, FALSE, NULL, &cmd, &payload)) {
        d->work_hinted = TRUE;
        g_free(cmd);
        g_bytes_unref(payload);
    }
    while (d->zap && zmq_poll(&(zmq_pollitem_t){ d->zap, 0, ZMQ_POLLIN, 0 }, 1, 0) > 0)
        dispatch_zap(d);
    dispatch_receive_from(d, d->router);
    if (d->local)
        dispatch_receive_from(d, d->local);
}

/*
 * Once a second: ping every worker, and forget one silent for
 * WIRE_DEAD_AFTER_MS.  Its leases are not taken back here: they run out
 * at their expiry and return to the queue then (a slow worker may yet
 * finish, and its result still counts while the lease holds).
 */
void dispatch_heartbeat(struct dispatch *d)
{
    GHashTableIter it;
    struct dispatch_worker *w;
    int64_t now = mono_ms();

    g_hash_table_iter_init(&it, d->workers);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&w)) {
        if (now - w->last_seen > WIRE_DEAD_AFTER_MS) {
            msg_warn("worker %s silent for %lds: forgotten", w->name,
                     (long)(now - w->last_seen) / 1000);
            dispatch_forget_worker(d, w);
            g_hash_table_iter_remove(&it);
            continue;
        }
        if (!wire_send(w->sock, w->identity, WIRE_PING, NULL)) {
            dispatch_forget_worker(d, w);
            g_hash_table_iter_remove(&it);
        }
    }
}

/* The worker of that kind with the most credit, so load spreads evenly. */
struct dispatch_worker *dispatch_pick_worker(struct dispatch *d, enum worker_kind kind)
{
    GHashTableIter it;
    struct dispatch_worker *w, *best = NULL;

    g_hash_table_iter_init(&it, d->workers);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&w))
        if (w->kind == kind && w->credit && (!best || w->credit > best->credit))
            best = w;
    return best;
}

unsigned dispatch_credit(struct dispatch *d, enum worker_kind kind)
{
    GHashTableIter it;
    struct dispatch_worker *w;
    unsigned n = 0;

    g_hash_table_iter_init(&it, d->workers);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&w))
        if (w->kind == kind)
            n += w->credit;
    return n;
}
