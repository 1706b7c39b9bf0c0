/*
 * spool_token_json.h - one token request as JSON, for every front end
 * that takes JSON (spoolctl token import now, an HTTP API next):
 *
 *   {"from": "a@b", "recipients": ["c@d", ...], "hide_sender": false,
 *    "expires": 1767225600 | "7d" | "2026-12-31T00:00:00Z" | null,
 *    "token": "at least 16 characters", "list": "NAME" (default "default")}
 *
 * A library of its own (spool_token_json_dep), apart from libspool, so the
 * daemons do not link json-glib; it touches no LMDB, only spool_token.h.
 */
#ifndef POSTERN_SPOOL_TOKEN_JSON_H
#define POSTERN_SPOOL_TOKEN_JSON_H

#include <json-glib/json-glib.h>

#include "spool/spool_token.h"

/*
 * Fill tk (initialised by the caller) from node and check it with
 * spool_token_prepare(); *text is the token given, or a new one.
 * SPOOL_ERR_INVALID names the field or the address at fault.
 */
gboolean spool_token_from_json(JsonNode *node, int64_t now, const struct postern_config *cfg,
                               struct spool_token *tk, char **text, GError **err);

/*
 * A stored token as every front end shows it (never the token itself):
 *   {"id", "status", "from", "list", "hide_sender", "created", "expires" | null,
 *    "used" | null, "message": queue id | null, "nrcpt"[, "recipients"]}
 * status as of now; times in unix seconds.
 */
void spool_token_to_json(JsonBuilder *b, const struct spool_token *tk, int64_t now,
                         gboolean with_rcpts);

#endif
