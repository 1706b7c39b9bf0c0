/*
 * spool_hist.c - see spool_hist.h.
 */
#include "spool/spool_hist.h"
#include "spool/spool_lmdb.h"

#include <string.h>

const int64_t spool_hist_bounds_ms[SPOOL_HIST_BOUNDS] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000, 600000,
};

static const char *const hist_keys[SPOOL_HIST_COUNT] = { "h.transform", "h.delivery" };

unsigned spool_hist_bucket(int64_t ms)
{
    unsigned i = 0;

    while (i < SPOOL_HIST_BOUNDS && ms > spool_hist_bounds_ms[i])
        i++;
    return i;
}

void spool_hist_add(struct spool_hist_data *h, int64_t ms)
{
    ms = MAX(ms, 0);
    h->buckets[spool_hist_bucket(ms)]++;
    h->count++;
    h->sum_ms += (uint64_t)ms;
}

void spool_hist_encode(const struct spool_hist_data *h, unsigned char out[SPOOL_HIST_RECORD])
{
    for (unsigned i = 0; i <= SPOOL_HIST_BOUNDS; i++)
        spool_be64(out + 8 * i, h->buckets[i]);
    spool_be64(out + 8 * (SPOOL_HIST_BOUNDS + 1), h->sum_ms);
}

gboolean spool_hist_decode(const unsigned char *p, size_t len, struct spool_hist_data *h)
{
    memset(h, 0, sizeof(*h));
    if (len != SPOOL_HIST_RECORD)
        return FALSE;
    for (unsigned i = 0; i <= SPOOL_HIST_BOUNDS; i++) {
        h->buckets[i] = spool_get_be64(p + 8 * i);
        h->count += h->buckets[i];
    }
    h->sum_ms = spool_get_be64(p + 8 * (SPOOL_HIST_BOUNDS + 1));
    return TRUE;
}

void spool_hist_prometheus(const struct spool_hist_data *h, const char *name, const char *help,
                           GString *out)
{
    uint64_t below = 0;

    g_string_append_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (unsigned i = 0; i < SPOOL_HIST_BOUNDS; i++) {
        below += h->buckets[i];
        g_string_append_printf(out, "%s_bucket{le=\"%g\"} %" G_GUINT64_FORMAT "\n", name,
                               (double)spool_hist_bounds_ms[i] / 1000, below);
    }
    g_string_append_printf(out, "%s_bucket{le=\"+Inf\"} %" G_GUINT64_FORMAT "\n", name,
                           h->count);
    g_string_append_printf(out, "%s_sum %" G_GUINT64_FORMAT ".%03u\n", name, h->sum_ms / 1000,
                           (unsigned)(h->sum_ms % 1000));
    g_string_append_printf(out, "%s_count %" G_GUINT64_FORMAT "\n", name, h->count);
}

/* The stored record; a record of another size (a later bucket layout) is an error. */
static gboolean hist_stored(struct spool_txn *t, enum spool_hist which,
                            struct spool_hist_data *h, GError **err)
{
    const unsigned char *p;
    size_t len;

    memset(h, 0, sizeof(*h));
    if (!spool_meta_get(t, hist_keys[which], &p, &len, "latency histogram", err))
        return FALSE;
    if (p && !spool_hist_decode(p, len, h)) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_CORRUPT,
                    "meta %s: %zu bytes, not a latency histogram", hist_keys[which], len);
        return FALSE;
    }
    return TRUE;
}

/* What t observed, one histogram each, allocated at its first observation. */
static struct spool_hist_data *hist_pending(struct spool_txn *t, enum spool_hist which)
{
    struct spool_hist_data *all = t->hist_deltas;

    return all && all[which].count ? &all[which] : NULL;
}

gboolean spool_hist_observe(struct spool_txn *t, enum spool_hist which, int64_t ms,
                            GError **err)
{
    (void)err;
    if (!t->hist_deltas)
        t->hist_deltas = g_new0(struct spool_hist_data, SPOOL_HIST_COUNT);
    spool_hist_add(&((struct spool_hist_data *)t->hist_deltas)[which], ms);
    return TRUE;
}

static void hist_merge(struct spool_hist_data *into, const struct spool_hist_data *add)
{
    for (unsigned i = 0; i <= SPOOL_HIST_BOUNDS; i++)
        into->buckets[i] += add->buckets[i];
    into->count += add->count;
    into->sum_ms += add->sum_ms;
}

gboolean spool_hist_get(struct spool_txn *t, enum spool_hist which, struct spool_hist_data *h,
                        GError **err)
{
    const struct spool_hist_data *pending = hist_pending(t, which);

    if (!hist_stored(t, which, h, err))
        return FALSE;
    if (pending)
        hist_merge(h, pending);
    return TRUE;
}

gboolean spool_hist_flush(struct spool_txn *t, GError **err)
{
    for (int w = 0; w < SPOOL_HIST_COUNT; w++) {
        struct spool_hist_data h;
        unsigned char rec[SPOOL_HIST_RECORD];

        if (!hist_pending(t, w))
            continue;
        if (!spool_hist_get(t, w, &h, err))
            return FALSE;
        spool_hist_encode(&h, rec);
        if (!spool_meta_put(t, hist_keys[w], rec, sizeof(rec), "latency histogram", err))
            return FALSE;
    }
    return TRUE;
}
