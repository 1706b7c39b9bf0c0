/*
 * Unit tests of the MIME transform: token extraction, header rewrite,
 * footer, serialisation, and robustness on malformed input.
 *
 * Messages live in tests/data/mime, found from this file's path. They are
 * stored with LF line ends and read with CRLF, as ingest stores them.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "transform/mime.h"
#include "tests/unit/test_data.h"

#define PREFIX "LEGOTOKEN"
#define URL "https://abakus.no/users/me/settings/notifications"
#define FOOTER_TEXT "Sendt av eirik@sylliaas.no \u2013 \u00f8\nAvmeld: " URL "\n"

static const struct rewrite_params params = {
    .from = "Abakus <no-reply@abakus.no>",
    .original_sender = "eirik@sylliaas.no",
    .footer = "Sendt av {sender} \u2013 \u00f8\nAvmeld: {unsubscribe_url}\n",
    .unsubscribe_url = URL,
    .message_id_domain = "abakus.no",
    .date = 1763938035,
};

/* ---- helpers ----------------------------------------------------------- */

static GMimeMessage *parse_string(const char *raw)
{
    GMimeMessage *msg = mime_parse(raw, strlen(raw), NULL);

    assert_non_null(msg);
    return msg;
}

/* tests/data/mime/name, bare LF made CRLF. */
static GBytes *read_data(const char *name)
{
    return test_data_crlf("mime", name);
}

static GMimeMessage *load(const char *name)
{
    GBytes *raw = read_data(name);
    gsize   len;
    const char *data = g_bytes_get_data(raw, &len);
    GError *err = NULL;
    GMimeMessage *msg = mime_parse(data, len, &err);

    assert_null(err);
    assert_non_null(msg);
    g_bytes_unref(raw);
    return msg;
}

static GMimeObject *body(GMimeMessage *msg)
{
    return g_mime_message_get_mime_part(msg);
}

static GMimeObject *child(GMimeObject *multipart, int i)
{
    assert_true(GMIME_IS_MULTIPART(multipart));
    assert_true(i < g_mime_multipart_get_count(GMIME_MULTIPART(multipart)));
    return g_mime_multipart_get_part(GMIME_MULTIPART(multipart), i);
}

static int count(GMimeObject *multipart)
{
    assert_true(GMIME_IS_MULTIPART(multipart));
    return g_mime_multipart_get_count(GMIME_MULTIPART(multipart));
}

static gboolean is_type(GMimeObject *obj, const char *type, const char *subtype)
{
    return g_mime_content_type_is_type(g_mime_object_get_content_type(obj), type, subtype);
}

/* Transfer-decoded content of a leaf, NUL-terminated. */
static char *decoded(GMimeObject *part)
{
    GByteArray *bytes = g_byte_array_new();
    GMimeStream *sink = g_mime_stream_mem_new_with_byte_array(bytes);

    g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(sink), FALSE);
    g_mime_data_wrapper_write_to_stream(g_mime_part_get_content(GMIME_PART(part)), sink);
    g_object_unref(sink);
    g_byte_array_append(bytes, (const guint8 *) "", 1);
    return (char *) g_byte_array_free(bytes, FALSE);
}

/* Text of a text part as UTF-8 with LF line ends. */
static char *text(GMimeObject *part)
{
    char   *utf8 = g_mime_text_part_get_text(GMIME_TEXT_PART(part));
    char  **lines = g_strsplit(utf8, "\r\n", -1);
    char   *lf = g_strjoinv("\n", lines);

    g_strfreev(lines);
    g_free(utf8);
    return lf;
}

static void assert_text(GMimeObject *part, const char *expected)
{
    char   *got = text(part);

    assert_string_equal(got, expected);
    g_free(got);
}

/* Every line ends CRLF, the last one too: no bare LF. */
static void assert_crlf(GBytes *out)
{
    gsize   len;
    const char *s = g_bytes_get_data(out, &len);

    assert_true(len >= 2);
    assert_memory_equal(s + len - 2, "\r\n", 2);
    for (gsize i = 0; i < len; i++)
        if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r'))
            fail_msg("bare LF at offset %zu", i);
}

/* Bare CR from the input is passed on: only well-formed input has none. */
static void assert_no_bare_cr(GBytes *out)
{
    gsize   len;
    const char *s = g_bytes_get_data(out, &len);

    for (gsize i = 0; i < len; i++)
        if (s[i] == '\r' && (i + 1 == len || s[i + 1] != '\n'))
            fail_msg("bare CR at offset %zu", i);
}

/* The header block of a rewritten message, NUL-terminated. */
static char *header_block(GBytes *out)
{
    gsize   len, header_len, body_offset;
    const char *s = g_bytes_get_data(out, &len);

    assert_true(mime_split(s, len, &header_len, &body_offset));
    return g_strndup(s, header_len);
}

/* Does the header block hold field (whole lines, CRLF included), wherever it stands? */
static gboolean has_field(const char *block, const char *field)
{
    const char *at = strstr(block, field);

    while (at && at != block && !(at - block >= 2 && at[-2] == '\r' && at[-1] == '\n'))
        at = strstr(at + 1, field);
    return at != NULL;
}

/* The names of the header fields of a header block, in order. */
static char **header_names(const char *block)
{
    char  **lines = g_strsplit(block, "\r\n", -1);
    GPtrArray *names = g_ptr_array_new();

    for (char **l = lines; *l; l++)
        if (**l && **l != ' ' && **l != '\t')
            g_ptr_array_add(names, g_strndup(*l, strcspn(*l, ":")));
    g_ptr_array_add(names, NULL);
    g_strfreev(lines);
    return (char **) g_ptr_array_free(names, FALSE);
}

static int name_count(char **names, const char *name)
{
    int     n = 0;

    for (char **p = names; *p; p++)
        n += g_ascii_strcasecmp(*p, name) == 0;
    return n;
}

/* Rewrites with p and checks what every output must satisfy. */
static GBytes *rewrite(GMimeMessage *msg, const struct rewrite_params *p, char **id)
{
    GError *err = NULL;
    GBytes *out = mime_rewrite(msg, p, id, &err);
    char   *block;
    char  **names;

    assert_null(err);
    assert_non_null(out);
    assert_crlf(out);
    block = header_block(out);
    names = header_names(block);
    assert_int_equal(name_count(names, "To"), 0);
    assert_int_equal(name_count(names, "From"), 1);
    assert_int_equal(name_count(names, "Message-ID"), 1);
    g_strfreev(names);
    g_free(block);
    return out;
}

/*
 * Regression (fuzz_mime/regress_nul_header_injection): a NUL inside a kept
 * header, or a header at the very end of the input, lost its line end in
 * GMime, so the blank line was swallowed and body lines went out as
 * signed headers.  With the footer on and with the original sender kept.
 */
static void test_rewrite_no_header_injection(void **state)
{
    static const char raw[] = "Subject: hi\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\0x\r\n\r\nBcc: v@x\r\n\r\nbody\r\n";
    struct rewrite_params keep = params;

    keep.use_original_sender = TRUE;
    for (int i = 0; i < 2; i++) {
        GMimeMessage *msg = mime_parse(raw, sizeof(raw) - 1, NULL);
        GBytes *out;
        char *block;

        char *id = NULL;

        assert_non_null(msg);
        out = rewrite(msg, i ? &keep : &params, &id);
        block = header_block(out);
        assert_null(strstr(block, "Bcc"));
        g_free(block);
        g_free(id);
        g_bytes_unref(out);
        g_object_unref(msg);
    }
}

