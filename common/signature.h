/*
 * signature.h - the X-Postern-Signature of a body Postern posts (events,
 * claims): "sha256=" and the hex HMAC-SHA256 of the body under a shared
 * secret, computed by OpenSSL.  The receiver checks the bytes it got.
 */
#ifndef POSTERN_SIGNATURE_H
#define POSTERN_SIGNATURE_H

#include <stddef.h>

#define SIGNATURE_LEN (7 + 64)      /* "sha256=" and 64 hex digits */

void signature_sign(const void *key, size_t key_len, const char *body, size_t body_len,
                    char out[SIGNATURE_LEN + 1]);

#endif
