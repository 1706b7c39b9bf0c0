#ifndef POSTERN_DKIM_H
#define POSTERN_DKIM_H

/*
 * DKIM signing (RFC 6376, RFC 8463): relaxed/relaxed, rsa-sha256 and
 * ed25519-sha256, every signed field oversigned.
 *
 * The module signs bytes, never a parsed message: the caller serialises the
 * message once with CRLF line ends, hashes the body once (shared by every
 * personalised copy), signs each copy's header block and prepends the
 * returned header as raw bytes. Nothing here re-serialises or refolds.
 *
 * Files: dkim_canon.c (pure canonicalisation and the header field
 * iterator), dkim_key.c (everything that touches an EVP_PKEY),
 * dkim_sign.c (header selection, tag list, folding; a common header
 * prepared once for many copies).
 */

#include <stddef.h>
#include <glib.h>
#include <openssl/evp.h>

#define DKIM_ERROR dkim_error_quark()
GQuark dkim_error_quark(void);

/* Every failure is reported as DKIM_ERROR_FAILED; the message says what and,
 * for files, which file. */
enum dkim_error { DKIM_ERROR_FAILED };

/* SHA-256 digests (body hash, header hash). */
#define DKIM_HASH_LEN 32

/* Largest signature we produce: RSA-4096. Bigger keys are refused at load
 * so that signing needs no allocation for the signature itself. */
#define DKIM_SIG_MAX 512

enum dkim_key_type { DKIM_KEY_RSA, DKIM_KEY_ED25519 };

/* A private key, parsed once per process: under OpenSSL 3 parsing a PEM key
 * costs more than an RSA signature. Read-only after load, so one key may be
 * used by several threads at once. */
struct dkim_key {
    char *selector;             /* may be NULL for a key only published */
    char *path;
    enum dkim_key_type type;
    EVP_PKEY *pkey;
    EVP_MD_CTX *sign_ctx;       /* Ed25519: set up for signing once,
                                 * copied per signature: setting one up
                                 * costs ~3% of an Ed25519 signature */
    EVP_PKEY_CTX *rsa_ctx;      /* RSA: likewise, signs a SHA-256 digest */
};

/* One header field inside a header block; the pointers point into it. */
struct dkim_field {
    const char *name;           /* field name, trailing WSP excluded */
    size_t name_len;
    const char *value;          /* after the ':', folds (CRLF WSP) kept, */
    size_t value_len;           /* final line end excluded; NULL if the
                                 * first line has no ':' (malformed) */
};

/* ---- Keys (dkim_key.c) -------------------------------------------------- */

/* Load one private key (PEM, PKCS#8 or traditional) to sign as `selector`.
 * Refuses, with a GError naming the file: a missing or non-regular file, a
 * file group- or other-accessible (st_mode & 077: secrets must not leak
 * through a lax mode), an encrypted key (never prompts), a key neither RSA
 * nor Ed25519, RSA below 1024 bits (RFC 8301) or above 4096. The selector
 * must be a valid DNS name. */
struct dkim_key *dkim_key_load(const char *selector, const char *path,
                               GError **err);

/* Free a key; libcrypto clears the key material. NULL is allowed. */
void dkim_key_free(struct dkim_key *key);

/* Parse the [dkim] keys value "sel:path, sel2:path2" and load every key.
 * Returns a GPtrArray of struct dkim_key * that frees its keys, or NULL with
 * err set (no key, malformed entry, duplicate selector, any load failure). */
GPtrArray *dkim_keys_load(const char *spec, GError **err);

/* Generate an RSA-2048 or Ed25519 key and write it to `path` as PKCS#8 PEM,
 * mode 0600, atomically: a crash leaves no partial key and an existing file
 * is never overwritten (refused with a GError naming it). Returns the key,
 * ready to sign as `selector` (which may be NULL when the key is only to be
 * published with dkim_dns_record()). */
struct dkim_key *dkim_keygen(enum dkim_key_type type, const char *selector,
                             const char *path, GError **err);

/* The DNS TXT record text to publish at <selector>._domainkey.<domain>:
 * "v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo DER>" or
 * "v=DKIM1; k=ed25519; p=<base64 raw 32-byte key>" (RFC 8463: not SPKI).
 * Newly allocated (g_free); NULL only if libcrypto fails. */
char *dkim_dns_record(const struct dkim_key *key);

