/*
 * spool_msg.c - message records, the by_state index, and chunked bodies.
 *
 * Records are a versioned binary layout (below); the GVariant a{sv}
 * dictionaries of older spools are still read.
 */
#include "spool/spool_lmdb.h"
#include "common/clock.h"
#include "spool/delivery.h"
#include "spool/spool_hist.h"
#include "common/log.h"

#include <string.h>

static const char *const msg_state_names[MSG_STATE_COUNT] = {
    [MSG_INCOMING] = "incoming", [MSG_READY] = "ready", [MSG_DEFERRED] = "deferred",
    [MSG_HOLD] = "hold", [MSG_REJECTED] = "rejected", [MSG_DONE] = "done",
};

const char *msg_state_name(enum msg_state s)
{
    return (unsigned)s < MSG_STATE_COUNT ? msg_state_names[s] : "unknown";
}

gboolean msg_state_parse(const char *name, enum msg_state *out)
{
    for (int i = 0; i < MSG_STATE_COUNT; i++)
        if (g_ascii_strcasecmp(name, msg_state_names[i]) == 0) {
            *out = i;
            return TRUE;
        }
    return FALSE;
}

/*
 * The message state machine: every move spool_msg_set_state() may make,
 * and who makes it.  This table is the source; docs/architecture.md draws
 * it.  A move not listed is a bug in the caller: it panics rather than
 * store a state no program expects (a rejected message sent after all).
 */
static const struct msg_edge {
    enum msg_state from, to;
    const char *why;
} msg_edges[] = {
    { MSG_INCOMING, MSG_READY, "transform: token ok, deliveries made (or a report written)" },
    { MSG_INCOMING, MSG_REJECTED, "transform: no, bad, used or expired token" },
    { MSG_INCOMING, MSG_HOLD, "transform: unparseable; spoolctl hold" },
    { MSG_INCOMING, MSG_DONE, "transform: a bounce report with nothing to report" },
    { MSG_READY, MSG_DEFERRED, "dispatch: results, all remaining deliveries deferred" },
    { MSG_READY, MSG_DONE, "dispatch: results, every delivery sent or bounced" },
    { MSG_READY, MSG_HOLD, "spoolctl hold" },
    { MSG_DEFERRED, MSG_READY, "dispatch: results, a delivery ready or leased again" },
    { MSG_DEFERRED, MSG_DONE, "dispatch: results, every delivery sent or bounced" },
    { MSG_DEFERRED, MSG_HOLD, "spoolctl hold" },
    { MSG_HOLD, MSG_INCOMING, "spoolctl release (held from incoming)" },
    { MSG_HOLD, MSG_READY, "spoolctl release (held from ready)" },
    { MSG_HOLD, MSG_DEFERRED, "spoolctl release (held from deferred)" },
    { MSG_HOLD, MSG_REJECTED, "approval: discarded by the moderator, or at approval_expiry" },
};

gboolean msg_state_can_move(enum msg_state from, enum msg_state to)
{
    for (size_t i = 0; i < G_N_ELEMENTS(msg_edges); i++)
        if (msg_edges[i].from == from && msg_edges[i].to == to)
            return TRUE;
    return FALSE;
}

void spool_msg_init(struct spool_msg *m)
{
    memset(m, 0, sizeof(*m));
    m->recipients = g_ptr_array_new_with_free_func(g_free);
    m->history = g_ptr_array_new_with_free_func(g_free);
}

void spool_msg_clear(struct spool_msg *m)
{
    g_free(m->sender);
    g_free(m->client);
    g_free(m->helo);
    g_free(m->proto);
    g_free(m->received);
    g_free(m->reason);
    g_free(m->kind);
    g_free(m->owner);
    g_free(m->message_id);
    if (m->recipients)
        g_ptr_array_unref(m->recipients);
    if (m->history)
        g_ptr_array_unref(m->history);
    memset(m, 0, sizeof(*m));
}

