/*
 * spoolctl.h - the operator's view of the spool: shared by the commands.
 *
 * Exit codes: 0 ok, 1 not found, 2 usage, config or input error (SPEC §6;
 * SPOOL_ERR_INVALID: the spool's rules refuse the input), and
 * 3 when the spool could not be read or written: like postqueue's EX_
 * codes, it tells a script "try again later" apart from "fix the command".
 * Human tables by default; with --json one JSON object, or one per line
 * for lists.
 */
#ifndef POSTERN_SPOOLCTL_H
#define POSTERN_SPOOLCTL_H

#include <json-glib/json-glib.h>

#include "common/config.h"
#include "spool/delivery.h"
#include "spool/relay_quota.h"
#include "spool/relay_state.h"
#include "spool/spool.h"
#include "spool/spool_stats.h"

#define CTL_OK 0
#define CTL_NOT_FOUND 1
#define CTL_USAGE 2
#define CTL_FAIL 3                  /* the spool could not be read or written */

struct ctl {
    struct postern_config cfg;
    struct spool *spool;
    gboolean json;
};

/*
 * Parse a command's own options (--json is accepted after the command too);
 * prints the problem and returns FALSE on error.
 */
gboolean ctl_parse(struct ctl *c, int *argc, char ***argv, const char *usage,
                   GOptionEntry *entries);
/*
 * One JSON value as one line, printed or appended to out.  Whatever is
 * read inside a spool transaction goes to a buffer, printed only after the
 * transaction ends: stdout may be a pager left open for hours, and a read
 * transaction held that long pins pages so the spool file grows without
 * bound.
 */
void ctl_json_print(JsonBuilder *b);
void ctl_json_append(JsonBuilder *b, GString *out);

/* Rows of a listing, formatted inside a read transaction into out. */
struct ctl_rows {
    gboolean json;
    GString *out;
};
/*
 * s with control bytes and bad UTF-8 as \xNN (log_escape), for text output;
 * valid until 8 more calls.
 */
const char *ctl_safe(const char *s);
/* Report a spool error on stderr and pick the exit code for it. */
int ctl_fail(GError *err);
/* Open the spool or exit CTL_FAIL. */
void ctl_open_spool(struct ctl *c);

/* spoolctl_suppress.c */
int ctl_suppress(struct ctl *c, int argc, char **argv);

/* spoolctl_events.c */
int ctl_events(struct ctl *c, int argc, char **argv);

/* spoolctl_queue.c */
int ctl_stats(struct ctl *c, int argc, char **argv);
int ctl_list(struct ctl *c, int argc, char **argv);
int ctl_show(struct ctl *c, int argc, char **argv);
int ctl_hold(struct ctl *c, int argc, char **argv);
int ctl_release(struct ctl *c, int argc, char **argv);
int ctl_retry(struct ctl *c, int argc, char **argv);
int ctl_approve(struct ctl *c, int argc, char **argv);
int ctl_discard(struct ctl *c, int argc, char **argv);
int ctl_delete(struct ctl *c, int argc, char **argv);
int ctl_purge(struct ctl *c, int argc, char **argv);

/* spoolctl_mask.c */
enum ctl_mask { CTL_MASK_NONE, CTL_MASK_DONE, CTL_MASK_FAILED };
/*
 * Replace the token in raw (a message as received) by "[token ID]": in
 * the token part, re-encoded as it was, and wherever the text recurs.
 * CTL_MASK_NONE: no token part; CTL_MASK_FAILED: raw must not be shown.
 */
enum ctl_mask ctl_mask_token(GByteArray *raw, const char *prefix);

/* spoolctl_token.c */
int ctl_token(struct ctl *c, int argc, char **argv);

/* spoolctl_dkim.c */
int ctl_dkim(struct ctl *c, int argc, char **argv);

/* spoolctl_relay.c: the relay pause */
gboolean ctl_relay_read(struct ctl *c, struct relay_state *st, GError **err);
/* "relay URL: not paused" or "relay URL: paused until ..., after: REPLY" */
/* "relay URL[ account NAME]: ...": the account is named when there are several. */
char *ctl_relay_describe_account(const struct postern_config *cfg, const struct postern_relay *r,
                                 const struct relay_state *st);
char *ctl_relay_describe(const struct postern_config *cfg, const struct relay_state *st);
/* {"paused": b, "paused_until": unix s or 0, "pauses": n, "reason": s|null} */
void ctl_relay_json(JsonBuilder *b, const struct relay_state *st);
/* "no daily limit" or "U of N recipients in the last 24h[, waiting until ...]" */
char *ctl_quota_describe(const struct postern_config *cfg, const struct postern_relay *r,
                         const struct relay_quota *q);
int ctl_relay(struct ctl *c, int argc, char **argv);

/* spoolctl_apikey.c */
int ctl_api_key(struct ctl *c, int argc, char **argv);

/* spoolctl_ops.c */
int ctl_check(struct ctl *c, int argc, char **argv);
int ctl_metrics(struct ctl *c, int argc, char **argv);

#endif
