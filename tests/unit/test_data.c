/*
 * test_data.c - see test_data.h.
 */
#include "tests/unit/test_data.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

GBytes *test_data_crlf_path(const char *path)
{
    GString *out = g_string_new(NULL);
    g_autofree char *raw = NULL;
    gsize len;

    if (!g_file_get_contents(path, &raw, &len, NULL))
        fail_msg("cannot read %s", path);
    for (gsize i = 0; i < len; i++) {
        if (raw[i] == '\n' && (i == 0 || raw[i - 1] != '\r'))
            g_string_append_c(out, '\r');
        g_string_append_c(out, raw[i]);
    }
    return g_string_free_to_bytes(out);
}

GBytes *test_data_crlf(const char *dir, const char *name)
{
    g_autofree char *here = g_path_get_dirname(__FILE__);
    g_autofree char *path = g_build_filename(here, "..", "data", dir, name, NULL);

    return test_data_crlf_path(path);
}
