/*
 * Delivery into a Maildir (https://cr.yp.to/proto/maildir.html), for the
 * relay url maildir:/path: the message is written under a unique name in
 * tmp/, synced, linked into new/ and new/ synced before success is
 * reported; a reader never sees a partial message. The bytes are stored
 * as given, CR LF included, so that DKIM signatures still verify.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sender/smtp.h"

static gboolean fail(GError **err, int errnum, const char *what, const char *path)
{
    g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errnum), "maildir: %s %s: %s",
            what, path, g_strerror(errnum));
    return FALSE;
}

/*
 * sec.M<usec>P<pid>Q<n>.host: the counter keeps threads and quick
 * successive calls apart, pid the processes, host the machines sharing the
 * folder. The spec asks for "/" and ":" in the host name to be escaped.
 */
static char *unique_name(void)
{
    static gint counter;
    gint64  now = g_get_real_time();
    GString *name = g_string_new(NULL);
    const char *s;

    g_string_printf(name, "%" G_GINT64_FORMAT ".M%06dP%dQ%d.", now / G_USEC_PER_SEC,
            (int) (now % G_USEC_PER_SEC), (int) getpid(), g_atomic_int_add(&counter, 1));
    for (s = g_get_host_name(); *s; s++) {
        if (*s == '/')
            g_string_append(name, "\\057");
        else if (*s == ':')
            g_string_append(name, "\\072");
        else
            g_string_append_c(name, *s);
    }
    return g_string_free(name, FALSE);
}

static gboolean file_write(const char *path, const char *const *parts, const size_t *lens,
               size_t n_parts, GError **err)
{
    int     fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    size_t  k, off;
    int     e;

    if (fd < 0)
        return fail(err, errno, "create", path);
    for (k = 0; k < n_parts; k++) {
        for (off = 0; off < lens[k];) {
            ssize_t n = write(fd, parts[k] + off, lens[k] - off);

            if (n >= 0) {
                off += n;
            } else if (errno != EINTR) {
                e = errno;
                close(fd);
                return fail(err, e, "write", path);
            }
        }
    }
    if (fsync(fd) < 0) {
        e = errno;
        close(fd);
        return fail(err, e, "fsync", path);
    }
    return close(fd) == 0 || fail(err, errno, "close", path);
}

/* A new directory entry is durable only once its directory is synced. */
static gboolean dir_sync(const char *path, GError **err)
{
    int     fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int     e;

    if (fd < 0)
        return fail(err, errno, "open", path);
    if (fsync(fd) < 0) {
        e = errno;
        close(fd);
        return fail(err, e, "fsync", path);
    }
    close(fd);
    return TRUE;
}

gboolean maildir_deliver(const char *dir, const char *const *parts, const size_t *lens,
             size_t n_parts, GError **err)
{
    static const char *const subdirs[] = {"tmp", "new", "cur"};
    g_autofree char *name = unique_name();
    g_autofree char *tmp = g_build_filename(dir, "tmp", name, NULL);
    g_autofree char *new = g_build_filename(dir, "new", name, NULL);
    g_autofree char *new_dir = g_build_filename(dir, "new", NULL);
    gboolean ok;
    size_t  i;

    for (i = 0; i < G_N_ELEMENTS(subdirs); i++) {
        g_autofree char *sub = g_build_filename(dir, subdirs[i], NULL);

        if (g_mkdir_with_parents(sub, 0700) < 0)
            return fail(err, errno, "mkdir", sub);
    }
    if (!file_write(tmp, parts, lens, n_parts, err)) {
        unlink(tmp);
        return FALSE;
    }

    /*
     * link() rather than rename(): it refuses to replace a message that
     * somehow has the same name.
     */
    ok = link(tmp, new) == 0 || fail(err, errno, "link", new);
    unlink(tmp);
    return ok && dir_sync(new_dir, err);
}
