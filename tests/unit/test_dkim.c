/*
 * Unit tests for the DKIM module: canonicalisation edge cases, the field
 * iterator, keys and their files, signature header contents. Verification
 * by an independent verifier is in tests/integration/dkim_verify.py.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <glib/gstdio.h>
#include <openssl/pem.h>

#include "transform/dkim.h"

/* Keys are generated once for the whole run: RSA generation is slow. */
static char *tmp_dir;
static struct dkim_key *rsa_key;
static struct dkim_key *ed_key;

static char *tmp_path(const char *name)
{
    return g_build_filename(tmp_dir, name, NULL);
}

static int group_setup(void **state)
{
    GError *err = NULL;
    char *rsa = NULL, *ed = NULL;

    tmp_dir = g_dir_make_tmp("test_dkim.XXXXXX", &err);
    if (tmp_dir != NULL) {
        rsa = tmp_path("rsa.pem");
        ed = tmp_path("ed.pem");
        rsa_key = dkim_keygen(DKIM_KEY_RSA, "rsa2026", rsa, &err);
        if (rsa_key != NULL)
            ed_key = dkim_keygen(DKIM_KEY_ED25519, "ed2026", ed, &err);
    }
    g_free(rsa);
    g_free(ed);
    if (err != NULL) {
        fprintf(stderr, "setup: %s\n", err->message);
        g_error_free(err);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    GDir *dir = g_dir_open(tmp_dir, 0, NULL);
    const char *name;

    while (dir != NULL && (name = g_dir_read_name(dir)) != NULL) {
        char *path = tmp_path(name);

        g_unlink(path);
        g_free(path);
    }
    if (dir != NULL)
        g_dir_close(dir);
    g_rmdir(tmp_dir);
    g_free(tmp_dir);
    dkim_key_free(rsa_key);
    dkim_key_free(ed_key);
    return 0;
}

/* ---- Body canonicalisation ---------------------------------------------- */

static void assert_body(const char *in, size_t len, const char *want)
{
    GString *out = g_string_new(NULL);

    dkim_canon_body_relaxed(in, len, out);
    assert_int_equal(out->len, strlen(want));
    assert_memory_equal(out->str, want, out->len);
    g_string_free(out, TRUE);
}

#define BODY(in, want) assert_body(in, sizeof(in) - 1, want)

static void body_empty(void **state)
{
    BODY("", "");                          /* erratum 1384: no CRLF added */
    BODY("\r\n", "");
    BODY("\r\n\r\n\r\n", "");              /* only CRLFs */
    BODY(" \t\r\n\t\r\n   ", "");          /* only WSP lines */
}

static void body_trailing_lines(void **state)
{
    BODY("a\r\n\r\n\r\n", "a\r\n");
    BODY("a\r\n \r\n\t\t\r\n", "a\r\n");   /* WSP-only lines are empty */
    BODY("a\r\n\r\n\r\nb\r\n\r\n", "a\r\n\r\n\r\nb\r\n"); /* inner kept */
}

static void body_wsp(void **state)
{
    BODY("a  b\t\tc \t d\r\n", "a b c d\r\n");
    BODY("a b \t \r\n", "a b\r\n");        /* trailing WSP dropped */
    BODY("  \tindented\r\n", " indented\r\n"); /* leading run kept as SP */
    BODY("x\r\n\t\r\ny\r\n", "x\r\n\r\ny\r\n");
}

static void body_missing_final_crlf(void **state)
{
    BODY("a", "a\r\n");
    BODY("a\r\nb  ", "a\r\nb\r\n");
    BODY("a\r\n  ", "a\r\n");              /* unterminated WSP: empty */
    BODY("a\nb\rc", "a\nb\rc\r\n");        /* lone LF / CR are content */
}

/* Words and bodies larger than the internal buffer take other paths. */
static void body_large(void **state)
{
    GString *in = g_string_new(NULL);
    GString *want = g_string_new(NULL);
    GString *out = g_string_new(NULL);

    for (int i = 0; i < 3000; i++) {
        g_string_append(in, "word  \t");
        g_string_append(want, i ? " word" : "word");
    }
    g_string_append(in, "\r\n");
    g_string_append(want, "\r\n");
    g_string_append_c(in, ' ');
    g_string_append_c(want, ' ');
    for (int i = 0; i < 20000; i++) {
        g_string_append_c(in, 'x');
        g_string_append_c(want, 'x');
    }
    g_string_append(in, " \r\n\r\n");
    g_string_append(want, "\r\n");
    dkim_canon_body_relaxed(in->str, in->len, out);
    assert_int_equal(out->len, want->len);
    assert_memory_equal(out->str, want->str, want->len);
    g_string_free(in, TRUE);
    g_string_free(want, TRUE);
    g_string_free(out, TRUE);
}

static void assert_bh(const char *body, const char *want_b64)
{
    unsigned char bh[DKIM_HASH_LEN];
    char *b64;

    dkim_body_hash(body, strlen(body), bh);
    b64 = g_base64_encode(bh, sizeof(bh));
    assert_string_equal(b64, want_b64);
    g_free(b64);
}

static void body_hash(void **state)
{
    /* SHA-256 of "" and of "a b\r\n". */
    assert_bh("", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
    assert_bh("\r\n\r\n", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
    assert_bh("a  b \r\n\r\n",
              "SuEZjyiTjUp1XHpGpmLw9XKayjy3FMrk431guExO6cw=");
}

/* ---- Header canonicalisation and fields --------------------------------- */

static void assert_header(const char *name, const char *value,
                          const char *want)
{
    GString *out = g_string_new("keep:");

    dkim_canon_header_relaxed(name, strlen(name), value, strlen(value), out);
    assert_string_equal(out->str + 5, want);
    assert_memory_equal(out->str, "keep:", 5);
    g_string_free(out, TRUE);
}

static void header_relaxed(void **state)
{
    assert_header("Subject", " \t hello   world \t", "subject:hello world\r\n");
    assert_header("CoNtEnT-TyPe", " text/plain", "content-type:text/plain\r\n");
    assert_header("Subject \t", " x", "subject:x\r\n");   /* WSP before ':' */
    assert_header("X", "", "x:\r\n");
    assert_header("X", "  \t ", "x:\r\n");
}

static void header_folded(void **state)
{
    assert_header("To", " a@b,\r\n\tc@d,\r\n   e@f  \r\n ",
                  "to:a@b, c@d, e@f\r\n");
    assert_header("Subject", "\r\n next line", "subject:next line\r\n");
}

static void fields_iterate(void **state)
{
    static const char block[] =
        "From: a@b\r\n"
        "Subject: one\r\n\ttwo\r\n"
        "X-Lf: bare\n"
        "NoColon\r\n"
        "Last : x";
    struct dkim_field f;
    size_t pos = 0;

    assert_true(dkim_field_next(block, sizeof(block) - 1, &pos, &f));
    assert_int_equal(f.name_len, 4);
    assert_memory_equal(f.value, " a@b", f.value_len);
    assert_true(dkim_field_next(block, sizeof(block) - 1, &pos, &f));
    assert_memory_equal(f.name, "Subject", f.name_len);
    assert_int_equal(f.value_len, strlen(" one\r\n\ttwo"));
    assert_memory_equal(f.value, " one\r\n\ttwo", f.value_len);
    assert_true(dkim_field_next(block, sizeof(block) - 1, &pos, &f));
    assert_memory_equal(f.value, " bare", f.value_len);
    assert_true(dkim_field_next(block, sizeof(block) - 1, &pos, &f));
    assert_null(f.value);
    assert_memory_equal(f.name, "NoColon", f.name_len);
    assert_true(dkim_field_next(block, sizeof(block) - 1, &pos, &f));
    assert_memory_equal(f.name, "Last", f.name_len);   /* WSP trimmed */
    assert_memory_equal(f.value, " x", f.value_len);
    assert_false(dkim_field_next(block, sizeof(block) - 1, &pos, &f));
}

static void fields_stop_at_blank_line(void **state)
{
    static const char msg[] = "A: 1\r\n\r\nB: 2\r\n";
    struct dkim_field f;
    size_t pos = 0;

    assert_true(dkim_field_next(msg, sizeof(msg) - 1, &pos, &f));
    assert_false(dkim_field_next(msg, sizeof(msg) - 1, &pos, &f));
    pos = 0;
    assert_false(dkim_field_next("", 0, &pos, &f));
}

static void dns_names(void **state)
{
    assert_true(dkim_dns_name_valid("abakus.no"));
    assert_true(dkim_dns_name_valid("ed2026"));
    assert_true(dkim_dns_name_valid("a-b.c1.example"));
    assert_false(dkim_dns_name_valid(""));
    assert_false(dkim_dns_name_valid(NULL));
    assert_false(dkim_dns_name_valid("a..b"));
    assert_false(dkim_dns_name_valid(".a"));
    assert_false(dkim_dns_name_valid("a."));
    assert_false(dkim_dns_name_valid("-a"));
    assert_false(dkim_dns_name_valid("a-.b"));
    assert_false(dkim_dns_name_valid("a;b"));
    assert_false(dkim_dns_name_valid("a\r\nb"));
}

/* ---- Keys --------------------------------------------------------------- */

static void assert_error_names(GError *err, const char *path)
{
    assert_non_null(err);
    assert_non_null(strstr(err->message, path));
    g_error_free(err);
}

static void key_mode_refused(void **state)
{
    char *path = tmp_path("lax.pem");
    GError *err = NULL;
    struct dkim_key *key = dkim_keygen(DKIM_KEY_ED25519, NULL, path, &err);
    struct stat st;

    assert_non_null(key);
    dkim_key_free(key);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    assert_int_equal(chmod(path, 0644), 0);
    assert_null(dkim_key_load("sel", path, &err));
    assert_non_null(strstr(err->message, "0644"));
    assert_error_names(err, path);
    err = NULL;
    assert_int_equal(chmod(path, 0640), 0);
    assert_null(dkim_key_load("sel", path, &err));
    assert_error_names(err, path);
    err = NULL;
    assert_int_equal(chmod(path, 0600), 0);
    key = dkim_key_load("sel", path, &err);
    assert_non_null(key);
    assert_int_equal(key->type, DKIM_KEY_ED25519);
    dkim_key_free(key);
    g_free(path);
}

static void key_bad_files(void **state)
{
    char *missing = tmp_path("missing.pem");
    char *junk = tmp_path("junk.pem");
    char *ec = tmp_path("ec.pem");
    EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    GError *err = NULL;
    FILE *fp;

    assert_null(dkim_key_load("sel", missing, &err));
    assert_error_names(err, missing);
    err = NULL;

    assert_true(g_file_set_contents(junk, "not a key\n", -1, NULL));
    assert_int_equal(chmod(junk, 0600), 0);
    assert_null(dkim_key_load("sel", junk, &err));
    assert_error_names(err, junk);
    err = NULL;

    assert_non_null(pkey);
    assert_non_null(fp = fopen(ec, "w"));
    assert_int_equal(fchmod(fileno(fp), 0600), 0);
    assert_true(PEM_write_PrivateKey(fp, pkey, NULL, NULL, 0, NULL, NULL));
    fclose(fp);
    EVP_PKEY_free(pkey);
    assert_null(dkim_key_load("sel", ec, &err));
    assert_non_null(strstr(err->message, "RSA or Ed25519"));
    assert_error_names(err, ec);
    err = NULL;

    assert_null(dkim_key_load("bad;sel", rsa_key->path, &err));
    assert_non_null(err);
    g_error_free(err);
    g_free(missing);
    g_free(junk);
    g_free(ec);
}

static void keygen_no_overwrite(void **state)
{
    GError *err = NULL;
    char *before = NULL, *after = NULL;

    assert_true(g_file_get_contents(ed_key->path, &before, NULL, NULL));
    assert_null(dkim_keygen(DKIM_KEY_ED25519, NULL, ed_key->path, &err));
    assert_error_names(err, ed_key->path);
    assert_true(g_file_get_contents(ed_key->path, &after, NULL, NULL));
    assert_string_equal(before, after);
    assert_non_null(strstr(before, "-----BEGIN PRIVATE KEY-----")); /* PKCS#8 */
    g_free(before);
    g_free(after);
}

static void keys_load_spec(void **state)
{
    char *spec = g_strdup_printf(" rsa2026:%s ,ed2026 : %s, ",
                                 rsa_key->path, ed_key->path);
    char *dup = g_strdup_printf("a:%s, a:%s", rsa_key->path, ed_key->path);
    GError *err = NULL;
    GPtrArray *keys = dkim_keys_load(spec, &err);
    struct dkim_key *k;

    assert_non_null(keys);
    assert_int_equal(keys->len, 2);
    k = keys->pdata[1];
    assert_string_equal(k->selector, "ed2026");
    assert_string_equal(k->path, ed_key->path);
    assert_int_equal(k->type, DKIM_KEY_ED25519);
    g_ptr_array_free(keys, TRUE);

    assert_null(dkim_keys_load(dup, &err));
    assert_non_null(strstr(err->message, "twice"));
    g_clear_error(&err);
    assert_null(dkim_keys_load("nocolon", &err));
    g_clear_error(&err);
    assert_null(dkim_keys_load(" , ", &err));
    g_clear_error(&err);
    g_free(spec);
    g_free(dup);
}

static void dns_records(void **state)
{
    char *ed = dkim_dns_record(ed_key);
    char *rsa = dkim_dns_record(rsa_key);
    const char *p;
    gsize len;
    guchar *raw;

    assert_true(g_str_has_prefix(ed, "v=DKIM1; k=ed25519; p="));
    p = ed + strlen("v=DKIM1; k=ed25519; p=");
    assert_int_equal(strlen(p), 44);
    raw = g_base64_decode(p, &len);
    assert_int_equal(len, 32);
    g_free(raw);
    /* SPKI DER of an RSA-2048 key: SEQUENCE, 294 bytes. */
    assert_true(g_str_has_prefix(rsa, "v=DKIM1; k=rsa; p=MIIBIjAN"));
    g_free(ed);
    g_free(rsa);
}

/* ---- Signing ------------------------------------------------------------ */

static const char headers[] =
    "Subject: one\r\n"
    "From: Postern <restricted@abakus.no>\r\n"
    "To: a@example.org,\r\n b@example.org\r\n"
    "X-Unsigned: x\r\n"
    "Subject: two\r\n"
    "Message-ID: <1@abakus.no>\r\n";

static char *sign_headers(const struct dkim_key *key, const char *block,
                          GError **err)
{
    unsigned char bh[DKIM_HASH_LEN];

    dkim_body_hash("body\r\n", 6, bh);
    return dkim_sign(key, "abakus.no", block, strlen(block), bh, 1763938035,
                     err);
}

/* The header without folds, spaces or final CRLF, for looking at tags. */
static char *flatten(const char *sig)
{
    char *flat = g_strdup(sig);
    char *w = flat;

    for (const char *r = sig; *r != '\0'; r++)
        if (!g_ascii_isspace(*r))
            *w++ = *r;
    *w = '\0';
    return flat;
}

/* The b= tag: the only "b=" after a space or a fold (bh= has an 'h', and
 * base64 padding follows a base64 character). */
static const char *b_tag(const char *sig)
{
    const char *b = sig;

    while ((b = strstr(b + 1, "b=")) != NULL && b[-1] != ' ' && b[-1] != '\t')
        ;
    assert_non_null(b);
    return b;
}

static void assert_signature(const char *sig, const char *algorithm,
                             const char *selector)
{
    char **lines = g_strsplit(sig, "\r\n", -1);
    char *flat = flatten(sig);
    char *want;

    assert_true(g_str_has_suffix(sig, "\r\n"));
    for (char **l = lines; *l != NULL; l++) {
        assert_true(strlen(*l) < 78);
        assert_true(l == lines || **l == '\t' || **l == '\0');
    }
    assert_true(g_str_has_prefix(sig, "DKIM-Signature: v=1; "));
    want = g_strdup_printf("DKIM-Signature:v=1;a=%s;c=relaxed/relaxed;"
                           "d=abakus.no;s=%s;t=1763938035;"
                           /* Each name once more than present, absent
                            * ones too: none can be added on top. */
                           "h=From:From:Subject:Subject:Subject:"
                           "Date:Message-ID:Message-ID:Reply-To:Sender:"
                           "MIME-Version:Content-Type:"
                           "Content-Transfer-Encoding:To:To:List-Unsubscribe:"
                           "List-Unsubscribe-Post;bh=",
                           algorithm, selector);
    assert_true(g_str_has_prefix(flat, want));
    g_free(want);
    assert_non_null(strstr(flat, ";b="));
    g_free(flat);
    g_strfreev(lines);
}

static void sign_rsa(void **state)
{
    GError *err = NULL;
    char *sig = sign_headers(rsa_key, headers, &err);
    char *b;

    assert_non_null(sig);
    assert_signature(sig, "rsa-sha256", "rsa2026");
    /* 256 signature bytes are 344 base64 chars. */
    b = flatten(b_tag(sig));
    assert_int_equal(strlen(b), strlen("b=") + 344);
    g_free(b);
    g_free(sig);
}

/*
 * Ed25519 signatures are deterministic and easy to check here: rebuild the
 * canonical header data the way RFC 6376 §5.4.2 orders it (From, To, then
 * the two Subjects bottom-up, Message-ID, then the signature field with b=
 * empty) and verify with libcrypto directly. The wrong Subject order fails.
 */
static gboolean ed_verifies(const char *sig, const char *canon_fields)
{
    GString *data = g_string_new(canon_fields);
    const char *b = b_tag(sig) + 2;
    unsigned char digest[DKIM_HASH_LEN];
    guchar *raw;
    gsize raw_len;
    char *flat;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    gboolean ok;

    dkim_canon_header_relaxed("DKIM-Signature", 14, sig + 15,
                              (size_t)(b - sig) - 15, data);
    g_string_truncate(data, data->len - 2);
    EVP_Digest(data->str, data->len, digest, NULL, EVP_sha256(), NULL);
    flat = flatten(b);
    raw = g_base64_decode(flat, &raw_len);
    ok = EVP_DigestVerifyInit(md, NULL, NULL, NULL, ed_key->pkey) == 1 &&
         EVP_DigestVerify(md, raw, raw_len, digest, sizeof(digest)) == 1;
    EVP_MD_CTX_free(md);
    g_free(raw);
    g_free(flat);
    g_string_free(data, TRUE);
    return ok;
}

static void sign_ed25519_bottom_up(void **state)
{
    static const char *const canon_from = "from:Postern <restricted@abakus.no>\r\n";
    static const char *const canon_id_to =
        "message-id:<1@abakus.no>\r\nto:a@example.org, b@example.org\r\n";
    GError *err = NULL;
    char *sig = sign_headers(ed_key, headers, &err);
    char *right, *wrong;

    assert_non_null(sig);
    assert_signature(sig, "ed25519-sha256", "ed2026");
    right = g_strconcat(canon_from, "subject:two\r\nsubject:one\r\n", canon_id_to, NULL);
    wrong = g_strconcat(canon_from, "subject:one\r\nsubject:two\r\n", canon_id_to, NULL);
    assert_true(ed_verifies(sig, right));
    assert_false(ed_verifies(sig, wrong));
    g_free(right);
    g_free(wrong);
    g_free(sig);
}

static void sign_refusals(void **state)
{
    unsigned char bh[DKIM_HASH_LEN] = { 0 };
    GError *err = NULL;

    assert_null(sign_headers(ed_key, "To: a@b\r\nSubject: x\r\n", &err));
    assert_non_null(strstr(err->message, "From"));
    g_clear_error(&err);
    assert_null(sign_headers(ed_key, "From: a@b\r\nbroken line\r\n", &err));
    g_clear_error(&err);
    assert_null(dkim_sign(ed_key, "abakus.no;x=1", headers, strlen(headers),
                          bh, 0, &err));
    g_clear_error(&err);
}

/*
 * The straightforward signature of a copy, as the transform made it before
 * the common header was prepared once a message: the whole canonical data
 * (fields, then the signature field up to b=) hashed and signed in one
 * EVP_DigestSign() call. Returns its base64.
 */
static char *reference_b64(const struct dkim_key *key, const char *sig,
                           const char *canon_fields)
{
    GString *data = g_string_new(canon_fields);
    const char *b = b_tag(sig) + 2;
    unsigned char digest[DKIM_HASH_LEN];
    unsigned char raw[DKIM_SIG_MAX];
    size_t raw_len = sizeof(raw);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    char *b64;

    dkim_canon_header_relaxed("DKIM-Signature", 14, sig + 15,
                              (size_t)(b - sig) - 15, data);
    g_string_truncate(data, data->len - 2);
    if (key->type == DKIM_KEY_RSA) {
        assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL,
                                            key->pkey), 1);
        assert_int_equal(EVP_DigestSign(md, raw, &raw_len,
                                        (const unsigned char *)data->str,
                                        data->len), 1);
    } else {
        EVP_Digest(data->str, data->len, digest, NULL, EVP_sha256(), NULL);
        assert_int_equal(EVP_DigestSignInit(md, NULL, NULL, NULL, key->pkey),
                         1);
        assert_int_equal(EVP_DigestSign(md, raw, &raw_len, digest,
                                        sizeof(digest)), 1);
    }
    b64 = g_base64_encode(raw, raw_len);
    EVP_MD_CTX_free(md);
    g_string_free(data, TRUE);
    return b64;
}

/* dkim_sign_copy(h of `common`, top) must be dkim_sign(top + common). */
static char *assert_copy_same(const struct dkim_key *key, const char *top,
                              const char *common)
{
    unsigned char bh[DKIM_HASH_LEN];
    char *whole = g_strconcat(top, common, NULL);
    char *direct, *copy;
    struct dkim_header *h = dkim_header_new(common, strlen(common), NULL);

    assert_non_null(h);
    dkim_body_hash("body\r\n", 6, bh);
    direct = dkim_sign(key, "abakus.no", whole, strlen(whole), bh,
                       1763938035, NULL);
    copy = dkim_sign_copy(key, "abakus.no", h, top, strlen(top), bh,
                          1763938035, NULL);
    assert_non_null(direct);
    assert_string_equal(copy, direct);
    dkim_header_free(h);
    g_free(direct);
    g_free(whole);
    return copy;
}

/*
 * A copy signed from the prepared common header (the SHA-256 state of its
 * fields before To: kept, the rest canonicalised once, RSA signing the digest) is byte
 * for byte the signature of the straightforward path: the whole block
 * canonicalised and signed in one EVP_DigestSign(). The copy's To: lies
 * above the common header's, so bottom-up it is hashed after it. A top
 * with a From, which the kept state cannot cover, and an empty top take
 * the other paths.
 */
static void sign_copy_same_bytes(void **state)
{
    static const char top[] =
        "To: c@example.org\r\nList-Unsubscribe: <https://abakus.no/u>\r\n";
    static const char canon[] =
        "from:Postern <restricted@abakus.no>\r\n"
        "subject:two\r\nsubject:one\r\nmessage-id:<1@abakus.no>\r\n"
        "to:a@example.org, b@example.org\r\nto:c@example.org\r\n"
        "list-unsubscribe:<https://abakus.no/u>\r\n";
    const struct dkim_key *keys[] = { rsa_key, ed_key };

    for (guint i = 0; i < G_N_ELEMENTS(keys); i++) {
        char *sig = assert_copy_same(keys[i], top, headers);
        char *want = reference_b64(keys[i], sig, canon);
        char *got = flatten(b_tag(sig) + 2);

        assert_string_equal(got, want);
        g_free(got);
        g_free(want);
        g_free(sig);
        g_free(assert_copy_same(keys[i], "From: <x@abakus.no>\r\n"
                                "Subject: three\r\n", headers));
        g_free(assert_copy_same(keys[i], "", headers));
        /* The From may come from the top alone. */
        g_free(assert_copy_same(keys[i], "From: <x@abakus.no>\r\n",
                                "Subject: s\r\n"));
    }
}

static void sign_copy_refusals(void **state)
{
    static const char broken[] = "From: a@b\r\nbroken\r\n";
    unsigned char bh[DKIM_HASH_LEN] = { 0 };
    GError *err = NULL;
    struct dkim_header *h;

    assert_null(dkim_header_new(broken, strlen(broken), &err));
    assert_non_null(strstr(err->message, "broken"));
    g_clear_error(&err);
    h = dkim_header_new("Subject: x\r\n", 12, &err);
    assert_non_null(h);
    assert_null(dkim_sign_copy(ed_key, "abakus.no", h, "To: a@b\r\n", 9, bh,
                               0, &err));
    assert_non_null(strstr(err->message, "From"));
    g_clear_error(&err);
    assert_null(dkim_sign_copy(ed_key, "abakus.no", h, "bad\r\n", 5, bh, 0,
                               &err));
    assert_non_null(strstr(err->message, "bad"));
    g_clear_error(&err);
    dkim_header_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(body_empty),
        cmocka_unit_test(body_trailing_lines),
        cmocka_unit_test(body_wsp),
        cmocka_unit_test(body_missing_final_crlf),
        cmocka_unit_test(body_large),
        cmocka_unit_test(body_hash),
        cmocka_unit_test(header_relaxed),
        cmocka_unit_test(header_folded),
        cmocka_unit_test(fields_iterate),
        cmocka_unit_test(fields_stop_at_blank_line),
        cmocka_unit_test(dns_names),
        cmocka_unit_test(key_mode_refused),
        cmocka_unit_test(key_bad_files),
        cmocka_unit_test(keygen_no_overwrite),
        cmocka_unit_test(keys_load_spec),
        cmocka_unit_test(dns_records),
        cmocka_unit_test(sign_rsa),
        cmocka_unit_test(sign_ed25519_bottom_up),
        cmocka_unit_test(sign_refusals),
        cmocka_unit_test(sign_copy_same_bytes),
        cmocka_unit_test(sign_copy_refusals),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
