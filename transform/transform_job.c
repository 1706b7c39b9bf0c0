/*
 * transform_job.c - transform jobs, from TJOB to their commit.
 *
 *   load    read transaction: the message, its bytes, and that the lease
 *           is ours; for a bounce report, the deliveries it reports on
 *   parse   no transaction: GMime takes the token out
 *   plan    a short read transaction for the token, then with none open
 *           the rewrite and signatures, or the notice, or the hold
 *           (a bounce to a VERP address: the code checked, the DSN read;
 *           mail to the unsubscribe address: the code checked)
 *   commit  one write transaction for a batch of planned jobs (group
 *           commit: one fsync for all); in it, each job checks its lease
 *           again (fencing) and its token again, then writes its whole
 *           outcome
 *
 * Pull mode ([token] claim_url): the plan asks the platform instead of
 * the spool (transform_claim.c), with no transaction open; the commit
 * writes what it answered and checks no token.  No answer: the job is
 * given back unfinished (PLAN_DEFER), see transform_job_commit_defer().
 *
 * A token can change between plan and commit (another job used it): that
 * job is left out of the commit and plans again with what the spool says
 * now.  A token only ever goes from active to used, expired or revoked, so
 * this settles at the second plan; a few rounds are allowed all the same.
 */
#include "transform/transform.h"
#include "common/clock.h"
#include "transform/mime.h"
#include "transform/bounce_parse.h"
#include "common/bounce_code.h"
#include "common/unsub_code.h"
#include "spool/delivery.h"
#include "spool/spool_events.h"
#include "spool/spool_steer.h"
#include "spool/spool_suppress.h"
#include "common/log.h"

#include <string.h>

G_DEFINE_QUARK(postern-transform-error, transform_error)

#define JOB_MAX_PLANS 4

enum transform_job_plan {
    PLAN_READY,                     /* deliveries, token used (reason NULL) */
    PLAN_REJECT,                    /* rejected with reason */
    PLAN_HOLD,                      /* the message cannot be handled: hold with why */
    PLAN_REPORT,                    /* a bounce report becomes its notice */
    PLAN_DONE,                      /* a bounce report with nothing to say; a bounce to
                                     * ignore (auto-reply, forged code) */
    PLAN_DEFER,                     /* pull mode, no answer: incoming again, not before */
    PLAN_BOUNCE,                    /* a bounce: record it against its delivery */
    PLAN_UNSUBSCRIBE,               /* the mailto form: suppress the address it names */
};

struct transform_job {
    struct transform *tf;
    uint64_t lease;
    queue_id id;
    char idtext[QUEUE_ID_LEN + 1];
    struct spool_msg m;             /* as loaded */
    const struct postern_list *list;    /* m's, by its recipients (a report: ref's) */
    GBytes *record;                 /* m's record as stored, while m is that record */
    GByteArray *raw;                /* bytes received; a report: ref's outgoing copy */

    /* parse */
    GMimeMessage *mime;
    char *unparsable;               /* why GMime could not, or NULL */
    gboolean rewritten;             /* mime was changed by mime_rewrite() */
    char *subject;                  /* decoded, "" when none */
    gboolean automatic;             /* auto-submitted or a report: never answered */
    gboolean have_token;
    unsigned char hash[TOKEN_HASH_LEN];
    char token_id[TOKEN_ID_LEN + 1];

    /* a bounce report: the message it is about */
    struct spool_msg ref;
    GPtrArray *bounced;             /* struct spool_dlv * */
    unsigned total;

    /* a bounce to envelope_from+CODE ([bounce] verp) */
    gboolean is_bounce;
    gboolean code_ok;               /* the code is one we made */
    queue_id bounce_msg;            /* the delivery it names */
    uint32_t bounce_idx;
    struct bounce_info bounce;

    /* mail to the unsubscribe address's +CODE ([unsubscribe] one_click) */
    gboolean is_unsub;
    const char *unsub_code;         /* in the stored recipient */
    size_t unsub_code_len;
    const char *unsub_bad;          /* why the code is malformed, or NULL */
    const char *unsub_list;         /* the configured list a well-formed code names */
    char *unsub_addr;               /* who it unsubscribes, once verified */

    /* plan */
    gboolean claimed;               /* the platform decided (pull mode), not the spool */
    int64_t not_before;             /* PLAN_DEFER: unix ms of the next try */
    gint64 now;
    enum transform_job_plan plan;
    const char *reason;             /* PLAN_REJECT, PLAN_DONE */
    char *hold;                     /* PLAN_HOLD */
    char *owner;
    GPtrArray *rcpts;               /* unique recipients */
    GBytes *outgoing;
    GPtrArray *headers;             /* GBytes * or NULL, one per rcpt */
    char *message_id;
    GPtrArray *notices;             /* struct notice * */
    struct notice *report;          /* PLAN_REPORT: what the report becomes */

    /* commit */
    GError *refused;                /* FENCED or REPLAN in the last batch transaction */
    const char *outcome;            /* the TDONE word once the job is over */
};


static void transform_job_dlv_free(gpointer p)
{
    spool_dlv_clear(p);
    g_free(p);
}

static void transform_job_bytes_free(gpointer p)
{
    if (p)
        g_bytes_unref(p);
}

static void transform_job_plan_reset(struct transform_job *j)
{
    g_clear_pointer(&j->hold, g_free);
    g_clear_pointer(&j->owner, g_free);
    g_clear_pointer(&j->outgoing, g_bytes_unref);
    g_clear_pointer(&j->message_id, g_free);
    g_ptr_array_set_size(j->rcpts, 0);
    g_ptr_array_set_size(j->headers, 0);
    g_ptr_array_set_size(j->notices, 0);
    g_clear_pointer(&j->report, transform_notice_free);
    j->reason = NULL;
}

