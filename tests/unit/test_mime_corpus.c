/*
 * MIME fidelity over a corpus of real-looking and malformed messages
 * (tests/data/mime_corpus, and tests/data/mime): every message goes through
 * the transform's MIME path (parse, token, rewrite, footer) and the copy
 * must keep what a reader reads of the original.
 *
 *  - leaves: the transfer-decoded content of every leaf of the original,
 *    and the preamble of a multipart with no parts, is in the copy byte for
 *    byte, in order; a text leaf may have the footer after it (or, in HTML,
 *    before </body>), and the footer may be a part of its own;
 *  - lines: no line of the original body is lost (checked without the
 *    footer, which re-encodes the text it goes into, and without taking
 *    the token): GMime reads the
 *    original too, so this is what catches text GMime drops on parsing;
 *  - closed: every multipart of the copy has its close delimiter.
 *
 * Files are stored with LF line ends and read with CRLF, as ingest stores
 * them; a CR already there stays.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "transform/mime.h"
#include "tests/unit/test_data.h"

#define MARK "FOOTER-MARK"

static const struct rewrite_params with_footer = {
    .from = "Abakus <no-reply@abakus.no>",
    .original_sender = "eirik@sylliaas.no",
    .footer = MARK "\n",
    .message_id_domain = "abakus.no",
    .date = 1763938035,
};

static const struct rewrite_params without_footer = {
    .from = "Abakus <no-reply@abakus.no>",
    .original_sender = "eirik@sylliaas.no",
    .message_id_domain = "abakus.no",
    .date = 1763938035,
};

/* ---- helpers ----------------------------------------------------------- */

static GByteArray *part_bytes(GMimePart *part)
{
    GByteArray *bytes = g_byte_array_new();
    GMimeDataWrapper *content = g_mime_part_get_content(part);
    GMimeStream *sink = g_mime_stream_mem_new_with_byte_array(bytes);

    g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(sink), FALSE);
    if (content != NULL)
        g_mime_data_wrapper_write_to_stream(content, sink);
    g_object_unref(sink);
    return bytes;
}

/*
 * The leaves of obj, depth first: decoded content of each part, and the
 * preamble ("P:" in front) of each multipart that has no parts, which is
 * then all its text. Attached messages are looked into.
 */
static void collect_leaves(GMimeObject *obj, GPtrArray *out)
{
    if (GMIME_IS_MESSAGE_PART(obj)) {
        GMimeMessage *inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj));

        if (inner != NULL && g_mime_message_get_mime_part(inner) != NULL)
            collect_leaves(g_mime_message_get_mime_part(inner), out);
    } else if (GMIME_IS_MULTIPART(obj)) {
        GMimeMultipart *mp = GMIME_MULTIPART(obj);
        const char *prologue = g_mime_multipart_get_prologue(mp);

        if (g_mime_multipart_get_count(mp) == 0) {
            char   *s = g_strconcat("P:", prologue ? prologue : "", NULL);

            g_ptr_array_add(out, g_byte_array_new_take((guint8 *) s, strlen(s)));
        }
        for (int i = 0; i < g_mime_multipart_get_count(mp); i++)
            collect_leaves(g_mime_multipart_get_part(mp, i), out);
    } else if (GMIME_IS_PART(obj)) {
        g_ptr_array_add(out, part_bytes(GMIME_PART(obj)));
    }
}

static GPtrArray *leaves_of(GMimeMessage *msg)
{
    GPtrArray *out = g_ptr_array_new_with_free_func((GDestroyNotify) g_byte_array_unref);

    collect_leaves(g_mime_message_get_mime_part(msg), out);
    return out;
}