/*
 * The record, rewritten at every state change: a version byte, the two
 * states, big-endian times and numbers, then the strings, each a
 * big-endian 32-bit length (MSG_NONE for an unset one) and its bytes.
 * The kind comes first, so spool_msg_get_kind() reads it without walking
 * the rest.  Decoding and re-encoding the GVariant dictionary this
 * replaces cost a notice's delivery more CPU than the rest of its results
 * (docs/benchmarks.md, "Dispatcher CPU per delivery").
 *
 *    0  MSG_RECORD_V1     1  state            2  held_from
 *    3  arrival          11  since           19  size
 *   27  lease            35  lease_expiry    43  ref
 *   51  kind, owner, message_id, reason, sender, client, helo, proto,
 *       received; then a count (32) and that many recipients; then a
 *       count and that many history lines.
 *
 * Records written before (schema 2 and older) are GVariant a{sv}
 * dictionaries: they start with the first byte of a key name (or are
 * empty), never with MSG_RECORD_V1, and are still read; each is written
 * in this layout at its next change.
 */
#define MSG_RECORD_V1 0x01
#define MSG_FIXED 51
#define MSG_NONE 0xffffffffu
#define MSG_NSTR 9
#define MSG_STR_ALWAYS 4            /* from sender on: "" when unset, as ever */

/* The string fields of m in the record's order. */
static void msg_string_fields(struct spool_msg *m, char **f[MSG_NSTR])
{
    f[0] = &m->kind;
    f[1] = &m->owner;
    f[2] = &m->message_id;
    f[3] = &m->reason;
    f[4] = &m->sender;
    f[5] = &m->client;
    f[6] = &m->helo;
    f[7] = &m->proto;
    f[8] = &m->received;
}

static const char *msg_string_at(char **const f[MSG_NSTR], int i)
{
    return *f[i] || i < MSG_STR_ALWAYS ? *f[i] : "";
}

static size_t msg_strv_size(const GPtrArray *a)
{
    size_t n = 4;

    for (guint i = 0; i < a->len; i++)
        n += 4 + strlen(a->pdata[i]);
    return n;
}

static size_t msg_record_size(const struct spool_msg *m)
{
    char **f[MSG_NSTR];
    size_t n = MSG_FIXED;

    msg_string_fields((struct spool_msg *)m, f);
    for (int i = 0; i < MSG_NSTR; i++) {
        const char *s = msg_string_at(f, i);
        n += 4 + (s ? strlen(s) : 0);
    }
    return n + msg_strv_size(m->recipients) + msg_strv_size(m->history);
}

static unsigned char *msg_put_str(unsigned char *p, const char *s)
{
    size_t len = s ? strlen(s) : 0;

    spool_be32(p, s ? (uint32_t)len : MSG_NONE);
    if (len)
        memcpy(p + 4, s, len);
    return p + 4 + len;
}

/* Into out, which holds msg_record_size(m) bytes. */
static void spool_msg_encode(const struct spool_msg *m, unsigned char *out)
{
    char **f[MSG_NSTR];
    unsigned char *p = out + MSG_FIXED;

    out[0] = MSG_RECORD_V1;
    out[1] = (unsigned char)m->state;
    out[2] = (unsigned char)m->held_from;
    spool_be64(out + 3, (uint64_t)m->arrival);
    spool_be64(out + 11, (uint64_t)m->since);
    spool_be64(out + 19, m->size);
    spool_be64(out + 27, m->lease);
    spool_be64(out + 35, (uint64_t)m->lease_expiry);
    spool_be64(out + 43, m->ref);
    msg_string_fields((struct spool_msg *)m, f);
    for (int i = 0; i < MSG_NSTR; i++)
        p = msg_put_str(p, msg_string_at(f, i));
    spool_be32(p, m->recipients->len);
    p += 4;
    for (guint i = 0; i < m->recipients->len; i++)
        p = msg_put_str(p, m->recipients->pdata[i]);
    spool_be32(p, m->history->len);
    p += 4;
    for (guint i = 0; i < m->history->len; i++)
        p = msg_put_str(p, m->history->pdata[i]);
}

/* A bounds-checked walk of a binary record's strings: bad once it overran. */
struct msg_reader {
    const unsigned char *p, *end;
    gboolean bad;
};

static uint32_t msg_read_be32(struct msg_reader *r)
{
    uint32_t v;

    if (r->bad || r->end - r->p < 4) {
        r->bad = TRUE;
        return 0;
    }
    v = spool_get_be32(r->p);
    r->p += 4;
    return v;
}