void transform_job_free(struct transform_job *j)
{
    transform_job_plan_reset(j);
    g_clear_error(&j->refused);
    g_ptr_array_unref(j->rcpts);
    g_ptr_array_unref(j->headers);
    g_ptr_array_unref(j->notices);
    g_ptr_array_unref(j->bounced);
    g_clear_object(&j->mime);      /* refers into raw */
    g_byte_array_unref(j->raw);
    if (j->record)
        g_bytes_unref(j->record);
    g_free(j->unparsable);
    g_free(j->subject);
    spool_msg_clear(&j->m);
    spool_msg_clear(&j->ref);
    bounce_info_clear(&j->bounce);
    g_free(j->unsub_addr);
    g_free(j);
}

/* ---- load ----------------------------------------------------------------- */

/*
 * The fencing test: the message is still there and the dispatcher's
 * record still names our lease, unexpired.
 */
static gboolean transform_job_get_ours(struct spool_txn *t, const struct transform_job *j,
                                       struct spool_msg *m, GError **err)
{
    GError *local = NULL;

    if (!spool_msg_get(t, j->id, m, &local)) {
        if (g_error_matches(local, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND))
            g_set_error(err, TRANSFORM_ERROR, TRANSFORM_ERR_FENCED, "%s", local->message);
        else
            g_propagate_error(err, g_steal_pointer(&local));
        g_clear_error(&local);
        return FALSE;
    }
    if (m->state == MSG_INCOMING && m->lease == j->lease && m->lease_expiry > unix_ms())
        return TRUE;
    g_set_error(err, TRANSFORM_ERROR, TRANSFORM_ERR_FENCED,
                "%s: lease %" G_GINT64_MODIFIER "x is not ours any more (state %s, lease %"
                G_GINT64_MODIFIER "x, %s)", j->idtext, j->lease, msg_state_name(m->state),
                m->lease, m->lease_expiry > unix_ms() ? "unexpired" : "expired");
    return FALSE;
}

static gboolean transform_job_collect_bounced(const struct spool_dlv *d, void *ctx)
{
    struct transform_job *j = ctx;

    j->total++;
    if (d->state == DLV_BOUNCED) {
        struct spool_dlv *copy = g_new0(struct spool_dlv, 1);
        copy->msg = d->msg;
        copy->idx = d->idx;
        copy->state = d->state;
        copy->rcpt = g_strdup(d->rcpt);
        copy->last_reply = g_strdup(d->last_reply);
        g_ptr_array_add(j->bounced, copy);
    }
    return TRUE;
}

/* A report on a message that was purged since has nothing left to report. */
static gboolean transform_job_load_report(struct spool_txn *t, struct transform_job *j,
                                          GError **err)
{
    GError *local = NULL;

    if (!spool_msg_get(t, j->m.ref, &j->ref, &local)) {
        gboolean gone = g_error_matches(local, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND);
        if (!gone)
            g_propagate_error(err, local);
        else
            g_clear_error(&local);
        return gone;
    }
    if (!spool_dlv_foreach(t, j->m.ref, transform_job_collect_bounced, j, err))
        return FALSE;
    /* Its Subject, for the owner to recognise it: from the copy that went out. */
    if (!spool_body_get(t, DB_OUTGOING, j->m.ref, j->raw, &local)) {
        gboolean gone = g_error_matches(local, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND);
        if (!gone)
            g_propagate_error(err, local);
        else
            g_clear_error(&local);
        return gone;
    }
    return TRUE;
}

static gboolean transform_job_is_report(const struct transform_job *j)
{
    return g_strcmp0(j->m.kind, MSG_KIND_BOUNCE_REPORT) == 0;
}

#define TRANSFORM_LARGE_BODY (1 << 20)

static gboolean transform_job_load(struct transform_job *j, GError **err)
{
    struct spool_txn t;
    const void *record;
    size_t len;
    gboolean ok;

    if (!spool_read_begin(j->tf->spool, &t, err))
        return FALSE;
    ok = transform_job_get_ours(&t, j, &j->m, err) &&
         (transform_job_is_report(j) ? transform_job_load_report(&t, j, err)
                           : spool_body_get(&t, DB_BODIES, j->id, j->raw, err));
    /* Kept to see at commit whether the record is still the one loaded. */
    if (ok && (record = spool_msg_record(&t, j->id, &len)))
        j->record = g_bytes_new(record, len);
    spool_read_end(&t);
    /* A large body's map pages would count twice in our RSS: drop them now. */
    if (j->raw->len > TRANSFORM_LARGE_BODY)
        spool_release_pages(j->tf->spool);
    return ok;
}

/* ---- parse ---------------------------------------------------------------- */

/*
 * Parse the bytes received and take the token out.  The token itself is
 * hashed and wiped at once: from here on only its hash and id exist.
 * FALSE (with j->unparsable set) when GMime cannot make a message of them.
 */
static gboolean transform_job_parse(struct transform_job *j)
{
    GError *err = NULL;
    char *token;

    g_clear_object(&j->mime);
    j->rewritten = FALSE;
    if (!(j->mime = mime_parse_array(j->raw, &err))) {
        j->unparsable = g_strdup_printf("MIME: %s", err->message);
        g_error_free(err);
        return FALSE;
    }
    j->automatic = mime_is_automatic(j->mime);
    g_free(j->subject);
    j->subject = g_strdup(g_mime_message_get_subject(j->mime) ? g_mime_message_get_subject(j->mime)
                                                              : "");
    token = mime_token_extract(j->mime, j->tf->cfg->token.prefix);
    j->have_token = token != NULL;
    if (token) {
        spool_token_hash(token, j->hash);
        spool_token_id(j->hash, j->token_id);
        memset(token, 0, strlen(token));
        g_free(token);
    }
    return TRUE;
}

/* ---- plan ----------------------------------------------------------------- */

/*
 * What the token allows.  NULL: send.  A wrong sender is told so before
 * anything about the token's state, which is none of its business; a
 * token of another list, too, as that is the sender's mistake to fix.
 */
