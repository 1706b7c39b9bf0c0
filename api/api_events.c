/*
 * api_events.c - see api_events.h.
 *
 * Why libcurl: an HTTP(S) client (redirects refused, TLS verified, time
 * limits) is not ours to write; its multi interface lets the one loop of
 * postern-api wait on the server and the transfer together
 * (curl_multi_poll() takes our descriptors as extra ones).  JSON is
 * json-glib's, the HMAC OpenSSL's.
 */
#include "api/api_events.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/secret_file.h"
#include "common/signature.h"

#include <curl/curl.h>
#include <errno.h>
#include <json-glib/json-glib.h>
#include <string.h>

#define API_EVENT_BACKOFF_FIRST_MS 1000
#define API_EVENT_REPLY_MAX 4096    /* of an answer's body kept for the log */

struct api_events {
    struct spool *spool;
    char *url;
    char *ca_file;                  /* [events] ca_file, or NULL: the system's CAs */
    char *secret;
    size_t secret_len;
    int64_t timeout_ms;
    int64_t max_backoff_ms;

    CURLM *multi;
    CURL *easy;                     /* the one transfer in flight, or NULL */
    struct curl_slist *headers;
    GString *reply;                 /* the start of the answer's body */
    uint64_t id;                    /* the event in flight */
    char *type;
    char errbuf[CURL_ERROR_SIZE];

    int64_t next_try;               /* unix ms: no try before */
    uint32_t failures;              /* in a row */
    gboolean outage;                /* logged as down by this process */
};

/* ---- pure --------------------------------------------------------------- */

int64_t api_event_backoff(uint32_t failures, int64_t max_ms)
{
    int64_t wait = API_EVENT_BACKOFF_FIRST_MS;

    for (uint32_t i = 1; i < failures && wait < max_ms; i++)
        wait *= 2;
    return MIN(wait, max_ms);
}

/* The same signature as the claims' (common/signature.h). */
void api_event_sign(const void *key, size_t key_len, const char *body, size_t body_len,
                    char out[API_EVENT_SIGNATURE_LEN + 1])
{
    signature_sign(key, key_len, body, body_len, out);
}

char *api_event_json(const struct spool_event *ev)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autoptr(JsonNode) root = NULL;
    char id[QUEUE_ID_LEN + 1];

    json_builder_begin_object(b);
    spool_id_format(ev->id, id);
    json_builder_set_member_name(b, "id");
    json_builder_add_string_value(b, id);
    json_builder_set_member_name(b, "type");
    json_builder_add_string_value(b, ev->type);
    json_builder_set_member_name(b, "time");
    json_builder_add_int_value(b, ev->time / 1000);
    if (ev->msg) {
        spool_id_format(ev->msg, id);
        json_builder_set_member_name(b, "message");
        json_builder_add_string_value(b, id);
    }
    if (ev->sender) {
        json_builder_set_member_name(b, "sender");
        json_builder_add_string_value(b, ev->sender);
    }
    if (g_str_equal(ev->type, EVENT_MESSAGE_ACCEPTED) ||
        g_str_equal(ev->type, EVENT_MESSAGE_REJECTED) ||
        g_str_equal(ev->type, EVENT_MESSAGE_HELD)) {
        json_builder_set_member_name(b, "token");
        if (ev->token)
            json_builder_add_string_value(b, ev->token);
        else
            json_builder_add_null_value(b);
    }
    if (g_str_equal(ev->type, EVENT_MESSAGE_ACCEPTED)) {
        json_builder_set_member_name(b, "recipients");
        json_builder_add_int_value(b, ev->nrcpt);
    }
    if (ev->reason) {
        json_builder_set_member_name(b, "reason");
        json_builder_add_string_value(b, ev->reason);
    }
    if (ev->rcpt) {
        json_builder_set_member_name(b, "recipient");
        json_builder_add_string_value(b, ev->rcpt);
        json_builder_set_member_name(b, "reply");
        json_builder_add_string_value(b, ev->reply ? ev->reply : "");
    }
    if (ev->list) {
        json_builder_set_member_name(b, "list");
        json_builder_add_string_value(b, ev->list);
    }
    if (g_str_equal(ev->type, EVENT_MESSAGE_DONE)) {
        json_builder_set_member_name(b, "sent");
        json_builder_add_int_value(b, ev->sent);
        json_builder_set_member_name(b, "bounced");
        json_builder_add_int_value(b, ev->bounced);
    }
    if (ev->until) {
        json_builder_set_member_name(b, "until");
        json_builder_add_int_value(b, ev->until / 1000);
    }
    json_builder_end_object(b);
    root = json_builder_get_root(b);
    json_generator_set_root(gen, root);
    return json_generator_to_data(gen, NULL);
}

