/*
 * astro_edge_daq.c: the reference DAQ client of the astro-edge frame protocol (docs/protocol.md).
 *
 * Builds as C99 or C11 with -Wall -Wextra -Werror -pedantic against libzmq and libxxhash;
 * lz4 and zstd payloads when built with AE_DAQ_WITH_LZ4 / AE_DAQ_WITH_ZSTD (clients/c/Makefile
 * turns each on when pkg-config finds the library).
 */
/* clock_gettime and gmtime_r are POSIX, hidden by a strict -std=c99 / -std=c11 without this */
#define _POSIX_C_SOURCE 200809L

#include "astro_edge_daq.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <xxhash.h>
#include <zmq.h>

#ifdef AE_DAQ_WITH_LZ4
#include <lz4frame.h>
#endif
#ifdef AE_DAQ_WITH_ZSTD
#include <zstd.h>
#endif

#define MAX_HEADER_BYTES 65536
#define MAX_ID_CHARS 64
#define MAX_KEYWORDS 512
#define MAX_STRING_VALUE_CHARS 68
#define MAX_INT63 INT64_MAX
#define UTC_CHARS 40

struct ae_daq {
    void *ctx;
    void *sock;
    char detector_id[MAX_ID_CHARS + 1];
    int send_timeout_ms;
    int control_retry_ms;
    uint64_t series_id;
    uint64_t next_seq;
    int series_open;
    uint64_t series_sent_base;     /* frames_sent when the series started */
    uint64_t series_dropped_base;  /* frames_dropped when the series started */
    ae_daq_counters counters;
    char error[256];
};

static const struct { const char *name; size_t size; } DTYPES[] = {
    {"|u1", 1}, {"|i1", 1},
    {"<u2", 2}, {">u2", 2}, {"<i2", 2}, {">i2", 2},
    {"<u4", 4}, {">u4", 4}, {"<i4", 4}, {">i4", 4},
    {"<f4", 4}, {">f4", 4}, {"<f8", 8}, {">f8", 8},
};
#define N_DTYPES ((int)(sizeof DTYPES / sizeof DTYPES[0]))

static const char *const COMPRESSION_NAMES[] = {"none", "lz4", "zstd"};

/* ------------------------------------------------------------------------------------------ */
/* errors */

static int fail(ae_daq *d, int code, const char *fmt, ...)
{
    va_list ap;
    if (d != NULL) {
        va_start(ap, fmt);
        vsnprintf(d->error, sizeof d->error, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *ae_daq_error(const ae_daq *d)
{
    return d == NULL ? "no client" : d->error;
}

/* ------------------------------------------------------------------------------------------ */
/* a growing text buffer for one header, bounded by the protocol's 65 536 bytes */

typedef struct {
    char *data;
    size_t len;
    size_t cap;
    int failed;     /* out of memory, or over MAX_HEADER_BYTES */
} text_t;

static void text_reserve(text_t *t, size_t extra)
{
    size_t want;
    char *grown;
    if (t->failed) {
        return;
    }
    want = t->len + extra + 1;
    if (want > MAX_HEADER_BYTES + 1) {
        t->failed = 1;
        return;
    }
    if (want <= t->cap) {
        return;
    }
    if (want < 2 * t->cap) {
        want = 2 * t->cap;
    }
    if (want < 512) {
        want = 512;
    }
    grown = (char *)realloc(t->data, want);
    if (grown == NULL) {
        t->failed = 1;
        return;
    }
    t->data = grown;
    t->cap = want;
}

static void text_add(text_t *t, const char *s, size_t n)
{
    text_reserve(t, n);
    if (t->failed) {
        return;
    }
    memcpy(t->data + t->len, s, n);
    t->len += n;
    t->data[t->len] = '\0';
}

static void text_puts(text_t *t, const char *s)
{
    text_add(t, s, strlen(s));
}

static void text_printf(text_t *t, const char *fmt, ...)
{
    char small[64];
    int n;
    va_list ap;
    va_start(ap, fmt);
    n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof small) {   /* every number written here fits in 64 chars */
        t->failed = 1;
        return;
    }
    text_add(t, small, (size_t)n);
}

size_t ae_daq_json_escape(char *out, size_t cap, const char *in)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    const unsigned char *p;
    char esc[7];
    size_t k, i;
    for (p = (const unsigned char *)in; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            k = 2;
        } else if (*p < 0x20 || *p == 0x7f) {
            esc[0] = '\\';
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[*p >> 4];
            esc[5] = hex[*p & 0x0f];
            k = 6;
        } else {
            esc[0] = (char)*p;   /* UTF-8 bytes of other characters pass as they are */
            k = 1;
        }
        for (i = 0; i < k; i++, n++) {
            if (cap > 0 && n < cap - 1) {
                out[n] = esc[i];
            }
        }
    }
    if (cap > 0) {
        out[n < cap - 1 ? n : cap - 1] = '\0';
    }
    return n;
}