static char *msg_read_str(struct msg_reader *r)
{
    uint32_t len = msg_read_be32(r);
    char *s;

    if (r->bad || len == MSG_NONE)
        return NULL;
    if ((size_t)(r->end - r->p) < len) {
        r->bad = TRUE;
        return NULL;
    }
    s = g_strndup((const char *)r->p, len);
    r->p += len;
    return s;
}

/* A list's strings; MSG_NONE, which no list holds, is read as a bad record. */
static void msg_read_strv(struct msg_reader *r, GPtrArray *out)
{
    uint32_t n = msg_read_be32(r);

    for (uint32_t i = 0; i < n && !r->bad; i++) {
        char *s = msg_read_str(r);
        if (s)
            g_ptr_array_add(out, s);
        else
            r->bad = TRUE;
    }
}

static gboolean msg_decode_binary(const MDB_val *val, struct spool_msg *m, GError **err)
{
    const unsigned char *rec = val->mv_data;
    struct msg_reader r = { rec + MSG_FIXED, rec + val->mv_size, val->mv_size < MSG_FIXED };
    char **f[MSG_NSTR];

    if (!r.bad) {
        m->state = rec[1] < MSG_STATE_COUNT ? rec[1] : MSG_HOLD;
        m->held_from = rec[2] < MSG_STATE_COUNT ? rec[2] : MSG_INCOMING;
        m->arrival = (int64_t)spool_get_be64(rec + 3);
        m->since = (int64_t)spool_get_be64(rec + 11);
        m->size = spool_get_be64(rec + 19);
        m->lease = spool_get_be64(rec + 27);
        m->lease_expiry = (int64_t)spool_get_be64(rec + 35);
        m->ref = spool_get_be64(rec + 43);
        msg_string_fields(m, f);
        for (int i = 0; i < MSG_NSTR; i++)
            *f[i] = msg_read_str(&r);
        msg_read_strv(&r, m->recipients);
        msg_read_strv(&r, m->history);
    }
    if (r.bad || r.p != r.end) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_CORRUPT, "message record is malformed");
        return FALSE;
    }
    return TRUE;
}

static void strv_into(GVariantDict *d, const char *key, GPtrArray *out)
{
    g_autofree const char **v = NULL;
    g_autoptr(GVariant) val = g_variant_dict_lookup_value(d, key, G_VARIANT_TYPE_STRING_ARRAY);

    if (!val)
        return;
    v = g_variant_get_strv(val, NULL);
    for (int i = 0; v[i]; i++)
        g_ptr_array_add(out, g_strdup(v[i]));
}

/* A record of schema 2 or before. */
static gboolean msg_decode_variant(const MDB_val *val, struct spool_msg *m, GError **err)
{
    g_autoptr(GBytes) bytes = g_bytes_new(val->mv_data, val->mv_size);
    g_autoptr(GVariant) v = g_variant_ref_sink(
        g_variant_new_from_bytes(G_VARIANT_TYPE_VARDICT, bytes, FALSE));
    GVariantDict d;
    guint8 state = 0, held = 0;

    if (!g_variant_is_normal_form(v)) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_CORRUPT, "message record is malformed");
        return FALSE;
    }
    g_variant_dict_init(&d, v);
    g_variant_dict_lookup(&d, "state", "y", &state);
    g_variant_dict_lookup(&d, "held_from", "y", &held);
    m->state = state < MSG_STATE_COUNT ? state : MSG_HOLD;
    m->held_from = held < MSG_STATE_COUNT ? held : MSG_INCOMING;
    g_variant_dict_lookup(&d, "arrival", "x", &m->arrival);
    g_variant_dict_lookup(&d, "since", "x", &m->since);
    g_variant_dict_lookup(&d, "size", "t", &m->size);
    g_variant_dict_lookup(&d, "sender", "s", &m->sender);
    g_variant_dict_lookup(&d, "client", "s", &m->client);
    g_variant_dict_lookup(&d, "helo", "s", &m->helo);
    g_variant_dict_lookup(&d, "proto", "s", &m->proto);
    g_variant_dict_lookup(&d, "received", "s", &m->received);
    g_variant_dict_lookup(&d, "reason", "s", &m->reason);
    g_variant_dict_lookup(&d, "lease", "t", &m->lease);
    g_variant_dict_lookup(&d, "lease_expiry", "x", &m->lease_expiry);
    g_variant_dict_lookup(&d, "ref", "t", &m->ref);
    g_variant_dict_lookup(&d, "kind", "s", &m->kind);
    g_variant_dict_lookup(&d, "owner", "s", &m->owner);
    g_variant_dict_lookup(&d, "message_id", "s", &m->message_id);
    strv_into(&d, "recipients", m->recipients);
    strv_into(&d, "history", m->history);
    g_variant_dict_clear(&d);
    return TRUE;
}

