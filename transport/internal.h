/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The library's objects and the functions each layer offers the one above
 * (docs/design.md, "Library layers").  Calls go downwards only:
 *
 *   session.c    lifecycle, session thread, public session API
 *   handshake.c  challenge, REQ checks, accept/reject; connect, channels
 *   stream.c     the byte stream API
 *   receive.c    secondary: descriptors in, release, credits and acks
 *   fence.c      the session fence, both sides
 *   write.c      primary: RDMA WRITE + descriptor, credits, channel fences
 *   channel.c    data channels: set-up, completions, waits, send slots
 *   ctl.c        control connection: messages, stream queues, region table
 *   path.c       the fabric path: address resolution, path options
 *   region.c     the PD, registration, the region tables
 *   verbs.c      QPs, CQs, slot rings, CM waits           (verbs.h)
 *   uri.c wire.c flow.c   pure: URI, encodings, flow control
 *   core.c       time, errors, failure state, the wait    (core.h)
 *
 * Ownership: a session owns its CM event channel, PD, regions, control
 * connection and channels; a channel owns its QP, CQ, completion channel
 * and message buffers.
 */
#ifndef RCOLO_INTERNAL_H
#define RCOLO_INTERNAL_H

#include <glib.h>

#include "core.h"
#include "flow.h"
#include "rdma-colo.h"
#include "verbs.h"
#include "wire.h"

/* uri.c: 127.0.0.0/8, ::1 or localhost (the only hosts a session without
 * a token may use unless insecure=on). */
bool rcolo_host_is_loopback(const char *host);
/* @sa is a loopback address (IPv4 127/8, ::1, v4-mapped 127/8). */
bool rcolo_sockaddr_is_loopback(const struct sockaddr *sa);
/* @uri authenticates nothing that loopback does not (no token, or one
 * shorter than RCOLO_MIN_TOKEN, and not insecure=on): its host and every
 * address it resolves to must be loopback. */
bool rcolo_uri_needs_loopback(const struct rcolo_uri *uri);

/* ------------------------------------------------------------ regions */

struct rcolo_region {
    uint32_t id;
    char name[RCOLO_MAX_NAME + 1];
    uint8_t *addr;
    uint64_t length;
    uint32_t page_size;
    struct ibv_mr *mr; /* NULL until the PD exists (secondary) */
    /* Primary: the matching remote region. */
    uint64_t remote_addr;
    uint32_t rkey;
};

/* ------------------------------------------------------------ channel */

enum rcolo_chan_state {
    RCOLO_CHAN_NONE = 0,
    RCOLO_CHAN_CONNECTING,
    RCOLO_CHAN_ESTABLISHED,
};

/* Primary: RDMA WRITEs and descriptors out, CREDIT/FENCE_ACK in. */
struct rcolo_chan_tx {
    struct rcolo_credits credits; /* the secondary's free descriptor slots */
    struct rcolo_fence_tx fence;
    uint64_t seq;                  /* descriptors sent */
    struct rcolo_wr_ctx write_ctx; /* every RDMA WRITE's wr_id */
    struct ibv_send_wr *wrs;       /* preallocated chain */
    struct ibv_sge *sges;
    struct rcolo_run *runs;
    /* Descriptor batching (rcolo_channel_set_desc_batch): pages whose
     * WRITEs are posted but whose descriptor is not sent yet.  It goes out
     * when it holds batch_pages pages, before pages of another region, and
     * before every fence, barrier or session fence (flush_desc).  Owned by
     * the channel's writing thread, like the rest of tx. */
    unsigned batch_pages; /* 0: one descriptor per rcolo_write_pages */
    struct rcolo_pending_desc {
        uint32_t region_id;
        unsigned n, nzero;
        uint64_t *offsets; /* RCOLO_MAX_DESC_PAGES each */
        uint64_t *zero;
    } pend;
};

/* Secondary: descriptors in, CREDIT/FENCE_ACK out. */
struct rcolo_chan_rx {
    struct rcolo_rx_flow flow;
    uint64_t *offsets; /* per recv slot: decoded offsets */
    /* Receive completions polled, not yet handed out (at most one per
     * receive slot). */
    struct ibv_wc *ready;
    struct rcolo_fifo ready_q;
    /* Every descriptor up to this seq is released (atomic, sequentially
     * consistent: written by the channel's thread, read by every channel's
     * for the session fence; see struct rcolo_sfence_rx). */
    uint64_t done_seq;
};

