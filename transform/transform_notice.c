/*
 * transform_notice.c - the notices Postern writes itself (SPEC §4).
 *
 * A notice is an ordinary outgoing message: a new spool message of kind
 * notice, stored complete and DKIM-signed in `outgoing`, with its one
 * delivery ready.  The dispatcher sends it from the null sender, so a
 * notice that bounces makes no bounce of its own.  Notices are
 * text/plain UTF-8 from [rewrite] from, marked Auto-Submitted: auto-replied
 * (RFC 3834) so that no auto-responder answers them.
 *
 * They are composed and signed with no transaction open; transform_notice_store()
 * then only writes the bytes, inside the job's one write transaction.
 */
#include "transform/transform.h"
#include "transform/mime.h"
#include "spool/delivery.h"
#include "spool/spool_notice_rate.h"

#include <string.h>

/*
 * Characters of outside text a notice repeats: a Subject (anyone's, in a
 * rejection notice) and a relay's reply (longer: Gmail's run to 300).
 */
#define NOTICE_ECHO_SUBJECT 100
#define NOTICE_ECHO_REPLY 500

void transform_notice_free(struct notice *n)
{
    if (!n)
        return;
    g_free(n->to);
    g_free(n->message_id);
    if (n->bytes)
        g_bytes_unref(n->bytes);
    g_free(n);
}

/* text/plain; charset=utf-8, in the transfer encoding its text needs. */
static GMimeObject *transform_notice_text_part(const char *text)
{
    GMimeTextPart *part = g_mime_text_part_new_with_subtype("plain");
    GMimeStream *stream = g_mime_stream_mem_new_with_buffer(text, strlen(text));
    GMimeDataWrapper *content = g_mime_data_wrapper_new_with_stream(stream,
                                                                    GMIME_CONTENT_ENCODING_DEFAULT);

    g_mime_part_set_content(GMIME_PART(part), content);
    g_mime_text_part_set_charset(part, "utf-8");
    g_mime_part_set_content_encoding(GMIME_PART(part),
        g_mime_part_get_best_content_encoding(GMIME_PART(part), GMIME_ENCODING_CONSTRAINT_7BIT));
    g_object_unref(content);
    g_object_unref(stream);
    return GMIME_OBJECT(part);
}

/*
 * Compose through mime_rewrite() so that a notice gets exactly the From,
 * Sender, Date and Message-ID an outgoing copy gets (no Reply-To, footer
 * or List-Unsubscribe: it answers nobody's message to a list), then sign
 * it whole with its To: and Auto-Submitted: as raw lines.
 */
static struct notice *transform_notice_make(const struct transform *tf, const char *to,
                                            queue_id ref, const char *subject, const char *text,
                                            gint64 now, GError **err)
{
    const struct postern_config *cfg = tf->cfg;
    struct rewrite_params p = {
        .from = cfg->rewrite.from,
        .message_id_domain = cfg->dkim.domain,
        .date = now,
    };
    GMimeMessage *msg = g_mime_message_new(FALSE);
    GMimeObject *body = transform_notice_text_part(text);
    g_autofree char *prefix = g_strdup_printf("To: %s\r\nAuto-Submitted: auto-replied\r\n", to);
    struct notice *n = g_new0(struct notice, 1);
    struct transform_copy c = { 0 };
    GBytes *common;

    g_mime_message_set_mime_part(msg, body);
    g_mime_message_set_subject(msg, subject, "utf-8");
    common = mime_rewrite(msg, &p, &n->message_id, err);
    g_object_unref(body);
    g_object_unref(msg);
    if (common && transform_sign_copy_init(&c, common, err))
        n->bytes = sign_whole(tf, &c, prefix, now, err);
    transform_sign_copy_clear(&c);
    if (common)
        g_bytes_unref(common);
    if (!n->bytes) {
        transform_notice_free(n);
        return NULL;
    }
    n->to = g_strdup(to);
    n->ref = ref;
    return n;
}

char *transform_notice_subject_of(const char *data, size_t len)
{
    size_t header_len, body_offset;
    GMimeMessage *msg;
    char *subject;

    /* The header alone is enough, and cheap to parse. */
    if (!mime_split(data, len, &header_len, &body_offset) ||
        !(msg = mime_parse(data, body_offset, NULL)))
        return g_strdup("");
    subject = g_strdup(g_mime_message_get_subject(msg) ? g_mime_message_get_subject(msg) : "");
    g_object_unref(msg);
    return subject;
}

