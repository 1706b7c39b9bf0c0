/*
 * dispatch_approval.c - messages of a list with approval that nobody
 * approved or discarded within the list's approval_expiry are discarded
 * (reason APPROVAL_EXPIRED; spool/spool_steer.h).
 *
 * The dispatcher already wakes every second and owns the other clocks of
 * the spool (leases, retries), so the wait ends here too: every
 * APPROVAL_SCAN_MS it reads the held messages in one write transaction and
 * discards those whose wait is over.  A held message's `since` is when it
 * was held, which is what the wait counts from.
 */
#include "dispatch/dispatch.h"
#include "common/approval_code.h"
#include "common/log.h"
#include "spool/spool_steer.h"

#define APPROVAL_SCAN_MS 5000

static gboolean approval_collect(queue_id id, void *ctx)
{
    g_array_append_val((GArray *)ctx, id);
    return TRUE;
}

static gboolean approval_expire_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct dispatch *d = ctx;
    g_autoptr(GArray) held = g_array_new(FALSE, FALSE, sizeof(queue_id));
    int64_t now = unix_ms() / 1000;

    /* The ids first: discarding moves them out of the index being walked. */
    if (!spool_msg_foreach(t, MSG_HOLD, 0, approval_collect, held, err))
        return FALSE;
    for (guint i = 0; i < held->len; i++) {
        const struct postern_list *list;
        struct spool_msg m;
        gboolean ok = TRUE;

        if (!spool_msg_get(t, g_array_index(held, queue_id, i), &m, err))
            return FALSE;
        list = config_list_of(d->cfg, (char **)m.recipients->pdata, m.recipients->len);
        if (spool_msg_awaits_approval(&m) && m.since + (int64_t)list->approval_expiry <= now)
            ok = spool_msg_discard(t, &m, SPOOL_APPROVAL_EXPIRED, "expiry", err);
        spool_msg_clear(&m);
        if (!ok)
            return FALSE;
    }
    return TRUE;
}

void dispatch_approval_expire(struct dispatch *d, int64_t now_mono)
{
    GError *err = NULL;

    if (now_mono < d->next_approval_scan || !approval_wanted(d->cfg))
        return;
    d->next_approval_scan = now_mono + APPROVAL_SCAN_MS;
    if (!spool_write(d->spool, approval_expire_write, d, &err)) {
        msg_warn("approval expiry: %s", err->message);
        g_clear_error(&err);
    }
}