struct rcolo_channel {
    struct rcolo_session *s;
    struct rcolo_core *core; /* the session's */
    enum rcolo_role role;
    unsigned index;
    enum rcolo_chan_state state; /* under the session lock */
    int64_t accept_deadline;     /* secondary, CONNECTING: RTU owed by */
    /* The region of the last descriptor (a cache; rcolo_chan_region) and
     * whether one is being used now (a primary's rcolo_write_pages, a
     * secondary's decoding of a descriptor): rcolo_region_remove clears the
     * first and refuses while the second is set (atomics, sequentially
     * consistent).  No session lock per descriptor. */
    struct rcolo_region *region_cache;
    uint32_t region_busy;
    struct rdma_cm_id *id;
    struct rcolo_qp_res res;
    struct rcolo_slots send; /* primary: descriptors; secondary: ctl */
    struct rcolo_slots recv; /* primary: ctl msgs; secondary: descriptors */
    struct rcolo_sq sq;
    bool busy_poll; /* atomic: rcolo_channel_set_busy_poll */
    union {
        struct rcolo_chan_tx tx; /* role == RCOLO_PRIMARY */
        struct rcolo_chan_rx rx; /* role == RCOLO_SECONDARY */
    };
    struct rcolo_channel_stats stats;
};

/*
 * Secondary: the session fence (rcolo_fence) waiting for its ack.  Lock
 * rules, no lock: channel 0's thread writes @target, then @pending; every
 * channel's thread, after a release that leaves it holding no descriptor,
 * stores its done_seq and then reads @pending (both sequentially
 * consistent), so of a release and an arriving fence at least one sees the
 * other (a Dekker pair); the ack goes out once, from the thread whose
 * compare-and-swap clears @pending.  The primary sends the next session
 * fence only after this ack, so @target is never rewritten under a reader
 * that can still clear @pending.
 */
struct rcolo_sfence_rx {
    uint64_t pending; /* seq of the session fence on channel 0; 0: none */
    uint64_t target[RCOLO_MAX_CHANNELS];
};

/* ------------------------------------------------- control connection */

#define RCOLO_STREAM_SLOT_SIZE (64 * 1024 + RCOLO_HDR_LEN)
#define RCOLO_STREAM_PAYLOAD   (RCOLO_STREAM_SLOT_SIZE - RCOLO_HDR_LEN)
#define RCOLO_CTL_RECV         (RCOLO_STREAM_SLOTS + RCOLO_STREAM_EXTRA)
/* Send slots (a power of two), twice the credits: credits often come back
 * before the completions of the SENDs they pay for are reaped, and a sender
 * with credits but no slot waits for a session thread wake-up (16 slots for
 * 16 credits made the COLO qtests 40 % slower than 32). */
#define RCOLO_CTL_SEND 32

/* The control connection and the stream on it; under the session lock. */
struct rcolo_ctl {
    struct rdma_cm_id *id;
    struct rcolo_qp_res res;
    struct rcolo_slots send;
    struct rcolo_slots recv;
    bool established;
    bool table_received; /* primary */
    /* Stream, sending side. */
    struct rcolo_credits credits; /* the peer's free stream slots */
    /* Stream, receiving side. */
    struct rcolo_credit_return credit_return;
    uint32_t ready[32]; /* STREAM messages for the reader: slot FIFO */
    struct rcolo_fifo ready_q;
    uint32_t read_off; /* bytes consumed in the head slot */
    bool eof;          /* peer sent STREAM_END */
    bool fd_signaled;
    /*
     * Keepalive (rcolo_ctl_keepalive_locked): one ping at a time, answered
     * by the peer's session thread, so a peer whose process stopped is
     * noticed even when nothing else is owed (a COLO reply awaited on the
     * stream is not).  Times are rcolo_now_ns(); 0: not yet / none.
     */
    int64_t ka_next;            /* when the next ping goes */
    int64_t ka_sent;            /* when the unanswered ping went */
    bool ka_reply_owed;         /* the peer's ping is not answered yet */
    int fd;                     /* eventfd: readable while data/eof/error */
    pthread_mutex_t write_lock; /* one writer at a time */
};

