/*
 * Blocking SMTP client for the sender workers (RFC 5321, 3207, 2920, 4954).
 *
 * One client holds at most one connection to the relay and reuses it from
 * one transaction to the next. Every wait is a poll() with the deadline of
 * the current phase, so a silent relay costs at most that phase's timeout;
 * the socket is non-blocking underneath, plain or OpenSSL. Any failure
 * without a reply drops the connection: its state is unknown.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "sender/smtp.h"

#define BODY_CHUNK      65536           /* body bytes staged per write */

/* Per phase: name, what Postfix says it was doing, default timeout (s). */
static const struct {
    const char *name;
    const char *doing;
    int     timeout;
}       phases[SMTP_PHASE_COUNT] = {
    [SMTP_PHASE_CONNECT] = {"connect", "connecting", 30},
    [SMTP_PHASE_GREETING] = {"greeting", "receiving the initial server greeting", 300},
    [SMTP_PHASE_EHLO] = {"ehlo", "performing the EHLO handshake", 300},
    [SMTP_PHASE_TLS] = {"tls", "performing the TLS handshake", 300},
    [SMTP_PHASE_AUTH] = {"auth", "authenticating", 300},
    [SMTP_PHASE_RSET] = {"rset", "sending RSET", 20},
    [SMTP_PHASE_MAIL] = {"mail", "sending MAIL FROM", 300},
    [SMTP_PHASE_RCPT] = {"rcpt", "sending RCPT TO", 300},
    [SMTP_PHASE_DATA] = {"data", "sending DATA command", 120},
    [SMTP_PHASE_BODY] = {"body", "sending message body", 180},
    [SMTP_PHASE_DOT] = {"dot", "sending end of data -- message may be sent more than once", 600},
    [SMTP_PHASE_QUIT] = {"quit", "sending QUIT", 300},
};

/* A transaction's envelope, kept to be sent ahead (txn_ahead). */
struct smtp_envelope {
    char   *from;                   /* NULL: none */
    char  **rcpts;
    size_t  n;
    gsize   size;                   /* of the data, for SIZE= */
};

struct smtp_client {
    enum relay_kind kind;
    char   *host;
    int     port;
    enum smtp_tls tls;
    char   *user;
    char   *password;
    enum smtp_auth auth;
    char   *helo_name;
    int     timeouts[SMTP_PHASE_COUNT];     /* milliseconds */
    SSL_CTX *ctx;

    /* The connection, when fd >= 0. */
    int     fd;
    SSL    *ssl;
    char   *relay;                  /* "host[ip]:port", kept after a drop for the results */
    struct smtp_reply_parser *parser;
    struct smtp_reply reply;        /* the last reply read */
    struct smtp_ehlo ehlo;
    GString *out;                   /* bytes waiting for out_flush() */
    enum smtp_phase phase;
    gboolean rset_queued;           /* RSET probe in c->out, its reply not read */
    struct smtp_envelope ahead;     /* smtp_client_announce(): after this end of data */
    struct smtp_envelope sent_ahead;        /* its commands went, replies not read */
};

const char *smtp_phase_name(enum smtp_phase phase)
{
    return phases[phase].name;
}

gboolean smtp_tls_parse(const char *word, enum smtp_tls *out, GError **err)
{
    static const char *const names[] = {
        [SMTP_TLS_REQUIRE] = "require", [SMTP_TLS_OPPORTUNISTIC] = "opportunistic",
        [SMTP_TLS_NONE] = "none",
    };
    size_t  i;

    for (i = 0; i < G_N_ELEMENTS(names); i++) {
        if (!g_ascii_strcasecmp(word, names[i])) {
            *out = i;
            return TRUE;
        }
    }
    g_set_error(err, SMTP_ERROR, SMTP_ERROR_CONFIG,
            "tls = \"%s\": expected require, opportunistic or none", word);
    return FALSE;
}

void    smtp_results_clear(struct smtp_rcpt_result *results, size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        g_free(results[i].text);
        g_free(results[i].relay);
        memset(&results[i], 0, sizeof(results[i]));
    }
}

static void envelope_clear(struct smtp_envelope *e)
{
    g_free(e->from);
    g_strfreev(e->rcpts);
    memset(e, 0, sizeof(*e));
}

static gsize data_size(const size_t *lens, size_t n_parts)
{
    gsize   size = 0;
    size_t  j;

    for (j = 0; j < n_parts; j++)
        size += lens[j];
    return size;
}

