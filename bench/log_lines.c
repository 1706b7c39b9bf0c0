/*
 * log_lines - the CPU one log line costs (common/log.c), for the logging
 * part of issue 12: the dispatcher writes about three lines a delivery.
 *
 * Writes N lines shaped like the dispatcher's delivery line with msg_info()
 * to stderr (as under `postern run` or -f: give it a file or /dev/null)
 * and prints the process CPU time per line.  To compare two builds, link
 * each against its libcommon and run them in turns.
 *
 * usage: log_lines N 2>FILE
 */
#include "common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double cpu_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long n = argc == 2 ? atol(argv[1]) : 0;
    double t0;

    if (n <= 0) {
        fprintf(stdout, "usage: log_lines N 2>FILE\n");
        return 2;
    }
    log_init("postern-dispatch", TRUE);
    t0 = cpu_now();
    for (long i = 0; i < n; i++)
        msg_info("%016lX: to=<r%ld-4@sink.test>, relay=127.0.0.1[127.0.0.1]:25, delay=%.2f, "
                 "attempts=1, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4F2A)",
                 (unsigned long)i, i, 0.12);
    printf("%.3f us CPU per line (%ld lines)\n", (cpu_now() - t0) * 1e6 / n, n);
    return 0;
}
