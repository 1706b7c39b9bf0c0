/*
 * ingest_session.c - one LMTP/SMTP conversation: commands in, replies out.
 *
 * Commands are handled in order as they arrive, so a pipelining client
 * gets its replies in order too; replies are written when the input at
 * hand has been consumed (or when the session must wait for a commit).
 */
#include "ingest/ingest.h"
#include "common/bounce_code.h"
#include "common/log.h"
#include "common/unsub_code.h"

#include <errno.h>
#include <glib-unix.h>
#include <string.h>
#include <unistd.h>

#define SESSION_READ_SIZE 65536
/*
 * A client that pipelines commands but never reads the replies, or sends
 * on while its message waits for the commit, must not make the daemon
 * buffer without bound: past these sizes its commands wait, then its
 * socket is no longer read, until it takes its replies.
 */
#define SESSION_OUT_MAX (64 * 1024)     /* replies not yet taken by the client */
#define SESSION_IN_MAX (256 * 1024)     /* input read ahead of the protocol */
#define SESSION_ERROR_LIMIT 20      /* then 421, as Postfix's hard error limit */

/*
 * Sessions open per client address, for [ingest] max_connections_per_client.
 * Unix-socket clients are not counted: they all look alike ("unix"), and
 * the socket's permissions say who may connect.
 */
static void ingest_session_count(struct ingest *ig, const char *client, int delta)
{
    guint n;

    if (g_str_equal(client, "unix"))
        return;
    if (!ig->per_client)
        ig->per_client = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    n = GPOINTER_TO_UINT(g_hash_table_lookup(ig->per_client, client)) + (guint)delta;
    if (n)
        g_hash_table_replace(ig->per_client, g_strdup(client), GUINT_TO_POINTER(n));
    else
        g_hash_table_remove(ig->per_client, client);
}

/*
 * Is there room for one more session from client?  Over
 * [ingest] max_connections_per_client it hears 421 4.7.0 and is closed,
 * as Postfix's smtpd_client_connection_count_limit does: else one client
 * holding many slow sessions takes every slot from the others.
 */
gboolean ingest_session_admit(struct ingest *ig, int fd, const char *client)
{
    uint64_t limit = ig->cfg->ingest.max_connections_per_client;
    guint n;

    if (!limit || g_str_equal(client, "unix") || !ig->per_client)
        return TRUE;
    n = GPOINTER_TO_UINT(g_hash_table_lookup(ig->per_client, client));
    if (n < limit)
        return TRUE;
    g_autofree char *reply = g_strdup_printf("421 4.7.0 %s Error: too many connections from %s\r\n",
                                             ig->cfg->ingest.hostname, client);
    ssize_t ignored = write(fd, reply, strlen(reply));
    (void)ignored;
    msg_warn("connect from %s: refused: too many connections from this client (%u)", client, n);
    return FALSE;
}

void ingest_session_deadline_reset(struct session *s)
{
    s->deadline = g_get_monotonic_time() + (int64_t)s->ig->cfg->ingest.timeout * G_USEC_PER_SEC;
}

/*
 * Bytes of message content buy time, as Postfix's smtpd_min_data_rate:
 * n bytes move the DATA deadline n / min_data_rate seconds on, never
 * further than `timeout` from now.  A client that sends its message
 * slower than the rate runs out of time however often it sends a byte.
 */
static void ingest_session_data_credit(struct session *s, size_t n)
{
    uint64_t rate = s->ig->cfg->ingest.min_data_rate;
    int64_t cap = g_get_monotonic_time() + (int64_t)s->ig->cfg->ingest.timeout * G_USEC_PER_SEC;

    if (rate)
        s->deadline = MIN(cap, s->deadline + (int64_t)((uint64_t)n * G_USEC_PER_SEC / rate));
}

static void ingest_session_free(struct session *s)
{
    struct ingest *ig = s->ig;

    if (s->read_source)
        ingest_fd_remove(s->read_source);
    if (s->write_source)
        ingest_fd_remove(s->write_source);
    close(s->fd);
    ig->sessions = g_list_remove(ig->sessions, s);
    ig->n_sessions--;
    ingest_session_count(ig, s->client, -1);
    g_ptr_array_remove(ig->batch, s);
    ingest_commit_forget(s);
    lmtp_data_clear(&s->data);
    g_byte_array_unref(s->in);
    g_string_free(s->out, TRUE);
    g_ptr_array_unref(s->rcpts);
    g_free(s->client);
    g_free(s->helo);
    g_free(s->proto);
    g_free(s->sender);
    g_free(s);
}