static gboolean envelope_is(const struct smtp_envelope *e, const char *from,
                const char *const *rcpts, size_t n, gsize size)
{
    size_t  i;

    if (e->n != n || e->size != size || strcmp(e->from, from) != 0)
        return FALSE;
    for (i = 0; i < n; i++)
        if (strcmp(e->rcpts[i], rcpts[i]) != 0)
            return FALSE;
    return TRUE;
}

/* ---- connection ---------------------------------------------------------- */

static gint64 deadline_of(const struct smtp_client *c)
{
    return g_get_monotonic_time() + (gint64) c->timeouts[c->phase] * 1000;
}

/* Forget the connection without a word to the server. */
static void conn_drop(struct smtp_client *c)
{
    SSL_free(c->ssl);
    c->ssl = NULL;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    smtp_reply_parser_free(c->parser);
    c->parser = NULL;
    g_string_truncate(c->out, 0);
    c->rset_queued = FALSE;
    envelope_clear(&c->sent_ahead);
}

static gboolean G_GNUC_PRINTF(4, 5) conn_fail(struct smtp_client *c, GError **err,
                          enum smtp_error code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_propagate_error(err, g_error_new_valist(SMTP_ERROR, code, fmt, ap));
    va_end(ap);
    conn_drop(c);
    return FALSE;
}

/* A reply the session cannot go on after (greeting, EHLO, STARTTLS, AUTH). */
static gboolean reply_fail(struct smtp_client *c, GError **err, enum smtp_error code)
{
    return conn_fail(c, err, code, "host %s refused while %s: %d%s%s %s",
             c->relay, phases[c->phase].doing, c->reply.code,
             *c->reply.status ? " " : "", c->reply.status, c->reply.text);
}

static gboolean io_wait(struct smtp_client *c, short events, gint64 deadline, GError **err)
{
    struct pollfd pfd = {.fd = c->fd, .events = events};
    gint64  left;
    int     n;

    do {
        left = (deadline - g_get_monotonic_time() + 999) / 1000;
        if (left <= 0)
            return conn_fail(c, err, SMTP_ERROR_TIMEOUT, "conversation with %s timed out while %s",
                     c->relay, phases[c->phase].doing);
        n = poll(&pfd, 1, (int) MIN(left, G_MAXINT));
    } while (n == 0 || (n < 0 && errno == EINTR));
    if (n < 0)
        return conn_fail(c, err, SMTP_ERROR_LOST, "poll: %s", g_strerror(errno));
    return TRUE;
}

/*
 * Why an OpenSSL call did not complete: the event to wait for, or 0 after
 * failing. During the handshake every failure is a TLS failure; later, a
 * closed or reset socket is a lost connection like in plain text.
 */
static short ssl_blocked(struct smtp_client *c, int ret, GError **err)
{
    int     e = SSL_get_error(c->ssl, ret);
    long    verify = SSL_get_verify_result(c->ssl);
    char    why[256];

    if (e == SSL_ERROR_WANT_READ)
        return POLLIN;
    if (e == SSL_ERROR_WANT_WRITE)
        return POLLOUT;
    if (c->phase == SMTP_PHASE_TLS && c->tls == SMTP_TLS_REQUIRE && verify != X509_V_OK)
        g_snprintf(why, sizeof(why), "certificate verification failed: %s",
               X509_verify_cert_error_string(verify));
    else if (ERR_peek_last_error() != 0)
        ERR_error_string_n(ERR_peek_last_error(), why, sizeof(why));
    else
        g_strlcpy(why, errno ? g_strerror(errno) : "connection closed", sizeof(why));
    if (c->phase == SMTP_PHASE_TLS || e == SSL_ERROR_SSL)
        conn_fail(c, err, SMTP_ERROR_TLS, "TLS with %s failed while %s: %s",
              c->relay, phases[c->phase].doing, why);
    else
        conn_fail(c, err, SMTP_ERROR_LOST, "lost connection with %s while %s: %s",
              c->relay, phases[c->phase].doing, why);
    return 0;
}

