/*
 * unsub_code.h - signed one-click unsubscribe codes (RFC 8058; docs/design.md §9,
 * "Unsubscribe").
 *
 * A code names a list and a recipient address itself, not a delivery, so
 * a link keeps working long after the message record is purged.  It is
 * the bytes
 *     version (1) | list name | NUL | address (lower-cased) | MAC (10)
 * (the list name empty for the default list: a mailto local part is
 * LOCAL+CODE, and RFC 5321 allows 64 octets)
 * in lower-case base32 (RFC 4648 alphabet, no padding): safe in a URL path
 * and in a local part, and read back in any case, as an MTA may fold the
 * case of a local part.  The MAC is HMAC-SHA256 under [bounce]
 * secret_file over a purpose label and the bytes before it, truncated to
 * 80 bits.  The label ("postern-unsubscribe-1", not bounce_code.c's
 * "postern-verp-1") makes the MAC a key of its own: no VERP code, nor any
 * other code made with the same secret, is ever a valid unsubscribe code.
 *
 * Pure: no spool, no I/O, no logging; the key is the caller's bytes
 * (bounce_key_read()).  In common/ because three programs use it: the
 * transform makes the codes, postern-api checks the links and the
 * transform checks the mailto form.
 */
#ifndef POSTERN_UNSUB_CODE_H
#define POSTERN_UNSUB_CODE_H

#include <glib.h>

/* The longest code unsub_code_check() reads (a list name and an address of
 * 255 bytes each are well inside it). */
#define UNSUB_CODE_MAX 1024

/* The code for (list, addr); addr is lower-cased into it.  g_free() it. */
char *unsub_code_make(const void *key, size_t keylen, const char *list, const char *addr);

/*
 * Is code (len bytes, any case) one we made?  TRUE with *list and *addr
 * newly allocated; FALSE for a bad length or character, an unknown
 * version, a malformed payload or a MAC that does not match (compared in
 * constant time).
 */
gboolean unsub_code_check(const void *key, size_t keylen, const char *code, size_t len,
                          char **list, char **addr);

/*
 * The header lines of one copy to addr on list, each ending CRLF:
 * "List-Unsubscribe: <BASE/u/CODE>, <mailto:LOCAL+CODE@DOMAIN>" (folded
 * between the two) and "List-Unsubscribe-Post: List-Unsubscribe=One-Click".
 * base ("https://lists.example.org", a trailing '/' is dropped) or
 * mailto ("unsubscribe@lists.example.org") may be NULL or "" for none of
 * that form; without base there is no List-Unsubscribe-Post (RFC 8058
 * one-click is only for an https URI); without either, "".
 */
char *unsub_header_make(const void *key, size_t keylen, const char *list, const char *addr,
                        const char *base, const char *mailto);

#endif
