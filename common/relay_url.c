/*
 * relay_url.c - see relay_url.h.  In common/ because the config check
 * (config.c) refuses a URL the sender could not use, before anything starts.
 *
 * [relay] url: smtp://host[:port] (STARTTLS, default 587), smtps://host[:port]
 * (TLS from the first byte, default 465) or maildir:/path.
 */
#include <string.h>

#include "common/relay_url.h"

G_DEFINE_QUARK(postern-relay-url-error, relay_url_error)

static gboolean url_fail(GError **err, const char *url, const char *why)
{
    g_set_error(err, RELAY_URL_ERROR, 1, "relay url \"%s\": %s", url, why);
    return FALSE;
}

/*
 * GUri takes anything between "//" and ":" as a host, spaces and slashes
 * included; a relay host must be an IP literal or a DNS name (IDN ones
 * converted to ASCII, the form certificates are checked against).
 */
static char *host_check(const char *host)
{
    char   *ascii;
    const char *s;

    if (g_hostname_is_ip_address(host))
        return g_strdup(host);
    if (*host == 0 || (ascii = g_hostname_to_ascii(host)) == NULL)
        return NULL;
    for (s = ascii; *s; s++) {
        if (!g_ascii_isalnum(*s) && *s != '-' && *s != '.' && *s != '_') {
            g_free(ascii);
            return NULL;
        }
    }
    return ascii;
}

/*
 * A Maildir path is taken verbatim: GUri would resolve "./" and ".."
 * segments, and "maildir:./var/outbox" is the documented default.
 */
gboolean relay_url_parse(const char *url, struct relay_url *out, GError **err)
{
    g_autoptr(GUri) uri = NULL;
    const char *scheme;
    const char *path;
    GError *uri_err = NULL;

    memset(out, 0, sizeof(*out));
    if (g_ascii_strncasecmp(url, "maildir:", 8) == 0) {
        if (url[8] == 0)
            return url_fail(err, url, "empty Maildir path");
        out->kind = RELAY_MAILDIR;
        out->path = g_strdup(url + 8);
        return TRUE;
    }
    if ((uri = g_uri_parse(url, G_URI_FLAGS_NONE, &uri_err)) == NULL) {
        url_fail(err, url, uri_err->message);
        g_error_free(uri_err);
        return FALSE;
    }
    scheme = g_uri_get_scheme(uri);
    if (!g_ascii_strcasecmp(scheme, "smtp"))
        out->kind = RELAY_SMTP;
    else if (!g_ascii_strcasecmp(scheme, "smtps"))
        out->kind = RELAY_SMTPS;
    else
        return url_fail(err, url, "scheme is not smtp, smtps or maildir");
    path = g_uri_get_path(uri);
    if (g_uri_get_userinfo(uri) || g_uri_get_query(uri) || g_uri_get_fragment(uri)
        || (*path && strcmp(path, "/") != 0))
        return url_fail(err, url, "only scheme://host:port is allowed "
                "(credentials go in user and password_file)");
    if (g_uri_get_host(uri) == NULL || (out->host = host_check(g_uri_get_host(uri))) == NULL)
        return url_fail(err, url, "bad or missing host name");
    out->port = g_uri_get_port(uri);
    if (out->port == -1)
        out->port = out->kind == RELAY_SMTP ? 587 : 465;
    if (out->port == 0) {
        relay_url_clear(out);
        return url_fail(err, url, "port 0");
    }
    return TRUE;
}

void    relay_url_clear(struct relay_url *url)
{
    g_free(url->host);
    g_free(url->path);
    memset(url, 0, sizeof(*url));
}
