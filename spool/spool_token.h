/*
 * spool_token.h - one-time sending tokens, stored by their SHA-256 only.
 *
 * A token lets its owner (an envelope sender) send one message to the
 * recipient list registered with it.  The token itself is never stored or
 * logged: records are keyed by SHA-256(token), and operators name a token
 * by the first hex digits of that hash ("token id").
 */
#ifndef POSTERN_TOKEN_H
#define POSTERN_TOKEN_H

#include "spool/spool.h"

#define TOKEN_HASH_LEN 32
#define TOKEN_ID_LEN 16             /* hex digits shown as the token's id */

enum spool_token_status { TOKEN_ACTIVE, TOKEN_USED, TOKEN_EXPIRED, TOKEN_REVOKED };

struct spool_token {
    unsigned char hash[TOKEN_HASH_LEN];
    char *sender;                   /* owner: normalised envelope address */
    GPtrArray *recipients;
    gboolean hide_sender;
    int64_t created;
    int64_t expires;                /* 0: never */
    int64_t used;                   /* 0: not yet */
    queue_id used_by;               /* the message that used it */
    gboolean revoked;
    char *list;                     /* the list it sends to; records before lists: "default" */
};

void spool_token_hash(const char *token, unsigned char out[TOKEN_HASH_LEN]);
void spool_token_id(const unsigned char hash[TOKEN_HASH_LEN], char out[TOKEN_ID_LEN + 1]);
/* A new token: 32 random bytes from OpenSSL, base64url without padding. */
char *spool_token_generate(void);
/* Address normalisation for storing: no <> or blanks, local part kept, domain lowercased. */
char *spool_token_normalise_addr(const char *addr);
/*
 * The key two addresses are compared by: normalised, then wholly
 * lowercased.  The platform (LEGO) lowercases addresses and mail systems
 * treat local parts without regard to case, so Alice@Abakus.NO is the
 * owner alice@abakus.no: used by the sender binding and to send each
 * recipient once (docs/design.md §4.1).
 */
char *spool_token_addr_key(const char *addr);
gboolean spool_token_addr_same(const char *a, const char *b);
/*
 * Checking a token request, for every front end (spoolctl now, an HTTP
 * API next): the rules live here so that no two front ends differ.  A
 * broken rule is SPOOL_ERR_INVALID, with a message naming the field or
 * the address: the request must be fixed, not retried.
 */
/* local@domain in UTF-8, no white space, control characters, angle brackets or commas. */
gboolean spool_token_addr_valid(const char *addr);
/* A token text chosen by the caller: at least 16 characters, no white space. */
gboolean spool_token_text_valid(const char *text, GError **err);
/* An expiry as written: a duration from now ("7d") or an ISO 8601 time. */
gboolean spool_token_parse_expires(const char *text, int64_t now, int64_t *out, GError **err);
/*
 * Complete tk for spool_token_insert() from what the front end filled in
 * (sender, recipients, hide_sender, expires: unix seconds, 0 for never,
 * list: NULL for the default list): owner and recipients must be
 * addresses and are normalised, recipients de-duplicated, at least one and
 * no more than the list's max_recipients, the list one of cfg's, an expiry
 * after now; created is set to now and the hash to that of text.
 */
gboolean spool_token_prepare(struct spool_token *tk, const char *text, int64_t now,
                             const struct postern_config *cfg, GError **err);
/*
 * The same rules without the text (the hash is left as it is): a token
 * the platform answered a claim with (transform pull mode), checked as a
 * registered one is.
 */
gboolean spool_token_validate(struct spool_token *tk, int64_t now,
                              const struct postern_config *cfg, GError **err);

enum spool_token_status spool_token_status(const struct spool_token *tk, int64_t now);
const char *spool_token_status_name(enum spool_token_status s);

void spool_token_init(struct spool_token *tk);
void spool_token_clear(struct spool_token *tk);
gboolean spool_token_get(struct spool_txn *t, const unsigned char hash[TOKEN_HASH_LEN],
                         struct spool_token *tk, GError **err);
/* Insert (refuses an existing hash) or update, keeping counters and the owner index. */
gboolean spool_token_insert(struct spool_txn *t, const struct spool_token *tk, GError **err);
gboolean spool_token_update(struct spool_txn *t, const struct spool_token *tk, GError **err);
/*
 * Does addr own any token (used or not)?  Decides whether a failure notice
 * may go out.  Compared as the sender binding compares (token_from is
 * keyed by spool_token_addr_key(); older entries by the normalised form).
 */
gboolean spool_token_owner_exists(struct spool_txn *t, const char *addr);
/* Find by hex id prefix (unique) or by the token text itself. */
gboolean spool_token_find(struct spool_txn *t, const char *prefix_or_token, struct spool_token *tk,
                          GError **err);
typedef gboolean (*spool_token_fn)(const struct spool_token *tk, void *ctx);
gboolean spool_token_foreach(struct spool_txn *t, spool_token_fn fn, void *ctx, GError **err);

#endif
