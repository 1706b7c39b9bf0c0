/*
 * delivery.c - see delivery.h.
 */
#include "spool/delivery.h"
#include "spool/log.h"

#include <string.h>

static const char *const dlv_state_names[DLV_STATE_COUNT] = {
    [DLV_READY] = "ready", [DLV_LEASED] = "leased", [DLV_DEFERRED] = "deferred",
    [DLV_SENT] = "sent", [DLV_BOUNCED] = "bounced",
};

const char *dlv_state_name(enum dlv_state s)
{
    return (unsigned)s < DLV_STATE_COUNT ? dlv_state_names[s] : "unknown";
}

gboolean dlv_state_parse(const char *name, enum dlv_state *out)
{
    for (int i = 0; i < DLV_STATE_COUNT; i++)
        if (g_ascii_strcasecmp(name, dlv_state_names[i]) == 0) {
            *out = i;
            return TRUE;
        }
    return FALSE;
}

void spool_dlv_init(struct spool_dlv *d)
{
    memset(d, 0, sizeof(*d));
}

void spool_dlv_clear(struct spool_dlv *d)
{
    g_free(d->rcpt);
    g_free(d->last_reply);
    if (d->header)
        g_bytes_unref(d->header);
    memset(d, 0, sizeof(*d));
}

static GVariant *dlv_encode(const struct spool_dlv *d)
{
    GVariantDict v;

    g_variant_dict_init(&v, NULL);
    g_variant_dict_insert(&v, "state", "y", (guint8)d->state);
    g_variant_dict_insert(&v, "held", "b", d->held);
    g_variant_dict_insert(&v, "rcpt", "s", d->rcpt ? d->rcpt : "");
    g_variant_dict_insert(&v, "attempts", "u", d->attempts);
    g_variant_dict_insert(&v, "created", "x", d->created);
    g_variant_dict_insert(&v, "next_try", "x", d->next_try);
    if (d->last_reply)
        g_variant_dict_insert(&v, "last_reply", "s", d->last_reply);
    g_variant_dict_insert(&v, "lease", "t", d->lease);
    g_variant_dict_insert(&v, "lease_expiry", "x", d->lease_expiry);
    if (d->header)
        g_variant_dict_insert_value(&v, "header",
                                    g_variant_new_from_bytes(G_VARIANT_TYPE_BYTESTRING,
                                                             d->header, TRUE));
    return g_variant_ref_sink(g_variant_dict_end(&v));
}

static void dlv_decode(const MDB_val *val, struct spool_dlv *d)
{
    g_autoptr(GBytes) bytes = g_bytes_new(val->mv_data, val->mv_size);
    g_autoptr(GVariant) v = g_variant_ref_sink(
        g_variant_new_from_bytes(G_VARIANT_TYPE_VARDICT, bytes, FALSE));
    g_autoptr(GVariant) header = NULL;
    GVariantDict dict;
    guint8 state = 0;

    g_variant_dict_init(&dict, v);
    g_variant_dict_lookup(&dict, "state", "y", &state);
    d->state = state < DLV_STATE_COUNT ? state : DLV_DEFERRED;
    g_variant_dict_lookup(&dict, "held", "b", &d->held);
    g_variant_dict_lookup(&dict, "rcpt", "s", &d->rcpt);
    g_variant_dict_lookup(&dict, "attempts", "u", &d->attempts);
    g_variant_dict_lookup(&dict, "created", "x", &d->created);
    g_variant_dict_lookup(&dict, "next_try", "x", &d->next_try);
    g_variant_dict_lookup(&dict, "last_reply", "s", &d->last_reply);
    g_variant_dict_lookup(&dict, "lease", "t", &d->lease);
    g_variant_dict_lookup(&dict, "lease_expiry", "x", &d->lease_expiry);
    header = g_variant_dict_lookup_value(&dict, "header", G_VARIANT_TYPE_BYTESTRING);
    if (header)
        d->header = g_variant_get_data_as_bytes(header);
    g_variant_dict_clear(&dict);
}

static void dlv_key(unsigned char k[12], queue_id msg, uint32_t idx)
{
    spool_be64(k, msg);
    spool_be32(k + 8, idx);
}

