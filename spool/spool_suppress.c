/*
 * spool_suppress.c - bounce scores and the suppression list
 * (see spool_suppress.h).
 */
#include <string.h>

#include "spool/spool_suppress.h"
#include "spool/spool_events.h"
#include "spool/spool_lmdb.h"
#include "spool/spool_token.h"
#include "common/clock.h"
#include "common/config.h"

#define SUPPRESS_KEY_MAX 511        /* LMDB's default key limit */
#define DAY 86400

void spool_suppress_clear(struct spool_suppress *s)
{
    g_clear_pointer(&s->list, g_free);
    g_clear_pointer(&s->addr, g_free);
    g_clear_pointer(&s->reason, g_free);
    memset(s, 0, sizeof *s);
}

/*
 * The default list's key is the address alone, as before lists (NULL or ""
 * is that list too): see spool_suppress.h.
 */
static gboolean suppress_key(const char *list, const char *addr, GByteArray **key, GError **err)
{
    g_autofree char *a = spool_token_addr_key(addr);

    *key = g_byte_array_new();
    if (list && *list && !g_str_equal(list, CONFIG_LIST_DEFAULT))
        g_byte_array_append(*key, (const guint8 *)list, (guint)strlen(list) + 1);
    g_byte_array_append(*key, (const guint8 *)a, (guint)strlen(a));
    if (!*a || (*key)->len > SUPPRESS_KEY_MAX) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_INVALID, "address <%s>: empty or too long",
                    addr);
        g_clear_pointer(key, g_byte_array_unref);
        return FALSE;
    }
    return TRUE;
}

static void suppress_decode(const MDB_val *val, struct spool_suppress *s)
{
    g_autoptr(GBytes) bytes = g_bytes_new(val->mv_data, val->mv_size);
    g_autoptr(GVariant) v = g_variant_ref_sink(
        g_variant_new_from_bytes(G_VARIANT_TYPE_VARDICT, bytes, FALSE));
    GVariantDict d;

    g_variant_dict_init(&d, v);
    g_variant_dict_lookup(&d, "addr", "s", &s->addr);
    if (!g_variant_dict_lookup(&d, "list", "s", &s->list))
        s->list = g_strdup(CONFIG_LIST_DEFAULT);
    g_variant_dict_lookup(&d, "score", "d", &s->score);
    g_variant_dict_lookup(&d, "last", "x", &s->last);
    g_variant_dict_lookup(&d, "since", "x", &s->since);
    g_variant_dict_lookup(&d, "hard", "u", &s->hard);
    g_variant_dict_lookup(&d, "soft", "u", &s->soft);
    g_variant_dict_lookup(&d, "reason", "s", &s->reason);
    g_variant_dict_clear(&d);
    if (!s->addr)
        s->addr = g_strdup("");
}

gboolean spool_suppress_get(struct spool_txn *t, const char *list, const char *addr,
                            struct spool_suppress *s, gboolean *found, GError **err)
{
    g_autoptr(GByteArray) k = NULL;
    MDB_val key, val;
    int rc;

    memset(s, 0, sizeof *s);
    *found = FALSE;
    if (!suppress_key(list, addr, &k, err))
        return FALSE;
    key.mv_size = k->len;
    key.mv_data = k->data;
    rc = mdb_get(spool_mdb_txn(t), spool_dbi(t->sp, DB_SUPPRESS), &key, &val);
    if (rc == MDB_NOTFOUND)
        return TRUE;
    if (rc)
        return spool_mdb_fail(rc, "read suppression", err);
    suppress_decode(&val, s);
    *found = TRUE;
    return TRUE;
}