static gboolean spool_msg_decode(const MDB_val *val, struct spool_msg *m, GError **err)
{
    if (val->mv_size && ((const unsigned char *)val->mv_data)[0] == MSG_RECORD_V1)
        return msg_decode_binary(val, m, err);
    return msg_decode_variant(val, m, err);
}

static void id_key(unsigned char key[8], queue_id id)
{
    spool_be64(key, id);
}

static void state_key(unsigned char key[9], enum msg_state s, queue_id id)
{
    key[0] = (unsigned char)s;
    spool_be64(key + 1, id);
}

/* The stored record of message id; SPOOL_ERR_NOT_FOUND names it when there is none. */
static gboolean msg_fetch(struct spool_txn *t, queue_id id, char idtext[QUEUE_ID_LEN + 1],
                          MDB_val *val, GError **err)
{
    unsigned char k[8];
    MDB_val key = { 8, k };
    int rc;

    id_key(k, id);
    spool_id_format(id, idtext);
    rc = mdb_get(spool_mdb_txn(t), spool_dbi(t->sp, DB_MESSAGES), &key, val);
    if (rc == MDB_NOTFOUND) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND, "%s: no such message", idtext);
        return FALSE;
    }
    return rc ? spool_mdb_fail(rc, idtext, err) : TRUE;
}

gboolean spool_msg_get(struct spool_txn *t, queue_id id, struct spool_msg *m, GError **err)
{
    MDB_val val;
    char idtext[QUEUE_ID_LEN + 1];

    if (!msg_fetch(t, id, idtext, &val, err))
        return FALSE;
    spool_msg_init(m);
    m->id = id;
    if (!spool_msg_decode(&val, m, err)) {
        g_prefix_error(err, "%s: ", idtext);
        spool_msg_clear(m);
        return FALSE;
    }
    return TRUE;
}

/*
 * Only the kind and size: the dispatcher needs them for every job it
 * leases, and a whole decode (every field, the recipient list, the
 * history, a check of the record's normal form) cost more than the rest
 * of the lease.  Looked up in the record as stored, untrusted, so a
 * malformed one gives no kind and size 0.
 */
gboolean spool_msg_get_kind(struct spool_txn *t, queue_id id, char **kind, uint64_t *size,
                            GError **err)
{
    MDB_val val;
    char idtext[QUEUE_ID_LEN + 1];
    GVariant *v;
    uint64_t ignored;

    size = size ? size : &ignored;
    *kind = NULL;
    *size = 0;
    if (!msg_fetch(t, id, idtext, &val, err))
        return FALSE;
    if (val.mv_size && ((const unsigned char *)val.mv_data)[0] == MSG_RECORD_V1) {
        struct msg_reader r = { (const unsigned char *)val.mv_data + MSG_FIXED,
                                (const unsigned char *)val.mv_data + val.mv_size,
                                val.mv_size < MSG_FIXED };
        *kind = msg_read_str(&r);
        if (!r.bad)
            *size = spool_get_be64((const unsigned char *)val.mv_data + 19);
        return TRUE;
    }
    v = g_variant_ref_sink(g_variant_new_from_data(G_VARIANT_TYPE_VARDICT, val.mv_data,
                                                   val.mv_size, FALSE, NULL, NULL));
    g_variant_lookup(v, "kind", "s", kind);
    g_variant_lookup(v, "size", "t", size);
    g_variant_unref(v);
    return TRUE;
}

