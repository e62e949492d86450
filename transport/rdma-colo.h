/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * rdma-colo: one-sided RDMA page replication for COLO checkpoints.
 *
 * A session joins a primary (the side that sends dirty pages) and a
 * secondary (the side that owns the COLO cache).  It is made of one control
 * connection, which carries the region table, a reliable byte stream (for
 * QEMU's migration stream and COLO's return path) and control messages, and
 * N data channels.  Each data channel is an RC queue pair on which the
 * primary RDMA-WRITEs pages from its registered regions straight into the
 * secondary's registered regions at the same offsets, followed by a small
 * descriptor message that names them.  The secondary takes descriptors one
 * by one (rcolo_channel_recv), marks its dirty bitmap, and releases them
 * (rcolo_channel_release).  A fence (rcolo_fence) returns on the primary
 * once every page written before it on every channel is placed and its
 * descriptor released by the secondary.
 *
 * Error convention (every function): a return value >= 0 is success (0, or
 * a count where stated); a negative errno is failure.  Functions that take a
 * `struct rcolo_error *err` (may be NULL) also fill it with a one-line
 * human-readable reason on failure.  Once a session has failed (peer death,
 * QP error, rejection, rcolo_session_shutdown) every later call on it and on
 * its channels fails fast with the session's error code, and
 * rcolo_session_error() returns the first failure's text.  The library never
 * prints and never exits.
 *
 * Threads: a session runs one internal thread for connection management and
 * the control connection (stream, credits).  A data channel must be used by
 * one thread at a time; different channels may be used concurrently.  The
 * stream may be read and written from different threads at once.
 * rcolo_session_shutdown may be called from any thread at any time.
 *
 * ABI: structs the caller allocates end in reserved fields (zero), so that
 * a release can add members without changing their size; the symbol map
 * (rdmacolo.map) has one version node per release.
 */
#ifndef RDMA_COLO_H
#define RDMA_COLO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RCOLO_PROTOCOL_VERSION 6

/* Limits that bound every message on the wire (see docs/protocol.md). */
#define RCOLO_MAX_CHANNELS   64
#define RCOLO_MAX_DEPTH      1024 /* descriptors in flight per channel */
#define RCOLO_MAX_REGIONS    512
#define RCOLO_MAX_NAME       63   /* region name, bytes, without NUL */
#define RCOLO_MAX_DESC_PAGES 1024 /* normal + zero pages per descriptor */
#define RCOLO_MAX_TOKEN      256
/* Off loopback a token must have this many characters at least. */
#define RCOLO_MIN_TOKEN          16
#define RCOLO_MAX_SECRET_ID      39
#define RCOLO_MIN_TIMEOUT_MS     100
#define RCOLO_MAX_TIMEOUT_MS     3600000
#define RCOLO_DEFAULT_TIMEOUT_MS 5000
/* QP timing (since 0.8): the local ACK timeout, 4.096 us * 2^N (14: about
 * 67 ms), and how often a work request is sent again before it fails.  Not
 * 7, the field's most: soft-RoCE (rxe) takes 7 as "retry forever", as the
 * spec does only for RNR, and a cut link would then never fail a work
 * request (measured: docs/protocol.md). */
#define RCOLO_DEFAULT_ACK_TIMEOUT 14
#define RCOLO_MAX_ACK_TIMEOUT     31
#define RCOLO_DEFAULT_RETRY_COUNT 6

struct rcolo_error {
    int code; /* negative errno, as returned */
    char message[256];
};

/* ------------------------------------------------------------------ URI */

