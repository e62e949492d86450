/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Thin layer over libibverbs / librdmacm (see verbs.h): QP and CQ setup,
 * message slot rings, completion errors, CQ and CM waits.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <glib.h>

#include "verbs.h"

/* --------------------------------------------------------------- slots */

const char *rcolo_wc_what(const struct ibv_wc *wc)
{
    const struct rcolo_wr_ctx *ctx = rcolo_wc_ctx(wc);

    if (!ctx) {
        return "work request";
    }
    switch (ctx->type) {
    case RCOLO_WR_WRITE:
        return "RDMA WRITE";
    case RCOLO_WR_SEND_SLOT:
        return "SEND";
    case RCOLO_WR_RECV_SLOT:
        return "RECV";
    }
    return "work request";
}

int rcolo_wc_errno(enum ibv_wc_status status)
{
    return status == IBV_WC_WR_FLUSH_ERR || status == IBV_WC_RETRY_EXC_ERR ||
                   status == IBV_WC_RNR_RETRY_EXC_ERR
               ? -ECONNRESET
               : -EIO;
}

int rcolo_slots_init(struct rcolo_slots *r, struct ibv_pd *pd, uint32_t count,
                     uint32_t size, enum rcolo_wr_type type,
                     struct rcolo_error *err)
{
    size_t total = (size_t)count * size;

    memset(r, 0, sizeof(*r));
    r->count = count;
    r->size = size;
    if (posix_memalign((void **)&r->buf, 4096, total)) {
        r->buf = NULL;
        return rcolo_set_error(err, -ENOMEM, "out of memory (%zu bytes)",
                               total);
    }
    memset(r->buf, 0, total);
    r->ctx = g_new0(struct rcolo_wr_ctx, count);
    for (uint32_t i = 0; i < count; i++) {
        r->ctx[i].type = type;
        r->ctx[i].slot = i;
    }
    if (type == RCOLO_WR_SEND_SLOT) {
        rcolo_fifo_init(&r->inflight, count); /* asserts a power of two */
    } else {
        r->held = g_new0(bool, count);
    }
    /* Message buffers are local only: no remote access of any kind. */
    r->mr = ibv_reg_mr(pd, r->buf, total, IBV_ACCESS_LOCAL_WRITE);
    if (!r->mr) {
        return rcolo_reg_mr_error(err, errno, total, "message buffers");
    }
    return 0;
}

void rcolo_slots_fini(struct rcolo_slots *r)
{
    if (r->mr) {
        ibv_dereg_mr(r->mr);
    }
    free(r->buf);
    g_free(r->ctx);
    g_free(r->held);
    memset(r, 0, sizeof(*r));
}

int rcolo_slots_acquire(struct rcolo_slots *r)
{
    if (rcolo_fifo_full(&r->inflight)) {
        return -EAGAIN;
    }
    return (int)rcolo_fifo_push(&r->inflight);
}

bool rcolo_slots_retire(struct rcolo_slots *r, uint32_t i)
{
    if (r->inflight.count == 0 || rcolo_fifo_front(&r->inflight) != i) {
        return false;
    }
    rcolo_fifo_pop(&r->inflight);
    return true;
}

void rcolo_slots_send_wr(const struct rcolo_slots *r, uint32_t i, uint32_t len,
                         uint32_t max_inline, struct ibv_send_wr *wr,
                         struct ibv_sge *sge)
{
    assert(len <= r->size);
    *sge = (struct ibv_sge){
        .addr = (uintptr_t)rcolo_slot_buf(r, i),
        .length = len,
        .lkey = r->mr->lkey,
    };
    *wr = (struct ibv_send_wr){
        .wr_id = (uintptr_t)&r->ctx[i],
        .sg_list = sge,
        .num_sge = 1,
        .opcode = IBV_WR_SEND,
        .send_flags =
            IBV_SEND_SIGNALED | (len <= max_inline ? IBV_SEND_INLINE : 0),
    };
}