static gboolean bytes_equal(const guint8 *a, gsize alen, const guint8 *b, gsize blen)
{
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

/* Whether the copy's leaf is the original's, with the footer where it may go. */
static gboolean leaf_kept(const GByteArray *orig, const GByteArray *copy)
{
    static const char div[] = "<div>" MARK "</div>\r\n";
    static const char mark[] = MARK "\r\n";
    const guint8 *at;
    gsize   rest;

    if (bytes_equal(orig->data, orig->len, copy->data, copy->len))
        return TRUE;
    /*
     * A preamble that ran to the end of the input keeps its last line end
     * there (RFC 2046 readers and GMime alike), and mime_parse() leaves it
     * to the writer; before a delimiter the line end is the delimiter's.
     */
    if (orig->len >= 2 && memcmp(orig->data, "P:", 2) == 0
        && copy->len == orig->len + 1 && copy->data[orig->len] == '\n'
        && memcmp(copy->data, orig->data, orig->len) == 0)
        return TRUE;
    /* Plain text: the original, line ends, then the footer. */
    if (copy->len >= orig->len + strlen(mark)
        && (orig->len == 0 || memcmp(copy->data, orig->data, orig->len) == 0)
        && memcmp(copy->data + copy->len - strlen(mark), mark, strlen(mark)) == 0) {
        rest = copy->len - orig->len - strlen(mark);
        for (gsize i = 0; i < rest; i++)
            if (copy->data[orig->len + i] != '\r' && copy->data[orig->len + i] != '\n')
                return FALSE;
        return TRUE;
    }
    /* HTML: the footer's div inserted once, on a line of its own. */
    at = copy->len ? memmem(copy->data, copy->len, div, strlen(div)) : NULL;
    if (at == NULL)
        return FALSE;
    rest = at - copy->data;
    if (copy->len == orig->len + strlen(div) + 2 && rest >= 2 && at[-2] == '\r' && at[-1] == '\n')
        rest -= 2;
    else if (copy->len != orig->len + strlen(div))
        return FALSE;
    return memcmp(copy->data, orig->data, rest) == 0
        && memcmp(at + strlen(div), orig->data + rest, orig->len - rest) == 0;
}

static gboolean is_footer_part(const GByteArray *leaf)
{
    return bytes_equal(leaf->data, leaf->len, (const guint8 *) MARK "\r\n", strlen(MARK) + 2);
}

/* Every multipart in obj was closed, as GMime's own parser saw it. */
static void assert_closed(GMimeObject *obj, const char *name)
{
    if (GMIME_IS_MESSAGE_PART(obj)) {
        GMimeMessage *inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj));

        if (inner != NULL && g_mime_message_get_mime_part(inner) != NULL)
            assert_closed(g_mime_message_get_mime_part(inner), name);
    } else if (GMIME_IS_MULTIPART(obj)) {
        /* GMime's parser clears this (private) flag when the close delimiter is missing. */
        if (!GMIME_MULTIPART(obj)->write_end_boundary)
            fail_msg("%s: a multipart of the copy has no close delimiter", name);
        for (int i = 0; i < g_mime_multipart_get_count(GMIME_MULTIPART(obj)); i++)
            assert_closed(g_mime_multipart_get_part(GMIME_MULTIPART(obj), i), name);
    }
}

/* GMime alone, without mime_parse()'s repairs: the copy must need none. */
static GMimeMessage *plain_parse(GBytes *bytes)
{
    gsize   len;
    const char *data = g_bytes_get_data(bytes, &len);
    GMimeStream *stream = g_mime_stream_mem_new_with_buffer(data, len);
    GMimeParser *parser = g_mime_parser_new_with_stream(stream);
    GMimeMessage *msg = g_mime_parser_construct_message(parser, NULL);

    g_object_unref(parser);
    g_object_unref(stream);
    assert_non_null(msg);
    return msg;
}

static GBytes *transform(GBytes *raw, const struct rewrite_params *p, GPtrArray **leaves,
                         gboolean token)
{
    gsize   len;
    const char *data = g_bytes_get_data(raw, &len);
    GError *err = NULL;
    GMimeMessage *msg = mime_parse(data, len, &err);
    GBytes *out;
    char   *id = NULL;

    assert_null(err);
    assert_non_null(msg);
    if (token)
        g_free(mime_token_extract(msg, "LEGOTOKEN"));
    if (leaves != NULL)
        *leaves = leaves_of(msg);
    out = mime_rewrite(msg, p, &id, &err);
    assert_null(err);
    assert_non_null(out);
    g_free(id);
    g_object_unref(msg);
    return out;
}

