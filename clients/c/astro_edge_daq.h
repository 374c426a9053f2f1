/*
 * astro_edge_daq.h: the reference DAQ client of the astro-edge frame protocol, version 1.0
 * (docs/protocol.md), in C99 over libzmq and libxxhash.
 *
 * One ae_daq owns one ZeroMQ PUSH socket (and its own context) that connects to a node's PULL
 * socket. Frames are sent without blocking acquisition: when the socket's queue is full a frame
 * is dropped and counted, its sequence number used all the same, so the node sees the drop as a
 * gap and the series end accounts for it. Series start, series end and heartbeats are retried
 * while the queue is full, up to a bound. ae_daq_close() drains the queue for a bounded time so
 * that nothing reported as sent is discarded by the close itself.
 *
 * "Sent" (return value AE_DAQ_SENT, counter frames_sent) means queued in this process's socket:
 * the message leaves through ZeroMQ's I/O thread. There is no acknowledgement in the protocol;
 * the node's receiver counters say what arrived.
 *
 * Not thread-safe: use one ae_daq from one thread (ZeroMQ sockets are not thread-safe).
 * Build: see clients/c/Makefile (`./build.sh build-c` from the repository root).
 */
#ifndef ASTRO_EDGE_DAQ_H
#define ASTRO_EDGE_DAQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Results. AE_DAQ_SENT and AE_DAQ_DROPPED are outcomes, negative values are errors. */
#define AE_DAQ_SENT 0           /* queued in the socket                                     */
#define AE_DAQ_DROPPED 1        /* the queue stayed full (EAGAIN): dropped and counted       */
#define AE_DAQ_UNDRAINED 2      /* close: the drain time ran out; queued messages discarded  */
#define AE_DAQ_ERR_ARG (-1)     /* an argument breaks the protocol (see ae_daq_error)        */
#define AE_DAQ_ERR_ZMQ (-2)     /* libzmq failed (see ae_daq_error)                          */
#define AE_DAQ_ERR_NOMEM (-3)   /* out of memory                                             */
#define AE_DAQ_ERR_COMPRESS (-4) /* the compressor failed, or was not built in               */
#define AE_DAQ_ERR_STATE (-5)   /* e.g. a series end with no series open                     */

/* Defaults of the protocol's reference sender. */
#define AE_DAQ_DEFAULT_SNDHWM 4
#define AE_DAQ_DEFAULT_CONTROL_RETRY_MS 1000
#define AE_DAQ_DEFAULT_DRAIN_MS 5000

/* Pixel types, as the header's dtype names them: byte order, kind, bytes per pixel. */
typedef enum {
    AE_DTYPE_U1, AE_DTYPE_I1,
    AE_DTYPE_U2_LE, AE_DTYPE_U2_BE, AE_DTYPE_I2_LE, AE_DTYPE_I2_BE,
    AE_DTYPE_U4_LE, AE_DTYPE_U4_BE, AE_DTYPE_I4_LE, AE_DTYPE_I4_BE,
    AE_DTYPE_F4_LE, AE_DTYPE_F4_BE, AE_DTYPE_F8_LE, AE_DTYPE_F8_BE
} ae_daq_dtype;

typedef enum { AE_COMPRESSION_NONE, AE_COMPRESSION_LZ4, AE_COMPRESSION_ZSTD } ae_daq_compression;

/* One FITS keyword of a frame's `keywords` or `wcs` object (docs/protocol.md 2.3). */
typedef enum { AE_KW_STRING, AE_KW_INT, AE_KW_REAL, AE_KW_BOOL } ae_daq_kw_type;
typedef struct {
    const char *name;       /* 1-8 of A-Z 0-9 _ -                                  */
    ae_daq_kw_type type;
    const char *string;     /* AE_KW_STRING: printable ASCII, at most 68 chars     */
    int64_t integer;        /* AE_KW_INT; AE_KW_BOOL: 0 false, otherwise true      */
    double real;            /* AE_KW_REAL: finite                                  */
} ae_daq_keyword;

/* Optional FITS metadata of a frame or series start; any pointer may be NULL. */
typedef struct {
    const ae_daq_keyword *keywords;
    size_t n_keywords;
    const ae_daq_keyword *wcs;      /* frames only */
    size_t n_wcs;
} ae_daq_meta;

