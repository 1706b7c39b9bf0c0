/*
 * unsub_header - the CPU one copy's List-Unsubscribe lines cost
 * (common/unsub_code.c, unsub_header_make()), for issue 11's mailto short
 * code: with [unsubscribe] one_click the transform makes them once per
 * copy, both forms (the https link's full code, the mailto form's code).
 *
 * Makes them N times for a 60-byte address on list "styret" and prints
 * the process CPU time per copy.  To compare two builds, link each
 * against its libcommon (or its common/unsub_code.c) and run them in
 * turns; under valgrind --tool=callgrind the instruction count is the
 * repeatable figure.
 *
 * usage: unsub_header N
 */
#include "common/unsub_code.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double cpu_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    static const char key[] = "bench-unsubscribe-secret-0123456789";
    long n = argc == 2 ? atol(argv[1]) : 0;
    size_t bytes = 0;
    double t0;

    if (n <= 0) {
        fprintf(stdout, "usage: unsub_header N\n");
        return 2;
    }
    t0 = cpu_now();
    for (long i = 0; i < n; i++) {
        char *h = unsub_header_make(key, sizeof key - 1, "styret",
                                    "firstname.middlename.lastname.department@mail.example.org.uk",
                                    "https://lists.abakus.no", "unsubscribe@abakus.no");

        bytes += strlen(h);
        g_free(h);
    }
    printf("%.3f us CPU per copy (%ld copies, %zu bytes each)\n", (cpu_now() - t0) * 1e6 / n, n,
           bytes / (size_t)n);
    return 0;
}
