/*
 * bounce_code.h - VERP return paths that name one delivery ([bounce] verp).
 *
 * With verp on, the envelope sender of each copy is
 * "<local>+<code>@<domain>", where code names the delivery (queue id and
 * recipient number) and carries an HMAC-SHA256 over both under
 * [bounce] secret_file, truncated to 64 bits, so that a bounce to a made-up
 * code is told apart from one to a code that we sent.
 *
 * The code is 40 lowercase hex digits: 16 of queue id, 8 of recipient
 * number, 16 of MAC.  Hex, not base32: it survives MTAs that fold the
 * case of local parts, and GLib has no base32.  A code read back is
 * compared case-insensitively and in constant time (CRYPTO_memcmp).
 *
 * Pure: no spool, no I/O, no logging; the key is the caller's bytes
 * (bounce_key_read() reads them, the one function here that does I/O).
 * In common/ because two programs make codes: the sender (the return path
 * of each copy) and the transform (checking the bounces that come back).
 */
#ifndef POSTERN_BOUNCE_CODE_H
#define POSTERN_BOUNCE_CODE_H

#include <glib.h>
#include <stdint.h>

#define BOUNCE_CODE_LEN 40          /* hex digits */
#define BOUNCE_KEY_MIN 16           /* a shorter secret is refused */

/* The code of delivery (msg, idx), NUL-terminated in out. */
void bounce_code_make(const void *key, size_t keylen, uint64_t msg, uint32_t idx,
                      char out[BOUNCE_CODE_LEN + 1]);

/*
 * Is code (len bytes, any case) one we made?  TRUE with *msg and *idx set;
 * FALSE for a wrong length, a non-hex digit or a MAC that does not match.
 */
gboolean bounce_code_check(const void *key, size_t keylen, const char *code, size_t len,
                           uint64_t *msg, uint32_t *idx);

/* "local+code@domain" for delivery (msg, idx). */
char *bounce_address_make(const void *key, size_t keylen, const char *local, const char *domain,
                          uint64_t msg, uint32_t idx);

/*
 * Is addr "local+<something>@domain" (local part and domain compared
 * case-insensitively)?  *code and *code_len then point at <something>,
 * inside addr.  Says nothing of whether the code is good: that is
 * bounce_code_check().
 */
gboolean bounce_address_split(const char *addr, const char *local, const char *domain,
                              const char **code, size_t *code_len);

/*
 * [bounce] secret_file as a key (trailing white space dropped), or NULL
 * with *err: unreadable, readable by others, or shorter than
 * BOUNCE_KEY_MIN.  Wipe it with secret_free().
 */
char *bounce_key_read(const char *path, size_t *len, GError **err);

/*
 * The return path of copy (msg, idx): envelope_from's local part +CODE at
 * its domain.  envelope_from without an @ is returned as it is.
 */
char *bounce_return_path(const void *key, size_t keylen, const char *envelope_from,
                         uint64_t msg, uint32_t idx);

#endif
