/*
 * delivery.c - see delivery.h.
 */
#include "spool/delivery.h"
#include "spool/spool_lmdb.h"
#include "spool/spool_events.h"
#include "spool/spool_hist.h"
#include "common/clock.h"
#include "common/log.h"

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

/*
 * The record, written at every change of every delivery: a version byte,
 * fixed-size big-endian fields, then the recipient, the last reply and
 * the header block.  A GVariant dictionary cost more than the rest of a
 * put (building, serialising and parsing it by name), and the transform
 * writes ten per message.
 *
 *    0  DLV_RECORD_V1       1  state           2  flags (DLV_F_*)
 *    3  attempts (32)       7  created        15  next_try
 *   23  lease              31  lease_expiry   39  rcpt length (32)
 *   43  reply length (32)  47  rcpt, reply, header (the rest)
 *
 * Records written before are GVariant a{sv} dictionaries: they start with
 * the first byte of a key name (or are empty), never with DLV_RECORD_V1.
 */
#define DLV_RECORD_V1 0x01
#define DLV_F_HELD 0x01
#define DLV_F_REPLY 0x02
#define DLV_F_HEADER 0x04
#define DLV_FIXED 47

static size_t dlv_record_size(const struct spool_dlv *d)
{
    return DLV_FIXED + (d->rcpt ? strlen(d->rcpt) : 0) +
           (d->last_reply ? strlen(d->last_reply) : 0) +
           (d->header ? g_bytes_get_size(d->header) : 0);
}

static unsigned char *dlv_put_bytes(unsigned char *p, const void *data, size_t len)
{
    if (len)
        memcpy(p, data, len);
    return p + len;
}

/* Into out, which holds dlv_record_size(d) bytes. */
static void dlv_encode(const struct spool_dlv *d, unsigned char *out)
{
    size_t rcpt_len = d->rcpt ? strlen(d->rcpt) : 0;
    size_t reply_len = d->last_reply ? strlen(d->last_reply) : 0;
    gsize header_len = 0;
    const void *header = d->header ? g_bytes_get_data(d->header, &header_len) : NULL;
    unsigned char *p = out + DLV_FIXED;

    out[0] = DLV_RECORD_V1;
    out[1] = (unsigned char)d->state;
    out[2] = (d->held ? DLV_F_HELD : 0) | (d->last_reply ? DLV_F_REPLY : 0) |
             (d->header ? DLV_F_HEADER : 0);
    spool_be32(out + 3, d->attempts);
    spool_be64(out + 7, (uint64_t)d->created);
    spool_be64(out + 15, (uint64_t)d->next_try);
    spool_be64(out + 23, d->lease);
    spool_be64(out + 31, (uint64_t)d->lease_expiry);
    spool_be32(out + 39, (uint32_t)rcpt_len);
    spool_be32(out + 43, (uint32_t)reply_len);
    p = dlv_put_bytes(p, d->rcpt, rcpt_len);
    p = dlv_put_bytes(p, d->last_reply, reply_len);
    dlv_put_bytes(p, header, header_len);
}

static void dlv_decode_variant(const MDB_val *val, struct spool_dlv *d)
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

