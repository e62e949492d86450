/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Private types shared by the library's files.  Ownership: a session owns
 * its CM event channel, PD, regions, control connection and channels; a
 * channel owns its QP, CQ, completion channel and message buffers.
 */
#ifndef RCOLO_INTERNAL_H
#define RCOLO_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include "rdma-colo.h"
#include "wire.h"

#define container_of(ptr, type, member)                                        \
    ((type *)((char *)(ptr)-offsetof(type, member)))

/* ------------------------------------------------------------ errors */

/* Fill @err (may be NULL) and return @code (a negative errno). */
int rcolo_set_error(struct rcolo_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ------------------------------------------------------- work requests */

/*
 * Every wr_id points at one of these (SPDK style, no bit-packing): it lives
 * in the slot ring or channel it belongs to, and its tag says what the
 * work request was.
 */
enum rcolo_wr_type {
    RCOLO_WR_WRITE = 1, /* RDMA WRITE (only every k-th is signaled) */
    RCOLO_WR_SEND_SLOT, /* SEND from a message slot */
    RCOLO_WR_RECV_SLOT, /* RECV into a message slot */
};

struct rcolo_wr_ctx {
    enum rcolo_wr_type type;
    uint32_t slot;   /* slot index in its ring (SEND/RECV) */
    uint64_t sq_seq; /* send-queue sequence number of this WR */
};

/*
 * A ring of equally sized registered message slots, one wr_ctx each.
 * Used for descriptor/ctl sends and receives and the stream.
 */
struct rcolo_slots {
    uint8_t *buf;
    struct ibv_mr *mr;
    uint32_t count;
    uint32_t size;
    struct rcolo_wr_ctx *ctx;
    bool *busy;    /* send rings: posted and not yet completed */
    uint32_t next; /* send rings: next slot to try */
};

int rcolo_slots_init(struct rcolo_slots *r, struct ibv_pd *pd, uint32_t count,
                     uint32_t size, enum rcolo_wr_type type,
                     struct rcolo_error *err);
void rcolo_slots_fini(struct rcolo_slots *r);
static inline uint8_t *rcolo_slot_buf(struct rcolo_slots *r, uint32_t i)
{
    return r->buf + (size_t)i * r->size;
}
int rcolo_post_recv_slot(struct ibv_qp *qp, struct rcolo_slots *r, uint32_t i);

/* Verbs helpers (verbs.c). */
struct rcolo_qp_res {
    struct ibv_comp_channel *comp;
    struct ibv_cq *cq;
};

int rcolo_qp_create(struct rdma_cm_id *id, struct ibv_pd *pd,
                    struct rcolo_qp_res *res, uint32_t send_wr,
                    uint32_t recv_wr, struct rcolo_error *err);
void rcolo_qp_destroy(struct rdma_cm_id *id, struct rcolo_qp_res *res);
/* Arm the CQ and sleep until it has an event, @abort_fd is readable or
 * @timeout_ms passed.  Returns 1 (CQ event consumed), 0 (timeout),
 * -ECANCELED (abort) or -errno. */
int rcolo_cq_wait(struct rcolo_qp_res *res, int abort_fd, int timeout_ms);
/* Message for a failed ibv_reg_mr, naming memlock when it is the cause. */
int rcolo_reg_mr_error(struct rcolo_error *err, int errnum, uint64_t length,
                       const char *what);
void rcolo_cm_tune(struct rdma_cm_id *id);

/* Wait for one CM event of @type on a private event channel, with a
 * timeout; the event is acked.  Private data of ESTABLISHED/REJECTED is
 * copied to @pdata (up to *pdata_len, updated).  Returns 0 or -errno. */
int rcolo_cm_wait(struct rdma_event_channel *ch, enum rdma_cm_event_type type,
                  int timeout_ms, int abort_fd, void *pdata, size_t *pdata_len,
                  int *reject_status, struct rcolo_error *err);

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

struct rcolo_channel {
    struct rcolo_session *s;
    unsigned index;
    enum rcolo_chan_state state;
    struct rdma_cm_id *id;
    struct rcolo_qp_res res;
    struct rcolo_slots send; /* primary: descriptors; secondary: ctl */
    struct rcolo_slots recv; /* primary: ctl msgs; secondary: descriptors */
    uint32_t sq_depth;
    uint64_t sq_posted;            /* WRs posted */
    uint64_t sq_done;              /* WRs known complete */
    struct rcolo_wr_ctx write_ctx; /* every RDMA WRITE's wr_id */
    uint32_t signal_every;
    /* sq_posted value of each signaled WR, oldest first: send completions
     * come in order, so each one pops the next and moves sq_done. */
    uint64_t *sig_fifo;
    uint32_t sig_head, sig_count;
    uint64_t seq; /* descriptors sent / received */

    /* Primary. */
    struct rcolo_credits credits;
    uint64_t fence_posted; /* seq of the last fence sent, 0 = none */
    uint64_t fence_acked;
    struct ibv_send_wr *wrs; /* preallocated chain */
    struct ibv_sge *sges;
    struct rcolo_run *runs;
    struct rcolo_region *last_region;

    /* Secondary. */
    struct rcolo_credit_return credit_return;
    uint64_t *offsets;    /* per recv slot: decoded offsets */
    struct ibv_wc *ready; /* recv completions polled, not yet handed out
                             (one per receive slot at most) */
    unsigned ready_head, ready_count;
    unsigned held; /* descriptors handed out, not released */
    bool fence_ack_pending;
    uint64_t fence_ack_seq;

    struct rcolo_channel_stats stats;
};

/* ------------------------------------------------------------ session */

enum rcolo_session_state {
    RCOLO_SESSION_NEW = 0,
    RCOLO_SESSION_LISTENING, /* secondary, before the control connection */
    RCOLO_SESSION_ACCEPTING, /* secondary, control REQ accepted */
    RCOLO_SESSION_READY,     /* control up, region table exchanged */
    RCOLO_SESSION_FAILED,
};

#define RCOLO_STREAM_SLOTS     16
#define RCOLO_STREAM_SLOT_SIZE (64 * 1024 + RCOLO_HDR_LEN)
#define RCOLO_STREAM_PAYLOAD   (RCOLO_STREAM_SLOT_SIZE - RCOLO_HDR_LEN)
/* Extra receive slots for credit-only messages, which need no credit:
 * at most SLOTS / batch of them can be in flight, plus an end marker. */
#define RCOLO_STREAM_EXTRA 8

struct rcolo_stream {
    struct rcolo_credits credits; /* peer's free data slots */
    struct rcolo_credit_return credit_return;
    /* Received STREAM messages waiting for the reader, FIFO of slots. */
    uint32_t ready[RCOLO_STREAM_SLOTS + RCOLO_STREAM_EXTRA];
    uint32_t ready_head, ready_count;
    uint32_t read_off; /* bytes consumed in the head slot */
    bool eof;          /* peer sent STREAM_END */
    bool fd_signaled;
    int fd;                     /* eventfd: readable while data/eof/error */
    pthread_mutex_t write_lock; /* one writer at a time */
};

struct rcolo_session {
    enum rcolo_role role;
    struct rcolo_uri uri;
    uint8_t token_hash[RCOLO_TOKEN_HASH_LEN];
    uint64_t nonce;
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
    int wake_fd;  /* eventfd: pokes the session thread */
    int abort_fd; /* eventfd: readable once the session failed */

    pthread_mutex_t lock;
    pthread_cond_t cond;
    enum rcolo_session_state state;
    int status;
    char error[256];
    bool busy_poll; /* atomic: spin instead of sleeping */

    /* Control connection. */
    struct rdma_cm_id *ctl_id;
    struct rcolo_qp_res ctl_res;
    struct rcolo_slots ctl_send;
    struct rcolo_slots ctl_recv;
    bool ctl_established;
    bool table_received;
    struct rcolo_stream stream;

    struct rcolo_channel *chan[RCOLO_MAX_CHANNELS];

    GHashTable *regions;               /* id -> struct rcolo_region * */
    struct rcolo_region_entry *remote; /* primary: advertised table */
    int nremote;

    struct rcolo_session_stats stats;
};

/* session.c */
int rcolo_session_fail(struct rcolo_session *s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int rcolo_session_fail_locked(struct rcolo_session *s, int code,
                              const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
struct rcolo_session *rcolo_session_new(enum rcolo_role role,
                                        const struct rcolo_uri *uri);
int rcolo_session_start_thread(struct rcolo_session *s,
                               struct rcolo_error *err);
int rcolo_session_wait_locked(struct rcolo_session *s, int64_t deadline_ns);
int64_t rcolo_now_ns(void);
int64_t rcolo_deadline(int timeout_ms);
int rcolo_deadline_ms(int64_t deadline);

/* region.c */
int rcolo_region_register(struct rcolo_session *s, struct rcolo_region *r,
                          struct rcolo_error *err);
int rcolo_regions_register_all(struct rcolo_session *s,
                               struct rcolo_error *err);
void rcolo_region_free(gpointer p);
int rcolo_region_table_build(struct rcolo_session *s, uint8_t *buf, size_t size,
                             size_t *len);
int rcolo_region_table_send_locked(struct rcolo_session *s, int64_t deadline);

/* channel.c */
int rcolo_channel_setup(struct rcolo_channel *ch, struct rcolo_error *err);
void rcolo_channel_free(struct rcolo_channel *ch);

/* stream.c */
int rcolo_stream_init(struct rcolo_session *s, struct rcolo_error *err);
void rcolo_stream_fini(struct rcolo_session *s);
/* Session thread: a control-connection completion arrived. */
void rcolo_ctl_completion(struct rcolo_session *s, struct ibv_wc *wc);
void rcolo_stream_update_fd_locked(struct rcolo_session *s);
/* Post a control message from slot payload already written (locked). */
int rcolo_ctl_post_send_locked(struct rcolo_session *s, uint32_t slot,
                               uint32_t len);
int rcolo_ctl_get_send_slot_locked(struct rcolo_session *s, int64_t deadline,
                                   uint32_t *slot);

/* test hooks */
extern enum rcolo_test_hook rcolo_test_hook_armed;

#endif /* RCOLO_INTERNAL_H */
