/*
 * test_data.h - the fixtures of tests/data/ as the daemons see mail: bare
 * LF made CRLF (the files are kept with LF so they read well in git).
 */
#ifndef POSTERN_TEST_DATA_H
#define POSTERN_TEST_DATA_H

#include <glib.h>

/* tests/data/<dir>/<name>; a test failure if it cannot be read. */
GBytes *test_data_crlf(const char *dir, const char *name);
/* The same for a whole path. */
GBytes *test_data_crlf_path(const char *path);

#endif