/* Every field of d but msg and idx, which the key gives. */
static gboolean dlv_decode(const MDB_val *val, struct spool_dlv *d, GError **err)
{
    const unsigned char *rec = val->mv_data, *p = rec + DLV_FIXED;
    size_t rcpt_len, reply_len;

    if (val->mv_size == 0 || rec[0] != DLV_RECORD_V1) {
        dlv_decode_variant(val, d);
        return TRUE;
    }
    if (val->mv_size < DLV_FIXED ||
        (rcpt_len = spool_get_be32(rec + 39)) > val->mv_size - DLV_FIXED ||
        (reply_len = spool_get_be32(rec + 43)) > val->mv_size - DLV_FIXED - rcpt_len) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_CORRUPT,
                    "delivery %016" G_GINT64_MODIFIER "X/%u: malformed record", d->msg, d->idx);
        return FALSE;
    }
    d->state = rec[1] < DLV_STATE_COUNT ? rec[1] : DLV_DEFERRED;
    d->held = (rec[2] & DLV_F_HELD) != 0;
    d->attempts = spool_get_be32(rec + 3);
    d->created = (int64_t)spool_get_be64(rec + 7);
    d->next_try = (int64_t)spool_get_be64(rec + 15);
    d->lease = spool_get_be64(rec + 23);
    d->lease_expiry = (int64_t)spool_get_be64(rec + 31);
    d->rcpt = g_strndup((const char *)p, rcpt_len);
    p += rcpt_len;
    if (rec[2] & DLV_F_REPLY)
        d->last_reply = g_strndup((const char *)p, reply_len);
    p += reply_len;
    if (rec[2] & DLV_F_HEADER)
        d->header = g_bytes_new(p, val->mv_size - (size_t)(p - rec));
    return TRUE;
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
    if ((rc = mdb_get(spool_mdb_txn(t), spool_dbi(t->sp, DB_DELIVERIES), &key, &val)))
        return spool_mdb_fail(rc, "read delivery", err);
    spool_dlv_init(d);
    d->msg = msg;
    d->idx = idx;
    return dlv_decode(&val, d, err);
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
    char counter[24] = "dlv.";

    g_strlcpy(counter + 4, dlv_state_name(d->state), sizeof(counter) - 4);
    return spool_counter_add(t, counter, delta, err);
}

/*
 * The totals of /metrics: a result recorded (sent, bounced) or an attempt
 * deferred.  A lease that runs out changes the state but is no attempt.
 * A result also counts in the delivery latency, except a late bounce
 * (sent -> bounced): that delivery had its result, when it was sent.
 */
const char *const spool_reply_classes[SPOOL_REPLY_CLASSES] = { "2xx", "4xx", "5xx", "none" };

/* The class of a relay reply ("250 2.0.0 ok"): its first digit, or none. */
int spool_reply_class(const char *reply)
{
    if (reply && reply[0] >= '2' && reply[0] <= '5' && reply[0] != '3' &&
        g_ascii_isdigit(reply[1]) && g_ascii_isdigit(reply[2]))
        return reply[0] == '2' ? 0 : reply[0] == '4' ? 1 : 2;
    return 3;
}

const char *spool_counter_reply(int class_index)
{
    static const char *const names[SPOOL_REPLY_CLASSES] = {
        "total.reply.2xx", "total.reply.4xx", "total.reply.5xx", "total.reply.none",
    };

    return names[class_index];
}

static gboolean dlv_count_result(struct spool_txn *t, const struct spool_dlv *d,
                                 enum dlv_state was, uint32_t attempts_before, GError **err)
{
    if (was == DLV_STATE_COUNT || was == d->state)
        return TRUE;
    if ((d->state == DLV_SENT || d->state == DLV_BOUNCED) && was != DLV_SENT &&
        !spool_hist_observe(t, SPOOL_HIST_DELIVERY, unix_ms() - spool_id_ms(d->msg), err))
        return FALSE;
    /* An attempt at the relay (not a suppressed copy bounced unsent): its reply's class. */
    if (d->attempts > attempts_before &&
        !spool_counter_add(t, spool_counter_reply(spool_reply_class(d->last_reply)), 1, err))
        return FALSE;
    if (d->state == DLV_SENT)
        return spool_counter_add(t, SPOOL_COUNTER_SENT, 1, err);
    if (d->state == DLV_BOUNCED)
        return spool_counter_add(t, SPOOL_COUNTER_BOUNCED, 1, err);
    if (d->state == DLV_DEFERRED && d->attempts > attempts_before)
        return spool_counter_add(t, SPOOL_COUNTER_DEFERRED, 1, err);
    return TRUE;
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
    rc = add ? mdb_put(spool_mdb_txn(t), spool_dbi(t->sp, db), &key, &val, 0)
             : mdb_del(spool_mdb_txn(t), spool_dbi(t->sp, db), &key, NULL);
    if (rc && !(rc == MDB_NOTFOUND && !add))
        return spool_mdb_fail(rc, "update delivery index", err);
    return TRUE;
}