static const char *transform_job_verdict(const struct transform_job *j,
                                         const struct spool_token *tk, gint64 now)
{
    if (!j->have_token)
        return "TOKEN_NOT_FOUND";
    if (!tk || spool_token_status(tk, now) == TOKEN_REVOKED)
        return "TOKEN_INVALID";
    /* The whole address without regard to case: LEGO lowercases what it registers. */
    if (!spool_token_addr_same(j->m.sender, tk->sender))
        return "SENDER_MISMATCH";
    if (g_strcmp0(tk->list, j->list->name) != 0)
        return "TOKEN_WRONG_LIST";
    switch (spool_token_status(tk, now)) {
    case TOKEN_USED: return "TOKEN_USED";
    case TOKEN_EXPIRED: return "TOKEN_EXPIRED";
    default: return NULL;
    }
}

/* The token of this message, if the spool has it: FALSE only on a spool error. */
static gboolean transform_job_token_get(struct spool_txn *t, const struct transform_job *j,
                                        struct spool_token *tk, gboolean *found, GError **err)
{
    GError *local = NULL;

    *found = j->have_token && spool_token_get(t, j->hash, tk, &local);
    if (local && !g_error_matches(local, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND)) {
        g_propagate_error(err, local);
        return FALSE;
    }
    g_clear_error(&local);
    return TRUE;
}

/* Recipients once each, the whole address compared without regard to case. */
static void transform_job_unique_rcpts(struct transform_job *j, const struct spool_token *tk)
{
    g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);

    for (guint i = 0; i < tk->recipients->len; i++)
        if (g_hash_table_add(seen, spool_token_addr_key(tk->recipients->pdata[i])))
            g_ptr_array_add(j->rcpts, g_strdup(tk->recipients->pdata[i]));
}

static void transform_job_add_notice(struct transform_job *j, struct notice *n, GError *err)
{
    /* A notice is a courtesy: failing to write one must not hold the message. */
    if (n)
        g_ptr_array_add(j->notices, n);
    else {
        msg_warn("%s: notice not written: %s", j->idtext, err->message);
        g_error_free(err);
    }
}

/* The copies: rewrite once, sign per recipient; hold on any failure. */
static void transform_job_plan_copies(struct transform_job *j, const struct spool_token *tk)
{
    const struct postern_config *cfg = j->tf->cfg;
    /* The list's From and footer; a hide-sender list hides every token's sender. */
    gboolean hide = tk->hide_sender || j->list->hide_sender;
    struct rewrite_params p = {
        .from = j->list->from,
        .use_original_sender = cfg->rewrite.allow_original_sender && !hide,
        .hide_sender = hide,
        .original_sender = j->m.sender,
        .footer = hide ? j->list->footer_hidden : j->list->footer,
        .unsubscribe_url = j->list->unsubscribe_url,
        .unsubscribe_per_copy = j->tf->unsub_key != NULL,
        .message_id_domain = cfg->dkim.domain,
        .date = j->now,
    };
    g_autoptr(GBytes) rewritten = NULL;
    g_autoptr(GPtrArray) own = NULL;
    GError *err = NULL;

    /* mime_rewrite() changes the message: a second plan starts from the bytes again. */
    if (j->rewritten && !transform_job_parse(j)) {
        j->plan = PLAN_HOLD;
        j->hold = g_strdup(j->unparsable);
        return;
    }
    j->rewritten = TRUE;
    transform_job_unique_rcpts(j, tk);
    /* One-click unsubscribe: each copy's own links, signed with its To:. */
    if (j->tf->unsub_key) {
        own = g_ptr_array_new_with_free_func(g_free);
        for (guint i = 0; i < j->rcpts->len; i++)
            g_ptr_array_add(own, unsub_header_make(j->tf->unsub_key, j->tf->unsub_keylen,
                                                   j->list->name, j->rcpts->pdata[i],
                                                   j->list->unsubscribe_url,
                                                   cfg->unsubscribe.address));
    }
    if (!(rewritten = mime_rewrite(j->mime, &p, &j->message_id, &err)) ||
        !transform_sign_deliveries(j->tf, rewritten, j->rcpts, own, j->now, &j->outgoing,
                                   j->headers, &err)) {
        j->plan = PLAN_HOLD;
        j->hold = g_strdup_printf("%s: %s", err->domain == DKIM_ERROR ? "DKIM" : "MIME",
                                  err->message);
        g_error_free(err);
        return;
    }
    /* The copies are made: the parsed message is only dead weight in a batch now. */
    g_clear_object(&j->mime);
    j->plan = PLAN_READY;
    j->owner = spool_token_normalise_addr(tk->sender);
    /*
     * A list with approval: the moderator is asked instead of the owner
     * told "sent", which it would not be yet (docs/operations.md, Approval).
     */
    transform_job_add_notice(
        j,
        j->list->approval
            ? transform_notice_approval(j->tf, j->list, &j->m, j->subject, j->owner,
                                        j->rcpts->len, j->now, &err)
            : transform_notice_accepted(j->tf, j->list, &j->m, j->subject, j->owner,
                                        j->rcpts->len, j->now, &err),
        err);
}

/*
 * A failure notice only where it cannot be backscatter: to a sender that
 * owns a token (so it has used this relay before, and is no forged
 * stranger), never to the null sender, never in answer to automatic mail.
 */
static void transform_job_plan_reject(struct transform_job *j, gboolean sender_owns_token)
{
    GError *err = NULL;

    j->plan = PLAN_REJECT;
    if (*j->m.sender && sender_owns_token && !j->automatic)
        transform_job_add_notice(
            j, transform_notice_rejected(j->tf, j->list, &j->m, j->subject, j->reason, j->now,
                                         &err), err);
}

/*
 * Pull mode: no answer yet.  Every job of this process holds off until the
 * next try, so that a platform that is down costs one timeout, not one a
 * message; the outage is warned of once.
 */
