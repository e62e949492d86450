/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fake verbs (fake-verbs.h): queues instead of a device, for the stateful
 * fuzz targets.  Every property a real device enforces that the library
 * relies on is a FUZZ_CHECK here: it never posts beyond its queues, its
 * CQs never overflow, its message buffers grant no remote access.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "fake-verbs.h"
#include "fuzz.h"

struct fake_cq {
    struct ibv_cq cq;
    struct ibv_wc *wc; /* cqe entries, a ring */
    uint32_t head, count;
};

static struct ibv_context ctx;
static struct ibv_pd pd;
static uint32_t next_qpn, next_key;
static struct {
    uint64_t addr, length;
    uint32_t rkey;
} window; /* the peer's one writable region */

static struct fake_cq *fake_cq_of(struct ibv_cq *cq)
{
    return (struct fake_cq *)cq;
}

struct fake_qp *fake_qp_of(struct ibv_qp *qp)
{
    return (struct fake_qp *)qp;
}

static void cq_push(struct ibv_cq *cq, const struct ibv_wc *wc)
{
    struct fake_cq *c = fake_cq_of(cq);

    /* The library sizes each CQ for everything it can have outstanding. */
    FUZZ_CHECK(c->count < (uint32_t)c->cq.cqe);
    c->wc[(c->head + c->count++) % (uint32_t)c->cq.cqe] = *wc;
}

static int op_poll_cq(struct ibv_cq *cq, int n, struct ibv_wc *wc)
{
    struct fake_cq *c = fake_cq_of(cq);
    int i = 0;

    for (; i < n && c->count; i++) {
        wc[i] = c->wc[c->head];
        c->head = (c->head + 1) % (uint32_t)c->cq.cqe;
        c->count--;
    }
    return i;
}

static int op_req_notify_cq(struct ibv_cq *cq, int solicited_only)
{
    return 0;
}

static int op_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr,
                        struct ibv_send_wr **bad)
{
    struct fake_qp *q = fake_qp_of(qp);

    for (; wr; wr = wr->next) {
        FUZZ_CHECK(q->send_count < q->max_send_wr);
        FUZZ_CHECK(wr->opcode == IBV_WR_SEND ||
                   wr->opcode == IBV_WR_RDMA_WRITE);
        uint32_t len = 0;
        for (int i = 0; i < wr->num_sge; i++) {
            len += wr->sg_list[i].length;
        }
        if (wr->opcode == IBV_WR_RDMA_WRITE) {
            /* Only into the region the peer advertised, inside it. */
            FUZZ_CHECK(window.length && wr->wr.rdma.rkey == window.rkey);
            FUZZ_CHECK(wr->wr.rdma.remote_addr >= window.addr &&
                       len <= window.length &&
                       wr->wr.rdma.remote_addr - window.addr <=
                           window.length - len);
        }
        q->send[(q->send_head + q->send_count++) % q->max_send_wr] =
            (struct fake_wr){
                .wr_id = wr->wr_id,
                .addr = wr->num_sge ? wr->sg_list[0].addr : 0,
                .length = len,
                .opcode = wr->opcode,
                .signaled = (wr->send_flags & IBV_SEND_SIGNALED) != 0,
            };
    }
    *bad = NULL;
    return 0;
}

static int op_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr,
                        struct ibv_recv_wr **bad)
{
    struct fake_qp *q = fake_qp_of(qp);

    for (; wr; wr = wr->next) {
        FUZZ_CHECK(q->recv_count < q->max_recv_wr);
        FUZZ_CHECK(wr->num_sge == 1);
        q->recv[(q->recv_head + q->recv_count++) % q->max_recv_wr] =
            (struct fake_wr){
                .wr_id = wr->wr_id,
                .addr = wr->sg_list[0].addr,
                .length = wr->sg_list[0].length,
            };
    }
    *bad = NULL;
    return 0;
}

void fake_verbs_reset(void)
{
    memset(&ctx, 0, sizeof(ctx));
    ctx.ops.poll_cq = op_poll_cq;
    ctx.ops.req_notify_cq = op_req_notify_cq;
    ctx.ops.post_send = op_post_send;
    ctx.ops.post_recv = op_post_recv;
    ctx.async_fd = -1;
    pd = (struct ibv_pd){.context = &ctx, .handle = 1};
    next_qpn = 0x100;
    next_key = 0x1000;
    memset(&window, 0, sizeof(window));
}

