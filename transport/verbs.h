/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Thin layer over libibverbs / librdmacm, shared by the data channels and
 * the control connection: QPs and CQs, typed work-request contexts, the
 * ring of registered message slots, completion errors, CM waits.  Calls
 * only core.c and flow.c.
 */
#ifndef RCOLO_VERBS_H
#define RCOLO_VERBS_H

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include "core.h"
#include "flow.h"

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
    uint32_t slot; /* slot index in its ring (SEND/RECV) */
};

static inline struct rcolo_wr_ctx *rcolo_wc_ctx(const struct ibv_wc *wc)
{
    return (struct rcolo_wr_ctx *)(uintptr_t)wc->wr_id;
}

/* What a failed work request was, for error texts. */
const char *rcolo_wc_what(const struct ibv_wc *wc);
/* Errno for a failed completion: the peer went away (-ECONNRESET) or the
 * local side failed (-EIO). */
int rcolo_wc_errno(enum ibv_wc_status status);

/* ---------------------------------------------------------- slot rings */

/*
 * A ring of equally sized registered message slots, one wr_ctx each.
 * Send rings (power-of-two count) hand slots out in order and take them
 * back in order: every SEND is signaled and an RC send queue completes in
 * posting order, so the oldest slot in flight is always the next to
 * complete.  Receive rings keep every slot posted except those whose
 * message is held by the consumer (@held).
 */
struct rcolo_slots {
    uint8_t *buf;
    struct ibv_mr *mr;
    uint32_t count;
    uint32_t size;
    struct rcolo_wr_ctx *ctx;
    struct rcolo_fifo inflight; /* send rings: posted, not completed */
    bool *held;                 /* receive rings: message not reposted */
};

int rcolo_slots_init(struct rcolo_slots *r, struct ibv_pd *pd, uint32_t count,
                     uint32_t size, enum rcolo_wr_type type,
                     struct rcolo_error *err);
void rcolo_slots_fini(struct rcolo_slots *r);

static inline uint8_t *rcolo_slot_buf(const struct rcolo_slots *r, uint32_t i)
{
    return r->buf + (size_t)i * r->size;
}

/* Send rings: the next free slot, or -EAGAIN while every one is in
 * flight. */
int rcolo_slots_acquire(struct rcolo_slots *r);
/* Send rings: slot @i's SEND completed.  False if it is not the oldest in
 * flight (completions out of order: a broken device). */
bool rcolo_slots_retire(struct rcolo_slots *r, uint32_t i);

/*
 * Build the signaled SEND of @len bytes from slot @i into @wr/@sge.  It
 * goes inline (no DMA read of the slot, one round trip less on the
 * adapter) when @len fits @max_inline.
 */
void rcolo_slots_send_wr(const struct rcolo_slots *r, uint32_t i, uint32_t len,
                         uint32_t max_inline, struct ibv_send_wr *wr,
                         struct ibv_sge *sge);

/* Receive rings: post slot @i.  Returns 0 or -errno. */
int rcolo_slots_post_recv(struct ibv_qp *qp, struct rcolo_slots *r, uint32_t i);

/* ---------------------------------------------------------------- QPs */

struct rcolo_qp_res {
    struct ibv_comp_channel *comp;
    struct ibv_cq *cq;
    uint32_t max_inline; /* bytes a SEND may carry inline */
};

/* @owner becomes the QP's qp_context and the CQ's cq_context: an async
 * event on either names it (the session it belongs to). */
int rcolo_qp_create(struct rdma_cm_id *id, struct ibv_pd *pd, void *owner,
                    struct rcolo_qp_res *res, uint32_t send_wr,
                    uint32_t recv_wr, struct rcolo_error *err);
void rcolo_qp_destroy(struct rdma_cm_id *id, struct rcolo_qp_res *res);

/* Post a chain of send WRs.  Returns 0 or -errno. */
int rcolo_post_send(struct rdma_cm_id *id, struct ibv_send_wr *first);

/* Arm the CQ first, then: sleep until it has an event, the session failed
 * (@c->abort_fd) or @deadline passed.  Returns 0 or -errno. */
int rcolo_cq_sleep(struct rcolo_qp_res *res, struct rcolo_core *c,
                   int64_t deadline);
/* The same over the @n CQs of @res (armed first, all of them): wakes
 * when any has an event.  @n <= RCOLO_MAX_CHANNELS. */
int rcolo_cqs_sleep(struct rcolo_qp_res *const *res, unsigned n,
                    struct rcolo_core *c, int64_t deadline);

/* Message for a failed ibv_reg_mr, naming memlock when it is the cause. */
int rcolo_reg_mr_error(struct rcolo_error *err, int errnum, uint64_t length,
                       const char *what);
/* A successful completion is of the kind its work request posted: a SEND
 * slot's a SEND, a WRITE's an RDMA WRITE, a receive slot's a plain RECV
 * (no immediate data). */
bool rcolo_wc_opcode_ok(const struct ibv_wc *wc);
/* The QP number of @qp's peer (connected: RTR or later), 0 if unknown. */
uint32_t rcolo_qp_dest_qpn(struct ibv_qp *qp);
/* Before connect or accept: the QP's local ACK timeout (0: the default). */
int rcolo_cm_tune(struct rdma_cm_id *id, unsigned ack_timeout,
                  struct rcolo_error *err);

/* A CM event channel whose fd never blocks (waits poll() it). */
int rcolo_cm_channel_open(struct rdma_event_channel **ch,
                          struct rcolo_error *err);

/* Wait for one CM event of @type on a private event channel until
 * @deadline, or until the session @c failed; the event is acked.  Private
 * data of ESTABLISHED/REJECTED is copied to @pdata (up to *pdata_len,
 * updated).  Returns 0 or -errno. */
int rcolo_cm_wait(struct rdma_event_channel *ch, enum rdma_cm_event_type type,
                  int64_t deadline, struct rcolo_core *c, void *pdata,
                  size_t *pdata_len, struct rcolo_error *err);

#endif /* RCOLO_VERBS_H */