/* What the client did since it was opened. */
typedef struct {
    uint64_t frames_sent;       /* frames queued                                           */
    uint64_t frames_dropped;    /* frames not queued (queue full, or a send error)         */
    uint64_t messages_sent;     /* series starts, series ends and heartbeats queued        */
    uint64_t messages_dropped;  /* the same, still refused when the retry bound ran out    */
    uint64_t control_retries;   /* times a series start, series end or heartbeat waited    */
    uint64_t bytes_sent;        /* header and payload bytes of the frames queued           */
} ae_daq_counters;

typedef struct ae_daq ae_daq;

/* Connect to a node (it binds). detector_id: 1-64 printable ASCII characters, no space.
 * sndhwm: messages (not bytes) the socket queues before refusing; <= 0 means 4.
 * send_timeout_ms: how long a frame may wait for room before it is dropped; 0: never wait.
 * Returns NULL on failure, with *error (if not NULL) set to an AE_DAQ_ERR_ code. */
ae_daq *ae_daq_open(const char *address, const char *detector_id, int sndhwm,
                    int send_timeout_ms, int *error);

/* As ae_daq_open, calling setup(socket, arg) on the PUSH socket before it connects (CURVE keys:
 * ZMQ_CURVE_PUBLICKEY, ZMQ_CURVE_SECRETKEY, ZMQ_CURVE_SERVERKEY). A non-zero return fails. */
ae_daq *ae_daq_open_setup(const char *address, const char *detector_id, int sndhwm,
                          int send_timeout_ms, int (*setup)(void *socket, void *arg), void *arg,
                          int *error);

/* How long series start, series end and heartbeats keep retrying a full queue (default 1000 ms;
 * 0: a single try). */
void ae_daq_set_control_retry_ms(ae_daq *d, int retry_ms);

/* Open a series: frames that follow carry series_id and count seq from 0.
 * start_utc: NULL for now, or "YYYY-MM-DDTHH:MM:SS[.f]Z" (a re-sent series gives its original).
 * expected_frames: < 0 leaves it out. meta: NULL, or keywords (wcs is ignored). */
int ae_daq_series_start(ae_daq *d, uint64_t series_id, const char *start_utc,
                        int64_t expected_frames, const ae_daq_meta *meta);

/* Send one 2-D frame of ny x nx pixels, C order, in the byte order dtype names. The pixels are
 * copied (or compressed) before the call returns. start_utc: NULL for now. meta may be NULL.
 * Returns AE_DAQ_SENT, AE_DAQ_DROPPED, or an error; the sequence number advances for a sent or
 * dropped frame, not for an argument error. */
int ae_daq_send_frame(ae_daq *d, const void *pixels, uint32_t ny, uint32_t nx, ae_daq_dtype dtype,
                      double exposure_s, const char *start_utc, ae_daq_compression compression,
                      const ae_daq_meta *meta);

/* Tell the node the DAQ is alive, with cumulative counts since the client opened. */
int ae_daq_heartbeat(ae_daq *d);

/* Close the series: frames_sent and frames_dropped of this series. */
int ae_daq_series_end(ae_daq *d);

/* Wait at most drain_ms (>= 0) for queued messages to leave, then close and free d.
 * Returns AE_DAQ_SENT when the queue drained, AE_DAQ_UNDRAINED when the time ran out. */
int ae_daq_close(ae_daq *d, int drain_ms);

/* Counters, the current series id and the next sequence number. */
ae_daq_counters ae_daq_get_counters(const ae_daq *d);
uint64_t ae_daq_series_id(const ae_daq *d);
uint64_t ae_daq_next_seq(const ae_daq *d);

/* The last error's message ("" when none). */
const char *ae_daq_error(const ae_daq *d);

/* The dtype of the host's own byte order: kind 'u', 'i' or 'f', bytes 1, 2, 4 or 8.
 * Returns -1 for a combination the protocol does not carry. */
int ae_daq_native_dtype(char kind, int bytes);

/* The dtype's name in the header ("<u2" ...), and its bytes per pixel. */
const char *ae_daq_dtype_name(ae_daq_dtype dtype);
size_t ae_daq_dtype_size(ae_daq_dtype dtype);

/* Write `in` (NUL-terminated UTF-8) as the body of a JSON string into out (capacity cap, NUL
 * terminated): `"` and `\` escaped, control characters and DEL as \u00XX, other bytes as they
 * are. Returns the length the escaped text needs (without NUL), as snprintf does. */
size_t ae_daq_json_escape(char *out, size_t cap, const char *in);

#ifdef __cplusplus
}
#endif

#endif /* ASTRO_EDGE_DAQ_H */
