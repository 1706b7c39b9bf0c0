/*
 * secret_file.c - see secret_file.h.
 */
#include "common/secret_file.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>
#include <openssl/crypto.h>

G_DEFINE_QUARK(postern-secret-file, secret_file_error)

/*
 * One descriptor, its mode checked with fstat(): the mode judged is the
 * mode of the bytes read, not of whatever the path names a moment later.
 * One allocation of the file's size, so no copy of the secret is left
 * behind in freed memory.
 */
char *secret_file_read(const char *path, size_t max, size_t *len, GError **err)
{
    struct stat st;
    char *buf = NULL;
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

    if (fd < 0) {
        g_set_error(err, secret_file_error_quark(), 1, "%s: %s", path, g_strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        g_set_error(err, secret_file_error_quark(), 1, "%s: not a regular file", path);
    } else if (st.st_mode & 077) {
        g_set_error(err, secret_file_error_quark(), 1,
                    "%s: readable by group or others (mode %04o); refusing it, chmod 600 the file",
                    path, (unsigned)(st.st_mode & 07777));
    } else if ((size_t)st.st_size > max) {
        g_set_error(err, secret_file_error_quark(), 1, "%s: over %zu bytes", path, max);
    } else {
        buf = g_malloc((size_t)st.st_size + 1);
        while (got < (size_t)st.st_size) {
            ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);

            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                g_set_error(err, secret_file_error_quark(), 1, "%s: %s", path,
                            g_strerror(errno));
                secret_file_free(buf, got);
                buf = NULL;
                break;
            }
            if (n == 0)
                break;
            got += (size_t)n;
        }
    }
    close(fd);
    if (buf) {
        buf[got] = '\0';
        *len = got;
    }
    return buf;
}

void secret_file_free(char *bytes, size_t len)
{
    if (!bytes)
        return;
    OPENSSL_cleanse(bytes, len);
    g_free(bytes);
}

#define SECRET_TEXT_MAX 65536

char *secret_read(const char *key, const char *path, GError **err)
{
    GError *local = NULL;
    size_t len;
    char *text = secret_file_read(path, SECRET_TEXT_MAX, &len, &local);

    if (text == NULL) {
        g_set_error(err, local->domain, local->code, "%s %s", key, local->message);
        g_error_free(local);
    }
    return text;
}

void secret_free(char *text)
{
    if (text)
        secret_file_free(text, strlen(text));
}