/* ------------------------------------------------------------ session */

/*
 * The secondary's challenges (HELLO's answers, wire.h: stateless).  Their
 * expiries are ms since @epoch, their serial the count of @issued; a
 * challenge is single-use through @used, which only a primary that proved
 * the token adds to, so no flood fills it (a wrong proof uses nothing up,
 * but costs its address a HELLO).  HELLOs are limited per
 * source address (@bucket: a token bucket each, addresses hashed onto
 * them), so that a flood from one address does not keep the session
 * thread from the others.  Session thread, under core.lock.
 */
#define RCOLO_USED_CHALLENGES 8
#define RCOLO_HELLO_BUCKETS   64
#define RCOLO_HELLO_BURST     16 /* HELLOs at once from one address */
#define RCOLO_HELLO_RATE      16 /* a second, after the burst */
struct rcolo_used_challenge {
    uint8_t nonce[RCOLO_NONCE_LEN];
    bool set;
};
struct rcolo_hello_bucket {
    double tokens;
    int64_t stamp; /* rcolo_now_ns() of the last HELLO; 0: none yet */
};
struct rcolo_challenges {
    bool ready; /* @key made (at the first HELLO) */
    uint8_t key[RCOLO_CHALLENGE_KEY_LEN];
    int64_t epoch;
    struct rcolo_used_challenge used[RCOLO_USED_CHALLENGES];
    unsigned next_used;
    struct rcolo_hello_bucket bucket[RCOLO_HELLO_BUCKETS];
    uint64_t issued, slowed; /* challenges handed out, HELLOs slowed down */
};

enum rcolo_session_state {
    RCOLO_SESSION_NEW = 0,
    RCOLO_SESSION_LISTENING, /* secondary, before the control connection */
    RCOLO_SESSION_ACCEPTING, /* secondary, control REQ accepted */
    RCOLO_SESSION_READY,     /* control up, region table exchanged */
    RCOLO_SESSION_FAILED,
};

struct rcolo_session {
    struct rcolo_core core; /* lock, failure state */
    enum rcolo_role role;
    struct rcolo_uri uri;
    /* The handshake's nonces (wire.h): the secondary's challenge and the
     * primary's, fixed when the control connection is accepted.  Every
     * data channel's MAC covers both, so no REQ of another session (or a
     * replay of this one's control REQ) opens a channel. */
    uint8_t snonce[RCOLO_NONCE_LEN];
    uint8_t cnonce[RCOLO_NONCE_LEN];
    /* Secondary: its challenges (session thread, under core.lock). */
    struct rcolo_challenges chal;
    unsigned channels;
    unsigned depth;

    struct rdma_event_channel *cm;
    struct rdma_cm_id *listen_id;
    struct ibv_context *verbs;
    struct ibv_pd *pd;
    int odp; /* 1/0 once probed, -1 before */

    pthread_t thread;
    bool thread_started;
    bool thread_stop;
    int wake_fd; /* eventfd: pokes the session thread */
    /* An async event of this session's that any session's thread read:
     * its ibv_event_type + 1, 0 none (atomic; session.c). */
    int async_event;

    /* Under core.lock from here on. */
    enum rcolo_session_state state;
    int64_t accept_deadline; /* ACCEPTING: the primary owes ESTABLISHED */
    struct rcolo_ctl ctl;
    struct rcolo_channel *chan[RCOLO_MAX_CHANNELS];
    /* The session fence (rcolo_fence): primary, the one outstanding, used
     * only by the thread in rcolo_fence (its contract: no other thread on
     * the channels); secondary, see struct rcolo_sfence_rx. */
    struct rcolo_fence_tx sfence_tx;
    struct rcolo_sfence_rx sfence_rx;
    GHashTable *regions;               /* id -> struct rcolo_region * */
    struct rcolo_region_entry *remote; /* primary: advertised table */
    int nremote;
    struct rcolo_session_stats stats;
};

/* region.c (callers hold the session lock where it says _locked) */
/* The session's PD on @verbs (the first device a connection uses; a later
 * one must use the same) and every region registered on it. */
int rcolo_regions_attach(struct rcolo_session *s, struct ibv_context *verbs,
                         struct rcolo_error *err);