/*
 * Text from outside (a Subject, a relay's reply) as a notice repeats it:
 * one line, so it cannot start lines of its own that read as ours ("Click
 * here ..."); controls and the Unicode format characters that reorder or
 * hide text (bidi overrides, zero-width) become a space, runs of blanks
 * one space; at most max characters, "..." marking a cut. Invalid UTF-8
 * becomes U+FFFD.
 */
static char *transform_notice_echo(const char *text, glong max)
{
    g_autofree char *valid = g_utf8_make_valid(text ? text : "", -1);
    GString *out = g_string_new(NULL);
    glong n = 0;

    for (const char *c = valid; *c && n < max; c = g_utf8_next_char(c)) {
        gunichar u = g_utf8_get_char(c);
        GUnicodeType type = g_unichar_type(u);
        gboolean blank = g_unichar_isspace(u) || type == G_UNICODE_CONTROL
                         || type == G_UNICODE_FORMAT || type == G_UNICODE_LINE_SEPARATOR
                         || type == G_UNICODE_PARAGRAPH_SEPARATOR;

        if (!blank)
            g_string_append_unichar(out, u);
        else if (out->len && out->str[out->len - 1] != ' ')
            g_string_append_c(out, ' ');
        else
            continue;
        n++;
        if (n == max && *(const char *)g_utf8_next_char(c) != 0)
            g_string_append(out, "...");
    }
    while (out->len && out->str[out->len - 1] == ' ')
        g_string_truncate(out, out->len - 1);
    return g_string_free(out, FALSE);
}

/* The lines every notice starts its facts with. */
static void transform_notice_facts(GString *text, const struct spool_msg *m, const char *subject)
{
    char id[QUEUE_ID_LEN + 1];
    g_autoptr(GDateTime) when = g_date_time_new_from_unix_utc(m->arrival);
    g_autofree char *date = g_date_time_format(when, "%Y-%m-%d %H:%M:%S UTC");
    g_autofree char *echo = transform_notice_echo(subject, NOTICE_ECHO_SUBJECT);

    spool_id_format(m->id, id);
    g_string_append_printf(text, "  Subject:   %s\n  Received:  %s\n  Queue id:  %s\n",
                           *echo ? echo : "(no subject)", date, id);
}

static char *transform_notice_subject(const char *what, const char *subject)
{
    g_autofree char *echo = transform_notice_echo(subject, NOTICE_ECHO_SUBJECT);

    return g_strdup_printf("%s: %s", what, *echo ? echo : "(no subject)");
}

/* Two rejection notices are the same when reason and Subject are. */
static uint64_t transform_notice_digest(const char *reason, const char *subject)
{
    g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
    guint8 hash[32];
    gsize len = sizeof(hash);
    uint64_t digest = 0;

    g_checksum_update(sum, (const guchar *)reason, (gssize)strlen(reason) + 1);
    g_checksum_update(sum, (const guchar *)subject, -1);
    g_checksum_get_digest(sum, hash, &len);
    for (int i = 0; i < 8; i++)
        digest = digest << 8 | hash[i];
    return digest;
}

/* What each rejection reason means to the sender, and what to do about it. */
static const char *transform_notice_explain(const char *reason)
{
    static const struct { const char *reason, *text; } texts[] = {
        { "TOKEN_NOT_FOUND", "the message carried no token. Attach the token you were given." },
        { "TOKEN_INVALID", "the token is not known: mistyped, revoked or never registered." },
        { "TOKEN_USED", "the token has been used already. Each token sends one message." },
        { "TOKEN_EXPIRED", "the token has expired. Ask for a new one." },
        { "SENDER_MISMATCH", "the token is registered for another sender address. "
                             "Send from the address the token was given to." },
    };

    for (size_t i = 0; i < G_N_ELEMENTS(texts); i++)
        if (g_str_equal(reason, texts[i].reason))
            return texts[i].text;
    return "the message could not be sent.";
}

struct notice *transform_notice_rejected(const struct transform *tf, const struct spool_msg *m,
                               const char *subject, const char *reason, gint64 now,
                               GError **err)
{
    g_autoptr(GString) text = g_string_new("Your message was not sent to anyone.\n\n");
    g_autofree char *title = transform_notice_subject("Not sent", subject);

    struct notice *n;

    transform_notice_facts(text, m, subject);
    g_string_append_printf(text, "  Reason:    %s\n\nNothing was delivered: %s\n", reason,
                           transform_notice_explain(reason));
    n = transform_notice_make(tf, m->sender, m->id, title, text->str, now, err);
    /* Anyone can cause this one, with a forged sender: it is counted when stored. */
    if (n) {
        n->limit = (unsigned)MIN(tf->cfg->notice.max_per_hour, G_MAXUINT);
        n->digest = transform_notice_digest(reason, subject);
    }
    return n;
}

