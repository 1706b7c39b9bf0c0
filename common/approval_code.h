/*
 * approval_code.h - the approve/discard links of a list with approval
 * ([list NAME] approval; docs/operations.md, "Approval").
 *
 * A link names one held message: "<[approval] url>/a/<code>", the code
 * 40 hex digits made as a VERP code is (common/bounce_code.h: queue id,
 * a fixed number, a 64-bit HMAC-SHA256), but under a key of its own:
 * HMAC-SHA256 of [approval] secret_file (default [bounce] secret_file)
 * with the label "postern approval v1".  One secret file can so serve
 * both uses, and a VERP code is never a valid approval code, nor the
 * reverse.  The code names the message, not the action: the page it
 * opens asks which (a mail scanner that fetches the link decides nothing).
 *
 * In common/ because two programs use it: the transform writes the link
 * into the moderator's notice, postern-api checks it.
 */
#ifndef POSTERN_APPROVAL_CODE_H
#define POSTERN_APPROVAL_CODE_H

#include "common/bounce_code.h"
#include "common/config.h"

#define APPROVAL_KEY_LEN 32         /* a SHA-256 HMAC */
#define APPROVAL_CODE_LEN BOUNCE_CODE_LEN

/* Has any list approval on (so the key is needed)? */
gboolean approval_wanted(const struct postern_config *cfg);

/*
 * The approval key from [approval] secret_file, or FALSE with *err (the
 * file unreadable, open to others, or too short: bounce_key_read()).
 */
gboolean approval_key_read(const struct postern_config *cfg,
                           unsigned char key[APPROVAL_KEY_LEN], GError **err);

/* Pure: the key derived from a secret (approval_key_read() without the file). */
void approval_key_derive(const void *secret, size_t len, unsigned char key[APPROVAL_KEY_LEN]);

/* The code of message msg, NUL-terminated in out. */
void approval_code_make(const unsigned char key[APPROVAL_KEY_LEN], uint64_t msg,
                        char out[APPROVAL_CODE_LEN + 1]);

/* Is code (len bytes, any case) one we made?  TRUE with *msg set. */
gboolean approval_code_check(const unsigned char key[APPROVAL_KEY_LEN], const char *code,
                             size_t len, uint64_t *msg);

/* "<[approval] url>/a/<code>" for message msg. */
char *approval_link(const struct postern_config *cfg, const unsigned char key[APPROVAL_KEY_LEN],
                    uint64_t msg);

#endif