static short sock_blocked(struct smtp_client *c, ssize_t ret, short want, GError **err)
{
    if (ret < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return want;
    conn_fail(c, err, SMTP_ERROR_LOST, "lost connection with %s while %s%s%s",
          c->relay, phases[c->phase].doing, ret < 0 ? ": " : "",
          ret < 0 ? g_strerror(errno) : "");
    return 0;
}

/* One read or write of at least one byte, waiting as needed. */
static gboolean io_once(struct smtp_client *c, gboolean writing, char *buf, size_t len,
            size_t *done, gint64 deadline, GError **err)
{
    short   events;

    for (;;) {
        if (c->ssl) {
            int     ok;

            ERR_clear_error();
            errno = 0;
            ok = writing ? SSL_write_ex(c->ssl, buf, len, done)
                : SSL_read_ex(c->ssl, buf, len, done);
            if (ok == 1)
                return TRUE;
            events = ssl_blocked(c, ok, err);
        } else {
            ssize_t n = writing ? send(c->fd, buf, len, MSG_NOSIGNAL) : recv(c->fd, buf, len, 0);

            if (n > 0) {
                *done = n;
                return TRUE;
            }
            events = sock_blocked(c, n, writing ? POLLOUT : POLLIN, err);
        }
        if (events == 0 || !io_wait(c, events, deadline, err))
            return FALSE;
    }
}

static gboolean out_flush(struct smtp_client *c, GError **err)
{
    gint64  deadline = deadline_of(c);
    size_t  off = 0, done;

    while (off < c->out->len) {
        if (!io_once(c, TRUE, c->out->str + off, c->out->len - off, &done, deadline, err))
            return FALSE;
        off += done;
    }
    g_string_truncate(c->out, 0);
    return TRUE;
}

static gboolean reply_read(struct smtp_client *c, GError **err)
{
    gint64  deadline = deadline_of(c);
    GError *perr = NULL;
    char    buf[4096];
    size_t  got;

    smtp_reply_clear(&c->reply);
    for (;;) {
        switch (smtp_reply_next(c->parser, &c->reply, &perr)) {
        case SMTP_PARSE_REPLY:
            return TRUE;
        case SMTP_PARSE_ERROR:
            conn_fail(c, err, SMTP_ERROR_PROTOCOL, "%s from %s while %s",
                  perr->message, c->relay, phases[c->phase].doing);
            g_error_free(perr);
            return FALSE;
        case SMTP_PARSE_MORE:
            break;
        }
        if (!io_once(c, FALSE, buf, sizeof(buf), &got, deadline, err))
            return FALSE;
        smtp_reply_feed(c->parser, buf, got);
    }
}

/* Send one command line and read its reply. */
static gboolean G_GNUC_PRINTF(3, 4) cmd(struct smtp_client *c, GError **err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_string_append_vprintf(c->out, fmt, ap);
    va_end(ap);
    g_string_append(c->out, "\r\n");
    return out_flush(c, err) && reply_read(c, err);
}

/* ---- session: connect, TLS, EHLO, AUTH ----------------------------------- */

static gboolean conn_try(struct smtp_client *c, const struct addrinfo *ai, GError **err)
{
    char    ip[NI_MAXHOST] = "?";
    int     soerr = 0, one = 1;
    socklen_t len = sizeof(soerr);

    getnameinfo(ai->ai_addr, ai->ai_addrlen, ip, sizeof(ip), NULL, 0, NI_NUMERICHOST);
    g_free(c->relay);
    c->relay = g_strdup_printf("%s[%s]:%d", c->host, ip, c->port);
    if ((c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0)
        return conn_fail(c, err, SMTP_ERROR_CONNECT, "socket: %s", g_strerror(errno));
    if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS)
        soerr = errno;
    else if (!io_wait(c, POLLOUT, deadline_of(c), err))
        return FALSE;
    else if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (soerr != 0)
        return conn_fail(c, err, SMTP_ERROR_CONNECT, "connect to %s: %s", c->relay,
                 g_strerror(soerr));

    /*
     * Commands are batched in out before each write already; Nagle would
     * only hold back the last segment of the body until the relay's
     * delayed ACK, adding tens of milliseconds to every message.
     */
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return TRUE;
}

/* Try each address of the relay in turn, as Postfix does. */
static gboolean conn_open(struct smtp_client *c, GError **err)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
    struct addrinfo *res, *ai;
    GError *last = NULL;
    char    port[16];
    int     rc;

    c->phase = SMTP_PHASE_CONNECT;
    g_snprintf(port, sizeof(port), "%d", c->port);
    if ((rc = getaddrinfo(c->host, port, &hints, &res)) != 0) {
        g_set_error(err, SMTP_ERROR, SMTP_ERROR_CONNECT, "%s: %s", c->host, gai_strerror(rc));
        return FALSE;
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        g_clear_error(&last);
        if (conn_try(c, ai, &last))
            break;
    }
    freeaddrinfo(res);
    if (last != NULL) {
        g_propagate_error(err, last);
        return FALSE;
    }
    c->parser = smtp_reply_parser_new();
    return TRUE;
}

