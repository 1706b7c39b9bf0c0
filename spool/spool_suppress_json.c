/*
 * spool_suppress_json.c - the JSON shape of a suppression record
 * (spool_suppress_json.h).
 */
#include "spool/spool_suppress_json.h"

void spool_suppress_to_json(JsonBuilder *b, const struct spool_suppress *s)
{
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "list");
    json_builder_add_string_value(b, s->list);
    json_builder_set_member_name(b, "address");
    json_builder_add_string_value(b, s->addr);
    json_builder_set_member_name(b, "suppressed");
    json_builder_add_boolean_value(b, s->since != 0);
    json_builder_set_member_name(b, "since");
    json_builder_add_int_value(b, s->since);
    json_builder_set_member_name(b, "score");
    json_builder_add_double_value(b, s->score);
    json_builder_set_member_name(b, "hard");
    json_builder_add_int_value(b, s->hard);
    json_builder_set_member_name(b, "soft");
    json_builder_add_int_value(b, s->soft);
    json_builder_set_member_name(b, "last_bounce");
    json_builder_add_int_value(b, s->last);
    json_builder_set_member_name(b, "reason");
    if (s->reason)
        json_builder_add_string_value(b, s->reason);
    else
        json_builder_add_null_value(b);
    json_builder_end_object(b);
}

void spool_suppress_change_to_json(JsonBuilder *b, const char *list, const char *addr, gboolean add,
                                   gboolean changed)
{
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "list");
    json_builder_add_string_value(b, list);
    json_builder_set_member_name(b, "address");
    json_builder_add_string_value(b, addr);
    json_builder_set_member_name(b, add ? "added" : "removed");
    json_builder_add_boolean_value(b, changed);
    json_builder_end_object(b);
}
