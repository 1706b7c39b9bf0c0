/*
 * spool_token.c - see spool_token.h.
 */
#include "spool/spool_token.h"
#include "spool/spool_lmdb.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <string.h>

#include "common/log.h"

void spool_token_hash(const char *token, unsigned char out[TOKEN_HASH_LEN])
{
    unsigned int len = TOKEN_HASH_LEN;
    EVP_Digest(token, strlen(token), out, &len, EVP_sha256(), NULL);
}

void spool_token_id(const unsigned char hash[TOKEN_HASH_LEN], char out[TOKEN_ID_LEN + 1])
{
    for (int i = 0; i < TOKEN_ID_LEN / 2; i++)
        g_snprintf(out + 2 * i, 3, "%02x", hash[i]);
}

char *spool_token_generate(void)
{
    unsigned char raw[32];
    char *text;

    /* One that starts with '-' would read as an option on a command line. */
    do {
        if (RAND_bytes(raw, sizeof(raw)) != 1)
            msg_fatal("RAND_bytes failed: no randomness for a token");
    } while ((raw[0] >> 2) == 62);      /* base64 '+', url-safe '-' */
    text = g_base64_encode(raw, sizeof(raw));
    /* base64url (RFC 4648 §5), no padding: safe in URLs and mail bodies. */
    for (char *p = text; *p; p++)
        *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
    *strchrnul(text, '=') = '\0';
    OPENSSL_cleanse(raw, sizeof(raw));
    return text;
}

char *spool_token_normalise_addr(const char *addr)
{
    g_autofree char *a = g_strstrip(g_strdup(addr));
    size_t len = strlen(a);
    char *at;

    if (len >= 2 && a[0] == '<' && a[len - 1] == '>') {
        memmove(a, a + 1, len - 2);
        a[len - 2] = '\0';
    }
    at = strrchr(a, '@');
    if (at) {
        g_autofree char *domain = g_ascii_strdown(at + 1, -1);
        *at = '\0';
        return g_strconcat(a, "@", domain, NULL);
    }
    return g_steal_pointer(&a);
}

char *spool_token_addr_key(const char *addr)
{
    g_autofree char *norm = spool_token_normalise_addr(addr);

    return g_ascii_strdown(norm, -1);
}

gboolean spool_token_addr_same(const char *a, const char *b)
{
    g_autofree char *ka = spool_token_addr_key(a ? a : "");
    g_autofree char *kb = spool_token_addr_key(b ? b : "");

    return strcmp(ka, kb) == 0;
}