static void ingest_session_close(struct session *s, const char *why)
{
    msg_info("disconnect from %s%s%s", s->client, why ? ": " : "", why ? why : "");
    ingest_session_free(s);
}

void ingest_session_reply(struct session *s, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_string_append_vprintf(s->out, fmt, ap);
    va_end(ap);
    g_string_append(s->out, "\r\n");
}

static gboolean ingest_session_writable(int fd, GIOCondition cond, gpointer data)
{
    struct session *s = data;

    s->write_source = 0;
    /* Commands held back by unread replies go on once those are out. */
    if (ingest_session_flush(s) && !s->out->len && s->in->len && s->state == SESSION_COMMAND)
        ingest_session_input(s);
    return G_SOURCE_REMOVE;
}

/*
 * Write what can be written now; wait for POLLOUT for the rest.  A
 * session in SESSION_CLOSING ends once its last reply is out.  FALSE when
 * the session is gone.
 */
gboolean ingest_session_flush(struct session *s)
{
    while (s->out->len) {
        ssize_t n = write(s->fd, s->out->str, s->out->len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            if (!s->write_source)
                s->write_source = ingest_fd_add(s->fd, G_IO_OUT, ingest_session_writable, s);
            return TRUE;
        }
        if (n < 0) {
            if (s->state == SESSION_COMMIT)
                return TRUE;    /* the commit still happens; the client is gone */
            ingest_session_close(s, g_strerror(errno));
            return FALSE;
        }
        g_string_erase(s->out, 0, n);
    }
    if (s->state == SESSION_CLOSING) {
        ingest_session_close(s, NULL);
        return FALSE;
    }
    return TRUE;
}

static gboolean ingest_session_readable(int fd, GIOCondition cond, gpointer data);

/*
 * Read the socket again once the input held back has been consumed.  The
 * pause itself happens in ingest_session_readable, when data arrives that there
 * is no room for (so an idle socket costs nothing to watch).
 */
static void ingest_session_reading(struct session *s)
{
    if (s->read_paused && s->in->len < SESSION_IN_MAX && s->state != SESSION_CLOSING) {
        s->read_paused = FALSE;
        s->read_source = ingest_fd_add(s->fd, G_IO_IN, ingest_session_readable, s);
    }
}

void ingest_session_end_transaction(struct session *s)
{
    s->have_mail = FALSE;
    s->smtputf8 = FALSE;
    g_clear_pointer(&s->sender, g_free);
    g_ptr_array_set_size(s->rcpts, 0);
    lmtp_data_clear(&s->data);
}

static void ingest_session_greet(struct session *s, const struct lmtp_cmd *cmd)
{
    const struct postern_config *cfg = s->ig->cfg;

    ingest_session_end_transaction(s);
    g_free(s->helo);
    s->helo = g_strdup(cmd->arg);
    s->lmtp = cmd->verb == LMTP_LHLO;
    g_free(s->proto);
    s->proto = g_strdup(cmd->verb == LMTP_LHLO   ? "LMTP"
                        : cmd->verb == LMTP_EHLO ? "ESMTP"
                                                 : "SMTP");
    if (cmd->verb == LMTP_HELO) {
        ingest_session_reply(s, "250 %s", cfg->ingest.hostname);
        return;
    }
    ingest_session_reply(s, "250-%s", cfg->ingest.hostname);
    ingest_session_reply(s, "250-PIPELINING");
    ingest_session_reply(s, "250-SIZE %" G_GUINT64_FORMAT, cfg->ingest.max_message_size);
    ingest_session_reply(s, "250-ENHANCEDSTATUSCODES");
    ingest_session_reply(s, "250-8BITMIME");
    ingest_session_reply(s, "250 SMTPUTF8");
}

static void ingest_session_mail(struct session *s, const struct lmtp_cmd *cmd)
{
    if (!s->helo) {
        ingest_session_reply(s, "503 5.5.1 Error: send %s first", "LHLO");
        return;
    }
    if (s->have_mail) {
        ingest_session_reply(s, "503 5.5.1 Error: nested MAIL command");
        return;
    }
    if (cmd->size > s->ig->cfg->ingest.max_message_size) {
        ingest_session_reply(s, "552 5.3.4 Message size exceeds fixed limit");
        return;
    }
    s->have_mail = TRUE;
    s->smtputf8 = cmd->smtputf8;
    s->sender = g_strdup(cmd->addr);
    ingest_session_reply(s, "250 2.1.0 Ok");
}

