/*
 * dispatch_conns.c - [relay] max_connections across all sender workers
 * (SPEC §5): open relay connections, idle ones included, not jobs in
 * flight; with several accounts, the sum of theirs (each account's own is
 * dispatch_accounts.c's).  Each worker gets a budget of connections (CONNMAX) and reports
 * what it applies and holds (CONNS); the protocol and why it holds across
 * restarts are in dispatch/dispatch.h (dispatch_conns.c).
 *
 * What may be open is, per known worker, the most of what we granted and
 * what it last said it applies or holds, plus one per job of a worker we
 * do not know.  A grant is made only out of what that leaves free.  A
 * worker may hold up to WIRE_JOBS_PER_SLOT jobs a connection granted: the
 * ones beyond its connections wait in its queue and open none.
 */
#include "dispatch/dispatch.h"
#include "common/log.h"

#include <string.h>

static void transform_job_free(gpointer p)
{
    struct dispatch_job *job = p;

    dispatch_account_job_end(job);
    if (job->worker)
        job->worker->jobs--;
    g_free(job);
}

void dispatch_job_add(struct dispatch *d, struct dispatch_job *job)
{
    if (job->worker)
        job->worker->jobs++;
    g_hash_table_replace(d->jobs, &job->lease, job);
}

/*
 * The leases in the spool at our start are jobs of workers we do not know
 * yet: each may hold a relay connection until its result comes or its
 * lease expires.  One job per lease id, as the worker got it.
 */
static gboolean conns_adopt_one(const struct spool_dlv_ref *ref, void *ctx)
{
    struct dispatch *d = ctx;
    struct dispatch_job *job;

    if (!ref->lease)
        return TRUE;
    if (!(job = g_hash_table_lookup(d->jobs, &ref->lease))) {
        job = g_new0(struct dispatch_job, 1);
        job->lease = ref->lease;
        job->msg = ref->msg;
        dispatch_job_add(d, job);
    }
    job->rcpts++;
    return TRUE;
}

static gboolean conns_adopt(struct dispatch *d, GError **err)
{
    struct spool_txn t;
    gboolean ok;

    if (!spool_read_begin(d->spool, &t, err))
        return FALSE;
    ok = spool_lease_foreach(&t, G_MAXINT64, conns_adopt_one, d, err);
    spool_read_end(&t);
    return ok;
}

void dispatch_conns_setup(struct dispatch *d, const struct relay_url *url)
{
    GError *err = NULL;

    d->jobs = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, transform_job_free);
    /* A Maildir has no connections; the budget then only bounds jobs. */
    if (url->kind == RELAY_MAILDIR)
        return;
    if (!conns_adopt(d, &err))
        msg_fatal("leases at start: %s", err->message);
    d->conn_grace_until = mono_ms() + WIRE_CONN_IDLE_MS;
    msg_info("relay connections: %u job(s) leased before our start count against "
             "max_connections %u; no grant for %d ms", g_hash_table_size(d->jobs),
             dispatch_accounts_conn_max(d), WIRE_CONN_IDLE_MS);
}

static unsigned conns_reserved(const struct dispatch_worker *w)
{
    return MAX(w->conn_granted, MAX(w->conn_applied, w->conn_held));
}

/* Connections that may be open now; none granted during the grace after our start. */
static unsigned conns_free(struct dispatch *d)
{
    unsigned max = dispatch_accounts_conn_max(d), used = 0;
    GHashTableIter it;
    struct dispatch_worker *w;
    struct dispatch_job *job;

    if (mono_ms() < d->conn_grace_until)
        return 0;
    g_hash_table_iter_init(&it, d->workers);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&w))
        if (w->kind == WORKER_SENDER)
            used += conns_reserved(w);
    g_hash_table_iter_init(&it, d->jobs);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&job))
        used += !job->worker;
    return used < max ? max - used : 0;
}

/* Jobs w can start now, on connections granted and not in use. */
static unsigned conns_spare(const struct dispatch_worker *w)
{
    return MIN(w->credit, w->conn_granted > w->jobs ? w->conn_granted - w->jobs : 0);
}

/* Jobs w can take on the budget it has, queued behind its connections
 * (WIRE_JOBS_PER_SLOT a connection, common/wire.h) or not. */
