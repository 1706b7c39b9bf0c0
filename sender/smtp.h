/*
 * SMTP client side of the sender workers.
 *
 * common/relay_url.c parses [relay] url (pure; the config check uses it too).
 * smtp_reply.c    incremental SMTP reply parser and EHLO keywords (pure, no I/O).
 * smtp_client.c   blocking SMTP client on OpenSSL: one per sender worker slot,
 *                 used from one thread at a time. The process must ignore
 *                 SIGPIPE, as every Postfix daemon does: OpenSSL writes to the
 *                 socket with write(2).
 * maildir.c       delivery into a Maildir instead of a relay.
 */
#ifndef POSTERN_SENDER_SMTP_H
#define POSTERN_SENDER_SMTP_H

#include <stddef.h>
#include <glib.h>
#include <openssl/types.h>

#include "common/relay_url.h"

/* Errors of this module. SMTP_ERROR_NONE is never a GError code: it marks a
 * recipient result that ended with a reply. */
#define SMTP_ERROR (smtp_error_quark())
GQuark smtp_error_quark(void);

enum smtp_error {
    SMTP_ERROR_NONE,
    SMTP_ERROR_CONFIG,      /* bad URL or ca_file, AUTH impossible as configured */
    SMTP_ERROR_CONNECT,     /* name lookup or TCP connect failed */
    SMTP_ERROR_TIMEOUT,     /* a phase exceeded its timeout */
    SMTP_ERROR_LOST,        /* the server closed or reset the connection */
    SMTP_ERROR_TLS,         /* handshake or verification failed, or required TLS not offered */
    SMTP_ERROR_PROTOCOL,    /* malformed or unexpected reply */
    SMTP_ERROR_SESSION,     /* the relay refused the session: greeting, EHLO, AUTH */
    SMTP_ERROR_NOT_STARTED, /* given back unstarted: no attempt (sender_slot.c) */
};

/* ---- smtp_reply.c ------------------------------------------------------ */

#define SMTP_LINE_MAX   2048            /* longest reply line accepted */
#define SMTP_REPLY_MAX  65536           /* longest multi-line reply accepted */

/* One complete reply. text joins the lines with a space, without the code
 * and without a leading enhanced status code; lines keeps each line's text
 * after "NNN-" or "NNN " verbatim (the EHLO keywords). */
struct smtp_reply {
    int     code;
    char    status[16];             /* RFC 3463 "x.y.z", "" when absent */
    char   *text;
    char  **lines;
};

enum smtp_parse { SMTP_PARSE_ERROR = -1, SMTP_PARSE_MORE = 0, SMTP_PARSE_REPLY = 1 };

struct smtp_reply_parser;

struct smtp_reply_parser *smtp_reply_parser_new(void);
void    smtp_reply_parser_free(struct smtp_reply_parser *p);
void    smtp_reply_feed(struct smtp_reply_parser *p, const char *buf, size_t len);
/* SMTP_PARSE_REPLY fills *out (clear it with smtp_reply_clear); an error is
 * final: the parser answers SMTP_PARSE_ERROR from then on. */
enum smtp_parse smtp_reply_next(struct smtp_reply_parser *p, struct smtp_reply *out,
                GError **err);
/* Bytes fed but not yet returned as replies. */
size_t  smtp_reply_pending(const struct smtp_reply_parser *p);
void    smtp_reply_clear(struct smtp_reply *r);

struct smtp_ehlo {
    gboolean pipelining, starttls, enhancedstatuscodes, eightbitmime, smtputf8;
    gboolean auth_plain, auth_login;
    gboolean size;                  /* SIZE announced */
    guint64 size_max;               /* its limit, 0 = none given */
};

void    smtp_ehlo_parse(const struct smtp_reply *r, struct smtp_ehlo *out);

/* ---- smtp_client.c ----------------------------------------------------- */

/* Where an attempt was when it ended; each phase has its own timeout. */
enum smtp_phase {
    SMTP_PHASE_CONNECT, SMTP_PHASE_GREETING, SMTP_PHASE_EHLO, SMTP_PHASE_TLS,
    SMTP_PHASE_AUTH, SMTP_PHASE_RSET, SMTP_PHASE_MAIL, SMTP_PHASE_RCPT,
    SMTP_PHASE_DATA, SMTP_PHASE_BODY, SMTP_PHASE_DOT, SMTP_PHASE_QUIT,
    SMTP_PHASE_COUNT
};

const char *smtp_phase_name(enum smtp_phase phase);     /* "connect", "body", ... */

/* require: STARTTLS (or smtps) with certificate and host name verification,
 * else defer; opportunistic: STARTTLS when offered, unverified, as Postfix
 * "may"; none: never STARTTLS (smtps still encrypts, unverified). */
enum smtp_tls { SMTP_TLS_REQUIRE, SMTP_TLS_OPPORTUNISTIC, SMTP_TLS_NONE };

gboolean smtp_tls_parse(const char *word, enum smtp_tls *out, GError **err);

