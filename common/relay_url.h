/*
 * relay_url.h - [relay] url: smtp://host[:587] (STARTTLS), smtps://host[:465]
 * (TLS from the first byte) or maildir:/path.  Pure: used by the sender,
 * the dispatcher (connection budgets) and the config check.
 */
#ifndef POSTERN_RELAY_URL_H
#define POSTERN_RELAY_URL_H

#include <glib.h>

#define RELAY_URL_ERROR (relay_url_error_quark())
GQuark relay_url_error_quark(void);

enum relay_kind { RELAY_SMTP, RELAY_SMTPS, RELAY_MAILDIR };

struct relay_url {
    enum relay_kind kind;
    char   *host;                   /* SMTP kinds: host name or IP literal */
    int     port;
    char   *path;                   /* RELAY_MAILDIR: the directory, verbatim */
};

gboolean relay_url_parse(const char *url, struct relay_url *out, GError **err);
void    relay_url_clear(struct relay_url *url);

#endif