const void *spool_msg_record(struct spool_txn *t, queue_id id, size_t *len)
{
    unsigned char k[8];
    MDB_val key = { 8, k }, val;

    id_key(k, id);
    if (mdb_get(spool_mdb_txn(t), spool_dbi(t->sp, DB_MESSAGES), &key, &val))
        return NULL;
    *len = val.mv_size;
    return val.mv_data;
}

/* Stores m's record; the LMDB return code, so callers can tell its cases apart. */
static int spool_msg_put(struct spool_txn *t, const struct spool_msg *m, unsigned flags)
{
    unsigned char k[8];
    MDB_val key = { 8, k }, val = { msg_record_size(m), NULL };
    int rc;

    id_key(k, m->id);
    rc = mdb_put(spool_mdb_txn(t), spool_dbi(t->sp, DB_MESSAGES), &key, &val, flags | MDB_RESERVE);
    if (rc == 0)
        spool_msg_encode(m, val.mv_data);
    return rc;
}

static gboolean spool_state_index(struct spool_txn *t, enum msg_state s, queue_id id,
                                  gboolean add, GError **err)
{
    unsigned char k[9];
    MDB_val key = { 9, k }, val = { 0, (void *)"" };
    int rc;

    state_key(k, s, id);
    rc = add ? mdb_put(spool_mdb_txn(t), spool_dbi(t->sp, DB_BY_STATE), &key, &val, MDB_NOOVERWRITE)
             : mdb_del(spool_mdb_txn(t), spool_dbi(t->sp, DB_BY_STATE), &key, NULL);
    if (rc == MDB_NOTFOUND || rc == MDB_KEYEXIST)
        return TRUE;                /* already so: the counter stays right */
    if (rc)
        return spool_mdb_fail(rc, "update state index", err);
    g_autofree char *counter = g_strdup_printf("msg.%s", msg_state_name(s));
    return spool_counter_add(t, counter, add ? 1 : -1, err);
}

static void spool_msg_note(struct spool_msg *m, const char *note)
{
    g_ptr_array_add(m->history, g_strdup_printf("%" G_GINT64_FORMAT " %s%s%s", m->since,
                                                msg_state_name(m->state), note ? " " : "",
                                                note ? note : ""));
}

gboolean spool_msg_insert(struct spool_txn *t, struct spool_msg *m, GError **err)
{
    int rc;

    if (!m->since)
        m->since = m->arrival;
    if (!m->history->len)
        spool_msg_note(m, NULL);

    /*
     * New ids are the largest, so the record normally appends. Only an
     * out-of-order id (MDB_KEYEXIST) may retry as a plain insert: after
     * any other failure, MDB_MAP_FULL above all, LMDB has marked the
     * transaction bad and a retry would hide the real cause (the map
     * would not grow and the client would hear 452 for nothing).
     */
    rc = spool_msg_put(t, m, MDB_APPEND);
    if (rc == MDB_KEYEXIST)
        rc = spool_msg_put(t, m, MDB_NOOVERWRITE);
    if (rc)
        return spool_mdb_fail(rc, "store message record", err);
    /* Mail that came in, for /metrics (never decremented: a Prometheus counter). */
    if (m->state == MSG_INCOMING && (!m->kind || g_str_equal(m->kind, MSG_KIND_MAIL)) &&
        !spool_counter_add(t, SPOOL_COUNTER_RECEIVED, 1, err))
        return FALSE;
    return spool_state_index(t, m->state, m->id, TRUE, err);
}

gboolean spool_msg_update(struct spool_txn *t, const struct spool_msg *m, GError **err)
{
    int rc = spool_msg_put(t, m, 0);

    return rc ? spool_mdb_fail(rc, "store message record", err) : TRUE;
}

const char *const spool_reject_reasons[] = {
    "TOKEN_NOT_FOUND", "TOKEN_INVALID", "TOKEN_USED", "TOKEN_EXPIRED", "SENDER_MISMATCH", NULL
};

/* The counter of a rejection: one per known reason, the rest together. */
const char *spool_counter_rejected(const char *reason)
{
    static const char *const names[] = {
        "total.rejected.TOKEN_NOT_FOUND", "total.rejected.TOKEN_INVALID",
        "total.rejected.TOKEN_USED", "total.rejected.TOKEN_EXPIRED",
        "total.rejected.SENDER_MISMATCH",
    };

    G_STATIC_ASSERT(G_N_ELEMENTS(names) == SPOOL_REJECT_REASONS);
    for (guint i = 0; i < G_N_ELEMENTS(names); i++)
        if (g_strcmp0(reason, spool_reject_reasons[i]) == 0)
            return names[i];
    return "total.rejected.other";
}