/*
 * rdma-colo:HOST:PORT[?key=value[&key=value...]]
 *   HOST   IPv4 address, hostname, or [IPv6] in brackets
 *   PORT   1..65535
 *   keys   channels=N (1..RCOLO_MAX_CHANNELS, default 4),
 *          depth=N    (2..RCOLO_MAX_DEPTH, descriptors in flight per
 *                      channel, default 64),
 *          token=T    (1..RCOLO_MAX_TOKEN bytes of [A-Za-z0-9._~-], shared by
 *                      both sides: each proves it to the other with an
 *                      HMAC over fresh nonces, never sends it; see
 *                      docs/protocol.md; off loopback at least
 *                      RCOLO_MIN_TOKEN),
 *          secret=ID  (instead of token=: the id of a secret the
 *                      application resolves into uri->token before
 *                      rcolo_listen/rcolo_connect, e.g. QEMU's
 *                      -object secret,id=ID; [A-Za-z][A-Za-z0-9._-]*, at
 *                      most RCOLO_MAX_SECRET_ID characters),
 *          insecure=on|off (default off: without a token or secret,
 *                      or with a token shorter than RCOLO_MIN_TOKEN,
 *                      rcolo_listen and rcolo_connect refuse any host but
 *                      a loopback address; on accepts that),
 *          timeout=MS (RCOLO_MIN_TIMEOUT_MS..RCOLO_MAX_TIMEOUT_MS, default
 *                      RCOLO_DEFAULT_TIMEOUT_MS: how long the peer may
 *                      withhold what it owes — credits, acknowledgements,
 *                      stream space — before the session fails with
 *                      -ETIMEDOUT; waits for the peer's next descriptor or
 *                      stream data are idle, not owed, and never time out)
 *
 *   The fabric path (since 0.7).  rdma_cm picks the RDMA device, port and
 *   GID from the route to HOST; these choose the route or check the pick:
 *          source=ADDR (primary: connect from this numeric IPv4/IPv6
 *                      address of a local RDMA interface, as rping -I)
 *          gid-index=N (primary, 0..255: connect from the address held by
 *                      GID N of the device (device=, else the one with
 *                      HOST's route) and port (ib-port=, default 1); the
 *                      session checks the QP uses that GID)
 *          tos=N      (primary, 0..255: the IP type of service / traffic
 *                      class of every connection; the secondary's QPs
 *                      answer with the same, as the CM request carries it)
 *          device=NAME (both: the RDMA device that must carry the session;
 *                      the route is checked against it)
 *          ib-port=N  (both, 1..255: its port, checked likewise)
 *   rcolo_session_get_path() says what the session uses.
 *
 *   QP timing (since 0.8), both sides, for the fabric: how fast a dead
 *   link or peer fails a work request in flight (and so the session, at
 *   once; an idle session's keepalive puts a work request in flight every
 *   timeout/4 ms):
 *          ack-timeout=N (1..RCOLO_MAX_ACK_TIMEOUT, default
 *                      RCOLO_DEFAULT_ACK_TIMEOUT: the local ACK timeout,
 *                      4.096 us * 2^N; longer links or lossy fabrics want
 *                      more)
 *          retry-count=N (1..7, default 6: times a work request is sent
 *                      again before it fails with a retry error; rxe
 *                      never fails one with 7)
 *   A work request in flight across a cut link fails after about
 *   (retry-count + 1) * 4.096 us * 2^ack-timeout (0.47 s by default); an
 *   idle session's next keepalive, at most timeout/4 later, is one: a
 *   partition ends the session in about timeout/4 + 0.5 s (1.7 s by
 *   default), at the latest after timeout= (+ a quarter).
 *   docs/protocol.md has the measured times.
 *
 * Errors quote the URI with the token's value replaced by "***"; nothing in
 * the library prints or formats the token.
 */
/*
 * The options, as bits (since 0.8): an application that takes rdma-colo
 * addresses from its users and refuses some options (QEMU: channels=,
 * which is its multifd-channels parameter) names the rest in its errors
 * with the library's own list.
 */
#define RCOLO_URI_OPT_CHANNELS    (1u << 0)
#define RCOLO_URI_OPT_DEPTH       (1u << 1)
#define RCOLO_URI_OPT_DEVICE      (1u << 2)
#define RCOLO_URI_OPT_GID_INDEX   (1u << 3)
#define RCOLO_URI_OPT_IB_PORT     (1u << 4)
#define RCOLO_URI_OPT_INSECURE    (1u << 5)
#define RCOLO_URI_OPT_SECRET      (1u << 6)
#define RCOLO_URI_OPT_SOURCE      (1u << 7)
#define RCOLO_URI_OPT_TIMEOUT     (1u << 8)
#define RCOLO_URI_OPT_TOKEN       (1u << 9)
#define RCOLO_URI_OPT_TOS         (1u << 10)
#define RCOLO_URI_OPT_ACK_TIMEOUT (1u << 11)
#define RCOLO_URI_OPT_RETRY_COUNT (1u << 12)

