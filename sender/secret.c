/*
 * secret.c - the sender's and the dispatcher's secrets, read through
 * spool/secret_file.h, with the config key named in any error.
 */
#include "sender/secret.h"
#include "sender/smtp.h"
#include "spool/secret_file.h"

#include <string.h>

#define SECRET_FILE_MAX 65536

char *secret_read(const char *key, const char *path, GError **err)
{
    GError *local = NULL;
    size_t len;
    char *text = secret_file_read(path, SECRET_FILE_MAX, &len, &local);

    if (text == NULL) {
        g_set_error(err, SMTP_ERROR, SMTP_ERROR_CONFIG, "%s %s", key, local->message);
        g_error_free(local);
    }
    return text;
}

void secret_free(char *text)
{
    if (text)
        secret_file_free(text, strlen(text));
}