gboolean spool_token_addr_valid(const char *addr)
{
    const char *at = strrchr(addr, '@');

    /* UTF-8 (SMTPUTF8 addresses; GVariant strings must be) without controls. */
    if (!g_utf8_validate(addr, -1, NULL))
        return FALSE;
    for (const char *p = addr; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return FALSE;
    return at && at != addr && at[1] && !strpbrk(addr, " <>,");
}

gboolean spool_token_text_valid(const char *text, GError **err)
{
    if (strlen(text) >= 16 && !strpbrk(text, " \t\r\n"))
        return TRUE;
    g_set_error(err, SPOOL_ERROR, SPOOL_ERR_INVALID,
                "\"token\" must be at least 16 characters, no white space");
    return FALSE;
}

gboolean spool_token_parse_expires(const char *text, int64_t now, int64_t *out, GError **err)
{
    uint64_t d;
    g_autoptr(GTimeZone) utc = g_time_zone_new_utc();
    g_autoptr(GDateTime) dt = NULL;

    /* A duration first: "7d" is not a date, and a date never parses as one. */
    if (config_parse_duration(text, &d) && d <= (uint64_t)(G_MAXINT64 - now)) {
        *out = now + (int64_t)d;
        return TRUE;
    }
    if ((dt = g_date_time_new_from_iso8601(text, utc))) {
        *out = g_date_time_to_unix(dt);
        return TRUE;
    }
    g_set_error(err, SPOOL_ERROR, SPOOL_ERR_INVALID,
                "bad expiry \"%s\": a duration (7d) or an ISO 8601 time", text);
    return FALSE;
}

/*
 * The one check of a token request, whatever front end it came from: the
 * rules are the spool's, so a command line and an HTTP API cannot differ.
 */
gboolean spool_token_validate(struct spool_token *tk, int64_t now,
                              const struct postern_config *cfg, GError **err)
{
    const struct postern_list *list;

    g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_autoptr(GPtrArray) unique = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *owner = tk->sender ? spool_token_normalise_addr(tk->sender) : NULL;

    /* The owner is who may send with it and who gets the notices. */
    if (!owner || !spool_token_addr_valid(owner)) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_INVALID, "bad owner address \"%s\"",
                    tk->sender ? tk->sender : "");
        return FALSE;
    }
    /* Recipients as the transform compares them: each once, whatever its case. */
    for (guint i = 0; i < tk->recipients->len; i++) {
        const char *r = tk->recipients->pdata[i];
        g_autofree char *norm = spool_token_normalise_addr(r);

        if (!spool_token_addr_valid(norm)) {
            g_set_error(err, SPOOL_ERROR, SPOOL_ERR_INVALID, "bad recipient address \"%s\"", r);
            return FALSE;
        }
        if (g_hash_table_add(seen, spool_token_addr_key(norm)))
            g_ptr_array_add(unique, g_steal_pointer(&norm));
    }
    if (!unique->len) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_INVALID, "token for %s has no recipients", owner);
        return FALSE;
    }
    /* A token sends to one list, which must exist, and within its cap. */
    if (!tk->list)
        tk->list = g_strdup(CONFIG_LIST_DEFAULT);
    if (!(list = config_list_find(cfg, tk->list))) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_INVALID, "no list \"%s\"", tk->list);
        return FALSE;
    }
    if (list->max_recipients && unique->len > list->max_recipients) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_INVALID,
                    "%u recipients: list \"%s\" allows at most %" G_GUINT64_FORMAT " a token",
                    unique->len, list->name, list->max_recipients);
        return FALSE;
    }
    /* A token that could never be used is a mistake of the caller's. */
    if (tk->expires && tk->expires <= now) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_INVALID,
                    "expiry %" G_GINT64_FORMAT " is not in the future", tk->expires);
        return FALSE;
    }
    g_ptr_array_unref(tk->recipients);
    tk->recipients = g_steal_pointer(&unique);
    g_free(tk->sender);
    tk->sender = g_steal_pointer(&owner);
    tk->created = now;
    return TRUE;
}

gboolean spool_token_prepare(struct spool_token *tk, const char *text, int64_t now,
                             const struct postern_config *cfg, GError **err)
{
    if (!spool_token_validate(tk, now, cfg, err))
        return FALSE;
    if (!text || !*text) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_INVALID, "no token text");
        return FALSE;
    }
    spool_token_hash(text, tk->hash);
    return TRUE;
}

enum spool_token_status spool_token_status(const struct spool_token *tk, int64_t now)
{
    if (tk->revoked)
        return TOKEN_REVOKED;
    if (tk->used)
        return TOKEN_USED;
    if (tk->expires && now >= tk->expires)
        return TOKEN_EXPIRED;
    return TOKEN_ACTIVE;
}

const char *spool_token_status_name(enum spool_token_status s)
{
    static const char *const names[] = { "active", "used", "expired", "revoked" };
    return names[s];
}

void spool_token_init(struct spool_token *tk)
{
    memset(tk, 0, sizeof(*tk));
    tk->recipients = g_ptr_array_new_with_free_func(g_free);
}

void spool_token_clear(struct spool_token *tk)
{
    g_free(tk->sender);
    g_free(tk->list);
    if (tk->recipients)
        g_ptr_array_unref(tk->recipients);
    memset(tk, 0, sizeof(*tk));
}

/*
 * The record: a version byte, a flags byte, created, expires, used and
 * used_by as big-endian 64-bit numbers, the recipient count (32-bit), then
 * sender, list and each recipient as a 32-bit length and its bytes. It
 * was a GVariant a{sv}, whose encoding and decoding cost the transform
 * more than the rest of a token's handling (it reads a token three times a
 * message and writes it once); such records start with the first letter
 * of a key (or are empty), never with TOKEN_RECORD_V1, and are still read.
 */
#define TOKEN_RECORD_V1 0x01
#define TOKEN_F_HIDE_SENDER 0x01
#define TOKEN_F_REVOKED 0x02
#define TOKEN_FIXED 38

static unsigned char *spool_token_put_str(unsigned char *p, const char *s)
{
    size_t len = strlen(s);

    spool_be32(p, (uint32_t)len);
    memcpy(p + 4, s, len);
    return p + 4 + len;
}

