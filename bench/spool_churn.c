/*
 * spool_churn - does the spool file stay bounded under a churn of messages?
 *
 * Keeps a window of W messages in the spool: each step stores a new one
 * (body of a size drawn from a mail-like mix) and removes the oldest, in
 * batches of B per transaction (like ingest's group commit), and prints
 * the data file size every REPORT messages.  A spool whose free pages are
 * reused shows a size that levels off; fragmentation shows as growth.
 *
 * usage: spool_churn DIR TOTAL [WINDOW] [BATCH]
 */
#include "common/log.h"
#include "spool/spool.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct churn {
    GQueue window;                  /* queue ids, oldest first */
    unsigned window_max;
    unsigned batch;
    char *body;
    GRand *rand;
};

/* Sizes like a mail spool: mostly a few KiB, some 50-200 KiB, rare 2 MiB. */
static size_t churn_size(GRand *r)
{
    double x = g_rand_double(r);

    if (x < 0.80)
        return (size_t)g_rand_int_range(r, 1000, 8000);
    if (x < 0.98)
        return (size_t)g_rand_int_range(r, 50000, 200000);
    return (size_t)g_rand_int_range(r, 1000000, 2000000);
}

static gboolean churn_step(struct spool_txn *t, void *ctx, GError **err)
{
    struct churn *c = ctx;
    GQueue added = G_QUEUE_INIT;

    for (unsigned i = 0; i < c->batch; i++) {
        struct spool_msg m;
        size_t len = churn_size(c->rand);
        gboolean ok;

        spool_msg_init(&m);
        if (!(m.id = spool_id_next(t, err))) {
            spool_msg_clear(&m);
            return FALSE;
        }
        m.state = MSG_INCOMING;
        m.arrival = time(NULL);
        m.size = len;
        m.sender = g_strdup("bench@example.org");
        g_ptr_array_add(m.recipients, g_strdup("restricted@example.org"));
        ok = spool_msg_insert(t, &m, err) && spool_body_put(t, DB_BODIES, m.id, c->body, len, err);
        g_queue_push_tail(&added, g_memdup2(&m.id, sizeof(m.id)));
        spool_msg_clear(&m);
        if (!ok)
            return FALSE;
    }
    while (c->window.length + added.length > c->window_max) {
        queue_id *old = g_queue_peek_head(&c->window);
        if (!old)
            break;
        if (!spool_msg_delete(t, *old, err))
            return FALSE;
        g_free(g_queue_pop_head(&c->window));
    }
    while (added.length)
        g_queue_push_tail(&c->window, g_queue_pop_head(&added));
    return TRUE;
}

int main(int argc, char **argv)
{
    struct postern_config cfg;
    struct spool *sp;
    struct churn c = { G_QUEUE_INIT, 1000, 16, NULL, NULL };
    GError *err = NULL;
    unsigned long total, done = 0, report;
    gint64 start;

    if (argc < 3) {
        fprintf(stderr, "usage: spool_churn DIR TOTAL [WINDOW] [BATCH]\n");
        return 2;
    }
    total = strtoul(argv[2], NULL, 10);
    if (argc > 3)
        c.window_max = (unsigned)strtoul(argv[3], NULL, 10);
    if (argc > 4)
        c.batch = (unsigned)strtoul(argv[4], NULL, 10);
    report = MAX(total / 10, 1);
    log_init("spool_churn", TRUE);
    config_load_or_exit(&cfg, NULL);
    g_free(cfg.spool.dir);
    cfg.spool.dir = g_strdup(argv[1]);
    if (!spool_open(&sp, &cfg, &err))
        msg_fatal("%s", err->message);
    c.body = g_malloc(2000000);
    for (size_t i = 0; i < 2000000; i++)
        c.body[i] = (char)('a' + i % 26);
    c.rand = g_rand_new_with_seed(42);

    printf("messages  file_bytes  msgs_per_s\n");
    start = g_get_monotonic_time();
    while (done < total) {
        if (!spool_write(sp, churn_step, &c, &err))
            msg_fatal("churn: %s", err->message);
        done += c.batch;
        if (done % report < c.batch || done >= total)
            printf("%8lu  %10" G_GUINT64_FORMAT "  %10.0f\n", done, spool_file_size(sp),
                   (double)done * G_USEC_PER_SEC / (double)(g_get_monotonic_time() - start));
        fflush(stdout);
    }
    g_queue_clear_full(&c.window, g_free);
    g_rand_free(c.rand);
    g_free(c.body);
    spool_close(sp);
    config_free(&cfg);
    return 0;
}