static void transform_job_plan_defer(struct transform_job *j, const char *why)
{
    struct transform *tf = j->tf;
    int64_t now_ms = unix_ms();
    int64_t wait = transform_claim_backoff(now_ms - j->m.arrival * 1000,
                                           (int64_t)tf->cfg->token.claim_max_backoff * 1000);
    g_autoptr(GDateTime) at = NULL;
    g_autofree char *when = NULL;

    j->not_before = MAX(now_ms + wait, tf->claim_hold_until);
    if (now_ms >= tf->claim_hold_until) {
        tf->claim_hold_until = j->not_before;
        g_free(tf->claim_error);
        tf->claim_error = g_strdup(why);
    }
    if (!tf->claim_outage)
        msg_warn("claim: %s: %s: messages wait and are claimed again with backoff up to %"
                 G_GUINT64_FORMAT " s, logged again only when it answers",
                 tf->cfg->token.claim_url, why, tf->cfg->token.claim_max_backoff);
    tf->claim_outage = TRUE;
    at = g_date_time_new_from_unix_utc(j->not_before / 1000);
    when = g_date_time_format_iso8601(at);
    j->plan = PLAN_DEFER;
    j->hold = g_strdup_printf("claim: %s, next try at %s", why, when);
}

/*
 * Pull mode: the platform decides.  A granted token is checked as a
 * registered one is (spool_token_validate()), its owner being the sender
 * the platform has just accepted; an answer that fails those checks is no
 * decision, as a malformed one is.  A refusal may be told to the sender
 * as today; 409 and 410 also tell us the sender owns the token (the
 * platform checks the owner first), so they are no backscatter either.
 */
static gboolean transform_job_plan_claim(struct transform_job *j, GError **err)
{
    struct transform *tf = j->tf;
    struct claim_answer a = { 0 };
    struct spool_token tk;
    gboolean have_tk = FALSE;       /* a granted answer, whatever its checks say */
    GError *local = NULL;
    const char *mid = j->mime ? g_mime_message_get_message_id(j->mime) : NULL;
    struct claim_request r = {
        .hash = j->hash, .sender = j->m.sender, .message_id = mid,
        .queue_id = j->idtext, .subject = j->subject,
    };

    j->claimed = TRUE;
    if (unix_ms() < tf->claim_hold_until) {
        transform_job_plan_defer(j, tf->claim_error);
        return TRUE;
    }
    transform_claim_post(tf, &r, &a);
    j->now = unix_ms() / 1000;
    if (a.kind == CLAIM_GRANTED) {
        spool_token_init(&tk);
        have_tk = TRUE;
        memcpy(tk.hash, j->hash, TOKEN_HASH_LEN);
        tk.sender = g_strdup(j->m.sender);
        for (guint i = 0; i < a.recipients->len; i++)
            g_ptr_array_add(tk.recipients, g_strdup(a.recipients->pdata[i]));
        tk.hide_sender = a.hide_sender;
        tk.list = g_strdup(a.list ? a.list : j->list->name);
        if (!spool_token_validate(&tk, j->now, tf->cfg, &local)) {
            a.kind = CLAIM_RETRY;
            a.error = g_strdup_printf("answer refused: %s", local->message);
            g_clear_error(&local);
        }
    }
    if (a.kind != CLAIM_RETRY && tf->claim_outage) {
        msg_info("claim: %s answers again", tf->cfg->token.claim_url);
        tf->claim_outage = FALSE;
        tf->claim_hold_until = 0;
    }
    if (a.kind == CLAIM_RETRY) {
        transform_job_plan_defer(j, a.error);
    } else if (a.kind == CLAIM_GRANTED) {
        j->reason = g_strcmp0(tk.list, j->list->name) != 0 ? "TOKEN_WRONG_LIST" : NULL;
        if (j->reason)
            transform_job_plan_reject(j, TRUE);
        else
            transform_job_plan_copies(j, &tk);
    } else {
        gboolean owns = g_str_equal(a.reason, "TOKEN_USED") ||
                        g_str_equal(a.reason, "TOKEN_EXPIRED");
        struct spool_txn t;

        j->reason = a.reason;
        if (!owns && *j->m.sender) {
            if (!spool_read_begin(tf->spool, &t, err)) {
                transform_claim_answer_clear(&a);
                return FALSE;
            }
            owns = spool_token_owner_exists(&t, j->m.sender);
            spool_read_end(&t);
        }
        transform_job_plan_reject(j, owns);
    }
    if (have_tk)
        spool_token_clear(&tk);
    transform_claim_answer_clear(&a);
    return TRUE;
}

static gboolean transform_job_plan_mail(struct transform_job *j, GError **err)
{
    struct spool_txn t;
    struct spool_token tk;
    gboolean found = FALSE, owns = FALSE;

    if (j->unparsable) {
        j->plan = PLAN_HOLD;
        j->hold = g_strdup(j->unparsable);
        return TRUE;
    }
    /* Pull mode: the platform decides a token; a message without one is decided here. */
    if (j->tf->claim_secret && j->have_token)
        return transform_job_plan_claim(j, err);
    if (!spool_read_begin(j->tf->spool, &t, err))
        return FALSE;
    if (!transform_job_token_get(&t, j, &tk, &found, err)) {
        spool_read_end(&t);
        return FALSE;
    }
    /* Only a rejection asks whether the sender owns a token (for a notice). */
    j->reason = transform_job_verdict(j, found ? &tk : NULL, j->now);
    owns = j->reason && *j->m.sender && spool_token_owner_exists(&t, j->m.sender);
    spool_read_end(&t);

    if (j->reason)
        transform_job_plan_reject(j, owns);
    else
        transform_job_plan_copies(j, &tk);
    if (found)
        spool_token_clear(&tk);
    return TRUE;
}

/* A bounce report about a notice would answer a notice: never. */
static void transform_job_plan_report(struct transform_job *j)
{
    const char *owner = j->m.owner && *j->m.owner ? j->m.owner : j->ref.owner;
    GError *err = NULL;
    struct notice *n;

    if (!j->ref.id || !j->bounced->len || !owner || !*owner ||
        g_strcmp0(j->ref.kind, MSG_KIND_NOTICE) == 0) {
        j->plan = PLAN_DONE;
        j->reason = "NOTHING_TO_REPORT";
        return;
    }
    g_free(j->subject);
    j->subject = transform_notice_subject_of((const char *)j->raw->data, j->raw->len);
    /* The list the reported message went to: its language, and whether members are hidden. */
    j->list = config_list_of(j->tf->cfg, (char **)j->ref.recipients->pdata,
                             j->ref.recipients->len);
    if (!(n = transform_notice_bounced(j->tf, j->list, &j->ref, j->subject, owner, j->bounced,
                                       j->total, j->now, &err))) {
        j->plan = PLAN_HOLD;
        j->hold = g_strdup_printf("bounce report: %s", err->message);
        g_error_free(err);
        return;
    }
    j->plan = PLAN_REPORT;
    j->report = n;
}

