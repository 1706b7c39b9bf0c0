/*
 * hint.h - ring the dispatcher after a commit.
 *
 * A hint only says "look at the spool now"; the spool is the truth, and
 * the dispatcher rescans on a timer, so a hint may be lost.  Sending never
 * blocks: up to 16 hints wait for a dispatcher that is not connected yet,
 * and any more are dropped at once.
 */
#ifndef POSTERN_HINT_H
#define POSTERN_HINT_H

#include <glib.h>

struct hint_sender;

struct hint_sender *hint_sender_open(const char *endpoint, GError **err);
void hint_sender_close(struct hint_sender *h);
/* what: a short word ("incoming", "ready", "result"), for the dispatcher's log. */
void hint_send(struct hint_sender *h, const char *what);

#endif