gboolean spool_msg_set_state(struct spool_txn *t, struct spool_msg *m, enum msg_state to,
                             const char *reason, GError **err)
{
    char idtext[QUEUE_ID_LEN + 1];
    enum msg_state from = m->state;

    /* Before anything is written: a caller that breaks the table is a bug. */
    spool_id_format(m->id, idtext);
    if (!msg_state_can_move(from, to))
        msg_panic("%s: illegal message state change from %s to %s", idtext,
                  msg_state_name(from), msg_state_name(to));
    if (!spool_state_index(t, from, m->id, FALSE, err) ||
        !spool_state_index(t, to, m->id, TRUE, err))
        return FALSE;
    if (to == MSG_HOLD && from != MSG_HOLD)
        m->held_from = from;
    m->state = to;
    m->since = unix_ms() / 1000;
    g_free(m->reason);
    m->reason = g_strdup(reason);
    spool_msg_note(m, reason);
    if (!spool_msg_update(t, m, err))
        return FALSE;
    if (to == MSG_REJECTED && !spool_counter_add(t, spool_counter_rejected(reason), 1, err))
        return FALSE;
    /* The transform's latency, for /metrics: mail (as counted received)
     * from its arrival to the verdict; notices and reports are not mail. */
    if (from == MSG_INCOMING && (to == MSG_READY || to == MSG_REJECTED) &&
        (!m->kind || g_str_equal(m->kind, MSG_KIND_MAIL)) &&
        !spool_hist_observe(t, SPOOL_HIST_TRANSFORM, unix_ms() - spool_id_ms(m->id), err))
        return FALSE;
    spool_txn_log(t, "%s: state=%s from=%s%s%s", idtext, msg_state_name(to),
                  msg_state_name(from), reason ? ", reason=" : "", reason ? reason : "");
    return TRUE;
}