/*
 * tls = require verifies the chain against ca_file or the system store and
 * the relay's name (SSL_set1_host takes IP literals too). The weaker levels
 * encrypt without verifying, as Postfix "may" does: an attacker who can
 * fake a certificate can as well strip STARTTLS. SNI is not allowed for
 * IP literals (RFC 6066 §3).
 */
static gboolean tls_start(struct smtp_client *c, GError **err)
{
    gint64  deadline;
    short   events;
    int     ret;

    c->phase = SMTP_PHASE_TLS;
    deadline = deadline_of(c);
    c->ssl = SSL_new(c->ctx);
    if (c->ssl == NULL || !SSL_set_fd(c->ssl, c->fd))
        return conn_fail(c, err, SMTP_ERROR_TLS, "cannot set up TLS for %s", c->relay);
    if (c->tls == SMTP_TLS_REQUIRE) {
        SSL_set_verify(c->ssl, SSL_VERIFY_PEER, NULL);
        SSL_set1_host(c->ssl, c->host);
    }
    if (!g_hostname_is_ip_address(c->host))
        SSL_set_tlsext_host_name(c->ssl, c->host);
    for (;;) {
        ERR_clear_error();
        errno = 0;
        if ((ret = SSL_connect(c->ssl)) == 1)
            return TRUE;
        if ((events = ssl_blocked(c, ret, err)) == 0 || !io_wait(c, events, deadline, err))
            return FALSE;
    }
}

static gboolean ehlo_run(struct smtp_client *c, GError **err)
{
    c->phase = SMTP_PHASE_EHLO;
    if (!cmd(c, err, "EHLO %s", c->helo_name))
        return FALSE;
    if (c->reply.code != 250)
        return reply_fail(c, err, SMTP_ERROR_SESSION);
    smtp_ehlo_parse(&c->reply, &c->ehlo);
    return TRUE;
}

/*
 * smtp:// upgrades with STARTTLS unless tls = none. Under require, no
 * STARTTLS or a refusal defers the mail: nothing is ever sent in clear.
 * Bytes that arrived with the 220 were sent before the handshake and could
 * be injected by anyone on the path (CVE-2011-0411): refuse them.
 */
static gboolean starttls_run(struct smtp_client *c, GError **err)
{
    if (c->kind != RELAY_SMTP || c->tls == SMTP_TLS_NONE)
        return TRUE;
    c->phase = SMTP_PHASE_TLS;
    if (!c->ehlo.starttls)
        return c->tls == SMTP_TLS_OPPORTUNISTIC
            || conn_fail(c, err, SMTP_ERROR_TLS, "TLS is required, but was not offered by host %s",
                 c->relay);
    if (!cmd(c, err, "STARTTLS"))
        return FALSE;
    if (c->reply.code != 220)
        return c->tls == SMTP_TLS_OPPORTUNISTIC || reply_fail(c, err, SMTP_ERROR_TLS);
    if (smtp_reply_pending(c->parser) != 0)
        return conn_fail(c, err, SMTP_ERROR_PROTOCOL, "host %s sent data after its STARTTLS reply",
                 c->relay);
    return tls_start(c, err) && ehlo_run(c, err);
}

/* Send prefix + base64(secret) and wipe every copy of the encoded secret. */
static gboolean auth_send(struct smtp_client *c, const char *prefix, const char *secret,
              size_t len, GError **err)
{
    char   *b64 = g_base64_encode((const guchar *) secret, len);
    gboolean ok;

    g_string_append_printf(c->out, "%s%s\r\n", prefix, b64);
    OPENSSL_cleanse(b64, strlen(b64));
    g_free(b64);
    ok = out_flush(c, err);
    OPENSSL_cleanse(c->out->str, c->out->allocated_len);
    g_string_truncate(c->out, 0);
    return ok && reply_read(c, err);
}

/*
 * AUTH PLAIN sends "\0user\0password" at once; AUTH LOGIN answers two 334
 * prompts. Credentials never cross an unencrypted connection, and a
 * refusal defers: it is our configuration, not the message, that is wrong.
 */