/* The option named by the @len bytes at @name (RCOLO_URI_OPT_*), 0 if
 * there is none of that name. */
unsigned rcolo_uri_option(const char *name, size_t len);

/* The options' names but those in @exclude (RCOLO_URI_OPT_* bits),
 * alphabetical, ", "-separated, into @buf.  Returns the length, or
 * -ENOSPC if @size is too small. */
int rcolo_uri_option_names(unsigned exclude, char *buf, size_t size);

#define RCOLO_URI_INSECURE  0x1u /* rcolo_uri.flags: insecure=on */
#define RCOLO_URI_GID_INDEX 0x2u /* gid-index= given */
#define RCOLO_URI_TOS       0x4u /* tos= given */

#define RCOLO_MAX_DEVICE_NAME 63

struct rcolo_uri {
    char host[256];
    char port[8];
    unsigned channels;
    unsigned depth;
    char token[RCOLO_MAX_TOKEN + 1]; /* any bytes but NUL; "" = none */
    unsigned timeout_ms;
    unsigned flags;                          /* RCOLO_URI_* */
    char secret_id[RCOLO_MAX_SECRET_ID + 1]; /* "" = none */
    /* The fabric path (0.7): "" / 0 / flag clear = what the route picks. */
    char source[64];                        /* numeric address */
    char device[RCOLO_MAX_DEVICE_NAME + 1]; /* RDMA device name */
    unsigned ib_port;                       /* 1..255 */
    unsigned gid_index;                     /* RCOLO_URI_GID_INDEX */
    unsigned tos;                           /* RCOLO_URI_TOS */
    /* QP timing (0.8): 0 = the default. */
    unsigned ack_timeout; /* 1..RCOLO_MAX_ACK_TIMEOUT */
    unsigned retry_count; /* 1..7 */
    uint64_t reserved[1]; /* zero; room for options without an ABI break */
};

/* Parse @text into @uri.  Returns 0 or -EINVAL (with @err filled). */
int rcolo_uri_parse(const char *text, struct rcolo_uri *uri,
                    struct rcolo_error *err);

/* Format @uri back to text (the token left out, secret= and insecure=
 * kept).  Returns the length or -ENOSPC if @size is too small. */
int rcolo_uri_format(const struct rcolo_uri *uri, char *buf, size_t size);

/* -------------------------------------------------------------- session */

struct rcolo_session;
struct rcolo_channel;

enum rcolo_role {
    RCOLO_PRIMARY = 1,
    RCOLO_SECONDARY = 2,
};

/*
 * Whether @uri may be used for a session: a token (or insecure=on, or a
 * loopback host) and no unresolved secret=.  rcolo_listen and rcolo_connect
 * check it first; an application can check an address earlier.  @role picks
 * the wording of the error (0: either).  Returns 0, -EACCES or -EINVAL.
 */
int rcolo_uri_check_auth(const struct rcolo_uri *uri, enum rcolo_role role,
                         struct rcolo_error *err);

/*
 * Secondary: bind and listen on uri->host:uri->port.  Regions may be added
 * before or after; the region table is sent to the primary once its control
 * connection is accepted (and only then: a wrong version or token is
 * rejected before any rkey leaves this process).  Returns 0 or -errno.
 */
int rcolo_listen(const struct rcolo_uri *uri, struct rcolo_session **out,
                 struct rcolo_error *err);

/* Secondary: port actually bound (useful with port 0).  Returns the port or
 * -errno. */
int rcolo_session_port(struct rcolo_session *s);

/*
 * Secondary: wait up to @timeout_ms (-1: forever) until a primary's control
 * connection is accepted and the region table sent.  Returns 0, -ETIMEDOUT,
 * or the session's error.
 */
