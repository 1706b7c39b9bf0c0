/*
 * spool_suppress_json.h - a suppression record as every front end shows
 * it (spoolctl suppress list --json, GET /v1/suppressions):
 *
 *   {"list", "address", "suppressed": bool, "since", "score", "hard",
 *    "soft", "last_bounce", "reason" | null}
 *
 * Times in unix seconds (0: never).  In the spool_token_json library:
 * json-glib stays out of the daemons.
 */
#ifndef POSTERN_SPOOL_SUPPRESS_JSON_H
#define POSTERN_SPOOL_SUPPRESS_JSON_H

#include <json-glib/json-glib.h>

#include "spool/spool_suppress.h"

void spool_suppress_to_json(JsonBuilder *b, const struct spool_suppress *s);
/* The answer to spool_suppress_change(): {"list", "address", "added" | "removed": bool}. */
void spool_suppress_change_to_json(JsonBuilder *b, const char *list, const char *addr, gboolean add,
                                   gboolean changed);

#endif