int rcolo_region_register(struct rcolo_session *s, struct rcolo_region *r,
                          struct rcolo_error *err);
int rcolo_regions_register_all(struct rcolo_session *s,
                               struct rcolo_error *err);
void rcolo_region_free(gpointer p);
/* The registered region @id, or NULL. */
struct rcolo_region *rcolo_region_find_locked(struct rcolo_session *s,
                                              uint32_t id);
int rcolo_region_table_build_locked(struct rcolo_session *s, uint8_t *buf,
                                    size_t size, size_t *len);
/* Primary: install a region table the secondary sent (decoded). */
void rcolo_region_table_set_locked(struct rcolo_session *s,
                                   struct rcolo_region_entry *table, int n);

/* ctl.c */
int rcolo_ctl_setup(struct rcolo_session *s, struct rdma_cm_id *id,
                    struct rcolo_error *err);
void rcolo_ctl_teardown(struct rcolo_session *s);
/* Session thread: the control CQ has an event. */
void rcolo_ctl_poll(struct rcolo_session *s);
/* Secondary: send the region table (a stream slot: waits for a credit and
 * a send slot until @deadline). */
int rcolo_ctl_send_table_locked(struct rcolo_session *s, int64_t deadline);
/* Stream: wait for a send slot (and a peer credit if @credit), or return
 * -EAGAIN at once if @nonblock.  Returns the slot or -errno. */
int rcolo_ctl_acquire_locked(struct rcolo_session *s, bool credit,
                             bool nonblock);
/* Post the STREAM / STREAM_END message already written after the header in
 * @slot (@len payload bytes), with the credits owed to the peer. */
int rcolo_ctl_post_stream_locked(struct rcolo_session *s, int slot,
                                 uint8_t type, uint32_t len);
/* Stream reader: the oldest STREAM message, or NULL if none. */
const uint8_t *rcolo_ctl_stream_head_locked(struct rcolo_session *s,
                                            uint32_t *payload);
/* Stream reader: the oldest STREAM message is consumed. */
void rcolo_ctl_stream_pop_locked(struct rcolo_session *s);
bool rcolo_ctl_stream_pending_locked(struct rcolo_session *s);
void rcolo_ctl_update_fd_locked(struct rcolo_session *s);
/* Send a due ping or reply, fail the session on an unanswered ping; returns
 * how long the session thread may sleep (ms, -1: no keepalive yet). */
int rcolo_ctl_keepalive_locked(struct rcolo_session *s);

/* path.c */
/* @uri's address (RAI_PASSIVE for a listener) for rdma_cm. */
int rcolo_path_resolve(const struct rcolo_uri *uri, bool passive,
                       struct rdma_addrinfo **res, struct rcolo_error *err);
/* The options of the fabric path that @role may take, and whether device=
 * and ib-port= exist on this host. */
int rcolo_path_check_options(const struct rcolo_uri *uri, enum rcolo_role role,
                             struct rcolo_error *err);
/* Primary: the source address (source=, or the address gid-index= holds)
 * for a secondary of address @family: 1 with @src filled, 0 if none. */
int rcolo_path_source(const struct rcolo_uri *uri, int family,
                      struct sockaddr_storage *src, struct rcolo_error *err);
/* @id's device and port (resolved or bound) against device= and ib-port=;
 * @route names the path in the error ("the route to HOST"). */
int rcolo_path_check_id(const struct rcolo_uri *uri, enum rcolo_role role,
                        struct rdma_cm_id *id, const char *route,
                        struct rcolo_error *err);
/* Connected @id's QP uses the GID gid-index= asked for. */
int rcolo_path_check_qp(const struct rcolo_uri *uri, struct rdma_cm_id *id,
                        struct rcolo_error *err);

/* channel.c */
struct rcolo_channel *rcolo_channel_new(struct rcolo_session *s,
                                        unsigned index);
int rcolo_channel_setup(struct rcolo_channel *ch, struct rcolo_error *err);
void rcolo_channel_free(struct rcolo_channel *ch);

/* Busy-poll this long before sleeping on the completion channel: the next
 * completion often follows within microseconds, and a sleep/wake-up costs
 * more.  A fence waits longer: it is on the checkpoint's critical path. */
#define RCOLO_SPIN_NS       20000
#define RCOLO_FENCE_SPIN_NS 200000

