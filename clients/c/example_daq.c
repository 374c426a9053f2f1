/*
 * example_daq: send N synthetic 2-D frames to an astro-edge node as one series, the way a DAQ
 * would: series start, frames (a heartbeat every few), series end, close with a drain.
 *
 *   example_daq ADDRESS N [--detector-id ID] [--series-id N] [--ny N] [--nx N]
 *               [--compression none|lz4|zstd] [--sndhwm N] [--send-timeout-ms MS]
 *               [--drain-ms MS] [--heartbeat-every N] [--exposure-s S]
 *
 * Prints the client's counters as one JSON line on stdout. Exit status: 0 when every call
 * succeeded (frames the full queue refused are counted, not errors), 1 on an error, 2 on usage.
 */
#include "astro_edge_daq.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *address;
    long n_frames;
    const char *detector_id;
    uint64_t series_id;
    long ny, nx;
    ae_daq_compression compression;
    int sndhwm, send_timeout_ms, drain_ms;
    long heartbeat_every;
    double exposure_s;
} options_t;

static int usage(const char *why)
{
    fprintf(stderr, "example_daq: %s\n"
            "usage: example_daq ADDRESS N [--detector-id ID] [--series-id N] [--ny N] [--nx N]\n"
            "       [--compression none|lz4|zstd] [--sndhwm N] [--send-timeout-ms MS] [--drain-ms MS]\n"
            "       [--heartbeat-every N] [--exposure-s S]\n", why);
    return 2;
}

static int number(const char *text, long lo, long hi, long *out)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || v < lo || v > hi) {
        return -1;
    }
    *out = v;
    return 0;
}

static int parse(int argc, char **argv, options_t *o)
{
    int i;
    long v;
    if (argc < 3) {
        return usage("ADDRESS and N are required");
    }
    o->address = argv[1];
    if (number(argv[2], 0, 1000000000L, &o->n_frames) != 0) {
        return usage("N must be a number of frames >= 0");
    }
    for (i = 3; i < argc; i += 2) {
        const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (val == NULL) {
            return usage("an option lacks its value");
        }
        if (strcmp(opt, "--detector-id") == 0) {
            o->detector_id = val;
        } else if (strcmp(opt, "--series-id") == 0 && number(val, 0, 2147483647L, &v) == 0) {
            o->series_id = (uint64_t)v;
        } else if (strcmp(opt, "--ny") == 0 && number(val, 1, 65536, &v) == 0) {
            o->ny = v;
        } else if (strcmp(opt, "--nx") == 0 && number(val, 1, 65536, &v) == 0) {
            o->nx = v;
        } else if (strcmp(opt, "--sndhwm") == 0 && number(val, 1, 1000000, &v) == 0) {
            o->sndhwm = (int)v;
        } else if (strcmp(opt, "--send-timeout-ms") == 0 && number(val, 0, 3600000, &v) == 0) {
            o->send_timeout_ms = (int)v;
        } else if (strcmp(opt, "--drain-ms") == 0 && number(val, 0, 3600000, &v) == 0) {
            o->drain_ms = (int)v;
        } else if (strcmp(opt, "--heartbeat-every") == 0 && number(val, 0, 1000000000L, &v) == 0) {
            o->heartbeat_every = v;
        } else if (strcmp(opt, "--exposure-s") == 0) {
            o->exposure_s = strtod(val, NULL);
        } else if (strcmp(opt, "--compression") == 0 && strcmp(val, "none") == 0) {
            o->compression = AE_COMPRESSION_NONE;
        } else if (strcmp(opt, "--compression") == 0 && strcmp(val, "lz4") == 0) {
            o->compression = AE_COMPRESSION_LZ4;
        } else if (strcmp(opt, "--compression") == 0 && strcmp(val, "zstd") == 0) {
            o->compression = AE_COMPRESSION_ZSTD;
        } else {
            fprintf(stderr, "example_daq: bad option or value: %s %s\n", opt, val);
            return usage("see the options above");
        }
    }
    return 0;
}

/* A sky of 1000 ADU with reproducible noise, made once (a DAQ reads its frames, it does not
 * compute them: the example should queue frames as fast as a detector's readout would). */
static void sky(uint16_t *base, long ny, long nx)
{
    uint32_t state = 2463534242u;
    long i;
    for (i = 0; i < ny * nx; i++) {
        state ^= state << 13;      /* xorshift32 */
        state ^= state >> 17;
        state ^= state << 5;
        base[i] = (uint16_t)(1000u + state % 64u - 32u);
    }
}

