/*
 * retry_policy.h - what an attempt's result means for a delivery (SPEC §5)
 * and when to try again: sent, deferred, bounced or the relay paused, and
 * the backoff.  Pure: the caller supplies the clock (microseconds,
 * g_get_real_time()) and the random numbers.
 */
#ifndef POSTERN_RETRY_POLICY_H
#define POSTERN_RETRY_POLICY_H

#include <glib.h>

#include "sender/smtp.h"

enum retry_verdict { RETRY_SENT, RETRY_DEFER, RETRY_BOUNCE, RETRY_PAUSE };

const char *retry_verdict_name(enum retry_verdict v);   /* sent, deferred, bounced, paused */

struct retry_policy {
    gint64  initial, max, lifetime; /* microseconds: [retry] initial, max, lifetime */
};

/* SPEC §5: quota/throttle replies and a refused AUTH pause; 2xx sent; 4xx and failures without
 * a reply (or a refused session) defer; 5xx bounce. */
enum retry_verdict retry_classify(const struct smtp_rcpt_result *r);

/* Whether a delivery first queued at first has outlived [retry] lifetime. */
gboolean retry_expired(const struct retry_policy *p, gint64 first, gint64 now);

/*
 * After a deferred attempt: RETRY_BOUNCE once retry_expired(), else
 * RETRY_DEFER with *next_at = now + min(initial * 2^(attempts-1), max) +- 20%.
 * u is a uniform random number in [0, 1) (g_random_double()), the jitter.
 */
enum retry_verdict retry_schedule(const struct retry_policy *p, unsigned attempts,
                  gint64 first, gint64 now, double u, gint64 *next_at);

/* How long the relay stays paused after the n-th pause in a row (n >= 1). */
gint64  retry_pause(const struct retry_policy *p, unsigned n);

#endif