/*
 * Regression (fuzz_mime/regress_qp_soft_break_delimiter): a part re-encoded
 * in quoted-printable (it holds a NUL) with "--outer" in the middle of a
 * long line: the soft line break at column 76 made it a line of its own,
 * a delimiter of its multipart, and GMime read the copy's parts as cut
 * there (RFC 2046 readers compare a line's start only, so "--outer tail"
 * would be one too).  The part must go out so that GMime alone reads both parts and
 * the text as it came.
 */
static void test_rewrite_qp_break_before_delimiter(void **state)
{
    static const char raw[] = "Subject: hi\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
        "--outer\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx--outer\r\n"
        "a\0b\r\n"
        "--outer\r\nContent-Type: application/octet-stream\r\n\r\nrest\r\n--outer--\r\n";
    GMimeMessage *msg = mime_parse(raw, sizeof(raw) - 1, NULL);
    char   *id = NULL, *content;
    GBytes *out;
    gsize   len;
    const char *bytes;
    GMimeStream *stream;
    GMimeParser *parser;
    GMimeMessage *again;
    GMimeObject *outer;

    assert_non_null(msg);
    out = rewrite(msg, &params, &id);
    bytes = g_bytes_get_data(out, &len);
    stream = g_mime_stream_mem_new_with_buffer(bytes, len);
    parser = g_mime_parser_new_with_stream(stream);
    again = g_mime_parser_construct_message(parser, NULL);
    assert_non_null(again);
    outer = g_mime_message_get_mime_part(again);
    /* The text, the attachment and the footer's inline part (§4.4). */
    assert_string_equal(g_mime_object_get_content_type_parameter(outer, "boundary"), "outer");
    assert_int_equal(g_mime_multipart_get_count(GMIME_MULTIPART(outer)), 3);
    assert_true(GMIME_MULTIPART(outer)->write_end_boundary);
    content = decoded(g_mime_multipart_get_part(GMIME_MULTIPART(outer), 0));
    assert_non_null(strstr(content, "xxxxxxxx--outer\r\n"));
    g_free(content);
    g_object_unref(again);
    g_object_unref(parser);
    g_object_unref(stream);
    g_free(id);
    g_bytes_unref(out);
    g_object_unref(msg);
}

static void test_rewrite_header_at_eof(void **state)
{
    static const char raw[] = "Subject: hi\r\nMIME-Version: 1.0";
    GMimeMessage *msg = mime_parse(raw, sizeof(raw) - 1, NULL);

    if (!msg)
        return;         /* refused as "no body" is fine too */
    char *id = NULL;
    GBytes *out = rewrite(msg, &params, &id);
    char *block = header_block(out);
    char **lines = g_strsplit(block, "\r\n", -1);
    gboolean alone = FALSE;

    for (char **l = lines; *l; l++)
        alone |= g_str_equal(*l, "MIME-Version: 1.0");
    assert_true(alone);
    g_free(id);
    g_strfreev(lines);
    g_free(block);
    g_bytes_unref(out);
    g_object_unref(msg);
}

static GMimeMessage *reparse(GBytes *out)
{
    gsize   len;
    const char *s = g_bytes_get_data(out, &len);
    GMimeMessage *msg = mime_parse(s, len, NULL);

    assert_non_null(msg);
    return msg;
}

/* Rewrites msg with the default parameters and parses the result. */
static GMimeMessage *rewritten(GMimeMessage *msg)
{
    char   *id = NULL;
    GBytes *out = rewrite(msg, &params, &id);
    GMimeMessage *again = reparse(out);

    g_bytes_unref(out);
    g_free(id);
    return again;
}

/* Whether out holds s, as bytes. */
static gboolean contains(GBytes *out, const char *s)
{
    gsize   len;
    const char *data = g_bytes_get_data(out, &len);

    return memmem(data, len, s, strlen(s)) != NULL;
}

/* The footer part: inline text/plain in UTF-8. */
static void assert_footer_part(GMimeObject *part)
{
    assert_true(is_type(part, "text", "plain"));
    assert_string_equal(g_mime_object_get_content_type_parameter(part, "charset"), "utf-8");
    assert_string_equal(g_mime_object_get_disposition(part), "inline");
    assert_text(part, FOOTER_TEXT);
}

/* The value of header name in the header block of out, unfolded. */
static char *unfolded(GBytes *out, const char *name)
{
    GMimeMessage *again = reparse(out);
    GMimeHeaderList *list = g_mime_object_get_header_list(GMIME_OBJECT(again));
    GMimeHeader *header = g_mime_header_list_get_header(list, name);
    char   *value;

    if (header == NULL)
        header = g_mime_header_list_get_header(g_mime_object_get_header_list(body(again)), name);
    assert_non_null(header);
    value = g_strdup(g_mime_header_get_value(header));
    g_object_unref(again);
    return value;
}

/* No line of out is over 998 octets, CRLF excluded. */
static void assert_short_lines(GBytes *out)
{
    gsize   len;
    const char *s = g_bytes_get_data(out, &len);
    gsize   start = 0;

    for (gsize i = 0; i <= len; i++)
        if (i == len || s[i] == '\n') {
            gsize   n = i - start - (i > start && s[i - 1] == '\r');

            if (n > 998)
                fail_msg("line of %zu octets at offset %zu", n, start);
            start = i + 1;
        }
}

/*
 * Parts a relay would refuse or change as they came (NUL, bare CR, 8-bit
 * bytes in a 7bit part) are re-encoded; every decoded byte is kept.
 */
static void test_rewrite_unsendable_parts(void **state)
{
    static const char raw[] =
        "Subject: parts\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "nul\0here\r\n"
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        "bare\rcr\r\n"
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "bl\xc3\xa5 without an encoding\r\n"
        "--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "\x01\r\x02\r\n"
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "bl\xc3\xa5 is fine as 8bit\r\n"
        "--b--\r\n";
    static const struct {
        GMimeContentEncoding encoding;
        const char *content;
        size_t  len;
    } want[] = {
        {GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE, "nul\0here", 8},
        {GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE, "bare\rcr", 7},
        {GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE, "bl\xc3\xa5 without an encoding", 23},
        {GMIME_CONTENT_ENCODING_BASE64, "\x01\r\x02", 3},
        {GMIME_CONTENT_ENCODING_8BIT, "bl\xc3\xa5 is fine as 8bit", 20},
    };
    struct rewrite_params keep = params;
    GMimeMessage *msg = mime_parse(raw, sizeof(raw) - 1, NULL);
    GMimeMessage *again;
    char   *id;
    GBytes *out;
    gsize   len;
    const char *s;

    keep.use_original_sender = TRUE;        /* no footer part */
    out = rewrite(msg, &keep, &id);
    assert_no_bare_cr(out);
    s = g_bytes_get_data(out, &len);
    assert_null(memchr(s, 0, len));
    again = reparse(out);
    assert_int_equal(count(body(again)), G_N_ELEMENTS(want));
    for (guint i = 0; i < G_N_ELEMENTS(want); i++) {
        GMimeObject *part = child(body(again), i);
        char   *content = decoded(part);

        assert_int_equal(g_mime_part_get_content_encoding(GMIME_PART(part)), want[i].encoding);
        assert_memory_equal(content, want[i].content, want[i].len + 1);
        g_free(content);
    }
    g_object_unref(again);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);
}