static GBytes *spool_token_encode(const struct spool_token *tk)
{
    const char *list = tk->list ? tk->list : CONFIG_LIST_DEFAULT;
    size_t size = TOKEN_FIXED + 4 + strlen(tk->sender) + 4 + strlen(list);
    unsigned char *rec, *p;

    for (guint i = 0; i < tk->recipients->len; i++)
        size += 4 + strlen(g_ptr_array_index(tk->recipients, i));
    rec = g_malloc(size);
    rec[0] = TOKEN_RECORD_V1;
    rec[1] = (tk->hide_sender ? TOKEN_F_HIDE_SENDER : 0) | (tk->revoked ? TOKEN_F_REVOKED : 0);
    spool_be64(rec + 2, (uint64_t)tk->created);
    spool_be64(rec + 10, (uint64_t)tk->expires);
    spool_be64(rec + 18, (uint64_t)tk->used);
    spool_be64(rec + 26, tk->used_by);
    spool_be32(rec + 34, tk->recipients->len);
    p = spool_token_put_str(rec + TOKEN_FIXED, tk->sender);
    p = spool_token_put_str(p, list);
    for (guint i = 0; i < tk->recipients->len; i++)
        p = spool_token_put_str(p, g_ptr_array_index(tk->recipients, i));
    return g_bytes_new_take(rec, size);
}

/* A field of an old record is used when both its name and its type match. */
static gboolean spool_token_field_is(const char *name, GVariant *value, const char *want,
                                     const char *type)
{
    return strcmp(name, want) == 0 && g_variant_is_of_type(value, G_VARIANT_TYPE(type));
}

/*
 * A record from before TOKEN_RECORD_V1, in one pass over its entries.
 * Unknown fields are skipped; a repeated one counts as its last instance.
 */
static void spool_token_decode_variant(const MDB_val *val, struct spool_token *tk)
{
    g_autoptr(GBytes) bytes = g_bytes_new(val->mv_data, val->mv_size);
    g_autoptr(GVariant) v = g_variant_ref_sink(
        g_variant_new_from_bytes(G_VARIANT_TYPE_VARDICT, bytes, FALSE));
    GVariantIter it;
    const char *name;
    GVariant *value;

    g_variant_iter_init(&it, v);
    while (g_variant_iter_loop(&it, "{&sv}", &name, &value)) {
        if (spool_token_field_is(name, value, "sender", "s")) {
            g_free(tk->sender);
            tk->sender = g_variant_dup_string(value, NULL);
        } else if (spool_token_field_is(name, value, "recipients", "as")) {
            g_autofree const char **strv = g_variant_get_strv(value, NULL);

            g_ptr_array_set_size(tk->recipients, 0);
            for (int i = 0; strv[i]; i++)
                g_ptr_array_add(tk->recipients, g_strdup(strv[i]));
        } else if (spool_token_field_is(name, value, "hide_sender", "b")) {
            tk->hide_sender = g_variant_get_boolean(value);
        } else if (spool_token_field_is(name, value, "created", "x")) {
            tk->created = g_variant_get_int64(value);
        } else if (spool_token_field_is(name, value, "expires", "x")) {
            tk->expires = g_variant_get_int64(value);
        } else if (spool_token_field_is(name, value, "used", "x")) {
            tk->used = g_variant_get_int64(value);
        } else if (spool_token_field_is(name, value, "used_by", "t")) {
            tk->used_by = g_variant_get_uint64(value);
        } else if (spool_token_field_is(name, value, "revoked", "b")) {
            tk->revoked = g_variant_get_boolean(value);
        } else if (spool_token_field_is(name, value, "list", "s")) {
            g_free(tk->list);
            tk->list = g_variant_dup_string(value, NULL);
        }
    }
    if (!tk->sender)
        tk->sender = g_strdup("");
    /* A record from before lists belongs to the default list. */
    if (!tk->list)
        tk->list = g_strdup(CONFIG_LIST_DEFAULT);
}

/* The next length-prefixed string of a record, or NULL past its end. */
static char *spool_token_take_str(const unsigned char **p, const unsigned char *end)
{
    size_t len;
    char *s;

    if (end - *p < 4 || (len = spool_get_be32(*p)) > (size_t)(end - *p) - 4)
        return NULL;
    s = g_strndup((const char *)*p + 4, len);
    *p += 4 + len;
    return s;
}

