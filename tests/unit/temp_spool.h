/*
 * temp_spool.h - a spool of its own for each unit test: a temporary
 * directory, the embedded config defaults with a small map (1 MiB, up to
 * 8 MiB) so that growth and the full-map paths are quick to reach, and a
 * message writer for tests that need something stored.
 */
#ifndef POSTERN_TEST_TEMP_SPOOL_H
#define POSTERN_TEST_TEMP_SPOOL_H

#include "common/config.h"
#include "spool/spool.h"

struct temp_spool {
    char *dir;
    struct postern_config cfg;
    struct spool *sp;
};

/* cmocka setup/teardown: *state is the struct temp_spool. */
int temp_spool_setup(void **state);
int temp_spool_teardown(void **state);

/* The same, for a test that builds its own fixture around one. */
struct temp_spool *temp_spool_new(void);
void temp_spool_free(struct temp_spool *ts);

/*
 * One incoming message from a@b.no to restricted@abakus.no with the given
 * body; extra_rcpts more recipients make the record itself large.  For
 * spool_write(): ctx is a struct temp_msg, whose id is set.
 */
struct temp_msg {
    const char *body;
    size_t len;
    queue_id id;
    int extra_rcpts;
};
gboolean temp_spool_put_msg(struct spool_txn *t, void *ctx, GError **err);

#endif