/*
 * A header written anew from its decoded value (8-bit bytes that are not
 * UTF-8): an encoded word that decodes to a line end must not start a
 * header field, and a run of blanks must not make GMime split an encoded
 * word across lines (a fuzz_mime finding: "F=?iso-8859-1?B?...?=" alone
 * on a line). Every line of the block is a field or a continuation.
 */
static void assert_header_lines(GBytes *out)
{
    char   *block = header_block(out);
    char  **lines = g_strsplit(block, "\r\n", -1);

    for (char **l = lines; *l && **l; l++) {
        if (**l != ' ' && **l != '\t' && strchr(*l, ':') == NULL)
            fail_msg("not a header line: %s", *l);
        assert_false(g_str_has_prefix(*l, "Bcc:"));
    }
    g_strfreev(lines);
    g_free(block);
}

static void test_rewrite_reencoded_header_lines(void **state)
{
    GMimeMessage *found = load("regress_header_fold.eml");
    char   *id = NULL;
    GBytes *out;

    g_free(mime_token_extract(found, "LEGOTOKEN"));
    out = rewrite(found, &params, &id);
    assert_header_lines(out);
    g_free(id);
    g_bytes_unref(out);
    g_object_unref(found);

    GString *raw = g_string_new("Subject: token in th   \r\n        \r\n        \r\n"
                    "    =?us-ascii?Q?hi=0D=0ABcc:_evil@example.org?= From: ");

    for (int i = 0; i < 60; i++)
        g_string_append_c(raw, '\xff');
    g_string_append(raw, "\r\n\r\nbody\r\n");

    GMimeMessage *msg = mime_parse(raw->str, raw->len, NULL);

    id = NULL;
    out = rewrite(msg, &params, &id);
    assert_header_lines(out);
    assert_short_lines(out);
    g_free(id);
    g_bytes_unref(out);
    g_object_unref(msg);
    g_string_free(raw, TRUE);
}

/*
 * Kept headers over 998 octets are folded at blanks, or encoded when they
 * have none; 8-bit bytes that are not UTF-8 are encoded; UTF-8 is kept.
 */
static void test_rewrite_long_headers(void **state)
{
    GString *words = g_string_new(NULL);
    GString *word = g_string_new(NULL);
    GString *raw;
    GMimeMessage *msg;
    char   *id;
    GBytes *out;
    char   *value;

    for (int i = 0; i < 150; i++)
        g_string_append_printf(words, "%sw\xc3\xb8rd%d", i ? " " : "", i);
    for (int i = 0; i < 1500; i++)
        g_string_append_c(word, 'a' + i % 26);

    /* Words: folded, the bytes and the unfolded value as they were. */
    raw = g_string_new(NULL);
    g_string_append_printf(raw, "Subject: %s\r\nContent-Type: text/plain; charset=utf-8;\r\n"
                   " name=\"%s\"\r\n\r\nbody\r\n", words->str, word->str);
    msg = mime_parse(raw->str, raw->len, NULL);
    out = rewrite(msg, &params, &id);
    assert_short_lines(out);
    assert_true(contains(out, "Subject: w\xc3\xb8rd0 w\xc3\xb8rd1"));
    value = unfolded(out, "Subject");
    assert_string_equal(value, words->str);
    g_free(value);
    /* A parameter with no blank: RFC 2231 continuations. */
    value = unfolded(out, "Content-Type");
    assert_non_null(strstr(value, "name*0"));
    g_free(value);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);

    /* One word: encoded words, the decoded value as it was. */
    g_string_printf(raw, "Subject: %s\r\n\r\nbody\r\n", word->str);
    msg = mime_parse(raw->str, raw->len, NULL);
    out = rewrite(msg, &params, &id);
    assert_short_lines(out);
    value = unfolded(out, "Subject");
    assert_string_equal(value, word->str);
    g_free(value);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);

    /* Latin-1 bytes, short: encoded; UTF-8 bytes: kept as they came. */
    g_string_printf(raw, "Subject: bl\xe5\x62\xe6r\r\n"
            "Content-Disposition: inline; filename=\"bl\xc3\xa5.txt\"\r\n\r\nbody\r\n");
    msg = mime_parse(raw->str, raw->len, NULL);
    out = rewrite(msg, &params, &id);
    assert_false(contains(out, "bl\xe5"));
    assert_true(contains(out, "Subject: =?iso-8859-1?"));
    assert_true(contains(out, "filename=\"bl\xc3\xa5.txt\""));
    value = unfolded(out, "Subject");
    assert_string_equal(value, "bl\u00e5b\u00e6r");
    g_free(value);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);

    g_string_free(raw, TRUE);
    g_string_free(word, TRUE);
    g_string_free(words, TRUE);
}

/* ---- token ------------------------------------------------------------- */

static void test_token_valid(void **state)
{
    GMimeMessage *msg = load("valid.eml");
    char   *token = mime_token_extract(msg, PREFIX);
    GMimeMessage *again;
    GBytes *out;
    char   *id;

    assert_string_equal(token, "test_token");
    assert_true(is_type(body(msg), "multipart", "mixed"));
    assert_int_equal(count(body(msg)), 1);
    assert_true(is_type(child(body(msg), 0), "multipart", "alternative"));

    /*
     * What is left is still valid MIME with both alternatives, now the
     * whole body (the mixed parent kept one part), the footer in each.
     */
    out = rewrite(msg, &params, &id);
    assert_false(contains(out, "TEVHT1RPS0VO"));
    assert_false(contains(out, "filename=\"token\""));
    again = reparse(out);
    assert_true(is_type(body(again), "multipart", "alternative"));
    assert_int_equal(count(body(again)), 2);
    /* Parts read while looking for the token go out whole. */
    assert_text(child(body(again), 0), "Hello from the Postern tests.\n\n" FOOTER_TEXT);
    assert_text(child(body(again), 1), "<p>Hello from the Postern tests.</p>\n"
            "<div>Sendt av eirik@sylliaas.no &#8211; &#248;<br>\nAvmeld: " URL "</div>\n");
    g_object_unref(again);
    g_bytes_unref(out);
    g_free(id);
    g_free(token);
    g_object_unref(msg);
}

/* A message without a token, and ones whose token does not count, stay as they were. */
static void assert_no_token(const char *name)
{
    GMimeMessage *msg = load(name);
    char   *before = g_mime_object_to_string(GMIME_OBJECT(msg), NULL);
    char   *after;

    assert_null(mime_token_extract(msg, PREFIX));
    after = g_mime_object_to_string(GMIME_OBJECT(msg), NULL);
    assert_string_equal(before, after);
    g_free(before);
    g_free(after);
    g_object_unref(msg);
}

static void test_token_none(void **state)
{
    assert_no_token("no_token.eml");
}

static void test_token_empty(void **state)
{
    assert_no_token("token_empty.eml");
}

