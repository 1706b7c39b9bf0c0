/*
 * relay_state.c - the relay pause in `meta`, under "relay.pause": the
 * big-endian unix ms it lasts until, then the pauses in a row (12 bytes).
 */
#include "spool/relay_state.h"
#include "spool/spool_lmdb.h"

#include <string.h>

#define RELAY_STATE_KEY "relay.pause"
#define RELAY_STATE_LEN 12

gboolean relay_state_get(struct spool_txn *t, struct relay_state *out, GError **err)
{
    MDB_val key = { strlen(RELAY_STATE_KEY), (void *)RELAY_STATE_KEY }, val;
    int rc = mdb_get(spool_mdb_txn(t), spool_dbi(t->sp, DB_META), &key, &val);

    memset(out, 0, sizeof(*out));
    if (rc == MDB_NOTFOUND)
        return TRUE;
    if (rc)
        return spool_mdb_fail(rc, "read the relay state", err);
    if (val.mv_size != RELAY_STATE_LEN) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_IO, "relay state: %zu bytes, expected %d",
                    val.mv_size, RELAY_STATE_LEN);
        return FALSE;
    }
    out->paused_until = (int64_t)spool_get_be64(val.mv_data);
    out->pauses = spool_get_be32((const unsigned char *)val.mv_data + 8);
    return TRUE;
}

gboolean relay_state_put(struct spool_txn *t, const struct relay_state *st, GError **err)
{
    unsigned char v[RELAY_STATE_LEN];
    MDB_val key = { strlen(RELAY_STATE_KEY), (void *)RELAY_STATE_KEY }, val = { sizeof(v), v };
    int rc;

    spool_be64(v, (uint64_t)st->paused_until);
    spool_be32(v + 8, st->pauses);
    if ((rc = mdb_put(spool_mdb_txn(t), spool_dbi(t->sp, DB_META), &key, &val, 0)))
        return spool_mdb_fail(rc, "write the relay state", err);
    return TRUE;
}