/*
 * With [bounce] verp, mail to envelope_from+CODE is a bounce of ours, not
 * mail to relay: it never makes copies.  Decided by the recipient ingest
 * stored (with its extension).
 */
/*
 * Is the message (not a report of ours) to base's local part +CODE at its
 * domain, base being an address we answer with codes (key set)?  *code
 * and *len then point at CODE in the stored recipient.
 */
static gboolean transform_job_to_coded(struct transform_job *j, const char *key, const char *base,
                                       const char **code, size_t *len)
{
    const char *at = strrchr(base, '@');
    g_autofree char *local = NULL;

    if (!key || !at || transform_job_is_report(j) || j->m.recipients->len == 0)
        return FALSE;
    local = g_strndup(base, (gsize)(at - base));
    return bounce_address_split(j->m.recipients->pdata[0], local, at + 1, code, len);
}

static void transform_job_bounce_detect(struct transform_job *j)
{
    const char *code;
    size_t len;

    if (!transform_job_to_coded(j, j->tf->verp_key, j->tf->cfg->bounce.envelope_from, &code, &len))
        return;
    j->is_bounce = TRUE;
    j->code_ok = bounce_code_check(j->tf->verp_key, j->tf->verp_keylen, code, len,
                                   &j->bounce_msg, &j->bounce_idx);
}

/*
 * With [unsubscribe] one_click and an address, mail to address+CODE is the
 * mailto form of a copy's List-Unsubscribe: it never makes copies either.
 * Ingest refused a malformed code at RCPT; one may still come from before
 * a list left the config.
 */
static void transform_job_unsub_detect(struct transform_job *j)
{
    if (!transform_job_to_coded(j, j->tf->unsub_key, j->tf->cfg->unsubscribe.address,
                                &j->unsub_code, &j->unsub_code_len))
        return;
    j->is_unsub = TRUE;
    j->unsub_bad = unsub_mailto_parse(j->unsub_code, j->unsub_code_len, j->tf->cfg->lists,
                                      &j->unsub_list);
}

/*
 * Whom a short code may unsubscribe: the envelope sender (RFC 8058 and
 * RFC 2369 clients send from the subscriber's address), then each mailbox
 * of From:, for mail that a forwarder or a provider re-sent from another
 * envelope.  NULL-terminated; the strings are j's.
 */
static GPtrArray *transform_job_unsub_candidates(struct transform_job *j)
{
    InternetAddressList *from = j->mime ? g_mime_message_get_from(j->mime) : NULL;
    GPtrArray *c = g_ptr_array_new();

    g_ptr_array_add(c, j->m.sender);
    for (int i = 0; from && i < internet_address_list_length(from); i++) {
        InternetAddress *ia = internet_address_list_get_address(from, i);

        if (INTERNET_ADDRESS_IS_MAILBOX(ia))
            g_ptr_array_add(c, (char *)internet_address_mailbox_get_addr(
                                   INTERNET_ADDRESS_MAILBOX(ia)));
    }
    g_ptr_array_add(c, NULL);
    return c;
}

/* A code that does not verify ends the message unrecorded: anyone can write here. */
static void transform_job_plan_unsub(struct transform_job *j)
{
    g_autoptr(GPtrArray) tried = transform_job_unsub_candidates(j);
    g_autofree char *tried_text = NULL;

    g_clear_pointer(&j->unsub_addr, g_free);
    if (!j->unsub_bad)
        j->unsub_addr = unsub_mailto_address(j->tf->unsub_key, j->tf->unsub_keylen,
                                             j->unsub_code, j->unsub_code_len, j->unsub_list,
                                             (const char *const *)tried->pdata);
    if (j->unsub_addr) {
        j->plan = PLAN_UNSUBSCRIBE;
        j->reason = "UNSUBSCRIBED";
        return;
    }
    j->plan = PLAN_DONE;
    j->reason = "UNSUBSCRIBE_BAD_CODE";
    if (j->unsub_bad) {
        msg_warn("%s: unsubscribe mail to <%s> from <%s>: bad code: %s: dropped", j->idtext,
                 (const char *)j->m.recipients->pdata[0], j->m.sender, j->unsub_bad);
        return;
    }
    /* The addresses tried, so that an operator can tell a forgery from a forwarder. */
    tried_text = g_strjoinv(">, <", (char **)tried->pdata);
    msg_warn("%s: unsubscribe mail to <%s>: code %.*s list=%s verifies for none of <%s>: dropped",
             j->idtext, (const char *)j->m.recipients->pdata[0], (int)j->unsub_code_len,
             j->unsub_code, j->unsub_list, tried_text);
}

/* What the bounce says; a forged code or an auto-reply ends it unrecorded. */
static void transform_job_plan_bounce(struct transform_job *j)
{
    j->plan = PLAN_DONE;
    if (!j->code_ok) {
        /* Anyone can write to the bounce address: one line, nothing else. */
        msg_warn("%s: bounce to <%s> from <%s>: bad code: dropped", j->idtext,
                 (const char *)j->m.recipients->pdata[0], j->m.sender);
        j->reason = "BOUNCE_FORGED";
        return;
    }
    bounce_info_clear(&j->bounce);
    if (j->mime)
        bounce_parse(j->mime, &j->bounce);
    switch (j->bounce.kind) {
    case BOUNCE_HARD:
    case BOUNCE_SOFT:
        j->plan = PLAN_BOUNCE;
        j->reason = j->bounce.kind == BOUNCE_HARD ? "BOUNCE_HARD" : "BOUNCE_SOFT";
        break;
    case BOUNCE_AUTOREPLY:
        j->reason = "BOUNCE_AUTOREPLY";
        break;
    default:
        j->reason = "BOUNCE_UNKNOWN";
        break;
    }
}