/*
 * With [unsubscribe] one_click, why addr (the unsubscribe address's
 * +CODE) cannot carry one of our codes, or NULL.  Its shape and list need
 * no key; whether its MAC verifies depends on the sender and on the
 * From: header, so the transform decides that (docs/design.md §9).
 */
static const char *ingest_session_unsub_refusal(const struct postern_config *cfg,
                                                const char *addr)
{
    const char *at = strrchr(cfg->unsubscribe.address, '@');
    g_autofree char *local = NULL;
    const char *code, *list;
    size_t len;

    if (!cfg->unsubscribe.one_click || !at)
        return NULL;
    local = g_strndup(cfg->unsubscribe.address, (gsize)(at - cfg->unsubscribe.address));
    if (!bounce_address_split(addr, local, at + 1, &code, &len))
        return NULL;
    return unsub_mailto_parse(code, len, cfg->lists, &list);
}

static void ingest_session_rcpt(struct session *s, const struct lmtp_cmd *cmd)
{
    g_autofree char *canon = NULL;
    const char *why;

    if (!s->have_mail) {
        ingest_session_reply(s, "503 5.5.1 Error: need MAIL command");
        return;
    }
    /* RFC 6531: a UTF-8 address only in a transaction that declared SMTPUTF8. */
    if (!s->smtputf8 && !lmtp_addr_is_ascii(cmd->addr)) {
        ingest_session_reply(s, "553 5.6.7 Must declare SMTPUTF8 to send unicode address");
        s->errors++;
        return;
    }
    canon = lmtp_addr_canonical(cmd->addr);
    if (!g_hash_table_contains(s->ig->recipients, canon)) {
        msg_info("reject: RCPT from %s: <%s>: unknown recipient; from=<%s>", s->client,
                 cmd->addr, s->sender);
        ingest_session_reply(s, "550 5.1.1 <%s>: Recipient address rejected: User unknown",
                             cmd->addr);
        s->errors++;
        return;
    }
    /* Refused now, not dropped later: the sender of a mistyped code hears why. */
    if ((why = ingest_session_unsub_refusal(s->ig->cfg, cmd->addr))) {
        msg_info("reject: RCPT from %s: <%s>: bad unsubscribe code: %s; from=<%s>", s->client,
                 cmd->addr, why, s->sender);
        ingest_session_reply(s, "550 5.1.1 <%s>: Recipient address rejected: bad unsubscribe "
                             "code: %s", cmd->addr, why);
        s->errors++;
        return;
    }
    if (s->rcpts->len >= s->ig->cfg->ingest.max_recipients) {
        ingest_session_reply(s, "452 4.5.3 Error: too many recipients");
        return;
    }
    g_ptr_array_add(s->rcpts, g_strdup(cmd->addr));
    ingest_session_reply(s, "250 2.1.5 Ok");
}