/*
 * After a delivery's record is written (was: its state before, or
 * DLV_STATE_COUNT for a new one): its index entry, the state counts and
 * result counters, and a bounce's event.  A bounce is news for the
 * platform whoever records it (a 5xx, the lifetime passed): here, with
 * the record, it cannot be missed.
 */
static gboolean dlv_written(struct spool_txn *t, const struct spool_dlv *d, enum dlv_state was,
                            uint32_t attempts_before, GError **err)
{
    if (!dlv_index(t, d, TRUE, err) || !dlv_count(t, d, 1, err) ||
        !dlv_count_result(t, d, was, attempts_before, err))
        return FALSE;
    if (d->state == DLV_BOUNCED && was != DLV_BOUNCED)
        return spool_event_bounced(t, d->msg, d->rcpt, d->last_reply, err);
    return TRUE;
}

/*
 * One B-tree search for a new delivery, as the transform makes them: the
 * record space is reserved only if the key is new; if not, LMDB hands back
 * the old record, whose index entry and count go before it is replaced.
 */
gboolean spool_dlv_put(struct spool_txn *t, const struct spool_dlv *d, GError **err)
{
    MDB_dbi dbi = spool_dbi(t->sp, DB_DELIVERIES);
    size_t size = dlv_record_size(d);
    unsigned char k[12];
    MDB_val key = { 12, k }, val = { size, NULL };
    enum dlv_state was = DLV_STATE_COUNT;   /* none: a new delivery */
    uint32_t attempts_before = 0;
    int rc;

    dlv_key(k, d->msg, d->idx);
    rc = mdb_put(spool_mdb_txn(t), dbi, &key, &val, MDB_RESERVE | MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST) {
        struct spool_dlv old;
        gboolean ok;

        spool_dlv_init(&old);
        old.msg = d->msg;
        old.idx = d->idx;
        ok = dlv_decode(&val, &old, err) && dlv_index(t, &old, FALSE, err) &&
             dlv_count(t, &old, -1, err);
        was = old.state;
        attempts_before = old.attempts;
        spool_dlv_clear(&old);
        if (!ok)
            return FALSE;
        val.mv_size = size;
        rc = mdb_put(spool_mdb_txn(t), dbi, &key, &val, MDB_RESERVE);
    }
    if (rc)
        return spool_mdb_fail(rc, "store delivery", err);
    dlv_encode(d, val.mv_data);
    return dlv_written(t, d, was, attempts_before, err);
}

/*
 * The dispatcher read the delivery in this transaction already (to lease
 * it, or to check a result's lease): the old index entry and count come
 * from that copy instead of a second decode of the record.
 */
gboolean spool_dlv_replace(struct spool_txn *t, const struct spool_dlv *old,
                           const struct spool_dlv *d, GError **err)
{
    size_t size = dlv_record_size(d);
    unsigned char k[12];
    MDB_val key = { 12, k }, val = { size, NULL };
    int rc;

    g_return_val_if_fail(old->msg == d->msg && old->idx == d->idx, FALSE);
    if (!dlv_index(t, old, FALSE, err) || !dlv_count(t, old, -1, err))
        return FALSE;
    dlv_key(k, d->msg, d->idx);
    if ((rc = mdb_put(spool_mdb_txn(t), spool_dbi(t->sp, DB_DELIVERIES), &key, &val,
                      MDB_RESERVE)))
        return spool_mdb_fail(rc, "store delivery", err);
    dlv_encode(d, val.mv_data);
    return dlv_written(t, d, old->state, old->attempts, err);
}

/*
 * The records of one message's deliveries, in recipient order, as stored:
 * fn returns DLV_WALK_ON, DLV_WALK_STOP, or DLV_WALK_ERROR with *err set.
 * The walk behind spool_dlv_foreach() (decoded) and spool_dlv_counts()
 * (the state byte alone).
 */
enum { DLV_WALK_ERROR, DLV_WALK_STOP, DLV_WALK_ON };
typedef int (*dlv_record_fn)(queue_id msg, uint32_t idx, MDB_val *val, void *ctx, GError **err);

