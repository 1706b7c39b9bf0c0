/*
 * clock.h - the two clocks, both in milliseconds.
 *
 * mono_ms() for intervals and deadlines inside one process (it never jumps
 * back); unix_ms() for anything written down (the spool, wire messages,
 * logs), which another process or a restart must read.  One unit for both
 * so that no caller converts.
 */
#ifndef POSTERN_CLOCK_H
#define POSTERN_CLOCK_H

#include <glib.h>
#include <stdint.h>

static inline int64_t mono_ms(void)
{
    return g_get_monotonic_time() / 1000;
}

static inline int64_t unix_ms(void)
{
    return g_get_real_time() / 1000;
}

#endif
