/*
 * transform_notice.c - the notices Postern writes itself (SPEC §4).
 *
 * A notice is an ordinary outgoing message: a new spool message of kind
 * notice, stored complete and DKIM-signed in `outgoing`, with its one
 * delivery ready.  The dispatcher sends it from the null sender, so a
 * notice that bounces makes no bounce of its own.  Notices are
 * text/plain UTF-8 from the list's From ([rewrite] from for the default
 * list), in the list's language (English or Norwegian Bokmål), marked Auto-Submitted: auto-replied
 * (RFC 3834) so that no auto-responder answers them.
 *
 * They are composed and signed with no transaction open; transform_notice_store()
 * then only writes the bytes, inside the job's one write transaction.
 */
#include "transform/transform.h"
#include "transform/mime.h"
#include "spool/delivery.h"
#include "spool/spool_notice_rate.h"

#include <stdarg.h>
#include <string.h>

/*
 * Characters of outside text a notice repeats: a Subject (anyone's, in a
 * rejection notice) and a relay's reply (longer: Gmail's run to 300).
 */
#define NOTICE_ECHO_SUBJECT 100
#define NOTICE_ECHO_REPLY 500

/*
 * Every sentence of every notice, once per language ([list NAME] language).
 * Labels are padded to one width by hand: printf pads bytes, not letters.
 */
struct notice_texts {
    const char *lang;
    const char *no_subject;
    const char *facts;              /* Subject, Received, Queue id */
    const char *rejected_title, *rejected_head, *rejected_reason, *rejected_tail;
    const char *accepted_title_1, *accepted_title_n, *accepted_head_1, *accepted_head_n;
    const char *accepted_tail;
    const char *bounced_title, *bounced_head_1, *bounced_head_n, *bounced_list;
    const char *bounced_hidden;     /* a hide-sender list's member, by number */
    const char *approval_title, *approval_head, *approval_who, *approval_tail;
    const char *no_reply;
    const char *explain[7];         /* as notice_reasons[], and one for any other */
};

static const char *const notice_reasons[] = {
    "TOKEN_NOT_FOUND", "TOKEN_INVALID", "TOKEN_USED", "TOKEN_EXPIRED", "SENDER_MISMATCH",
    "TOKEN_WRONG_LIST",
};

static const struct notice_texts notice_en = {
    .lang = "en",
    .no_subject = "(no subject)",
    .facts = "  Subject:   %s\n  Received:  %s\n  Queue id:  %s\n",
    .rejected_title = "Not sent",
    .rejected_head = "Your message was not sent to anyone.\n\n",
    .rejected_reason = "  Reason:    %s\n",
    .rejected_tail = "\nNothing was delivered: %s\n",
    .accepted_title_1 = "Sent to %s recipient",
    .accepted_title_n = "Sent to %s recipients",
    .accepted_head_1 = "Your message is on its way to %s recipient.\n\n",
    .accepted_head_n = "Your message is on its way to %s recipients.\n\n",
    .accepted_tail = "\nIf a copy cannot be delivered you will get another notice "
                     "saying which and why.\n",
    .bounced_title = "Undelivered to %s of %s",
    .bounced_head_1 = "Your message could not be delivered to %s of its %s recipient.\n\n",
    .bounced_head_n = "Your message could not be delivered to %s of its %s recipients.\n\n",
    .bounced_list = "\nNot delivered:\n",
    .bounced_hidden = "recipient %s",
    .approval_title = "Approval needed",
    .approval_head = "A message to the list %s waits for your approval.\n\n",
    .approval_who = "  From:      %s\n  Copies:    %s\n",
    .approval_tail = "\nNothing is sent until you decide. Open this link to approve or "
                     "discard it:\n\n  %s\n\nWithout a decision it is discarded at %s.\n",
    .no_reply = "no reply recorded",
    .explain = {
        "the message carried no token. Attach the token you were given.",
        "the token is not known: mistyped, revoked or never registered.",
        "the token has been used already. Each token sends one message.",
        "the token has expired. Ask for a new one.",
        "the token is registered for another sender address. "
        "Send from the address the token was given to.",
        "the token belongs to another list. "
        "Send to the address of the list the token was given for.",
        "the message could not be sent.",
    },
};

