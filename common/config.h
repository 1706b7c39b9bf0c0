/*
 * config.h - the one INI file every Postern program reads (SPEC §2).
 *
 * Every key has an embedded default, so no file at all gives a working
 * local demo.  Durations are held in seconds, sizes in bytes, lists as
 * NULL-terminated string vectors.  A bad file is reported as one line
 * "FILE:LINE: [group] key: problem" and the caller exits 2.
 */
#ifndef POSTERN_CONFIG_H
#define POSTERN_CONFIG_H

#include <glib.h>
#include <stdint.h>

/*
 * One list: a restricted address and how its mail goes out (issue 11).
 * The global keys ([ingest] recipients, [rewrite] from, footer and
 * footer_hidden, [notice] language, [token] max_recipients) make the
 * implicit list "default", which answers on every [ingest] recipients
 * address; a [list NAME] section adds a list on its own address, and
 * takes from the global keys what it does not set.
 */
struct postern_list {
    char *name;
    char *address;                  /* NULL for the default list: [ingest] recipients */
    char *from;
    char *footer;
    char *footer_hidden;
    char *language;                 /* of its notices: "en" or "nb" */
    uint64_t max_recipients;        /* per token; 0: no limit */
    gboolean hide_sender;           /* every token hides its sender; notices name no member */
    char *unsubscribe_url;          /* [rewrite] unsubscribe_url unless set; with one_click
                                     * the base of its signed links (docs/design.md §9) */
    gboolean approval;              /* each message waits for the moderator's approval */
    char *moderator;                /* who approves: gets the approval notice; NULL: none */
    uint64_t approval_expiry;       /* seconds a message waits before it is discarded */
};

#define CONFIG_LIST_DEFAULT "default"

/*
 * One relay account (issue 11): where and as whom the sender workers
 * deliver.  [relay] is the account "default"; a [relay NAME] section adds
 * one with its own url, tls, ca_file, user and password_file, taking from
 * [relay] what it does not set.  The dispatcher gives each job to the
 * accounts in turn.  Each account has limits of its own (daily_limit,
 * daily_window, rate, max_connections): a [relay NAME] that does not set
 * one has a budget of [relay]'s size, its own, not a share of [relay]'s
 * (config_relay_limits()).  max_rcpt_per_txn and timeout stay [relay]'s.
 */
struct postern_relay_limits {
    uint64_t max_connections;       /* relay connections of this account, all workers */
    double rate;                    /* SMTP transactions a second; 0: no limit */
    uint64_t daily_limit;           /* recipients per daily_window; 0: no limit */
    uint64_t daily_window;          /* seconds */
};

struct postern_relay {
    char *name;
    char *url;
    char *tls;
    char *ca_file;
    char *user;
    char *password_file;
    struct postern_relay_limits limits;  /* what [relay NAME] set ... */
    unsigned limits_set;            /* ... CONFIG_RELAY_SET_* bits; the rest is [relay]'s */
};

#define CONFIG_RELAY_SET_MAX_CONNECTIONS 1u
#define CONFIG_RELAY_SET_RATE 2u
#define CONFIG_RELAY_SET_DAILY_LIMIT 4u
#define CONFIG_RELAY_SET_DAILY_WINDOW 8u

#define CONFIG_RELAY_DEFAULT "default"
#define CONFIG_RELAY_ACCOUNTS 16        /* [relay NAME] sections at most (the metrics show each) */
#define CONFIG_RELAY_NAME_MAX 63        /* bytes of an account's name */
#define CONFIG_APPROVAL_EXPIRY (7 * 86400)  /* [list NAME] approval_expiry when unset */

struct postern_config {
    char *path;                     /* file read, or NULL for the defaults */