static void text_json_string(text_t *t, const char *s)
{
    size_t need = ae_daq_json_escape(NULL, 0, s);
    text_reserve(t, need + 2);
    if (t->failed) {
        return;
    }
    t->data[t->len++] = '"';
    ae_daq_json_escape(t->data + t->len, need + 1, s);
    t->len += need;
    t->data[t->len++] = '"';
    t->data[t->len] = '\0';
}

static void text_key(text_t *t, const char *key)
{
    if (t->len > 1) {   /* after "{" */
        text_puts(t, ",");
    }
    text_json_string(t, key);
    text_puts(t, ":");
}

/* A finite double as a JSON number: the shortest of %.15g / %.17g that reads back exactly, with
 * the locale's decimal separator (a DAQ may run under a locale that writes "30,5") put back to '.'. */
static void text_real(text_t *t, double value)
{
    char buf[40];
    char point = localeconv()->decimal_point[0];
    char *c;
    snprintf(buf, sizeof buf, "%.15g", value);
    if (strtod(buf, NULL) != value) {
        snprintf(buf, sizeof buf, "%.17g", value);
    }
    for (c = buf; *c != '\0'; c++) {
        if (*c == point && point != '.') {
            *c = '.';
        }
    }
    if (strpbrk(buf, ".e") == NULL) {   /* 5.0 stays a real ("5.0"), as a FITS value of its own type */
        strcat(buf, ".0");
    }
    text_puts(t, buf);
}

/* ------------------------------------------------------------------------------------------ */
/* validation, as the receiver checks it (docs/protocol.md 2.1, 2.3) */

static int valid_detector_id(const char *s)
{
    size_t n = 0;
    if (s == NULL) {
        return 0;
    }
    for (; s[n] != '\0'; n++) {
        if ((unsigned char)s[n] < 0x21 || (unsigned char)s[n] > 0x7e || n >= MAX_ID_CHARS) {
            return 0;
        }
    }
    return n >= 1;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* "YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z" */
static int valid_utc(const char *s)
{
    static const char form[] = "dddd-dd-ddTdd:dd:dd";
    size_t i, frac = 0;
    if (s == NULL || strlen(s) < sizeof form) {
        return 0;
    }
    for (i = 0; i < sizeof form - 1; i++) {
        if (form[i] == 'd' ? !is_digit(s[i]) : s[i] != form[i]) {
            return 0;
        }
    }
    if (s[i] == '.') {
        for (i++; is_digit(s[i]); i++) {
            frac++;
        }
        if (frac < 1 || frac > 9) {
            return 0;
        }
    }
    return s[i] == 'Z' && s[i + 1] == '\0';
}

static int utc_now(char out[UTC_CHARS])
{
    struct timespec ts;
    struct tm tm;
    size_t n;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0 || gmtime_r(&ts.tv_sec, &tm) == NULL) {
        return -1;
    }
    n = strftime(out, UTC_CHARS, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, UTC_CHARS - n, ".%06ldZ", (long)(ts.tv_nsec / 1000));
    return 0;
}