static unsigned conns_places(const struct dispatch_worker *w)
{
    unsigned most = w->conn_granted * WIRE_JOBS_PER_SLOT;

    return MIN(w->credit, most > w->jobs ? most - w->jobs : 0);
}

/*
 * What each worker can take on the connections it has (taken(w)), plus
 * one per free connection for workers with credit beyond that.
 */
static unsigned conns_room(struct dispatch *d, unsigned (*taken)(const struct dispatch_worker *))
{
    unsigned room = 0, wanting = 0;
    GHashTableIter it;
    struct dispatch_worker *w;

    g_hash_table_iter_init(&it, d->workers);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&w)) {
        if (w->kind != WORKER_SENDER)
            continue;
        room += taken(w);
        wanting += w->credit - taken(w);
    }
    return room + (wanting ? MIN(wanting, conns_free(d)) : 0);
}

/*
 * Places on budgets already granted, plus one per free connection for
 * workers with credit beyond their places.  Each job dispatch_conns_pick()
 * places leaves what is left of this promise at least one less, never
 * two (see there), so the round never leases a job no worker takes.
 */
unsigned dispatch_conns_room(struct dispatch *d)
{
    return conns_room(d, conns_places);
}

/* The same with idle connections only: dispatch_conns_pick() takes those first. */
unsigned dispatch_conns_room_now(struct dispatch *d)
{
    return conns_room(d, conns_spare);
}

static void conns_grant(struct dispatch_worker *w, unsigned budget)
{
    g_autoptr(GBytes) payload = wire_pack("(u)", budget);

    w->conn_granted = budget;
    wire_send(w->sock, w->identity, WIRE_CONNMAX, payload);
    msg_info("worker %s: relay connection budget %u", w->name, budget);
}

/* The sender worker with credit that scores highest (0: none wanted). */
static struct dispatch_worker *conns_best(struct dispatch *d,
                                          unsigned (*score)(const struct dispatch_worker *))
{
    GHashTableIter it;
    struct dispatch_worker *w, *best = NULL;

    g_hash_table_iter_init(&it, d->workers);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&w))
        if (w->kind == WORKER_SENDER && w->credit && score(w) && (!best || score(w) > score(best)))
            best = w;
    return best;
}

static unsigned conns_wants_more(const struct dispatch_worker *w)
{
    /* Credit beyond its places first; then the fewest connections. */
    return (w->credit > conns_places(w) ? G_MAXUINT / 2 : 0) + G_MAXUINT / 2 - w->conn_granted;
}

/*
 * Where the next job goes, so that it starts at once if it can: a worker
 * with a connection granted and not in use (the most such: the load
 * spreads); else one more connection, if one is free, for a worker with
 * credit beyond its places (dispatch_conns_room() counted on giving it
 * one), else for any with credit, the one with the fewest; else a place
 * in the queue of the worker with the most.
 */
struct dispatch_worker *dispatch_conns_pick(struct dispatch *d)
{
    struct dispatch_worker *best = conns_best(d, conns_spare);

    if (best)
        return best;
    if (conns_free(d) && (best = conns_best(d, conns_wants_more))) {
        conns_grant(best, best->conn_granted + 1);
        return best;
    }
    return conns_best(d, conns_places);
}

/*
 * CONNS: what it applies and holds.  Its grant stays its own (grants only
 * grow while it is connected); what falls is what it held beyond the
 * grant, which other workers may then be granted.
 */
void dispatch_conns_report(struct dispatch *d, struct dispatch_worker *w, GBytes *payload)
{
    guint32 applied, held;
    unsigned was = conns_reserved(w);

    if (!wire_unpack(payload, "(uu)", &applied, &held)) {
        msg_warn("worker %s: malformed CONNS: ignored", w->name);
        return;
    }
    w->conn_applied = applied;
    w->conn_held = held;
    if (conns_reserved(w) < was)
        d->work_hinted = TRUE;
}

/*
 * The worker dropped its budget to 0 before this HELLO (dispatch.h):
 * so do we.  Its jobs become those of a worker we do not know: they count
 * until their results or lease expiry, and what it says it holds counts
 * too, until it reports less.
 */
void dispatch_conns_rejoin(struct dispatch *d, struct dispatch_worker *w)
{
    dispatch_forget_worker(d, w);
    if (w->conn_granted)
        msg_info("worker %s: relay connection budget 0 (it started over)", w->name);
    w->conn_granted = 0;
}