void fake_remote_window(uint64_t addr, uint64_t length, uint32_t rkey)
{
    window.addr = addr;
    window.length = length;
    window.rkey = rkey;
}

struct ibv_context *fake_context(void)
{
    return &ctx;
}

struct ibv_pd *fake_pd(void)
{
    return &pd;
}

struct rdma_cm_id *fake_cm_id(void)
{
    struct rdma_cm_id *id = calloc(1, sizeof(*id));

    id->verbs = &ctx;
    id->qp_type = IBV_QPT_RC;
    return id;
}

bool fake_complete_send(struct fake_qp *q, enum ibv_wc_status status)
{
    if (!q->send_count) {
        return false;
    }
    struct fake_wr w = q->send[q->send_head];
    q->send_head = (q->send_head + 1) % q->max_send_wr;
    q->send_count--;
    /* An unsignaled work request completes without a CQE, unless it
     * failed (then every one reports). */
    if (w.signaled || status != IBV_WC_SUCCESS) {
        struct ibv_wc wc = {
            .wr_id = w.wr_id,
            .status = status,
            .opcode = w.opcode == IBV_WR_SEND ? IBV_WC_SEND : IBV_WC_RDMA_WRITE,
            .qp_num = q->qp.qp_num,
        };
        cq_push(q->qp.send_cq, &wc);
    }
    return true;
}

bool fake_deliver(struct fake_qp *q, const void *buf, uint32_t len,
                  enum ibv_wc_status status, enum ibv_wc_opcode opcode)
{
    if (!q->recv_count) {
        return false;
    }
    struct fake_wr w = q->recv[q->recv_head];
    q->recv_head = (q->recv_head + 1) % q->max_recv_wr;
    q->recv_count--;
    if (len > w.length) {
        status = status == IBV_WC_SUCCESS ? IBV_WC_LOC_LEN_ERR : status;
        len = w.length;
    }
    memcpy((void *)(uintptr_t)w.addr, buf, len);
    struct ibv_wc wc = {
        .wr_id = w.wr_id,
        .status = status,
        .opcode = opcode,
        .byte_len = len,
        .qp_num = q->qp.qp_num,
        .wc_flags = opcode == IBV_WC_RECV_RDMA_WITH_IMM ? IBV_WC_WITH_IMM : 0,
    };
    cq_push(q->qp.recv_cq, &wc);
    return true;
}

uint32_t fake_send_outstanding(const struct fake_qp *q)
{
    return q->send_count;
}

const struct fake_wr *fake_oldest_send(const struct fake_qp *q)
{
    return q->send_count ? &q->send[q->send_head] : NULL;
}

/* ---------------------------------- the exported verbs, interposed */

struct ibv_comp_channel *ibv_create_comp_channel(struct ibv_context *context)
{
    struct ibv_comp_channel *ch = calloc(1, sizeof(*ch));

    ch->context = context;
    /* Never readable: the library's waits see no event, as when the CQ
     * is polled empty. */
    ch->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    FUZZ_CHECK(ch->fd >= 0);
    return ch;
}

int ibv_destroy_comp_channel(struct ibv_comp_channel *ch)
{
    close(ch->fd);
    free(ch);
    return 0;
}

struct ibv_cq *ibv_create_cq(struct ibv_context *context, int cqe,
                             void *cq_context, struct ibv_comp_channel *channel,
                             int comp_vector)
{
    struct fake_cq *c = calloc(1, sizeof(*c));

    FUZZ_CHECK(cqe > 0);
    c->cq.context = context;
    c->cq.channel = channel;
    c->cq.cq_context = cq_context;
    c->cq.cqe = cqe;
    c->wc = calloc((size_t)cqe, sizeof(*c->wc));
    return &c->cq;
}

int ibv_destroy_cq(struct ibv_cq *cq)
{
    struct fake_cq *c = fake_cq_of(cq);

    free(c->wc);
    free(c);
    return 0;
}

int ibv_get_cq_event(struct ibv_comp_channel *channel, struct ibv_cq **cq,
                     void **cq_context)
{
    errno = EAGAIN;
    return -1;
}

void ibv_ack_cq_events(struct ibv_cq *cq, unsigned int nevents)
{
}

