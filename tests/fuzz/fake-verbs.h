/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fake verbs for the stateful fuzz targets: the library's own channel.c,
 * receive.c, write.c and ctl.c run unchanged against a device made of
 * queues.  The seam:
 *
 *  - the data path's verbs are inline functions of <infiniband/verbs.h>
 *    that call the device's ops (ibv_post_send, ibv_post_recv,
 *    ibv_poll_cq, ibv_req_notify_cq): the fake context's ops are ours;
 *  - the set-up verbs are exported functions (ibv_create_cq,
 *    rdma_create_qp, ibv_reg_mr, ...): the fuzz executable defines its own,
 *    which the library's objects, linked into it from the static
 *    rdmacolo-internal, bind to instead of libibverbs' and librdmacm's.
 *
 * The fuzzer plays the peer and the fabric: it completes what the library
 * posted (in order, successfully or not) and delivers messages into posted
 * receives.  Test-only: nothing of it is in the library.
 */
#ifndef RCOLO_FAKE_VERBS_H
#define RCOLO_FAKE_VERBS_H

#include <stdbool.h>
#include <stdint.h>

#include "internal.h"

#define FAKE_MAX_WR 4096

struct fake_wr {
    uint64_t wr_id;
    uint64_t addr;   /* receive: the buffer; send: the first SGE's */
    uint32_t length; /* receive: its size; send: the bytes sent */
    enum ibv_wr_opcode opcode;
    bool signaled;
};

struct fake_qp {
    struct ibv_qp qp;
    uint32_t max_send_wr, max_recv_wr;
    /* Posted, not completed, in posting order: rings of max_*_wr. */
    struct fake_wr *recv;
    uint32_t recv_head, recv_count;
    struct fake_wr *send;
    uint32_t send_head, send_count;
};

/* The fake device: one context and PD for a fuzz input. */
void fake_verbs_reset(void);
struct ibv_context *fake_context(void);
/* The peer's writable region: every RDMA WRITE must fall inside it. */
void fake_remote_window(uint64_t addr, uint64_t length, uint32_t rkey);
struct ibv_pd *fake_pd(void);
/* A new cm id on the fake device (the library destroys it). */
struct rdma_cm_id *fake_cm_id(void);
struct fake_qp *fake_qp_of(struct ibv_qp *qp);

/* The fabric: complete the oldest posted send of @q (its completion, if
 * signaled, queued on the send CQ, with @status); false if none. */
bool fake_complete_send(struct fake_qp *q, enum ibv_wc_status status);
/* The peer: deliver @len bytes into the oldest posted receive of @q
 * (truncated to its size), completing it with @status and @opcode (a peer's
 * WRITE with immediate completes as IBV_WC_RECV_RDMA_WITH_IMM); false if no
 * receive is posted. */
bool fake_deliver(struct fake_qp *q, const void *buf, uint32_t len,
                  enum ibv_wc_status status, enum ibv_wc_opcode opcode);
/* A session of @role in READY state on the fake device, as the handshake
 * leaves it, with no connection yet; rcolo_session_destroy frees it. */
struct rcolo_session *fake_session(enum rcolo_role role, unsigned depth);
/* Signaled sends posted on @q and not completed (its CQ room check). */
uint32_t fake_send_outstanding(const struct fake_qp *q);
/* The oldest posted send of @q, or NULL. */
const struct fake_wr *fake_oldest_send(const struct fake_qp *q);

#endif /* RCOLO_FAKE_VERBS_H */