static gboolean auth_run(struct smtp_client *c, GError **err)
{
    gboolean plain = c->ehlo.auth_plain && c->auth != SMTP_AUTH_LOGIN;
    gboolean login = c->ehlo.auth_login && c->auth != SMTP_AUTH_PLAIN;
    size_t  ulen = strlen(c->user), plen = strlen(c->password);
    gboolean ok;

    c->phase = SMTP_PHASE_AUTH;
    if (c->ssl == NULL)
        return conn_fail(c, err, SMTP_ERROR_CONFIG, "refusing to send credentials to %s without TLS",
                 c->relay);
    if (plain) {
        char   *creds = g_malloc(ulen + plen + 2);

        creds[0] = 0;
        memcpy(creds + 1, c->user, ulen + 1);
        memcpy(creds + ulen + 2, c->password, plen);
        ok = auth_send(c, "AUTH PLAIN ", creds, ulen + plen + 2, err);
        OPENSSL_cleanse(creds, ulen + plen + 2);
        g_free(creds);
    } else if (login) {
        ok = cmd(c, err, "AUTH LOGIN");
        if (ok && c->reply.code == 334)
            ok = auth_send(c, "", c->user, ulen, err);
        if (ok && c->reply.code == 334)
            ok = auth_send(c, "", c->password, plen, err);
    } else {
        return conn_fail(c, err, SMTP_ERROR_CONFIG, "host %s offers no usable AUTH mechanism",
                 c->relay);
    }
    if (ok && c->reply.code != 235)
        return reply_fail(c, err, SMTP_ERROR_SESSION);
    return ok;
}

static gboolean session_open(struct smtp_client *c, GError **err)
{
    if (!conn_open(c, err) || (c->kind == RELAY_SMTPS && !tls_start(c, err)))
        return FALSE;
    c->phase = SMTP_PHASE_GREETING;
    if (!reply_read(c, err))
        return FALSE;
    if (c->reply.code != 220)
        return reply_fail(c, err, SMTP_ERROR_SESSION);
    return ehlo_run(c, err) && starttls_run(c, err) && (c->user == NULL || auth_run(c, err));
}

/*
 * A reused connection is probed with RSET; if the relay closed it meanwhile
 * (idle timeout), open a new one. With PIPELINING the probe goes in the
 * same write as the transaction's MAIL, RCPTs and DATA (RFC 2920 allows
 * RSET anywhere in a group), saving a round trip per transaction: its
 * reply, read first, decides as before (txn_rset_ok). It may have gone
 * already, with the last transaction's end of data (txn_ahead).
 */
static gboolean session_ready(struct smtp_client *c, GError **err)
{
    if (c->fd >= 0 && c->ehlo.pipelining) {
        if (!c->rset_queued)
            g_string_append(c->out, "RSET\r\n");
        c->rset_queued = TRUE;
        return TRUE;
    }
    if (c->fd >= 0) {
        c->phase = SMTP_PHASE_RSET;
        if (cmd(c, NULL, "RSET") && c->reply.code / 100 == 2)
            return TRUE;
        conn_drop(c);
    }
    return session_open(c, err);
}

/*
 * The reply to a pipelined RSET probe. FALSE when the connection is no
 * good: the caller drops it, and the commands sent behind the probe die
 * with it (a DATA the relay may have accepted never gets its final dot,
 * so nothing is delivered), then runs the transaction on a new one.
 */
static gboolean txn_rset_ok(struct smtp_client *c)
{
    gboolean ok;

    c->rset_queued = FALSE;
    c->phase = SMTP_PHASE_RSET;
    ok = reply_read(c, NULL) && c->reply.code / 100 == 2;
    c->phase = SMTP_PHASE_MAIL;
    return ok;
}

/* ---- transaction ---------------------------------------------------------- */

static gboolean result_pending(const struct smtp_rcpt_result *r)
{
    return r->code == 0 && r->error == SMTP_ERROR_NONE;
}

/* Give every recipient still pending this outcome. */
static void results_set(const struct smtp_client *c, struct smtp_rcpt_result *results, size_t n,
            int code, const char *status, const char *text, enum smtp_error error)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        struct smtp_rcpt_result *r = &results[i];

        if (!result_pending(r))
            continue;
        r->code = code;
        g_strlcpy(r->status, status, sizeof(r->status));
        r->text = g_strdup(text);
        r->error = error;
        r->phase = c->phase;
        r->relay = g_strdup(c->phase == SMTP_PHASE_CONNECT || c->relay == NULL ? "none" : c->relay);
    }
}

/* Replies without an enhanced status get the one their class implies. */
static void results_reply(const struct smtp_client *c, struct smtp_rcpt_result *results,
              size_t n, enum smtp_error error)
{
    const struct smtp_reply *r = &c->reply;
    char    status[16];

    if (*r->status)
        g_strlcpy(status, r->status, sizeof(status));
    else
        g_snprintf(status, sizeof(status), "%d.0.0", r->code / 100);
    results_set(c, results, n, r->code, status, r->text, error);
}

