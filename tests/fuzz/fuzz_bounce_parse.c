/*
 * fuzz_bounce_parse - the bounce reader of transform/bounce_parse.h as the
 * transform runs it on mail to a VERP address: bounce_parse_raw() on any
 * bytes, then the VERP code check (common/bounce_code.h) on a code cut
 * from the same input.
 *
 * Checked: the kind is one of the four; a recipient, when found, holds an
 * @ and no line break; a status is "[245].x.y"; a hard or soft result
 * names its format, an unknown one none; the same input parses the same
 * way twice (no hidden state); a code cut from the input never verifies
 * unless it is the code made for what it names.
 */
#include <stdint.h>
#include <string.h>

#include "common/bounce_code.h"
#include "transform/bounce_parse.h"
#include "transform/mime.h"
#include "fuzz_util.h"

static const char key[] = "fuzz-bounce-secret-0123456789";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    mime_init();
    return 0;
}

static void check_info(const struct bounce_info *b)
{
    FUZZ_CHECK(b->kind >= BOUNCE_UNKNOWN && b->kind <= BOUNCE_AUTOREPLY, "kind %d", b->kind);
    FUZZ_CHECK((b->kind == BOUNCE_UNKNOWN) == (b->format == NULL), "format %s for kind %s",
               b->format ? b->format : "(null)", bounce_kind_name(b->kind));
    if (b->rcpt)
        FUZZ_CHECK(strchr(b->rcpt, '@') && !strpbrk(b->rcpt, "\r\n"), "recipient <%s>", b->rcpt);
    if (b->status)
        FUZZ_CHECK(strchr("245", b->status[0]) && b->status[1] == '.', "status %s", b->status);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *raw = fuzz_dup(data, size);
    struct bounce_info a, b;
    char code[BOUNCE_CODE_LEN + 1];
    uint64_t msg;
    uint32_t idx;

    bounce_parse_raw(raw, size, &a);
    check_info(&a);
    bounce_parse_raw(raw, size, &b);
    FUZZ_CHECK(a.kind == b.kind && g_strcmp0(a.rcpt, b.rcpt) == 0
                   && g_strcmp0(a.status, b.status) == 0, "two parses differ");
    bounce_info_clear(&a);
    bounce_info_clear(&b);

    /* The first BOUNCE_CODE_LEN bytes as a code: only our own verifies. */
    if (size >= BOUNCE_CODE_LEN
        && bounce_code_check(key, sizeof key - 1, raw, BOUNCE_CODE_LEN, &msg, &idx)) {
        bounce_code_make(key, sizeof key - 1, msg, idx, code);
        FUZZ_CHECK(g_ascii_strncasecmp(code, raw, BOUNCE_CODE_LEN) == 0, "forged code verified");
    }
    free(raw);
    return 0;
}
