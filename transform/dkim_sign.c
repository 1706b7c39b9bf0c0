/*
 * DKIM-Signature construction: choose the signed fields, build the tag list
 * folded as it will be sent, hash the canonical header data, sign.
 */

#include <string.h>

#include "transform/dkim.h"

/*
 * Fields signed, in h= order (SPEC §4): those a recipient sees or acts on.
 * From comes first: it is the one DMARC needs. The fields a copy puts on
 * top of the common header (its To:, and with one-click unsubscribe its
 * List-Unsubscribe and List-Unsubscribe-Post) come last, so that what
 * precedes them is hashed once per message and each copy hashes only its
 * own lines and its DKIM-Signature (with To: second, every copy hashed
 * the whole common header again: a fifth of a message's transform CPU
 * beyond its signatures, docs/benchmarks.md). Every one is oversigned
 * (RFC 6376 §8.15): h= names it once more than the copy has it, and that
 * entry selects "no field", so a copy with a second Subject, Reply-To or
 * Content-Type added on top, or a Reply-To added where we sent none (a
 * hidden sender), fails to verify. Only fields a forwarder has no business
 * adding are listed; the cost is a few bytes of h=.
 */
#define NAME(s) { s, sizeof(s) - 1 }
static const struct {
    const char *name;
    size_t len;
} sign_names[] = {
    NAME("From"), NAME("Subject"), NAME("Date"),
    NAME("Message-ID"), NAME("Reply-To"), NAME("Sender"),
    NAME("MIME-Version"), NAME("Content-Type"),
    NAME("Content-Transfer-Encoding"), NAME("To"), NAME("List-Unsubscribe"),
    NAME("List-Unsubscribe-Post"),
};
#undef NAME
#define SIGN_N G_N_ELEMENTS(sign_names)
#define SIGN_FROM 0
/* The first name a copy puts on top of the common header: the last three
 * above (To, List-Unsubscribe, List-Unsubscribe-Post) are a copy's own, the
 * names before them are hashed once per message. */
#define SIGN_TOP (SIGN_N - 3)

/* A field of the block that is to be signed, with its sign_names index. */
struct signed_field {
    guint name;
    struct dkim_field field;
};

/* Header lines are kept under 78 chars (RFC 5322 §2.1.1), a tab counted
 * as one: fold before a word that would pass this column. */
#define FOLD_WIDTH 76

/* The DKIM-Signature field being written, and the length of its last line. */
struct fold {
    GString *s;
    size_t col;
};

static void fold_break(struct fold *f)
{
    g_string_append_len(f->s, "\r\n\t", 3);
    f->col = 1;
}

/*
 * Append the word tag + value + end (end '\0': none), after a space when
 * `space` (between tags) or directly (inside an h= list, after its ':'),
 * folding first if it would not fit. Both places allow FWS (RFC 6376 §3.5),
 * and a fold canonicalises the same for signer and verifier because the
 * field is hashed as folded. No printf: this runs for every signature.
 */
static void fold_word(struct fold *f, gboolean space, const char *tag,
                      const char *value, size_t value_len, char end)
{
    size_t len = strlen(tag) + value_len + (end != '\0');

    if (f->col + (space ? 1 : 0) + len > FOLD_WIDTH) {
        fold_break(f);
    } else if (space) {
        g_string_append_c(f->s, ' ');
        f->col++;
    }
    g_string_append(f->s, tag);
    g_string_append_len(f->s, value, (gssize)value_len);
    if (end != '\0')
        g_string_append_c(f->s, end);
    f->col += len;
}

static void fold_tag(struct fold *f, const char *tag, const char *value)
{
    fold_word(f, TRUE, tag, value, strlen(value), ';');
}

/* base64 allows FWS anywhere (RFC 6376 §2.4): fill every line. */
static void fold_base64(struct fold *f, const char *b64)
{
    size_t left = strlen(b64);

    while (left > 0) {
        size_t room = FOLD_WIDTH - MIN(f->col, FOLD_WIDTH);
        size_t n = MIN(room, left);

        if (n == 0) {
            fold_break(f);
            continue;
        }
        g_string_append_len(f->s, b64, (gssize)n);
        f->col += n;
        b64 += n;
        left -= n;
    }
}

gboolean dkim_dns_name_valid(const char *name)
{
    size_t label = 0;
    size_t len = 0;
    char prev = '.';

    if (name == NULL)
        return FALSE;
    for (const char *p = name; *p != '\0'; p++, len++) {
        if (*p == '.') {
            if (label == 0 || prev == '-')
                return FALSE;
            label = 0;
        } else if (g_ascii_isalnum(*p) || (*p == '-' && label > 0)) {
            if (++label > 63)
                return FALSE;
        } else {
            return FALSE;
        }
        prev = *p;
    }
    return len > 0 && len <= 253 && label > 0 && prev != '-';
}

