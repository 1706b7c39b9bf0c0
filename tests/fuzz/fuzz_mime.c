/*
 * fuzz_mime - the MIME transform of transform/mime.h, as the transform
 * worker runs it: mime_parse, mime_token_extract("LEGOTOKEN"),
 * mime_is_automatic, mime_rewrite (footer and unsubscribe URL set), then
 * mime_split on the serialised copy.
 *
 * Checked on the output: CRLF line ends only and a final CRLF; a header
 * section that mime_split finds, with exactly one From and no To; the
 * Message-ID on our domain; and GMime can parse the copy again.
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

/* Header lines (not continuations) in [0, len) starting with "name:". */
static int count_field(const char *h, size_t len, const char *name)
{
    size_t n = strlen(name);
    int count = 0;

    for (size_t i = 0; i < len;) {
        const char *eol = memchr(h + i, '\n', len - i);
        size_t next = eol ? (size_t)(eol - h) + 1 : len;

        if (next - i > n && g_ascii_strncasecmp(h + i, name, n) == 0 && h[i + n] == ':')
            count++;
        i = next;
    }
    return count;
}

static void check_output(GBytes *bytes, const char *id)
{
    size_t len;
    const char *out = g_bytes_get_data(bytes, &len);
    size_t bare = fuzz_bare_lf(out, len);
    size_t header_len = 0, body_offset = 0;
    GMimeMessage *again;
    GError *err = NULL;

    FUZZ_CHECK(bare == (size_t)-1, "bare LF at %zu of %zu", bare, len);
    FUZZ_CHECK(len >= 2 && out[len - 2] == '\r' && out[len - 1] == '\n', "no final CRLF");
    FUZZ_CHECK(id != NULL && g_str_has_suffix(id, "@abakus.no") && !strpbrk(id, "<> \r\n"),
               "Message-ID <%s>", id ? id : "(null)");

    FUZZ_CHECK(mime_split(out, len, &header_len, &body_offset), "no header/body split");
    FUZZ_CHECK(header_len + 2 == body_offset && body_offset <= len, "split %zu/%zu of %zu",
               header_len, body_offset, len);
    FUZZ_CHECK(count_field(out, header_len, "To") == 0, "a To: header went out");
    FUZZ_CHECK(count_field(out, header_len, "From") == 1, "%d From: headers",
               count_field(out, header_len, "From"));
    FUZZ_CHECK(count_field(out, header_len, "Message-ID") == 1, "Message-ID count");
    FUZZ_CHECK(count_field(out, header_len, "List-Unsubscribe") == 1, "List-Unsubscribe count");
    FUZZ_CHECK(count_field(out, header_len, "Sender") == 1, "Sender count");

    /* The next hop parses what we send. */
    again = mime_parse(out, len, &err);
    FUZZ_CHECK(again != NULL, "output does not parse: %s", err ? err->message : "?");
    g_object_unref(again);
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
    char *token, *id = NULL;

    /* One input in eight is sent as its original sender (no footer), one
     * in eight with the sender hidden. */
    p.use_original_sender = (h & 7) == 0;
    p.hide_sender = (h & 7) == 1;

    msg = mime_parse(raw, size, &err);
    free(raw);                      /* mime_parse copies: this must not matter */
    if (msg == NULL) {
        FUZZ_CHECK(err != NULL && err->domain == MIME_ERROR, "NULL without an error");
        g_error_free(err);
        return 0;
    }

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
