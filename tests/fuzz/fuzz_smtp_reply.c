/*
 * fuzz_smtp_reply - the SMTP reply parser of sender/smtp.h, fed the input
 * in pieces whose lengths are derived from the input, and smtp_ehlo_parse
 * on every reply.
 *
 * Checked: every reply has a code 200-559, at least one line, a status of
 * the reply's class; the bytes held stay bounded (SMTP_LINE_MAX,
 * SMTP_REPLY_MAX); an error is final; and feeding it all at once gives the
 * same replies and the same end as feeding it in pieces.
 */
#include <stdint.h>
#include <string.h>

#include "sender/smtp.h"
#include "fuzz_util.h"

struct outcome {
    GString *log;                   /* code, status, text of each reply */
    gboolean failed;
};

static void take(struct smtp_reply_parser *p, struct outcome *o)
{
    for (;;) {
        struct smtp_reply r;
        struct smtp_ehlo ehlo;
        GError *err = NULL;
        enum smtp_parse st = smtp_reply_next(p, &r, &err);

        if (st == SMTP_PARSE_ERROR) {
            FUZZ_CHECK(err != NULL && err->domain == SMTP_ERROR, "error without a GError");
            g_error_free(err);
            o->failed = TRUE;
            /* final: it says so again */
            FUZZ_CHECK(smtp_reply_next(p, &r, NULL) == SMTP_PARSE_ERROR, "error not final");
            return;
        }
        FUZZ_CHECK(err == NULL, "GError set without an error");
        if (st == SMTP_PARSE_MORE) {
            FUZZ_CHECK(smtp_reply_pending(p) <= SMTP_REPLY_MAX + 2 * (SMTP_LINE_MAX + 2),
                       "%zu bytes held", smtp_reply_pending(p));
            return;
        }
        FUZZ_CHECK(r.code >= 200 && r.code <= 559, "code %d", r.code);
        FUZZ_CHECK(r.text != NULL && r.lines != NULL && r.lines[0] != NULL, "empty reply");
        FUZZ_CHECK(strlen(r.status) < sizeof(r.status), "status");
        FUZZ_CHECK(r.status[0] == 0 || r.status[0] == '0' + r.code / 100, "status %s on %d",
                   r.status, r.code);
        for (char **l = r.lines; *l; l++)
            FUZZ_CHECK(strchr(*l, '\n') == NULL, "LF in a line");
        smtp_ehlo_parse(&r, &ehlo);
        FUZZ_CHECK(ehlo.size || ehlo.size_max == 0, "size_max without SIZE");
        g_string_append_printf(o->log, "%d|%s|%s|%d%d%d%d%d%d%d%d|%" G_GUINT64_FORMAT "\n",
                               r.code, r.status, r.text, ehlo.pipelining, ehlo.starttls,
                               ehlo.enhancedstatuscodes, ehlo.eightbitmime, ehlo.smtputf8,
                               ehlo.auth_plain, ehlo.auth_login, ehlo.size, ehlo.size_max);
        smtp_reply_clear(&r);
        FUZZ_CHECK(r.text == NULL && r.lines == NULL, "smtp_reply_clear");
    }
}

static void run(const uint8_t *data, size_t size, uint64_t seed, gboolean whole,
                struct outcome *o)
{
    struct smtp_reply_parser *p = smtp_reply_parser_new();
    uint64_t state = seed;
    size_t off = 0;

    o->log = g_string_new(NULL);
    o->failed = FALSE;
    while (off < size && !o->failed) {
        size_t n = whole ? size : fuzz_piece(&state, size - off);
        char *piece = fuzz_dup(data + off, n);

        smtp_reply_feed(p, piece, n);
        free(piece);
        off += n;
        take(p, o);
    }
    smtp_reply_parser_free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct outcome whole, pieces;

    run(data, size, 0, TRUE, &whole);
    run(data, size, fuzz_hash(data, size), FALSE, &pieces);
    FUZZ_CHECK(whole.failed == pieces.failed, "error whole %d, in pieces %d", whole.failed,
               pieces.failed);
    FUZZ_CHECK(g_str_equal(whole.log->str, pieces.log->str), "replies differ:\n%s---\n%s",
               whole.log->str, pieces.log->str);
    g_string_free(whole.log, TRUE);
    g_string_free(pieces.log, TRUE);
    return 0;
}
