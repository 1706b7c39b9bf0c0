/*
 * config.c - see config.h.
 *
 * The keys live in one table: name, type, default and where the value goes.
 * Loading walks the table, so a key cannot be added without a default, and
 * every key is parsed and reported the same way.
 */
#include "common/config.h"
#include "common/log.h"

#include "common/relay_url.h"
#include "common/unsub_code.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

enum config_type { CT_STRING, CT_LIST, CT_SIZE, CT_DURATION, CT_COUNT, CT_BOOL, CT_RATE };

struct config_key {
    const char *group;
    const char *key;
    enum config_type type;
    const char *dflt;
    size_t offset;
};

#define K(g, k, t, d, field) { g, k, t, d, offsetof(struct postern_config, field) }

static const struct config_key config_keys[] = {
    K("spool", "dir", CT_STRING, "./var/spool", spool.dir),
    K("spool", "map_size", CT_SIZE, "64M", spool.map_size),
    K("spool", "max_size", CT_SIZE, "16G", spool.max_size),

    K("ingest", "listen", CT_LIST, "127.0.0.1:8024", ingest.listen),
    K("ingest", "recipients", CT_LIST, "restricted@localhost", ingest.recipients),
    K("ingest", "max_message_size", CT_SIZE, "32M", ingest.max_message_size),
    K("ingest", "max_header_size", CT_SIZE, "1M", ingest.max_header_size),
    K("ingest", "max_recipients", CT_COUNT, "50", ingest.max_recipients),
    K("ingest", "max_connections", CT_COUNT, "100", ingest.max_connections),
    K("ingest", "max_connections_per_client", CT_COUNT, "50", ingest.max_connections_per_client),
    K("ingest", "timeout", CT_DURATION, "5m", ingest.timeout),
    K("ingest", "min_data_rate", CT_SIZE, "500", ingest.min_data_rate),
    K("ingest", "hostname", CT_STRING, "", ingest.hostname),

    K("token", "prefix", CT_STRING, "LEGOTOKEN", token.prefix),
    K("token", "max_recipients", CT_COUNT, "0", token.max_recipients),
    K("token", "claim_url", CT_STRING, "", token.claim_url),
    K("token", "claim_secret_file", CT_STRING, "", token.claim_secret_file),
    K("token", "claim_ca_file", CT_STRING, "", token.claim_ca_file),
    K("token", "claim_timeout", CT_DURATION, "10s", token.claim_timeout),
    K("token", "claim_max_backoff", CT_DURATION, "5m", token.claim_max_backoff),

    K("rewrite", "from", CT_STRING, "Postern <no-reply@localhost>", rewrite.from),
    K("rewrite", "allow_original_sender", CT_BOOL, "false", rewrite.allow_original_sender),
    K("rewrite", "footer", CT_STRING,
      "--\\nSent by {sender} through the restricted address.\\nUnsubscribe: {unsubscribe_url}",
      rewrite.footer),
    K("rewrite", "footer_hidden", CT_STRING,
      "--\\nSent through the restricted address.\\nUnsubscribe: {unsubscribe_url}",
      rewrite.footer_hidden),
    K("rewrite", "unsubscribe_url", CT_STRING, "", rewrite.unsubscribe_url),
    K("rewrite", "personalize", CT_BOOL, "true", rewrite.personalize),

    K("dkim", "domain", CT_STRING, "localhost", dkim.domain),
    K("dkim", "keys", CT_STRING, "", dkim.keys),
    K("dkim", "sign_threads", CT_COUNT, "0", dkim.sign_threads),

    K("relay", "url", CT_STRING, "maildir:./var/outbox", relay.url),
    K("relay", "tls", CT_STRING, "require", relay.tls),
    K("relay", "ca_file", CT_STRING, "", relay.ca_file),
    K("relay", "user", CT_STRING, "", relay.user),
    K("relay", "password_file", CT_STRING, "", relay.password_file),
    K("relay", "max_connections", CT_COUNT, "10", relay.max_connections),
    K("relay", "max_rcpt_per_txn", CT_COUNT, "100", relay.max_rcpt_per_txn),
    K("relay", "rate", CT_RATE, "0", relay.rate),
    K("relay", "daily_limit", CT_COUNT, "0", relay.daily_limit),
    K("relay", "daily_window", CT_DURATION, "24h", relay.daily_window),
    K("relay", "timeout", CT_DURATION, "5m", relay.timeout),

    K("retry", "initial", CT_DURATION, "5m", retry.initial),
    K("retry", "max", CT_DURATION, "1h", retry.max),
    K("retry", "lifetime", CT_DURATION, "5d", retry.lifetime),
    K("retry", "lease", CT_DURATION, "2m", retry.lease),

    K("bounce", "envelope_from", CT_STRING, "restricted-bounces@localhost", bounce.envelope_from),
    K("bounce", "verp", CT_BOOL, "false", bounce.verp),
    K("bounce", "secret_file", CT_STRING, "", bounce.secret_file),
    K("bounce", "score_threshold", CT_COUNT, "5", bounce.score_threshold),
    K("bounce", "score_window", CT_DURATION, "7d", bounce.score_window),

    K("unsubscribe", "one_click", CT_BOOL, "false", unsubscribe.one_click),
    K("unsubscribe", "address", CT_STRING, "", unsubscribe.address),

    K("notice", "max_per_hour", CT_COUNT, "5", notice.max_per_hour),
    K("notice", "language", CT_STRING, "en", notice.language),

    K("workers", "dispatch", CT_STRING, "", workers.dispatch),
    K("workers", "hints", CT_STRING, "", workers.hints),
    K("workers", "curve_secret_key_file", CT_STRING, "", workers.curve_secret_key_file),
    K("workers", "curve_server_public_key", CT_STRING, "", workers.curve_server_public_key),
    K("workers", "curve_allowed_keys_file", CT_STRING, "", workers.curve_allowed_keys_file),
    K("workers", "count", CT_COUNT, "4", workers.count),
    K("workers", "transforms", CT_COUNT, "0", workers.transforms),
    K("workers", "slots", CT_COUNT, "8", workers.slots),

    K("api", "listen", CT_STRING, "127.0.0.1:8025", api.listen),
    K("api", "keys_file", CT_STRING, "", api.keys_file),
    K("api", "tls_cert", CT_STRING, "", api.tls_cert),
    K("api", "tls_key", CT_STRING, "", api.tls_key),
    K("api", "max_body", CT_SIZE, "8M", api.max_body),
    K("api", "max_connections", CT_COUNT, "64", api.max_connections),

    K("events", "url", CT_STRING, "", events.url),
    K("events", "secret_file", CT_STRING, "", events.secret_file),
    K("events", "ca_file", CT_STRING, "", events.ca_file),
    K("events", "timeout", CT_DURATION, "10s", events.timeout),
    K("events", "max_backoff", CT_DURATION, "5m", events.max_backoff),

    K("approval", "secret_file", CT_STRING, "", approval.secret_file),
    K("approval", "url", CT_STRING, "", approval.url),
};

/* [dkim] keys when unset (of the spool directory). */
#define CONFIG_DKIM_DEFAULT "default:%s/dkim/default.ed25519.pem"

#define CONFIG_ERROR config_error_quark()
G_DEFINE_QUARK(postern-config-error, config_error)

/*
 * GKeyFile does not say on which line a key stands.  An operator fixing a
 * file wants the line, so find it again: the first "key =" after "[group]".
 */
static int config_line_of(const char *path, const char *group, const char *key)
{
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    gboolean in_group = FALSE;

    if (!path || !g_file_get_contents(path, &text, NULL, NULL))
        return 0;
    lines = g_strsplit(text, "\n", -1);
    for (int i = 0; lines[i]; i++) {
        g_autofree char *line = g_strstrip(g_strdup(lines[i]));

        if (line[0] == '[') {
            g_autofree char *want = g_strdup_printf("[%s]", group);
            in_group = g_str_equal(line, want);
            if (!key && in_group)
                return i + 1;
        } else if (in_group && key && g_str_has_prefix(line, key)) {
            const char *rest = line + strlen(key);
            while (*rest == ' ' || *rest == '\t')
                rest++;
            if (*rest == '=')
                return i + 1;
        }
    }
    return 0;
}