/* The sky with three stars that move with the frame number. */
static void synthesize(uint16_t *pixels, const uint16_t *base, long ny, long nx, long frame)
{
    long s, y, x;
    memcpy(pixels, base, (size_t)(ny * nx) * sizeof *pixels);
    for (s = 0; s < 3; s++) {
        long cy = (frame * 3 + s * 17 + 5) % ny, cx = (frame * 5 + s * 29 + 7) % nx;
        for (y = cy - 3; y <= cy + 3; y++) {
            for (x = cx - 3; x <= cx + 3; x++) {
                if (y >= 0 && y < ny && x >= 0 && x < nx) {
                    double value = pixels[y * nx + x] + 8000.0 * exp(-(double)((y - cy) * (y - cy) + (x - cx) * (x - cx)) / 4.5);
                    pixels[y * nx + x] = (uint16_t)(value > 65535.0 ? 65535.0 : value);
                }
            }
        }
    }
}

int main(int argc, char **argv)
{
    options_t o = {NULL, 0, "example-daq", 1, 64, 64, AE_COMPRESSION_NONE,
                   AE_DAQ_DEFAULT_SNDHWM, 0, AE_DAQ_DEFAULT_DRAIN_MS, 10, 1.0};
    ae_daq_keyword keywords[] = {
        {"FILTER", AE_KW_STRING, "r", 0, 0.0},
        {"GAIN", AE_KW_REAL, NULL, 0, 1.5},
        {"RDNOISE", AE_KW_REAL, NULL, 0, 5.0},
        {"IMAGETYP", AE_KW_STRING, "LIGHT", 0, 0.0},
    };
    ae_daq_meta meta = {keywords, sizeof keywords / sizeof keywords[0], NULL, 0};
    ae_daq *daq;
    ae_daq_counters c;
    uint16_t *pixels, *base;
    int error = 0, rc, failed = 0, dtype = ae_daq_native_dtype('u', 2);
    long i;
    if ((rc = parse(argc, argv, &o)) != 0) {
        return rc;
    }
    pixels = (uint16_t *)malloc((size_t)o.ny * (size_t)o.nx * sizeof *pixels);
    base = (uint16_t *)malloc((size_t)o.ny * (size_t)o.nx * sizeof *base);
    if (pixels == NULL || base == NULL) {
        fprintf(stderr, "example_daq: out of memory\n");
        free(pixels);
        free(base);
        return 1;
    }
    sky(base, o.ny, o.nx);
    daq = ae_daq_open(o.address, o.detector_id, o.sndhwm, o.send_timeout_ms, &error);
    if (daq == NULL) {
        fprintf(stderr, "example_daq: cannot open %s as %s (error %d)\n", o.address, o.detector_id, error);
        free(pixels);
        free(base);
        return 1;
    }
    rc = ae_daq_series_start(daq, o.series_id, NULL, o.n_frames, &meta);
    if (rc < 0 || rc == AE_DAQ_DROPPED) {
        fprintf(stderr, "example_daq: series start: %s\n", ae_daq_error(daq));
        failed = 1;
    }
    for (i = 0; i < o.n_frames; i++) {
        synthesize(pixels, base, o.ny, o.nx, i);
        rc = ae_daq_send_frame(daq, pixels, (uint32_t)o.ny, (uint32_t)o.nx, (ae_daq_dtype)dtype,
                               o.exposure_s, NULL, o.compression, &meta);
        if (rc < 0) {
            fprintf(stderr, "example_daq: frame %ld: %s\n", i, ae_daq_error(daq));
            failed = 1;
        }
        if (o.heartbeat_every > 0 && (i + 1) % o.heartbeat_every == 0 && ae_daq_heartbeat(daq) < 0) {
            fprintf(stderr, "example_daq: heartbeat: %s\n", ae_daq_error(daq));
            failed = 1;
        }
    }
    rc = ae_daq_series_end(daq);
    if (rc < 0 || rc == AE_DAQ_DROPPED) {
        fprintf(stderr, "example_daq: series end: %s\n", ae_daq_error(daq));
        failed = 1;
    }
    c = ae_daq_get_counters(daq);
    rc = ae_daq_close(daq, o.drain_ms);
    printf("{\"frames_sent\":%" PRIu64 ",\"frames_dropped\":%" PRIu64 ",\"messages_sent\":%" PRIu64
           ",\"messages_dropped\":%" PRIu64 ",\"control_retries\":%" PRIu64 ",\"bytes_sent\":%" PRIu64
           ",\"drained\":%s}\n", c.frames_sent, c.frames_dropped, c.messages_sent, c.messages_dropped,
           c.control_retries, c.bytes_sent, rc == AE_DAQ_SENT ? "true" : "false");
    free(pixels);
    free(base);
    return failed ? 1 : 0;
}
