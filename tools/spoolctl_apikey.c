/*
 * spoolctl_apikey.c - `api-key add NAME SCOPE`: a new bearer key for
 * postern-api.  The key is printed once and never stored: [api] keys_file
 * gets "NAME SCOPE SHA256-HEX", which postern-api reads again when the
 * file changes (api/api_keys.c).
 */
#include "tools/spoolctl.h"
#include "common/log.h"
#include "spool/spool_token.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static gboolean key_name_valid(const char *name)
{
    if (!*name || strlen(name) > 64)
        return FALSE;
    for (const char *p = name; *p; p++)
        if (!g_ascii_isalnum(*p) && !strchr("._@-", *p))
            return FALSE;
    return TRUE;
}

/* Is NAME in the file already?  Two keys of one name could not be told apart in the log. */
static gboolean key_name_taken(const char *path, const char *name)
{
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;

    if (!g_file_get_contents(path, &text, NULL, NULL))
        return FALSE;
    lines = g_strsplit(text, "\n", -1);
    for (int i = 0; lines[i]; i++) {
        g_auto(GStrv) f = g_strsplit_set(g_strstrip(lines[i]), " \t", 2);
        if (f[0] && g_str_equal(f[0], name))
            return TRUE;
    }
    return FALSE;
}

static int key_add(struct ctl *c, int argc, char **argv)
{
    GOptionEntry none[] = { { NULL } };
    const char *path = c->cfg.api.keys_file;
    g_autofree char *key = NULL, *hash = NULL, *line = NULL;
    int fd;

    if (!ctl_parse(c, &argc, &argv, "NAME read|tokens|admin - a new key for postern-api", none))
        return CTL_USAGE;
    if (argc != 3 || !key_name_valid(argv[1]) ||
        !(g_str_equal(argv[2], "read") || g_str_equal(argv[2], "tokens") ||
          g_str_equal(argv[2], "admin"))) {
        fprintf(stderr, "spoolctl: api-key add NAME read|tokens|admin "
                        "(NAME: letters, digits, . _ @ -)\n");
        return CTL_USAGE;
    }
    if (!*path) {
        fprintf(stderr, "spoolctl: [api] keys_file is not set in the config\n");
        return CTL_USAGE;
    }
    if (key_name_taken(path, argv[1])) {
        fprintf(stderr, "spoolctl: %s: a key named %s exists already\n", path, argv[1]);
        return CTL_USAGE;
    }
    /* 32 random bytes from OpenSSL, base64url, like a token. */
    key = spool_token_generate();
    hash = g_compute_checksum_for_string(G_CHECKSUM_SHA256, key, -1);
    line = g_strdup_printf("%s %s %s\n", argv[1], argv[2], hash);
    if ((fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) < 0 ||
        write(fd, line, strlen(line)) != (ssize_t)strlen(line) || fsync(fd) < 0) {
        fprintf(stderr, "spoolctl: %s: %s\n", path, g_strerror(errno));
        if (fd >= 0)
            close(fd);
        return CTL_FAIL;
    }
    close(fd);
    msg_info("api key %s added, scope %s, to %s", argv[1], argv[2], path);
    printf("%s\n", key);
    return CTL_OK;
}

int ctl_api_key(struct ctl *c, int argc, char **argv)
{
    if (argc >= 2 && g_str_equal(argv[1], "add"))
        return key_add(c, argc - 1, argv + 1);
    fprintf(stderr, "usage: spoolctl api-key add NAME read|tokens|admin\n");
    return CTL_USAGE;
}