static void test_token_preamble(void **state)
{
    assert_no_token("token_preamble.eml");
}

static void test_token_not_at_start(void **state)
{
    assert_no_token("token_not_start.eml");
}

static void test_token_nul(void **state)
{
    static const char raw[] = "Subject: x\r\nContent-Type: text/plain\r\n\r\nLEGOTOKENab\0cd\r\n";
    GMimeMessage *msg = mime_parse(raw, sizeof(raw) - 1, NULL);

    assert_non_null(msg);
    assert_null(mime_token_extract(msg, PREFIX));
    g_object_unref(msg);
}

static void test_token_single_part(void **state)
{
    GMimeMessage *msg = load("token_plain.eml");
    char   *token = mime_token_extract(msg, PREFIX);

    assert_string_equal(token, "single_token");
    assert_true(is_type(body(msg), "text", "plain"));
    g_free(token);
    g_object_unref(msg);
}

static void test_token_nested(void **state)
{
    GMimeMessage *msg = load("token_nested.eml");
    char   *token = mime_token_extract(msg, PREFIX);

    /* Depth first: the nested part comes before the later top-level one. */
    assert_string_equal(token, "nested_token");
    assert_int_equal(count(body(msg)), 3);
    assert_int_equal(count(child(body(msg), 1)), 1);
    assert_true(is_type(child(child(body(msg), 1), 0), "application", "pdf"));
    g_free(token);

    token = mime_token_extract(msg, PREFIX);
    assert_string_equal(token, "later_token");
    assert_int_equal(count(body(msg)), 2);
    g_free(token);
    g_object_unref(msg);
}

static void test_token_emptied_parent(void **state)
{
    GMimeMessage *msg = load("token_emptied.eml");
    char   *token = mime_token_extract(msg, PREFIX);

    assert_string_equal(token, "lonely_token");
    assert_int_equal(count(body(msg)), 1);
    assert_true(is_type(child(body(msg), 0), "text", "plain"));
    g_free(token);
    g_object_unref(msg);
}

static void test_token_quoted_printable(void **state)
{
    GMimeMessage *msg = load("token_qp.eml");
    char   *token = mime_token_extract(msg, PREFIX);

    assert_string_equal(token, "qp_token");
    assert_int_equal(count(body(msg)), 1);
    g_free(token);
    g_object_unref(msg);
}

/* ---- rewrite ----------------------------------------------------------- */

static const char *const allowed[] = {
    "Subject", "MIME-Version", "From", "Sender", "Reply-To", "Date", "Message-ID",
    "List-Unsubscribe", "List-Unsubscribe-Post",
    "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", NULL,
};

static void test_rewrite_headers(void **state)
{
    GMimeMessage *msg = load("headers.eml");
    char   *id = NULL;
    GBytes *out = rewrite(msg, &params, &id);
    char   *block = header_block(out);
    char  **names = header_names(block);
    GMimeMessage *again = reparse(out);
    GMimeObject *obj = GMIME_OBJECT(again);
    char   *expect_id = g_strdup_printf("<%s>", id);

    for (char **n = names; *n; n++)
        if (!g_strv_contains(allowed, *n))
            fail_msg("header %s kept", *n);
    for (const char *const *a = allowed; *a; a++)
        if (strcmp(*a, "Content-Disposition") != 0)
            assert_int_equal(name_count(names, *a), 1);

    /* The Subject's encoded words go out byte for byte. */
    assert_true(has_field(block, "Subject: =?UTF-8?Q?Bl=C3=A5b=C3=A6rsyltet=C3=B8y?= og\r\n"
                   " =?ISO-8859-1?Q?r=F8dgr=F8t?=\r\n"));
    assert_string_equal(g_mime_message_get_subject(again),
                "Bl\u00e5b\u00e6rsyltet\u00f8y og r\u00f8dgr\u00f8t");
    assert_true(has_field(block, "From: Abakus <no-reply@abakus.no>\r\n"));
    assert_true(has_field(block, "Sender: no-reply@abakus.no\r\n"));
    assert_true(has_field(block, "Reply-To: eirik@sylliaas.no\r\n"));
    assert_true(has_field(block, "Date: Sun, 23 Nov 2025 22:47:15 +0000\r\n"));
    assert_true(has_field(block, "List-Unsubscribe: <" URL ">\r\n"));
    assert_true(has_field(block, "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
    assert_true(has_field(block, "Content-Transfer-Encoding: 8bit\r\n"));
    assert_true(g_str_has_suffix(id, "@abakus.no"));
    assert_string_equal(g_mime_object_get_header(obj, "Message-ID"), expect_id);
    assert_null(strstr(block, "orig@sylliaas.no"));

    g_free(expect_id);
    g_object_unref(again);
    g_strfreev(names);
    g_free(block);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);
}

static void test_rewrite_fresh_message_ids(void **state)
{
    GMimeMessage *a = load("no_message_id.eml"), *b = load("no_message_id.eml");
    char   *id_a, *id_b;
    GBytes *out_a = rewrite(a, &params, &id_a), *out_b = rewrite(b, &params, &id_b);

    assert_string_not_equal(id_a, id_b);
    g_bytes_unref(out_a);
    g_bytes_unref(out_b);
    g_free(id_a);
    g_free(id_b);
    g_object_unref(a);
    g_object_unref(b);
}

static void test_rewrite_hidden_sender(void **state)
{
    struct rewrite_params p = params;
    GMimeMessage *msg = load("plain_utf8.eml");
    char   *id;
    GBytes *out;
    char   *block;
    char  **names;
    GMimeMessage *again;

    p.hide_sender = TRUE;
    out = rewrite(msg, &p, &id);
    block = header_block(out);
    names = header_names(block);
    again = reparse(out);
    assert_int_equal(name_count(names, "Reply-To"), 0);
    assert_true(has_field(block, "From: Abakus <no-reply@abakus.no>\r\n"));
    /* The footer does not name a hidden sender either. */
    assert_text(body(again), "Hei p\u00e5 deg\nLinje to\n\n"
            "Sendt av  \u2013 \u00f8\nAvmeld: " URL "\n");
    g_object_unref(again);
    g_strfreev(names);
    g_free(block);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);
}

static void test_rewrite_original_sender(void **state)
{
    struct rewrite_params p = params;
    GMimeMessage *msg = load("plain_base64.eml");
    char   *id;
    GBytes *out;
    char   *block;
    GMimeMessage *again;

    p.use_original_sender = TRUE;
    out = rewrite(msg, &p, &id);
    block = header_block(out);
    again = reparse(out);
    assert_true(has_field(block, "From: eirik@sylliaas.no\r\n"));
    assert_true(has_field(block, "Sender: no-reply@abakus.no\r\n"));
    assert_true(has_field(block, "Reply-To: eirik@sylliaas.no\r\n"));
    /* No footer under the sender's own name. */
    assert_text(body(again), "Hei p\u00e5 deg\nLinje to\n");
    g_object_unref(again);
    g_free(block);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);
}