gboolean spool_suppress_put(struct spool_txn *t, const struct spool_suppress *s, GError **err)
{
    g_autoptr(GByteArray) k = NULL;
    GVariantDict d;
    g_autoptr(GVariant) v = NULL;
    MDB_val key, val;
    int rc;

    if (!suppress_key(s->list, s->addr, &k, err))
        return FALSE;
    g_variant_dict_init(&d, NULL);
    g_variant_dict_insert(&d, "addr", "s", s->addr);
    g_variant_dict_insert(&d, "list", "s", s->list);
    g_variant_dict_insert(&d, "score", "d", s->score);
    g_variant_dict_insert(&d, "last", "x", s->last);
    g_variant_dict_insert(&d, "since", "x", s->since);
    g_variant_dict_insert(&d, "hard", "u", s->hard);
    g_variant_dict_insert(&d, "soft", "u", s->soft);
    if (s->reason)
        g_variant_dict_insert(&d, "reason", "s", s->reason);
    v = g_variant_ref_sink(g_variant_dict_end(&d));
    key.mv_size = k->len;
    key.mv_data = k->data;
    val.mv_size = g_variant_get_size(v);
    val.mv_data = (void *)g_variant_get_data(v);
    if ((rc = mdb_put(spool_mdb_txn(t), spool_dbi(t->sp, DB_SUPPRESS), &key, &val, 0)))
        return spool_mdb_fail(rc, "store suppression", err);
    return TRUE;
}

gboolean spool_suppress_remove(struct spool_txn *t, const char *list, const char *addr,
                               gboolean *found, GError **err)
{
    g_autoptr(GByteArray) k = NULL;
    MDB_val key;
    int rc;

    *found = FALSE;
    if (!suppress_key(list, addr, &k, err))
        return FALSE;
    key.mv_size = k->len;
    key.mv_data = k->data;
    rc = mdb_del(spool_mdb_txn(t), spool_dbi(t->sp, DB_SUPPRESS), &key, NULL);
    if (rc == MDB_NOTFOUND)
        return TRUE;
    if (rc)
        return spool_mdb_fail(rc, "remove suppression", err);
    *found = TRUE;
    spool_txn_log(t, "suppress: <%s> list=%s removed", addr, list);
    return TRUE;
}

gboolean spool_suppress_is(struct spool_txn *t, const char *list, const char *addr)
{
    struct spool_suppress s;
    gboolean found = FALSE, yes;

    if (!spool_suppress_get(t, list, addr, &s, &found, NULL) || !found)
        return FALSE;
    yes = s.since != 0;
    spool_suppress_clear(&s);
    return yes;
}

/* The address goes on the list: the record, a log line, the platform's event. */
static gboolean suppress_now(struct spool_txn *t, struct spool_suppress *s, const char *reason,
                             const char *event, int64_t now, GError **err)
{
    struct spool_event ev;
    gboolean ok;

    s->since = now;
    g_free(s->reason);
    s->reason = g_strdup(reason);
    if (!spool_suppress_put(t, s, err))
        return FALSE;
    spool_txn_log(t, "suppress: <%s> list=%s suppressed: %s (score %.1f)", s->addr, s->list,
                  reason, s->score);
    spool_event_init(&ev);
    ev.type = g_strdup(event);
    ev.rcpt = g_strdup(s->addr);
    ev.list = g_strdup(s->list);
    ev.reply = g_strdup(reason);
    ok = spool_event_add(t, &ev, err);
    spool_event_clear(&ev);
    return ok;
}

