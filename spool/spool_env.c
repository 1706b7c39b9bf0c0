/*
 * spool_env.c - the LMDB environment: open, transactions, map growth.
 */
#include "spool/spool_lmdb.h"
#include "spool/spool_events.h"
#include "spool/spool_hist.h"
#include "common/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>

/*
 * 2: delivery records in a fixed binary layout (spool/delivery.c), which
 * a version-1 binary would misread; version-1 records are still read.
 * 3: message records in a binary layout too (spool/spool_msg.c); the
 * GVariant records of versions 1 and 2 are still read.
 */
#define SPOOL_SCHEMA_VERSION 3

struct spool {
    MDB_env *env;
    MDB_dbi dbi[DB_COUNT];
    char *dir;
    uint64_t map_size;
    uint64_t max_size;
    uint64_t reserve;               /* kept for spool_use_reserve() writers: deletes */
    gboolean use_reserve;
    gboolean events;                /* [events] url set: write the outbox */
};

/*
 * The reserve: what a write that frees space needs when everything else
 * is full.  LMDB copies every page it changes (copy-on-write), and pages
 * freed by a transaction are reusable only by the next one, so even a
 * delete needs free pages: in the map, and on the file system when the
 * file must grow.  Ingest and the transforms stop short of both by this
 * much (452 4.3.1); spoolctl and the dispatcher may use it.  1/32 of
 * max_size, at least 256 KiB, at most 32 MiB: a page of 256 deletions
 * needs far less.
 */
#define SPOOL_RESERVE_MIN ((uint64_t)256 << 10)
#define SPOOL_RESERVE_MAX ((uint64_t)32 << 20)

static uint64_t spool_reserve_for(uint64_t max_size)
{
    return MIN(CLAMP(max_size / 32, SPOOL_RESERVE_MIN, SPOOL_RESERVE_MAX), max_size / 2);
}

/* The largest map this process may grow to. */
static uint64_t spool_cap(const struct spool *sp)
{
    return sp->use_reserve ? sp->max_size : sp->max_size - sp->reserve;
}

gboolean spool_events_enabled(struct spool *sp)
{
    return sp->events;
}

void spool_use_reserve(struct spool *sp)
{
    sp->use_reserve = TRUE;
}

/* Bytes an unprivileged writer may still add on the spool's file system. */
static uint64_t spool_fs_free(const struct spool *sp)
{
    struct statvfs vfs;

    if (statvfs(sp->dir, &vfs) < 0)
        return G_MAXUINT64;         /* unknown: let the write tell */
    return (uint64_t)vfs.f_bavail * vfs.f_frsize;
}

/*
 * The one warning line of a full spool: what is full, how full, and what
 * to do (docs/operations.md §8).  The caller logs it with what it was
 * doing; ingest answers 452 4.3.1.
 */
static gboolean spool_full(const struct spool *sp, const char *what, GError **err)
{
    uint64_t fs_free = spool_fs_free(sp);

    g_set_error(err, SPOOL_ERROR, SPOOL_ERR_FULL,
                "%s: spool full: %s (map %" G_GUINT64_FORMAT " of [spool] max_size %"
                G_GUINT64_FORMAT " bytes, %" G_GUINT64_FORMAT " kept for deletes; %"
                G_GUINT64_FORMAT " bytes free on the file system): free space with "
                "spoolctl purge --older-than 7d or spoolctl delete, or raise [spool] max_size "
                "or the file system, see docs/operations.md section 8",
                sp->dir, what, sp->map_size, sp->max_size, sp->reserve,
                fs_free == G_MAXUINT64 ? 0 : fs_free);
    return FALSE;
}

static const char *const spool_db_names[DB_COUNT] = {
    [DB_META] = "meta", [DB_MESSAGES] = "messages", [DB_BODIES] = "bodies",
    [DB_BY_STATE] = "by_state", [DB_OUTGOING] = "outgoing",
    [DB_DELIVERIES] = "deliveries", [DB_DUE] = "due", [DB_LEASES] = "leases",
    [DB_TOKENS] = "tokens", [DB_TOKEN_FROM] = "token_from",
    [DB_NOTICE_RATE] = "notice_rate", [DB_EVENTS] = "events",
    [DB_SUPPRESS] = "suppress",
};

G_DEFINE_QUARK(postern-spool-error, spool_error)