static gboolean dlv_walk(struct spool_txn *t, queue_id msg, dlv_record_fn fn, void *ctx,
                         GError **err)
{
    MDB_cursor *cur;
    unsigned char k[12];
    MDB_val key = { 8, k }, val;
    int rc, go = DLV_WALK_ON;

    spool_be64(k, msg);
    if ((rc = mdb_cursor_open(spool_mdb_txn(t), spool_dbi(t->sp, DB_DELIVERIES), &cur)))
        return spool_mdb_fail(rc, "open cursor", err);
    for (rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
         rc == 0 && key.mv_size == 12 && memcmp(key.mv_data, k, 8) == 0;
         rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) {
        go = fn(msg, spool_get_be32((const unsigned char *)key.mv_data + 8), &val, ctx, err);
        if (go != DLV_WALK_ON)
            break;
    }
    mdb_cursor_close(cur);
    if (go == DLV_WALK_ERROR)
        return FALSE;
    if (go == DLV_WALK_ON && rc && rc != MDB_NOTFOUND)
        return spool_mdb_fail(rc, "scan deliveries", err);
    return TRUE;
}

/* One record decoded into d (initialised here; the caller clears it). */
static gboolean dlv_decode_at(queue_id msg, uint32_t idx, MDB_val *val, struct spool_dlv *d,
                              GError **err)
{
    spool_dlv_init(d);
    d->msg = msg;
    d->idx = idx;
    return dlv_decode(val, d, err);
}

struct dlv_visit {
    spool_dlv_fn fn;
    void *ctx;
};

static int dlv_visit_one(queue_id msg, uint32_t idx, MDB_val *val, void *ctx, GError **err)
{
    struct dlv_visit *v = ctx;
    struct spool_dlv d;
    gboolean go_on;

    if (!dlv_decode_at(msg, idx, val, &d, err)) {
        spool_dlv_clear(&d);
        return DLV_WALK_ERROR;
    }
    go_on = v->fn(&d, v->ctx);
    spool_dlv_clear(&d);
    return go_on ? DLV_WALK_ON : DLV_WALK_STOP;
}

gboolean spool_dlv_foreach(struct spool_txn *t, queue_id msg, spool_dlv_fn fn, void *ctx,
                           GError **err)
{
    struct dlv_visit v = { fn, ctx };

    return dlv_walk(t, msg, dlv_visit_one, &v, err);
}

/*
 * The index walk behind spool_due_foreach() and spool_lease_foreach(),
 * and the two walks of `due` that start at an entry (from, NULL: the
 * head).  Keys are time (8) . msg (8) . rcpt# (4), big-endian
 * (dlv_index_key()); an entry of another size is not ours and is skipped.
 * With runs, only the first entry of each run of one message at one time
 * is visited: the rest of the run is skipped by a seek, never read.
 */
static gboolean dlv_index_walk(struct spool_txn *t, enum spool_db db,
                               const struct spool_dlv_ref *from, gboolean runs,
                               int64_t until_ms, spool_dlv_ref_fn fn, void *ctx, GError **err)
{
    MDB_cursor *cur;
    MDB_val key, val;
    unsigned char start[20];
    int rc;

    if ((rc = mdb_cursor_open(spool_mdb_txn(t), spool_dbi(t->sp, db), &cur)))
        return spool_mdb_fail(rc, db == DB_DUE ? "open due index" : "open lease index", err);
    if (from) {
        spool_be64(start, (uint64_t)from->at_ms);
        dlv_key(start + 8, from->msg, from->idx);
        key.mv_size = sizeof(start);
        key.mv_data = start;
    }
    rc = mdb_cursor_get(cur, &key, &val, from ? MDB_SET_RANGE : MDB_FIRST);
    while (rc == 0) {
        const unsigned char *k = key.mv_data;
        struct spool_dlv_ref ref;

        if (key.mv_size != 20) {
            rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT);
            continue;
        }
        ref.at_ms = (int64_t)spool_get_be64(k);
        if (ref.at_ms > until_ms)
            break;
        ref.msg = spool_get_be64(k + 8);
        ref.idx = spool_get_be32(k + 16);
        ref.lease = 0;
        if (db == DB_LEASES && val.mv_size == sizeof(ref.lease))
            memcpy(&ref.lease, val.mv_data, sizeof(ref.lease));
        if (!fn(&ref, ctx))
            break;
        if (!runs || ref.msg == G_MAXUINT64) {
            rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT);
            continue;
        }
        /* The next run: this time, the next message, its first recipient. */
        spool_be64(start, (uint64_t)ref.at_ms);
        dlv_key(start + 8, ref.msg + 1, 0);
        key.mv_size = sizeof(start);
        key.mv_data = start;
        rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return spool_mdb_fail(rc, db == DB_DUE ? "scan due index" : "scan lease index", err);
    return TRUE;
}

