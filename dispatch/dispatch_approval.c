/*
 * dispatch_approval.c - messages of a list with approval that nobody
 * approved or discarded within the list's approval_expiry are discarded
 * (reason APPROVAL_EXPIRED; spool/spool_steer.h).
 *
 * The dispatcher already wakes every second and owns the other clocks of
 * the spool (leases, retries), so the wait ends here too, every
 * APPROVAL_SCAN_MS.  A held message's `since` is when it was held, which
 * is what the wait counts from.
 *
 * The scan must stay cheap however many messages wait: it reads in a read
 * transaction (no write lock, no fsync) and opens a write transaction only
 * when something is due.  It walks `hold` in id order, which is arrival
 * order, and stops at the first message that arrived less than the
 * shortest approval_expiry ago: a message is held after it arrives, so
 * none after that can be due.  A week's worth of waiting messages costs
 * nothing until the first of them is a week old.  Messages held longer
 * than that for other reasons (the operator's) are read too, so one scan
 * reads at most APPROVAL_SCAN_MAX records and the next goes on from there:
 * the loop is never kept from its workers for long.
 */
#include "dispatch/dispatch.h"
#include "common/approval_code.h"
#include "common/log.h"
#include "spool/spool_steer.h"

#define APPROVAL_SCAN_MS 5000
#define APPROVAL_SCAN_MAX 256         /* records; as spoolctl pages its reads */

struct approval_scan {
    struct dispatch *d;
    queue_id bound;                 /* ids from here on arrived too recently to be due */
    gboolean more;                  /* stopped at APPROVAL_SCAN_MAX, not at the bound */
    int64_t now;                    /* unix s */
    GArray *ids;                    /* queue_id */
};

/* The shortest approval_expiry of the lists with approval (seconds). */
static uint64_t approval_shortest(const struct postern_config *cfg)
{
    uint64_t shortest = G_MAXUINT64;

    for (guint i = 0; i < cfg->lists->len; i++) {
        const struct postern_list *l = cfg->lists->pdata[i];

        if (l->approval)
            shortest = MIN(shortest, l->approval_expiry);
    }
    return shortest;
}

/* Is m waiting for approval for longer than its list allows? */
static gboolean approval_due(const struct approval_scan *sc, const struct spool_msg *m)
{
    const struct postern_list *list =
        config_list_of(sc->d->cfg, (char **)m->recipients->pdata, m->recipients->len);

    return spool_msg_awaits_approval(m) && list->approval &&
           m->since + (int64_t)list->approval_expiry <= sc->now;
}

static gboolean approval_collect(queue_id id, void *ctx)
{
    struct approval_scan *sc = ctx;

    if (id >= sc->bound)
        return FALSE;
    g_array_append_val(sc->ids, id);
    sc->more = sc->ids->len == APPROVAL_SCAN_MAX;
    return !sc->more;
}

/* Read: keep in sc->ids only the messages that are due. */
static gboolean approval_find(struct spool_txn *t, struct approval_scan *sc, GError **err)
{
    guint kept = 0;

    if (!spool_msg_foreach(t, MSG_HOLD, sc->d->approval_from, approval_collect, sc, err))
        return FALSE;
    sc->d->approval_from = sc->more ? g_array_index(sc->ids, queue_id, sc->ids->len - 1) + 1 : 0;
    for (guint i = 0; i < sc->ids->len; i++) {
        struct spool_msg m;

        if (!spool_msg_get(t, g_array_index(sc->ids, queue_id, i), &m, err))
            return FALSE;
        if (approval_due(sc, &m))
            g_array_index(sc->ids, queue_id, kept++) = m.id;
        spool_msg_clear(&m);
    }
    g_array_set_size(sc->ids, kept);
    return TRUE;
}

/* Write: discard each, if it is still due (approved or discarded meanwhile: not). */
static gboolean approval_expire_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct approval_scan *sc = ctx;

    for (guint i = 0; i < sc->ids->len; i++) {
        struct spool_msg m;
        GError *local = NULL;
        gboolean ok = TRUE;

        if (!spool_msg_get(t, g_array_index(sc->ids, queue_id, i), &m, &local)) {
            /* Deleted since the read (spoolctl delete): nothing to discard. */
            if (!g_error_matches(local, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND)) {
                g_propagate_error(err, local);
                return FALSE;
            }
            g_clear_error(&local);
            continue;
        }
        if (approval_due(sc, &m))
            ok = spool_msg_discard(t, &m, SPOOL_APPROVAL_EXPIRED, "expiry", err);
        spool_msg_clear(&m);
        if (!ok)
            return FALSE;
    }
    return TRUE;
}

void dispatch_approval_expire(struct dispatch *d, int64_t now_mono)
{
    struct approval_scan sc = { .d = d };
    uint64_t shortest;
    int64_t now_ms = unix_ms();
    struct spool_txn t;
    GError *err = NULL;
    gboolean ok;

    if (now_mono < d->next_approval_scan || !approval_wanted(d->cfg))
        return;
    d->next_approval_scan = now_mono + APPROVAL_SCAN_MS;
    shortest = approval_shortest(d->cfg);
    if ((int64_t)(shortest * 1000) > now_ms)
        return;
    sc.now = now_ms / 1000;
    sc.bound = (queue_id)(now_ms - (int64_t)shortest * 1000) << 16;
    sc.ids = g_array_new(FALSE, FALSE, sizeof(queue_id));
    ok = spool_read_begin(d->spool, &t, &err) && approval_find(&t, &sc, &err);
    spool_read_end(&t);
    if (ok && sc.ids->len)
        ok = spool_write(d->spool, approval_expire_write, &sc, &err);
    if (!ok) {
        msg_warn("approval expiry: %s", err->message);
        g_clear_error(&err);
    }
    g_array_unref(sc.ids);
}
