/*
 * secret.h - secrets from files only their owner may read (SPEC §8): the
 * relay password and the CURVE secret keys of the sender workers and the
 * dispatcher.
 */
#ifndef POSTERN_SECRET_H
#define POSTERN_SECRET_H

#include <glib.h>

/*
 * The text of path, or NULL with *err naming key and path: unreadable,
 * or readable by group or others.  Wipe it with secret_free().
 */
char *secret_read(const char *key, const char *path, GError **err);
void secret_free(char *text);

#endif