gboolean spool_due_foreach(struct spool_txn *t, int64_t until_ms, spool_dlv_ref_fn fn, void *ctx,
                           GError **err)
{
    return dlv_index_walk(t, DB_DUE, NULL, FALSE, until_ms, fn, ctx, err);
}

gboolean spool_due_foreach_from(struct spool_txn *t, const struct spool_dlv_ref *from,
                                int64_t until_ms, spool_dlv_ref_fn fn, void *ctx, GError **err)
{
    return dlv_index_walk(t, DB_DUE, from, FALSE, until_ms, fn, ctx, err);
}

gboolean spool_due_runs(struct spool_txn *t, const struct spool_dlv_ref *from, int64_t until_ms,
                        spool_dlv_ref_fn fn, void *ctx, GError **err)
{
    return dlv_index_walk(t, DB_DUE, from, TRUE, until_ms, fn, ctx, err);
}

gboolean spool_lease_foreach(struct spool_txn *t, int64_t until_ms, spool_dlv_ref_fn fn,
                             void *ctx, GError **err)
{
    return dlv_index_walk(t, DB_LEASES, NULL, FALSE, until_ms, fn, ctx, err);
}

static gboolean dlv_count_one(const struct spool_dlv *d, void *ctx)
{
    uint32_t *counts = ctx;
    counts[d->state]++;
    return TRUE;
}

/*
 * Counting runs after every batch of results, over all of a message's
 * deliveries: a binary record gives its state in its second byte, so
 * only records in the old format are decoded.
 */
static int dlv_count_record(queue_id msg, uint32_t idx, MDB_val *val, void *ctx, GError **err)
{
    uint32_t *counts = ctx;
    const unsigned char *rec = val->mv_data;
    struct spool_dlv d;
    gboolean ok;

    if (val->mv_size >= DLV_FIXED && rec[0] == DLV_RECORD_V1) {
        counts[rec[1] < DLV_STATE_COUNT ? rec[1] : DLV_DEFERRED]++;
        return DLV_WALK_ON;
    }
    if ((ok = dlv_decode_at(msg, idx, val, &d, err)))
        dlv_count_one(&d, counts);
    spool_dlv_clear(&d);
    return ok ? DLV_WALK_ON : DLV_WALK_ERROR;
}

gboolean spool_dlv_counts(struct spool_txn *t, queue_id msg, uint32_t counts[DLV_STATE_COUNT],
                          GError **err)
{
    memset(counts, 0, sizeof(uint32_t) * DLV_STATE_COUNT);
    return dlv_walk(t, msg, dlv_count_record, counts, err);
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
    int64_t now = unix_ms() / 1000;
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
        if ((rc = mdb_del(spool_mdb_txn(t), spool_dbi(t->sp, DB_DELIVERIES), &key, NULL)))
            return spool_mdb_fail(rc, "delete delivery", err);
    }
    return TRUE;
}