/* ---- commit --------------------------------------------------------------- */

static gboolean transform_job_store_notices(struct spool_txn *t, struct transform_job *j,
                                            GError **err)
{
    for (guint i = 0; i < j->notices->len; i++)
        if (!transform_notice_store(t, j->notices->pdata[i], NULL, j->now, err))
            return FALSE;
    return TRUE;
}

static gboolean transform_job_store_copies(struct spool_txn *t, struct transform_job *j,
                                           struct spool_msg *m, GError **err)
{
    gsize len;
    const char *data = g_bytes_get_data(j->outgoing, &len);
    unsigned suppressed = 0;

    if (!spool_body_put(t, DB_OUTGOING, j->id, data, len, err))
        return FALSE;
    for (guint i = 0; i < j->rcpts->len; i++) {
        struct spool_dlv d;

        spool_dlv_init(&d);
        d.msg = j->id;
        d.idx = i;
        d.state = DLV_READY;
        d.rcpt = j->rcpts->pdata[i];
        d.created = d.next_try = j->now;
        d.header = j->headers->pdata[i];
        /* A suppressed address gets no copy: its delivery ends bounced at
         * once, so spoolctl show, the counts and the owner's report say so. */
        if (spool_suppress_is(t, j->list->name, d.rcpt)) {
            d.state = DLV_BOUNCED;
            d.last_reply = (char *)"550 5.7.1 suppressed: the address bounced or unsubscribed "
                                   "(spoolctl suppress list)";
            spool_txn_log(t, "%s: to=<%s>, list=%s, suppressed", j->idtext, d.rcpt,
                          j->list->name);
            suppressed++;
        }
        if (!spool_dlv_put(t, &d, err))
            return FALSE;
    }
    g_free(m->kind);
    m->kind = g_strdup(MSG_KIND_MAIL);
    g_free(m->owner);
    m->owner = g_strdup(j->owner);
    g_free(m->message_id);
    m->message_id = g_strdup(j->message_id);
    spool_txn_log(t, "%s: token=%s used, owner=<%s>, nrcpt=%u, message-id=<%s>", j->idtext,
                  j->token_id, j->owner, j->rcpts->len, j->message_id);
    /* The platform hears of it in the transaction that accepts it (spool_events.h). */
    if (!spool_msg_set_state(t, m, MSG_READY, NULL, err) ||
        !spool_event_message(t, m, EVENT_MESSAGE_ACCEPTED, NULL, j->token_id, j->rcpts->len,
                             err))
        return FALSE;
    /*
     * Every recipient suppressed: nothing is due, so it ends here, not in
     * the dispatcher; on a list with approval there is nothing to approve,
     * so the moderator's notice goes unwritten.
     */
    if (suppressed == j->rcpts->len) {
        if (j->list->approval && j->notices->len) {
            g_ptr_array_set_size(j->notices, 0);
            spool_txn_log(t, "%s: every recipient suppressed: no approval asked", j->idtext);
        }
        if (!spool_msg_settle(t, j->id, err))
            return FALSE;
        /* settle wrote the record: m must be that record again. */
        spool_msg_clear(m);
        return spool_msg_get(t, j->id, m, err);
    }
    /* The token is used and the copies made: only the moderator's word is missing. */
    if (j->list->approval)
        return spool_msg_hold_for_approval(t, m, j->token_id, err);
    return TRUE;
}

/*
 * A bounce against the delivery its code names: a hard one makes a sent
 * delivery bounced (spool_dlv_late_bounce: event, owner's report); hard or
 * soft, it counts towards the address's score (spool_suppress.h).  The
 * delivery's recipient is the address, not what the DSN text claims.  The
 * bounce message itself is then done.
 */
static gboolean transform_job_commit_bounce(struct spool_txn *t, struct transform_job *j,
                                            struct spool_msg *m, GError **err)
{
    const struct postern_config *cfg = j->tf->cfg;
    gboolean hard = j->bounce.kind == BOUNCE_HARD;
    const char *status = j->bounce.status ? j->bounce.status : (hard ? "5.0.0" : "4.0.0");
    g_autofree char *reply = g_strdup_printf("%s %s bounce (%s)%s%s", status,
                                             hard ? "hard" : "soft", j->bounce.format,
                                             j->bounce.rcpt ? " for " : "",
                                             j->bounce.rcpt ? j->bounce.rcpt : "");
    char about[QUEUE_ID_LEN + 1];
    struct spool_dlv d;
    struct spool_msg bounced = { 0 };
    const struct postern_list *list;
    GError *local = NULL;
    gboolean changed = FALSE, suppressed = FALSE, ok = TRUE;

    spool_id_format(j->bounce_msg, about);
    spool_dlv_init(&d);
    if (!spool_dlv_get(t, j->bounce_msg, j->bounce_idx, &d, &local)) {
        if (!g_error_matches(local, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND)) {
            g_propagate_error(err, local);
            return FALSE;
        }
        /* Purged since: nothing left to record against. */
        g_clear_error(&local);
        spool_txn_log(t, "%s: bounce for %s#%u: no such delivery any more", j->idtext, about,
                      j->bounce_idx);
        return spool_msg_set_state(t, m, MSG_DONE, "BOUNCE_NO_DELIVERY", err);
    }
    spool_txn_log(t, "%s: bounce for %s#%u <%s>: %s", j->idtext, about, j->bounce_idx, d.rcpt,
                  reply);
    if (hard)
        ok = spool_dlv_late_bounce(t, j->bounce_msg, j->bounce_idx, reply, &changed, err);
    /* The score is the list's that the bounced copy went out on. */
    ok = ok && spool_msg_get(t, j->bounce_msg, &bounced, err);
    list = ok ? config_list_of(cfg, (char **)bounced.recipients->pdata, bounced.recipients->len)
              : NULL;
    ok = ok && spool_suppress_bounce(t, list->name, d.rcpt, hard, status, j->now,
                                     (int64_t)cfg->bounce.score_window,
                                     (double)cfg->bounce.score_threshold, &suppressed, err);
    spool_msg_clear(&bounced);
    spool_dlv_clear(&d);
    if (!ok)
        return FALSE;
    g_free(m->kind);
    m->kind = g_strdup(MSG_KIND_BOUNCE);
    m->ref = j->bounce_msg;
    return spool_msg_set_state(t, m, MSG_DONE, j->reason, err);
}

