/*
 * dispatch_transform.c - lease `incoming` messages to transform workers.
 *
 * The lease (id and expiry) is written into the message record before the
 * job is sent; the worker commits only while its lease is the one
 * recorded and unexpired.  A message whose lease ran out (its worker died)
 * is simply leased again.
 */
#include "dispatch/dispatch.h"
#include "common/log.h"

struct tlease {
    struct dispatch *d;
    unsigned want;
    GArray *candidates;             /* queue_id */
    GArray *leased;                 /* pairs: lease, msg */
};

static gboolean tlease_collect(queue_id id, void *ctx)
{
    struct tlease *tl = ctx;

    g_array_append_val(tl->candidates, id);
    /* Leased ones are skipped below: look a little further than wanted. */
    return tl->candidates->len < tl->want + 64;
}

static gboolean tlease_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct tlease *tl = ctx;
    int64_t now = unix_ms();

    g_array_set_size(tl->candidates, 0);
    g_array_set_size(tl->leased, 0);
    if (!spool_msg_foreach(t, MSG_INCOMING, 0, tlease_collect, tl, err))
        return FALSE;
    for (guint i = 0; i < tl->candidates->len && tl->leased->len / 2 < tl->want; i++) {
        struct spool_msg m;
        gboolean ok;

        if (!spool_msg_get(t, g_array_index(tl->candidates, queue_id, i), &m, err))
            return FALSE;
        if (m.lease_expiry > now) {
            spool_msg_clear(&m);
            continue;
        }
        if (!(m.lease = spool_id_next(t, err))) {
            spool_msg_clear(&m);
            return FALSE;
        }
        m.lease_expiry = now + (int64_t)tl->d->cfg->retry.lease * 1000;
        ok = spool_msg_update(t, &m, err);
        g_array_append_val(tl->leased, m.lease);
        g_array_append_val(tl->leased, m.id);
        spool_msg_clear(&m);
        if (!ok)
            return FALSE;
    }
    return TRUE;
}

void dispatch_lease_transforms(struct dispatch *d)
{
    struct tlease tl = { .d = d, .want = dispatch_credit(d, WORKER_TRANSFORM) };
    GError *err = NULL;

    if (!tl.want)
        return;
    tl.candidates = g_array_new(FALSE, FALSE, sizeof(queue_id));
    tl.leased = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    if (!spool_write(d->spool, tlease_write, &tl, &err)) {
        msg_warn("lease transform jobs: %s", err->message);
        g_clear_error(&err);
    }
    for (guint i = 0; i + 1 < tl.leased->len; i += 2) {
        uint64_t lease = g_array_index(tl.leased, uint64_t, i);
        queue_id msg = g_array_index(tl.leased, uint64_t, i + 1);
        struct dispatch_worker *w = dispatch_pick_worker(d, WORKER_TRANSFORM);
        g_autoptr(GBytes) job = wire_pack("(tt)", lease, msg);
        char id[QUEUE_ID_LEN + 1];

        spool_id_format(msg, id);
        if (!w || !wire_send(w->sock, w->identity, WIRE_TJOB, job)) {
            msg_warn("%s: no transform worker took the job: it waits for its lease to expire", id);
            continue;
        }
        w->credit--;
        msg_info("%s: transform leased to worker %s", id, w->name);
    }
    g_array_unref(tl.candidates);
    g_array_unref(tl.leased);
}
