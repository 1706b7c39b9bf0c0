/*
 * fuzz_dkim_canon - the pure part of transform/dkim.h: the header field
 * iterator dkim_field_next, relaxed header and body canonicalisation, and
 * dkim_body_hash.
 *
 * The input is a message: its fields go through dkim_field_next and
 * dkim_canon_header_relaxed, the rest (after the blank line) through the
 * body canonicaliser. Checked: the iterator advances and stays inside the
 * block; canonical headers are one CRLF line with single SPs in the value;
 * canonical bodies end in one CRLF and no empty line, hold no tab, no run
 * of SPs and no SP before a CRLF; canonicalising twice changes nothing; the
 * streaming body hash equals SHA-256 of the canonical body.
 */
#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>

#include "transform/dkim.h"
#include "fuzz_util.h"

static void check_header(const struct dkim_field *f, const char *block, size_t len)
{
    GString *out = g_string_new(NULL);
    const char *colon, *v;
    size_t vlen;

    FUZZ_CHECK(f->name >= block && f->name + f->name_len <= block + len, "name outside");
    if (f->value == NULL) {         /* malformed line: nothing to canonicalise */
        g_string_free(out, TRUE);
        return;
    }
    FUZZ_CHECK(f->value > f->name && f->value + f->value_len <= block + len, "value outside");
    FUZZ_CHECK(!memchr(f->name, ':', f->name_len) && !memchr(f->name, '\n', f->name_len),
               "':' or LF in the field name");

    g_string_append(out, "junk");   /* appends: what was there stays */
    dkim_canon_header_relaxed(f->name, f->name_len, f->value, f->value_len, out);
    FUZZ_CHECK(strncmp(out->str, "junk", 4) == 0, "existing content changed");
    FUZZ_CHECK(out->len >= 7 && out->str[out->len - 2] == '\r' && out->str[out->len - 1] == '\n',
               "no final CRLF");
    FUZZ_CHECK(memchr(out->str, '\n', out->len - 1) == NULL, "LF inside a canonical header");
    colon = memchr(out->str + 4, ':', out->len - 4);
    FUZZ_CHECK(colon != NULL, "no colon");
    for (const char *p = out->str + 4; p < colon; p++)
        FUZZ_CHECK(!g_ascii_isupper(*p), "name not lower case");
    v = colon + 1;
    vlen = (size_t)(out->str + out->len - 2 - v);
    FUZZ_CHECK(!memchr(v, '\r', vlen) && !memchr(v, '\t', vlen), "CR or tab in value");
    FUZZ_CHECK(vlen == 0 || (v[0] != ' ' && v[vlen - 1] != ' '), "blank at value ends");
    FUZZ_CHECK(!g_strstr_len(v, (gssize)vlen, "  "), "SP run in value");
    g_string_free(out, TRUE);
}

static void check_body(const char *body, size_t len)
{
    GString *canon = g_string_new(NULL);
    GString *twice = g_string_new(NULL);
    unsigned char bh[DKIM_HASH_LEN], expect[DKIM_HASH_LEN];
    unsigned int elen = 0;
    const char *c;

    dkim_canon_body_relaxed(body, len, canon);
    c = canon->str;
    if (canon->len > 0) {
        FUZZ_CHECK(canon->len >= 2 && c[canon->len - 2] == '\r' && c[canon->len - 1] == '\n',
                   "canonical body does not end in CRLF");
        FUZZ_CHECK(canon->len < 4 || !(c[canon->len - 4] == '\r' && c[canon->len - 3] == '\n'),
                   "empty line at the end");
        FUZZ_CHECK(canon->len > 2 || len > 0, "CRLF out of nothing");
    }
    FUZZ_CHECK(!memchr(c, '\t', canon->len), "tab left");
    FUZZ_CHECK(!g_strstr_len(c, (gssize)canon->len, "  "), "SP run left");
    FUZZ_CHECK(!g_strstr_len(c, (gssize)canon->len, " \r\n"), "SP at a line end");
    FUZZ_CHECK(canon->len <= len + 2, "canonical body %zu > %zu + 2", canon->len, len);

    dkim_canon_body_relaxed(canon->str, canon->len, twice);
    FUZZ_CHECK(twice->len == canon->len && memcmp(twice->str, canon->str, canon->len) == 0,
               "canonicalisation not idempotent");

    dkim_body_hash(body, len, bh);
    FUZZ_CHECK(EVP_Digest(canon->str, canon->len, expect, &elen, EVP_sha256(), NULL) == 1,
               "SHA-256");
    FUZZ_CHECK(memcmp(bh, expect, DKIM_HASH_LEN) == 0, "streaming body hash differs");
    g_string_free(canon, TRUE);
    g_string_free(twice, TRUE);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *block = fuzz_dup(data, size);
    struct dkim_field f;
    size_t pos = 0, prev = 0, fields = 0;

    while (dkim_field_next(block, size, &pos, &f)) {
        FUZZ_CHECK(pos > prev && pos <= size, "iterator at %zu after %zu (size %zu)", pos, prev,
                   size);
        FUZZ_CHECK(f.name == block + prev, "field does not start where the last ended");
        check_header(&f, block, size);
        prev = pos;
        FUZZ_CHECK(++fields <= size, "more fields than bytes");
    }
    FUZZ_CHECK(pos == prev && pos <= size, "iterator moved at the end");

    /* The body: after the separator line, if there is one; else all of it. */
    if (pos < size) {
        size_t sep = block[pos] == '\n' ? 1 : 2;
        check_body(block + pos + sep, size - pos - sep);
    } else {
        check_body(block, size);
    }
    free(block);
    return 0;
}