/*
 * The mailto form: the address leaves the list its code names, with the
 * `unsubscribed` event, in the transaction that ends this mail; a second
 * one changes nothing.
 */
static gboolean transform_job_commit_unsub(struct spool_txn *t, struct transform_job *j,
                                           struct spool_msg *m, GError **err)
{
    gboolean added = FALSE;

    if (!spool_suppress_add(t, j->unsub_list, j->unsub_addr, "unsubscribed (mailto)",
                            EVENT_UNSUBSCRIBED, j->now,
                            (double)j->tf->cfg->bounce.score_threshold, &added, err))
        return FALSE;
    if (!added)
        spool_txn_log(t, "%s: <%s> list=%s: unsubscribed already", j->idtext, j->unsub_addr,
                      j->unsub_list);
    g_free(m->kind);
    m->kind = g_strdup(MSG_KIND_UNSUBSCRIBE);
    return spool_msg_set_state(t, m, MSG_DONE, j->reason, err);
}

/*
 * Pull mode: what the platform answered is written as it is.  The spool
 * has no token to mark used: the platform keeps that, keyed by our queue
 * id, so a job claimed again gets the same answer.
 */
static gboolean transform_job_commit_claimed(struct spool_txn *t, struct transform_job *j,
                                             struct spool_msg *m, GError **err)
{
    if (!j->reason)
        return transform_job_store_copies(t, j, m, err);
    return spool_msg_set_state(t, m, MSG_REJECTED, j->reason, err) &&
           spool_event_message(t, m, EVENT_MESSAGE_REJECTED, j->reason, j->token_id, 0, err);
}

/*
 * Pull mode, no answer: the message stays incoming, with why and when in
 * its reason (spoolctl list shows it).  The next try is kept as its lease
 * expiry, with the lease itself cleared (no worker holds it now): the
 * dispatcher leases only messages whose lease_expiry has passed, so the
 * wait needs nothing of it, and survives any restart.
 */
static gboolean transform_job_commit_defer(struct spool_txn *t, struct transform_job *j,
                                           struct spool_msg *m, GError **err)
{
    m->lease = 0;
    m->lease_expiry = j->not_before;
    g_free(m->reason);
    m->reason = g_strdup(j->hold);
    spool_txn_log(t, "%s: token=%s %s", j->idtext, j->token_id, j->hold);
    return spool_msg_update(t, m, err);
}

/*
 * The token decides again inside the transaction, and must decide as the
 * plan did: the plan's copies and notices were made for that verdict.
 */
static gboolean transform_job_commit_token(struct spool_txn *t, struct transform_job *j,
                                           struct spool_msg *m, GError **err)
{
    struct spool_token tk;
    gboolean found, ok;
    const char *verdict;

    if (!transform_job_token_get(t, j, &tk, &found, err))
        return FALSE;
    verdict = transform_job_verdict(j, found ? &tk : NULL, unix_ms() / 1000);
    if (g_strcmp0(verdict, j->reason) != 0) {
        g_set_error(err, TRANSFORM_ERROR, TRANSFORM_ERR_REPLAN, "%s: token %s is now %s",
                    j->idtext, j->token_id, verdict ? verdict : "usable");
        ok = FALSE;
    } else if (verdict) {
        ok = spool_msg_set_state(t, m, MSG_REJECTED, verdict, err) &&
             spool_event_message(t, m, EVENT_MESSAGE_REJECTED, verdict,
                                 j->have_token ? j->token_id : NULL, 0, err);
    } else {
        tk.used = j->now;
        tk.used_by = j->id;
        ok = spool_token_update(t, &tk, err) && transform_job_store_copies(t, j, m, err);
    }
    if (found)
        spool_token_clear(&tk);
    return ok;
}

/*
 * The fencing test of the commit.  A record that is byte for byte the one
 * loaded is still ours while the lease lasts, and j->m is its decoded
 * form: that is lent to the commit (decoding the record again took 3% of
 * the worker).  The commit changes what it is lent, so j->m is lent once:
 * a transaction run again (the map grew) reads the record afresh.
 */
static gboolean transform_job_get_ours_again(struct spool_txn *t, struct transform_job *j,
                                             struct spool_msg *m, gboolean *lent, GError **err)
{
    gsize len = 0;
    const void *loaded = j->record ? g_bytes_get_data(j->record, &len) : NULL;
    const void *stored;
    size_t stored_len = 0;

    *lent = loaded && (stored = spool_msg_record(t, j->id, &stored_len)) && stored_len == len &&
            memcmp(stored, loaded, len) == 0 && j->m.lease_expiry > unix_ms();
    if (!*lent)
        return transform_job_get_ours(t, j, m, err);
    *m = j->m;
    g_clear_pointer(&j->record, g_bytes_unref);
    return TRUE;
}

/*
 * One job's share of the batch transaction.  FENCED and REPLAN are found
 * before the job writes anything, so such a job is only left out; any
 * other error fails the whole transaction.
 */
