/*
 * unsub_code.h - signed one-click unsubscribe codes (RFC 8058; docs/design.md §9,
 * "Unsubscribe").
 *
 * A code names a list and a recipient, not a delivery, so a link keeps
 * working long after the message record is purged.  The full code, in the
 * https link (an HTTP POST brings no address of its own), is the bytes
 *     version (1) | list name | NUL | address (lower-cased) | MAC (10)
 * (the list name empty for the default list).  The short code, in the
 * mailto form's local part LOCAL+CODE (RFC 5321: 64 octets at most), is
 *     version (2) | list id (4) | MAC (10)
 * 24 digits whatever the list and the address: the list id is the first 4
 * bytes of SHA-256 of the list's name, and the address is the unsubscribe
 * mail's own sender (or its From:), which the MAC must verify for.  Full
 * codes sent in mailto forms before short ones existed are still read.
 * Both are in lower-case base32 (RFC 4648 alphabet, no padding): safe in a URL path
 * and in a local part, and read back in any case, as an MTA may fold the
 * case of a local part.  The MAC is HMAC-SHA256 under [bounce]
 * secret_file over a purpose label and the bytes before it, truncated to
 * 80 bits.  A short code's MAC is the full code's of the same list and
 * address (one HMAC a copy; the two sit in the same header, so one gives
 * no power the other lacks), and the version byte keeps either from being
 * read as the other.  The label ("postern-unsubscribe-1", not bounce_code.c's
 * "postern-verp-1") makes the MAC a key of its own: no VERP code, nor any
 * other code made with the same secret, is ever a valid unsubscribe code.
 *
 * Pure: no spool, no I/O, no logging; the key is the caller's bytes
 * (bounce_key_read()).  In common/ because three programs use it: the
 * transform makes the codes, postern-api checks the links, ingest refuses
 * a malformed mailto code at RCPT (no key needed) and the transform
 * checks the mailto form.
 */
#ifndef POSTERN_UNSUB_CODE_H
#define POSTERN_UNSUB_CODE_H

#include <glib.h>

/* The longest code unsub_code_check() reads (a list name and an address of
 * 255 bytes each are well inside it). */
#define UNSUB_CODE_MAX 1024

/* The short code's length, in base32 digits. */
#define UNSUB_MAILTO_CODE_LEN 24
#define UNSUB_LIST_ID_BYTES 4

/* The full code for (list, addr); addr is lower-cased into it.  g_free() it. */
char *unsub_code_make(const void *key, size_t keylen, const char *list, const char *addr);

/*
 * Is code (len bytes, any case) one we made?  TRUE with *list and *addr
 * newly allocated; FALSE for a bad length or character, an unknown
 * version, a malformed payload or a MAC that does not match (compared in
 * constant time).
 */
gboolean unsub_code_check(const void *key, size_t keylen, const char *code, size_t len,
                          char **list, char **addr);

/* The id of list in a short code (config_validate() refuses two lists with the same). */
void unsub_list_id(const char *list, guint8 id[UNSUB_LIST_ID_BYTES]);

/* The short code for (list, addr), UNSUB_MAILTO_CODE_LEN digits.  g_free() it. */
char *unsub_mailto_code_make(const void *key, size_t keylen, const char *list, const char *addr);

/*
 * The shape of the code (len bytes, any case) of a mailto local part,
 * checked without the key: NULL when it is well formed, with *list the
 * name of one of lists (struct postern_list *, config's lists) it names;
 * else why not: "bad base32", "bad length", "unknown version" or
 * "unknown list".  Either form, short or full.
 */
const char *unsub_mailto_parse(const char *code, size_t len, const GPtrArray *lists,
                               const char **list);

/*
 * Who a well-formed mailto code (unsub_mailto_parse(), naming list)
 * unsubscribes: a full code's own address if its MAC verifies; for a short
 * code the first of candidates (NULL-terminated; "" is skipped) its MAC
 * verifies for.  Lower-cased and newly allocated, or NULL.
 */
char *unsub_mailto_address(const void *key, size_t keylen, const char *code, size_t len,
                           const char *list, const char *const *candidates);

/*
 * The header lines of one copy to addr on list, each ending CRLF:
 * "List-Unsubscribe: <BASE/u/CODE>, <mailto:LOCAL+SHORT@DOMAIN>" (folded
 * between the two; CODE the full code, SHORT the short one) and "List-Unsubscribe-Post: List-Unsubscribe=One-Click".
 * base ("https://lists.example.org", a trailing '/' is dropped) or
 * mailto ("unsubscribe@lists.example.org") may be NULL or "" for none of
 * that form; without base there is no List-Unsubscribe-Post (RFC 8058
 * one-click is only for an https URI); without either, "".
 */
char *unsub_header_make(const void *key, size_t keylen, const char *list, const char *addr,
                        const char *base, const char *mailto);

#endif