static void check_leaves(const char *name, GBytes *raw)
{
    GPtrArray *orig;
    GBytes *out = transform(raw, &with_footer, &orig, TRUE);
    GMimeMessage *plain = plain_parse(out);
    GMimeMessage *copy = mime_parse(g_bytes_get_data(out, NULL), g_bytes_get_size(out), NULL);
    GPtrArray *got = leaves_of(copy);
    guint   j = 0;

    /* Closed as GMime alone reads it; leaves as the transform reads them. */
    assert_closed(g_mime_message_get_mime_part(plain), name);
    g_object_unref(plain);
    for (guint i = 0; i < orig->len; i++) {
        /* A footer part of its own is passed over; footer text in place is not. */
        while (j < got->len && is_footer_part(g_ptr_array_index(got, j))
               && !leaf_kept(g_ptr_array_index(orig, i), g_ptr_array_index(got, j)))
            j++;
        if (j == got->len)
            fail_msg("%s: leaf %u of the original is missing from the copy", name, i);
        if (!leaf_kept(g_ptr_array_index(orig, i), g_ptr_array_index(got, j))) {
            GByteArray *a = g_ptr_array_index(orig, i), *b = g_ptr_array_index(got, j);

            fail_msg("%s: leaf %u changed:\n[%.*s]\nbecame\n[%.*s]", name, i,
                     (int) a->len, a->data, (int) b->len, b->data);
        }
        j++;
    }
    for (; j < got->len; j++)
        if (!is_footer_part(g_ptr_array_index(got, j)))
            fail_msg("%s: the copy has a leaf the original did not", name);
    g_ptr_array_unref(got);
    g_ptr_array_unref(orig);
    g_object_unref(copy);
    g_bytes_unref(out);
}

/* The lines of s (CRLF or LF ends), from offset from on. */
static char **lines_from(const char *s, gsize len, gsize from)
{
    char   *copy = g_strndup(s + from, len - from);
    char  **lines = g_strsplit(copy, "\n", -1);

    for (char **l = lines; *l; l++)
        if (**l && (*l)[strlen(*l) - 1] == '\r')
            (*l)[strlen(*l) - 1] = 0;
    g_free(copy);
    return lines;
}

/* The top-level header block ends at the first empty line. */
static gsize body_offset(const char *s, gsize len)
{
    const char *blank = g_strstr_len(s, len, "\r\n\r\n");

    return blank ? (gsize) (blank - s) + 4 : len;
}

/*
 * Every line of the original's body but blank ones is a line of the copy, in
 * order, but for delimiter lines and preambles (a multipart/mixed left
 * with one part is unwrapped, transport padding goes) and lines with a
 * bare CR (that part is re-encoded). A line that looks like a delimiter but is not one must
 * stay.
 */
/* The delimiter lines of the multiparts in obj, as GMime parsed them, and
 * the lines of preambles before parts. */
static void collect_boundaries(GMimeObject *obj, GPtrArray *out)
{
    const char *b;

    if (GMIME_IS_MESSAGE_PART(obj)) {
        GMimeMessage *inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj));

        if (inner != NULL && g_mime_message_get_mime_part(inner) != NULL)
            collect_boundaries(g_mime_message_get_mime_part(inner), out);
    } else if (GMIME_IS_MULTIPART(obj)) {
        const char *prologue = g_mime_multipart_get_prologue(GMIME_MULTIPART(obj));

        if ((b = g_mime_object_get_content_type_parameter(obj, "boundary")) != NULL) {
            g_ptr_array_add(out, g_strconcat("--", b, NULL));
            g_ptr_array_add(out, g_strconcat("--", b, "--", NULL));
        }
        /* Readers do not show the preamble next to parts; an unwrapped multipart loses it. */
        if (prologue != NULL && g_mime_multipart_get_count(GMIME_MULTIPART(obj)) > 0) {
            char  **lines = g_strsplit(prologue, "\n", -1);

            for (char **l = lines; *l; l++)
                g_ptr_array_add(out, g_strchomp(g_strdup(*l)));
            g_strfreev(lines);
        }
        for (int i = 0; i < g_mime_multipart_get_count(GMIME_MULTIPART(obj)); i++)
            collect_boundaries(g_mime_multipart_get_part(GMIME_MULTIPART(obj), i), out);
    }
}