/*
 * Channel counters have one writer, the channel's thread, and are read by
 * any thread (rcolo_*_get_stats): relaxed atomic loads and stores, no
 * locked instruction on the data path, no torn or racy read.
 */
static inline void rcolo_stat_add(uint64_t *counter, uint64_t n)
{
    __atomic_store_n(counter, __atomic_load_n(counter, __ATOMIC_RELAXED) + n,
                     __ATOMIC_RELAXED);
}

/* The region @id for a descriptor of @ch, without the session lock when
 * it is the last one's.  Only while @ch->region_busy is set. */
struct rcolo_region *rcolo_chan_region(struct rcolo_channel *ch, uint32_t id);
/* Fail the session: "data channel N: @what@detail". */
int rcolo_chan_fail(struct rcolo_channel *ch, int code, const char *what,
                    const char *detail);
/* The peer withheld what it owes for the owed deadline: fail the session
 * with -ETIMEDOUT, "the secondary @what for N ms". */
int rcolo_chan_stalled(struct rcolo_channel *ch, const char *what);
/*
 * Poll the CQ once.  Send completions free send-queue room and slots;
 * receive completions are control messages (primary, handled now) or
 * descriptors (secondary, queued for receive.c).  Returns the number of
 * completions seen or the session error.
 */
int rcolo_chan_progress(struct rcolo_channel *ch);
/* Wait on this channel's completions until @done(@ch) or @deadline. */
int rcolo_chan_wait(struct rcolo_channel *ch, bool (*done)(void *arg),
                    int64_t deadline, int64_t spin_ns);
/* Wait, until the session's owed deadline, for something the peer owes
 * (@done(@arg)), and note how long it took. */
int rcolo_chan_owed_wait(struct rcolo_channel *ch, bool (*done)(void *arg),
                         void *arg, int64_t spin_ns);
/* Remember the longest wait for something the peer owes (credits,
 * send-queue room, a fence acknowledgement) since @start: it tells an
 * operator how much margin the stall timeout (timeout=) has. */
void rcolo_chan_note_owed_wait(struct rcolo_channel *ch, int64_t start);
/* A send slot (in @slot) and send-queue room for @wrs WRs, the SEND
 * included, waiting (owed) for completions if need be. */
int rcolo_chan_reserve_send(struct rcolo_channel *ch, uint32_t wrs, int *slot);
/* Send-queue room for @wrs WRs, without a slot. */
int rcolo_chan_reserve_sq(struct rcolo_channel *ch, uint32_t wrs);
/* Post the SEND of @len bytes in slot @slot, signaled, after the @nchain
 * RDMA WRITEs already built in @wrs/@sges (which have room for one more). */
int rcolo_chan_post_send(struct rcolo_channel *ch, uint32_t slot, uint32_t len,
                         struct ibv_send_wr *wrs, struct ibv_sge *sges,
                         unsigned nchain);

/* write.c */
/* Primary: send the batched descriptor, if pages wait for one. */
int rcolo_chan_flush_desc(struct rcolo_channel *ch);
/* Primary: the slot of a descriptor without pages (a fence, a barrier, a
 * session fence): the batched descriptor goes first (the control
 * descriptor orders after it), then a credit and a send slot. */
int rcolo_chan_control_slot(struct rcolo_channel *ch, int *slot);

/* fence.c, secondary (called by receive.c) */
/* A session fence arrived on channel 0: check and install it.  Returns 0
 * or the session's error. */
int rcolo_sfence_install(struct rcolo_channel *ch,
                         const struct rcolo_desc_view *v);
/* After a release left a channel holding nothing: the session fence's seq
 * if every channel has now released what it names and this thread won the
 * right to ack it, else 0. */
uint64_t rcolo_sfence_claim(struct rcolo_session *s);

/* handshake.c (called by session.c) */
/* Secondary, session thread, lock held: a CM connect request.  Returns an
 * id to destroy once the event is acked, or NULL. */
struct rdma_cm_id *rcolo_handshake_request(struct rcolo_session *s,
                                           struct rdma_cm_event *ev);
/* Primary: the control connection, authenticated both ways. */
int rcolo_handshake_connect(struct rcolo_session *s, int64_t deadline,
                            struct rcolo_error *err);

#endif /* RCOLO_INTERNAL_H */
