/*
 * fuzz_wire - the SJOB and SDONE decoders of common/wire.h
 * (common/wire_job.c), on what a worker or a dispatcher could be sent.
 *
 * Checked: the input is decoded as both; a refusal says why (WIRE_ERROR);
 * what is taken encodes again to exactly the input (the layout has one
 * encoding of each value, so nothing was skipped or misread); the
 * sanitizers see no read past the end.
 */
#include <stdint.h>
#include <string.h>

#include "common/wire.h"
#include "fuzz_util.h"

static void same_bytes(GBytes *again, const uint8_t *data, size_t size, const char *what)
{
    gsize len;
    const void *p = g_bytes_get_data(again, &len);

    FUZZ_CHECK(len == size && (size == 0 || memcmp(p, data, size) == 0),
               "%s of %zu bytes encodes again to %zu other bytes", what, size, len);
    g_bytes_unref(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    GBytes *in = g_bytes_new(data, size);
    struct wire_send_job job;
    struct wire_send_result res;
    GError *err = NULL;

    if (wire_send_job_decode(in, &job, &err)) {
        FUZZ_CHECK(err == NULL, "GError set on success");
        same_bytes(wire_send_job_encode(&job), data, size, "SJOB");
    } else {
        FUZZ_CHECK(err != NULL && err->domain == WIRE_ERROR, "refused without a WIRE_ERROR");
        g_clear_error(&err);
    }
    wire_send_job_clear(&job);
    if (wire_send_result_decode(in, &res, &err)) {
        FUZZ_CHECK(err == NULL, "GError set on success");
        same_bytes(wire_send_result_encode(&res), data, size, "SDONE");
    } else {
        FUZZ_CHECK(err != NULL && err->domain == WIRE_ERROR, "refused without a WIRE_ERROR");
        g_clear_error(&err);
    }
    wire_send_result_clear(&res);
    g_bytes_unref(in);
    return 0;
}