/* Whether line is a delimiter of one of the boundaries (padding allowed). */
static gboolean is_delimiter(const char *line, GPtrArray *delimiters)
{
    char   *stripped = g_strchomp(g_strdup(line));
    gboolean found = FALSE;

    for (guint i = 0; i < delimiters->len && !found; i++)
        found = strcmp(stripped, g_ptr_array_index(delimiters, i)) == 0;
    g_free(stripped);
    return found;
}

static void check_lines(const char *name, GBytes *raw)
{
    GBytes *out = transform(raw, &without_footer, NULL, FALSE);
    GPtrArray *delimiters = g_ptr_array_new_with_free_func(g_free);
    GMimeMessage *orig = mime_parse(g_bytes_get_data(raw, NULL), g_bytes_get_size(raw), NULL);
    gsize   rlen, olen;
    const char *r = g_bytes_get_data(raw, &rlen);
    const char *o = g_bytes_get_data(out, &olen);
    char  **want = lines_from(r, rlen, body_offset(r, rlen));
    char  **have = lines_from(o, olen, 0);
    char  **h = have;

    collect_boundaries(g_mime_message_get_mime_part(orig), delimiters);
    for (char **w = want; *w; w++) {
        /* Delimiters go or lose their padding; the text between them stays. */
        if ((*w)[strspn(*w, " \t")] == 0 || strchr(*w, '\r') != NULL
            || is_delimiter(*w, delimiters))
            continue;
        while (*h && strcmp(*h, *w) != 0)
            h++;
        if (*h == NULL)
            fail_msg("%s: the line \"%s\" of the original is not in the copy", name, *w);
        h++;
    }
    g_strfreev(have);
    g_strfreev(want);
    g_ptr_array_unref(delimiters);
    g_object_unref(orig);
    g_bytes_unref(out);
}

static int corpus_dir(const char *sub, void (*check)(const char *, GBytes *))
{
    char   *here = g_path_get_dirname(__FILE__);
    char   *dir = g_build_filename(here, "..", "data", sub, NULL);
    GDir   *d = g_dir_open(dir, 0, NULL);
    const char *name;
    int     n = 0;

    assert_non_null(d);
    while ((name = g_dir_read_name(d)) != NULL) {
        char   *path = g_build_filename(dir, name, NULL);
        GBytes *raw = test_data_crlf_path(path);

        check(name, raw);
        g_bytes_unref(raw);
        g_free(path);
        n++;
    }
    g_dir_close(d);
    g_free(dir);
    g_free(here);
    return n;
}

/* ---- tests ------------------------------------------------------------- */

static void test_corpus_leaves(void **state)
{
    assert_true(corpus_dir("mime_corpus", check_leaves) >= 20);
    assert_true(corpus_dir("mime", check_leaves) >= 20);
}

static void test_corpus_lines(void **state)
{
    /* tests/data/mime has fuzz findings whose header block no line split finds. */
    assert_true(corpus_dir("mime_corpus", check_lines) >= 20);
}

/*
 * Issue 9 item 13: a delimiter with transport padding followed at once by
 * text (no header, no blank line) lost three lines: GMime took them for
 * the part's header block and dropped them as invalid headers.
 */
static void test_padded_delimiter_then_text(void **state)
{
    static const char raw[] =
        "From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\none\r\n"
        "--B  \r\ntwo\r\nthree\r\nfour\r\n--B--\r\n";
    GBytes *in = g_bytes_new_static(raw, strlen(raw));
    GBytes *out = transform(in, &with_footer, NULL, TRUE);
    gsize   len;
    const char *s = g_bytes_get_data(out, &len);

    assert_non_null(g_strstr_len(s, len, "two\r\nthree\r\nfour\r\n"));
    g_bytes_unref(out);
    g_bytes_unref(in);
}