/* Composes a notice-like message with params less its unsubscribe URL and sender. */
static GBytes *compose(const char *subject, const char *text, char **block, GMimeMessage **again)
{
    struct rewrite_params p = params;
    GError *err = NULL;
    char   *id = NULL;
    GBytes *out;

    p.unsubscribe_url = NULL;
    p.original_sender = NULL;
    out = mime_compose_text(&p, subject, text, &id, &err);
    assert_null(err);
    assert_non_null(out);
    assert_crlf(out);
    assert_no_bare_cr(out);
    assert_true(g_str_has_suffix(id, "@abakus.no"));
    *block = header_block(out);
    *again = reparse(out);
    assert_true(has_field(*block, "From: Abakus <no-reply@abakus.no>\r\n"));
    assert_true(has_field(*block, "Sender: no-reply@abakus.no\r\n"));
    assert_true(has_field(*block, "Date: Sun, 23 Nov 2025 22:47:15 +0000\r\n"));
    assert_true(has_field(*block, "MIME-Version: 1.0\r\n"));
    assert_true(has_field(*block, "Content-Type: text/plain; charset=utf-8\r\n"));
    assert_null(strstr(*block, "Reply-To"));
    assert_null(strstr(*block, "List-Unsubscribe"));
    g_free(id);
    return out;
}

/*
 * A notice's bytes: ASCII in short lines goes as 7bit; 8-bit text, a
 * control or a line over 998 octets as quoted-printable that decodes to
 * the text; a subject's line ends and controls never start a field.
 */
static void test_compose_text(void **state)
{
    g_autofree char *long_line = g_strnfill(1200, 'x');
    g_autofree char *text8 = g_strdup_printf("P\u00e5 vei\n\x01 bell\n%s\nend", long_line);
    GMimeMessage *again;
    char   *block, **names;
    GBytes *out;

    out = compose("Hi", "Hello\n\n  world\n", &block, &again);
    assert_true(has_field(block, "Subject: Hi\r\n"));
    assert_true(has_field(block, "Content-Transfer-Encoding: 7bit\r\n"));
    assert_non_null(strstr(g_bytes_get_data(out, NULL), "\r\n\r\nHello\r\n\r\n  world\r\n"));
    assert_text(body(again), "Hello\n\n  world\n");
    g_object_unref(again);
    g_free(block);
    g_bytes_unref(out);

    out = compose("M\u00f8te\r\nBcc: evil@example.org\tnow", text8, &block, &again);
    names = header_names(block);
    assert_int_equal(name_count(names, "Bcc"), 0);
    assert_int_equal(name_count(names, "Subject"), 1);
    assert_true(has_field(block, "Content-Transfer-Encoding: quoted-printable\r\n"));
    assert_string_equal(g_mime_message_get_subject(again), "M\u00f8te Bcc: evil@example.org now");
    /* The decoded text is the text, the missing last line end added. */
    {
        g_autofree char *want = g_strconcat(text8, "\n", NULL);
        assert_text(body(again), want);
    }
    g_strfreev(names);
    g_object_unref(again);
    g_free(block);
    g_bytes_unref(out);
}

static void test_rewrite_no_unsubscribe(void **state)
{
    struct rewrite_params p = params;
    GMimeMessage *msg = load("plain_utf8.eml");
    char   *id;
    GBytes *out;
    char   *block;

    p.unsubscribe_url = NULL;
    out = rewrite(msg, &p, &id);
    block = header_block(out);
    assert_null(strstr(block, "List-Unsubscribe"));
    assert_true(contains(out, "Avmeld:\r\n"));
    g_free(block);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);
}

static void test_rewrite_adds_mime_version(void **state)
{
    GMimeMessage *msg = parse_string("Subject: old\r\nTo: a@b.example\r\n\r\nHello\r\n");
    char   *id;
    GBytes *out = rewrite(msg, &params, &id);
    char   *block = header_block(out);
    char  **names = header_names(block);

    assert_int_equal(name_count(names, "MIME-Version"), 1);
    g_strfreev(names);
    g_free(block);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);
}

static void test_rewrite_duplicate_content_type(void **state)
{
    GMimeMessage *msg = parse_string("Subject: two types\r\nContent-Type: text/plain\r\n"
                     "Content-Type: multipart/mixed; boundary=one\r\n\r\n"
                     "--one\r\nContent-Type: text/plain\r\n\r\nhello\r\n--one--\r\n");
    GMimeMessage *again = rewritten(msg);

    /* The Content-Type that goes out is the one GMime parsed the body by. */
    assert_true(is_type(body(again), "multipart", "mixed"));
    assert_int_equal(count(body(again)), 2);
    assert_text(child(body(again), 0), "hello");
    assert_footer_part(child(body(again), 1));
    g_object_unref(again);
    g_object_unref(msg);
}

static void assert_param_error(const struct rewrite_params *p)
{
    GMimeMessage *msg = load("headers.eml");
    GError *err = NULL;
    char   *id = NULL;

    assert_null(mime_rewrite(msg, p, &id, &err));
    assert_non_null(err);
    assert_true(g_error_matches(err, MIME_ERROR, MIME_ERROR_PARAM));
    assert_null(id);
    /* The message was not touched. */
    assert_non_null(g_mime_object_get_header(GMIME_OBJECT(msg), "Received"));
    g_error_free(err);
    g_object_unref(msg);
}

static void test_rewrite_bad_params(void **state)
{
    struct rewrite_params p = params;

    p.from = "not a mailbox";
    assert_param_error(&p);
    p.from = "a@b.example, c@d.example";
    assert_param_error(&p);
    p = params;
    p.message_id_domain = "";
    assert_param_error(&p);
    p = params;
    p.unsubscribe_url = "https://x.example/a b";
    assert_param_error(&p);
    p.unsubscribe_url = "https://x.example/\r\nBcc: x@y.example";
    assert_param_error(&p);
}

/* CRLF output from LF input, every data file, with the token taken first. */
static void test_rewrite_every_file_crlf(void **state)
{
    const char *name;
    GDir   *dir;
    char   *path = g_path_get_dirname(__FILE__);
    char   *data = g_build_filename(path, "..", "data", "mime", NULL);
    int     files = 0;

    assert_non_null(dir = g_dir_open(data, 0, NULL));
    while ((name = g_dir_read_name(dir)) != NULL) {
        char   *file = g_build_filename(data, name, NULL);
        char   *raw, *id;
        gsize   len;
        GMimeMessage *msg;
        GBytes *out;

        assert_true(g_file_get_contents(file, &raw, &len, NULL));
        assert_non_null(msg = mime_parse(raw, len, NULL));
        g_free(mime_token_extract(msg, PREFIX));
        out = rewrite(msg, &params, &id);
        assert_no_bare_cr(out);
        g_bytes_unref(out);
        g_object_unref(msg);
        g_free(id);
        g_free(raw);
        g_free(file);
        files++;
    }
    assert_true(files >= 20);
    g_dir_close(dir);
    g_free(data);
    g_free(path);
}

/* ---- footer ------------------------------------------------------------ */

static void test_footer_plain_utf8(void **state)
{
    GMimeMessage *msg = load("plain_utf8.eml");
    GMimeMessage *again = rewritten(msg);

    assert_true(is_type(body(again), "text", "plain"));
    assert_string_equal(g_mime_object_get_content_type_parameter(body(again), "charset"), "utf-8");
    assert_int_equal(g_mime_part_get_content_encoding(GMIME_PART(body(again))), GMIME_CONTENT_ENCODING_8BIT);
    assert_text(body(again), "Hei p\u00e5 deg\nLinje to\n\n" FOOTER_TEXT);
    g_object_unref(again);
    g_object_unref(msg);
}

