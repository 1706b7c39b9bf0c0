/*
 * fuzz_mime - the MIME transform of transform/mime.h, as the transform
 * worker runs it: mime_parse, mime_token_extract("LEGOTOKEN"),
 * mime_is_automatic, mime_rewrite (footer and unsubscribe URL set), then
 * mime_split on the serialised copy; and mime_compose_text, as a notice
 * is made, with the message's Subject and the input as its text.
 *
 * Checked on the output: CRLF line ends only and a final CRLF; a header
 * section that mime_split finds, holding only the fields the rewrite keeps
 * or adds, each once (no To, nothing injected from the body); the
 * Message-ID on our domain; GMime can parse the copy again; and every
 * multipart in it is closed.  For the composed notice the same, and its
 * body decodes to the text exactly (LF and CRLF alike as CRLF, one at the
 * end).
 */
#include <stdint.h>
#include <string.h>

#include "transform/mime.h"
#include "fuzz_util.h"

#define PREFIX "LEGOTOKEN"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    mime_init();
    return 0;
}

/* The header fields mime_rewrite may send, each at most once. */
static const char *const allowed[] = {
    "Subject", "MIME-Version", "From", "Sender", "Reply-To", "Date", "Message-ID",
    "List-Unsubscribe", "List-Unsubscribe-Post", "Content-Type",
    "Content-Transfer-Encoding", "Content-Disposition", NULL,
};

/*
 * Every field of the header block h (CRLF lines) is one of allowed, once:
 * anything else got in from the original message (header injection).
 * Counts each allowed field into seen[].
 */
static void check_fields(const char *h, size_t len, int seen[])
{
    for (size_t i = 0; i < len;) {
        const char *eol = memchr(h + i, '\n', len - i);
        size_t next = eol ? (size_t)(eol - h) + 1 : len;
        const char *colon = memchr(h + i, ':', next - i);
        size_t k = 0, n;

        if (h[i] != ' ' && h[i] != '\t') {
            FUZZ_CHECK(colon != NULL, "header line without a colon: %.*s", (int)(next - i),
                       h + i);
            n = (size_t)(colon - h) - i;        /* WSP before the colon is obsolete syntax */
            while (n > 0 && (h[i + n - 1] == ' ' || h[i + n - 1] == '\t'))
                n--;
            while (allowed[k] && !(strlen(allowed[k]) == n
                                   && g_ascii_strncasecmp(h + i, allowed[k], n) == 0))
                k++;
            FUZZ_CHECK(allowed[k] != NULL, "unexpected header field: %.*s", (int)(next - i),
                       h + i);
            FUZZ_CHECK(++seen[k] == 1, "%s twice", allowed[k]);
        }
        i = next;
    }
}

/* Index of name in allowed. */
static int field(const char *name)
{
    int k = 0;

    while (strcmp(allowed[k], name) != 0)
        k++;
    return k;
}

/*
 * Every multipart with a boundary is closed as GMime alone reads the copy
 * (its parser clears the private write_end_boundary when the close
 * delimiter is missing): an unclosed one hides what follows it.
 */
static void check_closed(GMimeObject *obj)
{
    GMimeMessage *inner;

    if (GMIME_IS_MESSAGE_PART(obj)
        && (inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj))) != NULL
        && g_mime_message_get_mime_part(inner) != NULL) {
        check_closed(g_mime_message_get_mime_part(inner));
    } else if (GMIME_IS_MULTIPART(obj)) {
        FUZZ_CHECK(GMIME_MULTIPART(obj)->write_end_boundary
                       || g_mime_object_get_content_type_parameter(obj, "boundary") == NULL,
                   "a multipart of the copy has no close delimiter");
        for (int i = 0; i < g_mime_multipart_get_count(GMIME_MULTIPART(obj)); i++)
            check_closed(g_mime_multipart_get_part(GMIME_MULTIPART(obj), i));
    }
}

static void check_output(GBytes *bytes, const char *id)
{
    size_t len;
    const char *out = g_bytes_get_data(bytes, &len);
    size_t bare = fuzz_bare_lf(out, len);
    size_t header_len = 0, body_offset = 0;
    GMimeMessage *again;
    GError *err = NULL;
    int seen[G_N_ELEMENTS(allowed)] = {0};

    FUZZ_CHECK(bare == (size_t)-1, "bare LF at %zu of %zu", bare, len);
    FUZZ_CHECK(len >= 2 && out[len - 2] == '\r' && out[len - 1] == '\n', "no final CRLF");
    FUZZ_CHECK(id != NULL && g_str_has_suffix(id, "@abakus.no") && !strpbrk(id, "<> \r\n"),
               "Message-ID <%s>", id ? id : "(null)");

    FUZZ_CHECK(mime_split(out, len, &header_len, &body_offset), "no header/body split");
    FUZZ_CHECK(header_len + 2 == body_offset && body_offset <= len, "split %zu/%zu of %zu",
               header_len, body_offset, len);
    check_fields(out, header_len, seen);
    FUZZ_CHECK(seen[field("From")] == 1 && seen[field("Sender")] == 1
                   && seen[field("Message-ID")] == 1 && seen[field("Date")] == 1
                   && seen[field("List-Unsubscribe")] == 1 && seen[field("MIME-Version")] == 1,
               "a header field the rewrite adds is missing");

    /* The next hop parses what we send. */
    again = mime_parse(out, len, &err);
    FUZZ_CHECK(again != NULL, "output does not parse: %s", err ? err->message : "?");
    g_object_unref(again);

    /* GMime alone, without mime_parse()'s repairs, finds it closed. */
    {
        GMimeStream *stream = g_mime_stream_mem_new_with_buffer(out, len);
        GMimeParser *parser = g_mime_parser_new_with_stream(stream);

        again = g_mime_parser_construct_message(parser, NULL);
        if (again != NULL && g_mime_message_get_mime_part(again) != NULL)
            check_closed(g_mime_message_get_mime_part(again));
        g_clear_object(&again);
        g_object_unref(parser);
        g_object_unref(stream);
    }
}