/* A refused session keeps the relay's reply: 421 4.7.0 means throttled. */
static void results_fail(const struct smtp_client *c, struct smtp_rcpt_result *results,
             size_t n, const GError *e)
{
    static const char *const status[] = {
        [SMTP_ERROR_CONFIG] = "4.3.5", [SMTP_ERROR_CONNECT] = "4.4.1",
        [SMTP_ERROR_TIMEOUT] = "4.4.2", [SMTP_ERROR_LOST] = "4.4.2",
        [SMTP_ERROR_TLS] = "4.7.5", [SMTP_ERROR_PROTOCOL] = "4.5.0",
    };

    if (e->code == SMTP_ERROR_SESSION)
        results_reply(c, results, n, SMTP_ERROR_SESSION);
    else
        results_set(c, results, n, 0, status[e->code], e->message, e->code);
}

/* Addresses go inside <> on a command line: CR, LF or brackets would forge commands. */
static gboolean address_ok(const char *addr)
{
    return strpbrk(addr, "\r\n<>") == NULL;
}

/* Command i of the transaction: 0 MAIL, 1..n RCPT, n+1 DATA. */
static void txn_command(struct smtp_client *c, const char *from, const char *const *rcpts,
            size_t n, size_t i, gsize size)
{
    if (i == 0) {
        gboolean utf8 = c->ehlo.smtputf8 && !g_str_is_ascii(from);
        size_t  j;

        for (j = 0; j < n; j++)
            utf8 |= c->ehlo.smtputf8 && !g_str_is_ascii(rcpts[j]);
        g_string_append_printf(c->out, "MAIL FROM:<%s>", from);
        if (c->ehlo.size)
            g_string_append_printf(c->out, " SIZE=%" G_GSIZE_FORMAT, size);
        if (utf8)
            g_string_append(c->out, " SMTPUTF8");
    } else if (i <= n) {
        if (!address_ok(rcpts[i - 1]))
            return;
        g_string_append_printf(c->out, "RCPT TO:<%s>", rcpts[i - 1]);
    } else {
        g_string_append(c->out, "DATA");
    }
    g_string_append(c->out, "\r\n");
}

/*
 * RFC 2920 lets a group start with message content: with PIPELINING the
 * announced next transaction's RSET probe, MAIL, RCPTs and DATA go in the
 * write that ends this one, and are answered after this end of data. A
 * transaction then costs one round trip, not two: one wake-up of each
 * side fewer. If this end of data ends the session (421, lost), they die
 * with the connection, as behind a failed RSET probe; a client whose
 * commands went ahead for a transaction that is not run is not used again
 * (smtp_client_connected()).
 */
static void txn_ahead(struct smtp_client *c)
{
    struct smtp_envelope *e = &c->ahead;
    size_t  j;

    if (e->from == NULL || !c->ehlo.pipelining)
        return;
    g_string_append(c->out, "RSET\r\n");
    for (j = 0; j < e->n + 2; j++)
        txn_command(c, e->from, (const char *const *) e->rcpts, e->n, j, e->size);
    c->rset_queued = TRUE;
    c->sent_ahead = *e;
    memset(e, 0, sizeof(*e));
}

/*
 * Copy the parts into out, doubling a "." that starts a line (RFC 5321
 * 4.5.2), in chunks of at most BODY_CHUNK so that even a message that is
 * one long line is never copied whole. The body ends in CR LF "." CR LF.
 */
static gboolean body_send(struct smtp_client *c, const char *const *parts, const size_t *lens,
              size_t n_parts, GError **err)
{
    gboolean bol = TRUE;
    size_t  k;

    c->phase = SMTP_PHASE_BODY;
    for (k = 0; k < n_parts; k++) {
        const char *s = parts[k], *end = parts[k] + lens[k];

        while (s < end) {
            const char *nl = memchr(s, '\n', end - s);
            const char *stop = nl ? nl + 1 : end;

            if (stop - s > BODY_CHUNK)
                stop = s + BODY_CHUNK;
            if (bol && *s == '.')
                g_string_append_c(c->out, '.');
            g_string_append_len(c->out, s, stop - s);
            bol = stop[-1] == '\n';
            s = stop;
            if (c->out->len >= BODY_CHUNK && !out_flush(c, err))
                return FALSE;
        }
    }
    g_string_append(c->out, bol ? ".\r\n" : "\r\n.\r\n");
    txn_ahead(c);
    return out_flush(c, err);
}

/* txn_run: the reused connection failed its RSET probe; nothing was sent. */
#define TXN_STALE (-2)

