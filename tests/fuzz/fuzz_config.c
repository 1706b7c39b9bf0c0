/*
 * fuzz_config - common/config.h config_load on arbitrary files: the input is
 * written to a temporary file, loaded, and freed. Errors are fine; a crash,
 * a leak or an error without a message is not. A file that loads must give
 * the values config_derive promises.
 */
#include <stdint.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "common/config.h"
#include "fuzz_util.h"

static char *path;

static void cleanup(void)
{
    if (path)
        g_unlink(path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* tmpfs when there is one: a file per execution on disk costs 6x. */
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : g_get_tmp_dir();
    int fd;

    path = g_build_filename(dir, "postern-fuzz-config-XXXXXX.ini", NULL);
    fd = g_mkstemp(path);
    if (fd < 0)
        abort();
    close(fd);
    atexit(cleanup);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct postern_config cfg;
    GError *err = NULL;

    /* Not g_file_set_contents: it fsyncs, which would be most of the time. */
    int fd = open(path, O_WRONLY | O_TRUNC);

    if (fd < 0 || (size > 0 && write(fd, data, size) != (ssize_t)size) || close(fd) != 0)
        abort();
    if (config_load(&cfg, path, &err)) {
        g_autoptr(GPtrArray) problems = g_ptr_array_new_with_free_func(g_free);

        FUZZ_CHECK(err == NULL, "loaded with an error set");
        FUZZ_CHECK(cfg.ingest.hostname && cfg.workers.dispatch && cfg.dkim.keys, "derived");
        /* What the daemons run before start (config_validate()): each problem
         * names the file; with none, the values the daemons rely on hold. */
        if (!config_validate(&cfg, problems)) {
            for (guint i = 0; i < problems->len; i++)
                FUZZ_CHECK(g_str_has_prefix(problems->pdata[i], path),
                           "problem without the file name: %s", (char *)problems->pdata[i]);
            config_free(&cfg);
            return 0;
        }
        FUZZ_CHECK(cfg.ingest.listen && cfg.ingest.listen[0], "no listen address");
        FUZZ_CHECK(cfg.ingest.recipients && cfg.ingest.recipients[0], "no recipient");
        FUZZ_CHECK(cfg.spool.max_size >= cfg.spool.map_size, "max_size < map_size");
        FUZZ_CHECK(cfg.retry.initial > 0 && cfg.retry.max >= cfg.retry.initial, "retry");
        FUZZ_CHECK(cfg.relay.max_connections > 0 && cfg.relay.max_rcpt_per_txn > 0, "relay");
        FUZZ_CHECK(cfg.retry.lease > 0 && cfg.workers.slots > 0, "lease, slots");
    } else {
        FUZZ_CHECK(err != NULL && err->message && g_str_has_prefix(err->message, path),
                   "error without the file name: %s", err ? err->message : "(none)");
        g_error_free(err);
    }
    config_free(&cfg);
    return 0;
}
