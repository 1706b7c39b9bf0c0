/*
 * secret_file.h - read a file that holds a secret (a DKIM private key, the
 * relay password, a CURVE secret key), refusing one that group or others
 * may read (SPEC §8).
 */
#ifndef POSTERN_SECRET_FILE_H
#define POSTERN_SECRET_FILE_H

#include <glib.h>

/*
 * The bytes of path (NUL-terminated; *len without the NUL), or NULL with
 * *err naming path: not a regular file, readable by group or others, over
 * max bytes, unreadable.  Wipe the result with secret_file_free().
 */
char *secret_file_read(const char *path, size_t max, size_t *len, GError **err);
void secret_file_free(char *bytes, size_t len);

/*
 * A secret given by a config key (the relay password, a CURVE secret
 * key): its text, or NULL with *err naming the key and the path.  Wipe it
 * with secret_free().
 */
char *secret_read(const char *key, const char *path, GError **err);
void secret_free(char *text);

#endif