static gboolean spool_token_decode(const MDB_val *val, struct spool_token *tk, GError **err)
{
    const unsigned char *rec = val->mv_data, *end = rec + val->mv_size, *p = rec + TOKEN_FIXED;
    char id[TOKEN_ID_LEN + 1];
    uint32_t count;

    if (val->mv_size == 0 || rec[0] != TOKEN_RECORD_V1) {
        spool_token_decode_variant(val, tk);
        return TRUE;
    }
    if (val->mv_size < TOKEN_FIXED || !(tk->sender = spool_token_take_str(&p, end)) ||
        !(tk->list = spool_token_take_str(&p, end)))
        goto corrupt;
    tk->hide_sender = (rec[1] & TOKEN_F_HIDE_SENDER) != 0;
    tk->revoked = (rec[1] & TOKEN_F_REVOKED) != 0;
    tk->created = (int64_t)spool_get_be64(rec + 2);
    tk->expires = (int64_t)spool_get_be64(rec + 10);
    tk->used = (int64_t)spool_get_be64(rec + 18);
    tk->used_by = spool_get_be64(rec + 26);
    count = spool_get_be32(rec + 34);
    for (uint32_t i = 0; i < count; i++) {
        char *rcpt = spool_token_take_str(&p, end);

        if (!rcpt)
            goto corrupt;
        g_ptr_array_add(tk->recipients, rcpt);
    }
    if (p == end)
        return TRUE;
corrupt:
    spool_token_id(tk->hash, id);
    g_set_error(err, SPOOL_ERROR, SPOOL_ERR_CORRUPT, "token %s: malformed record", id);
    return FALSE;
}

gboolean spool_token_get(struct spool_txn *t, const unsigned char hash[TOKEN_HASH_LEN],
                         struct spool_token *tk, GError **err)
{
    MDB_val key = { TOKEN_HASH_LEN, (void *)hash }, val;
    int rc = mdb_get(spool_mdb_txn(t), spool_dbi(t->sp, DB_TOKENS), &key, &val);

    if (rc == MDB_NOTFOUND) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND, "no such token");
        return FALSE;
    }
    if (rc)
        return spool_mdb_fail(rc, "read token", err);
    spool_token_init(tk);
    memcpy(tk->hash, hash, TOKEN_HASH_LEN);
    if (!spool_token_decode(&val, tk, err)) {
        spool_token_clear(tk);
        return FALSE;
    }
    return TRUE;
}

/* "active" counts tokens neither used nor revoked; expiry is left to the reader. */
static const char *spool_token_counter(const struct spool_token *tk)
{
    return tk->used ? "tok.used" : tk->revoked ? "tok.revoked" : "tok.active";
}

static gboolean spool_token_put(struct spool_txn *t, const struct spool_token *tk, unsigned flags,
                          GError **err)
{
    g_autoptr(GBytes) rec = spool_token_encode(tk);
    MDB_val key = { TOKEN_HASH_LEN, (void *)tk->hash }, val;
    val.mv_data = (void *)g_bytes_get_data(rec, &val.mv_size);
    int rc = mdb_put(spool_mdb_txn(t), spool_dbi(t->sp, DB_TOKENS), &key, &val, flags);

    if (rc == MDB_KEYEXIST) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_INVALID, "token already registered");
        return FALSE;
    }
    if (rc)
        return spool_mdb_fail(rc, "store token", err);
    return spool_counter_add(t, spool_token_counter(tk), 1, err);
}

gboolean spool_token_insert(struct spool_txn *t, const struct spool_token *tk, GError **err)
{
    /* Keyed as the sender binding compares: any case of the owner finds it. */
    g_autofree char *owner = spool_token_addr_key(tk->sender);
    GByteArray *k = g_byte_array_new();
    MDB_val key, val = { 0, (void *)"" };
    int rc;

    if (!spool_token_put(t, tk, MDB_NOOVERWRITE, err)) {
        g_byte_array_unref(k);
        return FALSE;
    }
    g_byte_array_append(k, (const guint8 *)owner, (guint)strlen(owner) + 1);
    g_byte_array_append(k, tk->hash, TOKEN_HASH_LEN);
    key = (MDB_val){ k->len, k->data };
    /* An absurdly long address simply gets no notices. */
    rc = key.mv_size <= 511
             ? mdb_put(spool_mdb_txn(t), spool_dbi(t->sp, DB_TOKEN_FROM), &key, &val, 0) : 0;
    g_byte_array_unref(k);
    if (rc)
        return spool_mdb_fail(rc, "index token owner", err);
    return TRUE;
}

gboolean spool_token_update(struct spool_txn *t, const struct spool_token *tk, GError **err)
{
    struct spool_token old;

    if (!spool_token_get(t, tk->hash, &old, err))
        return FALSE;
    gboolean ok = spool_counter_add(t, spool_token_counter(&old), -1, err);
    spool_token_clear(&old);
    return ok && spool_token_put(t, tk, 0, err);
}