gboolean spool_mdb_fail(int rc, const char *what, GError **err)
{
    int code = SPOOL_ERR_IO;

    if (rc == MDB_MAP_FULL)
        code = SPOOL_ERR_MAP_FULL;
    else if (rc == ENOSPC || rc == EDQUOT)
        code = SPOOL_ERR_FULL;
    else if (rc == MDB_NOTFOUND)
        code = SPOOL_ERR_NOT_FOUND;
    else if (rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND || rc == MDB_INVALID)
        code = SPOOL_ERR_CORRUPT;
    g_set_error(err, SPOOL_ERROR, code, "%s: %s", what, mdb_strerror(rc));
    return FALSE;
}

MDB_dbi spool_dbi(struct spool *sp, enum spool_db db)
{
    return sp->dbi[db];
}

const char *spool_dir(struct spool *sp)
{
    return sp->dir;
}

/*
 * The run/ directory holds the ipc:// sockets: 0700 so that only the
 * owner can ring the dispatcher or pose as a worker.
 */
static gboolean spool_make_dirs(const char *dir, GError **err)
{
    g_autofree char *run = g_build_filename(dir, "run", NULL);

    if (g_mkdir_with_parents(dir, 0750) < 0 || g_mkdir_with_parents(run, 0700) < 0) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_IO, "%s: cannot create: %s", dir,
                    g_strerror(errno));
        return FALSE;
    }
    if (chmod(run, 0700) < 0) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_IO, "%s: chmod: %s", run, g_strerror(errno));
        return FALSE;
    }
    return TRUE;
}

/*
 * The map must be at least as large as the file another process may have
 * grown it to: start from the larger of the file and the configured size.
 */
static uint64_t spool_initial_map(const char *dir, uint64_t configured)
{
    g_autofree char *data = g_build_filename(dir, "data.mdb", NULL);
    struct stat st;

    if (stat(data, &st) == 0 && (uint64_t)st.st_size > configured)
        return (uint64_t)st.st_size;
    return configured;
}

/*
 * Begin a transaction; when another process grew the map, adopt the new
 * size (mdb_env_set_mapsize with 0) and try once more.  A process kept out
 * of the reserve adopts no more than its cap: LMDB raises that to what is
 * committed, so it can read everything but grow no further.
 */
static int spool_txn_begin(struct spool *sp, unsigned flags, MDB_txn **txn)
{
    int rc = mdb_txn_begin(sp->env, NULL, flags, txn);

    if (rc == MDB_MAP_RESIZED) {
        MDB_envinfo info;

        if ((rc = mdb_env_set_mapsize(sp->env, 0)))
            return rc;
        mdb_env_info(sp->env, &info);
        if (info.me_mapsize > spool_cap(sp)) {
            if ((rc = mdb_env_set_mapsize(sp->env, spool_cap(sp))))
                return rc;
            mdb_env_info(sp->env, &info);
        }
        sp->map_size = info.me_mapsize;
        rc = mdb_txn_begin(sp->env, NULL, flags, txn);
    }
    return rc;
}

static gboolean spool_open_dbs(struct spool *sp, GError **err)
{
    MDB_txn *txn;
    MDB_val key = { 14, (void *)"schema_version" }, val;
    uint32_t version = SPOOL_SCHEMA_VERSION;
    int rc;

    if ((rc = spool_txn_begin(sp, 0, &txn)))
        return spool_mdb_fail(rc, "open spool", err);
    for (int i = 0; i < DB_COUNT; i++)
        if ((rc = mdb_dbi_open(txn, spool_db_names[i], MDB_CREATE, &sp->dbi[i]))) {
            mdb_txn_abort(txn);
            return spool_mdb_fail(rc, spool_db_names[i], err);
        }

    /*
     * A spool written by a future schema must not be misread. An older
     * one is read as it is and marked with our version, because we are
     * about to write records that an older binary must then refuse.
     */
    rc = mdb_get(txn, sp->dbi[DB_META], &key, &val);
    if (rc == 0) {
        uint32_t stored = 0;

        if (val.mv_size == 4)
            memcpy(&stored, val.mv_data, 4);
        if (stored == 0 || stored > version) {
            mdb_txn_abort(txn);
            g_set_error(err, SPOOL_ERROR, SPOOL_ERR_CORRUPT,
                        "%s: spool schema version %u, this program reads up to %u", sp->dir,
                        stored, version);
            return FALSE;
        }
        if (stored < version) {
            msg_info("%s: spool schema version %u upgraded to %u", sp->dir, stored, version);
            rc = MDB_NOTFOUND;
        }
    }
    if (rc == MDB_NOTFOUND) {
        val.mv_size = 4;
        val.mv_data = &version;
        rc = mdb_put(txn, sp->dbi[DB_META], &key, &val, 0);
    }
    if (rc || (rc = mdb_txn_commit(txn))) {
        if (rc)
            mdb_txn_abort(txn);
        return spool_mdb_fail(rc, "open spool", err);
    }
    return TRUE;
}