static int time_or_now(ae_daq *d, const char *given, char out[UTC_CHARS], const char *key)
{
    if (given == NULL) {
        return utc_now(out) == 0 ? 0 : fail(d, AE_DAQ_ERR_ARG, "%s: the clock cannot be read", key);
    }
    if (!valid_utc(given)) {
        return fail(d, AE_DAQ_ERR_ARG, "%s %.40s is not YYYY-MM-DDTHH:MM:SS[.f]Z", key, given);
    }
    snprintf(out, UTC_CHARS, "%s", given);
    return 0;
}

static int check_keywords(ae_daq *d, const ae_daq_keyword *kw, size_t n, const char *key)
{
    size_t i, j, len;
    const char *name;
    if (n > 0 && kw == NULL) {
        return fail(d, AE_DAQ_ERR_ARG, "%s: %zu keywords but no array", key, n);
    }
    if (n > MAX_KEYWORDS) {
        return fail(d, AE_DAQ_ERR_ARG, "%s: %zu keywords, over the limit of %d", key, n, MAX_KEYWORDS);
    }
    for (i = 0; i < n; i++) {
        name = kw[i].name;
        len = name == NULL ? 0 : strlen(name);
        if (len < 1 || len > 8) {
            return fail(d, AE_DAQ_ERR_ARG, "%s: keyword %zu has a name of %zu characters (1-8)", key, i, len);
        }
        for (j = 0; j < len; j++) {
            char c = name[j];
            if (!((c >= 'A' && c <= 'Z') || is_digit(c) || c == '_' || c == '-')) {
                return fail(d, AE_DAQ_ERR_ARG, "%s: keyword %.8s is not of A-Z 0-9 _ -", key, name);
            }
        }
        switch (kw[i].type) {
        case AE_KW_STRING:
            if (kw[i].string == NULL || strlen(kw[i].string) > MAX_STRING_VALUE_CHARS) {
                return fail(d, AE_DAQ_ERR_ARG, "%s: value of %s is not a string of at most %d characters",
                            key, name, MAX_STRING_VALUE_CHARS);
            }
            for (j = 0; kw[i].string[j] != '\0'; j++) {
                if ((unsigned char)kw[i].string[j] < 0x20 || (unsigned char)kw[i].string[j] > 0x7e) {
                    return fail(d, AE_DAQ_ERR_ARG, "%s: value of %s is not printable ASCII", key, name);
                }
            }
            break;
        case AE_KW_REAL:
            if (!isfinite(kw[i].real)) {
                return fail(d, AE_DAQ_ERR_ARG, "%s: value of %s is not finite", key, name);
            }
            break;
        case AE_KW_INT:
        case AE_KW_BOOL:
            break;
        default:
            return fail(d, AE_DAQ_ERR_ARG, "%s: keyword %s has an unknown type", key, name);
        }
    }
    return 0;
}

static void text_keywords(text_t *t, const char *key, const ae_daq_keyword *kw, size_t n)
{
    size_t i;
    if (n == 0) {
        return;
    }
    text_key(t, key);
    text_puts(t, "{");
    for (i = 0; i < n; i++) {
        if (i > 0) {
            text_puts(t, ",");
        }
        text_json_string(t, kw[i].name);
        text_puts(t, ":");
        switch (kw[i].type) {
        case AE_KW_STRING: text_json_string(t, kw[i].string); break;
        case AE_KW_INT: text_printf(t, "%" PRId64, kw[i].integer); break;
        case AE_KW_REAL: text_real(t, kw[i].real); break;
        case AE_KW_BOOL: text_puts(t, kw[i].integer ? "true" : "false"); break;
        }
    }
    text_puts(t, "}");
}

/* ------------------------------------------------------------------------------------------ */
/* sending */

