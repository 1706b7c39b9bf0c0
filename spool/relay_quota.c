/*
 * relay_quota.c - the daily limit's window in `meta`, under "relay.quota"
 * (the default account; "relay.quota.NAME" for the account NAME):
 * big-endian bucket length in ms (8), newest bucket number (8), waiting
 * until (8), the limit (4), then RELAY_QUOTA_SPAN bucket counts (4 each):
 * 128 bytes, one value that fits a page, rewritten by each lease round.
 */
#include "spool/relay_quota.h"
#include "spool/relay_state.h"
#include "spool/spool_lmdb.h"

#include <string.h>

#define RELAY_QUOTA_KEY "relay.quota"
#define RELAY_QUOTA_HEAD 28
#define RELAY_QUOTA_LEN (RELAY_QUOTA_HEAD + 4 * RELAY_QUOTA_SPAN)

/* The meta key of account's window: [relay]'s keeps the name it always had. */
static char *relay_quota_key(const char *account)
{
    if (!account || g_str_equal(account, RELAY_ACCOUNT_DEFAULT))
        return g_strdup(RELAY_QUOTA_KEY);
    return g_strconcat(RELAY_QUOTA_KEY ".", account, NULL);
}

gboolean relay_quota_get(struct spool_txn *t, const char *account, struct relay_quota *out,
                         GError **err)
{
    g_autofree char *key = relay_quota_key(account);
    const unsigned char *p;
    size_t len;

    memset(out, 0, sizeof(*out));
    if (!spool_meta_get(t, key, &p, &len, "the relay quota", err))
        return FALSE;
    if (!p)
        return TRUE;
    if (len != RELAY_QUOTA_LEN) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_IO, "relay quota: %zu bytes, expected %d", len,
                    RELAY_QUOTA_LEN);
        return FALSE;
    }
    out->bucket_ms = (int64_t)spool_get_be64(p);
    out->newest = (int64_t)spool_get_be64(p + 8);
    out->waiting_until = (int64_t)spool_get_be64(p + 16);
    out->limit = spool_get_be32(p + 24);
    for (int i = 0; i < RELAY_QUOTA_SPAN; i++)
        out->counts[i] = spool_get_be32(p + RELAY_QUOTA_HEAD + 4 * i);
    return TRUE;
}

gboolean relay_quota_put(struct spool_txn *t, const char *account, const struct relay_quota *q,
                         GError **err)
{
    g_autofree char *key = relay_quota_key(account);
    unsigned char v[RELAY_QUOTA_LEN];

    spool_be64(v, (uint64_t)q->bucket_ms);
    spool_be64(v + 8, (uint64_t)q->newest);
    spool_be64(v + 16, (uint64_t)q->waiting_until);
    spool_be32(v + 24, q->limit);
    for (int i = 0; i < RELAY_QUOTA_SPAN; i++)
        spool_be32(v + RELAY_QUOTA_HEAD + 4 * i, q->counts[i]);
    return spool_meta_put(t, key, v, sizeof(v), "the relay quota", err);
}

/*
 * Make the bucket of now_ms the newest, emptying those it passes over:
 * they are the ones that left the window.  A clock that went back counts
 * into the newest bucket, which leaves the window later, never sooner.
 */
static void quota_advance(struct relay_quota *q, int64_t now_ms)
{
    int64_t b = now_ms / q->bucket_ms;

    if (b <= q->newest)
        return;
    if (b - q->newest >= RELAY_QUOTA_SPAN)
        memset(q->counts, 0, sizeof(q->counts));
    else
        for (int64_t n = q->newest + 1; n <= b; n++)
            q->counts[n % RELAY_QUOTA_SPAN] = 0;
    q->newest = b;
}

static uint64_t quota_sum(const struct relay_quota *q)
{
    uint64_t sum = 0;

    for (int i = 0; i < RELAY_QUOTA_SPAN; i++)
        sum += q->counts[i];
    return sum;
}

void relay_quota_setup(struct relay_quota *q, int64_t window_ms, uint32_t limit, int64_t now_ms)
{
    int64_t bucket_ms = MAX(window_ms / RELAY_QUOTA_PARTS, 1);

    q->limit = limit;
    if (q->bucket_ms == bucket_ms)
        return;
    uint64_t kept = q->bucket_ms ? relay_quota_used(q, now_ms) : 0;

    memset(q->counts, 0, sizeof(q->counts));
    q->bucket_ms = bucket_ms;
    q->newest = now_ms / bucket_ms;
    q->counts[q->newest % RELAY_QUOTA_SPAN] = (uint32_t)MIN(kept, G_MAXUINT32);
}

uint64_t relay_quota_used(const struct relay_quota *q, int64_t now_ms)
{
    struct relay_quota now = *q;

    if (!q->bucket_ms)
        return 0;
    quota_advance(&now, now_ms);
    return quota_sum(&now);
}

uint32_t relay_quota_room(const struct relay_quota *q, int64_t now_ms)
{
    uint64_t used = relay_quota_used(q, now_ms);

    return used >= q->limit ? 0 : (uint32_t)(q->limit - used);
}

void relay_quota_add(struct relay_quota *q, int64_t now_ms, uint32_t n)
{
    uint32_t *c;

    quota_advance(q, now_ms);
    c = &q->counts[q->newest % RELAY_QUOTA_SPAN];
    *c = n > G_MAXUINT32 - *c ? G_MAXUINT32 : *c + n;
}

int64_t relay_quota_next_room(const struct relay_quota *q, int64_t now_ms)
{
    struct relay_quota now = *q;

    if (!q->bucket_ms)
        return now_ms;
    quota_advance(&now, now_ms);
    for (int64_t n = now.newest - RELAY_QUOTA_SPAN + 1; n <= now.newest; n++)
        if (now.counts[n % RELAY_QUOTA_SPAN])
            return (n + RELAY_QUOTA_SPAN) * now.bucket_ms;
    return now_ms;
}