gboolean spool_open(struct spool **out, const struct postern_config *cfg, GError **err)
{
    struct spool *sp = g_new0(struct spool, 1);
    int rc, dead = 0;

    sp->dir = g_strdup(cfg->spool.dir);
    sp->max_size = cfg->spool.max_size;
    sp->reserve = spool_reserve_for(sp->max_size);
    sp->events = cfg->events.url && *cfg->events.url;
    if (!spool_make_dirs(sp->dir, err))
        goto fail;
    /* Never into the reserve, unless what is committed already is (LMDB raises it). */
    sp->map_size = MIN(spool_initial_map(sp->dir, cfg->spool.map_size), spool_cap(sp));

    /*
     * No MDB_NOSYNC and no MDB_WRITEMAP: a commit is on disk when it
     * returns, which is what makes the 250 reply true.  MDB_NOTLS lets a
     * thread pool share the environment; MDB_NORDAHEAD keeps the page
     * cache for the hot end of the file.
     */
    if ((rc = mdb_env_create(&sp->env)) ||
        (rc = mdb_env_set_maxdbs(sp->env, DB_COUNT)) ||
        (rc = mdb_env_set_maxreaders(sp->env, 1024)) ||
        (rc = mdb_env_set_mapsize(sp->env, sp->map_size)) ||
        (rc = mdb_env_open(sp->env, sp->dir, MDB_NOTLS | MDB_NORDAHEAD, 0640))) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_IO, "%s: cannot open spool: %s", sp->dir,
                    mdb_strerror(rc));
        goto fail;
    }
    /* A reader slot left by a killed process pins old pages: clear them now. */
    mdb_reader_check(sp->env, &dead);
    if (dead)
        msg_warn("%s: cleared %d stale reader slot(s)", sp->dir, dead);
    if (!spool_open_dbs(sp, err))
        goto fail;
    *out = sp;
    return TRUE;

fail:
    spool_close(sp);
    return FALSE;
}

void spool_close(struct spool *sp)
{
    if (!sp)
        return;
    if (sp->env)
        mdb_env_close(sp->env);
    g_free(sp->dir);
    g_free(sp);
}

int spool_reader_check(struct spool *sp)
{
    int dead = 0;

    mdb_reader_check(sp->env, &dead);
    if (dead)
        msg_warn("%s: cleared %d stale reader slot(s)", sp->dir, dead);
    return dead;
}

void spool_reader_check_every(struct spool *sp, int64_t *next, int64_t now)
{
    if (*next == 0)
        *next = now + SPOOL_READER_CHECK_MS;
    if (now < *next)
        return;
    *next = now + SPOOL_READER_CHECK_MS;
    spool_reader_check(sp);
}

/*
 * LMDB does not give out the map's address (me_mapaddr is only set with
 * MDB_FIXEDMAP), so find the mapping of our data.mdb in /proc/self/maps.
 */
void spool_release_pages(struct spool *sp)
{
    g_autofree char *maps = NULL;
    g_autofree char *dir = realpath(sp->dir, NULL);
    g_autofree char *data = dir ? g_build_filename(dir, "data.mdb", NULL) : NULL;
    char *line, *next;

    if (!data || !g_file_get_contents("/proc/self/maps", &maps, NULL, NULL))
        return;
    for (line = maps; line && *line; line = next) {
        unsigned long lo, hi;

        if ((next = strchr(line, '\n')))
            *next++ = '\0';
        if (g_str_has_suffix(line, data) && sscanf(line, "%lx-%lx", &lo, &hi) == 2 && hi > lo)
            madvise((void *)lo, hi - lo, MADV_DONTNEED);
    }
}

uint64_t spool_file_size(struct spool *sp)
{
    g_autofree char *data = g_build_filename(sp->dir, "data.mdb", NULL);
    struct stat st;

    return stat(data, &st) == 0 ? (uint64_t)st.st_size : 0;
}

gboolean spool_read_begin(struct spool *sp, struct spool_txn *t, GError **err)
{
    MDB_txn *txn;
    int rc;

    memset(t, 0, sizeof(*t));
    t->sp = sp;
    if ((rc = spool_txn_begin(sp, MDB_RDONLY, &txn)))
        return spool_mdb_fail(rc, "read spool", err);
    t->txn = txn;
    return TRUE;
}

void spool_read_end(struct spool_txn *t)
{
    if (t->txn)
        mdb_txn_abort(t->txn);
    t->txn = NULL;
}