int rcolo_accept(struct rcolo_session *s, int timeout_ms,
                 struct rcolo_error *err);

/*
 * Primary: connect the control connection and receive the region table.
 * Blocks up to @timeout_ms (-1: forever).  Returns 0 or -errno:
 * -ECONNREFUSED (nobody listening, or rejected: @err says why, e.g. wrong
 * token or version), -EHOSTUNREACH, -ETIMEDOUT, -ENODEV.
 */
int rcolo_connect(const struct rcolo_uri *uri, int timeout_ms,
                  struct rcolo_session **out, struct rcolo_error *err);

/*
 * Data channels.  Primary: connect channel @index (0..channels-1); channels
 * may be connected in any order and from different threads.  Secondary: wait
 * until the primary connected channel @index.  Both block up to
 * @timeout_ms.  The channel belongs to the session: it is destroyed with it.
 */
int rcolo_channel_connect(struct rcolo_session *s, unsigned index,
                          int timeout_ms, struct rcolo_channel **out,
                          struct rcolo_error *err);
int rcolo_channel_accept(struct rcolo_session *s, unsigned index,
                         int timeout_ms, struct rcolo_channel **out,
                         struct rcolo_error *err);

/* Number of data channels agreed for the session. */
unsigned rcolo_session_channels(const struct rcolo_session *s);

/*
 * Fail the session now (for QEMU's yank, or a COLO failover): every waiter
 * on the session, its channels and its stream wakes with -ESHUTDOWN (or the
 * error already recorded) within a second; connections are disconnected.
 * Safe from any thread, any number of times.
 */
void rcolo_session_shutdown(struct rcolo_session *s);

/*
 * Busy-poll instead of sleeping while waiting for completions on this
 * session's channels (both roles).  Meant for a checkpoint window, when
 * the guest is paused anyway and a wake-up (tens to hundreds of us) would
 * dominate a fence.  Where pollers outnumber CPUs it is counter-productive
 * (docs/benchmarks.md), so the QEMU glue does not turn it on: its fences
 * sleep after a short spin.  Safe from any thread at any time.
 */
void rcolo_session_set_busy_poll(struct rcolo_session *s, bool on);

/*
 * The same for one channel's waiters (or'ed with the session's switch).
 * Where receive threads outnumber CPUs, spinning them all starves the
 * ones with work: a secondary waiting for a session fence (rcolo_fence,
 * which arrives on channel 0) needs only channel 0's thread spinning.
 * Safe from any thread at any time (since 0.5).
 */
void rcolo_channel_set_busy_poll(struct rcolo_channel *ch, bool on);

/* 0 while healthy, otherwise the negative errno of the first failure. */
int rcolo_session_status(const struct rcolo_session *s);

/* Text of the first failure ("" while healthy).  Valid until destroy. */
const char *rcolo_session_error(const struct rcolo_session *s);

/*
 * Destroy the session, its channels and regions.  Works on sessions in any
 * state, including half-built ones and NULL.  No thread may be using the
 * session any more (call rcolo_session_shutdown and join them first).
 */
void rcolo_session_destroy(struct rcolo_session *s);

/* -------------------------------------------------------------- regions */

/*
 * Register [addr, addr+length) as region @id (any value; unique per
 * session) with an optional @name (<= RCOLO_MAX_NAME bytes, may be NULL) and
 * page size @page_size (a power of two >= 4096; length must be a multiple).
 * On the secondary the memory is registered for local and remote write
 * only, never remote read.  On the primary it is a local write source; the
 * primary may only add a region that the secondary advertised with the same
 * id, length, page size and name.  Returns 0, -EEXIST, -EINVAL, -ENOENT
 * (primary: no such remote region), -ENOMEM (memlock: @err names
 * `ulimit -l` / LimitMEMLOCK).
 */
int rcolo_region_add(struct rcolo_session *s, uint32_t id, const char *name,
                     void *addr, uint64_t length, uint32_t page_size,
                     struct rcolo_error *err);