static gboolean spool_token_owner_indexed(struct spool_txn *t, const char *owner)
{
    MDB_cursor *cur;
    MDB_val key = { strlen(owner) + 1, (void *)owner }, val;
    gboolean found = FALSE;

    if (mdb_cursor_open(spool_mdb_txn(t), spool_dbi(t->sp, DB_TOKEN_FROM), &cur))
        return FALSE;
    if (mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE) == 0)
        found = key.mv_size == strlen(owner) + 1 + TOKEN_HASH_LEN &&
                memcmp(key.mv_data, owner, strlen(owner) + 1) == 0;
    mdb_cursor_close(cur);
    return found;
}

gboolean spool_token_owner_exists(struct spool_txn *t, const char *addr)
{
    g_autofree char *owner = spool_token_addr_key(addr);
    g_autofree char *as_before = spool_token_normalise_addr(addr);

    /* Entries written before the index was lowercased keep the local part's case. */
    return spool_token_owner_indexed(t, owner) ||
           (strcmp(owner, as_before) != 0 && spool_token_owner_indexed(t, as_before));
}

gboolean spool_token_foreach(struct spool_txn *t, spool_token_fn fn, void *ctx, GError **err)
{
    MDB_cursor *cur;
    MDB_val key, val;
    int rc;

    if ((rc = mdb_cursor_open(spool_mdb_txn(t), spool_dbi(t->sp, DB_TOKENS), &cur)))
        return spool_mdb_fail(rc, "open cursor", err);
    for (rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) {
        struct spool_token tk;
        gboolean go_on;

        if (key.mv_size != TOKEN_HASH_LEN)
            continue;
        spool_token_init(&tk);
        memcpy(tk.hash, key.mv_data, TOKEN_HASH_LEN);
        if (!spool_token_decode(&val, &tk, err)) {
            spool_token_clear(&tk);
            mdb_cursor_close(cur);
            return FALSE;
        }
        go_on = fn(&tk, ctx);
        spool_token_clear(&tk);
        if (!go_on)
            break;
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return spool_mdb_fail(rc, "scan tokens", err);
    return TRUE;
}

/*
 * Token ids are hex prefixes of the hash, so a prefix lookup is a range
 * scan from the prefix's bytes; it must match exactly one token.
 */
gboolean spool_token_find(struct spool_txn *t, const char *prefix_or_token,
                          struct spool_token *tk, GError **err)
{
    unsigned char hash[TOKEN_HASH_LEN] = { 0 }, start[TOKEN_HASH_LEN] = { 0 };
    size_t n = strlen(prefix_or_token);
    gboolean hex = n >= 4 && n <= 64;
    MDB_cursor *cur;
    MDB_val key, val;
    int rc, matches = 0;

    spool_token_hash(prefix_or_token, hash);
    if (spool_token_get(t, hash, tk, NULL))
        return TRUE;
    for (size_t i = 0; hex && i < n; i++)
        hex = g_ascii_isxdigit(prefix_or_token[i]);
    if (!hex) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND, "no such token");
        return FALSE;
    }
    for (size_t i = 0; i < n; i++)
        start[i / 2] |=
            (unsigned char)(g_ascii_xdigit_value(prefix_or_token[i]) << (i % 2 ? 0 : 4));
    if ((rc = mdb_cursor_open(spool_mdb_txn(t), spool_dbi(t->sp, DB_TOKENS), &cur)))
        return spool_mdb_fail(rc, "open cursor", err);
    key = (MDB_val){ TOKEN_HASH_LEN, start };
    for (rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE); rc == 0 && matches < 2;
         rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) {
        char id[2 * TOKEN_HASH_LEN + 1];
        for (int i = 0; i < TOKEN_HASH_LEN; i++)
            g_snprintf(id + 2 * i, 3, "%02x", ((unsigned char *)key.mv_data)[i]);
        if (g_ascii_strncasecmp(id, prefix_or_token, n) != 0)
            break;
        if (matches++ == 0)
            memcpy(hash, key.mv_data, TOKEN_HASH_LEN);
    }
    mdb_cursor_close(cur);
    if (matches != 1) {
        g_set_error(err, SPOOL_ERROR, SPOOL_ERR_NOT_FOUND,
                    matches ? "token id %s is ambiguous: give more digits" : "no token %s",
                    prefix_or_token);
        return FALSE;
    }
    return spool_token_get(t, hash, tk, err);
}