/*
 * GKeyFile's parse errors quote the offending line (“...”) but give no
 * number: find the line that reads so. 0 when the error quotes none (an
 * unreadable file) or the line cannot be found.
 */
static int config_parse_error_line(const char *path, const char *message)
{
    const char *open = strstr(message, "\u201c"), *close;
    g_autofree char *text = NULL, *quoted = NULL;
    g_auto(GStrv) lines = NULL;

    if (!open || !(close = strstr(open + strlen("\u201c"), "\u201d")))
        return 0;
    open += strlen("\u201c");
    quoted = g_strndup(open, (gsize)(close - open));
    if (!g_file_get_contents(path, &text, NULL, NULL))
        return 0;
    lines = g_strsplit(text, "\n", -1);
    for (int i = 0; lines[i]; i++)
        if (g_str_equal(g_strchomp(lines[i]), quoted))
            return i + 1;
    return 0;
}

static gboolean config_fail(GError **err, const char *path, const char *group,
                            const char *key, const char *fmt, ...) G_GNUC_PRINTF(5, 6);

static gboolean config_fail(GError **err, const char *path, const char *group,
                            const char *key, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *why = NULL, *where = NULL;
    int line = config_line_of(path, group, key);

    va_start(ap, fmt);
    why = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    /* A key left at its default (a cross-key check) has no line to name. */
    where = line ? g_strdup_printf("%s:%d", path, line) : g_strdup(path ? path : "(defaults)");
    g_set_error(err, CONFIG_ERROR, 1, "%s: [%s]%s%s: %s", where, group, key ? " " : "",
                key ? key : "", why);
    return FALSE;
}

/*
 * A count with an optional one-letter unit (suffixes[i] worth units[i]),
 * for durations and sizes alike: "30s", "5m", "64M".  After the unit,
 * only tail may follow ("B" for sizes: "64MB").
 */
static gboolean config_parse_scaled(const char *text, const char *suffixes,
                                    const uint64_t *units, const char *tail, uint64_t *out)
{
    char *end;
    unsigned long long n;
    const char *at;
    uint64_t unit = 1;

    errno = 0;
    n = strtoull(text, &end, 10);
    if (end == text || errno || text[0] == '-')
        return FALSE;
    if (*end) {
        if (!(at = strchr(suffixes, *end)))
            return FALSE;
        unit = units[at - suffixes];
        if (end[1] && g_strcmp0(end + 1, tail) != 0)
            return FALSE;
    }
    if (n > UINT64_MAX / unit)
        return FALSE;
    *out = n * unit;
    return TRUE;
}

gboolean config_parse_duration(const char *text, uint64_t *out)
{
    static const uint64_t units[] = { 1, 60, 3600, 86400, 7 * 86400 };

    return config_parse_scaled(text, "smhdw", units, "", out);
}

gboolean config_parse_size(const char *text, uint64_t *out)
{
    static const uint64_t units[] = { 1, 1, 1ULL << 10, 1ULL << 10, 1ULL << 20, 1ULL << 20,
                                      1ULL << 30, 1ULL << 30, 1ULL << 40, 1ULL << 40 };

    return config_parse_scaled(text, "BbKkMmGgTt", units, "B", out) ||
           config_parse_scaled(text, "BbKkMmGgTt", units, "b", out);
}

/*
 * Store one textual value, parsed as k's type, into field (of cfg, or of a
 * [relay NAME] account), or say what is wrong with it.
 */
static gboolean config_store_at(const struct postern_config *cfg, const struct config_key *k,
                                void *field, const char *value, GError **err)
{
    uint64_t n;

    switch (k->type) {
    case CT_STRING: {
        /* GKeyFile escapes are not applied to defaults; allow \n in both. */
        g_autofree char *unescaped = g_strcompress(value);
        g_free(*(char **)field);
        *(char **)field = g_strdup(g_strstrip(unescaped));
        return TRUE;
    }
    case CT_LIST: {
        g_auto(GStrv) parts = g_strsplit(value, ",", -1);
        GPtrArray *list = g_ptr_array_new();
        for (int i = 0; parts[i]; i++) {
            char *item = g_strstrip(parts[i]);
            if (*item)
                g_ptr_array_add(list, g_strdup(item));
        }
        g_ptr_array_add(list, NULL);
        g_strfreev(*(char ***)field);
        *(char ***)field = (char **)g_ptr_array_free(list, FALSE);
        return TRUE;
    }
    case CT_SIZE:
        if (!config_parse_size(value, &n))
            return config_fail(err, cfg->path, k->group, k->key,
                               "bad size \"%s\" (use a number with K, M or G)", value);
        *(uint64_t *)field = n;
        return TRUE;
    case CT_DURATION:
        if (!config_parse_duration(value, &n))
            return config_fail(err, cfg->path, k->group, k->key,
                               "bad duration \"%s\" (use a number with s, m, h or d)", value);
        *(uint64_t *)field = n;
        return TRUE;
    case CT_COUNT: {
        char *end;
        errno = 0;
        n = strtoull(value, &end, 10);
        if (end == value || *end || errno || value[0] == '-')
            return config_fail(err, cfg->path, k->group, k->key,
                               "bad number \"%s\"", value);
        *(uint64_t *)field = n;
        return TRUE;
    }
    case CT_BOOL:
        if (!g_ascii_strcasecmp(value, "true") || !g_ascii_strcasecmp(value, "yes") ||
            g_str_equal(value, "1"))
            *(gboolean *)field = TRUE;
        else if (!g_ascii_strcasecmp(value, "false") || !g_ascii_strcasecmp(value, "no") ||
                 g_str_equal(value, "0"))
            *(gboolean *)field = FALSE;
        else
            return config_fail(err, cfg->path, k->group, k->key,
                               "bad boolean \"%s\" (use true or false)", value);
        return TRUE;
    case CT_RATE: {
        char *end;
        double d = g_ascii_strtod(value, &end);
        if (end == value || *end || d < 0)
            return config_fail(err, cfg->path, k->group, k->key, "bad rate \"%s\"", value);
        *(double *)field = d;
        return TRUE;
    }
    }
    msg_panic("config_store: unknown type %d", k->type);
}

static gboolean config_store(struct postern_config *cfg, const struct config_key *k,
                             const char *value, GError **err)
{
    return config_store_at(cfg, k, (char *)cfg + k->offset, value, err);
}

static const struct config_key *config_find(const char *group, const char *key)
{
    for (size_t i = 0; i < G_N_ELEMENTS(config_keys); i++)
        if (g_str_equal(config_keys[i].group, group) &&
            (!key || g_str_equal(config_keys[i].key, key)))
            return &config_keys[i];
    return NULL;
}

/* "[list NAME]": a list of its own (config.h), with these keys. */
#define CONFIG_LIST_GROUP "list "

static const char *const config_list_keys[] = {
    "address", "from", "footer", "footer_hidden", "language", "max_recipients", "hide_sender",
    "unsubscribe_url", "approval", "moderator", "approval_expiry", NULL
};

static void config_list_free(gpointer p)
{
    struct postern_list *l = p;

    g_free(l->name);
    g_free(l->address);
    g_free(l->from);
    g_free(l->footer);
    g_free(l->footer_hidden);
    g_free(l->language);
    g_free(l->unsubscribe_url);
    g_free(l->moderator);
    g_free(l);
}

/* A list from the global keys: the default list, and what a [list NAME] starts from. */
static struct postern_list *config_list_new(const struct postern_config *cfg, const char *name)
{
    struct postern_list *l = g_new0(struct postern_list, 1);

    l->name = g_strdup(name);
    l->from = g_strdup(cfg->rewrite.from);
    l->footer = g_strdup(cfg->rewrite.footer);
    l->footer_hidden = g_strdup(cfg->rewrite.footer_hidden);
    l->language = g_strdup(cfg->notice.language);
    l->unsubscribe_url = g_strdup(cfg->rewrite.unsubscribe_url);
    l->max_recipients = cfg->token.max_recipients;
    l->approval_expiry = CONFIG_APPROVAL_EXPIRY;
    return l;
}