int rcolo_slots_post_recv(struct ibv_qp *qp, struct rcolo_slots *r, uint32_t i)
{
    struct ibv_sge sge = {
        .addr = (uintptr_t)rcolo_slot_buf(r, i),
        .length = r->size,
        .lkey = r->mr->lkey,
    };
    struct ibv_recv_wr wr = {
        .wr_id = (uintptr_t)&r->ctx[i],
        .sg_list = &sge,
        .num_sge = 1,
    };
    struct ibv_recv_wr *bad;
    int ret = -ibv_post_recv(qp, &wr, &bad);

    if (ret == 0) {
        r->held[i] = false;
    }
    return ret;
}

/* ---------------------------------------------------------------- QPs */

/* SENDs up to this size go inline where the device allows: CREDIT and
 * FENCE_ACK messages, fence descriptors and short page lists. */
#define RCOLO_INLINE_WANT 64

static int create_qp(struct rdma_cm_id *id, struct ibv_pd *pd, void *owner,
                     struct rcolo_qp_res *res, uint32_t send_wr,
                     uint32_t recv_wr, uint32_t max_inline)
{
    struct ibv_qp_init_attr attr = {
        .qp_context = owner,
        .send_cq = res->cq,
        .recv_cq = res->cq,
        .cap = {.max_send_wr = send_wr,
                .max_recv_wr = recv_wr,
                .max_send_sge = 1,
                .max_recv_sge = 1,
                .max_inline_data = max_inline},
        .qp_type = IBV_QPT_RC,
        .sq_sig_all = 0,
    };

    if (rdma_create_qp(id, pd, &attr)) {
        return -errno;
    }
    /* The provider reports what it really gave (often more). */
    res->max_inline = attr.cap.max_inline_data < max_inline
                          ? attr.cap.max_inline_data
                          : max_inline;
    return 0;
}

int rcolo_qp_create(struct rdma_cm_id *id, struct ibv_pd *pd, void *owner,
                    struct rcolo_qp_res *res, uint32_t send_wr,
                    uint32_t recv_wr, struct rcolo_error *err)
{
    int ret;

    res->comp = ibv_create_comp_channel(id->verbs);
    if (!res->comp) {
        return rcolo_set_error(err, -errno,
                               "cannot create completion channel: %s",
                               strerror(errno));
    }
    /* Non-blocking, so that a wake-up without an event never blocks. */
    fcntl(res->comp->fd, F_SETFL, fcntl(res->comp->fd, F_GETFL) | O_NONBLOCK);
    res->cq =
        ibv_create_cq(id->verbs, (int)(send_wr + recv_wr), owner, res->comp, 0);
    if (!res->cq) {
        return rcolo_set_error(err, -errno, "cannot create CQ of %u: %s",
                               send_wr + recv_wr, strerror(errno));
    }
    /* A device without inline sends refuses the request: go without. */
    ret = create_qp(id, pd, owner, res, send_wr, recv_wr, RCOLO_INLINE_WANT);
    if (ret == -EINVAL) {
        ret = create_qp(id, pd, owner, res, send_wr, recv_wr, 0);
    }
    if (ret) {
        return rcolo_set_error(err, ret,
                               "cannot create RC QP (%u send, %u recv WRs): %s",
                               send_wr, recv_wr, strerror(-ret));
    }
    return 0;
}

void rcolo_qp_destroy(struct rdma_cm_id *id, struct rcolo_qp_res *res)
{
    if (id && id->qp) {
        rdma_destroy_qp(id);
    }
    if (res->cq) {
        ibv_destroy_cq(res->cq);
        res->cq = NULL;
    }
    if (res->comp) {
        ibv_destroy_comp_channel(res->comp);
        res->comp = NULL;
    }
}

int rcolo_post_send(struct rdma_cm_id *id, struct ibv_send_wr *first)
{
    struct ibv_send_wr *bad;

    return -ibv_post_send(id->qp, first, &bad);
}

/* Sleep on @fds[0..n) and the session's abort fd (@fds has room for it at
 * [n]) until @deadline.  Returns 1 (one of @fds readable), 0 (deadline),
 * -ECANCELED (session failed) or -errno. */
static int poll_fds(struct pollfd *fds, unsigned n, struct rcolo_core *c,
                    int64_t deadline)
{
    fds[n] = (struct pollfd){.fd = c ? c->abort_fd : -1, .events = POLLIN};
    for (;;) {
        int ready = poll(fds, n + (c ? 1 : 0), rcolo_deadline_ms(deadline));
        if (ready < 0 && errno == EINTR) {
            continue;
        }
        if (ready < 0) {
            return -errno;
        }
        if (ready == 0) {
            return 0;
        }
        return c && fds[n].revents ? -ECANCELED : 1;
    }
}

