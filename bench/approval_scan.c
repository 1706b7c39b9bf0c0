/*
 * approval_scan - the cost of the dispatcher's approval expiry scan
 * (dispatch/dispatch_approval.c) over N held messages, none of them due.
 *
 * Stores N messages, each held as the transform holds a message of a list
 * with approval (one ready delivery, reason "awaiting approval"), or with
 * --operator as `spoolctl hold` holds one, in a fresh spool at DIR; makes
 * the default list a list with approval; then runs the scan 9 times and
 * prints the median, fastest and slowest scan in ms.
 *
 * Waiting messages younger than the shortest approval_expiry are never
 * read (the default case).  --operator with --old runs the worst case:
 * approval_expiry 1 s and 2 s of waiting first, so every held message
 * arrived long enough ago to be read, and none is due (not awaiting).
 *
 * usage: approval_scan DIR N [--operator] [--old]
 */
#include "common/log.h"
#include "dispatch/dispatch.h"
#include "spool/spool_steer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCANS 9
#define BATCH 5000

struct fill {
    unsigned long total, done;
    gboolean operator_hold;
};

static gboolean fill_step(struct spool_txn *t, void *ctx, GError **err)
{
    struct fill *f = ctx;

    for (unsigned long n = 0; n < BATCH && f->done < f->total; n++, f->done++) {
        struct spool_msg m;
        struct spool_dlv d;
        gboolean ok;

        spool_msg_init(&m);
        m.state = MSG_READY;
        m.arrival = unix_ms() / 1000;
        m.sender = g_strdup("a@example.org");
        m.kind = g_strdup(MSG_KIND_MAIL);
        g_ptr_array_add(m.recipients, g_strdup("restricted@localhost"));
        spool_dlv_init(&d);
        d.state = DLV_READY;
        d.rcpt = (char *)"rcpt@sink.test";
        d.created = d.next_try = m.arrival;
        ok = (d.msg = m.id = spool_id_next(t, err)) && spool_msg_insert(t, &m, err) &&
             spool_dlv_put(t, &d, err) &&
             (f->operator_hold ? spool_msg_hold(t, &m, "held by operator", err)
                               : spool_msg_hold_for_approval(t, &m, NULL, err));
        spool_msg_clear(&m);
        if (!ok)
            return FALSE;
    }
    return TRUE;
}

static int cmp_double(gconstpointer a, gconstpointer b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    struct postern_config cfg;
    struct dispatch d = { .cfg = &cfg };
    struct postern_list *list;
    struct fill f = { 0 };
    gboolean old = FALSE;
    double ms[SCANS];
    GError *err = NULL;

    if (argc < 3) {
        fprintf(stderr, "usage: approval_scan DIR N [--operator] [--old]\n");
        return 2;
    }
    f.total = strtoul(argv[2], NULL, 10);
    for (int i = 3; i < argc; i++) {
        f.operator_hold |= g_str_equal(argv[i], "--operator");
        old |= g_str_equal(argv[i], "--old");
    }
    log_init("approval_scan", TRUE);
    if (!config_load(&cfg, NULL, &err))
        return 2;
    g_free(cfg.spool.dir);
    cfg.spool.dir = g_strdup(argv[1]);
    cfg.spool.map_size = (uint64_t)1 << 30;
    list = cfg.lists->pdata[0];
    list->approval = TRUE;
    if (old)
        list->approval_expiry = 1;
    if (!spool_open(&d.spool, &cfg, &err)) {
        fprintf(stderr, "approval_scan: %s\n", err->message);
        return 3;
    }
    while (f.done < f.total)
        if (!spool_write(d.spool, fill_step, &f, &err)) {
            fprintf(stderr, "approval_scan: %s\n", err->message);
            return 3;
        }
    if (old)
        g_usleep(2 * G_USEC_PER_SEC);
    for (int i = 0; i < SCANS; i++) {
        gint64 start = g_get_monotonic_time();

        d.next_approval_scan = 0;
        dispatch_approval_expire(&d, mono_ms());
        ms[i] = (double)(g_get_monotonic_time() - start) / 1000.0;
    }
    qsort(ms, SCANS, sizeof ms[0], cmp_double);
    printf("held=%lu %s%s scans=%d median_ms=%.2f min_ms=%.2f max_ms=%.2f\n", f.total,
           f.operator_hold ? "operator" : "awaiting", old ? ",old" : "", SCANS, ms[SCANS / 2],
           ms[0], ms[SCANS - 1]);
    spool_close(d.spool);
    config_free(&cfg);
    return 0;
}