gboolean spool_suppress_bounce(struct spool_txn *t, const char *list, const char *addr,
                               gboolean hard, const char *status, int64_t now, int64_t window,
                               double threshold, gboolean *suppressed, GError **err)
{
    struct spool_suppress s;
    gboolean found, ok = TRUE;

    *suppressed = FALSE;
    if (!spool_suppress_get(t, list, addr, &s, &found, err))
        return FALSE;
    if (!found) {
        s.addr = g_strdup(addr);
        s.list = g_strdup(list && *list ? list : CONFIG_LIST_DEFAULT);
    }
    /* Already on the list: nothing more to count. */
    if (s.since) {
        spool_suppress_clear(&s);
        return TRUE;
    }
    /* Bounces older than the window no longer count: start again. */
    if (s.last && now - s.last > window) {
        s.score = 0;
        s.hard = s.soft = 0;
    }
    /* One bounce a day counts: a message to a dead address bounces once
     * per copy, and a burst of them is one fact about the address. */
    if (s.last && s.score > 0 && now / DAY == s.last / DAY) {
        spool_suppress_clear(&s);
        return TRUE;
    }
    s.score += hard ? 1.0 : 0.5;
    if (hard)
        s.hard++;
    else
        s.soft++;
    s.last = now;
    g_free(s.reason);
    s.reason = g_strdup_printf("%s bounce %s", hard ? "hard" : "soft", status ? status : "");
    spool_txn_log(t, "suppress: <%s> list=%s %s bounce counted, score %.1f of %.1f", s.addr,
                  s.list, hard ? "hard" : "soft", s.score, threshold);
    if (s.score >= threshold) {
        g_autofree char *why = g_strdup_printf("bounce score %.1f", s.score);

        ok = suppress_now(t, &s, why, EVENT_ADDRESS_SUPPRESSED, now, err);
        *suppressed = ok;
    } else {
        ok = spool_suppress_put(t, &s, err);
    }
    spool_suppress_clear(&s);
    return ok;
}

gboolean spool_suppress_add(struct spool_txn *t, const char *list, const char *addr,
                            const char *reason, const char *event, int64_t now,
                            double threshold, gboolean *added, GError **err)
{
    struct spool_suppress s;
    gboolean found, ok = TRUE;

    *added = FALSE;
    if (!spool_token_addr_valid(addr)) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_INVALID,
                    "<%s> is not an address (local@domain, UTF-8, no blanks or controls)", addr);
        return FALSE;
    }
    if (!spool_suppress_get(t, list, addr, &s, &found, err))
        return FALSE;
    if (!found) {
        s.addr = g_strdup(addr);
        s.list = g_strdup(list && *list ? list : CONFIG_LIST_DEFAULT);
    }
    if (!s.since) {
        s.score = MAX(s.score, threshold);
        s.last = now;
        ok = suppress_now(t, &s, reason, event, now, err);
        *added = ok;
    }
    spool_suppress_clear(&s);
    return ok;
}

gboolean spool_suppress_foreach(struct spool_txn *t, spool_suppress_fn fn, void *ctx,
                                GError **err)
{
    MDB_cursor *c;
    MDB_val key, val;
    int rc;
    gboolean go = TRUE;

    if ((rc = mdb_cursor_open(spool_mdb_txn(t), spool_dbi(t->sp, DB_SUPPRESS), &c)))
        return spool_mdb_fail(rc, "suppression cursor", err);
    for (rc = mdb_cursor_get(c, &key, &val, MDB_FIRST); rc == 0 && go;
         rc = mdb_cursor_get(c, &key, &val, MDB_NEXT)) {
        struct spool_suppress s = { 0 };

        suppress_decode(&val, &s);
        go = fn(&s, ctx);
        spool_suppress_clear(&s);
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND)
        return spool_mdb_fail(rc, "suppression list", err);
    return TRUE;
}

struct suppress_change {
    const char *list, *addr, *reason;
    gboolean add;
    double threshold;
    gboolean *changed;
};

static gboolean suppress_change_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct suppress_change *ch = ctx;

    if (ch->add)
        return spool_suppress_add(t, ch->list, ch->addr, ch->reason, EVENT_ADDRESS_SUPPRESSED,
                                  unix_ms() / 1000, ch->threshold, ch->changed, err);
    return spool_suppress_remove(t, ch->list, ch->addr, ch->changed, err);
}

gboolean spool_suppress_change(struct spool *sp, const char *list, const char *addr, gboolean add,
                               const char *reason, double threshold, gboolean *changed,
                               GError **err)
{
    struct suppress_change ch = { list, addr, reason, add, threshold, changed };

    return spool_write(sp, suppress_change_write, &ch, err);
}
