/*
 * dispatch_round.c - one write transaction per round of the main loop.
 *
 * A round records the results that came in, takes back expired leases
 * (once a second) and leases what is due, in that order, and commits all
 * of it at once: one durable commit (page writes and two fdatasync) for
 * the round instead of one for the results and one for the leases.  The
 * commit was most of the dispatcher's CPU per delivery (docs/benchmarks.md,
 * "Dispatcher CPU per delivery").  Nothing is sent before the commit: jobs
 * go out after it, as before, so every lease a worker sees is on disk.
 *
 * The rules do not change.  Each result is still checked against the
 * lease in the spool; a pause that results begin holds the leases of the
 * same round (they are taken only after the results, in the same
 * transaction, which sees the pause); a round whose transaction fails is
 * done again part by part, so a bad result cannot stop the leasing.
 */
#include "dispatch/dispatch.h"
#include "common/log.h"

struct round {
    struct rresult *rr;             /* results, or NULL */
    struct expiry *ex;              /* lease expiry, or NULL */
    struct dlease *dl;              /* leases, or NULL */
};

static gboolean round_write(struct spool_txn *t, void *ctx, GError **err)
{
    struct round *r = ctx;

    if (r->rr && !dispatch_results_write(t, r->rr, err))
        return FALSE;
    if (r->ex && !dispatch_expiry_write(t, r->ex, err))
        return FALSE;
    /* A pause in the spool, new or found by the results, holds every lease. */
    return !r->dl ||
           dispatch_leases_write(t, r->dl, r->rr && dispatch_results_paused(r->rr, unix_ms()),
                                 err);
}

/* Run the parts given in one transaction; FALSE (logged) if it failed. */
static gboolean round_commit(struct dispatch *d, struct rresult *rr, struct expiry *ex,
                             struct dlease *dl, const char *what)
{
    struct round r = { rr, ex, dl };
    GError *err = NULL;

    if (spool_write(d->spool, round_write, &r, &err))
        return TRUE;
    if (rr)
        msg_error("%s: recording %u result(s) failed: %s", what, dispatch_results_count(rr),
                  err->message);
    else
        msg_warn("%s: %s", what, err->message);
    g_clear_error(&err);
    return FALSE;
}

void dispatch_round(struct dispatch *d, GPtrArray *done, gboolean expire, gboolean lease)
{
    struct rresult *rr = NULL;
    struct expiry *ex = expire ? dispatch_expiry_new(d) : NULL;
    struct dlease *dl = NULL;
    gboolean ok_r, ok_x, ok_l;

    /* Finished jobs give their connections back first: this round may use them. */
    if (done->len) {
        dispatch_results_init(&rr, d, done);
        dispatch_results_jobs(d, rr);
    }
    if (lease) {
        dl = dispatch_leases_new(d);
        if (!dispatch_leases_wanted(dl)) {
            dispatch_leases_send(d, dl, FALSE);
            dl = NULL;
        }
    }
    /* A round with nothing to write still answers the hint: else the loop
     * spins (no connection is granted for 2 s after a start, dispatch.h). */
    if (!rr && !ex && !dl) {
        if (lease)
            d->work_hinted = FALSE;
        return;
    }
    ok_r = ok_x = ok_l = round_commit(d, rr, ex, dl, "dispatch round");
    if (!ok_r) {
        /* Part by part, as the round would have been without batching:
         * the leases still go out when only the results cannot be recorded. */
        ok_r = !rr || round_commit(d, rr, NULL, NULL, "results alone");
        ok_x = !ex || round_commit(d, NULL, ex, NULL, "expire leases");
        if (dl && rr && ok_r && dispatch_results_paused(rr, unix_ms()))
            ok_l = FALSE;
        else
            ok_l = !dl || round_commit(d, NULL, NULL, dl, "lease deliveries");
    }
    if (rr)
        dispatch_results_done(d, rr, ok_r);
    if (ex)
        dispatch_expiry_done(d, ex, ok_x);
    if (dl)
        dispatch_leases_send(d, dl, ok_l);
    /* The results and expired leases asked for a lease round: this was it. */
    if (lease)
        d->work_hinted = FALSE;
}