static const struct notice_texts notice_nb = {
    .lang = "nb",
    .no_subject = "(uten emne)",
    .facts = "  Emne:      %s\n  Mottatt:   %s\n  Kø-id:     %s\n",
    .rejected_title = "Ikke sendt",
    .rejected_head = "Meldingen din ble ikke sendt til noen.\n\n",
    .rejected_reason = "  Årsak:     %s\n",
    .rejected_tail = "\nIngenting ble levert: %s\n",
    .accepted_title_1 = "Sendt til %s mottaker",
    .accepted_title_n = "Sendt til %s mottakere",
    .accepted_head_1 = "Meldingen din er på vei til %s mottaker.\n\n",
    .accepted_head_n = "Meldingen din er på vei til %s mottakere.\n\n",
    .accepted_tail = "\nHvis en kopi ikke kan leveres, får du et nytt varsel som sier "
                     "hvilken og hvorfor.\n",
    .bounced_title = "Ikke levert til %s av %s",
    .bounced_head_1 = "Meldingen din kunne ikke leveres til %s av sin %s mottaker.\n\n",
    .bounced_head_n = "Meldingen din kunne ikke leveres til %s av sine %s mottakere.\n\n",
    .bounced_list = "\nIkke levert:\n",
    .bounced_hidden = "mottaker %s",
    .approval_title = "Godkjenning trengs",
    .approval_head = "En melding til listen %s venter på din godkjenning.\n\n",
    .approval_who = "  Fra:       %s\n  Kopier:    %s\n",
    .approval_tail = "\nIngenting sendes før du bestemmer deg. Åpne denne lenken for å "
                     "godkjenne eller forkaste den:\n\n  %s\n\nUten en avgjørelse "
                     "forkastes den %s.\n",
    .no_reply = "intet svar registrert",
    .explain = {
        "meldingen hadde ikke noe token. Legg ved tokenet du fikk.",
        "tokenet er ukjent: feilskrevet, trukket tilbake eller aldri registrert.",
        "tokenet er allerede brukt. Hvert token sender én melding.",
        "tokenet er utløpt. Be om et nytt.",
        "tokenet er registrert for en annen avsenderadresse. "
        "Send fra adressen tokenet ble gitt til.",
        "tokenet hører til en annen liste. "
        "Send til adressen til listen tokenet ble gitt for.",
        "meldingen kunne ikke sendes.",
    },
};

G_STATIC_ASSERT(G_N_ELEMENTS(notice_reasons) + 1 == G_N_ELEMENTS(notice_en.explain));

/*
 * Append tmpl with each "%s" in it replaced by the next argument: the
 * texts are chosen at run time, so not printf's (-Wformat=2 could not
 * check them), and a text can hold no other conversion.
 */
static void transform_notice_put(GString *out, const char *tmpl, ...)
{
    va_list ap;
    const char *at;

    va_start(ap, tmpl);
    while ((at = strstr(tmpl, "%s"))) {
        g_string_append_len(out, tmpl, at - tmpl);
        g_string_append(out, va_arg(ap, const char *));
        tmpl = at + 2;
    }
    g_string_append(out, tmpl);
    va_end(ap);
}

/* A count as transform_notice_put() takes it. */
static char *transform_notice_num(unsigned n)
{
    return g_strdup_printf("%u", n);
}

/* The texts of the list's language (config_validate() allows en and nb only). */
static const struct notice_texts *transform_notice_texts(const struct postern_list *list)
{
    return g_str_equal(list->language, "nb") ? &notice_nb : &notice_en;
}

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

/*
 * Composed as bytes by mime_compose_text(), so that a notice gets exactly
 * the From, Sender, Date and Message-ID an outgoing copy gets (no
 * Reply-To, footer or List-Unsubscribe: it answers nobody's message to a
 * list) without a GMime message built, written and freed for each (a
 * third of what a notice cost beyond its signature: docs/benchmarks.md),
 * then signed whole with its To: and Auto-Submitted: as raw lines.
 */