gboolean spool_dlv_get(struct spool_txn *t, queue_id msg, uint32_t idx, struct spool_dlv *d,
                       GError **err)
{
    unsigned char k[12];
    MDB_val key = { 12, k }, val;
    int rc;

    dlv_key(k, msg, idx);
    if ((rc = mdb_get(t->txn, spool_dbi(t->sp, DB_DELIVERIES), &key, &val)))
        return spool_mdb_fail(rc, "read delivery", err);
    spool_dlv_init(d);
    d->msg = msg;
    d->idx = idx;
    dlv_decode(&val, d);
    return TRUE;
}

/*
 * The index key a delivery has in its state: `due` by next_try (in ms,
 * so that the order within a second is kept), `leases` by expiry.
 */
static gboolean dlv_index_key(const struct spool_dlv *d, enum spool_db *db, unsigned char k[20])
{
    if ((d->state == DLV_READY || d->state == DLV_DEFERRED) && !d->held) {
        *db = DB_DUE;
        spool_be64(k, (uint64_t)d->next_try * 1000);
    } else if (d->state == DLV_LEASED) {
        *db = DB_LEASES;
        spool_be64(k, (uint64_t)d->lease_expiry);
    } else {
        return FALSE;
    }
    dlv_key(k + 8, d->msg, d->idx);
    return TRUE;
}

static gboolean dlv_count(struct spool_txn *t, const struct spool_dlv *d, int delta, GError **err)
{
    g_autofree char *counter = g_strdup_printf("dlv.%s", dlv_state_name(d->state));
    return spool_counter_add(t, counter, delta, err);
}

static gboolean dlv_index(struct spool_txn *t, const struct spool_dlv *d, gboolean add,
                          GError **err)
{
    enum spool_db db;
    unsigned char k[20];
    MDB_val key = { 20, k }, val = { 0, (void *)"" };
    int rc;

    if (!dlv_index_key(d, &db, k))
        return TRUE;
    if (db == DB_LEASES) {
        val.mv_size = sizeof(d->lease);
        val.mv_data = (void *)&d->lease;
    }
    rc = add ? mdb_put(t->txn, spool_dbi(t->sp, db), &key, &val, 0)
             : mdb_del(t->txn, spool_dbi(t->sp, db), &key, NULL);
    if (rc && !(rc == MDB_NOTFOUND && !add))
        return spool_mdb_fail(rc, "update delivery index", err);
    return TRUE;
}

gboolean spool_dlv_put(struct spool_txn *t, const struct spool_dlv *d, GError **err)
{
    struct spool_dlv old;
    g_autoptr(GVariant) v = dlv_encode(d);
    unsigned char k[12];
    MDB_val key = { 12, k }, val = { g_variant_get_size(v), (void *)g_variant_get_data(v) };
    GError *local = NULL;
    int rc;

    if (spool_dlv_get(t, d->msg, d->idx, &old, &local)) {
        gboolean ok = dlv_index(t, &old, FALSE, err) && dlv_count(t, &old, -1, err);
        spool_dlv_clear(&old);
        if (!ok)
            return FALSE;
    } else if (!g_error_matches(local, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND)) {
        g_propagate_error(err, local);
        return FALSE;
    }
    g_clear_error(&local);
    dlv_key(k, d->msg, d->idx);
    if ((rc = mdb_put(t->txn, spool_dbi(t->sp, DB_DELIVERIES), &key, &val, 0)))
        return spool_mdb_fail(rc, "store delivery", err);
    return dlv_index(t, d, TRUE, err) && dlv_count(t, d, 1, err);
}