int rdma_create_qp(struct rdma_cm_id *id, struct ibv_pd *p,
                   struct ibv_qp_init_attr *attr)
{
    struct fake_qp *q = calloc(1, sizeof(*q));

    FUZZ_CHECK(attr->qp_type == IBV_QPT_RC && attr->send_cq && attr->recv_cq);
    FUZZ_CHECK(attr->cap.max_send_wr <= FAKE_MAX_WR &&
               attr->cap.max_recv_wr <= FAKE_MAX_WR);
    q->qp.context = id->verbs;
    q->qp.qp_context = attr->qp_context;
    q->qp.pd = p;
    q->qp.send_cq = attr->send_cq;
    q->qp.recv_cq = attr->recv_cq;
    q->qp.qp_num = next_qpn++;
    q->qp.qp_type = IBV_QPT_RC;
    q->qp.state = IBV_QPS_RTS;
    q->max_send_wr = attr->cap.max_send_wr;
    q->max_recv_wr = attr->cap.max_recv_wr;
    FUZZ_CHECK(q->max_send_wr && q->max_recv_wr);
    q->send = calloc(q->max_send_wr, sizeof(*q->send));
    q->recv = calloc(q->max_recv_wr, sizeof(*q->recv));
    id->qp = &q->qp;
    return 0;
}

void rdma_destroy_qp(struct rdma_cm_id *id)
{
    struct fake_qp *q = fake_qp_of(id->qp);

    free(q->send);
    free(q->recv);
    free(q);
    id->qp = NULL;
}

int rdma_destroy_id(struct rdma_cm_id *id)
{
    FUZZ_CHECK(id->qp == NULL);
    free(id);
    return 0;
}

int rdma_disconnect(struct rdma_cm_id *id)
{
    return 0;
}

static struct ibv_mr *fake_reg_mr(struct ibv_pd *p, void *addr, size_t length,
                                  unsigned int access)
{
    struct ibv_mr *mr = calloc(1, sizeof(*mr));

    /* The library never exposes memory for remote reads or atomics. */
    FUZZ_CHECK(!(access & (IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC)));
    mr->context = p->context;
    mr->pd = p;
    mr->addr = addr;
    mr->length = length;
    mr->lkey = next_key++;
    mr->rkey = access & IBV_ACCESS_REMOTE_WRITE ? next_key++ : 0;
    return mr;
}

struct ibv_mr *(ibv_reg_mr)(struct ibv_pd *p, void *addr, size_t length,
                            int access)
{
    return fake_reg_mr(p, addr, length, (unsigned int)access);
}

struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *p, void *addr, size_t length,
                                uint64_t iova, unsigned int access)
{
    return fake_reg_mr(p, addr, length, access);
}

int ibv_dereg_mr(struct ibv_mr *mr)
{
    free(mr);
    return 0;
}

int ibv_dealloc_pd(struct ibv_pd *p)
{
    return 0;
}

int ibv_query_qp(struct ibv_qp *qp, struct ibv_qp_attr *attr, int mask,
                 struct ibv_qp_init_attr *init)
{
    memset(attr, 0, sizeof(*attr));
    attr->dest_qp_num = qp->qp_num ^ 1;
    return 0;
}

/* ------------------------------------------------------------ sessions */

static void session_failed(void *opaque)
{
}

struct rcolo_session *fake_session(enum rcolo_role role, unsigned depth)
{
    struct rcolo_session *s = g_new0(struct rcolo_session, 1);

    s->role = role;
    s->channels = 1;
    s->depth = depth;
    s->odp = 0; /* probed: no on-demand paging */
    s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    s->ctl.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    FUZZ_CHECK(s->wake_fd >= 0 && s->ctl.fd >= 0);
    FUZZ_CHECK(rcolo_core_init(&s->core, session_failed, s) == 0);
    /* Waits that the input leaves unanswered end at once, as a stall. */
    s->core.timeout_ms = 1;
    s->core.owed_ms = 1;
    s->uri.timeout_ms = 1;
    pthread_mutex_init(&s->ctl.write_lock, NULL);
    s->regions = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL,
                                       rcolo_region_free);
    s->verbs = &ctx;
    s->pd = &pd;
    s->state = RCOLO_SESSION_READY;
    return s;
}
