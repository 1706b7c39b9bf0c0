/*
 * relay_json.c - a relay account's daily-limit window as JSON
 * (relay_json.h).  The limit shown is the configured one, not the
 * record's: the dispatcher writes the record only when it leases.
 */
#include "spool/relay_json.h"

void relay_quota_json(JsonBuilder *b, const struct postern_config *cfg,
                      const struct postern_relay *r, const struct relay_quota *q, int64_t now_ms)
{
    struct postern_relay_limits lim;
    gboolean waiting;

    config_relay_limits(cfg, r, &lim);
    waiting = lim.daily_limit && q->waiting_until > now_ms;
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "limit");
    json_builder_add_int_value(b, (gint64)lim.daily_limit);
    json_builder_set_member_name(b, "used");
    json_builder_add_int_value(b, (gint64)relay_quota_used(q, now_ms));
    json_builder_set_member_name(b, "waiting");
    json_builder_add_boolean_value(b, waiting);
    json_builder_set_member_name(b, "waiting_until");
    json_builder_add_int_value(b, waiting ? q->waiting_until / 1000 : 0);
    json_builder_end_object(b);
}