struct notice *transform_notice_accepted(const struct transform *tf, const struct spool_msg *m,
                               const char *subject, const char *owner, unsigned nrcpt,
                               gint64 now, GError **err)
{
    g_autoptr(GString) text = g_string_new(NULL);
    g_autofree char *what = g_strdup_printf("Sent to %u recipient%s", nrcpt, nrcpt == 1 ? "" : "s");
    g_autofree char *title = transform_notice_subject(what, subject);

    g_string_append_printf(text, "Your message is on its way to %u recipient%s.\n\n", nrcpt,
                           nrcpt == 1 ? "" : "s");
    transform_notice_facts(text, m, subject);
    g_string_append(text, "\nIf a copy cannot be delivered you will get another notice "
                          "saying which and why.\n");
    return transform_notice_make(tf, owner, m->id, title, text->str, now, err);
}

struct notice *transform_notice_bounced(const struct transform *tf, const struct spool_msg *ref,
                              const char *subject, const char *owner, GPtrArray *bounced,
                              unsigned total, gint64 now, GError **err)
{
    g_autoptr(GString) text = g_string_new(NULL);
    g_autofree char *what = g_strdup_printf("Undelivered to %u of %u", bounced->len, total);
    g_autofree char *title = transform_notice_subject(what, subject);

    g_string_append_printf(text, "Your message could not be delivered to %u of its %u "
                                 "recipient%s.\n\n", bounced->len, total, total == 1 ? "" : "s");
    transform_notice_facts(text, ref, subject);
    g_string_append(text, "\nNot delivered:\n");
    for (guint i = 0; i < bounced->len; i++) {
        const struct spool_dlv *d = bounced->pdata[i];
        g_autofree char *reply = transform_notice_echo(d->last_reply, NOTICE_ECHO_REPLY);

        g_string_append_printf(text, "  %s: %s\n", d->rcpt, *reply ? reply : "no reply recorded");
    }
    return transform_notice_make(tf, owner, ref->id, title, text->str, now, err);
}

gboolean transform_notice_store(struct spool_txn *t, const struct notice *n, struct spool_msg *into,
                      gint64 now, GError **err)
{
    struct spool_msg fresh;
    struct spool_msg *m = into ? into : &fresh;
    struct spool_dlv d;
    gsize len;
    const char *data = g_bytes_get_data(n->bytes, &len);
    char id[QUEUE_ID_LEN + 1], ref[QUEUE_ID_LEN + 1];
    gboolean ok;
    enum spool_notice_rate_verdict verdict = NOTICE_RATE_SEND;

    /* Counted in this transaction, so the count and the notice commit together. */
    if (!into && n->limit > 0) {
        if (!spool_notice_rate_take(t, n->to, now, n->digest, n->limit, &verdict, err))
            return FALSE;
        if (verdict != NOTICE_RATE_SEND) {
            spool_id_format(n->ref, ref);
            spool_txn_log(t, "%s: notice to <%s> dropped: %s", ref, n->to,
                          verdict == NOTICE_RATE_DUPLICATE ? "the same notice went this hour"
                                                           : "[notice] max_per_hour reached");
            return TRUE;
        }
    }
    if (!into) {
        spool_msg_init(&fresh);
        if (!(fresh.id = spool_id_next(t, err))) {
            spool_msg_clear(&fresh);
            return FALSE;
        }
        fresh.state = MSG_READY;
        fresh.arrival = now;
        fresh.sender = g_strdup("");
    }
    g_ptr_array_set_size(m->recipients, 0);
    g_ptr_array_add(m->recipients, g_strdup(n->to));
    m->size = len;
    m->ref = n->ref;
    g_free(m->kind);
    m->kind = g_strdup(MSG_KIND_NOTICE);
    g_free(m->owner);
    m->owner = g_strdup(n->to);
    g_free(m->message_id);
    m->message_id = g_strdup(n->message_id);

    spool_dlv_init(&d);
    d.msg = m->id;
    d.state = DLV_READY;
    d.rcpt = n->to;
    d.created = d.next_try = now;
    ok = (into ? spool_msg_set_state(t, m, MSG_READY, NULL, err) : spool_msg_insert(t, m, err)) &&
         spool_body_put(t, DB_OUTGOING, m->id, data, len, err) && spool_dlv_put(t, &d, err);
    spool_id_format(m->id, id);
    spool_id_format(n->ref, ref);
    if (ok)
        spool_txn_log(t, "%s: notice about %s, to=<%s>, size=%" G_GSIZE_FORMAT ", message-id=<%s>",
                      id, ref, n->to, len, n->message_id);
    if (!into)
        spool_msg_clear(&fresh);
    return ok;
}