static void test_footer_base64(void **state)
{
    GMimeMessage *msg = load("plain_base64.eml");
    GMimeMessage *again = rewritten(msg);
    char   *raw = decoded(body(again));

    assert_int_equal(g_mime_part_get_content_encoding(GMIME_PART(body(again))), GMIME_CONTENT_ENCODING_BASE64);
    /* The decoded text is the original, byte for byte, then the footer, CRLF canonical. */
    assert_string_equal(raw, "Hei p\u00e5 deg\r\nLinje to\r\n\r\n"
                "Sendt av eirik@sylliaas.no \u2013 \u00f8\r\nAvmeld: " URL "\r\n");
    g_free(raw);
    g_object_unref(again);
    g_object_unref(msg);
}

static void test_footer_quoted_printable(void **state)
{
    GMimeMessage *msg = load("plain_qp.eml");
    char   *id;
    GBytes *out = rewrite(msg, &params, &id);
    GMimeMessage *again = reparse(out);
    gsize   len, header_len, offset;
    const char *s = g_bytes_get_data(out, &len);
    char   *body_text;
    char  **lines;

    assert_int_equal(g_mime_part_get_content_encoding(GMIME_PART(body(again))),
             GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE);
    assert_text(body(again), "Hei p\u00e5 deg, en lang linje som er myk brutt\nLinje to  \n\n" FOOTER_TEXT);
    assert_true(mime_split(s, len, &header_len, &offset));
    body_text = g_strndup(s + offset, len - offset);
    lines = g_strsplit(body_text, "\r\n", -1);
    for (char **l = lines; *l; l++)
        assert_true(strlen(*l) <= 76);
    g_strfreev(lines);
    g_free(body_text);
    g_object_unref(again);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);
}

static void test_footer_latin1_kept(void **state)
{
    struct rewrite_params p = params;
    GMimeMessage *msg = load("plain_latin1.eml");
    char   *id;
    GBytes *out;
    GMimeMessage *again;
    char   *raw;

    /* Latin-1 holds "ø": the part keeps its charset. */
    p.footer = "Hilsen {sender} \u00f8";
    out = rewrite(msg, &p, &id);
    again = reparse(out);
    assert_string_equal(g_mime_object_get_content_type_parameter(body(again), "charset"), "iso-8859-1");
    raw = decoded(body(again));
    assert_string_equal(raw, "Hei p\xe5 deg, bl\xe5\x62\xe6r\r\n\r\nHilsen eirik@sylliaas.no \xf8\r\n");
    assert_text(body(again), "Hei p\u00e5 deg, bl\u00e5b\u00e6r\n\nHilsen eirik@sylliaas.no \u00f8\n");
    g_free(raw);
    g_object_unref(again);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);
}

static void test_footer_latin1_wrapped(void **state)
{
    GMimeMessage *msg = load("plain_latin1.eml");
    GMimeMessage *again = rewritten(msg);
    GMimeObject *text_part;
    char   *raw;

    /* Latin-1 has no "–": the body stays as it came, the footer goes next to it. */
    assert_true(is_type(body(again), "multipart", "mixed"));
    assert_int_equal(count(body(again)), 2);
    text_part = child(body(again), 0);
    assert_string_equal(g_mime_object_get_content_type_parameter(text_part, "charset"), "iso-8859-1");
    raw = decoded(text_part);
    assert_string_equal(raw, "Hei p\xe5 deg, bl\xe5\x62\xe6r\r\n");
    assert_footer_part(child(body(again), 1));
    g_free(raw);
    g_object_unref(again);
    g_object_unref(msg);
}

static void test_footer_ascii_7bit(void **state)
{
    struct rewrite_params p = params;
    GMimeMessage *msg = load("plain_ascii.eml");
    GMimeMessage *again = rewritten(msg);
    char   *id;
    GBytes *out;

    /* No charset is US-ASCII, which has no "ø": wrapped, the body unchanged. */
    assert_true(is_type(body(again), "multipart", "mixed"));
    assert_null(g_mime_object_get_content_type_parameter(child(body(again), 0), "charset"));
    assert_text(child(body(again), 0), "Hi there\n");
    assert_footer_part(child(body(again), 1));
    g_object_unref(again);
    g_object_unref(msg);

    /* An ASCII footer fits: appended, and the part stays 7bit. */
    msg = load("plain_ascii.eml");
    p.footer = "Sendt av {sender}";
    out = rewrite(msg, &p, &id);
    again = reparse(out);
    assert_true(is_type(body(again), "text", "plain"));
    assert_null(g_mime_object_get_content_type_parameter(body(again), "charset"));
    assert_int_equal(g_mime_part_get_content_encoding(GMIME_PART(body(again))),
             GMIME_CONTENT_ENCODING_DEFAULT);
    assert_text(body(again), "Hi there\n\nSendt av eirik@sylliaas.no\n");
    g_object_unref(again);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);
}

static void test_footer_flowed(void **state)
{
    struct rewrite_params p = params;
    GMimeMessage *msg = load("flowed.eml");
    char   *id;
    GBytes *out;
    GMimeMessage *again;

    /*
     * Blanks at the end of a footer line would flow it into the next, but
     * the signature separator keeps its blank; lines that would read as
     * quoted or stuffed are space-stuffed (RFC 3676 §4.3-4.4).
     */
    p.footer = "-- \nLine one \n> not quoted\nFrom here\n indented\nLast";
    out = rewrite(msg, &p, &id);
    again = reparse(out);
    assert_string_equal(g_mime_object_get_content_type_parameter(body(again), "format"), "flowed");
    assert_string_equal(g_mime_object_get_content_type_parameter(body(again), "delsp"), "yes");
    assert_text(body(again), "This is a long line that was \nflowed by the client.\n\n"
            "-- \nLine one\n > not quoted\n From here\n  indented\nLast\n");
    g_object_unref(again);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);
}

static void test_footer_alternative(void **state)
{
    GMimeMessage *msg = load("alternative.eml");
    GMimeMessage *again = rewritten(msg);
    GMimeObject *plain = child(body(again), 0), *html = child(body(again), 1);

    assert_int_equal(count(body(again)), 2);
    assert_text(plain, "Hei p\u00e5 deg\n\n" FOOTER_TEXT);
    assert_string_equal(g_mime_object_get_content_type_parameter(html, "charset"), "iso-8859-1");
    assert_int_equal(g_mime_part_get_content_encoding(GMIME_PART(html)), GMIME_CONTENT_ENCODING_BASE64);
    assert_text(html, "<html><body><p>Hei p\u00e5 deg</p>\n"
            "<div>Sendt av eirik@sylliaas.no &#8211; &#248;<br>\n"
            "Avmeld: " URL "</div>\n</BODY></html>\n");
    g_object_unref(again);
    g_object_unref(msg);
}

