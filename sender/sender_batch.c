/*
 * sender_batch.c - a job's results before its end, held a few
 * milliseconds so that they go to the dispatcher as one SDONE.
 *
 * A slot hands back each transaction's results as soon as it ends, so
 * that what the relay has taken is recorded even if the job then hangs
 * (sender_deliver()).  With a fast relay a personalised transaction takes
 * a fraction of a millisecond, and an SDONE for each woke the dispatcher
 * for each delivery.  The main thread therefore holds the parts of a
 * running job for up to SENDER_BATCH_MS and sends them together: with the
 * job's end (its last SDONE, which carries the credit) or when they are
 * due, whichever is first.  The timer runs in the main thread, so a slot
 * stuck in a relay's timeout holds nothing back longer than that.  A
 * worker that dies loses at most that much more of its results than
 * before; those deliveries go again when their leases run out, as the
 * transaction in flight always did.
 *
 * A job's end may be held too, when the caller says so: while the worker
 * has jobs enough queued, the dispatcher would hold its result for company
 * anyway (dispatch_main.c), and ends sent together reach it in one read
 * and one wakeup instead of one each.  The caller sends every held end
 * at once when one leaves the worker short of jobs (sender_main.c).
 */
#include "sender/sender.h"

struct sender_held {
    struct sender_done *done;           /* the parts so far, merged */
    gint64 due;                         /* monotonic us */
};

struct sender_batch {
    GHashTable *held;                   /* lease -> struct sender_held */
    guint ends;                         /* of them, jobs that have ended */
};

static void held_free(gpointer p)
{
    struct sender_held *h = p;

    sender_done_free(h->done);
    g_free(h);
}

struct sender_batch *sender_batch_new(void)
{
    struct sender_batch *b = g_new0(struct sender_batch, 1);

    b->held = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, held_free);
    return b;
}

void sender_batch_free(struct sender_batch *b)
{
    g_hash_table_unref(b->held);
    g_free(b);
}

void sender_done_free(struct sender_done *done)
{
    wire_send_result_clear(&done->res);
    g_free(done);
}

/* Move from's results to the end of into's. */
static void batch_merge(struct sender_done *into, struct sender_done *from)
{
    gsize n;
    struct wire_rcpt_result *moved = g_array_steal(from->res.results, &n);

    g_array_append_vals(into->res.results, moved, (guint)n);
    g_free(moved);
}

struct sender_done *sender_batch_add(struct sender_batch *b, struct sender_done *done, gint64 now,
                                     gboolean hold_end)
{
    struct sender_held *h = g_hash_table_lookup(b->held, &done->res.lease);

    if (!done->job_done || hold_end) {
        b->ends += done->job_done;
        if (h) {
            h->done->job_done |= done->job_done;
            batch_merge(h->done, done);
            sender_done_free(done);
            return NULL;
        }
        h = g_new(struct sender_held, 1);
        h->done = done;
        h->due = now + SENDER_BATCH_MS * G_TIME_SPAN_MILLISECOND;
        g_hash_table_insert(b->held, &done->res.lease, h);
        return NULL;
    }
    if (!h)
        return done;
    /* The held parts first, then the end: the order they were delivered in. */
    g_hash_table_steal(b->held, &done->res.lease);
    batch_merge(h->done, done);
    h->done->job_done = TRUE;
    sender_done_free(done);
    done = h->done;
    g_free(h);
    return done;
}

struct sender_done *sender_batch_due(struct sender_batch *b, gint64 now)
{
    GHashTableIter it;
    struct sender_held *h;

    g_hash_table_iter_init(&it, b->held);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&h)) {
        struct sender_done *done = h->done;

        if (h->due > now)
            continue;
        g_hash_table_iter_steal(&it);
        g_free(h);
        b->ends -= done->job_done;
        return done;
    }
    return NULL;
}

guint sender_batch_ends(const struct sender_batch *b)
{
    return b->ends;
}

long sender_batch_wait_ms(const struct sender_batch *b, gint64 now, long wait_ms)
{
    GHashTableIter it;
    struct sender_held *h;

    g_hash_table_iter_init(&it, b->held);
    while (g_hash_table_iter_next(&it, NULL, (gpointer *)&h)) {
        long ms = h->due > now ? (long)((h->due - now + 999) / 1000) : 0;

        if (wait_ms < 0 || ms < wait_ms)
            wait_ms = ms;
    }
    return wait_ms;
}
