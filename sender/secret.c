/*
 * secret.c - read a secret file, refusing one that others may read.
 */
#include "sender/secret.h"
#include "sender/smtp.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/crypto.h>

#define SECRET_FILE_MAX 65536

/*
 * The mode is checked on the open descriptor, so the file checked is the
 * file read.
 */
char *secret_read(const char *key, const char *path, GError **err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    GString *text;
    struct stat st;
    char buf[4096];
    ssize_t n;

    if (fd < 0 || fstat(fd, &st) < 0) {
        g_set_error(err, SMTP_ERROR, SMTP_ERROR_CONFIG, "%s %s: %s", key, path,
                    g_strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (st.st_mode & (S_IRGRP | S_IROTH)) {
        g_set_error(err, SMTP_ERROR, SMTP_ERROR_CONFIG,
                    "%s %s: readable by group or others; chmod 600 it", key, path);
        close(fd);
        return NULL;
    }
    text = g_string_new(NULL);
    while ((n = read(fd, buf, sizeof(buf))) > 0 && text->len < SECRET_FILE_MAX)
        g_string_append_len(text, buf, n);
    OPENSSL_cleanse(buf, sizeof(buf));
    close(fd);
    if (n < 0) {
        g_set_error(err, SMTP_ERROR, SMTP_ERROR_CONFIG, "%s %s: %s", key, path,
                    g_strerror(errno));
        secret_free(g_string_free(text, FALSE));
        return NULL;
    }
    return g_string_free(text, FALSE);
}

void secret_free(char *text)
{
    if (!text)
        return;
    OPENSSL_cleanse(text, strlen(text));
    g_free(text);
}