static double monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Queue one message (header, and payload when has_payload) without blocking past bound_ms:
 * while the queue is full, wait for room and try again until bound_ms has passed. */
static int send_message(ae_daq *d, const text_t *header, const void *payload, size_t payload_len,
                        int has_payload, int bound_ms, uint64_t *waits)
{
    double deadline = monotonic_ms() + (bound_ms > 0 ? bound_ms : 0);
    double left;
    zmq_pollitem_t item;
    for (;;) {
        if (zmq_send(d->sock, header->data, header->len, ZMQ_DONTWAIT | (has_payload ? ZMQ_SNDMORE : 0)) >= 0) {
            break;
        }
        if (zmq_errno() == EINTR) {
            continue;
        }
        if (zmq_errno() != EAGAIN) {
            return fail(d, AE_DAQ_ERR_ZMQ, "send: %s", zmq_strerror(zmq_errno()));
        }
        left = deadline - monotonic_ms();
        if (left <= 0) {
            return AE_DAQ_DROPPED;
        }
        if (waits != NULL) {
            (*waits)++;
        }
        item.socket = d->sock;
        item.fd = 0;
        item.events = ZMQ_POLLOUT;
        item.revents = 0;
        if (zmq_poll(&item, 1, (long)ceil(left)) < 0 && zmq_errno() != EINTR) {
            return fail(d, AE_DAQ_ERR_ZMQ, "poll: %s", zmq_strerror(zmq_errno()));
        }
    }
    /* a multipart message is queued whole once its first part is: this part is never refused */
    while (has_payload && zmq_send(d->sock, payload, payload_len, ZMQ_DONTWAIT) < 0) {
        if (zmq_errno() != EINTR) {
            return fail(d, AE_DAQ_ERR_ZMQ, "send payload: %s", zmq_strerror(zmq_errno()));
        }
    }
    return AE_DAQ_SENT;
}

/* series start, series end, heartbeat: retried while the queue is full, up to control_retry_ms */
static int send_control(ae_daq *d, text_t *header)
{
    int rc;
    if (header->failed) {
        free(header->data);
        return fail(d, AE_DAQ_ERR_NOMEM, "header: out of memory or over %d bytes", MAX_HEADER_BYTES);
    }
    rc = send_message(d, header, NULL, 0, 0, d->control_retry_ms, &d->counters.control_retries);
    free(header->data);
    if (rc == AE_DAQ_SENT) {
        d->counters.messages_sent++;
    } else if (rc == AE_DAQ_DROPPED) {
        d->counters.messages_dropped++;
        fail(d, AE_DAQ_DROPPED, "the queue stayed full for %d ms", d->control_retry_ms);
    }
    return rc;
}

static void header_start(text_t *t, const char *htype, const ae_daq *d)
{
    text_puts(t, "{");
    text_key(t, "htype");
    text_json_string(t, htype);
    text_key(t, "detector_id");
    text_json_string(t, d->detector_id);
}

/* ------------------------------------------------------------------------------------------ */
/* the public calls */