static void test_footer_html_escaped(void **state)
{
    struct rewrite_params p = params;
    GMimeMessage *msg = load("alternative.eml");
    char   *id;
    GBytes *out;
    GMimeMessage *again;
    char   *html;

    p.footer = "<b>&\"'</b>";
    out = rewrite(msg, &p, &id);
    again = reparse(out);
    html = text(child(body(again), 1));
    assert_non_null(strstr(html, "<div>&#60;b&#62;&#38;&#34;&#39;&#60;/b&#62;</div>\n</BODY>"));
    g_free(html);
    g_object_unref(again);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);
}

static void test_footer_alternative_unknown_charset(void **state)
{
    GMimeMessage *msg = load("alt_unknown.eml");
    GMimeMessage *again = rewritten(msg);
    GMimeObject *wrapped = child(body(again), 0);
    char   *html = text(child(body(again), 1));

    assert_true(is_type(wrapped, "multipart", "mixed"));
    assert_string_equal(g_mime_object_get_content_type_parameter(child(wrapped, 0), "charset"),
                "x-postern-unknown");
    g_free(decoded(child(wrapped, 0)));
    assert_footer_part(child(wrapped, 1));
    assert_non_null(strstr(html, "<div>Sendt av"));
    g_free(html);
    g_object_unref(again);
    g_object_unref(msg);
}

static void test_footer_html_only_wrapped(void **state)
{
    GMimeMessage *msg = load("html_only.eml");
    GMimeMessage *again = rewritten(msg);

    assert_true(is_type(body(again), "multipart", "mixed"));
    assert_int_equal(count(body(again)), 2);
    assert_text(child(body(again), 0), "<html><body><p>Hi</p></body></html>\n");
    assert_footer_part(child(body(again), 1));
    g_object_unref(again);
    g_object_unref(msg);
}

static void test_footer_mixed(void **state)
{
    GMimeMessage *msg = load("mixed.eml");
    GMimeMessage *again = rewritten(msg);

    assert_int_equal(count(body(again)), 3);
    assert_text(child(body(again), 0), "See the attachment.");
    assert_true(is_type(child(body(again), 1), "application", "pdf"));
    assert_footer_part(child(body(again), 2));
    assert_non_null(strstr(g_mime_multipart_get_prologue(GMIME_MULTIPART(body(again))),
                   "This is a multi-part message in MIME format."));
    g_object_unref(again);
    g_object_unref(msg);
}

static void test_footer_other_type_wrapped(void **state)
{
    GMimeMessage *msg = load("pdf.eml");
    GMimeMessage *again = rewritten(msg);
    GMimeObject *pdf;
    char   *content;

    assert_true(is_type(body(again), "multipart", "mixed"));
    pdf = child(body(again), 0);
    assert_true(is_type(pdf, "application", "pdf"));
    assert_string_equal(g_mime_object_get_disposition(pdf), "attachment");
    assert_int_equal(g_mime_part_get_content_encoding(GMIME_PART(pdf)), GMIME_CONTENT_ENCODING_BASE64);
    content = decoded(pdf);
    assert_true(g_str_has_prefix(content, "%PDF-1.4\n"));
    assert_footer_part(child(body(again), 1));
    g_free(content);
    g_object_unref(again);
    g_object_unref(msg);
}

static void test_footer_token_only_message(void **state)
{
    GMimeMessage *msg = load("token_plain.eml");
    GMimeMessage *again;

    g_free(mime_token_extract(msg, PREFIX));
    again = rewritten(msg);
    assert_text(body(again), FOOTER_TEXT);
    g_object_unref(again);
    g_object_unref(msg);
}

/* Takes the token out of name and rewrites it with p. */
static GMimeMessage *without_token(const char *name, const struct rewrite_params *p)
{
    GMimeMessage *msg = load(name);
    GMimeMessage *again;
    char   *id;
    GBytes *out;

    g_free(mime_token_extract(msg, PREFIX));
    out = rewrite(msg, p, &id);
    again = reparse(out);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);
    return again;
}

static void test_footer_unwrapped_in_place(void **state)
{
    struct rewrite_params p = params;
    GMimeMessage *again;
    char   *raw;

    /*
     * The mixed parent keeps only the text: the text becomes the body and
     * takes the footer in place, in its charset (Latin-1 has "«ø»") and
     * its transfer encoding, its own bytes unchanged.
     */
    p.footer = "Hilsen {sender} \u00ab\u00f8\u00bb";
    again = without_token("token_latin1_qp.eml", &p);
    assert_true(is_type(body(again), "text", "plain"));
    assert_string_equal(g_mime_object_get_content_type_parameter(body(again), "charset"), "iso-8859-1");
    assert_int_equal(g_mime_part_get_content_encoding(GMIME_PART(body(again))),
             GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE);
    raw = decoded(body(again));
    assert_string_equal(raw, "Hei p\xe5 deg, bl\xe5\x62\xe6r.\r\n\r\nHilsen eirik@sylliaas.no \xab\xf8\xbb\r\n");
    g_free(raw);
    g_object_unref(again);
}

static void test_footer_unwrapped_attachment(void **state)
{
    GMimeMessage *again = without_token("token_attached_text.eml", &params);
    GMimeObject *notes;
    char   *raw;

    /* An attached text file is not the message: it keeps its bytes. */
    assert_true(is_type(body(again), "multipart", "mixed"));
    assert_int_equal(count(body(again)), 2);
    notes = child(body(again), 0);
    assert_string_equal(g_mime_object_get_disposition(notes), "attachment");
    raw = decoded(notes);
    assert_string_equal(raw, "Notes, byte for byte.");
    assert_footer_part(child(body(again), 1));
    g_free(raw);
    g_object_unref(again);
}

static void test_footer_forwarded_stays_inside(void **state)
{
    struct rewrite_params keep = params;
    GMimeMessage *again;

    /* A lone attached message is never the whole body, footer or not. */
    again = without_token("token_forwarded.eml", &params);
    assert_int_equal(count(body(again)), 2);
    assert_true(is_type(child(body(again), 0), "message", "rfc822"));
    assert_footer_part(child(body(again), 1));
    g_object_unref(again);
    keep.use_original_sender = TRUE;
    again = without_token("token_forwarded.eml", &keep);
    assert_int_equal(count(body(again)), 1);
    assert_true(is_type(child(body(again), 0), "message", "rfc822"));
    g_object_unref(again);
}

/* ---- automatic mail ---------------------------------------------------- */

static void assert_automatic(const char *raw, gboolean expected)
{
    GMimeMessage *msg = parse_string(raw);

    assert_int_equal(mime_is_automatic(msg), expected);
    g_object_unref(msg);
}

static void test_automatic(void **state)
{
    GMimeMessage *dsn = load("dsn.eml"), *valid = load("valid.eml");

    assert_true(mime_is_automatic(dsn));
    assert_false(mime_is_automatic(valid));
    assert_automatic("Auto-Submitted: auto-replied\r\n\r\nx\r\n", TRUE);
    assert_automatic("Auto-Submitted: auto-generated; owner-email=a@b\r\n\r\nx\r\n", TRUE);
    assert_automatic("Auto-Submitted: No\r\n\r\nx\r\n", FALSE);
    assert_automatic("Auto-Submitted: nothing\r\n\r\nx\r\n", TRUE);
    assert_automatic("Precedence: bulk\r\n\r\nx\r\n", TRUE);
    assert_automatic("Precedence: JUNK\r\n\r\nx\r\n", TRUE);
    assert_automatic("Precedence: list\r\n\r\nx\r\n", TRUE);
    assert_automatic("Precedence: first-class\r\n\r\nx\r\n", FALSE);
    assert_automatic("List-Id: <x.lists.example>\r\n\r\nx\r\n", TRUE);
    assert_automatic("Content-Type: message/delivery-status\r\n\r\nx\r\n", TRUE);
    g_object_unref(dsn);
    g_object_unref(valid);
}