/* Item 13 as reported: "--B foo" right after a delimiter, three lines after it. */
static void test_boundary_like_line_after_delimiter(void **state)
{
    static const char raw[] =
        "From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n"
        "--B\r\n--B foo\r\none\r\ntwo\r\nthree\r\n\r\nbody\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nsecond\r\n--B--\r\n";
    GBytes *in = g_bytes_new_static(raw, strlen(raw));
    GBytes *out = transform(in, &with_footer, NULL, TRUE);
    gsize   len;
    const char *s = g_bytes_get_data(out, &len);

    assert_non_null(g_strstr_len(s, len, "--B foo\r\none\r\ntwo\r\nthree\r\n\r\nbody\r\n"));
    g_bytes_unref(out);
    g_bytes_unref(in);
}

/*
 * Issue 9 item 14: a multipart whose boundary never occurs got the footer
 * as a part after its preamble and no close delimiter, so readers showed
 * the footer alone. It is wrapped now, and closed.
 */
static void test_boundary_never_occurs(void **state)
{
    static const char raw[] =
        "From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"NEVER\"\r\n\r\n"
        "All the text.\r\nIn the preamble.\r\n";
    GBytes *in = g_bytes_new_static(raw, strlen(raw));
    GBytes *out = transform(in, &with_footer, NULL, TRUE);
    gsize   len;
    const char *s = g_bytes_get_data(out, &len);

    assert_non_null(g_strstr_len(s, len, "All the text.\r\nIn the preamble.\r\n--NEVER--\r\n"));
    assert_null(g_strstr_len(s, len, "\r\n--NEVER\r\n"));
    g_bytes_unref(out);
    g_bytes_unref(in);
}

/*
 * Issue 9 item 15: a multipart/report whose boundary parameter is cut
 * short came out with an extra CRLF at its end.
 */
static void test_report_truncated_boundary(void **state)
{
    static const char raw[] =
        "From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        " boundary=\"abc\r\n\r\n"
        "--abc\r\nContent-Type: text/plain\r\n\r\nreport\r\n--abc--\r\n";
    GBytes *in = g_bytes_new_static(raw, strlen(raw));
    GBytes *out = transform(in, &without_footer, NULL, TRUE);
    gsize   len;
    const char *s = g_bytes_get_data(out, &len);

    assert_non_null(g_strstr_len(s, len, "report\r\n--abc--\r\n--\"abc--\r\n"));
    assert_null(g_strstr_len(s, len, "--abc--\r\n\r\n"));
    g_bytes_unref(out);
    g_bytes_unref(in);
}

/*
 * Regression (fuzz_mime/regress_nul_content_type_boundary): a NUL in the
 * first of two Content-Type fields. Ending that field's line made GMime
 * parse it again, and the multipart took its value: no boundary, parts
 * written after "--(null)", none of them found by a reader.
 */
static void test_first_of_two_content_types(void **state)
{
    static const char raw[] =
        "From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mi\0xed\r\n"
        "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
        "--b\r\nContent-Type: text/plain\r\n\r\none\r\n"
        "--b\r\nContent-Type: text/plain\r\n\r\ntwo\r\n--b--\r\n";
    GBytes *in = g_bytes_new_static(raw, sizeof(raw) - 1);
    GBytes *out = transform(in, &with_footer, NULL, TRUE);
    gsize   len;
    const char *s = g_bytes_get_data(out, &len);

    assert_null(g_strstr_len(s, len, "(null)"));
    assert_non_null(g_strstr_len(s, len,
                                 "\r\n--b\r\nContent-Type: text/plain\r\n\r\ntwo\r\n--b"));
    g_bytes_unref(out);
    g_bytes_unref(in);
}

/*
 * Regression (fuzz_mime/regress_invalid_content_type_reencoded): GMime
 * found the Content-Type invalid (a control before the value) and read the
 * body as application/octet-stream; the field, written anew for its 8-bit
 * byte, then declared a multipart whose boundary never occurs.
 */
static void test_reencoded_content_type_keeps_structure(void **state)
{
    static const char raw[] =
        "From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        "Content-Type:\x0e multipart/alternative; boundary=b\xea" "b\r\n\r\n"
        "--token\r\nContent-Type: text/plain\r\n\r\nThe text.\r\n--token--\r\n";
    GBytes *in = g_bytes_new_static(raw, sizeof(raw) - 1);
    GBytes *out = transform(in, &without_footer, NULL, TRUE);
    GMimeMessage *copy = plain_parse(out);
    GMimeObject *body = g_mime_message_get_mime_part(copy);
    GByteArray *content;

    assert_true(GMIME_IS_PART(body));
    content = part_bytes(GMIME_PART(body));
    assert_non_null(memmem(content->data, content->len, "The text.", 9));
    g_byte_array_unref(content);
    g_object_unref(copy);
    g_bytes_unref(out);
    g_bytes_unref(in);
}