enum smtp_auth { SMTP_AUTH_ANY, SMTP_AUTH_PLAIN, SMTP_AUTH_LOGIN };

struct smtp_client_config {
    const struct relay_url *url;    /* RELAY_SMTP or RELAY_SMTPS */
    enum smtp_tls tls;
    const char *ca_file;            /* NULL or "": the system trust store */
    const char *user;               /* NULL or "": no AUTH */
    const char *password;           /* never logged; sent only under TLS */
    enum smtp_auth auth;            /* ANY prefers PLAIN */
    const char *helo_name;          /* NULL: g_get_host_name() */
    int     timeouts[SMTP_PHASE_COUNT];     /* milliseconds, 0: Postfix default */
    int     timeout_max;            /* milliseconds, 0: none; caps every phase */
    SSL_CTX *ssl_ctx;               /* from smtp_tls_context_new(), shared; NULL: the
                                     * client loads its own */
};

/*
 * The TLS context of a relay account: TLS 1.2 at least, and the trust
 * store (ca_file, else the system's). Loading the store parses every
 * certificate in it, ≈ 250 million instructions for Debian's bundle, so a
 * sender worker loads it once per account at start and hands it to each
 * client it makes (ssl_ctx). NULL with *err when ca_file cannot be read.
 */
SSL_CTX *smtp_tls_context_new(const struct smtp_client_config *cfg, GError **err);

/* One recipient's outcome. A reply fills code/status/text; a failure
 * without a reply has code 0, error set, the status Postfix would log
 * (4.4.1 connect, 4.4.2 lost or timed out, 4.7.5 TLS, 4.5.0 protocol) and
 * text saying what happened. relay is "host[ip]:port" or "none". */
struct smtp_rcpt_result {
    int     code;
    char    status[16];
    char   *text;
    enum smtp_error error;
    enum smtp_phase phase;
    char   *relay;
};

void    smtp_results_clear(struct smtp_rcpt_result *results, size_t n);
/* A quota or throttle reply of the relay (SPEC §5): says nothing about the
 * message, every delivery would get the same answer for a while. */
gboolean smtp_result_throttled(const struct smtp_rcpt_result *r);
/* The relay refused our AUTH for good (wrong user or password): a relay
 * fault, not the message's, that pauses the relay like a quota. */
gboolean smtp_result_auth_refused(const struct smtp_rcpt_result *r);

struct smtp_client;

/* Copies what it needs from cfg, takes a reference on cfg->ssl_ctx (then
 * it cannot fail); does not connect yet. */
struct smtp_client *smtp_client_new(const struct smtp_client_config *cfg, GError **err);

/*
 * One transaction: MAIL FROM, RCPT TO for each recipient, DATA with the
 * concatenation of data_parts (CRLF lines, not dot-stuffed). Connects, or
 * reuses the open connection after RSET, reconnecting once if the server
 * dropped it. Fills results[0..n) in every case. Returns the number of
 * recipients the relay accepted the message for, or -1 with *err set when
 * the session or connection failed (the results say so too).
 */
int     smtp_client_send(struct smtp_client *c, const char *mail_from,
             const char *const *rcpts, size_t n,
             const char *const *data_parts, const size_t *data_lens,
             size_t n_parts, struct smtp_rcpt_result *results, GError **err);

/*
 * The transaction the caller will send next on this client, if this one
 * goes well: with PIPELINING its RSET, MAIL, RCPTs and DATA then go in the
 * same write as the end of data of the next smtp_client_send() (RFC 2920),
 * which saves a round trip. Copies what it needs. The announcement is
 * used or forgotten by that call. A transaction sent ahead and then not
 * run (the caller stopped, or sent another one) costs the connection: the
 * next smtp_client_send() opens a new one, smtp_client_connected() says
 * FALSE, and smtp_client_free() closes without QUIT.
 */
void    smtp_client_announce(struct smtp_client *c, const char *mail_from,
                 const char *const *rcpts, size_t n, const size_t *data_lens,
                 size_t n_parts);

/*
 * Open a session as a transaction would (connect, greeting, EHLO,
 * STARTTLS with the configured verification, AUTH) and stop there:
 * `spoolctl check`.  FALSE with *err naming the relay and its reply.
 */
gboolean smtp_client_probe(struct smtp_client *c, GError **err);

/* Whether the client holds a connection it can use again now (a failure
 * drops it; see smtp_client_announce() too). */
gboolean smtp_client_connected(const struct smtp_client *c);

/* QUIT if connected, then free. */
void    smtp_client_free(struct smtp_client *c);

/* ---- maildir.c --------------------------------------------------------- */

/* Write the concatenated parts, verbatim, as one new message in the Maildir
 * dir (created with tmp/ new/ cur/ if missing). Returns only when the
 * message and its directory entry are on disk. */
gboolean maildir_deliver(const char *dir, const char *const *parts, const size_t *lens,
             size_t n_parts, GError **err);

#endif