/* A string key of a [list NAME] as a global one is read: \n escapes, blanks stripped. */
static void config_list_string(GKeyFile *kf, const char *group, const char *key, char **field)
{
    g_autofree char *value = g_key_file_get_value(kf, group, key, NULL);
    g_autofree char *unescaped = NULL;

    if (!value)
        return;
    unescaped = g_strcompress(value);
    g_free(*field);
    *field = g_strdup(g_strstrip(unescaped));
}

/* A true/false key of a [list NAME]; left as it was when absent. */
static gboolean config_list_bool(const struct postern_config *cfg, GKeyFile *kf,
                                 const char *group, const char *key, gboolean *field,
                                 GError **err)
{
    g_autofree char *value = g_key_file_get_value(kf, group, key, NULL);

    if (!value)
        return TRUE;
    g_strstrip(value);
    if (!g_ascii_strcasecmp(value, "true") || !g_ascii_strcasecmp(value, "yes") ||
        !g_ascii_strcasecmp(value, "on") || g_str_equal(value, "1"))
        *field = TRUE;
    else if (!g_ascii_strcasecmp(value, "false") || !g_ascii_strcasecmp(value, "no") ||
             !g_ascii_strcasecmp(value, "off") || g_str_equal(value, "0"))
        *field = FALSE;
    else
        return config_fail(err, cfg->path, group, key, "bad boolean \"%s\" (use true or false)",
                           value);
    return TRUE;
}

/*
 * The [list NAME] sections, in the order of the file, after the default
 * list.  Whether they make sense together is config_validate()'s.
 */
static gboolean config_load_lists(struct postern_config *cfg, GKeyFile *kf, GError **err)
{
    g_auto(GStrv) groups = kf ? g_key_file_get_groups(kf, NULL) : NULL;

    g_ptr_array_add(cfg->lists, config_list_new(cfg, CONFIG_LIST_DEFAULT));
    for (int g = 0; groups && groups[g]; g++) {
        struct postern_list *l;
        g_autofree char *cap = NULL, *expiry = NULL;

        if (!g_str_has_prefix(groups[g], CONFIG_LIST_GROUP))
            continue;
        l = config_list_new(cfg, g_strstrip(groups[g] + strlen(CONFIG_LIST_GROUP)));
        g_ptr_array_add(cfg->lists, l);
        config_list_string(kf, groups[g], "address", &l->address);
        config_list_string(kf, groups[g], "from", &l->from);
        config_list_string(kf, groups[g], "footer", &l->footer);
        config_list_string(kf, groups[g], "footer_hidden", &l->footer_hidden);
        config_list_string(kf, groups[g], "language", &l->language);
        config_list_string(kf, groups[g], "unsubscribe_url", &l->unsubscribe_url);
        if ((cap = g_key_file_get_value(kf, groups[g], "max_recipients", NULL))) {
            char *end;

            g_strstrip(cap);
            errno = 0;
            l->max_recipients = strtoull(cap, &end, 10);
            if (end == cap || *end || errno || cap[0] == '-')
                return config_fail(err, cfg->path, groups[g], "max_recipients",
                                   "bad number \"%s\"", cap);
        }
        if (!config_list_bool(cfg, kf, groups[g], "hide_sender", &l->hide_sender, err) ||
            !config_list_bool(cfg, kf, groups[g], "approval", &l->approval, err))
            return FALSE;
        config_list_string(kf, groups[g], "moderator", &l->moderator);
        if ((expiry = g_key_file_get_value(kf, groups[g], "approval_expiry", NULL)) &&
            !config_parse_duration(g_strstrip(expiry), &l->approval_expiry))
            return config_fail(err, cfg->path, groups[g], "approval_expiry",
                               "bad duration \"%s\"", expiry);
    }
    return TRUE;
}

/* "[relay NAME]": a relay account of its own (config.h), with these keys. */
#define CONFIG_RELAY_GROUP "relay "

static const char *const config_relay_keys[] = {
    "url", "tls", "ca_file", "user", "password_file",
    "max_connections", "rate", "daily_limit", "daily_window", NULL
};

/* The limits a [relay NAME] may set, each with its CONFIG_RELAY_SET_* bit. */
#define RL(k, t, field) { "relay", k, t, NULL, offsetof(struct postern_relay_limits, field) }
static const struct config_key config_relay_limit_keys[] = {
    RL("max_connections", CT_COUNT, max_connections),
    RL("rate", CT_RATE, rate),
    RL("daily_limit", CT_COUNT, daily_limit),
    RL("daily_window", CT_DURATION, daily_window),
};
static const unsigned config_relay_limit_bits[] = {
    CONFIG_RELAY_SET_MAX_CONNECTIONS, CONFIG_RELAY_SET_RATE, CONFIG_RELAY_SET_DAILY_LIMIT,
    CONFIG_RELAY_SET_DAILY_WINDOW,
};

static void config_relay_free(gpointer p)
{
    struct postern_relay *r = p;

    g_free(r->name);
    g_free(r->url);
    g_free(r->tls);
    g_free(r->ca_file);
    g_free(r->user);
    g_free(r->password_file);
    g_free(r);
}

/*
 * The default account ([relay]) and the [relay NAME] sections after it, in
 * the order of the file; an account takes from [relay] what it does not
 * set (tls, ca_file), but never a user or password_file: those are what
 * makes it another account.  The limits an account sets are kept apart
 * (limits_set), so that those it does not set follow [relay]'s.
 */
static gboolean config_load_relays(struct postern_config *cfg, GKeyFile *kf, GError **err)
{
    g_auto(GStrv) groups = kf ? g_key_file_get_groups(kf, NULL) : NULL;

    for (int g = -1; g < 0 || (groups && groups[g]); g++) {
        struct postern_relay *r = g_new0(struct postern_relay, 1);
        gboolean dflt = g < 0;

        if (!dflt && !g_str_has_prefix(groups[g], CONFIG_RELAY_GROUP)) {
            g_free(r);
            continue;
        }
        r->name = g_strdup(dflt ? CONFIG_RELAY_DEFAULT
                                : g_strstrip(groups[g] + strlen(CONFIG_RELAY_GROUP)));
        r->url = g_strdup(dflt ? cfg->relay.url : "");
        r->tls = g_strdup(cfg->relay.tls);
        r->ca_file = g_strdup(cfg->relay.ca_file);
        r->user = g_strdup(dflt ? cfg->relay.user : "");
        r->password_file = g_strdup(dflt ? cfg->relay.password_file : "");
        g_ptr_array_add(cfg->relays, r);
        if (dflt)
            continue;
        config_list_string(kf, groups[g], "url", &r->url);
        config_list_string(kf, groups[g], "tls", &r->tls);
        config_list_string(kf, groups[g], "ca_file", &r->ca_file);
        config_list_string(kf, groups[g], "user", &r->user);
        config_list_string(kf, groups[g], "password_file", &r->password_file);
        for (guint i = 0; i < G_N_ELEMENTS(config_relay_limit_keys); i++) {
            struct config_key k = config_relay_limit_keys[i];
            g_autofree char *value = g_key_file_get_value(kf, groups[g], k.key, NULL);

            k.group = groups[g];
            if (!value)
                continue;
            if (!config_store_at(cfg, &k, (char *)&r->limits + k.offset, g_strstrip(value), err))
                return FALSE;
            r->limits_set |= config_relay_limit_bits[i];
        }
    }
    return TRUE;
}

void config_relay_limits(const struct postern_config *cfg, const struct postern_relay *r,
                         struct postern_relay_limits *out)
{
    unsigned set = r->limits_set;

    out->max_connections = set & CONFIG_RELAY_SET_MAX_CONNECTIONS ? r->limits.max_connections
                                                                  : cfg->relay.max_connections;
    out->rate = set & CONFIG_RELAY_SET_RATE ? r->limits.rate : cfg->relay.rate;
    out->daily_limit = set & CONFIG_RELAY_SET_DAILY_LIMIT ? r->limits.daily_limit
                                                          : cfg->relay.daily_limit;
    out->daily_window = set & CONFIG_RELAY_SET_DAILY_WINDOW ? r->limits.daily_window
                                                            : cfg->relay.daily_window;
}