/* ---- the transfer ----------------------------------------------------------- */

static size_t api_events_keep_reply(char *data, size_t size, size_t n, void *ctx)
{
    GString *reply = ctx;
    size_t len = size * n;

    if (reply->len < API_EVENT_REPLY_MAX)
        g_string_append_len(reply, data, (gssize)MIN(len, API_EVENT_REPLY_MAX - reply->len));
    return len;
}

static void api_events_transfer_end(struct api_events *ev)
{
    if (ev->easy) {
        curl_multi_remove_handle(ev->multi, ev->easy);
        curl_easy_cleanup(ev->easy);
        ev->easy = NULL;
    }
    g_clear_pointer(&ev->headers, curl_slist_free_all);
    g_clear_pointer(&ev->type, g_free);
    g_string_truncate(ev->reply, 0);
}

static gboolean api_events_delete(struct spool_txn *t, void *ctx, GError **err)
{
    struct api_events *ev = ctx;
    struct spool_events_retry clear = { 0 };

    return spool_event_delete(t, ev->id, err) &&
           (ev->failures == 0 || spool_events_retry_put(t, &clear, err));
}

static gboolean api_events_retry_write(struct spool_txn *t, void *ctx, GError **err)
{
    return spool_events_retry_put(t, ctx, err);
}

/* A 2xx: the event is the platform's now; only then does it leave the outbox. */
static void api_events_delivered(struct api_events *ev, long status)
{
    char id[QUEUE_ID_LEN + 1];
    GError *err = NULL;

    spool_id_format(ev->id, id);
    if (!spool_write(ev->spool, api_events_delete, ev, &err)) {
        /* Sent again later: a duplicate the receiver recognises by its id. */
        msg_warn("event %s: delivered but not removed from the outbox: %s", id, err->message);
        g_clear_error(&err);
        ev->next_try = unix_ms() + API_EVENT_BACKOFF_FIRST_MS;
        return;
    }
    msg_info("event %s %s: delivered, status=%ld", id, ev->type, status);
    if (ev->failures)
        msg_info("events: %s answers again after %u failed tries", ev->url, ev->failures);
    ev->outage = FALSE;
    ev->failures = 0;
    ev->next_try = 0;
}

/* No answer or not a 2xx: the same event again, later; the outage logged once. */
static void api_events_failed(struct api_events *ev, const char *why, int64_t now)
{
    struct spool_events_retry st = { 0 };
    char id[QUEUE_ID_LEN + 1];
    GError *err = NULL;

    ev->failures++;
    ev->next_try = now + api_event_backoff(ev->failures, ev->max_backoff_ms);
    spool_id_format(ev->id, id);
    if (!ev->outage)
        msg_warn("events: %s: %s (event %s %s): retrying with backoff up to %" G_GINT64_FORMAT
                 " s, logged again only when it answers", ev->url, why, id, ev->type,
                 ev->max_backoff_ms / 1000);
    ev->outage = TRUE;
    /* Where the poster stands, for spoolctl events. */
    st.next_try = ev->next_try;
    st.failures = ev->failures;
    g_strlcpy(st.error, why, sizeof(st.error));
    if (!spool_write(ev->spool, api_events_retry_write, &st, &err)) {
        msg_warn("events: cannot record the retry state: %s", err->message);
        g_clear_error(&err);
    }
}