static void ingest_session_data(struct session *s)
{
    const struct postern_config *cfg = s->ig->cfg;

    if (!s->have_mail) {
        ingest_session_reply(s, "503 5.5.1 Error: need MAIL command");
        return;
    }
    /*
     * No recipient accepted: RFC 2033 §4.2 wants 503 in LMTP, where a
     * client may otherwise wait for per-recipient replies; SMTP clients
     * (and Postfix smtpd) expect 554 (RFC 5321 §3.3).
     */
    if (!s->rcpts->len) {
        ingest_session_reply(s, s->lmtp ? "503 5.5.1 Error: no valid recipients"
                                 : "554 5.5.1 Error: no valid recipients");
        return;
    }
    lmtp_data_begin(&s->data, cfg->ingest.max_message_size, cfg->ingest.max_header_size);
    s->state = SESSION_DATA;
    ingest_session_reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

/*
 * One reply per accepted recipient in LMTP, one in SMTP.  Used for the
 * refusals decided at the end of DATA; the 250s come from the commit.
 */
static void ingest_session_reply_all(struct session *s, const char *reply)
{
    for (guint i = 0; i < (s->lmtp ? s->rcpts->len : 1); i++)
        ingest_session_reply(s, "%s", reply);
}

static void ingest_session_data_done(struct session *s)
{
    if (s->data.too_big || s->data.header_too_big) {
        const char *reply = s->data.header_too_big
            ? "552 5.6.0 Message header section exceeds fixed limit"
            : "552 5.3.4 Message size exceeds fixed limit";
        msg_info("reject: DATA from %s: %s; from=<%s> size=%" G_GUINT64_FORMAT, s->client,
                 reply, s->sender, s->data.seen);
        ingest_session_reply_all(s, reply);
        ingest_session_end_transaction(s);
        s->state = SESSION_COMMAND;
        return;
    }
    s->state = SESSION_COMMIT;
    g_ptr_array_add(s->ig->batch, s);
}

static void ingest_session_command(struct session *s, const char *line, size_t len)
{
    struct lmtp_cmd cmd;

    lmtp_parse_command(line, len, &cmd);
    switch (cmd.verb) {
    case LMTP_BAD:
        ingest_session_reply(s, "%s", cmd.reply);
        s->errors++;
        break;
    case LMTP_LHLO: case LMTP_EHLO: case LMTP_HELO:
        ingest_session_greet(s, &cmd);
        break;
    case LMTP_MAIL:
        ingest_session_mail(s, &cmd);
        break;
    case LMTP_RCPT:
        ingest_session_rcpt(s, &cmd);
        break;
    case LMTP_DATA:
        ingest_session_data(s);
        break;
    case LMTP_RSET:
        ingest_session_end_transaction(s);
        ingest_session_reply(s, "250 2.0.0 Ok");
        break;
    case LMTP_NOOP:
        ingest_session_reply(s, "250 2.0.0 Ok");
        break;
    case LMTP_VRFY:
        ingest_session_reply(s, "252 2.0.0 Send some mail, I'll try my best");
        break;
    case LMTP_HELP:
        ingest_session_reply(s, "214 2.0.0 See RFC 2033");
        break;
    case LMTP_STARTTLS:
        ingest_session_reply(s, "502 5.5.1 Error: command not implemented");
        break;
    case LMTP_QUIT:
        ingest_session_reply(s, "221 2.0.0 Bye");
        s->state = SESSION_CLOSING;
        break;
    }
    lmtp_cmd_clear(&cmd);
    /* A whole command line was handled: the next one has its own time. */
    ingest_session_deadline_reset(s);
    if (s->errors >= SESSION_ERROR_LIMIT && s->state != SESSION_CLOSING) {
        ingest_session_reply(s, "421 4.7.0 %s Error: too many errors", s->ig->cfg->ingest.hostname);
        s->state = SESSION_CLOSING;
    }
}

/*
 * Parse what the state allows; TRUE when commands were left unparsed
 * because the client has not taken its replies.
 */
static gboolean ingest_session_consume(struct session *s)
{
    size_t pos = 0;
    gboolean held = FALSE;

    while (pos < s->in->len && (s->state == SESSION_COMMAND || s->state == SESSION_DATA)) {
        const char *buf = (const char *)s->in->data + pos;
        size_t avail = s->in->len - pos;

        if (s->state == SESSION_COMMAND && s->out->len >= SESSION_OUT_MAX) {
            held = TRUE;
            break;
        }
        if (s->state == SESSION_DATA) {
            size_t used;
            if (lmtp_data_feed(&s->data, buf, avail, &used) == LMTP_DATA_DONE)
                ingest_session_data_done(s);
            pos += used;
            continue;
        }
        const char *nl = memchr(buf, '\n', avail);
        if (!nl) {
            if (avail > LMTP_LINE_MAX) {
                ingest_session_reply(s, "500 5.5.2 Line too long");
                s->state = SESSION_CLOSING;
            }
            break;
        }
        size_t len = (size_t)(nl - buf);
        pos += len + 1;
        if (len && buf[len - 1] == '\r')
            len--;
        ingest_session_command(s, buf, len);
    }
    g_byte_array_remove_range(s->in, 0, (guint)pos);
    return held;
}

/*
 * Consume as much buffered input as the state allows.  Stops while a
 * message waits for its commit: pipelined commands after DATA are only
 * read once the 250s are out, so replies keep their order.
 */
void ingest_session_input(struct session *s)
{
    gboolean held;

    do {
        held = ingest_session_consume(s);
        ingest_session_reading(s);
        if (!ingest_session_flush(s))
            return;
        /* Replies that went out at once make room for the held commands. */
    } while (held && !s->out->len);
}

static gboolean ingest_session_readable(int fd, GIOCondition cond, gpointer data)
{
    struct session *s = data;
    guint old = s->in->len;
    ssize_t n;

    if (old >= SESSION_IN_MAX) {    /* no room: wait until the protocol takes some */
        if (!s->held_logged)
            msg_info("%s: input held: %u bytes of commands wait for %" G_GSIZE_FORMAT
                     " bytes of replies the client has not read", s->client, old, s->out->len);
        s->held_logged = TRUE;
        s->read_source = 0;
        s->read_paused = TRUE;
        return G_SOURCE_REMOVE;
    }
    g_byte_array_set_size(s->in, old + SESSION_READ_SIZE);
    n = read(fd, s->in->data + old, SESSION_READ_SIZE);
    g_byte_array_set_size(s->in, old + (n > 0 ? (guint)n : 0));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return G_SOURCE_CONTINUE;
    if (n <= 0) {
        s->read_source = 0;
        if (s->state == SESSION_COMMIT) {
            /* The message is complete: commit it; nobody hears the 250. */
            s->state = SESSION_CLOSING;
            return G_SOURCE_REMOVE;
        }
        ingest_session_close(s, n < 0 ? g_strerror(errno) : "lost connection");
        return G_SOURCE_REMOVE;
    }
    /*
     * A byte is not a command: only a whole line resets the command
     * deadline (in ingest_session_command), and DATA gets only what its
     * rate earns, so dribbling bytes does not keep a session open.
     */
    if (s->state == SESSION_DATA)
        ingest_session_data_credit(s, (size_t)n);
    ingest_session_input(s);
    return G_SOURCE_CONTINUE;
}

void ingest_session_start(struct ingest *ig, int fd, const char *client)
{
    struct session *s = g_new0(struct session, 1);

    s->ig = ig;
    s->fd = fd;
    s->client = g_strdup(client);
    s->in = g_byte_array_new();
    s->out = g_string_new(NULL);
    s->rcpts = g_ptr_array_new_with_free_func(g_free);
    ingest_session_deadline_reset(s);
    ig->sessions = g_list_prepend(ig->sessions, s);
    ig->n_sessions++;
    ingest_session_count(ig, client, 1);
    s->read_source = ingest_fd_add(fd, G_IO_IN, ingest_session_readable, s);
    msg_info("connect from %s", client);
    ingest_session_reply(s, "220 %s LMTP Postern ready", ig->cfg->ingest.hostname);
    ingest_session_flush(s);
}

/*
 * Deadlines (RFC 5321 §4.5.3.2 wants 5 minutes, as [ingest] timeout
 * defaults to): a command line must be complete within timeout of the
 * previous one; DATA within timeout plus what min_data_rate grants.
 * Then 421 4.4.2 and close.  Sessions waiting for their commit wait for
 * the disk, not the client, and are left alone.
 */
void ingest_session_expire_idle(struct ingest *ig)
{
    int64_t now = g_get_monotonic_time();

    for (GList *l = ig->sessions, *next; l; l = next) {
        struct session *s = l->data;

        next = l->next;
        if (s->state == SESSION_COMMIT || now < s->deadline)
            continue;
        if (s->state == SESSION_CLOSING) {     /* its last reply never drained */
            ingest_session_close(s, "timeout writing reply");
            continue;
        }
        if (s->state == SESSION_DATA)
            msg_info("timeout after DATA (%" G_GUINT64_FORMAT " bytes) from %s", s->data.seen,
                     s->client);
        else
            msg_info("timeout after command from %s", s->client);
        ingest_session_reply(s, "421 4.4.2 %s Error: timeout exceeded", ig->cfg->ingest.hostname);
        s->state = SESSION_CLOSING;
        /* The 421 gets a timeout of its own to drain. */
        ingest_session_deadline_reset(s);
        ingest_session_flush(s);
    }
}

/*
 * On shutdown every message that got a 250 is already committed; the
 * others were never acknowledged, so the client keeps them and retries.
 */
void ingest_session_shutdown_all(struct ingest *ig)
{
    while (ig->sessions) {
        struct session *s = ig->sessions->data;
        ingest_session_reply(s, "421 4.3.2 %s Service shutting down", ig->cfg->ingest.hostname);
        s->state = SESSION_CLOSING;
        if (write(s->fd, s->out->str, s->out->len) < 0)
            msg_warn("shutdown: %s: %s", s->client, g_strerror(errno));
        ingest_session_close(s, "shutdown");
    }
    g_clear_pointer(&ig->per_client, g_hash_table_unref);
}