/* One pass over the block keeps the fields that are to be signed. */
static GArray *fields_select(const char *block, size_t len, GError **err)
{
    GArray *sel = g_array_sized_new(FALSE, FALSE, sizeof(struct signed_field),
                                    16);
    struct signed_field sf;
    size_t pos = 0;

    while (dkim_field_next(block, len, &pos, &sf.field)) {
        if (sf.field.value == NULL) {
            g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED,
                        "dkim: header line without a colon: %.*s",
                        (int)MIN(sf.field.name_len, 60), sf.field.name);
            g_array_free(sel, TRUE);
            return NULL;
        }
        for (sf.name = 0; sf.name < SIGN_N; sf.name++) {
            if (sign_names[sf.name].len == sf.field.name_len &&
                g_ascii_strncasecmp(sign_names[sf.name].name, sf.field.name,
                                    sf.field.name_len) == 0) {
                g_array_append_val(sel, sf);
                break;
            }
        }
    }
    return sel;
}

/*
 * Append the canonical form of the selected instances of sign_names[n],
 * bottom-up (RFC 6376 §5.4.2), as the verifier will take them. Returns how
 * many there were.
 */
static guint fields_canon(const GArray *sel, guint n, GString *canon)
{
    guint count = 0;

    for (guint i = sel->len; i-- > 0;) {
        const struct signed_field *sf =
            &g_array_index(sel, struct signed_field, i);

        if (sf->name != n)
            continue;
        dkim_canon_header_relaxed(sf->field.name, sf->field.name_len,
                                  sf->field.value, sf->field.value_len,
                                  canon);
        count++;
    }
    return count;
}

/*
 * The common header, selected and canonicalised once. canon holds, name by
 * name in h= order, the canonical instances of that name (bottom-up);
 * off[n]..off[n + 1] is name n's share. head is SHA-256 already fed with
 * the names that precede every field a copy puts on top (From to
 * Content-Transfer-Encoding), so a copy starts from a copy of it.
 */
struct dkim_header {
    GString *canon;
    size_t off[SIGN_N + 1];
    guint count[SIGN_N];
    EVP_MD_CTX *head;
};

struct dkim_header *dkim_header_new(const char *block, size_t len,
                                    GError **err)
{
    struct dkim_header *h;
    GArray *sel = fields_select(block, len, err);

    if (sel == NULL)
        return NULL;
    h = g_new0(struct dkim_header, 1);
    h->canon = g_string_sized_new(len + 64);
    for (guint n = 0; n < SIGN_N; n++) {
        h->off[n] = h->canon->len;
        h->count[n] = fields_canon(sel, n, h->canon);
    }
    h->off[SIGN_N] = h->canon->len;
    g_array_free(sel, TRUE);

    h->head = EVP_MD_CTX_new();
    if (h->head == NULL ||
        EVP_DigestInit_ex(h->head, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(h->head, h->canon->str, h->off[SIGN_TOP]) != 1) {
        g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED,
                    "dkim: cannot set up SHA-256");
        dkim_header_free(h);
        return NULL;
    }
    return h;
}

void dkim_header_free(struct dkim_header *h)
{
    if (h == NULL)
        return;
    EVP_MD_CTX_free(h->head);
    g_string_free(h->canon, TRUE);
    g_free(h);
}

/*
 * Write the h= tag and, to `canon`, the canonical data of the fields it
 * names from name `from` on (hash_start() chose it): for each name the
 * common header's instances, then the top's, since the top lies above the
 * common header and the instances are taken bottom-up. Each name is listed
 * once per instance, then once more, oversigned (see sign_names). Returns
 * FALSE when neither part has a From.
 */
static gboolean fields_sign(const struct dkim_header *h, const GArray *top,
                            guint from, struct fold *f, GString *canon)
{
    gboolean first = TRUE;

    for (guint n = 0; n < SIGN_N; n++) {
        guint count = h->count[n];

        /* Below `from` the data is in h->head and the top has none. */
        if (n >= from) {
            g_string_append_len(canon, h->canon->str + h->off[n],
                                (gssize)(h->off[n + 1] - h->off[n]));
            count += fields_canon(top, n, canon);
        }
        if (n == SIGN_FROM && count == 0)
            return FALSE;
        for (count++; count > 0; count--) {
            fold_word(f, first, first ? "h=" : "", sign_names[n].name,
                      sign_names[n].len, ':');
            first = FALSE;
        }
    }
    /* The list was written with a ':' after every name; the last one ends
     * the tag instead. */
    f->s->str[f->s->len - 1] = ';';
    return TRUE;
}