static void api_events_finish(struct api_events *ev, CURLcode rc, int64_t now)
{
    long status = 0;

    curl_easy_getinfo(ev->easy, CURLINFO_RESPONSE_CODE, &status);
    if (rc == CURLE_OK && status >= 200 && status < 300) {
        api_events_delivered(ev, status);
    } else if (rc == CURLE_OK) {
        g_autofree char *why = NULL;

        g_strdelimit(ev->reply->str, "\r\n\t", ' ');
        why = g_strdup_printf("status %ld%s%.120s", status, ev->reply->len ? ": " : "",
                              ev->reply->str);
        api_events_failed(ev, why, now);
    } else {
        api_events_failed(ev, *ev->errbuf ? ev->errbuf : curl_easy_strerror(rc), now);
    }
    api_events_transfer_end(ev);
}

/* The oldest event, signed and on its way; FALSE when there is none (or no spool). */
static gboolean api_events_send_next(struct api_events *ev)
{
    struct spool_txn t;
    struct spool_event e;
    gboolean found = FALSE;
    g_autofree char *body = NULL, *event_hdr = NULL, *sig_hdr = NULL, *id_hdr = NULL;
    char sig[API_EVENT_SIGNATURE_LEN + 1], id[QUEUE_ID_LEN + 1];
    GError *err = NULL;

    if (!spool_read_begin(ev->spool, &t, &err) || !spool_event_first(&t, &e, &found, &err)) {
        spool_read_end(&t);
        msg_warn("events: cannot read the outbox: %s", err->message);
        g_clear_error(&err);
        return FALSE;
    }
    spool_read_end(&t);
    if (!found)
        return FALSE;

    /* The body is signed as sent: the receiver checks the bytes it got. */
    body = api_event_json(&e);
    api_event_sign(ev->secret, ev->secret_len, body, strlen(body), sig);
    spool_id_format(e.id, id);
    ev->id = e.id;
    ev->type = g_strdup(e.type);
    spool_event_clear(&e);
    sig_hdr = g_strdup_printf("X-Postern-Signature: %s", sig);
    id_hdr = g_strdup_printf("X-Postern-Event-Id: %s", id);
    event_hdr = g_strdup_printf("X-Postern-Event: %s", ev->type);
    ev->headers = curl_slist_append(ev->headers, "Content-Type: application/json");
    ev->headers = curl_slist_append(ev->headers, sig_hdr);
    ev->headers = curl_slist_append(ev->headers, id_hdr);
    ev->headers = curl_slist_append(ev->headers, event_hdr);
    ev->headers = curl_slist_append(ev->headers, "Expect:");

    ev->easy = curl_easy_init();
    ev->errbuf[0] = '\0';
    curl_easy_setopt(ev->easy, CURLOPT_URL, ev->url);
    curl_easy_setopt(ev->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(ev->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(ev->easy, CURLOPT_TIMEOUT_MS, (long)ev->timeout_ms);
    curl_easy_setopt(ev->easy, CURLOPT_HTTPHEADER, ev->headers);
    curl_easy_setopt(ev->easy, CURLOPT_COPYPOSTFIELDS, body);
    curl_easy_setopt(ev->easy, CURLOPT_USERAGENT, "postern-api");
    if (ev->ca_file)
        curl_easy_setopt(ev->easy, CURLOPT_CAINFO, ev->ca_file);
    curl_easy_setopt(ev->easy, CURLOPT_ERRORBUFFER, ev->errbuf);
    curl_easy_setopt(ev->easy, CURLOPT_WRITEFUNCTION, api_events_keep_reply);
    curl_easy_setopt(ev->easy, CURLOPT_WRITEDATA, ev->reply);
    curl_multi_add_handle(ev->multi, ev->easy);
    return TRUE;
}

/* ---- the loop's side ------------------------------------------------------- */

struct api_events *api_events_start(const struct postern_config *cfg, struct spool *sp,
                                    GError **err)
{
    struct api_events *ev;
    struct spool_events_retry st;
    struct spool_txn t;
    char *secret;

    if (!*cfg->events.url)
        return NULL;
    if (!(secret = secret_read("[events] secret_file", cfg->events.secret_file, err)))
        return NULL;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        secret_free(secret);
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "libcurl: cannot initialise");
        return NULL;
    }
    ev = g_new0(struct api_events, 1);
    ev->spool = sp;
    ev->url = g_strdup(cfg->events.url);
    ev->ca_file = *cfg->events.ca_file ? g_strdup(cfg->events.ca_file) : NULL;
    /* A trailing newline is the editor's, not the secret's. */
    ev->secret = g_strchomp(secret);
    ev->secret_len = strlen(ev->secret);
    ev->timeout_ms = (int64_t)cfg->events.timeout * 1000;
    ev->max_backoff_ms = (int64_t)cfg->events.max_backoff * 1000;
    ev->multi = curl_multi_init();
    ev->reply = g_string_new(NULL);

    /*
     * A restart tries at once, and says again that the endpoint is down if
     * it still is; the tries before count in the "answers again" line.
     */
    if (spool_read_begin(sp, &t, NULL)) {
        if (spool_events_retry_get(&t, &st, NULL))
            ev->failures = st.failures;
        spool_read_end(&t);
    }
    msg_info("events: posting to %s%s%s", ev->url, ev->ca_file ? ", CA file " : "",
             ev->ca_file ? ev->ca_file : "");
    return ev;
}