/* ---- split ------------------------------------------------------------- */

static void test_split(void **state)
{
    size_t  header_len, offset;

    assert_true(mime_split("A: b\r\nC: d\r\n\r\nbody", 18, &header_len, &offset));
    assert_int_equal(header_len, 12);
    assert_int_equal(offset, 14);
    assert_true(mime_split("\r\nbody", 6, &header_len, &offset));
    assert_int_equal(header_len, 0);
    assert_int_equal(offset, 2);
    assert_false(mime_split("A: b\r\n", 6, &header_len, &offset));
}

/* ---- robustness -------------------------------------------------------- */

/* Whatever GMime makes of raw goes through every step without harm. */
static void survive(const char *raw, size_t len)
{
    GMimeMessage *msg = mime_parse(raw, len, NULL);
    char   *id;

    if (msg == NULL)
        return;
    g_free(mime_token_extract(msg, PREFIX));
    (void) mime_is_automatic(msg);
    g_bytes_unref(rewrite(msg, &params, &id));
    g_free(id);
    g_object_unref(msg);
}

static void test_parse_not_a_message(void **state)
{
    GError *err = NULL;

    assert_null(mime_parse("", 0, &err));
    assert_true(g_error_matches(err, MIME_ERROR, MIME_ERROR_PARSE));
    g_clear_error(&err);
    assert_null(mime_parse("\0\0\0 garbage\r\n\r\n", 15, &err));
    assert_true(g_error_matches(err, MIME_ERROR, MIME_ERROR_PARSE));
    g_clear_error(&err);
}

static void test_parse_garbage(void **state)
{
    static const char start[] = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n";
    GRand  *rand = g_rand_new_with_seed(2026);
    char    buf[4096];

    for (int round = 0; round < 200; round++) {
        size_t  len = g_rand_int_range(rand, 1, sizeof(buf));

        for (size_t i = 0; i < len; i++)
            buf[i] = (char) g_rand_int_range(rand, 0, 256);
        /* Half of the rounds start like a message, so GMime goes deeper. */
        if (round % 2)
            memcpy(buf, start, MIN(len, sizeof(start) - 1));
        survive(buf, len);
    }
    g_rand_free(rand);
}

static void test_parse_nul_long_lines_8bit(void **state)
{
    GString *raw = g_string_new("Subject: ");

    g_string_append(raw, "\xff\xfe 8-bit \xc3\xa5 subject ");
    for (int i = 0; i < 2000; i++)
        g_string_append_c(raw, 'x');
    g_string_append(raw, "\r\nX-Nul: a");
    g_string_append_len(raw, "\0b", 2);
    g_string_append(raw, "\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    for (int i = 0; i < 2000; i++)
        g_string_append_c(raw, 'y');
    g_string_append_len(raw, "\r\n\0\0NUL\r\n\xff\xfe\n\r", 14);
    survive(raw->str, raw->len);
    g_string_free(raw, TRUE);
}

static void test_parse_deep_nesting(void **state)
{
    GString *raw = g_string_new("Subject: deep\r\n");
    GMimeMessage *msg;
    char   *token, *id;
    const int depth = 200;

    for (int i = 0; i < depth; i++)
        g_string_append_printf(raw, "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n", i, i);
    g_string_append(raw, "Content-Type: text/plain\r\n\r\nLEGOTOKENdeep_token\r\n");
    for (int i = depth - 1; i >= 0; i--)
        g_string_append_printf(raw, "--b%d--\r\n", i);
    msg = parse_string(raw->str);
    token = mime_token_extract(msg, PREFIX);
    assert_string_equal(token, "deep_token");
    assert_true(is_type(body(msg), "text", "plain"));
    g_bytes_unref(rewrite(msg, &params, &id));
    g_free(id);
    g_free(token);
    g_object_unref(msg);
    g_string_free(raw, TRUE);
}

static int setup(void **state)
{
    mime_init();
    return 0;
}

static int teardown(void **state)
{
    g_mime_shutdown();
    return 0;
}

int     main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_valid),
        cmocka_unit_test(test_token_none),
        cmocka_unit_test(test_token_empty),
        cmocka_unit_test(test_token_preamble),
        cmocka_unit_test(test_token_not_at_start),
        cmocka_unit_test(test_token_nul),
        cmocka_unit_test(test_token_single_part),
        cmocka_unit_test(test_token_nested),
        cmocka_unit_test(test_token_emptied_parent),
        cmocka_unit_test(test_token_quoted_printable),
        cmocka_unit_test(test_rewrite_headers),
        cmocka_unit_test(test_rewrite_fresh_message_ids),
        cmocka_unit_test(test_rewrite_hidden_sender),
        cmocka_unit_test(test_rewrite_original_sender),
        cmocka_unit_test(test_compose_text),
        cmocka_unit_test(test_rewrite_no_unsubscribe),
        cmocka_unit_test(test_rewrite_adds_mime_version),
        cmocka_unit_test(test_rewrite_duplicate_content_type),
        cmocka_unit_test(test_rewrite_bad_params),
        cmocka_unit_test(test_rewrite_no_header_injection),
        cmocka_unit_test(test_rewrite_header_at_eof),
        cmocka_unit_test(test_rewrite_reencoded_header_lines),
        cmocka_unit_test(test_rewrite_every_file_crlf),
        cmocka_unit_test(test_rewrite_unsendable_parts),
        cmocka_unit_test(test_rewrite_long_headers),
        cmocka_unit_test(test_footer_plain_utf8),
        cmocka_unit_test(test_footer_base64),
        cmocka_unit_test(test_footer_quoted_printable),
        cmocka_unit_test(test_footer_latin1_kept),
        cmocka_unit_test(test_footer_latin1_wrapped),
        cmocka_unit_test(test_footer_ascii_7bit),
        cmocka_unit_test(test_footer_flowed),
        cmocka_unit_test(test_footer_alternative),
        cmocka_unit_test(test_footer_html_escaped),
        cmocka_unit_test(test_footer_alternative_unknown_charset),
        cmocka_unit_test(test_footer_html_only_wrapped),
        cmocka_unit_test(test_footer_mixed),
        cmocka_unit_test(test_footer_other_type_wrapped),
        cmocka_unit_test(test_footer_token_only_message),
        cmocka_unit_test(test_footer_unwrapped_in_place),
        cmocka_unit_test(test_footer_unwrapped_attachment),
        cmocka_unit_test(test_footer_forwarded_stays_inside),
        cmocka_unit_test(test_automatic),
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_parse_not_a_message),
        cmocka_unit_test(test_rewrite_qp_break_before_delimiter),
        cmocka_unit_test(test_parse_garbage),
        cmocka_unit_test(test_parse_nul_long_lines_8bit),
        cmocka_unit_test(test_parse_deep_nesting),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
