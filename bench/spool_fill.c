/*
 * spool_fill - fill a spool with pending deliveries, straight through
 * libspool, for the dispatcher's scale benchmark (bench/dispatch_scale.sh).
 *
 * Stores N messages of kind "notice" (they already carry their deliveries,
 * so no transform is needed), each in state ready with an outgoing copy
 * of SIZE bytes that looks like a signed message (DKIM-Signature, From,
 * To, Subject, ... and a text body, CRLF) and M ready deliveries
 * (created = next_try = now), BATCH messages per write transaction.
 * Delivery i of message n goes to rcpt<n>-<i>@sink.test.  PERSONAL 1
 * gives every delivery a header block of its own, as the transform's
 * personalised copies have (To, List-Unsubscribe with a link of its own, a
 * DKIM-Signature: about 700 bytes), so each goes in a transaction of its
 * own; 0 (the default) shares the copy, one transaction for them all.
 *
 * usage: spool_fill DIR N [M] [SIZE] [BATCH] [PERSONAL]
 *        (defaults: M 1, SIZE 4096, BATCH 5000, PERSONAL 0)
 *
 * Prints one line: messages, deliveries, seconds, deliveries/s, file bytes.
 */
#include "spool/delivery.h"
#include "common/log.h"
#include "spool/spool.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct fill {
    unsigned long total;            /* messages to store */
    unsigned long done;
    unsigned rcpts;                 /* deliveries per message */
    unsigned batch;
    gboolean personal;
    char *body;
    size_t body_len;
    int64_t now;
};