const struct postern_relay *config_relay_find(const struct postern_config *cfg, const char *name)
{
    for (guint i = 0; i < cfg->relays->len; i++) {
        const struct postern_relay *r = cfg->relays->pdata[i];

        if (g_str_equal(r->name, name))
            return r;
    }
    return NULL;
}

/* Addresses as ingest compares them (lmtp_addr_canonical()): no case, no +detail. */
static char *config_addr_canonical(const char *addr)
{
    const char *at = strrchr(addr, '@');
    g_autofree char *local = at ? g_strndup(addr, (gsize)(at - addr)) : g_strdup(addr);
    char *plus = strchr(local, '+');
    g_autofree char *joined = NULL;

    if (plus && plus != local)
        *plus = '\0';
    joined = g_strconcat(local, at ? at : "", NULL);
    return g_ascii_strdown(joined, -1);
}

const struct postern_list *config_list_find(const struct postern_config *cfg, const char *name)
{
    for (guint i = 0; i < cfg->lists->len; i++) {
        const struct postern_list *l = cfg->lists->pdata[i];

        if (g_str_equal(l->name, name))
            return l;
    }
    return NULL;
}

const struct postern_list *config_list_of(const struct postern_config *cfg, char **rcpts,
                                          guint nrcpts)
{
    for (guint r = 0; r < nrcpts; r++) {
        g_autofree char *want = config_addr_canonical(rcpts[r]);

        for (guint i = 1; i < cfg->lists->len; i++) {
            const struct postern_list *l = cfg->lists->pdata[i];
            g_autofree char *have = l->address ? config_addr_canonical(l->address) : NULL;

            if (have && g_str_equal(have, want))
                return l;
        }
    }
    return cfg->lists->pdata[0];
}

/*
 * Unknown groups and keys are errors, not warnings: a misspelt key silently
 * falling back to its default is how a relay ends up an open relay.
 */
static gboolean config_check_known(struct postern_config *cfg, GKeyFile *kf, GError **err)
{
    g_auto(GStrv) groups = g_key_file_get_groups(kf, NULL);

    for (int g = 0; groups[g]; g++) {
        g_auto(GStrv) keys = NULL;

        gboolean list = g_str_has_prefix(groups[g], CONFIG_LIST_GROUP);
        gboolean relay = g_str_has_prefix(groups[g], CONFIG_RELAY_GROUP);

        if (!list && !relay && !config_find(groups[g], NULL))
            return config_fail(err, cfg->path, groups[g], NULL, "unknown section");
        keys = g_key_file_get_keys(kf, groups[g], NULL, NULL);
        for (int k = 0; keys && keys[k]; k++)
            if (list    ? !g_strv_contains(config_list_keys, keys[k])
                : relay ? !g_strv_contains(config_relay_keys, keys[k])
                        : !config_find(groups[g], keys[k]))
                return config_fail(err, cfg->path, groups[g], keys[k], "unknown key");
    }
    return TRUE;
}

/*
 * Values that depend on others: endpoints under the spool directory, the
 * host name.  Whether they make sense together is config_validate()'s.
 */
static gboolean config_derive(struct postern_config *cfg, GError **err)
{
    if (!*cfg->ingest.hostname) {
        g_free(cfg->ingest.hostname);
        cfg->ingest.hostname = g_strdup(g_get_host_name());
    }
    if (!*cfg->workers.dispatch) {
        g_free(cfg->workers.dispatch);
        cfg->workers.dispatch = g_strdup_printf("ipc://%s/run/dispatch", cfg->spool.dir);
    }
    /*
     * A tcp:// dispatch endpoint is for workers on other hosts, with CURVE;
     * processes on the dispatcher's own host talk over a 0700 ipc socket.
     */
    cfg->workers.local_dispatch = g_str_has_prefix(cfg->workers.dispatch, "tcp://")
        ? g_strdup_printf("ipc://%s/run/dispatch", cfg->spool.dir)
        : g_strdup(cfg->workers.dispatch);
    if (!*cfg->workers.hints) {
        g_free(cfg->workers.hints);
        cfg->workers.hints = g_strdup_printf("ipc://%s/run/hints", cfg->spool.dir);
    }
    if (!*cfg->dkim.keys) {
        g_free(cfg->dkim.keys);
        cfg->dkim.keys = g_strdup_printf(CONFIG_DKIM_DEFAULT, cfg->spool.dir);
    }
    /* One secret can serve VERP and approval: each derives its own key from it. */
    if (!*cfg->approval.secret_file) {
        g_free(cfg->approval.secret_file);
        cfg->approval.secret_file = g_strdup(cfg->bounce.secret_file);
    }
    if (!*cfg->approval.url) {
        g_free(cfg->approval.url);
        cfg->approval.url = g_strdup_printf("http://%s", cfg->api.listen);
    }
    /* Ingest takes mail for the default list's addresses and every list's own. */
    {
        GPtrArray *accept = g_ptr_array_new();

        for (char **a = cfg->ingest.recipients; *a; a++)
            g_ptr_array_add(accept, g_strdup(*a));
        /* With VERP the bounces come back to envelope_from+CODE: ingest
         * compares without the extension, so the bare address admits them. */
        if (cfg->bounce.verp)
            g_ptr_array_add(accept, g_strdup(cfg->bounce.envelope_from));
        /* The mailto form of unsubscribe comes to address+CODE, the same way. */
        if (cfg->unsubscribe.one_click && *cfg->unsubscribe.address)
            g_ptr_array_add(accept, g_strdup(cfg->unsubscribe.address));
        for (guint i = 1; i < cfg->lists->len; i++) {
            const struct postern_list *l = cfg->lists->pdata[i];

            if (l->address && *l->address)
                g_ptr_array_add(accept, g_strdup(l->address));
        }
        g_ptr_array_add(accept, NULL);
        cfg->accept = (char **)g_ptr_array_free(accept, FALSE);
    }
    return TRUE;
}

/* One problem found by config_validate(): a line as config_fail() words it. */
static void config_problem(GPtrArray *problems, const struct postern_config *cfg,
                           const char *group, const char *key, const char *fmt, ...)
    G_GNUC_PRINTF(5, 6);

static void config_problem(GPtrArray *problems, const struct postern_config *cfg,
                           const char *group, const char *key, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *why = NULL;
    GError *err = NULL;

    va_start(ap, fmt);
    why = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    config_fail(&err, cfg->path, group, key, "%s", why);
    g_ptr_array_add(problems, g_strdup(err->message));
    g_error_free(err);
}

/*
 * GKeyFile merges a section written twice and keeps the last of a key
 * written twice: the operator meant one of them, and we cannot know which.
 */
static void config_check_repeats(const struct postern_config *cfg, GPtrArray *problems)
{
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    g_autoptr(GHashTable) groups = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_autoptr(GHashTable) keys = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_autofree char *group = NULL;

    if (!cfg->path || !g_file_get_contents(cfg->path, &text, NULL, NULL))
        return;
    lines = g_strsplit(text, "\n", -1);
    for (int i = 0; lines[i]; i++) {
        char *line = g_strstrip(lines[i]), *eq;

        if (line[0] == '[' && line[strlen(line) - 1] == ']') {
            g_free(group);
            group = g_strndup(line + 1, strlen(line) - 2);
            if (g_hash_table_contains(groups, group))
                g_ptr_array_add(problems, g_strdup_printf("%s:%d: [%s]: section appears twice "
                                                          "(first at line %d)", cfg->path, i + 1,
                                                          group, GPOINTER_TO_INT(
                                                              g_hash_table_lookup(groups, group))));
            else
                g_hash_table_insert(groups, g_strdup(group), GINT_TO_POINTER(i + 1));
        } else if (group && line[0] && line[0] != '#' && (eq = strchr(line, '='))) {
            g_autofree char *name = g_strstrip(g_strndup(line, (gsize)(eq - line)));
            char *id = g_strdup_printf("%s\n%s", group, name);

            if (g_hash_table_contains(keys, id))
                g_ptr_array_add(problems, g_strdup_printf("%s:%d: [%s] %s: key appears twice "
                                                          "in the section", cfg->path, i + 1,
                                                          group, name));
            g_hash_table_add(keys, id);
        }
    }
}

