/*
 * spool_notice_rate.c - per-address, per-hour count of rejection notices
 * (see spool_notice_rate.h).
 */
#include <string.h>

#include "spool/spool_notice_rate.h"
#include "spool/spool_lmdb.h"
#include "spool/spool_token.h"

/* LMDB's default limit on key size. */
#define NOTICE_RATE_KEY_MAX 511

/* addr \0 hour: the hours of one address sort together, oldest first. */
static GByteArray *spool_notice_rate_key(const char *addr, int64_t hour)
{
    /* Any case of an address is that address: no more notices by varying it. */
    g_autofree char *owner = spool_token_addr_key(addr);
    GByteArray *k = g_byte_array_new();
    unsigned char be[8];

    g_byte_array_append(k, (const guint8 *)owner, (guint)strlen(owner) + 1);
    spool_be64(be, (uint64_t)hour);
    g_byte_array_append(k, be, sizeof(be));
    return k;
}

/* Removes the records of addr's earlier hours: one record per address stays. */
static gboolean spool_notice_rate_prune(struct spool_txn *t, const GByteArray *k, GError **err)
{
    size_t prefix = k->len - 8;
    MDB_cursor *c;
    MDB_val key = { prefix, k->data }, val;
    int rc;

    if ((rc = mdb_cursor_open(spool_mdb_txn(t), spool_dbi(t->sp, DB_NOTICE_RATE), &c)))
        return spool_mdb_fail(rc, "notice rate cursor", err);
    rc = mdb_cursor_get(c, &key, &val, MDB_SET_RANGE);
    while (rc == 0 && key.mv_size == k->len && memcmp(key.mv_data, k->data, prefix) == 0
           && memcmp(key.mv_data, k->data, k->len) < 0) {
        if ((rc = mdb_cursor_del(c, 0)))
            break;
        rc = mdb_cursor_get(c, &key, &val, MDB_GET_CURRENT);
        if (rc == MDB_NOTFOUND || rc == EINVAL)
            rc = mdb_cursor_get(c, &key, &val, MDB_NEXT);
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND)
        return spool_mdb_fail(rc, "notice rate prune", err);
    return TRUE;
}

unsigned spool_notice_rate_count(struct spool_txn *t, const char *addr, int64_t now)
{
    g_autoptr(GByteArray) k = spool_notice_rate_key(addr, now / 3600);
    MDB_val key = { k->len, k->data }, val;
    guint32 count = 0;

    if (k->len <= NOTICE_RATE_KEY_MAX
        && mdb_get(spool_mdb_txn(t), spool_dbi(t->sp, DB_NOTICE_RATE), &key, &val) == 0) {
        g_autoptr(GBytes) bytes = g_bytes_new(val.mv_data, val.mv_size);
        g_autoptr(GVariant) v = g_variant_ref_sink(
            g_variant_new_from_bytes(G_VARIANT_TYPE_VARDICT, bytes, FALSE));
        GVariantDict d;

        g_variant_dict_init(&d, v);
        g_variant_dict_lookup(&d, "count", "u", &count);
        g_variant_dict_clear(&d);
    }
    return count;
}

gboolean spool_notice_rate_take(struct spool_txn *t, const char *addr, int64_t now,
                                uint64_t digest, unsigned max,
                                enum spool_notice_rate_verdict *verdict, GError **err)
{
    g_autoptr(GByteArray) k = spool_notice_rate_key(addr, now / 3600);
    MDB_val key = { k->len, k->data }, val;
    g_autoptr(GArray) digests = g_array_new(FALSE, FALSE, sizeof(guint64));
    g_autoptr(GVariant) out = NULL;
    GVariantDict d;
    guint32 count = 0;
    int rc;

    *verdict = NOTICE_RATE_SEND;
    /* No limit asked for, or an address too long to key: nothing to count. */
    if (max == 0 || k->len > NOTICE_RATE_KEY_MAX)
        return TRUE;

    /* What went this hour: a count and the digests of those notices. */
    rc = mdb_get(spool_mdb_txn(t), spool_dbi(t->sp, DB_NOTICE_RATE), &key, &val);
    if (rc && rc != MDB_NOTFOUND)
        return spool_mdb_fail(rc, "notice rate get", err);
    if (rc == 0) {
        g_autoptr(GBytes) bytes = g_bytes_new(val.mv_data, val.mv_size);
        g_autoptr(GVariant) v = g_variant_ref_sink(
            g_variant_new_from_bytes(G_VARIANT_TYPE_VARDICT, bytes, FALSE));
        g_autoptr(GVariant) list = NULL;
        gsize n = 0;
        const guint64 *items;

        g_variant_dict_init(&d, v);
        g_variant_dict_lookup(&d, "count", "u", &count);
        list = g_variant_dict_lookup_value(&d, "digests", G_VARIANT_TYPE("at"));
        g_variant_dict_clear(&d);
        if (list) {
            items = g_variant_get_fixed_array(list, &n, sizeof(guint64));
            g_array_append_vals(digests, items, (guint)n);
        }
    } else if (!spool_notice_rate_prune(t, k, err)) {
        /* A new hour for this address: its earlier hours go. */
        return FALSE;
    }

    /* The same notice again is dropped first: it tells the owner nothing new. */
    for (guint i = 0; i < digests->len; i++)
        if (g_array_index(digests, guint64, i) == digest) {
            *verdict = NOTICE_RATE_DUPLICATE;
            return TRUE;
        }
    if (count >= max) {
        *verdict = NOTICE_RATE_LIMITED;
        return TRUE;
    }

    /* Counted in the caller's transaction: it commits with the notice or not at all. */
    count++;
    g_array_append_val(digests, digest);
    g_variant_dict_init(&d, NULL);
    g_variant_dict_insert(&d, "count", "u", count);
    g_variant_dict_insert_value(&d, "digests",
                                g_variant_new_fixed_array(G_VARIANT_TYPE_UINT64, digests->data,
                                                          digests->len, sizeof(guint64)));
    out = g_variant_ref_sink(g_variant_dict_end(&d));
    val = (MDB_val){ g_variant_get_size(out), (void *)g_variant_get_data(out) };
    if ((rc = mdb_put(spool_mdb_txn(t), spool_dbi(t->sp, DB_NOTICE_RATE), &key, &val, 0)))
        return spool_mdb_fail(rc, "notice rate put", err);
    return TRUE;
}