void spool_txn_log(struct spool_txn *t, const char *fmt, ...)
{
    va_list ap;

    if (!t->committed_log)
        t->committed_log = g_ptr_array_new_with_free_func(g_free);
    va_start(ap, fmt);
    g_ptr_array_add(t->committed_log, g_strdup_vprintf(fmt, ap));
    va_end(ap);
}

/*
 * Grow the map for a transaction that did not fit.  Called with no
 * transaction open in this process, as mdb_env_set_mapsize requires.
 */
static gboolean spool_grow(struct spool *sp, GError **err)
{
    uint64_t next = MIN(sp->map_size * 2, spool_cap(sp));
    int rc;

    if (next <= sp->map_size)
        return spool_full(sp, sp->use_reserve ? "map at [spool] max_size"
                                              : "map at [spool] max_size less the reserve", err);
    if ((rc = mdb_env_set_mapsize(sp->env, next)))
        return spool_mdb_fail(rc, "grow spool map", err);
    msg_info("%s: spool map grown from %" G_GUINT64_FORMAT " to %" G_GUINT64_FORMAT " bytes",
             sp->dir, sp->map_size, next);
    sp->map_size = next;
    return TRUE;
}

static gboolean spool_counters_flush(struct spool_txn *t, GError **err);

/*
 * A write that failed on the file: ENOSPC, EDQUOT, or EIO from a short
 * write (what LMDB makes of a disk that filled during the write).  Say
 * "full" when the file system is, not "Input/output error".
 */
static gboolean spool_write_failed(struct spool *sp, int rc, GError **err)
{
    if (rc == ENOSPC || rc == EDQUOT || rc == EFBIG ||
        (rc == EIO && spool_fs_free(sp) < sp->reserve))
        return spool_full(sp, "file system full", err);
    return spool_mdb_fail(rc, "commit spool write", err);
}

gboolean spool_write(struct spool *sp, spool_write_fn fn, void *ctx, GError **err)
{
    /* Leave the last of the file system to the writers that free space. */
    if (!sp->use_reserve && spool_fs_free(sp) < sp->reserve)
        return spool_full(sp, "file system nearly full", err);
    for (;;) {
        struct spool_txn t = { .sp = sp };
        GError *local = NULL;
        MDB_txn *txn;
        int rc;

        if ((rc = spool_txn_begin(sp, 0, &txn)))
            return spool_mdb_fail(rc, "begin spool write", err);
        t.txn = txn;
        if (fn(&t, ctx, &local) && spool_counters_flush(&t, &local) &&
            spool_hist_flush(&t, &local))
            rc = mdb_txn_commit(t.txn);
        else
            mdb_txn_abort(t.txn);
        t.txn = NULL;
        g_clear_pointer(&t.counter_deltas, g_hash_table_unref);
        g_clear_pointer(&t.hist_deltas, g_free);

        if (!local && rc == 0) {
            log_batch_begin();
            for (guint i = 0; t.committed_log && i < t.committed_log->len; i++)
                msg_info("%s", (char *)t.committed_log->pdata[i]);
            log_batch_end();
            g_clear_pointer(&t.committed_log, g_ptr_array_unref);
            return TRUE;
        }
        g_clear_pointer(&t.committed_log, g_ptr_array_unref);

        /* MDB_MAP_FULL from a put, or from the commit itself: grow, redo. */
        if (g_error_matches(local, SPOOL_ERROR, SPOOL_ERR_MAP_FULL) || rc == MDB_MAP_FULL) {
            g_clear_error(&local);
            if (!spool_grow(sp, err))
                return FALSE;
            continue;
        }
        if (local) {
            g_propagate_error(err, local);
            return FALSE;
        }
        return spool_write_failed(sp, rc, err);
    }
}

/*
 * Ids are allocated inside the write transaction, so they are unique and
 * increasing across every process without another lock: the time in ms in
 * the high bits makes them sortable by arrival, the low 16 bits count
 * within one millisecond (and absorb a clock that steps back).
 */