/* host:port, [v6]:port or unix:/path, as ingest_listen.c takes them. */
static void config_check_listen(const struct postern_config *cfg, GPtrArray *problems)
{
    if (!cfg->ingest.listen[0])
        config_problem(problems, cfg, "ingest", "listen", "no address to listen on");
    for (char **a = cfg->ingest.listen; *a; a++) {
        const char *colon = strrchr(*a, ':');
        char *end;
        unsigned long port;

        if (g_str_has_prefix(*a, "unix:")) {
            if ((*a)[5] != '/' || strlen(*a + 5) >= sizeof(((struct sockaddr_un *)0)->sun_path))
                config_problem(problems, cfg, "ingest", "listen",
                               "\"%s\": unix: needs an absolute path shorter than %zu bytes", *a,
                               sizeof(((struct sockaddr_un *)0)->sun_path));
            continue;
        }
        if (!colon) {
            config_problem(problems, cfg, "ingest", "listen", "\"%s\": expected host:port", *a);
            continue;
        }
        errno = 0;
        port = strtoul(colon + 1, &end, 10);
        if (end == colon + 1 || *end || errno || port == 0 || port > 65535)
            config_problem(problems, cfg, "ingest", "listen",
                           "\"%s\": port \"%s\" is not a number from 1 to 65535", *a, colon + 1);
    }
}

/*
 * A relay account: a URL the sender can use, a TLS level, and credentials
 * that can be sent (AUTH without TLS would put the password on the wire;
 * the client refuses it, so every delivery would fail).
 */
static void config_check_relay_account(const struct postern_config *cfg, GPtrArray *problems,
                                       const struct postern_relay *r, const char *group)
{
    struct relay_url url;
    GError *err = NULL;

    if (!relay_url_parse(r->url, &url, &err)) {
        config_problem(problems, cfg, group, "url", "%s", err->message);
        g_clear_error(&err);
        return;
    }
    if (!g_str_equal(r->tls, "require") && !g_str_equal(r->tls, "opportunistic") &&
        !g_str_equal(r->tls, "none"))
        config_problem(problems, cfg, group, "tls",
                       "\"%s\" is not require, opportunistic or none", r->tls);
    if (url.kind != RELAY_MAILDIR && *r->user && g_str_equal(r->tls, "none"))
        config_problem(problems, cfg, group, "tls",
                       "none with a user: the password would go unencrypted (use require)");
    if (*r->user && !*r->password_file)
        config_problem(problems, cfg, group, "user", "is set but password_file is not");
    if (*r->password_file && access(r->password_file, R_OK) < 0)
        config_problem(problems, cfg, group, "password_file", "%s: %s", r->password_file,
                       g_strerror(errno));
    if (*r->ca_file && access(r->ca_file, R_OK) < 0)
        config_problem(problems, cfg, group, "ca_file", "%s: %s", r->ca_file, g_strerror(errno));
    relay_url_clear(&url);
}

static void config_check_positive(const struct postern_config *cfg, GPtrArray *problems,
                                  const char *group, const char *key, uint64_t value,
                                  const char *why);

/*
 * An account's limits, as [relay]'s: [relay]'s own are checked with the
 * default account, each [relay NAME]'s only where it set them.
 */
static void config_check_relay_limits(const struct postern_config *cfg, GPtrArray *problems,
                                      const struct postern_relay *r, const char *group)
{
    struct postern_relay_limits lim;
    unsigned set = r->limits_set;

    /* [relay]'s counts and durations are checked with the others (config_validate()). */
    if (g_str_equal(r->name, CONFIG_RELAY_DEFAULT))
        set = CONFIG_RELAY_SET_RATE | CONFIG_RELAY_SET_DAILY_LIMIT;

    config_relay_limits(cfg, r, &lim);
    if (set & CONFIG_RELAY_SET_RATE && !isfinite(lim.rate))
        config_problem(problems, cfg, group, "rate", "not a finite number (0: no limit)");
    if (set & CONFIG_RELAY_SET_DAILY_LIMIT && lim.daily_limit > G_MAXUINT32)
        config_problem(problems, cfg, group, "daily_limit", "more than %u", G_MAXUINT32);
    if (set & CONFIG_RELAY_SET_MAX_CONNECTIONS)
        config_check_positive(cfg, problems, group, "max_connections", lim.max_connections,
                              "the account could deliver nothing");
    if (set & CONFIG_RELAY_SET_DAILY_WINDOW)
        config_check_positive(cfg, problems, group, "daily_window", lim.daily_window,
                              "the daily limit needs a window");
}

/*
 * The relay accounts, each checked alone, and together: a name of its own,
 * and not the same url and user as another (two accounts that are one at
 * the relay would share its quota while the dispatcher counted two).
 */
static void config_check_relay(const struct postern_config *cfg, GPtrArray *problems)
{
    g_autoptr(GHashTable) names = g_hash_table_new(g_str_hash, g_str_equal);
    g_autoptr(GHashTable) logins = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);

    for (guint i = 0; i < cfg->relays->len; i++) {
        const struct postern_relay *r = cfg->relays->pdata[i];
        g_autofree char *group = i ? g_strconcat(CONFIG_RELAY_GROUP, r->name, NULL)
                                   : g_strdup("relay");
        char *login = g_strconcat(r->url, " ", r->user, NULL);
        const char *other;

        if (i && (!*r->name || g_str_equal(r->name, CONFIG_RELAY_DEFAULT) ||
                  strlen(r->name) > CONFIG_RELAY_NAME_MAX || strpbrk(r->name, " \t,\"=\\") ||
                  !g_utf8_validate(r->name, -1, NULL)))
            config_problem(problems, cfg, group, NULL, "\"%s\" cannot name a relay account "
                           "(\"%s\" is [relay]'s; at most %d bytes, no blanks, commas, quotes, "
                           "backslashes or =)", r->name, CONFIG_RELAY_DEFAULT,
                           CONFIG_RELAY_NAME_MAX);
        else if (i == CONFIG_RELAY_ACCOUNTS + 1)
            config_problem(problems, cfg, group, NULL, "more than %d [relay NAME] accounts",
                           CONFIG_RELAY_ACCOUNTS);
        else if (!g_hash_table_add(names, r->name))
            config_problem(problems, cfg, group, NULL, "a second relay account called \"%s\"",
                           r->name);
        if (i && !*r->url)
            config_problem(problems, cfg, group, "url", "a relay account needs a url");
        else if ((other = g_hash_table_lookup(logins, login)))
            config_problem(problems, cfg, group, "user", "url %s and user \"%s\" are also "
                           "relay account \"%s\"'s", r->url, r->user, other);
        else
            g_hash_table_insert(logins, g_steal_pointer(&login), r->name);
        g_free(login);
        if (!i || *r->url)
            config_check_relay_account(cfg, problems, r, group);
        config_check_relay_limits(cfg, problems, r, group);
    }
}

/*
 * Every DKIM key named must exist now: otherwise only the transform
 * notices, after ingest has accepted mail it can never sign.  The default
 * key (keys unset) is the exception: the transform creates it.
 */
static void config_check_dkim(const struct postern_config *cfg, GPtrArray *problems)
{
    g_auto(GStrv) items = NULL;
    int n = 0;

    if (config_dkim_keys_default(cfg))
        return;
    items = g_strsplit(cfg->dkim.keys, ",", -1);
    for (char **it = items; *it; it++) {
        char *item = g_strstrip(*it), *colon = strchr(item, ':');

        if (!*item)
            continue;
        n++;
        if (!colon || colon == item)
            config_problem(problems, cfg, "dkim", "keys", "\"%s\" is not selector:path", item);
        else if (access(g_strstrip(colon + 1), R_OK) < 0)
            config_problem(problems, cfg, "dkim", "keys", "%s: %s (create it with spoolctl dkim "
                           "keygen)", g_strstrip(colon + 1), g_strerror(errno));
    }
    if (!n)
        config_problem(problems, cfg, "dkim", "keys", "no selector:path given");
}