ae_daq *ae_daq_open_setup(const char *address, const char *detector_id, int sndhwm,
                          int send_timeout_ms, int (*setup)(void *socket, void *arg), void *arg,
                          int *error)
{
    ae_daq *d;
    int zero = 0, one = 1, idle_s = 30, interval_s = 10, probes = 3, ivl_ms = 100, ivl_max_ms = 5000;
    int code = AE_DAQ_ERR_ZMQ;
    if (error != NULL) {
        *error = 0;
    }
    if (address == NULL || !valid_detector_id(detector_id) || send_timeout_ms < 0) {
        if (error != NULL) {
            *error = AE_DAQ_ERR_ARG;
        }
        return NULL;
    }
    d = (ae_daq *)calloc(1, sizeof *d);
    if (d == NULL) {
        if (error != NULL) {
            *error = AE_DAQ_ERR_NOMEM;
        }
        return NULL;
    }
    snprintf(d->detector_id, sizeof d->detector_id, "%s", detector_id);
    d->send_timeout_ms = send_timeout_ms;
    d->control_retry_ms = AE_DAQ_DEFAULT_CONTROL_RETRY_MS;
    if (sndhwm <= 0) {
        sndhwm = AE_DAQ_DEFAULT_SNDHWM;
    }
    d->ctx = zmq_ctx_new();
    d->sock = d->ctx == NULL ? NULL : zmq_socket(d->ctx, ZMQ_PUSH);
    if (d->sock == NULL
        || zmq_setsockopt(d->sock, ZMQ_SNDHWM, &sndhwm, sizeof sndhwm) != 0
        || zmq_setsockopt(d->sock, ZMQ_LINGER, &zero, sizeof zero) != 0
        /* dead peers: keepalive and backed-off reconnects; no ZMTP heartbeats (docs/protocol.md 1) */
        || zmq_setsockopt(d->sock, ZMQ_TCP_KEEPALIVE, &one, sizeof one) != 0
        || zmq_setsockopt(d->sock, ZMQ_TCP_KEEPALIVE_IDLE, &idle_s, sizeof idle_s) != 0
        || zmq_setsockopt(d->sock, ZMQ_TCP_KEEPALIVE_INTVL, &interval_s, sizeof interval_s) != 0
        || zmq_setsockopt(d->sock, ZMQ_TCP_KEEPALIVE_CNT, &probes, sizeof probes) != 0
        || zmq_setsockopt(d->sock, ZMQ_RECONNECT_IVL, &ivl_ms, sizeof ivl_ms) != 0
        || zmq_setsockopt(d->sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max_ms, sizeof ivl_max_ms) != 0) {
        goto failed;
    }
    if (setup != NULL && setup(d->sock, arg) != 0) {
        code = AE_DAQ_ERR_ARG;
        goto failed;
    }
    if (zmq_connect(d->sock, address) != 0) {
        code = zmq_errno() == EINVAL || zmq_errno() == EPROTONOSUPPORT ? AE_DAQ_ERR_ARG : AE_DAQ_ERR_ZMQ;
        goto failed;
    }
    return d;
failed:
    if (d->sock != NULL) {
        zmq_close(d->sock);
    }
    if (d->ctx != NULL) {
        zmq_ctx_term(d->ctx);
    }
    free(d);
    if (error != NULL) {
        *error = code;
    }
    return NULL;
}

ae_daq *ae_daq_open(const char *address, const char *detector_id, int sndhwm, int send_timeout_ms,
                    int *error)
{
    return ae_daq_open_setup(address, detector_id, sndhwm, send_timeout_ms, NULL, NULL, error);
}

void ae_daq_set_control_retry_ms(ae_daq *d, int retry_ms)
{
    d->control_retry_ms = retry_ms > 0 ? retry_ms : 0;
}

int ae_daq_series_start(ae_daq *d, uint64_t series_id, const char *start_utc,
                        int64_t expected_frames, const ae_daq_meta *meta)
{
    char when[UTC_CHARS];
    text_t t = {NULL, 0, 0, 0};
    int rc;
    if (series_id > (uint64_t)MAX_INT63) {
        return fail(d, AE_DAQ_ERR_ARG, "series_id %" PRIu64 " is over 2^63-1", series_id);
    }
    if ((rc = time_or_now(d, start_utc, when, "start_utc")) != 0) {
        return rc;
    }
    if (meta != NULL && (rc = check_keywords(d, meta->keywords, meta->n_keywords, "keywords")) != 0) {
        return rc;
    }
    d->series_id = series_id;
    d->next_seq = 0;
    d->series_open = 1;
    d->series_sent_base = d->counters.frames_sent;
    d->series_dropped_base = d->counters.frames_dropped;
    header_start(&t, "astro-edge-series-start-1.0", d);
    text_key(&t, "series_id");
    text_printf(&t, "%" PRIu64, series_id);
    text_key(&t, "start_utc");
    text_json_string(&t, when);
    if (expected_frames >= 0) {
        text_key(&t, "expected_frames");
        text_printf(&t, "%" PRId64, expected_frames);
    }
    if (meta != NULL) {
        text_keywords(&t, "keywords", meta->keywords, meta->n_keywords);
    }
    text_puts(&t, "}");
    return send_control(d, &t);
}

