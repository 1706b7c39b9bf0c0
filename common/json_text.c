/*
 * json_text.c - one pass over JSON text before json-glib sees it
 * (json_text.h says why).
 */
#include "common/json_text.h"

#include <stdarg.h>

G_DEFINE_QUARK(postern-json-text-error, json_text_error)

/* FALSE, with *err saying why and, after it, at which byte. */
G_GNUC_PRINTF(3, 4)
static gboolean json_text_fail(GError **err, size_t at, const char *fmt, ...)
{
    g_autofree char *why = NULL;
    va_list ap;

    va_start(ap, fmt);
    why = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(err, JSON_TEXT_ERROR, 0, "%s (byte %zu)", why, at);
    return FALSE;
}

gboolean json_text_check(const char *text, size_t len, int max_depth, GError **err)
{
    gboolean in_string = FALSE;
    int depth = 0;
    size_t i = 0;

    while (i < len && g_ascii_isspace(text[i]))
        i++;
    if (i == len || (text[i] != '{' && text[i] != '['))
        return json_text_fail(err, i, "expected a JSON object or array");
    for (; i < len; i++) {
        char c = text[i];

        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = FALSE;
        } else if (c == '"') {
            in_string = TRUE;
        } else if (c == '[' || c == '{') {
            if (++depth > max_depth)
                return json_text_fail(err, i, "nested deeper than %d levels", max_depth);
        } else if (c == ']' || c == '}') {
            /* The first value is complete: only blanks may follow it. */
            if (--depth == 0)
                break;
        }
    }
    for (i++; i < len; i++)
        if (!g_ascii_isspace(text[i]))
            return json_text_fail(err, i, "content after the JSON value");
    return TRUE;
}
