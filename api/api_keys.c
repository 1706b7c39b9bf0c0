/*
 * api_keys.c - the bearer keys of postern-api.
 *
 * The file holds no key, only its SHA-256: "NAME SCOPE HEX" a line, '#'
 * comments and blank lines skipped (`spoolctl api-key add` writes it).  A
 * presented key is hashed and compared with every entry by CRYPTO_memcmp,
 * so the time taken says nothing about how close a guess came.
 */
#include "api/api.h"
#include "common/log.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <string.h>
#include <sys/stat.h>

struct api_key {
    char *name;
    enum api_scope scope;
    unsigned char hash[SHA256_DIGEST_LENGTH];
};

struct api_keys {
    GArray *keys;                   /* struct api_key */
    struct stat st;                 /* of the file when read: reload when it changes */
};

static const char *const api_scope_names[] = { "none", "read", "tokens", "admin" };

const char *api_scope_name(enum api_scope s)
{
    return api_scope_names[s];
}

gboolean api_scope_parse(const char *text, enum api_scope *out)
{
    for (int s = API_SCOPE_READ; s <= API_SCOPE_ADMIN; s++)
        if (g_str_equal(text, api_scope_names[s])) {
            *out = s;
            return TRUE;
        }
    return FALSE;
}

static gboolean api_keys_hex(const char *hex, unsigned char out[SHA256_DIGEST_LENGTH])
{
    if (strlen(hex) != 2 * SHA256_DIGEST_LENGTH)
        return FALSE;
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        int hi = g_ascii_xdigit_value(hex[2 * i]), lo = g_ascii_xdigit_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return FALSE;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return TRUE;
}

static void api_key_clear(gpointer p)
{
    g_free(((struct api_key *)p)->name);
}

struct api_keys *api_keys_load(const char *path, GError **err)
{
    struct api_keys *keys = g_new0(struct api_keys, 1);
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;

    keys->keys = g_array_new(FALSE, TRUE, sizeof(struct api_key));
    g_array_set_clear_func(keys->keys, api_key_clear);
    /* No file named: no key, every request but /healthz is refused. */
    if (!*path)
        return keys;
    if (stat(path, &keys->st) < 0 || !g_file_get_contents(path, &text, NULL, err)) {
        if (err && !*err)
            g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno), "%s: %s", path,
                        g_strerror(errno));
        api_keys_free(keys);
        return NULL;
    }
    lines = g_strsplit(text, "\n", -1);
    for (int i = 0; lines[i]; i++) {
        g_auto(GStrv) f = NULL;
        struct api_key k = { 0 };
        char *line = g_strstrip(lines[i]);

        if (!*line || *line == '#')
            continue;
        f = g_strsplit_set(line, " \t", -1);
        /* Split on runs of blanks: drop the empty fields between them. */
        g_autoptr(GPtrArray) w = g_ptr_array_new();
        for (int j = 0; f[j]; j++)
            if (*f[j])
                g_ptr_array_add(w, f[j]);
        if (w->len != 3 || !api_scope_parse(w->pdata[1], &k.scope) ||
            !api_keys_hex(w->pdata[2], k.hash)) {
            g_set_error(err, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                        "%s:%d: expected NAME SCOPE SHA256-HEX (scope read, tokens or admin)",
                        path, i + 1);
            api_keys_free(keys);
            return NULL;
        }
        k.name = g_strdup(w->pdata[0]);
        g_array_append_val(keys->keys, k);
    }
    return keys;
}

void api_keys_free(struct api_keys *keys)
{
    if (!keys)
        return;
    g_array_unref(keys->keys);
    g_free(keys);
}

void api_keys_refresh(struct api_keys **keys, const char *path)
{
    struct stat st;
    struct api_keys *fresh;
    GError *err = NULL;

    if (!*path)
        return;
    /* The file removed: every key with it (a quick way to shut the API). */
    if (stat(path, &st) < 0) {
        if (errno == ENOENT && (*keys)->keys->len) {
            msg_warn("keys file %s is gone: no key is accepted now", path);
            g_array_set_size((*keys)->keys, 0);
            memset(&(*keys)->st, 0, sizeof((*keys)->st));
        }
        return;
    }
    if (st.st_ino == (*keys)->st.st_ino && st.st_size == (*keys)->st.st_size &&
        st.st_mtim.tv_sec == (*keys)->st.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == (*keys)->st.st_mtim.tv_nsec)
        return;
    /* A broken file keeps the keys we have: better than locking everyone out. */
    if (!(fresh = api_keys_load(path, &err))) {
        msg_warn("keys file not reloaded, the old keys stay: %s", err->message);
        g_error_free(err);
        (*keys)->st = st;
        return;
    }
    msg_info("keys file %s reloaded: %u key(s)", path, fresh->keys->len);
    api_keys_free(*keys);
    *keys = fresh;
}

enum api_scope api_keys_check(const struct api_keys *keys, const char *key, const char **name)
{
    unsigned char hash[SHA256_DIGEST_LENGTH];
    enum api_scope scope = API_SCOPE_NONE;

    *name = NULL;
    SHA256((const unsigned char *)key, strlen(key), hash);
    /* Every entry, no early exit: the time does not depend on which matched. */
    for (guint i = 0; i < keys->keys->len; i++) {
        const struct api_key *k = &g_array_index(keys->keys, struct api_key, i);
        if (CRYPTO_memcmp(hash, k->hash, sizeof(hash)) == 0 && !*name) {
            scope = k->scope;
            *name = k->name;
        }
    }
    OPENSSL_cleanse(hash, sizeof(hash));
    return scope;
}
