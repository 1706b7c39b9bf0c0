/*
 * spool_lmdb.h - what the modules of libspool share about LMDB: the
 * handles, the error mapping and the big-endian key packing.
 *
 * Private to spool/ (and the spool's own unit tests): every other program
 * sees the records and indexes only through spool.h, delivery.h and
 * spool_token.h, never a key layout or an LMDB type.
 */
#ifndef POSTERN_SPOOL_LMDB_H
#define POSTERN_SPOOL_LMDB_H

#include <lmdb.h>

#include "spool/spool.h"

/* The LMDB transaction behind t (struct spool_txn keeps it as void *). */
static inline MDB_txn *spool_mdb_txn(const struct spool_txn *t)
{
    return t->txn;
}

MDB_dbi spool_dbi(struct spool *sp, enum spool_db db);
/* Turn an LMDB return code into a GError naming what was being done. */
gboolean spool_mdb_fail(int rc, const char *what, GError **err);

/*
 * One named record of `meta` (the relay pause, the events poster's retry
 * state): *data and *len point into the map, valid until t ends; *len is
 * 0 and *data NULL when there is none.  what names it in errors.
 */
gboolean spool_meta_get(struct spool_txn *t, const char *name, const unsigned char **data,
                        size_t *len, const char *what, GError **err);
gboolean spool_meta_put(struct spool_txn *t, const char *name, const void *data, size_t len,
                        const char *what, GError **err);

/* Big-endian key packing shared by the modules of libspool. */
void spool_be64(unsigned char *p, uint64_t v);
uint64_t spool_get_be64(const unsigned char *p);
void spool_be32(unsigned char *p, uint32_t v);
uint32_t spool_get_be32(const unsigned char *p);

#endif
