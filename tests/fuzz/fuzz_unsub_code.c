/*
 * fuzz_unsub_code - the unsubscribe codes of common/unsub_code.h as ingest
 * and the transform read them from mail to the unsubscribe address: the
 * first line of the input is the code of LOCAL+CODE, each further line an
 * address the mail could come from (its envelope sender, its From:).
 *
 * Checked: the shape check (unsub_mailto_parse()) names a configured list
 * or one of its four reasons, and gives the same answer in any case; an
 * address that verifies is lower-case and the code is, case aside,
 * exactly the short or full code made for that list and address (nothing
 * forged verifies); a link code that verifies (unsub_code_check()) is the
 * full code made for what it names.
 */
#include <stdint.h>
#include <string.h>

#include "common/config.h"
#include "common/unsub_code.h"
#include "fuzz_util.h"

static const char key[] = "fuzz-unsubscribe-secret-0123456789";
#define KEYLEN (sizeof key - 1)
#define MAX_CANDIDATES 8

static GPtrArray *lists;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static struct postern_list configured[] = {
        { .name = CONFIG_LIST_DEFAULT }, { .name = "board" }, { .name = "styret" },
    };

    lists = g_ptr_array_new();
    for (size_t i = 0; i < G_N_ELEMENTS(configured); i++)
        g_ptr_array_add(lists, &configured[i]);
    return 0;
}

static gboolean configured(const char *name)
{
    for (guint i = 0; i < lists->len; i++)
        if (((struct postern_list *)lists->pdata[i])->name == name)
            return TRUE;
    return FALSE;
}

/* code (len bytes) is, case aside, the short or the full code of (list, addr). */
static gboolean made_for(const char *code, size_t len, const char *list, const char *addr)
{
    g_autofree char *s = unsub_mailto_code_make(key, KEYLEN, list, addr);
    g_autofree char *f = unsub_code_make(key, KEYLEN, list, addr);

    return (strlen(s) == len && g_ascii_strncasecmp(s, code, len) == 0) ||
           (strlen(f) == len && g_ascii_strncasecmp(f, code, len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *raw = fuzz_dup(data, size);
    const char *nl = memchr(raw, '\n', size);
    size_t len = nl ? (size_t)(nl - raw) : size;
    g_autofree char *rest = nl ? g_strndup(nl + 1, size - len - 1) : g_strdup("");
    g_auto(GStrv) lines = g_strsplit(rest, "\n", MAX_CANDIDATES + 1);
    const char *candidates[MAX_CANDIDATES + 1] = { NULL };
    char *up = fuzz_dup(raw, len);
    const char *list = NULL, *list_up = NULL, *why, *why_up;
    char *link_list = NULL, *link_addr = NULL;

    for (size_t i = 0; i < len; i++)
        up[i] = g_ascii_toupper(up[i]);
    for (guint i = 0; lines[i] && i < MAX_CANDIDATES; i++)
        candidates[i] = lines[i];
    why = unsub_mailto_parse(raw, len, lists, &list);
    why_up = unsub_mailto_parse(up, len, lists, &list_up);
    FUZZ_CHECK(g_strcmp0(why, why_up) == 0, "\"%s\" upper-cased: \"%s\"", why ? why : "ok",
               why_up ? why_up : "ok");
    if (why) {
        FUZZ_CHECK(g_str_equal(why, "bad base32") || g_str_equal(why, "bad length") ||
                       g_str_equal(why, "unknown version") || g_str_equal(why, "unknown list"),
                   "reason \"%s\"", why);
    } else {
        g_autofree char *addr = NULL;

        FUZZ_CHECK(configured(list) && list == list_up, "list %s", list);
        addr = unsub_mailto_address(key, KEYLEN, raw, len, list, candidates);
        if (addr) {
            g_autofree char *lower = g_ascii_strdown(addr, -1);

            FUZZ_CHECK(g_str_equal(addr, lower), "<%s> not lower-cased", addr);
            FUZZ_CHECK(made_for(raw, len, list, addr), "forged code verified for <%s>", addr);
        }
    }
    if (unsub_code_check(key, KEYLEN, raw, len, &link_list, &link_addr)) {
        FUZZ_CHECK(made_for(raw, len, link_list, link_addr), "forged link code verified");
        g_free(link_list);
        g_free(link_addr);
    }
    free(up);
    free(raw);
    return 0;
}