/*
 * Anyone who can write the spool can forge or delete mail: refuse a spool
 * directory, or LMDB file in it, that others may write.  What does not
 * exist yet is created with safe modes (spool_open()).
 */
static void config_check_spool_modes(const struct postern_config *cfg, GPtrArray *problems)
{
    static const char *const names[] = { NULL, "data.mdb", "lock.mdb" };
    struct stat st;

    for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
        g_autofree char *path = names[i] ? config_spool_path(cfg, names[i])
                                         : g_strdup(cfg->spool.dir);

        if (stat(path, &st) == 0 && (st.st_mode & S_IWOTH))
            config_problem(problems, cfg, "spool", "dir", "%s: mode %04o lets anyone write it "
                           "(chmod o-w)", path, (unsigned)(st.st_mode & 07777));
    }
}

/* A duration or count that cannot be 0. */
static void config_check_positive(const struct postern_config *cfg, GPtrArray *problems,
                                  const char *group, const char *key, uint64_t value,
                                  const char *why)
{
    if (value == 0)
        config_problem(problems, cfg, group, key, "must be more than 0 (%s)", why);
}

/*
 * [api]: an address postern-api can bind, a keys file it can read (no key:
 * postern run does not start it), a certificate only with its key.
 */
static void config_check_api(const struct postern_config *cfg, GPtrArray *problems)
{
    const char *colon = strrchr(cfg->api.listen, ':');
    char *end;
    unsigned long port = 0;

    if (colon) {
        errno = 0;
        port = strtoul(colon + 1, &end, 10);
        if (end == colon + 1 || *end || errno)
            port = 0;
    }
    if (!colon || colon == cfg->api.listen || port == 0 || port > 65535)
        config_problem(problems, cfg, "api", "listen", "\"%s\": expected host:port with a port "
                       "from 1 to 65535", cfg->api.listen);
    if (*cfg->api.keys_file && access(cfg->api.keys_file, R_OK) < 0)
        config_problem(problems, cfg, "api", "keys_file", "%s: %s (create it with spoolctl "
                       "api-key add)", cfg->api.keys_file, g_strerror(errno));
    if (!*cfg->api.tls_cert != !*cfg->api.tls_key)
        config_problem(problems, cfg, "api", *cfg->api.tls_cert ? "tls_key" : "tls_cert",
                       "tls_cert and tls_key go together");
    if (*cfg->api.tls_cert && access(cfg->api.tls_cert, R_OK) < 0)
        config_problem(problems, cfg, "api", "tls_cert", "%s: %s", cfg->api.tls_cert,
                       g_strerror(errno));
    if (*cfg->api.tls_key && access(cfg->api.tls_key, R_OK) < 0)
        config_problem(problems, cfg, "api", "tls_key", "%s: %s", cfg->api.tls_key,
                       g_strerror(errno));
    config_check_positive(cfg, problems, "api", "max_body", cfg->api.max_body,
                          "every request with a body would be refused");
    config_check_positive(cfg, problems, "api", "max_connections", cfg->api.max_connections,
                          "no request would be served");
}

/*
 * [events]: an http(s) URL postern-api can post to, and with it the
 * shared secret that signs each body (unsigned events would let anyone who
 * can reach the platform forge outcomes), kept from group and others.
 */
/*
 * A secret a key names (an HMAC key): set when what needs it is on,
 * readable, and kept from group and others.
 */
static void config_check_secret(const struct postern_config *cfg, GPtrArray *problems,
                                const char *group, const char *secret_key, const char *secret,
                                const char *needed_by)
{
    struct stat st;

    if (!*secret)
        config_problem(problems, cfg, group, secret_key, "must be set with %s", needed_by);
    else if (stat(secret, &st) < 0 || access(secret, R_OK) < 0)
        config_problem(problems, cfg, group, secret_key, "%s: %s", secret, g_strerror(errno));
    else if (st.st_mode & 077)
        config_problem(problems, cfg, group, secret_key, "%s: mode %04o lets others "
                       "read the secret (chmod 600)", secret, (unsigned)(st.st_mode & 07777));
}

/*
 * A CA bundle for the platform's https URL (libcurl's CAINFO): readable
 * now, or every POST would fail later on a TLS error nobody expects.
 */
static void config_check_ca_file(const struct postern_config *cfg, GPtrArray *problems,
                                 const char *group, const char *ca_key, const char *ca,
                                 const char *url_key, const char *url)
{
    if (!*ca)
        return;
    if (!*url)
        config_problem(problems, cfg, group, ca_key, "is set but %s is not", url_key);
    else if (!g_str_has_prefix(url, "https://"))
        config_problem(problems, cfg, group, ca_key, "is set but %s is not https://", url_key);
    if (access(ca, R_OK) < 0)
        config_problem(problems, cfg, group, ca_key, "%s: %s (a PEM file of CA certificates)",
                       ca, g_strerror(errno));
}

static void config_check_signed_url(const struct postern_config *cfg, GPtrArray *problems,
                                    const char *group, const char *url_key, const char *url,
                                    const char *secret_key, const char *secret,
                                    const char *ca_key, const char *ca)
{
    g_autofree char *needed_by = g_strdup_printf("%s (the key of X-Postern-Signature)", url_key);

    config_check_ca_file(cfg, problems, group, ca_key, ca, url_key, url);
    if (!*url) {
        if (*secret)
            config_problem(problems, cfg, group, secret_key, "is set but %s is not", url_key);
        return;
    }
    if ((!g_str_has_prefix(url, "http://") && !g_str_has_prefix(url, "https://")) ||
        strpbrk(url, " \t\r\n") ||
        !url[strlen(g_str_has_prefix(url, "https://") ? "https://" : "http://")])
        config_problem(problems, cfg, group, url_key, "\"%s\": expected http://HOST[:PORT]/PATH "
                       "or https://...", url);
    config_check_secret(cfg, problems, group, secret_key, secret, needed_by);
}

static void config_check_events(const struct postern_config *cfg, GPtrArray *problems)
{
    config_check_signed_url(cfg, problems, "events", "url", cfg->events.url, "secret_file",
                            cfg->events.secret_file, "ca_file", cfg->events.ca_file);
    if (!*cfg->events.url)
        return;
    config_check_positive(cfg, problems, "events", "timeout", cfg->events.timeout,
                          "every POST would time out");
    config_check_positive(cfg, problems, "events", "max_backoff", cfg->events.max_backoff,
                          "a down endpoint would be tried without a pause");
}

/*
 * [token] claim_url (pull mode): the same rules as [events] url, as the
 * claim is signed the same way.  A claim must end well inside the
 * transform's lease, or a slow platform would make every job stale.
 */
static void config_check_claim(const struct postern_config *cfg, GPtrArray *problems)
{
    config_check_signed_url(cfg, problems, "token", "claim_url", cfg->token.claim_url,
                            "claim_secret_file", cfg->token.claim_secret_file,
                            "claim_ca_file", cfg->token.claim_ca_file);
    if (!*cfg->token.claim_url)
        return;
    config_check_positive(cfg, problems, "token", "claim_timeout", cfg->token.claim_timeout,
                          "every claim would time out");
    config_check_positive(cfg, problems, "token", "claim_max_backoff",
                          cfg->token.claim_max_backoff,
                          "a down platform would be asked again without a pause");
    if (cfg->token.claim_timeout && cfg->token.claim_timeout * 2 > cfg->retry.lease)
        config_problem(problems, cfg, "token", "claim_timeout", "%" G_GUINT64_FORMAT " s: "
                       "must be at most half of [retry] lease (%" G_GUINT64_FORMAT " s), or a "
                       "slow platform would make the transform's jobs run out of their lease",
                       cfg->token.claim_timeout, cfg->retry.lease);
}