void api_events_stop(struct api_events *ev)
{
    if (!ev)
        return;
    api_events_transfer_end(ev);
    curl_multi_cleanup(ev->multi);
    curl_global_cleanup();
    g_string_free(ev->reply, TRUE);
    secret_free(ev->secret);
    g_free(ev->url);
    g_free(ev->ca_file);
    g_free(ev);
}

int api_events_poll(struct api_events *ev, struct pollfd *fds, unsigned nfds, int timeout)
{
    struct curl_waitfd w[8];
    int n = 0;

    g_assert(nfds <= G_N_ELEMENTS(w));
    /* Waiting for the next try: wake for it. */
    if (!ev->easy && ev->next_try) {
        int64_t wait = ev->next_try - unix_ms();

        timeout = (int)CLAMP(wait, 0, timeout);
    }
    for (unsigned i = 0; i < nfds; i++) {
        w[i].fd = fds[i].fd;
        w[i].events = (short)((fds[i].events & POLLIN ? CURL_WAIT_POLLIN : 0) |
                              (fds[i].events & POLLOUT ? CURL_WAIT_POLLOUT : 0));
        w[i].revents = 0;
    }
    /* libcurl takes EINTR as a timeout: an error is one poll(2) cannot get past. */
    if (curl_multi_poll(ev->multi, w, nfds, timeout, &n) != CURLM_OK) {
        errno = EIO;
        return -1;
    }
    for (unsigned i = 0; i < nfds; i++)
        fds[i].revents = (short)((w[i].revents & CURL_WAIT_POLLIN ? POLLIN : 0) |
                                 (w[i].revents & CURL_WAIT_POLLOUT ? POLLOUT : 0));
    return n;
}

void api_events_run(struct api_events *ev, int64_t now_ms)
{
    CURLMsg *m;
    int running = 0, left;

    curl_multi_perform(ev->multi, &running);
    while ((m = curl_multi_info_read(ev->multi, &left)))
        if (m->msg == CURLMSG_DONE && m->easy_handle == ev->easy)
            api_events_finish(ev, m->data.result, now_ms);
    /* One in flight, strictly in outbox order: the next only after this one's 2xx. */
    if (!ev->easy && now_ms >= ev->next_try && api_events_send_next(ev))
        curl_multi_perform(ev->multi, &running);
}