int rcolo_cqs_sleep(struct rcolo_qp_res *const *res, unsigned n,
                    struct rcolo_core *c, int64_t deadline)
{
    struct pollfd fds[RCOLO_MAX_CHANNELS + 1];
    int64_t cap = rcolo_deadline(1000);

    if (n > RCOLO_MAX_CHANNELS) {
        return -EINVAL;
    }
    for (unsigned i = 0; i < n; i++) {
        fds[i] = (struct pollfd){.fd = res[i]->comp->fd, .events = POLLIN};
    }
    /*
     * Sleep at most 1 s at a time, so that a failure which does not write
     * the abort fd is still noticed by the caller's loop.
     */
    int ret =
        poll_fds(fds, n, c, deadline < 0 || deadline > cap ? cap : deadline);
    if (ret == -ECANCELED) {
        return 0; /* the wait loop reads the session's status */
    }
    if (ret < 0) {
        return ret;
    }
    /* The comp channel fds are non-blocking: a spurious wake is fine. */
    for (unsigned i = 0; ret > 0 && i < n; i++) {
        struct ibv_cq *cq;
        void *ctx;

        if (fds[i].revents && ibv_get_cq_event(res[i]->comp, &cq, &ctx) == 0) {
            ibv_ack_cq_events(cq, 1);
        }
    }
    return 0;
}

int rcolo_cq_sleep(struct rcolo_qp_res *res, struct rcolo_core *c,
                   int64_t deadline)
{
    return rcolo_cqs_sleep(&res, 1, c, deadline);
}

int rcolo_reg_mr_error(struct rcolo_error *err, int errnum, uint64_t length,
                       const char *what)
{
    struct rlimit rl;

    if ((errnum == ENOMEM || errnum == EPERM || errnum == EAGAIN) &&
        getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        return rcolo_set_error(
            err, -ENOMEM,
            "cannot register %s (%llu MiB): locked-memory limit is %llu KiB; "
            "raise it with 'ulimit -l unlimited' (or LimitMEMLOCK=infinity "
            "for a systemd service, --ulimit memlock=-1 for a container)",
            what, (unsigned long long)(length >> 20),
            (unsigned long long)(rl.rlim_cur >> 10));
    }
    return rcolo_set_error(err, -errnum, "cannot register %s (%llu MiB): %s",
                           what, (unsigned long long)(length >> 20),
                           strerror(errnum));
}

bool rcolo_wc_opcode_ok(const struct ibv_wc *wc)
{
    switch (rcolo_wc_ctx((struct ibv_wc *)wc)->type) {
    case RCOLO_WR_SEND_SLOT:
        return wc->opcode == IBV_WC_SEND;
    case RCOLO_WR_WRITE:
        return wc->opcode == IBV_WC_RDMA_WRITE;
    case RCOLO_WR_RECV_SLOT:
        return wc->opcode == IBV_WC_RECV && !(wc->wc_flags & IBV_WC_WITH_IMM);
    }
    return false;
}

uint32_t rcolo_qp_dest_qpn(struct ibv_qp *qp)
{
    struct ibv_qp_attr attr;
    struct ibv_qp_init_attr init;

    if (ibv_query_qp(qp, &attr, IBV_QP_DEST_QPN, &init)) {
        return 0;
    }
    return attr.dest_qp_num;
}

int rcolo_cm_tune(struct rdma_cm_id *id, unsigned ack_timeout,
                  struct rcolo_error *err)
{
    /* The local ACK timeout of the QP rdma_cm will move to RTS: with the
     * default 14 (~67 ms) and 7 retries a dead peer or a cut link fails a
     * work request in about half a second instead of the provider's
     * default (seconds). */
    uint8_t timeout =
        (uint8_t)(ack_timeout ? ack_timeout : RCOLO_DEFAULT_ACK_TIMEOUT);

    if (rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT,
                        &timeout, sizeof(timeout))) {
        return rcolo_set_error(err, -errno, "cannot set the ACK timeout %u: %s",
                               timeout, strerror(errno));
    }
    return 0;
}