static gboolean transform_job_commit(struct spool_txn *t, struct transform_job *j, GError **err)
{
    struct spool_msg m = { 0 };
    gboolean lent;
    gboolean ok = transform_job_get_ours_again(t, j, &m, &lent, err);

    if (ok) {
        switch (j->plan) {
        case PLAN_READY:
        case PLAN_REJECT:
            ok = j->claimed ? transform_job_commit_claimed(t, j, &m, err)
                            : transform_job_commit_token(t, j, &m, err);
            break;
        case PLAN_DEFER:
            ok = transform_job_commit_defer(t, j, &m, err);
            break;
        case PLAN_HOLD:
            ok = spool_msg_set_state(t, &m, MSG_HOLD, j->hold, err);
            break;
        case PLAN_DONE:
            ok = spool_msg_set_state(t, &m, MSG_DONE, j->reason, err);
            break;
        case PLAN_REPORT:
            ok = transform_notice_store(t, j->report, &m, j->now, err);
            break;
        case PLAN_BOUNCE:
            ok = transform_job_commit_bounce(t, j, &m, err);
            break;
        case PLAN_UNSUBSCRIBE:
            ok = transform_job_commit_unsub(t, j, &m, err);
            break;
        }
    }
    ok = ok && transform_job_store_notices(t, j, err);
    if (lent)
        j->m = m;                   /* what the commit made of it */
    else
        spool_msg_clear(&m);
    return ok;
}

/* Runs again from the start if the map grows: it reads everything it changes. */
static gboolean transform_job_commit_write(struct spool_txn *t, void *ctx, GError **err)
{
    GPtrArray *jobs = ctx;

    for (guint i = 0; i < jobs->len; i++) {
        struct transform_job *j = jobs->pdata[i];
        GError *local = NULL;

        g_clear_error(&j->refused);
        if (j->outcome || transform_job_commit(t, j, &local))
            continue;
        if (local->domain != TRANSFORM_ERROR) {
            g_propagate_error(err, local);
            return FALSE;
        }
        j->refused = local;
    }
    return TRUE;
}

/* ---- the job -------------------------------------------------------------- */

static const char *const plan_outcome[] = {
    [PLAN_READY] = "ready", [PLAN_REJECT] = "rejected", [PLAN_HOLD] = "hold",
    [PLAN_REPORT] = "notice", [PLAN_DONE] = "done", [PLAN_DEFER] = "deferred",
    [PLAN_BOUNCE] = "done", [PLAN_UNSUBSCRIBE] = "done",
};

/* The job ends without a commit: its lease is gone, or the spool failed. */
static void transform_job_end(struct transform_job *j, GError *err)
{
    if (g_error_matches(err, TRANSFORM_ERROR, TRANSFORM_ERR_FENCED)) {
        msg_warn("%s: job dropped", err->message);
        j->outcome = "stale";
    } else {
        msg_error("%s: transform failed, the job returns when its lease runs out: %s",
                  j->idtext, err->message);
        j->outcome = "error";
    }
    g_error_free(err);
}

static void transform_job_plan(struct transform_job *j)
{
    GError *err = NULL;

    transform_job_plan_reset(j);
    if (j->is_bounce)
        transform_job_plan_bounce(j);
    else if (j->is_unsub)
        transform_job_plan_unsub(j);
    else if (transform_job_is_report(j))
        transform_job_plan_report(j);
    else if (!transform_job_plan_mail(j, &err))
        transform_job_end(j, err);
}

struct transform_job *transform_job_prepare(struct transform *tf, uint64_t lease, queue_id id)
{
    struct transform_job *j = g_new0(struct transform_job, 1);
    GError *err = NULL;

    j->tf = tf;
    j->lease = lease;
    j->id = id;
    spool_id_format(id, j->idtext);
    j->raw = g_byte_array_new();
    j->bounced = g_ptr_array_new_with_free_func(transform_job_dlv_free);
    j->rcpts = g_ptr_array_new_with_free_func(g_free);
    j->headers = g_ptr_array_new_with_free_func(transform_job_bytes_free);
    j->notices = g_ptr_array_new_with_free_func((GDestroyNotify)transform_notice_free);
    j->now = unix_ms() / 1000;
    if (!transform_job_load(j, &err)) {
        transform_job_end(j, err);
        return j;
    }
    /* The message's list: by the address it came to. */
    j->list = config_list_of(tf->cfg, (char **)j->m.recipients->pdata, j->m.recipients->len);
    transform_job_bounce_detect(j);
    transform_job_unsub_detect(j);
    if (!transform_job_is_report(j))
        transform_job_parse(j);
    transform_job_plan(j);
    return j;
}

/*
 * Group commit: every planned job of the batch in one write transaction,
 * one fsync for all.  A job whose token changed meanwhile (another job of
 * this batch or another worker used it) is planned again and committed in
 * a next round; JOB_MAX_PLANS rounds settle any batch, as a token only
 * changes once.
 */
void transform_job_commit_batch(struct transform *tf, GPtrArray *jobs)
{
    for (int round = 0; round < JOB_MAX_PLANS; round++) {
        gboolean again = FALSE;
        GError *err = NULL;

        if (!spool_write(tf->spool, transform_job_commit_write, jobs, &err)) {
            for (guint i = 0; i < jobs->len; i++)
                if (!((struct transform_job *)jobs->pdata[i])->outcome)
                    transform_job_end(jobs->pdata[i], g_error_copy(err));
            g_error_free(err);
            return;
        }
        for (guint i = 0; i < jobs->len; i++) {
            struct transform_job *j = jobs->pdata[i];

            if (j->outcome)
                continue;
            if (!j->refused) {
                j->outcome = plan_outcome[j->plan];
            } else if (g_error_matches(j->refused, TRANSFORM_ERROR, TRANSFORM_ERR_REPLAN)) {
                msg_info("%s", j->refused->message);
                g_clear_error(&j->refused);
                j->now = unix_ms() / 1000;
                transform_job_plan(j);
                again = TRUE;
            } else {
                transform_job_end(j, g_steal_pointer(&j->refused));
            }
        }
        if (!again)
            return;
    }
    for (guint i = 0; i < jobs->len; i++) {
        struct transform_job *j = jobs->pdata[i];
        if (!j->outcome)
            transform_job_end(
                j, g_error_new(TRANSFORM_ERROR, TRANSFORM_ERR_REPLAN, "token kept changing"));
    }
}

const char *transform_job_outcome(const struct transform_job *j)
{
    return j->outcome;
}

uint64_t transform_job_lease(const struct transform_job *j)
{
    return j->lease;
}

queue_id transform_job_id(const struct transform_job *j)
{
    return j->id;
}

size_t transform_job_bytes(const struct transform_job *j)
{
    return j->raw->len;
}