/*
 * Secondary: send the current region table again, for regions added after
 * the primary connected (QEMU allocates the COLO cache once the migration
 * stream has started).  The primary's table is replaced; a region the
 * primary uses must stay.  Returns 0, -ENOTCONN before rcolo_accept, or the
 * session's error.
 */
int rcolo_regions_publish(struct rcolo_session *s, struct rcolo_error *err);

/* Primary: wait up to @timeout_ms until the secondary has advertised region
 * @id.  Returns 0, -ETIMEDOUT, or the session's error. */
int rcolo_region_wait(struct rcolo_session *s, uint32_t id, int timeout_ms,
                      struct rcolo_error *err);

/* Deregister region @id.  Returns 0, -ENOENT, or -EBUSY while a channel
 * uses a region (a primary's rcolo_write_pages, a secondary's receive of a
 * descriptor): the library never uses a region after it was freed, and
 * takes no lock per descriptor for it.  On the secondary, the primary must
 * have stopped writing into it (a late WRITE then fails the session, it
 * never lands elsewhere), and descriptors of it that the application holds
 * point into its own memory, which it keeps until it releases them. */
int rcolo_region_remove(struct rcolo_session *s, uint32_t id);

/* Primary: look up an advertised remote region by name; fills *id, *length
 * and *page_size.  Returns 0 or -ENOENT. */
int rcolo_region_lookup(struct rcolo_session *s, const char *name, uint32_t *id,
                        uint64_t *length, uint32_t *page_size);

/* Whether the device supports on-demand paging for RC writes (used instead
 * of pinning when it does).  Returns 1, 0, or -errno. */
int rcolo_session_odp(struct rcolo_session *s);

/* ---------------------------------------------------------- data path */

/*
 * Primary: replicate pages of region @region_id.  @offsets lists @n byte
 * offsets of pages to copy (page-aligned, inside the region); @zero lists
 * @nzero offsets of pages the secondary must zero.  Contiguous offsets are
 * coalesced into one RDMA WRITE (up to a bound); the writes are posted in
 * one chain followed by one descriptor naming every page.  Returns once
 * posted (the source pages must stay unchanged until the next fence if the
 * caller needs them exact; the library keeps no copy).  Blocks while the
 * secondary has no free descriptor slot (credits).  n + nzero may be at most
 * RCOLO_MAX_DESC_PAGES.  Returns 0 or -errno.
 */
int rcolo_write_pages(struct rcolo_channel *ch, uint32_t region_id,
                      const uint64_t *offsets, unsigned n, const uint64_t *zero,
                      unsigned nzero);

/*
 * Primary: let the pages of consecutive rcolo_write_pages() calls on @ch
 * share one descriptor of up to @max_pages pages (normal and zero, at most
 * RCOLO_MAX_DESC_PAGES; 0 or 1: one descriptor per call, the default).
 * Their WRITEs are posted at once, but the descriptor naming them goes out
 * only when it is full, before pages of another region, and before the
 * channel's next fence or barrier or the session's next fence (or at
 * rcolo_channel_flush()): the secondary's receive thread wakes up once for
 * many pages instead of once per call, and may receive descriptors of up
 * to @max_pages pages.  Nothing changes for what a fence guarantees.  Call
 * from the channel's writing thread; a pending descriptor is sent first.
 * Returns 0 or -errno (since 0.6).
 */
int rcolo_channel_set_desc_batch(struct rcolo_channel *ch, unsigned max_pages);

/* Primary: send the batched descriptor of @ch now, if pages wait for one
 * (rcolo_channel_set_desc_batch).  Returns 0 or -errno (since 0.6). */
int rcolo_channel_flush(struct rcolo_channel *ch);

/*
 * Primary: fence.  Returns once every page written on every channel of the
 * session before the call is placed in the secondary's memory and its
 * descriptor released by the secondary.  Call it with no other thread using
 * the channels (at a checkpoint).  It is one message on channel 0 and one
 * acknowledgement, which the secondary's library sends once every channel
 * released what came before (since 0.5; protocol version 5): the
 * secondary's application sees no fence descriptor for it, only its
 * ordinary releases matter, and its channel 0 thread must come back to
 * rcolo_channel_recv() for it to be read.  Channel form, for QEMU's
 * multifd sync, where
 * each channel's thread sends its own sync and the secondary's receive
 * threads take part: rcolo_channel_fence_post() then
 * rcolo_channel_fence_wait() on every channel.  Returns 0 or -errno.
 */