/*
 * Regression (fuzz_mime/regress_boundary_control_encoded_word): a boundary
 * with "=?" text and a control, in a Content-Type that GMime writes anew
 * (for the NUL that cuts it), came back from GMime's parser as another
 * boundary: the copy's delimiters matched none and the multipart read as
 * unclosed. So (fuzz_mime/regress_boundary_trailing_blank) did one ending
 * in blanks, which GMime left out of the parameter and kept in the
 * delimiters. Neither goes out: the copy gets a boundary of its own,
 * closed, and the parts stay.
 */
static void test_unfit_boundary_replaced(void **state)
{
    static const char *const boundaries[] = {"=?iso-8859-1?Q? b\x16", "b\x01 =?iso-8859-1?Q?",
                                             "ends in blanks =?iso-8859-1?Q?  "};

    for (size_t k = 0; k < G_N_ELEMENTS(boundaries); k++) {
        const char *b = boundaries[k];
        GString *raw = g_string_new(NULL);
        GBytes *in, *out;
        GMimeMessage *copy;
        GMimeObject *body;

        g_string_printf(raw, "From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
                        "Content-Type: multipart/mixed; boundary=\"%s\"; x=\"", b);
        g_string_append_len(raw, "\0\"\r\n\r\n", 6);
        g_string_append_printf(raw, "--%s\r\nContent-Type: text/plain\r\n\r\none\r\n"
                               "--%s\r\nContent-Type: text/plain\r\n\r\ntwo\r\n--%s--\r\n",
                               b, b, b);
        in = g_string_free_to_bytes(raw);
        out = transform(in, &with_footer, NULL, TRUE);
        copy = plain_parse(out);
        body = g_mime_message_get_mime_part(copy);
        assert_closed(body, b);
        assert_true(GMIME_IS_MULTIPART(body));
        assert_int_equal(g_mime_multipart_get_count(GMIME_MULTIPART(body)), 3); /* and the footer */
        assert_null(g_strstr_len(g_bytes_get_data(out, NULL), g_bytes_get_size(out), b));
        g_object_unref(copy);
        g_bytes_unref(out);
        g_bytes_unref(in);
    }
}

/*
 * Regression (fuzz_mime/regress_param_name_rfc2231_loop): GMime 3.2 writes
 * a parameter whose value needs RFC 2231 encoding in continuations of
 * 76 - (name + 6) octets, none for a name of 68 to 70 octets: it looped
 * until memory ran out (24 GB from 691 bytes). Such a parameter goes from
 * a part's fields, a second field of the name (with bytes that are not
 * UTF-8, which the rewrite encodes) included. SIGALRM fails the test if
 * the loop comes back.
 */
static void test_long_parameter_name_dropped(void **state)
{
    for (size_t n = 66; n <= 72; n++) {
        g_autofree char *name = g_strnfill(n, 'f');
        g_autofree char *raw = g_strdup_printf(
            "From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; %s=\"bl\xc3\xa5" "b\xc3\xa6" "r\"\r\n"
            "Content-Disposition: inline; %s=\"bl\xc3\xa5" "b\xc3\xa6" "r\"\r\n"
            "Content-Disposition: attachment; %s=\"bl\xe5" "b\xe6" "r\"\r\n\r\n"
            "The text.\r\n", name, name, name);
        GBytes *in = g_bytes_new(raw, strlen(raw));
        GBytes *out;

        alarm(10);
        out = transform(in, &with_footer, NULL, TRUE);
        alarm(0);
        assert_non_null(g_strstr_len(g_bytes_get_data(out, NULL), g_bytes_get_size(out),
                                     "The text."));
        if (n > 64)
            assert_null(g_strstr_len(g_bytes_get_data(out, NULL), g_bytes_get_size(out), name));
        g_bytes_unref(out);
        g_bytes_unref(in);
    }
}