queue_id spool_id_next(struct spool_txn *t, GError **err)
{
    MDB_val key = { 7, (void *)"last_id" }, val;
    struct timespec now;
    uint64_t last = 0, id;
    int rc;

    clock_gettime(CLOCK_REALTIME, &now);
    id = ((uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000) << 16;
    rc = mdb_get(t->txn, spool_dbi(t->sp, DB_META), &key, &val);
    if (rc == 0 && val.mv_size == 8)
        last = spool_get_be64(val.mv_data);
    if (id <= last)
        id = last + 1;

    unsigned char buf[8];
    spool_be64(buf, id);
    val.mv_size = 8;
    val.mv_data = buf;
    if ((rc = mdb_put(t->txn, spool_dbi(t->sp, DB_META), &key, &val, 0))) {
        spool_mdb_fail(rc, "allocate queue id", err);
        return 0;
    }
    return id;
}

gboolean spool_meta_get(struct spool_txn *t, const char *name, const unsigned char **data,
                        size_t *len, const char *what, GError **err)
{
    MDB_val key = { strlen(name), (void *)name }, val;
    int rc = mdb_get(t->txn, spool_dbi(t->sp, DB_META), &key, &val);

    *data = NULL;
    *len = 0;
    if (rc == MDB_NOTFOUND)
        return TRUE;
    if (rc) {
        g_autofree char *doing = g_strconcat("read ", what, NULL);
        return spool_mdb_fail(rc, doing, err);
    }
    *data = val.mv_data;
    *len = val.mv_size;
    return TRUE;
}

gboolean spool_meta_put(struct spool_txn *t, const char *name, const void *data, size_t len,
                        const char *what, GError **err)
{
    MDB_val key = { strlen(name), (void *)name }, val = { len, (void *)data };
    int rc = mdb_put(t->txn, spool_dbi(t->sp, DB_META), &key, &val, 0);

    if (rc) {
        g_autofree char *doing = g_strconcat("write ", what, NULL);
        return spool_mdb_fail(rc, doing, err);
    }
    return TRUE;
}

static void counter_key(MDB_val *key, char *buf, size_t len, const char *name)
{
    key->mv_size = (size_t)g_snprintf(buf, len, "n.%s", name);
    key->mv_data = buf;
}

gboolean spool_counter_add(struct spool_txn *t, const char *name, int64_t delta, GError **err)
{
    int64_t *pending;

    if (!t->counter_deltas)
        t->counter_deltas = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    if (!(pending = g_hash_table_lookup(t->counter_deltas, name))) {
        pending = g_new0(int64_t, 1);
        g_hash_table_insert(t->counter_deltas, g_strdup(name), pending);
    }
    *pending += delta;
    return TRUE;
}

/* The stored value, without what this transaction has not written yet. */
static uint64_t spool_counter_stored(struct spool_txn *t, const char *name)
{
    char buf[64];
    MDB_val key, val;

    counter_key(&key, buf, sizeof(buf), name);
    if (mdb_get(t->txn, spool_dbi(t->sp, DB_META), &key, &val) || val.mv_size != 8)
        return 0;
    return spool_get_be64(val.mv_data);
}

/* Write the counters this transaction changed: once each, just before commit. */
static gboolean spool_counters_flush(struct spool_txn *t, GError **err)
{
    GHashTableIter it;
    const char *name;
    int64_t *delta;

    if (!t->counter_deltas)
        return TRUE;
    g_hash_table_iter_init(&it, t->counter_deltas);
    while (g_hash_table_iter_next(&it, (gpointer *)&name, (gpointer *)&delta)) {
        char buf[64];
        unsigned char v[8];
        MDB_val key, val = { 8, v };
        int64_t n = (int64_t)spool_counter_stored(t, name) + *delta;
        int rc;

        if (!*delta)
            continue;
        counter_key(&key, buf, sizeof(buf), name);
        spool_be64(v, (uint64_t)MAX(n, 0));
        if ((rc = mdb_put(t->txn, spool_dbi(t->sp, DB_META), &key, &val, 0)))
            return spool_mdb_fail(rc, "update counter", err);
    }
    return TRUE;
}

uint64_t spool_counter_get(struct spool_txn *t, const char *name)
{
    int64_t *pending = t->counter_deltas ? g_hash_table_lookup(t->counter_deltas, name) : NULL;
    int64_t n = (int64_t)spool_counter_stored(t, name) + (pending ? *pending : 0);

    return (uint64_t)MAX(n, 0);
}

void spool_id_format(queue_id id, char out[QUEUE_ID_LEN + 1])
{
    g_snprintf(out, QUEUE_ID_LEN + 1, "%016" G_GINT64_MODIFIER "X", id);
}

gboolean spool_id_parse(const char *text, queue_id *out)
{
    char *end;

    if (!text || strlen(text) != QUEUE_ID_LEN || !g_ascii_isxdigit(text[0]))
        return FALSE;
    *out = g_ascii_strtoull(text, &end, 16);
    return *end == '\0';
}

void spool_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

uint64_t spool_get_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

void spool_be32(unsigned char *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

uint32_t spool_get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