/* The first name the top has an instance of (SIGN_N: none). */
static guint top_first(const GArray *top)
{
    guint first = SIGN_N;

    for (guint i = 0; i < top->len; i++)
        first = MIN(first, g_array_index(top, struct signed_field, i).name);
    return first;
}

/*
 * The hash starts from h->head when the top adds nothing to the names it
 * covers (a copy's To: and List-Unsubscribe come last in h=), from
 * scratch otherwise.
 */
static EVP_MD_CTX *hash_start(const struct dkim_header *h, const GArray *top,
                              guint *from)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    gboolean ok;

    if (ctx == NULL)
        return NULL;
    if (top_first(top) >= SIGN_TOP) {
        *from = SIGN_TOP;
        ok = EVP_MD_CTX_copy_ex(ctx, h->head) == 1;
    } else {
        *from = 0;
        ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
    }
    if (!ok) {
        EVP_MD_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

char *dkim_sign_copy(const struct dkim_key *key, const char *domain,
                     const struct dkim_header *h, const char *top,
                     size_t top_len,
                     const unsigned char body_hash[DKIM_HASH_LEN],
                     gint64 timestamp, GError **err)
{
    static const char prefix[] = "DKIM-Signature:";
    struct fold f = { g_string_sized_new(768), 0 };
    GString *canon = g_string_sized_new(h->canon->len + top_len + 512);
    unsigned char digest[DKIM_HASH_LEN];
    unsigned char sig[DKIM_SIG_MAX];
    size_t sig_len;
    EVP_MD_CTX *ctx = NULL;
    guint from;
    char t[24];
    char *b64;
    GArray *sel = NULL;

    g_return_val_if_fail(key->selector != NULL, NULL);
    if (!dkim_dns_name_valid(domain)) {
        g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED,
                    "dkim domain \"%s\" is not a valid DNS name", domain);
        goto fail;
    }
    if ((sel = fields_select(top, top_len, err)) == NULL)
        goto fail;
    if ((ctx = hash_start(h, sel, &from)) == NULL) {
        g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED,
                    "dkim: cannot set up SHA-256");
        goto fail;
    }

    g_string_append(f.s, prefix);
    f.col = f.s->len;
    fold_tag(&f, "v=", "1");
    fold_tag(&f, "a=", dkim_key_algorithm(key));
    fold_tag(&f, "c=", "relaxed/relaxed");
    fold_tag(&f, "d=", domain);
    fold_tag(&f, "s=", key->selector);
    g_snprintf(t, sizeof(t), "%" G_GINT64_FORMAT, timestamp);
    fold_tag(&f, "t=", t);
    if (!fields_sign(h, sel, from, &f, canon)) {
        g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED,
                    "dkim: header block has no From field");
        goto fail;
    }
    b64 = g_base64_encode(body_hash, DKIM_HASH_LEN);
    fold_tag(&f, "bh=", b64);
    g_free(b64);
    fold_word(&f, TRUE, "b=", "", 0, '\0');

    /*
     * The signature field itself is hashed last, as written so far (b=
     * empty), canonicalised like the others but without its CRLF.
     */
    dkim_canon_header_relaxed(f.s->str, sizeof(prefix) - 2,
                              f.s->str + sizeof(prefix) - 1,
                              f.s->len - (sizeof(prefix) - 1), canon);
    g_string_truncate(canon, canon->len - 2);
    if (EVP_DigestUpdate(ctx, canon->str, canon->len) != 1 ||
        EVP_DigestFinal_ex(ctx, digest, NULL) != 1) {
        g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED,
                    "dkim: SHA-256 of the header failed");
        goto fail;
    }
    if (!dkim_key_sign(key, digest, sig, &sig_len, err))
        goto fail;

    b64 = g_base64_encode(sig, sig_len);
    fold_base64(&f, b64);
    g_free(b64);
    g_string_append_len(f.s, "\r\n", 2);
    EVP_MD_CTX_free(ctx);
    g_array_free(sel, TRUE);
    g_string_free(canon, TRUE);
    return g_string_free(f.s, FALSE);

fail:
    EVP_MD_CTX_free(ctx);
    if (sel != NULL)
        g_array_free(sel, TRUE);
    g_string_free(canon, TRUE);
    g_string_free(f.s, TRUE);
    return NULL;
}

char *dkim_sign(const struct dkim_key *key, const char *domain,
                const char *header_block, size_t header_len,
                const unsigned char body_hash[DKIM_HASH_LEN],
                gint64 timestamp, GError **err)
{
    struct dkim_header *h = dkim_header_new(header_block, header_len, err);
    char *sig;

    if (h == NULL)
        return NULL;
    sig = dkim_sign_copy(key, domain, h, "", 0, body_hash, timestamp, err);
    dkim_header_free(h);
    return sig;
}