/*
 * MAIL, RCPTs and DATA go in one write when the relay offers PIPELINING
 * (RFC 2920), else one at a time, stopping early when MAIL fails or no
 * recipient is left. Replies are read in order either way: the MAIL reply
 * decides for everybody, each RCPT reply for its recipient, then the DATA
 * and end-of-data replies for those accepted. A 421 ends the session.
 */
static int txn_run(struct smtp_client *c, const char *from, const char *const *rcpts, size_t n,
           const char *const *parts, const size_t *lens, size_t n_parts,
           struct smtp_rcpt_result *results, GError **err)
{
    gboolean pipe = c->ehlo.pipelining, mail_ok = FALSE;
    size_t  accepted = 0, i, j;
    gsize   size = data_size(lens, n_parts);

    for (i = 0; i < n + 2; i++) {
        c->phase = i == 0 ? SMTP_PHASE_MAIL : i <= n ? SMTP_PHASE_RCPT : SMTP_PHASE_DATA;
        if (i >= 1 && i <= n && !address_ok(rcpts[i - 1])) {
            results_set(c, results + i - 1, 1, 501, "5.1.3", "bad recipient address syntax",
                    SMTP_ERROR_NONE);
            continue;
        }
        if (!pipe && i > 0 && (!mail_ok || (i == n + 1 && accepted == 0)))
            break;
        if (!pipe || i == 0) {
            gboolean probe = c->rset_queued, sent = c->sent_ahead.from != NULL;

            for (j = i; !sent && j < (pipe ? n + 2 : i + 1); j++)
                txn_command(c, from, rcpts, n, j, size);
            envelope_clear(&c->sent_ahead);
            if (probe && !(out_flush(c, NULL) && txn_rset_ok(c))) {
                conn_drop(c);
                return TXN_STALE;
            }
            if (!probe && !out_flush(c, err))
                return -1;
        }
        if (!reply_read(c, err))
            return -1;
        if (c->reply.code == 421) {
            results_reply(c, results, n, SMTP_ERROR_NONE);
            conn_drop(c);
            return 0;
        }
        if (i == 0) {
            mail_ok = c->reply.code / 100 == 2;
            if (!mail_ok)
                results_reply(c, results, n, SMTP_ERROR_NONE);
        } else if (i <= n && mail_ok) {
            if (c->reply.code / 100 == 2)
                accepted++;
            else
                results_reply(c, results + i - 1, 1, SMTP_ERROR_NONE);
        }
    }
    if (i < n + 2 || !mail_ok)
        return 0;
    if (c->reply.code != 354) {
        results_reply(c, results, n, SMTP_ERROR_NONE);
        return 0;
    }

    /*
     * A relay that accepts DATA with no valid recipient breaks RFC 2920;
     * give it an empty message to end the transaction cleanly.
     */
    if (!body_send(c, parts, lens, accepted ? n_parts : 0, err))
        return -1;
    c->phase = SMTP_PHASE_DOT;
    if (!reply_read(c, err))
        return -1;
    results_reply(c, results, n, SMTP_ERROR_NONE);
    if (c->reply.code == 421)
        conn_drop(c);
    return c->reply.code / 100 == 2 ? (int) accepted : 0;
}

int     smtp_client_send(struct smtp_client *c, const char *mail_from,
             const char *const *rcpts, size_t n,
             const char *const *data_parts, const size_t *data_lens,
             size_t n_parts, struct smtp_rcpt_result *results, GError **err)
{
    GError *e = NULL;
    int     ret;

    memset(results, 0, n * sizeof(*results));
    c->phase = SMTP_PHASE_MAIL;
    /* Commands sent ahead for another transaction: the session is of no use. */
    if (c->sent_ahead.from != NULL && !envelope_is(&c->sent_ahead, mail_from, rcpts, n,
                               data_size(data_lens, n_parts)))
        conn_drop(c);
    if (!address_ok(mail_from)) {
        results_set(c, results, n, 501, "5.1.7", "bad sender address syntax", SMTP_ERROR_NONE);
        envelope_clear(&c->ahead);
        return 0;
    }
    if (session_ready(c, &e)) {
        ret = txn_run(c, mail_from, rcpts, n, data_parts, data_lens, n_parts, results, &e);
        if (ret == TXN_STALE)   /* the relay closed it while idle: once more, anew */
            ret = session_open(c, &e) ? txn_run(c, mail_from, rcpts, n, data_parts,
                               data_lens, n_parts, results, &e) : -1;
    } else {
        ret = -1;
    }
    envelope_clear(&c->ahead);
    if (ret < 0) {
        results_fail(c, results, n, e);
        g_propagate_error(err, e);
        return -1;
    }
    return ret;
}

