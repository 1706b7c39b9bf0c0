/*
 * fuzz_util.h - helpers shared by the libFuzzer targets of tests/fuzz/.
 *
 * FUZZ_CHECK turns a broken invariant into a crash that libFuzzer records
 * (abort under ASan: "deadly signal", the input saved as an artifact).
 * The split helpers derive how an input is cut into reads from the input
 * itself, so a saved crash input reproduces with the same cuts.
 */
#ifndef POSTERN_FUZZ_UTIL_H
#define POSTERN_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond, ...)                                                   \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: invariant failed: %s: ", __FILE__, __LINE__, \
                    #cond);                                                     \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
            abort();                                                            \
        }                                                                       \
    } while (0)

/* FNV-1a over the input: the seed of everything derived from it. */
static inline uint64_t fuzz_hash(const uint8_t *data, size_t size)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    for (size_t i = 0; i < size; i++) {
        h ^= data[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* xorshift64*: cheap and deterministic. */
static inline uint64_t fuzz_next(uint64_t *state)
{
    uint64_t x = *state ? *state : 0x9e3779b97f4a7c15ULL;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dULL;
}

/*
 * Length of the next piece: mostly short (1-16 bytes: splits inside CRLF,
 * inside ".\r\n", inside a field name), sometimes up to 512, sometimes all
 * that is left.
 */
static inline size_t fuzz_piece(uint64_t *state, size_t left)
{
    uint64_t r = fuzz_next(state);
    size_t n;

    switch (r & 7) {
    case 0:
        n = left;
        break;
    case 1:
    case 2:
        n = 1 + (size_t)((r >> 8) % 512);
        break;
    default:
        n = 1 + (size_t)((r >> 8) % 16);
        break;
    }
    return n < left ? n : left;
}

/* Index of the first LF not preceded by CR, or (size_t)-1. */
static inline size_t fuzz_bare_lf(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
            return i;
    return (size_t)-1;
}

/* A copy in a buffer of exactly len bytes, so ASan sees any over-read. */
static inline char *fuzz_dup(const void *p, size_t len)
{
    char *copy = malloc(len ? len : 1);

    if (!copy)
        abort();
    if (len)
        memcpy(copy, p, len);
    return copy;
}

#endif
