/*
 * api_events.h - postern-api's poster of outcome events: it takes the
 * oldest event of the spool's outbox (spool/spool_events.h), POSTs it to
 * [events] url as JSON signed with [events] secret_file, and removes it
 * only after a 2xx answer.  One event in flight, strictly in outbox order,
 * so the events of a message arrive in the order they happened.  While
 * the endpoint is down (no answer, or not 2xx) the same event is tried
 * again after 1 s, 2 s, 4 s ... up to [events] max_backoff; the outage is
 * logged once when it begins and once when it ends.
 *
 * libcurl's multi interface, driven by the one loop of api_main.c:
 * api_events_poll() waits on the server's descriptors and curl's
 * together, api_events_run() moves the transfer on.  Nothing blocks.
 */
#ifndef POSTERN_API_EVENTS_H
#define POSTERN_API_EVENTS_H

#include <poll.h>

#include "common/signature.h"
#include "common/config.h"
#include "spool/spool.h"
#include "spool/spool_events.h"

struct api_events;

/* NULL without error when [events] url is not set: nothing to post. */
struct api_events *api_events_start(const struct postern_config *cfg, struct spool *sp,
                                    GError **err);
void api_events_stop(struct api_events *ev);

/*
 * poll(2) on fds (their revents are filled in) and on the transfer's
 * sockets, for at most timeout ms, less when the next try is due sooner.
 */
int api_events_poll(struct api_events *ev, struct pollfd *fds, unsigned nfds, int timeout);
/* Finish what the transfer did, then start the next event if one is due. */
void api_events_run(struct api_events *ev, int64_t now_ms);

/* Pure, for the tests: the JSON body of ev. */
char *api_event_json(const struct spool_event *ev);
/* Pure: "sha256=" and the hex HMAC-SHA256 of body under key (72 bytes with the NUL). */
#define API_EVENT_SIGNATURE_LEN SIGNATURE_LEN
void api_event_sign(const void *key, size_t key_len, const char *body, size_t body_len,
                    char out[API_EVENT_SIGNATURE_LEN + 1]);
/* Pure: the wait before try failures + 1: 1 s doubling, at most max_ms. */
int64_t api_event_backoff(uint32_t failures, int64_t max_ms);

#endif