/* A notice with subject and text: sent as check_output() wants, and its text intact. */
static void check_notice(const struct rewrite_params *p, const char *subject, const char *text)
{
    GError *err = NULL;
    char *id = NULL;
    GBytes *out = mime_compose_text(p, subject, text, &id, &err);
    GString *want = g_string_new(NULL);
    GByteArray *got = g_byte_array_new();
    GMimeStream *sink = g_mime_stream_mem_new_with_byte_array(got);
    GMimeMessage *again;
    GMimeObject *part;
    gsize len;
    const char *raw;

    FUZZ_CHECK(out != NULL, "mime_compose_text failed: %s", err ? err->message : "?");
    check_output(out, id);
    /* A missing last line end is added; LF and CRLF end a line alike; a CR alone is text. */
    for (const char *t = text; *t; t++) {
        if (*t == '\n' && !g_str_has_suffix(want->str, "\r"))
            g_string_append_c(want, '\r');
        g_string_append_c(want, *t);
        if (t[1] == 0 && *t != '\n')
            g_string_append(want, want->str[want->len - 1] == '\r' ? "\n" : "\r\n");
    }
    raw = g_bytes_get_data(out, &len);
    again = mime_parse(raw, len, &err);
    part = again ? g_mime_message_get_mime_part(again) : NULL;
    FUZZ_CHECK(part && GMIME_IS_PART(part) && g_mime_part_get_content(GMIME_PART(part)),
               "the notice has no text part");
    g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(sink), FALSE);
    g_mime_data_wrapper_write_to_stream(g_mime_part_get_content(GMIME_PART(part)), sink);
    FUZZ_CHECK(got->len == want->len && memcmp(got->data, want->str, want->len) == 0,
               "the notice's text decodes to %u octets, not the %zu sent", got->len, want->len);
    g_object_unref(sink);
    g_byte_array_unref(got);
    g_string_free(want, TRUE);
    g_object_unref(again);
    g_bytes_unref(out);
    g_free(id);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t h = fuzz_hash(data, size);
    char *raw = fuzz_dup(data, size);
    struct rewrite_params p = {
        .from = "Abakus <no-reply@abakus.no>",
        .original_sender = "eirik@sylliaas.no",
        .footer = "Sendt av {sender} \u2013 \u00f8\nAvmeld: {unsubscribe_url}\n",
        .unsubscribe_url = "https://abakus.no/users/me/settings/notifications",
        .message_id_domain = "abakus.no",
        .date = 1763938035,
    };
    GMimeMessage *msg;
    GError *err = NULL;
    GBytes *out;
    char *token, *text, *id = NULL;

    /* One input in eight is sent as its original sender (no footer), one
     * in eight with the sender hidden. */
    p.use_original_sender = (h & 7) == 0;
    p.hide_sender = (h & 7) == 1;

    msg = mime_parse(raw, size, &err);
    if (msg == NULL) {
        FUZZ_CHECK(err != NULL && err->domain == MIME_ERROR, "NULL without an error");
        g_error_free(err);
        free(raw);
        return 0;
    }
    free(raw);                      /* mime_parse copies: this must not matter */
    /* The input up to its first NUL is the notice's text, as a relay's reply may be. */
    text = g_strndup((const char *)data, size);
    check_notice(&p, g_mime_message_get_subject(msg) ? g_mime_message_get_subject(msg) : "", text);
    g_free(text);

    token = mime_token_extract(msg, PREFIX);
    if (token) {
        FUZZ_CHECK(*token && !g_ascii_isspace(token[0])
                       && !g_ascii_isspace(token[strlen(token) - 1]),
                   "token not trimmed <%s>", token);
        FUZZ_CHECK(g_mime_message_get_mime_part(msg) != NULL, "token removal left no body");
        g_free(token);
    }
    (void)mime_is_automatic(msg);

    out = mime_rewrite(msg, &p, &id, &err);
    FUZZ_CHECK(out != NULL, "mime_rewrite failed: %s", err ? err->message : "?");
    check_output(out, id);
    g_bytes_unref(out);
    g_free(id);
    g_object_unref(msg);
    return 0;
}