void    smtp_client_announce(struct smtp_client *c, const char *mail_from,
                 const char *const *rcpts, size_t n, const size_t *data_lens,
                 size_t n_parts)
{
    size_t  i;

    envelope_clear(&c->ahead);
    if (!address_ok(mail_from))
        return;
    c->ahead.from = g_strdup(mail_from);
    c->ahead.rcpts = g_new(char *, n + 1);
    for (i = 0; i < n; i++)
        c->ahead.rcpts[i] = g_strdup(rcpts[i]);
    c->ahead.rcpts[n] = NULL;
    c->ahead.n = n;
    c->ahead.size = data_size(data_lens, n_parts);
}

/* ---- life cycle ---------------------------------------------------------- */

SSL_CTX *smtp_tls_context_new(const struct smtp_client_config *cfg, GError **err)
{
    SSL_CTX *ctx;
    int     ok;
    char    why[256];

    /*
     * A relay that closes without a TLS close_notify has lost the
     * connection, as in plain text; SMTP's own framing already protects
     * against truncation, which is what OpenSSL 3 would report instead.
     */
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx != NULL)
        SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    ok = ctx != NULL && SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)
        && (cfg->ca_file && *cfg->ca_file ? SSL_CTX_load_verify_file(ctx, cfg->ca_file)
        : SSL_CTX_set_default_verify_paths(ctx));
    if (!ok) {
        ERR_error_string_n(ERR_get_error(), why, sizeof(why));
        g_set_error(err, SMTP_ERROR, SMTP_ERROR_CONFIG, "TLS setup%s%s: %s",
                cfg->ca_file && *cfg->ca_file ? ", ca_file " : "",
                cfg->ca_file ? cfg->ca_file : "", why);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

struct smtp_client *smtp_client_new(const struct smtp_client_config *cfg, GError **err)
{
    struct smtp_client *c;
    SSL_CTX *ctx = cfg->ssl_ctx;
    size_t  i;

    if (cfg->url->kind == RELAY_MAILDIR) {
        g_set_error(err, SMTP_ERROR, SMTP_ERROR_CONFIG, "a Maildir is not an SMTP relay");
        return NULL;
    }
    if (ctx != NULL)
        SSL_CTX_up_ref(ctx);
    else if ((ctx = smtp_tls_context_new(cfg, err)) == NULL)
        return NULL;
    c = g_new0(struct smtp_client, 1);
    c->kind = cfg->url->kind;
    c->host = g_strdup(cfg->url->host);
    c->port = cfg->url->port;
    c->tls = cfg->tls;
    c->auth = cfg->auth;
    if (cfg->user && *cfg->user) {
        c->user = g_strdup(cfg->user);
        c->password = g_strdup(cfg->password ? cfg->password : "");
    }
    c->helo_name = g_strdup(cfg->helo_name ? cfg->helo_name : g_get_host_name());
    for (i = 0; i < SMTP_PHASE_COUNT; i++) {
        c->timeouts[i] = cfg->timeouts[i] > 0 ? cfg->timeouts[i] : phases[i].timeout * 1000;
        if (cfg->timeout_max > 0)
            c->timeouts[i] = MIN(c->timeouts[i], cfg->timeout_max);
    }
    c->ctx = ctx;
    c->fd = -1;
    c->out = g_string_sized_new(BODY_CHUNK + 1024);
    return c;
}

gboolean smtp_client_probe(struct smtp_client *c, GError **err)
{
    /* A held connection may be stale: the probe is about a new session. */
    conn_drop(c);
    return session_open(c, err);
}

gboolean smtp_client_connected(const struct smtp_client *c)
{
    return c->fd >= 0 && c->sent_ahead.from == NULL;
}

void    smtp_client_free(struct smtp_client *c)
{
    if (c == NULL)
        return;
    /* Behind commands sent ahead the relay may be reading a message: no QUIT. */
    if (smtp_client_connected(c)) {
        c->phase = SMTP_PHASE_QUIT;
        if (cmd(c, NULL, "QUIT") && c->ssl)
            SSL_shutdown(c->ssl);
    }
    conn_drop(c);
    envelope_clear(&c->ahead);
    smtp_reply_clear(&c->reply);
    SSL_CTX_free(c->ctx);
    g_free(c->host);
    g_free(c->user);
    if (c->password) {
        OPENSSL_cleanse(c->password, strlen(c->password));
        g_free(c->password);
    }
    g_free(c->helo_name);
    g_free(c->relay);
    g_string_free(c->out, TRUE);
    g_free(c);
}
