/*
 * relay_json.h - a relay account's daily-limit window as JSON, the one
 * form `spoolctl stats --json` and the API's GET /healthz both give:
 * {"limit": n (0: none), "used": n, "waiting": b, "waiting_until": unix s or 0}.
 */
#ifndef POSTERN_RELAY_JSON_H
#define POSTERN_RELAY_JSON_H

#include <json-glib/json-glib.h>

#include "common/config.h"
#include "spool/relay_quota.h"

/* Account r's window q at now_ms; the limit is the configured one (config_relay_limits()). */
void relay_quota_json(JsonBuilder *b, const struct postern_config *cfg,
                      const struct postern_relay *r, const struct relay_quota *q, int64_t now_ms);

#endif