int ae_daq_series_end(ae_daq *d)
{
    char when[UTC_CHARS];
    text_t t = {NULL, 0, 0, 0};
    int rc;
    if (!d->series_open) {
        return fail(d, AE_DAQ_ERR_STATE, "no series is open");
    }
    if ((rc = time_or_now(d, NULL, when, "end_utc")) != 0) {
        return rc;
    }
    d->series_open = 0;
    header_start(&t, "astro-edge-series-end-1.0", d);
    text_key(&t, "series_id");
    text_printf(&t, "%" PRIu64, d->series_id);
    text_key(&t, "end_utc");
    text_json_string(&t, when);
    text_key(&t, "frames_sent");
    text_printf(&t, "%" PRIu64, d->counters.frames_sent - d->series_sent_base);
    text_key(&t, "frames_dropped");
    text_printf(&t, "%" PRIu64, d->counters.frames_dropped - d->series_dropped_base);
    text_puts(&t, "}");
    return send_control(d, &t);
}

int ae_daq_heartbeat(ae_daq *d)
{
    char when[UTC_CHARS];
    text_t t = {NULL, 0, 0, 0};
    int rc;
    if ((rc = time_or_now(d, NULL, when, "time_utc")) != 0) {
        return rc;
    }
    header_start(&t, "astro-edge-heartbeat-1.0", d);
    text_key(&t, "time_utc");
    text_json_string(&t, when);
    text_key(&t, "frames_sent");
    text_printf(&t, "%" PRIu64, d->counters.frames_sent);
    text_key(&t, "frames_dropped");
    text_printf(&t, "%" PRIu64, d->counters.frames_dropped);
    text_puts(&t, "}");
    return send_control(d, &t);
}

/* The payload as sent: the pixels, or a new buffer (*owned) of their lz4 / zstd frame, which
 * records the pixel bytes as its content size. */
static int make_payload(ae_daq *d, const void *pixels, size_t nbytes, ae_daq_compression compression,
                        const void **payload, size_t *payload_len, void **owned)
{
    *owned = NULL;
    *payload = pixels;
    *payload_len = nbytes;
    if (compression == AE_COMPRESSION_NONE) {
        return 0;
    }
#ifdef AE_DAQ_WITH_LZ4
    if (compression == AE_COMPRESSION_LZ4) {
        LZ4F_preferences_t prefs;
        size_t cap, n;
        memset(&prefs, 0, sizeof prefs);
        prefs.frameInfo.contentSize = (unsigned long long)nbytes;
        cap = LZ4F_compressFrameBound(nbytes, &prefs);
        if ((*owned = malloc(cap)) == NULL) {
            return fail(d, AE_DAQ_ERR_NOMEM, "lz4: cannot allocate %zu bytes", cap);
        }
        n = LZ4F_compressFrame(*owned, cap, pixels, nbytes, &prefs);
        if (LZ4F_isError(n)) {
            return fail(d, AE_DAQ_ERR_COMPRESS, "lz4: %s", LZ4F_getErrorName(n));
        }
        *payload = *owned;
        *payload_len = n;
        return 0;
    }
#endif
#ifdef AE_DAQ_WITH_ZSTD
    if (compression == AE_COMPRESSION_ZSTD) {
        size_t cap = ZSTD_compressBound(nbytes), n;
        if ((*owned = malloc(cap)) == NULL) {
            return fail(d, AE_DAQ_ERR_NOMEM, "zstd: cannot allocate %zu bytes", cap);
        }
        n = ZSTD_compress(*owned, cap, pixels, nbytes, 3);   /* writes the content size */
        if (ZSTD_isError(n)) {
            return fail(d, AE_DAQ_ERR_COMPRESS, "zstd: %s", ZSTD_getErrorName(n));
        }
        *payload = *owned;
        *payload_len = n;
        return 0;
    }
#endif
    return fail(d, AE_DAQ_ERR_COMPRESS, "%s was not built into this client",
                COMPRESSION_NAMES[compression]);
}

