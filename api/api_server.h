/*
 * api_server.h - the HTTP server of postern-api (libmicrohttpd), apart
 * from api.h so that the handlers never see a libmicrohttpd type.
 */
#ifndef POSTERN_API_SERVER_H
#define POSTERN_API_SERVER_H

#include <microhttpd.h>

#include "api/api.h"

/*
 * Serve on listen_fd (bound and listening), HTTPS when cert and key (PEM
 * text) are given.  MHD_USE_EPOLL without threads: the caller polls
 * MHD_DAEMON_INFO_EPOLL_FD and calls MHD_run().
 */
struct MHD_Daemon *api_server_start(struct api *a, int listen_fd, const char *cert,
                                    const char *key, GError **err);

/*
 * Write the token registrations held during the last MHD_run() in one
 * transaction and resume their connections; TRUE if there were any.
 * Their answers go out on the next MHD_run(), which the caller makes at
 * once: a resumed connection does not wake the epoll set of an external
 * loop.
 */
gboolean api_server_commit(struct api *a);

#endif
