/*
 * relay_state.c - the relay pause in `meta`, under "relay.pause" (the
 * default account; "relay.pause.NAME" for the account NAME): the
 * big-endian unix ms it lasts until and the pauses in a row (12 bytes,
 * all that older versions wrote), then the id the pause began at (8) and
 * the reason's text (up to RELAY_REASON_MAX - 1 bytes, no NUL).
 */
#include "spool/relay_state.h"
#include "spool/spool_lmdb.h"
#include "spool/spool_events.h"
#include "common/clock.h"

#include <string.h>

#define RELAY_STATE_KEY "relay.pause"
#define RELAY_STATE_OLD_LEN 12
#define RELAY_STATE_LEN 20

/* The meta key of account's pause. */
static char *relay_state_key(const char *account)
{
    if (!account || g_str_equal(account, RELAY_ACCOUNT_DEFAULT))
        return g_strdup(RELAY_STATE_KEY);
    return g_strconcat(RELAY_STATE_KEY ".", account, NULL);
}

gboolean relay_state_get(struct spool_txn *t, const char *account, struct relay_state *out,
                         GError **err)
{
    g_autofree char *key = relay_state_key(account);
    const unsigned char *p;
    size_t len;

    memset(out, 0, sizeof(*out));
    if (!spool_meta_get(t, key, &p, &len, "the relay state", err))
        return FALSE;
    if (!p)
        return TRUE;
    if (len != RELAY_STATE_OLD_LEN &&
        (len < RELAY_STATE_LEN || len >= RELAY_STATE_LEN + RELAY_REASON_MAX)) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_IO, "relay state: %zu bytes, expected %d to %d",
                    len, RELAY_STATE_OLD_LEN, RELAY_STATE_LEN + RELAY_REASON_MAX - 1);
        return FALSE;
    }
    out->paused_until = (int64_t)spool_get_be64(p);
    out->pauses = spool_get_be32(p + 8);
    /* A record of an older version: no fence, no reason. */
    if (len == RELAY_STATE_OLD_LEN)
        return TRUE;
    out->since = spool_get_be64(p + 12);
    memcpy(out->reason, p + RELAY_STATE_LEN, len - RELAY_STATE_LEN);
    return TRUE;
}

/*
 * The platform hears of a pause that begins (or is made longer) and of
 * one ended early (spoolctl relay resume); a pause that runs out changes
 * no record, so its end is the `until` the paused event gave.
 */
static gboolean relay_state_event(struct spool_txn *t, const char *account,
                                  const struct relay_state *st, GError **err)
{
    struct relay_state old;
    struct spool_event ev;
    int64_t now = unix_ms();
    gboolean ok = TRUE;

    if (!spool_events_enabled(t->sp))
        return TRUE;
    if (!relay_state_get(t, account, &old, err))
        return FALSE;
    spool_event_init(&ev);
    if (relay_state_paused(st, now) && st->paused_until > old.paused_until) {
        ev.type = g_strdup(EVENT_RELAY_PAUSED);
        ev.until = st->paused_until;
        /* The platform's reason names the account when there are several. */
        ev.reason = !account || g_str_equal(account, RELAY_ACCOUNT_DEFAULT)
                        ? g_strdup(st->reason)
                        : g_strdup_printf("relay account %s: %s", account, st->reason);
    } else if (relay_state_paused(&old, now) && !relay_state_paused(st, now)) {
        ev.type = g_strdup(EVENT_RELAY_RESUMED);
    }
    if (ev.type)
        ok = spool_event_add(t, &ev, err);
    spool_event_clear(&ev);
    return ok;
}

gboolean relay_state_put(struct spool_txn *t, const char *account, const struct relay_state *st,
                         GError **err)
{
    g_autofree char *key = relay_state_key(account);
    size_t reason_len = strnlen(st->reason, RELAY_REASON_MAX - 1);
    unsigned char v[RELAY_STATE_LEN + RELAY_REASON_MAX];
    if (!relay_state_event(t, account, st, err))
        return FALSE;

    spool_be64(v, (uint64_t)st->paused_until);
    spool_be32(v + 8, st->pauses);
    spool_be64(v + 12, st->since);
    memcpy(v + RELAY_STATE_LEN, st->reason, reason_len);
    return spool_meta_put(t, key, v, RELAY_STATE_LEN + reason_len, "the relay state", err);
}

gboolean relay_state_paused(const struct relay_state *st, int64_t now_ms)
{
    return st->paused_until > now_ms;
}

gboolean relay_state_news(const struct relay_state *st, uint64_t lease)
{
    return lease >= st->since;
}
