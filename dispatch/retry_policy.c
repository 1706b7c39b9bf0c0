/*
 * What an attempt's result means for the delivery (SPEC §5), and when to
 * try again. Pure: the caller supplies the clock and the random numbers.
 */
#include <string.h>

#include "dispatch/retry_policy.h"

const char *retry_verdict_name(enum retry_verdict v)
{
    static const char *const name[] = {
        [RETRY_SENT] = "sent", [RETRY_DEFER] = "deferred",
        [RETRY_BOUNCE] = "bounced", [RETRY_PAUSE] = "paused",
    };

    return name[v];
}

/*
 * A refused session (greeting, EHLO, STARTTLS, AUTH) defers even on a 5xx:
 * it is about the relay or our credentials, not the message, and Postfix
 * defers it too (smtp_skip_5xx_greeting, smtp_sasl_auth_soft_bounce).  A
 * refused AUTH also pauses the relay, as a quota does: every copy would
 * meet it, and trying each on its own only hammers the relay with a wrong
 * password (and hides the fault in per-copy deferrals).
 */
enum retry_verdict retry_classify(const struct smtp_rcpt_result *r)
{
    if (smtp_result_throttled(r) || smtp_result_auth_refused(r))
        return RETRY_PAUSE;
    if (r->error != SMTP_ERROR_NONE)
        return RETRY_DEFER;
    switch (r->code / 100) {
    case 2:
        return RETRY_SENT;
    case 5:
        return RETRY_BOUNCE;
    default:
        return RETRY_DEFER;
    }
}

/* initial * 2^(n-1), capped at max, without overflowing on large n. */
static gint64 doubling(const struct retry_policy *p, unsigned n)
{
    gint64  d = MAX(p->initial, 1);

    while (n-- > 1 && d < p->max)
        d *= 2;
    return MIN(d, p->max);
}

gboolean retry_expired(const struct retry_policy *p, gint64 first, gint64 now)
{
    return now - first >= p->lifetime;
}

enum retry_verdict retry_schedule(const struct retry_policy *p, unsigned attempts,
                  gint64 first, gint64 now, double u, gint64 *next_at)
{
    if (retry_expired(p, first, now))
        return RETRY_BOUNCE;
    *next_at = now + (gint64) (doubling(p, attempts) * (0.8 + 0.4 * u));
    return RETRY_DEFER;
}

gint64  retry_pause(const struct retry_policy *p, unsigned n)
{
    return doubling(p, n);
}