/* The a= tag value for the key: "rsa-sha256" or "ed25519-sha256". */
const char *dkim_key_algorithm(const struct dkim_key *key);

/* Sign the SHA-256 digest of the canonical header data as the key type's
 * DKIM algorithm requires: RSASSA-PKCS1-v1_5 with SHA-256 for RSA; for
 * Ed25519, PureEdDSA over the 32 digest bytes (RFC 8463: signing the data
 * itself fails every verifier). `sig` holds DKIM_SIG_MAX bytes. */
gboolean dkim_key_sign(const struct dkim_key *key,
                       const unsigned char digest[DKIM_HASH_LEN],
                       unsigned char sig[DKIM_SIG_MAX], size_t *sig_len,
                       GError **err);

/* ---- Canonicalisation (dkim_canon.c), pure ------------------------------ */

/* Iterate over the fields of a header block (CRLF lines; a line starting
 * with SP or HTAB continues the previous field). Start with *pos = 0.
 * Returns FALSE at the end of the block or at an empty line (the header /
 * body separator). A lone LF is accepted as a line end too. */
gboolean dkim_field_next(const char *block, size_t len, size_t *pos,
                         struct dkim_field *field);

/* Append the relaxed canonical form (RFC 6376 §3.4.2) of one field to `out`:
 * lowercase name, unfolded value, WSP runs as one SP, no WSP around the
 * colon or at the end, then CRLF. */
void dkim_canon_header_relaxed(const char *name, size_t name_len,
                               const char *value, size_t value_len,
                               GString *out);

/* Append the relaxed canonical form (RFC 6376 §3.4.4 with erratum 1384) of a
 * whole body to `out`: WSP runs as one SP, no WSP at line ends, no empty
 * lines at the end, a CRLF after a final unterminated line, and an empty
 * result for a body that is empty or only empty lines. Lines end in CRLF;
 * a lone CR or LF is content. */
void dkim_canon_body_relaxed(const char *body, size_t len, GString *out);

/* bh=: SHA-256 of the relaxed canonical body, computed in one streaming pass
 * without a copy of the body (messages may be tens of MiB). */
void dkim_body_hash(const char *body, size_t len,
                    unsigned char out[DKIM_HASH_LEN]);

/* ---- Signing (dkim_sign.c) ---------------------------------------------- */

/* TRUE if `name` is a DNS name made of 1-63 char letter/digit/hyphen labels
 * (at most 253 chars): selectors and d= go into a header verbatim, so a
 * stray ';' or CRLF in the configuration must not reach it. */
gboolean dkim_dns_name_valid(const char *name);

/* Sign one copy. `header_block` is the exact header section that will be
 * sent (CRLF lines, without the empty separator line); `body_hash` comes
 * from dkim_body_hash() over the exact body sent. Signs, in this order when
 * present: From, To, Subject, Date, Message-ID, Reply-To, Sender,
 * MIME-Version, Content-Type, Content-Transfer-Encoding, List-Unsubscribe,
 * List-Unsubscribe-Post; repeated fields bottom-up (RFC 6376 §5.4.2); From
 * listed once more than present so a second From cannot be added. A block
 * without From is refused. Returns the whole "DKIM-Signature: ...\r\n" field,
 * folded into lines under 78 chars, to prepend as raw bytes (g_free). */
char *dkim_sign(const struct dkim_key *key, const char *domain,
                const char *header_block, size_t header_len,
                const unsigned char body_hash[DKIM_HASH_LEN],
                gint64 timestamp, GError **err);

/* The common header of many copies (CRLF lines, no separator line), its
 * signed fields selected, canonicalised and their hash begun once, so that
 * each copy pays only for the fields it adds on top. Refuses a line without
 * a colon; a block without From is allowed (a copy may add one). */
struct dkim_header;
struct dkim_header *dkim_header_new(const char *block, size_t len,
                                    GError **err);
void dkim_header_free(struct dkim_header *h);

/* dkim_sign() of the header block `top` (CRLF lines: a copy's To:,
 * List-Unsubscribe) followed by h's block, byte for byte the same
 * signature: dkim_sign() is this with an empty top. Read-only on h, so
 * several threads may sign copies of one header at once. */
char *dkim_sign_copy(const struct dkim_key *key, const char *domain,
                     const struct dkim_header *h, const char *top,
                     size_t top_len,
                     const unsigned char body_hash[DKIM_HASH_LEN],
                     gint64 timestamp, GError **err);

#endif
