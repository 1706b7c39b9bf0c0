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

#endif