    struct {
        char *dir;
        uint64_t map_size;          /* initial LMDB map size */
        uint64_t max_size;          /* map growth stops here: 452 4.3.1 */
    } spool;
    struct {
        char **listen;
        char **recipients;
        uint64_t max_message_size;
        uint64_t max_header_size;
        uint64_t max_recipients;
        uint64_t max_connections;
        uint64_t max_connections_per_client;   /* per client address; 0: no limit */
        uint64_t timeout;           /* for each command, and DATA's base */
        uint64_t min_data_rate;     /* bytes/s that extend the DATA deadline; 0: none */
        char *hostname;             /* greeting and Received: name */
    } ingest;
    struct {
        char *prefix;
        uint64_t max_recipients;    /* the default list's cap per token; 0: no limit */
        char *claim_url;            /* pull mode: the platform decides each token; "": none */
        char *claim_secret_file;    /* the HMAC-SHA256 key of the claim's X-Postern-Signature */
        char *claim_ca_file;        /* CA bundle for an https claim_url; "": the system's */
        uint64_t claim_timeout;     /* one claim, connect to answer */
        uint64_t claim_max_backoff; /* the longest wait of a message while the platform is down */
    } token;
    struct {
        char *from;
        gboolean allow_original_sender;
        char *footer;
        char *footer_hidden;
        char *unsubscribe_url;
        gboolean personalize;
    } rewrite;
    struct {
        char *domain;
        char *keys;                 /* "sel:path, sel:path" */
        uint64_t sign_threads;      /* threads signing one message's copies; 0: one per CPU */
    } dkim;
    struct {
        char *url;
        char *tls;
        char *ca_file;
        char *user;
        char *password_file;
        uint64_t max_connections;
        uint64_t max_rcpt_per_txn;
        double rate;
        uint64_t daily_limit;       /* recipients per daily_window; 0: no limit */
        uint64_t daily_window;      /* seconds: the rolling window of daily_limit (24h) */
        uint64_t timeout;           /* every SMTP phase of the sender workers */
    } relay;
    struct {
        uint64_t initial;
        uint64_t max;
        uint64_t lifetime;
        uint64_t lease;
    } retry;
    struct {
        char *envelope_from;
        gboolean verp;              /* return path envelope_from's local part +CODE */
        char *secret_file;          /* the HMAC key of the VERP codes */
        uint64_t score_threshold;   /* bounce score that suppresses an address */
        uint64_t score_window;      /* seconds: bounces older than this no longer count */
    } bounce;
    struct {
        gboolean one_click;         /* per-recipient signed List-Unsubscribe (RFC 8058) */
        char *address;              /* the mailto form's LOCAL@DOMAIN; "": none */
    } unsubscribe;
    struct {
        uint64_t max_per_hour;      /* "Not sent" notices per address and hour; 0: no limit */
        char *language;             /* the default list's notices: en or nb */
    } notice;
    struct {
        char *dispatch;
        char *local_dispatch;           /* derived: ipc:// endpoint for workers on the
                                           dispatcher's host, = dispatch unless tcp:// */
        char *hints;
        char *curve_secret_key_file;
        char *curve_server_public_key;
        char *curve_allowed_keys_file;
        uint64_t count;                 /* sender workers started by postern run */
        uint64_t transforms;            /* transform workers started by postern run; 0: one per CPU */
        uint64_t slots;
    } workers;
    struct {
        char *listen;               /* host:port of postern-api */
        char *keys_file;            /* bearer keys, hashed; unset: postern run skips the API */
        char *tls_cert;             /* both or neither: HTTPS */
        char *tls_key;
        uint64_t max_body;          /* 413 beyond */
        uint64_t max_connections;   /* open at once; more wait in the listen queue */
    } api;
    struct {
        char *url;                  /* where postern-api posts outcome events; "": none */
        char *secret_file;          /* the HMAC-SHA256 key of X-Postern-Signature */
        char *ca_file;              /* CA bundle for an https url; "": the system's */
        uint64_t timeout;           /* one POST, connect to answer */
        uint64_t max_backoff;       /* the longest wait between tries */
    } events;
    struct {
        char *secret_file;          /* the key of the approve/discard links; "": [bounce]'s */
        char *url;                  /* postern-api as the moderator reaches it; "": http://[api] listen */
    } approval;
    GPtrArray *lists;               /* struct postern_list *: [0] "default", then [list NAME]s */
    GPtrArray *relays;              /* struct postern_relay *: [0] "default", then [relay NAME]s */
    char **accept;                  /* derived: [ingest] recipients and every list address */
};

#define CONFIG_EXIT_USAGE 2

/* Fill cfg from path (NULL: embedded defaults only). */
gboolean config_load(struct postern_config *cfg, const char *path, GError **err);
void config_free(struct postern_config *cfg);

/* Load or print the one-line error and exit 2 (spoolctl: it must open a
 * spool whatever the rest of the file says). */
void config_load_or_exit(struct postern_config *cfg, const char *path);

/*
 * Everything that would make a loaded config fail later, checked once
 * before anything listens: values that cannot work (0 for a count, a
 * lease or a timeout; a port out of range; a rate that is not a number),
 * keys that contradict each other (AUTH without TLS), a relay URL the
 * sender cannot parse, DKIM key files that do not exist, a section or key
 * written twice, a spool others may write.  Appends one line per problem
 * ("FILE:LINE: [group] key: problem") to problems (of char *); TRUE when
 * there is none.  The daemons and `postern run` exit 2 on the first
 * (config_load_valid_or_exit()); `spoolctl check` lists them all.
 */
gboolean config_validate(const struct postern_config *cfg, GPtrArray *problems);

/* Load and validate, or print the first problem and exit 2: what every daemon wants. */
void config_load_valid_or_exit(struct postern_config *cfg, const char *path);

/* "30s", "5m", "2h", "1d" -> seconds; "32M", "1G" -> bytes. */
gboolean config_parse_duration(const char *text, uint64_t *out);
gboolean config_parse_size(const char *text, uint64_t *out);

/* [dkim] keys left unset: the demo key SPOOL/dkim/default.ed25519.pem, which
 * the transform creates on its first start. */
gboolean config_dkim_keys_default(const struct postern_config *cfg);

/* The list called name, or NULL. */
const struct postern_list *config_list_find(const struct postern_config *cfg, const char *name);

/*
 * The list a message belongs to: that of the first of its envelope
 * recipients that is a [list NAME] address (compared as ingest does:
 * case and +detail aside), else the default list.
 */
const struct postern_list *config_list_of(const struct postern_config *cfg, char **rcpts,
                                          guint nrcpts);

/* The relay account called name, or NULL. */
const struct postern_relay *config_relay_find(const struct postern_config *cfg, const char *name);

/* Account r's limits: what its section set, [relay]'s for the rest (all of them for default). */
void config_relay_limits(const struct postern_config *cfg, const struct postern_relay *r,
                         struct postern_relay_limits *out);

/* Path of a file under the spool directory (run/, dkim/, ...). */
char *config_spool_path(const struct postern_config *cfg, const char *name);

#endif