int rcolo_fence(struct rcolo_session *s, int timeout_ms);
int rcolo_channel_fence_post(struct rcolo_channel *ch);
int rcolo_channel_fence_wait(struct rcolo_channel *ch, int timeout_ms);

/*
 * Primary: a barrier, the fence for pages written between checkpoints.
 * rcolo_channel_fence_wait() returns once every page written on @ch before
 * it is placed and its descriptor released, exactly as for a fence; but the
 * secondary's library acknowledges it itself, without handing it to
 * rcolo_channel_recv()'s caller, whose own fence protocol (QEMU's multifd
 * sync with its main thread) is left alone.  It orders the pages before
 * the next ones written on any channel: a page written again later, maybe
 * on another channel, can never be overtaken by this older copy.  Returns 0
 * or -errno.
 */
int rcolo_channel_barrier_post(struct rcolo_channel *ch);

/* What the secondary receives. */
enum rcolo_desc_kind {
    RCOLO_DESC_PAGES = 1, /* pages were placed; mark them */
    RCOLO_DESC_FENCE = 2, /* every earlier descriptor on this channel was
                             released; releasing this one acks the fence */
};

struct rcolo_desc {
    enum rcolo_desc_kind kind;
    uint32_t region_id;
    void *region_addr; /* the secondary's own mapping of the region */
    uint32_t page_size;
    unsigned n;              /* pages written by RDMA */
    unsigned nzero;          /* pages zeroed by the library in the cache */
    const uint64_t *offsets; /* n offsets, validated */
    const uint64_t *zero;    /* nzero offsets, validated, already zeroed */
    uint64_t seq;            /* per-channel descriptor sequence number */
    void *priv_;             /* library use */
    uint64_t reserved[4];    /* zero; room without an ABI break */
};

/*
 * Secondary: wait up to @timeout_ms (-1 forever, 0 poll) for the next
 * descriptor on @ch.  The descriptor was validated (known region, aligned,
 * in bounds, counts within limits) and its zero pages cleared; an invalid
 * one fails the session with -EPROTO.  The caller marks its bitmap, then
 * calls rcolo_channel_release().  Returns 0, -EAGAIN/-ETIMEDOUT, or -errno.
 */
int rcolo_channel_recv(struct rcolo_channel *ch, struct rcolo_desc *desc,
                       int timeout_ms);

/* Secondary: hand the descriptor's buffer back (returns credits to the
 * primary; for a fence, acks it).  Returns 0 or -errno. */
int rcolo_channel_release(struct rcolo_channel *ch, struct rcolo_desc *desc);

/* A pollable fd for event loops (the channel's completion channel): after
 * rcolo_channel_recv(..., 0) returned -EAGAIN it polls readable once a
 * descriptor may be there; call rcolo_channel_recv(..., 0) again then. */
int rcolo_channel_fd(struct rcolo_channel *ch);

/* --------------------------------------------------------------- stream */

/*
 * A reliable, ordered, bidirectional byte stream over the control
 * connection.  Write copies @len bytes and returns the number of bytes
 * accepted (all of them when blocking; possibly fewer, or -EAGAIN, with
 * @nonblock).  Read returns 1..@len bytes, 0 at orderly end of stream (peer
 * called rcolo_stream_close), -EAGAIN with @nonblock when nothing is
 * buffered, or the session's error.
 */
ssize_t rcolo_stream_write(struct rcolo_session *s, const void *buf, size_t len,
                           bool nonblock);
/*
 * Write the @iovcnt elements of @iov in order, as rcolo_stream_write does
 * for one buffer, packing them into as few messages as fit (small elements
 * share one).  Returns the bytes accepted, -EAGAIN (@nonblock, nothing
 * accepted), -EINVAL for a bad @iov, or the session's error.
 */