/* About SIZE bytes of a signed-looking message, CRLF line ends. */
static char *fill_body(size_t size, size_t *len)
{
    GString *s = g_string_new(NULL);
    static const char words[] = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do ";

    g_string_append(s,
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=abakus.no; s=rsa2026;\r\n"
        "\th=from:from:sender:reply-to:subject:date:message-id:to:mime-version:\r\n"
        "\tcontent-type:list-unsubscribe:list-unsubscribe-post;\r\n"
        "\tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
        "\tb=Jf0mC3z7t1pQ0yA9Qe8dE4oWm3b1Yx8tQ6kVn2H0rS5uL7aZ9cF1gD3jK5mN7pR9sT1vX3yZ\r\n"
        "\t 5aB7cD9eF1gH3iJ5kL7mN9oP1qR3sT5uV7wX9yZ1aB3cD5eF7gH9iJ1kL3mN5oP7qR9sT1uV3w\r\n"
        "\t X5yZ7aB9cD1eF3gH5iJ7kL9mN1oP3qR5sT7uV9wX1yZ3aB5cD7eF9gH1iJ3kL5mN7oP9qR1sT3\r\n"
        "\t uV5wX7yZ9aB1cD3eF5gH7iJ9kL1mN3oP5qR7sT9uV1wX3yZ5aB7cD9eF1gH3iJ5kL7mN9oP1q=\r\n"
        "From: Abakus <no-reply@abakus.no>\r\n"
        "Sender: no-reply@abakus.no\r\n"
        "Reply-To: someone@example.org\r\n"
        "To: recipient@sink.test\r\n"
        "Subject: Benchmark notice\r\n"
        "Date: Mon, 24 Nov 2026 08:00:00 +0000\r\n"
        "Message-ID: <bench.fill@abakus.no>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "List-Unsubscribe: <https://abakus.no/users/me/settings/notifications>\r\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        "\r\n");
    while (s->len + 2 < size) {
        size_t line = MIN(size - s->len - 2, (size_t)76);
        for (size_t i = 0; i < line; i++)
            g_string_append_c(s, words[(s->len + i) % (sizeof(words) - 1)]);
        g_string_append(s, "\r\n");
    }
    *len = s->len;
    return g_string_free(s, FALSE);
}

/* A personalised copy's own header lines, about the transform's size. */
static GBytes *fill_header(unsigned long num, unsigned r)
{
    GString *h = g_string_new(NULL);

    g_string_append_printf(h, "To: rcpt%lu-%u@sink.test\r\n"
                           "List-Unsubscribe: <https://abakus.no/u/%016lx%08x%040d>\r\n"
                           "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=abakus.no;"
                           " s=rsa2026;\r\n\th=from:to:subject:date:message-id:list-unsubscribe;"
                           "\r\n\tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n\tb=",
                           num, r, num, r, 0);
    for (int line = 0; line < 5; line++)
        g_string_append(h, "Jf0mC3z7t1pQ0yA9Qe8dE4oWm3b1Yx8tQ6kVn2H0rS5uL7aZ9cF1gD3jK5mN7pR9sT1vX3\r\n\t ");
    g_string_append(h, "yZ=\r\n");
    return g_string_free_to_bytes(h);
}

static gboolean fill_step(struct spool_txn *t, void *ctx, GError **err)
{
    struct fill *f = ctx;
    unsigned long n = MIN((unsigned long)f->batch, f->total - f->done);

    for (unsigned long i = 0; i < n; i++) {
        unsigned long num = f->done + i;
        struct spool_msg m;
        gboolean ok;

        spool_msg_init(&m);
        if (!(m.id = spool_id_next(t, err))) {
            spool_msg_clear(&m);
            return FALSE;
        }
        m.state = MSG_READY;
        m.arrival = f->now;
        m.size = f->body_len;
        m.sender = g_strdup("");
        m.kind = g_strdup(MSG_KIND_NOTICE);
        m.owner = g_strdup("owner@example.org");
        m.proto = g_strdup("local");
        m.message_id = g_strdup_printf("bench.%lu@abakus.no", num);
        for (unsigned r = 0; r < f->rcpts; r++)
            g_ptr_array_add(m.recipients, g_strdup_printf("rcpt%lu-%u@sink.test", num, r));
        ok = spool_msg_insert(t, &m, err) &&
             spool_body_put(t, DB_OUTGOING, m.id, f->body, f->body_len, err);
        for (unsigned r = 0; ok && r < f->rcpts; r++) {
            struct spool_dlv d;

            spool_dlv_init(&d);
            d.msg = m.id;
            d.idx = r;
            d.state = DLV_READY;
            d.rcpt = m.recipients->pdata[r];
            d.created = d.next_try = f->now;
            d.header = f->personal ? fill_header(num, r) : NULL;
            ok = spool_dlv_put(t, &d, err);
            g_clear_pointer(&d.header, g_bytes_unref);
        }
        spool_msg_clear(&m);
        if (!ok)
            return FALSE;
    }
    return TRUE;
}

int main(int argc, char **argv)
{
    struct postern_config cfg;
    struct spool *sp;
    struct fill f = { .rcpts = 1, .batch = 5000 };
    size_t size = 4096;
    GError *err = NULL;
    gint64 start;
    double secs;

    if (argc < 3) {
        fprintf(stderr, "usage: spool_fill DIR N [M] [SIZE] [BATCH] [PERSONAL]\n");
        return 2;
    }
    f.total = strtoul(argv[2], NULL, 10);
    if (argc > 3)
        f.rcpts = (unsigned)strtoul(argv[3], NULL, 10);
    if (argc > 4)
        size = strtoul(argv[4], NULL, 10);
    if (argc > 5)
        f.batch = (unsigned)strtoul(argv[5], NULL, 10);
    if (argc > 6)
        f.personal = strtoul(argv[6], NULL, 10) != 0;
    if (!f.total || !f.rcpts || !f.batch || size < 1024) {
        fprintf(stderr, "spool_fill: N, M, BATCH must be > 0 and SIZE >= 1024\n");
        return 2;
    }
    log_init("spool_fill", TRUE);
    config_load_or_exit(&cfg, NULL);
    g_free(cfg.spool.dir);
    cfg.spool.dir = g_strdup(argv[1]);
    /* Start with room for it all: a map growth redoes the whole batch. */
    cfg.spool.map_size = MAX(cfg.spool.map_size,
                             (uint64_t)(f.total * (size + 600 + 1100 * (uint64_t)f.rcpts) * 1.5));
    cfg.spool.max_size = MAX(cfg.spool.max_size, cfg.spool.map_size * 2);
    if (!spool_open(&sp, &cfg, &err))
        msg_fatal("%s", err->message);
    f.body = fill_body(size, &f.body_len);
    f.now = time(NULL);

    start = g_get_monotonic_time();
    while (f.done < f.total) {
        if (!spool_write(sp, fill_step, &f, &err))
            msg_fatal("fill: %s", err->message);
        f.done += MIN((unsigned long)f.batch, f.total - f.done);
    }
    secs = (double)(g_get_monotonic_time() - start) / G_USEC_PER_SEC;
    printf("messages=%lu deliveries=%lu seconds=%.2f deliveries_per_s=%.0f file_bytes=%" G_GUINT64_FORMAT
           "\n", f.total, f.total * f.rcpts, secs, (double)(f.total * f.rcpts) / secs,
           spool_file_size(sp));
    g_free(f.body);
    spool_close(sp);
    config_free(&cfg);
    return 0;
}