gboolean spool_dlv_foreach(struct spool_txn *t, queue_id msg, spool_dlv_fn fn, void *ctx,
                           GError **err)
{
    MDB_cursor *cur;
    unsigned char k[12];
    MDB_val key = { 8, k }, val;
    int rc;

    spool_be64(k, msg);
    if ((rc = mdb_cursor_open(t->txn, spool_dbi(t->sp, DB_DELIVERIES), &cur)))
        return spool_mdb_fail(rc, "open cursor", err);
    for (rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
         rc == 0 && key.mv_size == 12 && memcmp(key.mv_data, k, 8) == 0;
         rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) {
        struct spool_dlv d;
        gboolean go_on;

        spool_dlv_init(&d);
        d.msg = msg;
        d.idx = spool_get_be32((const unsigned char *)key.mv_data + 8);
        dlv_decode(&val, &d);
        go_on = fn(&d, ctx);
        spool_dlv_clear(&d);
        if (!go_on)
            break;
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return spool_mdb_fail(rc, "scan deliveries", err);
    return TRUE;
}

static gboolean dlv_count_one(const struct spool_dlv *d, void *ctx)
{
    uint32_t *counts = ctx;
    counts[d->state]++;
    return TRUE;
}

gboolean spool_dlv_counts(struct spool_txn *t, queue_id msg, uint32_t counts[DLV_STATE_COUNT],
                          GError **err)
{
    memset(counts, 0, sizeof(uint32_t) * DLV_STATE_COUNT);
    return spool_dlv_foreach(t, msg, dlv_count_one, counts, err);
}

/*
 * Changing deliveries while iterating them would move the cursor under
 * us: collect the records first, then put each changed one back.
 */
static gboolean dlv_collect(const struct spool_dlv *d, void *ctx)
{
    struct spool_dlv *copy = g_new0(struct spool_dlv, 1);

    *copy = *d;
    copy->rcpt = g_strdup(d->rcpt);
    copy->last_reply = g_strdup(d->last_reply);
    copy->header = d->header ? g_bytes_ref(d->header) : NULL;
    g_ptr_array_add(ctx, copy);
    return TRUE;
}

static void dlv_free(gpointer p)
{
    spool_dlv_clear(p);
    g_free(p);
}

typedef gboolean (*dlv_change_fn)(struct spool_dlv *d, void *arg);

static gboolean dlv_change_all(struct spool_txn *t, queue_id msg, dlv_change_fn change,
                               void *arg, unsigned *changed, GError **err)
{
    g_autoptr(GPtrArray) all = g_ptr_array_new_with_free_func(dlv_free);

    if (!spool_dlv_foreach(t, msg, dlv_collect, all, err))
        return FALSE;
    for (guint i = 0; i < all->len; i++) {
        struct spool_dlv *d = all->pdata[i];
        if (!change(d, arg))
            continue;
        if (!spool_dlv_put(t, d, err))
            return FALSE;
        if (changed)
            (*changed)++;
    }
    return TRUE;
}

static gboolean dlv_change_held(struct spool_dlv *d, void *arg)
{
    gboolean held = GPOINTER_TO_INT(arg);

    if (d->held == held)
        return FALSE;
    d->held = held;
    return TRUE;
}

gboolean spool_dlv_set_held(struct spool_txn *t, queue_id msg, gboolean held, GError **err)
{
    return dlv_change_all(t, msg, dlv_change_held, GINT_TO_POINTER(held), NULL, err);
}

static gboolean dlv_change_due_now(struct spool_dlv *d, void *arg)
{
    if (d->state != DLV_DEFERRED)
        return FALSE;
    d->next_try = *(int64_t *)arg;
    return TRUE;
}

gboolean spool_dlv_retry_now(struct spool_txn *t, queue_id msg, unsigned *n, GError **err)
{
    int64_t now = g_get_real_time() / G_USEC_PER_SEC;
    return dlv_change_all(t, msg, dlv_change_due_now, &now, n, err);
}

gboolean spool_dlv_delete_all(struct spool_txn *t, queue_id msg, GError **err)
{
    g_autoptr(GPtrArray) all = g_ptr_array_new_with_free_func(dlv_free);

    if (!spool_dlv_foreach(t, msg, dlv_collect, all, err))
        return FALSE;
    for (guint i = 0; i < all->len; i++) {
        struct spool_dlv *d = all->pdata[i];
        unsigned char k[12];
        MDB_val key = { 12, k };
        int rc;

        if (!dlv_index(t, d, FALSE, err) || !dlv_count(t, d, -1, err))
            return FALSE;
        dlv_key(k, d->msg, d->idx);
        if ((rc = mdb_del(t->txn, spool_dbi(t->sp, DB_DELIVERIES), &key, NULL)))
            return spool_mdb_fail(rc, "delete delivery", err);
    }
    return TRUE;
}