/* ---------------------------------------------------------------- CM */

int rcolo_cm_channel_open(struct rdma_event_channel **ch,
                          struct rcolo_error *err)
{
    *ch = rdma_create_event_channel();
    if (!*ch) {
        return rcolo_set_error(err, -errno, "cannot open rdma_cm: %s",
                               strerror(errno));
    }
    fcntl((*ch)->fd, F_SETFL, fcntl((*ch)->fd, F_GETFL) | O_NONBLOCK);
    return 0;
}

struct cm_waiter {
    struct rdma_event_channel *ch;
    struct rcolo_core *core;
    struct rdma_cm_event *ev;
    int error; /* rdma_get_cm_event's errno, other than EAGAIN */
};

static bool cm_got_event(void *arg)
{
    struct cm_waiter *w = arg;

    return w->ev || w->error;
}

static int cm_poll(void *ctx)
{
    struct cm_waiter *w = ctx;

    if (rdma_get_cm_event(w->ch, &w->ev) == 0) {
        return 1;
    }
    w->ev = NULL;
    if (errno != EAGAIN) {
        w->error = errno;
        return 1;
    }
    return 0;
}

static int cm_block(void *ctx, int64_t deadline)
{
    struct cm_waiter *w = ctx;
    struct pollfd fds[2] = {{.fd = w->ch->fd, .events = POLLIN}};
    int ret = poll_fds(fds, 1, w->core, deadline);

    return ret == -ECANCELED ? 0 : ret < 0 ? ret : 0;
}

int rcolo_cm_wait(struct rdma_event_channel *ch, enum rdma_cm_event_type type,
                  int64_t deadline, struct rcolo_core *c, void *pdata,
                  size_t *pdata_len, struct rcolo_error *err)
{
    static const struct rcolo_wait_ops ops = {.poll = cm_poll,
                                              .block = cm_block};
    struct cm_waiter w = {.ch = ch, .core = c};
    int ret = rcolo_wait(c, &ops, &w, cm_got_event, &w, deadline, 0);

    if (ret == -ETIMEDOUT) {
        return rcolo_set_error(err, -ETIMEDOUT, "timed out waiting for %s",
                               rdma_event_str(type));
    }
    if (ret) {
        return rcolo_set_error(err, ret, "%s",
                               c->error[0] ? c->error : strerror(-ret));
    }
    if (w.error) {
        return rcolo_set_error(err, -w.error, "rdma_get_cm_event: %s",
                               strerror(w.error));
    }

    struct rdma_cm_event *ev = w.ev;
    enum rdma_cm_event_type got = ev->event;
    int status = ev->status;
    if (pdata && pdata_len) {
        size_t n = 0;
        if ((got == RDMA_CM_EVENT_ESTABLISHED ||
             got == RDMA_CM_EVENT_CONNECT_RESPONSE ||
             got == RDMA_CM_EVENT_REJECTED) &&
            ev->param.conn.private_data) {
            n = ev->param.conn.private_data_len;
            if (n > *pdata_len) {
                n = *pdata_len;
            }
            memcpy(pdata, ev->param.conn.private_data, n);
        }
        *pdata_len = n;
    }
    rdma_ack_cm_event(ev);

    if (got == type) {
        return 0;
    }
    switch (got) {
    case RDMA_CM_EVENT_REJECTED:
        return rcolo_set_error(err, -ECONNREFUSED, "connection refused");
    case RDMA_CM_EVENT_UNREACHABLE:
        return rcolo_set_error(err, -EHOSTUNREACH, "peer unreachable");
    case RDMA_CM_EVENT_ADDR_ERROR:
        return rcolo_set_error(err, -EADDRNOTAVAIL,
                               "cannot resolve address to an RDMA device "
                               "(no RDMA device on the route to it?)");
    case RDMA_CM_EVENT_ROUTE_ERROR:
        return rcolo_set_error(err, -EHOSTUNREACH, "cannot resolve route");
    case RDMA_CM_EVENT_CONNECT_ERROR:
        return rcolo_set_error(err, -ECONNABORTED, "connection error");
    default:
        return rcolo_set_error(err, -EPROTO, "unexpected CM event %s (%d)",
                               rdma_event_str(got), status);
    }
}