static int compression_built_in(ae_daq_compression compression)
{
    switch (compression) {
    case AE_COMPRESSION_NONE: return 1;
#ifdef AE_DAQ_WITH_LZ4
    case AE_COMPRESSION_LZ4: return 1;
#endif
#ifdef AE_DAQ_WITH_ZSTD
    case AE_COMPRESSION_ZSTD: return 1;
#endif
    default: return 0;
    }
}

int ae_daq_send_frame(ae_daq *d, const void *pixels, uint32_t ny, uint32_t nx, ae_daq_dtype dtype,
                      double exposure_s, const char *start_utc, ae_daq_compression compression,
                      const ae_daq_meta *meta)
{
    char when[UTC_CHARS];
    text_t t = {NULL, 0, 0, 0};
    const void *payload;
    size_t payload_len, nbytes;
    void *owned;
    uint64_t seq, bytes64;
    int rc;
    if (pixels == NULL || ny < 1 || nx < 1) {
        return fail(d, AE_DAQ_ERR_ARG, "a frame needs pixels and ny, nx >= 1");
    }
    if ((int)dtype < 0 || (int)dtype >= N_DTYPES) {
        return fail(d, AE_DAQ_ERR_ARG, "dtype %d is not one of the protocol's", (int)dtype);
    }
    if (!(exposure_s >= 0.0 && exposure_s <= 1e7)) {   /* also refuses NaN */
        return fail(d, AE_DAQ_ERR_ARG, "exposure_s %g is not a time in [0, 1e7] s", exposure_s);
    }
    if ((int)compression < 0 || (int)compression > AE_COMPRESSION_ZSTD || !compression_built_in(compression)) {
        return fail(d, AE_DAQ_ERR_COMPRESS, "compression %d is not built into this client", (int)compression);
    }
    bytes64 = (uint64_t)ny * nx * DTYPES[dtype].size;
    if (bytes64 > (uint64_t)INT_MAX) {   /* libzmq reports a part's length as an int */
        return fail(d, AE_DAQ_ERR_ARG, "frame of %" PRIu64 " bytes; at most %d", bytes64, INT_MAX);
    }
    nbytes = (size_t)bytes64;
    if ((rc = time_or_now(d, start_utc, when, "start_utc")) != 0) {
        return rc;
    }
    if (meta != NULL && ((rc = check_keywords(d, meta->wcs, meta->n_wcs, "wcs")) != 0
                         || (rc = check_keywords(d, meta->keywords, meta->n_keywords, "keywords")) != 0)) {
        return rc;
    }
    /* from here the frame was acquired: its seq is used whether it leaves or not */
    seq = d->next_seq++;
    rc = make_payload(d, pixels, nbytes, compression, &payload, &payload_len, &owned);
    if (rc == 0) {
        header_start(&t, "astro-edge-frame-1.0", d);
        text_key(&t, "series_id");
        text_printf(&t, "%" PRIu64, d->series_id);
        text_key(&t, "seq");
        text_printf(&t, "%" PRIu64, seq);
        text_key(&t, "start_utc");
        text_json_string(&t, when);
        text_key(&t, "exposure_s");
        text_real(&t, exposure_s);
        text_key(&t, "shape");
        text_printf(&t, "[%" PRIu32 ",%" PRIu32 "]", ny, nx);
        text_key(&t, "dtype");
        text_json_string(&t, DTYPES[dtype].name);
        text_key(&t, "compression");
        text_json_string(&t, COMPRESSION_NAMES[compression]);
        text_key(&t, "checksum_algorithm");
        text_json_string(&t, "xxh3-64");
        text_key(&t, "checksum");
        text_printf(&t, "\"%016" PRIx64 "\"", (uint64_t)XXH3_64bits(payload, payload_len));
        if (meta != NULL) {
            text_keywords(&t, "wcs", meta->wcs, meta->n_wcs);
            text_keywords(&t, "keywords", meta->keywords, meta->n_keywords);
        }
        text_puts(&t, "}");
        rc = t.failed ? fail(d, AE_DAQ_ERR_NOMEM, "header: out of memory or over %d bytes", MAX_HEADER_BYTES)
                      : send_message(d, &t, payload, payload_len, 1, d->send_timeout_ms, NULL);
    }
    if (rc == AE_DAQ_SENT) {
        d->counters.frames_sent++;
        d->counters.bytes_sent += t.len + payload_len;
    } else {
        d->counters.frames_dropped++;
        if (rc == AE_DAQ_DROPPED) {
            fail(d, AE_DAQ_DROPPED, "frame %" PRIu64 " dropped: the queue was full", seq);
        }
    }
    free(t.data);
    free(owned);
    return rc;
}