/*
 * [bounce] verp: the return path is envelope_from's local part +CODE at its
 * domain, the code an HMAC under secret_file (a forged bounce must not
 * count), which group and others must not read.
 */
static void config_check_bounce(const struct postern_config *cfg, GPtrArray *problems)
{
    const char *from = cfg->bounce.envelope_from;
    const char *at = strrchr(from, '@');

    if (!cfg->bounce.verp)
        return;
    if (!at || at == from || !at[1] || strchr(from, '+'))
        config_problem(problems, cfg, "bounce", "envelope_from", "\"%s\": verp needs "
                       "LOCAL@DOMAIN without a +extension", from);
    config_check_secret(cfg, problems, "bounce", "secret_file", cfg->bounce.secret_file,
                        "verp (the key of the bounce codes)");
    config_check_positive(cfg, problems, "bounce", "score_threshold", cfg->bounce.score_threshold,
                          "every address would be suppressed at once");
    config_check_positive(cfg, problems, "bounce", "score_window", cfg->bounce.score_window,
                          "no bounce would count");
}

/* Is addr (as ingest compares) a list's address, [ingest] recipients or envelope_from? */
static gboolean config_unsubscribe_taken(const struct postern_config *cfg, const char *addr)
{
    g_autofree char *canon = config_addr_canonical(addr);
    g_autofree char *bounces = config_addr_canonical(cfg->bounce.envelope_from);

    if (g_str_equal(canon, bounces))
        return TRUE;
    for (char **a = cfg->ingest.recipients; *a; a++) {
        g_autofree char *other = config_addr_canonical(*a);

        if (g_str_equal(canon, other))
            return TRUE;
    }
    for (guint i = 1; i < cfg->lists->len; i++) {
        const struct postern_list *l = cfg->lists->pdata[i];
        g_autofree char *other = l->address ? config_addr_canonical(l->address) : NULL;

        if (other && g_str_equal(canon, other))
            return TRUE;
    }
    return FALSE;
}

/*
 * [unsubscribe] one_click: the code of each copy's links is an HMAC under
 * [bounce] secret_file (with a label of its own, common/unsub_code.h), and
 * the links name one recipient, which a copy shared by all
 * (personalize = false) cannot; every list needs a form to offer.
 */
#define CONFIG_LOCAL_PART_MAX 64

static void config_check_unsubscribe(const struct postern_config *cfg, GPtrArray *problems)
{
    const char *addr = cfg->unsubscribe.address;
    const char *at = strrchr(addr, '@');

    if (!cfg->unsubscribe.one_click)
        return;
    config_check_secret(cfg, problems, "bounce", "secret_file", cfg->bounce.secret_file,
                        "[unsubscribe] one_click (the key of the unsubscribe codes)");
    if (!cfg->rewrite.personalize)
        config_problem(problems, cfg, "rewrite", "personalize", "false: [unsubscribe] "
                       "one_click needs one copy per recipient, each with its own link");
    if (*addr && (!at || at == addr || !at[1] || strpbrk(addr, "+ \t<>,")))
        config_problem(problems, cfg, "unsubscribe", "address", "\"%s\": expected "
                       "LOCAL@DOMAIN without a +extension", addr);
    /* Mail to it is read as an unsubscribe: never relayed, nor read as a bounce. */
    else if (*addr && config_unsubscribe_taken(cfg, addr))
        config_problem(problems, cfg, "unsubscribe", "address", "%s is also a restricted "
                       "address or [bounce] envelope_from", addr);
    /* RFC 5321 §4.5.3.1.1: the mailto form's LOCAL+CODE must fit 64 octets. */
    else if (*addr && (size_t)(at - addr) + 1 + UNSUB_MAILTO_CODE_LEN > CONFIG_LOCAL_PART_MAX)
        config_problem(problems, cfg, "unsubscribe", "address", "\"%s\": the local part "
                       "with +CODE is %zu octets, over RFC 5321's %d", addr,
                       (size_t)(at - addr) + 1 + UNSUB_MAILTO_CODE_LEN, CONFIG_LOCAL_PART_MAX);
    for (guint i = 0; i < cfg->lists->len; i++) {
        const struct postern_list *l = cfg->lists->pdata[i];
        g_autofree char *group = g_strconcat(CONFIG_LIST_GROUP, l->name, NULL);
        guint8 id[UNSUB_LIST_ID_BYTES], other[UNSUB_LIST_ID_BYTES];

        /* A short code names its list by a 32-bit hash: two lists must not share one. */
        unsub_list_id(l->name, id);
        for (guint k = 0; *addr && k < i; k++) {
            const char *name = ((const struct postern_list *)cfg->lists->pdata[k])->name;

            unsub_list_id(name, other);
            if (memcmp(id, other, sizeof id) == 0)
                config_problem(problems, cfg, group, NULL, "the mailto unsubscribe code names "
                               "lists by a hash of the name, and \"%s\" has the hash of "
                               "\"%s\": rename one", l->name, name);
        }

        if (!*l->unsubscribe_url && !*addr)
            config_problem(problems, cfg, i ? group : "rewrite", "unsubscribe_url",
                           "empty, and no [unsubscribe] address: one_click has no link to offer");
        else if (*l->unsubscribe_url && !g_str_has_prefix(l->unsubscribe_url, "https://") &&
                 !g_str_has_prefix(l->unsubscribe_url, "http://"))
            config_problem(problems, cfg, i ? group : "rewrite", "unsubscribe_url",
                           "\"%s\": one_click needs an https:// (or http://) base URL",
                           l->unsubscribe_url);
    }
}

/*
 * A list with approval: someone to approve (the notice needs an address),
 * a wait that ends, and the key of the links (a link anyone could make
 * would let anyone approve), and a link the moderator's browser can open.
 */
static void config_check_approval(const struct postern_config *cfg, GPtrArray *problems,
                                  const struct postern_list *l, const char *group)
{
    if (!l->approval) {
        if (l->moderator && *l->moderator)
            config_problem(problems, cfg, group, "moderator", "is set but approval is not");
        return;
    }
    if (!l->moderator || !*l->moderator)
        config_problem(problems, cfg, group, "moderator", "approval needs a moderator address");
    else if (!strchr(l->moderator, '@') || strpbrk(l->moderator, " \t<>,"))
        config_problem(problems, cfg, group, "moderator", "\"%s\" is not local@domain",
                       l->moderator);
    config_check_positive(cfg, problems, group, "approval_expiry", l->approval_expiry,
                          "every message would be discarded at once");
    config_check_secret(cfg, problems, "approval", "secret_file", cfg->approval.secret_file,
                        "a list with approval (the key of the approve/discard links; "
                        "default: [bounce] secret_file)");
    if (!g_str_has_prefix(cfg->approval.url, "http://") &&
        !g_str_has_prefix(cfg->approval.url, "https://"))
        config_problem(problems, cfg, "approval", "url", "\"%s\": expected http(s)://HOST[:PORT]",
                       cfg->approval.url);
}

static gboolean config_language_known(const char *lang)
{
    return g_str_equal(lang, "en") || g_str_equal(lang, "nb");
}

/*
 * The lists: each a name and an address of its own (mail to an address
 * two lists claimed would go out under either's footer), a language
 * notices are written in, a From the rewrite can use.
 */