ssize_t rcolo_stream_writev(struct rcolo_session *s, const struct iovec *iov,
                            int iovcnt, bool nonblock);
ssize_t rcolo_stream_read(struct rcolo_session *s, void *buf, size_t len,
                          bool nonblock);

/* Send end-of-stream to the peer (its reads then return 0). */
int rcolo_stream_close(struct rcolo_session *s);

/* A file descriptor that polls readable (POLLIN) while stream data, end of
 * stream or a session error is pending, and writable (POLLOUT) is not
 * signalled: writers use rcolo_stream_write blocking or retry on
 * rcolo_stream_writable(). */
int rcolo_stream_fd(struct rcolo_session *s);

/* 1 if a non-blocking write would accept at least one byte. */
int rcolo_stream_writable(struct rcolo_session *s);

/* ----------------------------------------------------------------- path */

/* The fabric path a session's control connection uses (its data channels
 * use the same device and port). */
struct rcolo_path {
    char device[RCOLO_MAX_DEVICE_NAME + 1];
    unsigned port;
    unsigned gid_index;     /* the QP's source GID index */
    unsigned traffic_class; /* in the QP's address vector */
    unsigned mtu;           /* active path MTU, bytes */
    char local[64];         /* numeric addresses */
    char remote[64];
    uint64_t reserved[4];
};

/* Fill @out once the control connection is up (rcolo_connect returned, or
 * rcolo_accept did).  Returns 0, -ENOTCONN before, or -errno. */
int rcolo_session_get_path(struct rcolo_session *s, struct rcolo_path *out);

/* ---------------------------------------------------------------- stats */

struct rcolo_channel_stats {
    uint64_t bytes; /* payload bytes RDMA-written (primary) or
                       described (secondary) */
    uint64_t pages; /* normal pages */
    uint64_t zero_pages;
    uint64_t write_wrs;    /* RDMA WRITE work requests posted */
    uint64_t descriptors;  /* descriptors sent / received */
    uint64_t credit_waits; /* times the primary waited for credits */
    uint64_t fences;
    /* Longest wait for something the peer owes on this channel (credits,
     * send-queue room, a fence acknowledgement), in ns: how close a
     * healthy session came to the stall timeout (timeout=). */
    uint64_t owed_wait_ns_max;
    uint64_t barriers; /* barriers posted (primary) or answered (secondary) */
    uint64_t reserved[6]; /* zero; room for counters without an ABI break */
};

struct rcolo_session_stats {
    struct rcolo_channel_stats total; /* sum over channels */
    uint64_t fences;
    uint64_t fence_ns_total; /* summed fence latency (primary) */
    uint64_t fence_ns_max;
    uint64_t fence_ns_last;
    uint64_t stream_bytes_sent;
    uint64_t stream_bytes_received;
    uint64_t stream_messages_sent; /* STREAM messages posted (at most
                                      64 KiB of payload each) */
    /* Longest wait for stream credits or send room on the control
     * connection, in ns (total.owed_wait_ns_max: the longest on any data
     * channel). */
    uint64_t stream_owed_wait_ns_max;
    /* Regions registered with the device now (the primary's guest RAM or
     * the secondary's COLO cache) and their bytes: what the session pins,
     * message buffers aside.  Since 0.7. */
    uint64_t regions;
    uint64_t registered_bytes;
    /* The handshake (since 0.8).  Primary: attempts at the control
     * connection that a refusal worth another try ended (a challenge that
     * expired, too many HELLOs from this address).  Secondary: challenges
     * handed out, and HELLOs refused as too many from their address. */
    uint64_t connect_retries;
    uint64_t challenges_issued;
    uint64_t hellos_slowed;
    uint64_t reserved[2]; /* zero; room for counters without an ABI break */
};

/* Copy counters.  Returns 0 or -EINVAL. */
int rcolo_channel_get_stats(struct rcolo_channel *ch,
                            struct rcolo_channel_stats *out);
int rcolo_session_get_stats(struct rcolo_session *s,
                            struct rcolo_session_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* RDMA_COLO_H */