/* Queue the owner's bounce notice: the transform writes and signs it. */
static gboolean dlv_bounce_report(struct spool_txn *t, const struct spool_msg *m, GError **err)
{
    queue_id rep_id = spool_id_next(t, err);
    char id[QUEUE_ID_LEN + 1], about[QUEUE_ID_LEN + 1];
    struct spool_msg rep;
    gboolean ok;

    if (!rep_id)
        return FALSE;
    spool_msg_init(&rep);
    rep.id = rep_id;
    rep.state = MSG_INCOMING;
    rep.arrival = unix_ms() / 1000;
    rep.sender = g_strdup("");
    g_ptr_array_add(rep.recipients, g_strdup(m->owner));
    rep.kind = g_strdup(MSG_KIND_BOUNCE_REPORT);
    rep.owner = g_strdup(m->owner);
    rep.ref = m->id;
    rep.proto = g_strdup("local");
    ok = spool_msg_insert(t, &rep, err) && spool_body_put(t, DB_BODIES, rep.id, "", 0, err);
    spool_id_format(rep.id, id);
    spool_id_format(m->id, about);
    if (ok)
        spool_txn_log(t, "%s: bounce report about %s queued for <%s>", id, about, m->owner);
    spool_msg_clear(&rep);
    return ok;
}

gboolean spool_msg_settle(struct spool_txn *t, queue_id msg, GError **err)
{
    struct spool_msg m;
    gboolean ok;

    if (!spool_msg_get(t, msg, &m, err))
        return FALSE;
    ok = spool_msg_settle_msg(t, &m, err);
    spool_msg_clear(&m);
    return ok;
}

gboolean spool_msg_settle_msg(struct spool_txn *t, struct spool_msg *m, GError **err)
{
    uint32_t n[DLV_STATE_COUNT];
    queue_id msg = m->id;
    enum msg_state to;
    gboolean ok = TRUE;

    if (!spool_dlv_counts(t, msg, n, err))
        return FALSE;
    if (n[DLV_READY] || n[DLV_LEASED])
        to = MSG_READY;
    else if (n[DLV_DEFERRED])
        to = MSG_DEFERRED;
    else
        to = MSG_DONE;
    if (m->state != to && m->state != MSG_HOLD) {
        char id[QUEUE_ID_LEN + 1];

        /* A reason says why a message was refused or held; an end is not one. */
        ok = spool_msg_set_state(t, m, to, NULL, err);
        spool_id_format(msg, id);
        if (ok && to == MSG_DONE)
            spool_txn_log(t, "%s: done, sent=%u, bounced=%u", id, n[DLV_SENT], n[DLV_BOUNCED]);
        if (ok && to == MSG_DONE)
            ok = spool_event_done(t, m, n[DLV_SENT], n[DLV_BOUNCED], err);
        if (ok && to == MSG_DONE && n[DLV_BOUNCED] && m->owner &&
            g_strcmp0(m->kind, MSG_KIND_NOTICE) != 0)
            ok = dlv_bounce_report(t, m, err);
    }
    return ok;
}

gboolean spool_dlv_late_bounce(struct spool_txn *t, queue_id msg, uint32_t idx,
                               const char *reply, gboolean *changed, GError **err)
{
    struct spool_dlv d;
    struct spool_msg m;
    GError *local = NULL;
    gboolean ok;
    char id[QUEUE_ID_LEN + 1];

    *changed = FALSE;
    spool_dlv_init(&d);
    if (!spool_dlv_get(t, msg, idx, &d, &local)) {
        gboolean gone = g_error_matches(local, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND);

        if (gone)
            g_clear_error(&local);
        else
            g_propagate_error(err, local);
        return gone;
    }
    /* Only sent -> bounced: a queued delivery is the dispatcher's to end. */
    if (d.state != DLV_SENT) {
        spool_dlv_clear(&d);
        return TRUE;
    }
    d.state = DLV_BOUNCED;
    g_free(d.last_reply);
    d.last_reply = g_strdup(reply);
    spool_id_format(msg, id);
    spool_txn_log(t, "%s: to=<%s>, late bounce: %s", id, d.rcpt, reply);
    ok = spool_dlv_put(t, &d, err);
    spool_dlv_clear(&d);
    if (!ok || !spool_msg_get(t, msg, &m, err))
        return FALSE;
    *changed = TRUE;
    /* A done message will not settle again: its report is queued here. */
    if (m.state == MSG_DONE)
        ok = !m.owner || !*m.owner || g_strcmp0(m.kind, MSG_KIND_NOTICE) == 0 ||
             dlv_bounce_report(t, &m, err);
    else
        ok = spool_msg_settle(t, msg, err);
    spool_msg_clear(&m);
    return ok;
}