static void config_check_lists(const struct postern_config *cfg, GPtrArray *problems)
{
    g_autoptr(GHashTable) owner = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_autoptr(GHashTable) names = g_hash_table_new(g_str_hash, g_str_equal);

    if (!config_language_known(cfg->notice.language))
        config_problem(problems, cfg, "notice", "language", "\"%s\" is not en or nb",
                       cfg->notice.language);
    for (char **a = cfg->ingest.recipients; *a; a++)
        g_hash_table_insert(owner, config_addr_canonical(*a), (gpointer)CONFIG_LIST_DEFAULT);
    for (guint i = 1; i < cfg->lists->len; i++) {
        const struct postern_list *l = cfg->lists->pdata[i];
        g_autofree char *group = g_strconcat(CONFIG_LIST_GROUP, l->name, NULL);
        g_autofree char *canon = NULL;
        const char *other;

        if (!*l->name || g_str_equal(l->name, CONFIG_LIST_DEFAULT) ||
            strpbrk(l->name, " \t,\"") || !g_utf8_validate(l->name, -1, NULL))
            config_problem(problems, cfg, group, NULL, "\"%s\" cannot name a list (\"%s\" "
                           "is the global keys' list; no blanks, commas or quotes)", l->name,
                           CONFIG_LIST_DEFAULT);
        else if (!g_hash_table_add(names, l->name))
            config_problem(problems, cfg, group, NULL, "a second list called \"%s\"", l->name);
        if (!l->address || !*l->address) {
            config_problem(problems, cfg, group, "address", "a list needs an address");
        } else if (!strchr(l->address, '@') || strpbrk(l->address, " \t<>,")) {
            config_problem(problems, cfg, group, "address", "\"%s\" is not local@domain",
                           l->address);
        } else if ((other = g_hash_table_lookup(owner,
                                                canon = config_addr_canonical(l->address)))) {
            config_problem(problems, cfg, group, "address", "%s is also the address of list "
                           "\"%s\"%s", l->address, other,
                           g_str_equal(other, CONFIG_LIST_DEFAULT) ? " ([ingest] recipients)" : "");
        } else {
            g_hash_table_insert(owner, g_steal_pointer(&canon), l->name);
        }
        if (!config_language_known(l->language))
            config_problem(problems, cfg, group, "language", "\"%s\" is not en or nb",
                           l->language);
        if (!*l->from)
            config_problem(problems, cfg, group, "from", "empty: the copies need a From");
        config_check_approval(cfg, problems, l, group);
    }
}

gboolean config_validate(const struct postern_config *cfg, GPtrArray *problems)
{
    guint before = problems->len;

    config_check_repeats(cfg, problems);
    config_check_positive(cfg, problems, "spool", "map_size", cfg->spool.map_size,
                          "the LMDB map");
    if (cfg->spool.max_size < cfg->spool.map_size)
        config_problem(problems, cfg, "spool", "max_size", "smaller than map_size");
    config_check_spool_modes(cfg, problems);
    config_check_listen(cfg, problems);
    if (!cfg->ingest.recipients[0])
        config_problem(problems, cfg, "ingest", "recipients", "no address to accept");
    config_check_positive(cfg, problems, "ingest", "max_message_size",
                          cfg->ingest.max_message_size, "every message would be refused");
    config_check_positive(cfg, problems, "ingest", "max_recipients", cfg->ingest.max_recipients,
                          "every recipient would be refused");
    config_check_positive(cfg, problems, "ingest", "max_connections",
                          cfg->ingest.max_connections, "no client could connect");
    config_check_positive(cfg, problems, "ingest", "timeout", cfg->ingest.timeout,
                          "every session would time out");
    config_check_dkim(cfg, problems);
    config_check_unsubscribe(cfg, problems);
    config_check_relay(cfg, problems);
    config_check_positive(cfg, problems, "relay", "max_connections", cfg->relay.max_connections,
                          "nothing could be delivered");
    config_check_positive(cfg, problems, "relay", "max_rcpt_per_txn",
                          cfg->relay.max_rcpt_per_txn, "nothing could be delivered");
    config_check_positive(cfg, problems, "relay", "daily_window", cfg->relay.daily_window,
                          "the daily limit needs a window");
    config_check_positive(cfg, problems, "relay", "timeout", cfg->relay.timeout,
                          "every SMTP phase would time out");
    config_check_positive(cfg, problems, "retry", "initial", cfg->retry.initial,
                          "a deferred delivery would be retried at once, forever");
    if (cfg->retry.max < cfg->retry.initial)
        config_problem(problems, cfg, "retry", "max", "smaller than initial");
    config_check_positive(cfg, problems, "retry", "lifetime", cfg->retry.lifetime,
                          "every message would bounce at once");
    config_check_positive(cfg, problems, "retry", "lease", cfg->retry.lease,
                          "every job would expire before a worker could finish it");
    config_check_positive(cfg, problems, "workers", "slots", cfg->workers.slots,
                          "a sender could take no job");
    config_check_api(cfg, problems);
    config_check_events(cfg, problems);
    config_check_claim(cfg, problems);
    config_check_bounce(cfg, problems);
    config_check_lists(cfg, problems);
    return problems->len == before;
}

gboolean config_load(struct postern_config *cfg, const char *path, GError **err)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    GError *local = NULL;

    memset(cfg, 0, sizeof(*cfg));
    cfg->path = g_strdup(path);
    cfg->lists = g_ptr_array_new_with_free_func(config_list_free);
    cfg->relays = g_ptr_array_new_with_free_func(config_relay_free);
    for (size_t i = 0; i < G_N_ELEMENTS(config_keys); i++)
        if (!config_store(cfg, &config_keys[i], config_keys[i].dflt, err))
            msg_panic("config_load: bad default for [%s] %s", config_keys[i].group,
                      config_keys[i].key);
    if (!path) {
        return config_load_relays(cfg, NULL, err) && config_load_lists(cfg, NULL, err) &&
               config_derive(cfg, err);
    }

    if (!g_key_file_load_from_file(kf, path, G_KEY_FILE_NONE, &local)) {
        int line = config_parse_error_line(path, local->message);

        if (line)
            g_set_error(err, CONFIG_ERROR, 1, "%s:%d: %s", path, line, local->message);
        else
            g_set_error(err, CONFIG_ERROR, 1, "%s: %s", path, local->message);
        g_error_free(local);
        return FALSE;
    }
    if (!config_check_known(cfg, kf, err))
        return FALSE;
    for (size_t i = 0; i < G_N_ELEMENTS(config_keys); i++) {
        const struct config_key *k = &config_keys[i];
        g_autofree char *value = g_key_file_get_value(kf, k->group, k->key, NULL);

        if (value && !config_store(cfg, k, value, err))
            return FALSE;
    }
    return config_load_relays(cfg, kf, err) && config_load_lists(cfg, kf, err) &&
           config_derive(cfg, err);
}

void config_load_or_exit(struct postern_config *cfg, const char *path)
{
    GError *err = NULL;

    if (!config_load(cfg, path, &err)) {
        fprintf(stderr, "%s: %s\n", log_progname(), err->message);
        exit(CONFIG_EXIT_USAGE);
    }
}

void config_load_valid_or_exit(struct postern_config *cfg, const char *path)
{
    g_autoptr(GPtrArray) problems = g_ptr_array_new_with_free_func(g_free);

    config_load_or_exit(cfg, path);
    if (!config_validate(cfg, problems)) {
        fprintf(stderr, "%s: %s\n", log_progname(), (char *)problems->pdata[0]);
        if (problems->len > 1)
            fprintf(stderr, "%s: ... and %u more problem(s): see spoolctl check\n",
                    log_progname(), problems->len - 1);
        exit(CONFIG_EXIT_USAGE);
    }
}

void config_free(struct postern_config *cfg)
{
    for (size_t i = 0; i < G_N_ELEMENTS(config_keys); i++) {
        void *field = (char *)cfg + config_keys[i].offset;
        if (config_keys[i].type == CT_STRING)
            g_free(*(char **)field);
        else if (config_keys[i].type == CT_LIST)
            g_strfreev(*(char ***)field);
    }
    g_free(cfg->workers.local_dispatch);
    if (cfg->lists)
        g_ptr_array_unref(cfg->lists);
    if (cfg->relays)
        g_ptr_array_unref(cfg->relays);
    g_strfreev(cfg->accept);
    g_free(cfg->path);
    memset(cfg, 0, sizeof(*cfg));
}

gboolean config_dkim_keys_default(const struct postern_config *cfg)
{
    g_autofree char *dflt = g_strdup_printf(CONFIG_DKIM_DEFAULT, cfg->spool.dir);

    return g_str_equal(cfg->dkim.keys, dflt);
}

char *config_spool_path(const struct postern_config *cfg, const char *name)
{
    return g_build_filename(cfg->spool.dir, name, NULL);
}
