/*
 * DKIM canonicalisation, relaxed (RFC 6376 §3.4.2, §3.4.4), and the header
 * field iterator. Pure: no I/O, no global state; the body hash is the only
 * function that touches libcrypto, as a sink for the canonical bytes.
 */

#include <string.h>
#include <openssl/evp.h>

#include "transform/dkim.h"

/*
 * Canonical body bytes are produced a word at a time. They are gathered in a
 * fixed buffer and handed to the sink in large blocks, so that a hash update
 * or string append is paid per few KiB rather than per word, and so that the
 * body hash never needs a canonical copy of a large body.
 */
struct canon_out {
    void (*flush)(void *ctx, const char *data, size_t len);
    void *ctx;
    size_t len;
    char buf[8192];
};

static inline gboolean is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* g_ascii_tolower() is a call per byte; this runs on every signed field. */
static inline char ascii_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c + ('a' - 'A')) : c;
}

static void out_flush(struct canon_out *o)
{
    if (o->len > 0)
        o->flush(o->ctx, o->buf, o->len);
    o->len = 0;
}

static void out_put(struct canon_out *o, const char *data, size_t len)
{
    if (len > sizeof(o->buf) - o->len) {
        out_flush(o);
        /* A word longer than the buffer goes straight to the sink. */
        if (len > sizeof(o->buf)) {
            o->flush(o->ctx, data, len);
            return;
        }
    }
    memcpy(o->buf + o->len, data, len);
    o->len += len;
}

/* ---- Header fields ------------------------------------------------------ */

gboolean dkim_field_next(const char *block, size_t len, size_t *pos,
                         struct dkim_field *field)
{
    const char *start = block + *pos;
    const char *end = block + len;
    const char *p = start;
    const char *line_end;
    const char *colon;

    if (p >= end || *p == '\n' || (*p == '\r' && p + 1 < end && p[1] == '\n'))
        return FALSE;

    /*
     * The field runs to the first line end not followed by WSP: a following
     * line starting with SP or HTAB is a fold, part of this field.
     */
    for (;;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));

        if (nl == NULL) {
            line_end = p = end;
            break;
        }
        line_end = (nl > p && nl[-1] == '\r') ? nl - 1 : nl;
        p = nl + 1;
        if (p >= end || !is_wsp(*p))
            break;
    }
    *pos = (size_t)(p - block);

    colon = memchr(start, ':', (size_t)(line_end - start));
    if (colon == NULL || memchr(start, '\n', (size_t)(colon - start))) {
        field->name = start;
        field->name_len = (size_t)(line_end - start);
        field->value = NULL;
        field->value_len = 0;
        return TRUE;
    }
    field->name = start;
    field->name_len = (size_t)(colon - start);
    while (field->name_len > 0 && is_wsp(start[field->name_len - 1]))
        field->name_len--;
    field->value = colon + 1;
    field->value_len = (size_t)(line_end - field->value);
    return TRUE;
}

void dkim_canon_header_relaxed(const char *name, size_t name_len,
                               const char *value, size_t value_len,
                               GString *out)
{
    size_t base = out->len;
    const char *value_start;
    char *w;
    gboolean space = FALSE;

    while (name_len > 0 && is_wsp(name[name_len - 1]))
        name_len--;

    /*
     * The canonical form is never longer than name + ':' + value + CRLF:
     * grow once and write in place instead of appending byte by byte.
     */
    g_string_set_size(out, base + name_len + value_len + 3);
    w = out->str + base;
    for (size_t i = 0; i < name_len; i++)
        *w++ = ascii_lower(name[i]);
    *w++ = ':';
    value_start = w;

    /*
     * Unfolding removes the CR and LF of each fold; the WSP that follows
     * joins the run around it. A run becomes one SP only between two
     * non-WSP characters, which also drops WSP after the colon and at the
     * end of the value.
     */
    for (size_t i = 0; i < value_len; i++) {
        char c = value[i];

        if (c == '\r' || c == '\n')
            continue;
        if (is_wsp(c)) {
            space = TRUE;
            continue;
        }
        if (space && w != value_start)
            *w++ = ' ';
        space = FALSE;
        *w++ = c;
    }
    *w++ = '\r';
    *w++ = '\n';
    g_string_truncate(out, (size_t)(w - out->str));
}

/* ---- Body --------------------------------------------------------------- */

/*
 * Most lines of text are their own canonical form: not empty, no WSP at
 * either end, no tab, no two spaces in a row. Those go out whole, which
 * costs a few library scans instead of a copy per word.
 */
static gboolean line_canonical(const char *line, size_t len)
{
    return len > 0 && !is_wsp(line[0]) && !is_wsp(line[len - 1]) &&
           memchr(line, '\t', len) == NULL && memmem(line, len, "  ", 2) == NULL;
}

/* Any other line: each WSP run one SP, none at its end. */
static void canon_words(struct canon_out *o, const char *line, const char *p,
                        const char *line_end)
{
    if (p > line)
        out_put(o, " ", 1);
    while (p < line_end) {
        const char *word = p;

        while (p < line_end && !is_wsp(*p))
            p++;
        out_put(o, word, (size_t)(p - word));
        while (p < line_end && is_wsp(*p))
            p++;
        if (p < line_end)
            out_put(o, " ", 1);
    }
}

/*
 * One pass, line by line. Empty lines (after dropping their WSP) are only
 * counted: they are written when a non-empty line follows, and dropped at
 * the end of the body. An empty or all-empty-lines body thus canonicalises
 * to nothing (erratum 1384), and a final line without CRLF gets one.
 */
static void canon_body(const char *body, size_t len, struct canon_out *o)
{
    const char *p = body;
    const char *end = body + len;
    size_t empty = 0;

    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        const char *line_end = eol ? eol : end;
        const char *line = p;

        while (p < line_end && is_wsp(*p))
            p++;
        if (p == line_end) {
            empty++;
        } else {
            for (; empty > 0; empty--)
                out_put(o, "\r\n", 2);
            if (line_canonical(line, (size_t)(line_end - line)))
                out_put(o, line, (size_t)(line_end - line));
            else
                canon_words(o, line, p, line_end);
            out_put(o, "\r\n", 2);
        }
        p = eol ? eol + 2 : end;
    }
    out_flush(o);
}

static void flush_string(void *ctx, const char *data, size_t len)
{
    g_string_append_len(ctx, data, (gssize)len);
}

void dkim_canon_body_relaxed(const char *body, size_t len, GString *out)
{
    struct canon_out o = { .flush = flush_string, .ctx = out };

    canon_body(body, len, &o);
}

static void flush_digest(void *ctx, const char *data, size_t len)
{
    if (EVP_DigestUpdate(ctx, data, len) != 1)
        g_error("dkim: SHA-256 update failed");
}

/*
 * SHA-256 can only fail when memory runs out or libcrypto is broken; GLib
 * aborts on the former, so the latter is treated the same way rather than
 * handing back a hash that is not one.
 */
void dkim_body_hash(const char *body, size_t len,
                    unsigned char out[DKIM_HASH_LEN])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    struct canon_out o = { .flush = flush_digest, .ctx = md };
    unsigned int out_len = 0;

    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        g_error("dkim: SHA-256 unavailable");
    canon_body(body, len, &o);
    if (EVP_DigestFinal_ex(md, out, &out_len) != 1 || out_len != DKIM_HASH_LEN)
        g_error("dkim: SHA-256 final failed");
    EVP_MD_CTX_free(md);
}