int ae_daq_close(ae_daq *d, int drain_ms)
{
    double started;
    int rc;
    if (d == NULL) {
        return AE_DAQ_SENT;
    }
    if (drain_ms < 0) {
        drain_ms = 0;
    }
    /* the socket's linger is how long zmq_ctx_term waits for queued messages to leave; with the
     * default 0 a close straight after the last send discards what is still queued */
    zmq_setsockopt(d->sock, ZMQ_LINGER, &drain_ms, sizeof drain_ms);
    zmq_close(d->sock);
    started = monotonic_ms();
    while (zmq_ctx_term(d->ctx) != 0 && zmq_errno() == EINTR) {
    }
    rc = monotonic_ms() - started >= (double)drain_ms ? AE_DAQ_UNDRAINED : AE_DAQ_SENT;
    free(d);
    return rc;
}

ae_daq_counters ae_daq_get_counters(const ae_daq *d)
{
    return d->counters;
}

uint64_t ae_daq_series_id(const ae_daq *d)
{
    return d->series_id;
}

uint64_t ae_daq_next_seq(const ae_daq *d)
{
    return d->next_seq;
}

int ae_daq_native_dtype(char kind, int bytes)
{
    const uint16_t probe = 1;
    int little = *(const unsigned char *)&probe == 1;
    switch (bytes) {
    case 1:
        return kind == 'u' ? AE_DTYPE_U1 : kind == 'i' ? AE_DTYPE_I1 : -1;
    case 2:
        return kind == 'u' ? (little ? AE_DTYPE_U2_LE : AE_DTYPE_U2_BE)
             : kind == 'i' ? (little ? AE_DTYPE_I2_LE : AE_DTYPE_I2_BE) : -1;
    case 4:
        return kind == 'u' ? (little ? AE_DTYPE_U4_LE : AE_DTYPE_U4_BE)
             : kind == 'i' ? (little ? AE_DTYPE_I4_LE : AE_DTYPE_I4_BE)
             : kind == 'f' ? (little ? AE_DTYPE_F4_LE : AE_DTYPE_F4_BE) : -1;
    case 8:
        return kind == 'f' ? (little ? AE_DTYPE_F8_LE : AE_DTYPE_F8_BE) : -1;
    default:
        return -1;
    }
}

const char *ae_daq_dtype_name(ae_daq_dtype dtype)
{
    return (int)dtype >= 0 && (int)dtype < N_DTYPES ? DTYPES[dtype].name : "";
}

size_t ae_daq_dtype_size(ae_daq_dtype dtype)
{
    return (int)dtype >= 0 && (int)dtype < N_DTYPES ? DTYPES[dtype].size : 0;
}