/*
 * Regression (fuzz_mime/regress_cte_encoded_word_split): a
 * Content-Transfer-Encoding with 8-bit bytes that are not UTF-8, written
 * anew by GMime, was folded inside an encoded word: the next line started
 * with no blank and no colon, a line that is no header field.
 */
static void test_reencoded_cte_folds_between_words(void **state)
{
    char   *here = g_path_get_dirname(__FILE__);
    char   *path = g_build_filename(here, "..", "fuzz", "corpus", "fuzz_mime",
                                    "regress_cte_encoded_word_split", NULL);
    char   *raw, *header;
    gsize   len, header_len, body_offset;
    GBytes *in, *out;
    const char *s;
    char  **lines;

    assert_true(g_file_get_contents(path, &raw, &len, NULL));
    in = g_bytes_new_take(raw, len);
    out = transform(in, &without_footer, NULL, TRUE);
    s = g_bytes_get_data(out, &len);
    assert_true(mime_split(s, len, &header_len, &body_offset));
    header = g_strndup(s, header_len - 2);
    lines = g_strsplit(header, "\r\n", -1);
    for (char **l = lines; *l; l++)
        if (**l != ' ' && **l != '\t' && strchr(*l, ':') == NULL)
            fail_msg("a header line that is no field: %s", *l);
    g_strfreev(lines);
    g_free(header);
    g_bytes_unref(out);
    g_bytes_unref(in);
    g_free(path);
    g_free(here);
}

/* Each headerless part costs a parse; ten of them all keep their text. */
static void test_many_headerless_parts(void **state)
{
    GString *raw = g_string_new("From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
                                "Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n");
    GBytes *in, *out;
    gsize   len;
    const char *s;

    for (int i = 0; i < 10; i++)
        g_string_append_printf(raw, "--B\r\ntext of part %d\r\n", i);
    g_string_append(raw, "--B--\r\n");
    in = g_string_free_to_bytes(raw);
    out = transform(in, &without_footer, NULL, TRUE);
    s = g_bytes_get_data(out, &len);
    for (int i = 0; i < 10; i++) {
        char   *want = g_strdup_printf("\r\n\r\ntext of part %d\r\n--B", i);

        assert_non_null(g_strstr_len(s, len, want));
        g_free(want);
    }
    g_bytes_unref(out);
    g_bytes_unref(in);
}

/*
 * Found by the pipeline corpus test: the last part of a multipart that
 * never closed got an extra line, GMime's line end before the close
 * delimiter it now writes after the input's own.
 */
static void test_unclosed_last_part(void **state)
{
    static const char raw[] =
        "From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"open\"\r\n\r\n"
        "--open\r\nContent-Type: text/plain\r\n\r\nfirst\r\n"
        "--open\r\nContent-Type: text/plain\r\n\r\nlast\r\n";
    GBytes *in = g_bytes_new_static(raw, strlen(raw));
    GBytes *out = transform(in, &without_footer, NULL, TRUE);
    gsize   len;
    const char *s = g_bytes_get_data(out, &len);

    assert_non_null(g_strstr_len(s, len, "\r\n\r\nlast\r\n--open--\r\n"));
    g_bytes_unref(out);
    g_bytes_unref(in);
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
        cmocka_unit_test(test_padded_delimiter_then_text),
        cmocka_unit_test(test_boundary_like_line_after_delimiter),
        cmocka_unit_test(test_boundary_never_occurs),
        cmocka_unit_test(test_report_truncated_boundary),
        cmocka_unit_test(test_unclosed_last_part),
        cmocka_unit_test(test_many_headerless_parts),
        cmocka_unit_test(test_first_of_two_content_types),
        cmocka_unit_test(test_reencoded_content_type_keeps_structure),
        cmocka_unit_test(test_reencoded_cte_folds_between_words),
        cmocka_unit_test(test_unfit_boundary_replaced),
        cmocka_unit_test(test_long_parameter_name_dropped),
        cmocka_unit_test(test_corpus_leaves),
        cmocka_unit_test(test_corpus_lines),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