/* Delete every key of db that starts with the 8-byte id. */
static gboolean spool_delete_prefix(struct spool_txn *t, enum spool_db db, queue_id id,
                                    GError **err)
{
    MDB_cursor *cur;
    unsigned char k[8];
    MDB_val key = { 8, k }, val;
    int rc;

    id_key(k, id);
    if ((rc = mdb_cursor_open(spool_mdb_txn(t), spool_dbi(t->sp, db), &cur)))
        return spool_mdb_fail(rc, "open cursor", err);
    rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
    while (rc == 0 && key.mv_size >= 8 && memcmp(key.mv_data, k, 8) == 0) {
        if ((rc = mdb_cursor_del(cur, 0)))
            break;
        rc = mdb_cursor_get(cur, &key, &val, MDB_GET_CURRENT);
        if (rc == EINVAL)   /* deleted the last key */
            rc = MDB_NOTFOUND;
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return spool_mdb_fail(rc, "delete records", err);
    return TRUE;
}

gboolean spool_body_delete(struct spool_txn *t, enum spool_db db, queue_id id, GError **err)
{
    return spool_delete_prefix(t, db, id, err);
}

gboolean spool_msg_delete(struct spool_txn *t, queue_id id, GError **err)
{
    struct spool_msg m;
    unsigned char k[8];
    MDB_val key = { 8, k };
    char idtext[QUEUE_ID_LEN + 1];
    int rc;

    if (!spool_msg_get(t, id, &m, err))
        return FALSE;
    id_key(k, id);
    rc = mdb_del(spool_mdb_txn(t), spool_dbi(t->sp, DB_MESSAGES), &key, NULL);
    gboolean ok = rc == 0 ? spool_state_index(t, m.state, id, FALSE, err)
                          : spool_mdb_fail(rc, "delete message", err);
    spool_msg_clear(&m);
    if (!ok || !spool_delete_prefix(t, DB_BODIES, id, err) ||
        !spool_delete_prefix(t, DB_OUTGOING, id, err) ||
        !spool_dlv_delete_all(t, id, err))
        return FALSE;
    spool_id_format(id, idtext);
    spool_txn_log(t, "%s: removed", idtext);
    return TRUE;
}

gboolean spool_msg_foreach(struct spool_txn *t, int state, queue_id from, spool_id_fn fn,
                           void *ctx, GError **err)
{
    MDB_cursor *cur;
    unsigned char k[9];
    MDB_val key, val;
    int rc;

    if ((rc = mdb_cursor_open(spool_mdb_txn(t),
                              spool_dbi(t->sp, state < 0 ? DB_MESSAGES : DB_BY_STATE), &cur)))
        return spool_mdb_fail(rc, "open cursor", err);
    if (state < 0) {
        spool_be64(k, from);
        key = (MDB_val){ 8, k };
    } else {
        state_key(k, (enum msg_state)state, from);
        key = (MDB_val){ 9, k };
    }
    rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
    while (rc == 0) {
        const unsigned char *p = key.mv_data;
        queue_id id;

        if (state < 0)
            id = spool_get_be64(p);
        else if (key.mv_size == 9 && p[0] == (unsigned char)state)
            id = spool_get_be64(p + 1);
        else
            break;
        if (!fn(id, ctx))
            break;
        rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return spool_mdb_fail(rc, "scan messages", err);
    return TRUE;
}

/*
 * Chunks of a new message go at the end of the database (ids only grow),
 * so MDB_APPEND fills pages completely; a rewrite of an older message's
 * outgoing copy falls back to an ordinary put.
 */
gboolean spool_body_put(struct spool_txn *t, enum spool_db db, queue_id id, const char *data,
                        size_t len, GError **err)
{
    unsigned char k[12];
    MDB_val key = { 12, k };
    unsigned flags = MDB_APPEND;
    uint32_t chunk = 0;
    int rc;

    spool_be64(k, id);
    do {
        size_t n = MIN(len, SPOOL_CHUNK);
        MDB_val val = { n, (void *)data };

        spool_be32(k + 8, chunk++);
        rc = mdb_put(spool_mdb_txn(t), spool_dbi(t->sp, db), &key, &val, flags);
        if (rc == MDB_KEYEXIST && flags == MDB_APPEND) {
            flags = 0;
            rc = mdb_put(spool_mdb_txn(t), spool_dbi(t->sp, db), &key, &val, flags);
        }
        if (rc)
            return spool_mdb_fail(rc, "store message body", err);
        data += n;
        len -= n;
    } while (len > 0);
    return TRUE;
}

/*
 * Two passes over the chunks: the first only adds up their sizes (the
 * values are pointers into the map), so the buffer is allocated once: a
 * 30 MiB body growing by doubling would hold 1.5 times its size at once.
 */
gboolean spool_body_get(struct spool_txn *t, enum spool_db db, queue_id id, GByteArray *out,
                        GError **err)
{
    MDB_cursor *cur;
    unsigned char k[12];
    MDB_val key = { 8, k }, val;
    gboolean found = FALSE;
    size_t total = 0, at = out->len;
    int rc;

    spool_be64(k, id);
    if ((rc = mdb_cursor_open(spool_mdb_txn(t), spool_dbi(t->sp, db), &cur)))
        return spool_mdb_fail(rc, "open cursor", err);
    for (int pass = 0; pass < 2; pass++) {
        key = (MDB_val){ 8, k };
        for (rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
             rc == 0 && key.mv_size == 12 && memcmp(key.mv_data, k, 8) == 0;
             rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) {
            if (pass == 0) {
                total += val.mv_size;
                found = TRUE;
            } else if (val.mv_size) {      /* an empty body has no buffer at all */
                memcpy(out->data + at, val.mv_data, val.mv_size);
                at += val.mv_size;
            }
        }
        if ((rc && rc != MDB_NOTFOUND) || !found)
            break;
        if (pass == 0)
            g_byte_array_set_size(out, (guint)(out->len + total));
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return spool_mdb_fail(rc, "read message body", err);
    if (!found) {
        char idtext[QUEUE_ID_LEN + 1];
        spool_id_format(id, idtext);
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND, "%s: no body stored", idtext);
        return FALSE;
    }
    return TRUE;
}