static struct notice *transform_notice_make(const struct transform *tf,
                                            const struct postern_list *list, const char *to,
                                            queue_id ref, const char *subject, const char *text,
                                            gint64 now, GError **err)
{
    const struct postern_config *cfg = tf->cfg;
    struct rewrite_params p = {
        .from = list->from,
        .message_id_domain = cfg->dkim.domain,
        .date = now,
    };
    g_autofree char *prefix = g_strdup_printf("To: %s\r\nAuto-Submitted: auto-replied\r\n", to);
    struct notice *n = g_new0(struct notice, 1);
    struct transform_copy c = { 0 };
    GBytes *common;

    common = mime_compose_text(&p, subject, text, &n->message_id, err);
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
static void transform_notice_facts(GString *text, const struct notice_texts *tx,
                                   const struct spool_msg *m, const char *subject)
{
    char id[QUEUE_ID_LEN + 1];
    g_autoptr(GDateTime) when = g_date_time_new_from_unix_utc(m->arrival);
    g_autofree char *date = g_date_time_format(when, "%Y-%m-%d %H:%M:%S UTC");
    g_autofree char *echo = transform_notice_echo(subject, NOTICE_ECHO_SUBJECT);

    spool_id_format(m->id, id);
    transform_notice_put(text, tx->facts, *echo ? echo : tx->no_subject, date, id);
}

static char *transform_notice_subject(const struct notice_texts *tx, const char *what,
                                      const char *subject)
{
    g_autofree char *echo = transform_notice_echo(subject, NOTICE_ECHO_SUBJECT);

    return g_strdup_printf("%s: %s", what, *echo ? echo : tx->no_subject);
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
static const char *transform_notice_explain(const struct notice_texts *tx, const char *reason)
{
    for (size_t i = 0; i < G_N_ELEMENTS(notice_reasons); i++)
        if (g_str_equal(reason, notice_reasons[i]))
            return tx->explain[i];
    return tx->explain[G_N_ELEMENTS(notice_reasons)];
}

struct notice *transform_notice_rejected(const struct transform *tf,
                                         const struct postern_list *list,
                                         const struct spool_msg *m, const char *subject,
                                         const char *reason, gint64 now, GError **err)
{
    const struct notice_texts *tx = transform_notice_texts(list);
    g_autoptr(GString) text = g_string_new(tx->rejected_head);
    g_autofree char *title = transform_notice_subject(tx, tx->rejected_title, subject);
    struct notice *n;

    transform_notice_facts(text, tx, m, subject);
    transform_notice_put(text, tx->rejected_reason, reason);
    transform_notice_put(text, tx->rejected_tail, transform_notice_explain(tx, reason));
    n = transform_notice_make(tf, list, m->sender, m->id, title, text->str, now, err);
    /* Anyone can cause this one, with a forged sender: it is counted when stored. */
    if (n) {
        n->limit = (unsigned)MIN(tf->cfg->notice.max_per_hour, G_MAXUINT);
        n->digest = transform_notice_digest(reason, subject);
    }
    return n;
}

/* A count only: the notice names no recipient, whatever the list. */
struct notice *transform_notice_accepted(const struct transform *tf,
                                         const struct postern_list *list,
                                         const struct spool_msg *m, const char *subject,
                                         const char *owner, unsigned nrcpt, gint64 now,
                                         GError **err)
{
    const struct notice_texts *tx = transform_notice_texts(list);
    g_autoptr(GString) text = g_string_new(NULL), what = g_string_new(NULL);
    g_autofree char *n = transform_notice_num(nrcpt), *title = NULL;

    transform_notice_put(what, nrcpt == 1 ? tx->accepted_title_1 : tx->accepted_title_n, n);
    title = transform_notice_subject(tx, what->str, subject);
    transform_notice_put(text, nrcpt == 1 ? tx->accepted_head_1 : tx->accepted_head_n, n);
    transform_notice_facts(text, tx, m, subject);
    g_string_append(text, tx->accepted_tail);
    return transform_notice_make(tf, list, owner, m->id, title, text->str, now, err);
}

/* The moderator sees the sender (the token's owner), never the members. */
struct notice *transform_notice_approval(const struct transform *tf,
                                         const struct postern_list *list,
                                         const struct spool_msg *m, const char *subject,
                                         const char *owner, unsigned nrcpt, gint64 now,
                                         GError **err)
{
    const struct notice_texts *tx = transform_notice_texts(list);
    g_autoptr(GString) text = g_string_new(NULL);
    g_autofree char *n = transform_notice_num(nrcpt), *title = NULL;
    g_autofree char *link = approval_link(tf->cfg, tf->approval_key, m->id);
    g_autoptr(GDateTime) until = g_date_time_new_from_unix_utc(now + (gint64)list->approval_expiry);
    g_autofree char *date = g_date_time_format(until, "%Y-%m-%d %H:%M:%S UTC");

    title = transform_notice_subject(tx, tx->approval_title, subject);
    transform_notice_put(text, tx->approval_head, list->address ? list->address : list->name);
    transform_notice_facts(text, tx, m, subject);
    transform_notice_put(text, tx->approval_who, owner, n);
    transform_notice_put(text, tx->approval_tail, link, date);
    return transform_notice_make(tf, list, list->moderator, m->id, title, text->str, now, err);
}

/*
 * A relay's reply with the member's address taken out (it often repeats
 * it: "550 5.1.1 <bob@example.org>: no such user"), for a hidden list.
 */
static char *transform_notice_redact(const char *reply, const char *rcpt)
{
    g_autoptr(GString) out = g_string_new(reply);
    size_t n = strlen(rcpt);

    for (size_t i = 0; n && i + n <= out->len; i++)
        if (g_ascii_strncasecmp(out->str + i, rcpt, n) == 0) {
            g_string_erase(out, (gssize)i, (gssize)n);
            g_string_insert(out, (gssize)i, "(hidden)");
            i += strlen("(hidden)") - 1;
        }
    return g_string_free(g_steal_pointer(&out), FALSE);
}

struct notice *transform_notice_bounced(const struct transform *tf,
                                        const struct postern_list *list,
                                        const struct spool_msg *ref, const char *subject,
                                        const char *owner, GPtrArray *bounced, unsigned total,
                                        gint64 now, GError **err)
{
    const struct notice_texts *tx = transform_notice_texts(list);
    g_autoptr(GString) text = g_string_new(NULL), what = g_string_new(NULL);
    g_autofree char *nb = transform_notice_num(bounced->len), *nt = transform_notice_num(total);
    g_autofree char *title = NULL;

    transform_notice_put(what, tx->bounced_title, nb, nt);
    title = transform_notice_subject(tx, what->str, subject);
    transform_notice_put(text, total == 1 ? tx->bounced_head_1 : tx->bounced_head_n, nb, nt);
    transform_notice_facts(text, tx, ref, subject);
    g_string_append(text, tx->bounced_list);
    for (guint i = 0; i < bounced->len; i++) {
        const struct spool_dlv *d = bounced->pdata[i];
        g_autofree char *reply = transform_notice_echo(d->last_reply, NOTICE_ECHO_REPLY);
        g_autofree char *num = transform_notice_num(d->idx + 1), *said = NULL;

        /* A hide-sender list's members are not the sender's to know: a number instead. */
        g_string_append(text, "  ");
        if (list->hide_sender) {
            transform_notice_put(text, tx->bounced_hidden, num);
            said = transform_notice_redact(reply, d->rcpt);
        } else {
            g_string_append(text, d->rcpt);
            said = g_strdup(reply);
        }
        g_string_append_printf(text, ": %s\n", *said ? said : tx->no_reply);
    }
    return transform_notice_make(tf, list, owner, ref->id, title, text->str, now, err);
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
