/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Data channels: the RDMA WRITE + descriptor data path (primary), the
 * descriptor receive path (secondary), credits and completion handling.
 * Nothing here allocates or prints once the channel is set up.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* Largest RDMA WRITE built from a run of contiguous pages. */
#define RCOLO_MAX_WRITE_BYTES (1u << 20)
/* Send-queue WRs beyond the descriptor slots; one in SIGNAL_EVERY is
 * signaled so that the queue can be reclaimed. */
#define RCOLO_SQ_WRITES    1024
#define RCOLO_SIGNAL_EVERY 64
/* Control messages (CREDIT, FENCE_ACK) are 16 bytes at most. */
#define RCOLO_CTL_MSG_SIZE   64
#define RCOLO_CTL_SEND_SLOTS 8
/* Busy-poll this long before sleeping on the completion channel: the next
 * completion often follows within microseconds, and a sleep/wake-up costs
 * more.  A fence waits longer: it is on the checkpoint's critical path. */
#define RCOLO_SPIN_NS       20000
#define RCOLO_FENCE_SPIN_NS 200000

static uint32_t credit_batch(uint32_t depth)
{
    return depth >= 8 ? depth / 4 : 1;
}

int rcolo_channel_setup(struct rcolo_channel *ch, struct rcolo_error *err)
{
    struct rcolo_session *s = ch->s;
    uint32_t depth = s->depth;
    uint32_t send_wr, recv_wr;
    int ret;

    ch->write_ctx.type = RCOLO_WR_WRITE;
    if (s->role == RCOLO_PRIMARY) {
        uint32_t nctl = depth / credit_batch(depth) + 4;
        ch->sq_depth = RCOLO_SQ_WRITES + depth + 2;
        ch->signal_every = RCOLO_SIGNAL_EVERY;
        send_wr = ch->sq_depth;
        recv_wr = nctl;
        ret = rcolo_qp_create(ch->id, s->pd, &ch->res, send_wr, recv_wr, err);
        if (!ret) {
            ret = rcolo_slots_init(&ch->send, s->pd, depth + 2,
                                   RCOLO_DESC_MAX_LEN, RCOLO_WR_SEND_SLOT, err);
        }
        if (!ret) {
            ret = rcolo_slots_init(&ch->recv, s->pd, nctl, RCOLO_CTL_MSG_SIZE,
                                   RCOLO_WR_RECV_SLOT, err);
        }
        ch->wrs = g_new0(struct ibv_send_wr, RCOLO_MAX_DESC_PAGES + 1);
        ch->sges = g_new0(struct ibv_sge, RCOLO_MAX_DESC_PAGES + 1);
        ch->runs = g_new0(struct rcolo_run, RCOLO_MAX_DESC_PAGES);
        ch->sig_fifo = g_new0(uint64_t, ch->sq_depth);
        rcolo_credits_init(&ch->credits, depth);
    } else {
        ch->sq_depth = RCOLO_CTL_SEND_SLOTS;
        send_wr = RCOLO_CTL_SEND_SLOTS;
        recv_wr = depth;
        ret = rcolo_qp_create(ch->id, s->pd, &ch->res, send_wr, recv_wr, err);
        if (!ret) {
            ret = rcolo_slots_init(&ch->recv, s->pd, depth, RCOLO_DESC_MAX_LEN,
                                   RCOLO_WR_RECV_SLOT, err);
        }
        if (!ret) {
            ret = rcolo_slots_init(&ch->send, s->pd, RCOLO_CTL_SEND_SLOTS,
                                   RCOLO_CTL_MSG_SIZE, RCOLO_WR_SEND_SLOT, err);
        }
        ch->offsets = g_new(uint64_t, (size_t)depth * RCOLO_MAX_DESC_PAGES);
        ch->ready = g_new0(struct ibv_wc, depth);
        ch->sig_fifo = g_new0(uint64_t, ch->sq_depth);
        ch->credit_return.batch = credit_batch(depth);
    }
    if (ret) {
        return ret;
    }
    for (uint32_t i = 0; i < ch->recv.count; i++) {
        ret = rcolo_post_recv_slot(ch->id->qp, &ch->recv, i);
        if (ret) {
            return rcolo_set_error(err, ret, "cannot post receive: %s",
                                   strerror(-ret));
        }
    }
    return 0;
}

void rcolo_channel_free(struct rcolo_channel *ch)
{
    if (!ch) {
        return;
    }
    if (ch->id) {
        rcolo_qp_destroy(ch->id, &ch->res);
        rdma_destroy_id(ch->id);
    } else {
        rcolo_qp_destroy(NULL, &ch->res);
    }
    rcolo_slots_fini(&ch->send);
    rcolo_slots_fini(&ch->recv);
    g_free(ch->wrs);
    g_free(ch->sges);
    g_free(ch->runs);
    g_free(ch->sig_fifo);
    g_free(ch->offsets);
    g_free(ch->ready);
    g_free(ch);
}

int rcolo_channel_fd(struct rcolo_channel *ch)
{
    return ch->res.comp->fd;
}

static int chan_fail(struct rcolo_channel *ch, int code, const char *fmt,
                     const char *detail)
{
    return rcolo_session_fail(ch->s, code, "data channel %u: %s%s", ch->index,
                              fmt, detail ? detail : "");
}

/* ------------------------------------------------------- completions */

static void sq_complete(struct rcolo_channel *ch)
{
    if (ch->sig_count) {
        ch->sq_done = ch->sig_fifo[ch->sig_head];
        ch->sig_head = (ch->sig_head + 1) % ch->sq_depth;
        ch->sig_count--;
    }
}

static void sq_signaled(struct rcolo_channel *ch)
{
    uint32_t tail = (ch->sig_head + ch->sig_count) % ch->sq_depth;
    ch->sig_fifo[tail] = ch->sq_posted;
    ch->sig_count++;
}

/* Primary: a control message from the secondary. */
static int primary_recv_ctl(struct rcolo_channel *ch, struct ibv_wc *wc,
                            struct rcolo_wr_ctx *ctx)
{
    const uint8_t *buf = rcolo_slot_buf(&ch->recv, ctx->slot);
    struct rcolo_hdr h;
    uint64_t seq;

    if (rcolo_hdr_decode(buf, wc->byte_len, &h)) {
        return chan_fail(ch, -EPROTO, "malformed control message", NULL);
    }
    if (h.type == RCOLO_MSG_FENCE_ACK) {
        if (rcolo_fence_ack_decode(buf, wc->byte_len, &seq) ||
            seq != ch->fence_posted || seq <= ch->fence_acked) {
            return chan_fail(ch, -EPROTO, "unexpected fence ack", NULL);
        }
        ch->fence_acked = seq;
    } else if (h.type != RCOLO_MSG_CREDIT || wc->byte_len != RCOLO_HDR_LEN) {
        return chan_fail(ch, -EPROTO, "unexpected message type", NULL);
    }
    if (!rcolo_credits_give(&ch->credits, h.credits)) {
        return chan_fail(ch, -EPROTO, "peer returned more credits than it had",
                         NULL);
    }
    if (rcolo_post_recv_slot(ch->id->qp, &ch->recv, ctx->slot)) {
        return chan_fail(ch, -EIO, "cannot repost receive", NULL);
    }
    return 0;
}

/*
 * Poll the CQ once.  Send completions free send-queue room and slots;
 * receive completions are control messages (primary, handled now) or
 * descriptors (secondary, queued for rcolo_channel_recv).  Returns the
 * number of completions seen or the session error.
 */
static int chan_progress(struct rcolo_channel *ch)
{
    struct ibv_wc wc[16];
    int max = 16;

    if (ch->s->role == RCOLO_SECONDARY) {
        unsigned room = ch->recv.count - ch->ready_count;
        /* room counts queued recvs; sends are few, keep 1 spare */
        if ((int)room < max) {
            max = room > 0 ? (int)room : 1;
        }
    }
    int n = ibv_poll_cq(ch->res.cq, max, wc);
    if (n < 0) {
        return chan_fail(ch, -EIO, "ibv_poll_cq failed", NULL);
    }
    for (int i = 0; i < n; i++) {
        struct rcolo_wr_ctx *ctx =
            (struct rcolo_wr_ctx *)(uintptr_t)wc[i].wr_id;
        if (wc[i].status != IBV_WC_SUCCESS) {
            const char *what = !ctx                          ? "work request"
                               : ctx->type == RCOLO_WR_WRITE ? "RDMA WRITE"
                               : ctx->type == RCOLO_WR_SEND_SLOT ? "SEND"
                                                                 : "RECV";
            char detail[96];
            snprintf(detail, sizeof(detail), "%s failed: %s", what,
                     ibv_wc_status_str(wc[i].status));
            return chan_fail(ch,
                             wc[i].status == IBV_WC_WR_FLUSH_ERR ||
                                     wc[i].status == IBV_WC_RETRY_EXC_ERR
                                 ? -ECONNRESET
                                 : -EIO,
                             "", detail);
        }
        switch (ctx->type) {
        case RCOLO_WR_WRITE:
            sq_complete(ch);
            break;
        case RCOLO_WR_SEND_SLOT:
            sq_complete(ch);
            ch->send.busy[ctx->slot] = false;
            break;
        case RCOLO_WR_RECV_SLOT:
            if (ch->s->role == RCOLO_PRIMARY) {
                int ret = primary_recv_ctl(ch, &wc[i], ctx);
                if (ret) {
                    return ret;
                }
            } else {
                unsigned tail =
                    (ch->ready_head + ch->ready_count) % ch->recv.count;
                ch->ready[tail] = wc[i];
                ch->ready_count++;
            }
            break;
        }
    }
    return n;
}

/*
 * Wait for progress: spin briefly, then sleep on the completion channel
 * (woken early by a session failure).  Returns > 0 on progress, 0 on
 * timeout, or the session error.
 */
static int chan_block_spin(struct rcolo_channel *ch, int64_t deadline,
                           int64_t spin_ns)
{
    struct rcolo_session *s = ch->s;
    int64_t spin_end = rcolo_now_ns() + spin_ns;
    int n;

    for (;;) {
        n = chan_progress(ch);
        if (n) {
            return n;
        }
        if (__atomic_load_n(&s->busy_poll, __ATOMIC_ACQUIRE)) {
            if (rcolo_session_status(s)) {
                return rcolo_session_status(s);
            }
            if (deadline >= 0 && rcolo_now_ns() >= deadline) {
                return 0;
            }
            /* More pollers than CPUs must not starve the ones with work
             * (or the kernel's softirq, which is the device under rxe). */
            sched_yield();
            continue;
        }
        if (rcolo_now_ns() >= spin_end) {
            break;
        }
    }

    for (;;) {
        if (rcolo_session_status(s)) {
            return rcolo_session_status(s);
        }
        ibv_req_notify_cq(ch->res.cq, 0);
        n = chan_progress(ch); /* completions that raced with arming */
        if (n) {
            return n;
        }
        int ms = rcolo_deadline_ms(deadline);
        if (ms == 0) {
            return 0;
        }
        /* Sleep at most 1 s at a time, so a failure that does not write
         * the abort fd is still noticed. */
        int ret = rcolo_cq_wait(&ch->res, s->abort_fd,
                                ms < 0 || ms > 1000 ? 1000 : ms);
        if (ret == -ECANCELED) {
            return rcolo_session_status(s);
        }
        if (ret < 0) {
            return chan_fail(ch, ret, "waiting for completions failed", NULL);
        }
    }
}

static int chan_block(struct rcolo_channel *ch, int64_t deadline)
{
    return chan_block_spin(ch, deadline, RCOLO_SPIN_NS);
}

/* Free send slot, waiting for one if all are in flight. */
static int get_send_slot(struct rcolo_channel *ch, uint32_t *slot)
{
    for (;;) {
        for (uint32_t k = 0; k < ch->send.count; k++) {
            uint32_t i = (ch->send.next + k) % ch->send.count;
            if (!ch->send.busy[i]) {
                ch->send.next = (i + 1) % ch->send.count;
                *slot = i;
                return 0;
            }
        }
        int ret = chan_block(ch, -1);
        if (ret < 0) {
            return ret;
        }
    }
}

/* Wait until @n more WRs fit in the send queue. */
static int sq_reserve(struct rcolo_channel *ch, uint32_t n)
{
    while (ch->sq_posted - ch->sq_done + n > ch->sq_depth) {
        int ret = chan_block(ch, -1);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static int post_chain(struct rcolo_channel *ch, struct ibv_send_wr *first)
{
    struct ibv_send_wr *bad;
    int ret = ibv_post_send(ch->id->qp, first, &bad);

    if (ret) {
        return chan_fail(ch, -ret, "ibv_post_send failed: ", strerror(ret));
    }
    return 0;
}

/* Build the SEND of message slot @slot (@len bytes) as WR @wr, signaled. */
static void build_send(struct rcolo_channel *ch, struct ibv_send_wr *wr,
                       struct ibv_sge *sge, uint32_t slot, uint32_t len)
{
    *sge = (struct ibv_sge){
        .addr = (uintptr_t)rcolo_slot_buf(&ch->send, slot),
        .length = len,
        .lkey = ch->send.mr->lkey,
    };
    *wr = (struct ibv_send_wr){
        .wr_id = (uintptr_t)&ch->send.ctx[slot],
        .sg_list = sge,
        .num_sge = 1,
        .opcode = IBV_WR_SEND,
        .send_flags = IBV_SEND_SIGNALED,
    };
    ch->send.busy[slot] = true;
    ch->sq_posted++;
    sq_signaled(ch);
}

/* -------------------------------------------------------- primary */

static struct rcolo_region *chan_region(struct rcolo_channel *ch, uint32_t id)
{
    struct rcolo_region *r = ch->last_region;

    if (r && r->id == id) {
        return r;
    }
    pthread_mutex_lock(&ch->s->lock);
    r = g_hash_table_lookup(ch->s->regions, GUINT_TO_POINTER(id));
    if (r && !r->mr) {
        r = NULL;
    }
    ch->last_region = r;
    pthread_mutex_unlock(&ch->s->lock);
    return r;
}

static int take_credit(struct rcolo_channel *ch)
{
    if (rcolo_credits_take(&ch->credits)) {
        return 0;
    }
    ch->stats.credit_waits++;
    while (!rcolo_credits_take(&ch->credits)) {
        int ret = chan_block(ch, -1);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

int rcolo_write_pages(struct rcolo_channel *ch, uint32_t region_id,
                      const uint64_t *offsets, unsigned n, const uint64_t *zero,
                      unsigned nzero)
{
    struct rcolo_session *s = ch->s;
    struct rcolo_region *r;
    unsigned nruns = 0, consumed = 0;
    uint32_t slot;
    int ret;

    if (rcolo_session_status(s)) {
        return rcolo_session_status(s);
    }
    if (s->role != RCOLO_PRIMARY ||
        (uint64_t)n + nzero > RCOLO_MAX_DESC_PAGES || (n && !offsets) ||
        (nzero && !zero)) {
        return -EINVAL;
    }
    r = chan_region(ch, region_id);
    if (!r) {
        return -ENOENT;
    }
    for (unsigned i = 0; i < n; i++) {
        if ((offsets[i] & (r->page_size - 1)) || offsets[i] >= r->length) {
            return -EINVAL;
        }
    }
    for (unsigned i = 0; i < nzero; i++) {
        if ((zero[i] & (r->page_size - 1)) || zero[i] >= r->length) {
            return -EINVAL;
        }
    }

    ret = take_credit(ch);
    if (!ret) {
        ret = get_send_slot(ch, &slot);
    }
    if (ret) {
        return ret;
    }

    bool hostile = rcolo_test_hook_armed == RCOLO_TEST_DESC_OUT_OF_BOUNDS;
    if (!hostile && n) {
        nruns = rcolo_coalesce(offsets, n, r->page_size, RCOLO_MAX_WRITE_BYTES,
                               ch->runs, RCOLO_MAX_DESC_PAGES, &consumed);
    }
    ret = sq_reserve(ch, nruns + 1);
    if (ret) {
        return ret;
    }
    for (unsigned i = 0; i < nruns; i++) {
        struct ibv_send_wr *wr = &ch->wrs[i];
        ch->sges[i] = (struct ibv_sge){
            .addr = (uintptr_t)(r->addr + ch->runs[i].offset),
            .length = (uint32_t)ch->runs[i].length,
            .lkey = r->mr->lkey,
        };
        *wr = (struct ibv_send_wr){
            .wr_id = (uintptr_t)&ch->write_ctx,
            .next = &ch->wrs[i + 1],
            .sg_list = &ch->sges[i],
            .num_sge = 1,
            .opcode = IBV_WR_RDMA_WRITE,
            .wr.rdma = {.remote_addr = r->remote_addr + ch->runs[i].offset,
                        .rkey = r->rkey},
        };
        ch->sq_posted++;
        if (ch->sq_posted % ch->signal_every == 0) {
            wr->send_flags = IBV_SEND_SIGNALED;
            sq_signaled(ch);
        }
        ch->stats.bytes += ch->runs[i].length;
    }

    /* The descriptor follows the writes on the same QP: RC ordering
     * places the data before the descriptor's receive completes. */
    uint8_t *buf = rcolo_slot_buf(&ch->send, slot);
    size_t len = rcolo_desc_encode(buf, ch->send.size, false, region_id,
                                   ++ch->seq, offsets, n, zero, nzero);
    if (hostile && n) {
        uint64_t bad = htobe64(r->length); /* one page past the end */
        memcpy(buf + RCOLO_DESC_FIXED_LEN, &bad, sizeof(bad));
        rcolo_test_hook_armed = RCOLO_TEST_NONE;
    }
    build_send(ch, &ch->wrs[nruns], &ch->sges[nruns], slot, (uint32_t)len);
    ch->wrs[nruns].next = NULL;

    ret = post_chain(ch, &ch->wrs[0]);
    if (ret) {
        return ret;
    }
    ch->stats.pages += n;
    ch->stats.zero_pages += nzero;
    ch->stats.write_wrs += nruns;
    ch->stats.descriptors++;
    /* Reap what is done without waiting: keeps the CQ short. */
    ret = chan_progress(ch);
    return ret < 0 ? ret : 0;
}

int rcolo_channel_fence_post(struct rcolo_channel *ch)
{
    uint32_t slot;
    int ret;

    if (rcolo_session_status(ch->s)) {
        return rcolo_session_status(ch->s);
    }
    if (ch->s->role != RCOLO_PRIMARY || ch->fence_posted != ch->fence_acked) {
        return -EINVAL;
    }
    ret = take_credit(ch);
    if (!ret) {
        ret = get_send_slot(ch, &slot);
    }
    if (!ret) {
        ret = sq_reserve(ch, 1);
    }
    if (ret) {
        return ret;
    }
    size_t len =
        rcolo_desc_encode(rcolo_slot_buf(&ch->send, slot), ch->send.size, true,
                          0, ++ch->seq, NULL, 0, NULL, 0);
    build_send(ch, &ch->wrs[0], &ch->sges[0], slot, (uint32_t)len);
    ch->wrs[0].next = NULL;
    ret = post_chain(ch, &ch->wrs[0]);
    if (ret) {
        return ret;
    }
    ch->fence_posted = ch->seq;
    ch->stats.fences++;
    return 0;
}

int rcolo_channel_fence_wait(struct rcolo_channel *ch, int timeout_ms)
{
    int64_t deadline = rcolo_deadline(timeout_ms);

    while (ch->fence_acked != ch->fence_posted) {
        int ret = chan_block_spin(ch, deadline, RCOLO_FENCE_SPIN_NS);
        if (ret < 0) {
            return ret;
        }
        if (ret == 0 && rcolo_deadline_ms(deadline) == 0) {
            return -ETIMEDOUT;
        }
    }
    return 0;
}

int rcolo_fence(struct rcolo_session *s, int timeout_ms)
{
    int64_t t0 = rcolo_now_ns();
    int ret = 0;

    for (unsigned i = 0; i < s->channels && !ret; i++) {
        if (s->chan[i]) {
            ret = rcolo_channel_fence_post(s->chan[i]);
        }
    }
    for (unsigned i = 0; i < s->channels && !ret; i++) {
        if (s->chan[i]) {
            ret = rcolo_channel_fence_wait(s->chan[i], timeout_ms);
        }
    }
    if (ret) {
        return ret;
    }
    uint64_t dt = (uint64_t)(rcolo_now_ns() - t0);
    pthread_mutex_lock(&s->lock);
    s->stats.fences++;
    s->stats.fence_ns_total += dt;
    s->stats.fence_ns_last = dt;
    if (dt > s->stats.fence_ns_max) {
        s->stats.fence_ns_max = dt;
    }
    pthread_mutex_unlock(&s->lock);
    return 0;
}

/* ------------------------------------------------------ secondary */

static int secondary_send_ctl(struct rcolo_channel *ch, bool fence_ack,
                              uint64_t seq, uint32_t credits)
{
    uint32_t slot;
    size_t len;
    int ret = get_send_slot(ch, &slot);

    if (ret) {
        return ret;
    }
    ret = sq_reserve(ch, 1);
    if (ret) {
        return ret;
    }
    uint8_t *buf = rcolo_slot_buf(&ch->send, slot);
    len =
        fence_ack
            ? rcolo_fence_ack_encode(buf, ch->send.size, seq, (uint16_t)credits)
            : rcolo_credit_encode(buf, ch->send.size, (uint16_t)credits);
    struct ibv_send_wr wr;
    struct ibv_sge sge;
    build_send(ch, &wr, &sge, slot, (uint32_t)len);
    return post_chain(ch, &wr);
}

static int take_descriptor(struct rcolo_channel *ch, struct rcolo_desc *desc)
{
    struct ibv_wc *wc = &ch->ready[ch->ready_head];
    struct rcolo_wr_ctx *ctx = (struct rcolo_wr_ctx *)(uintptr_t)wc->wr_id;
    uint32_t slot = ctx->slot;
    const uint8_t *buf = rcolo_slot_buf(&ch->recv, slot);
    struct rcolo_desc_view v;
    char detail[96];

    ch->ready_head = (ch->ready_head + 1) % ch->recv.count;
    ch->ready_count--;

    if (rcolo_desc_decode(buf, wc->byte_len, &v)) {
        return chan_fail(ch, -EPROTO, "malformed descriptor", NULL);
    }
    if (v.seq != ch->seq + 1) {
        snprintf(detail, sizeof(detail), " (seq %llu, expected %llu)",
                 (unsigned long long)v.seq, (unsigned long long)ch->seq + 1);
        return chan_fail(ch, -EPROTO, "descriptor out of sequence", detail);
    }
    ch->seq = v.seq;
    memset(desc, 0, sizeof(*desc));
    desc->seq = v.seq;
    desc->priv_ = (void *)(uintptr_t)(slot + 1);
    ch->recv.busy[slot] = true;
    ch->held++;
    if (v.fence) {
        desc->kind = RCOLO_DESC_FENCE;
        return 0;
    }

    struct rcolo_region *r = chan_region(ch, v.region_id);
    if (!r) {
        snprintf(detail, sizeof(detail), " %u", v.region_id);
        return chan_fail(ch, -EPROTO, "descriptor names unknown region",
                         detail);
    }
    uint64_t *offs = ch->offsets + (size_t)slot * RCOLO_MAX_DESC_PAGES;
    uint32_t bad = 0;
    if (rcolo_desc_offsets(&v, offs, r->length, r->page_size, &bad)) {
        snprintf(detail, sizeof(detail), " (entry %u of region %u, %llu bytes)",
                 bad, r->id, (unsigned long long)r->length);
        return chan_fail(ch, -EPROTO,
                         "descriptor offset unaligned or out of bounds",
                         detail);
    }
    for (uint32_t i = 0; i < v.nzero; i++) {
        memset(r->addr + offs[v.n + i], 0, r->page_size);
    }
    desc->kind = RCOLO_DESC_PAGES;
    desc->region_id = r->id;
    desc->region_addr = r->addr;
    desc->page_size = r->page_size;
    desc->n = v.n;
    desc->nzero = v.nzero;
    desc->offsets = offs;
    desc->zero = offs + v.n;
    ch->stats.descriptors++;
    ch->stats.pages += v.n;
    ch->stats.zero_pages += v.nzero;
    ch->stats.bytes += (uint64_t)v.n * r->page_size;
    return 0;
}

int rcolo_channel_recv(struct rcolo_channel *ch, struct rcolo_desc *desc,
                       int timeout_ms)
{
    int64_t deadline = rcolo_deadline(timeout_ms);

    if (ch->s->role != RCOLO_SECONDARY) {
        return -EINVAL;
    }
    for (;;) {
        int st = rcolo_session_status(ch->s);
        if (st) {
            return st;
        }
        if (ch->ready_count == 0) {
            int ret = chan_progress(ch);
            if (ret < 0) {
                return ret;
            }
        }
        if (ch->ready_count) {
            return take_descriptor(ch, desc);
        }
        if (timeout_ms == 0) {
            /* Event-loop use: consume stale events, arm, and look once more
             * (a completion may have raced with arming), so that
             * rcolo_channel_fd() polls readable exactly when work comes. */
            struct ibv_cq *cq;
            void *ctx;
            while (ibv_get_cq_event(ch->res.comp, &cq, &ctx) == 0) {
                ibv_ack_cq_events(cq, 1);
            }
            ibv_req_notify_cq(ch->res.cq, 0);
            int ret = chan_progress(ch);
            if (ret < 0) {
                return ret;
            }
            if (ch->ready_count) {
                continue;
            }
            return -EAGAIN;
        }
        int ret = chan_block(ch, deadline);
        if (ret < 0) {
            return ret;
        }
        if (ret == 0 && ch->ready_count == 0) {
            return -ETIMEDOUT;
        }
    }
}

int rcolo_channel_release(struct rcolo_channel *ch, struct rcolo_desc *desc)
{
    uint32_t slot = (uint32_t)((uintptr_t)desc->priv_ - 1);
    uint32_t give;
    int ret;

    if (ch->s->role != RCOLO_SECONDARY || slot >= ch->recv.count ||
        !ch->recv.busy[slot]) {
        return -EINVAL;
    }
    if (rcolo_session_status(ch->s)) {
        return rcolo_session_status(ch->s);
    }
    ch->recv.busy[slot] = false;
    desc->priv_ = NULL;
    ch->held--;
    ret = rcolo_post_recv_slot(ch->id->qp, &ch->recv, slot);
    if (ret) {
        return chan_fail(ch, ret, "cannot repost receive", NULL);
    }
    give = rcolo_credit_return_add(&ch->credit_return, 1);
    if (desc->kind == RCOLO_DESC_FENCE) {
        ch->fence_ack_pending = true;
        ch->fence_ack_seq = desc->seq;
        ch->stats.fences++;
    }
    if (ch->fence_ack_pending && ch->held == 0) {
        /* All earlier descriptors are released: ack, with every credit. */
        give += ch->credit_return.pending;
        ch->credit_return.pending = 0;
        ch->fence_ack_pending = false;
        return secondary_send_ctl(ch, true, ch->fence_ack_seq, give);
    }
    if (give) {
        return secondary_send_ctl(ch, false, 0, give);
    }
    return 0;
}

/* ------------------------------------------------------------ stats */

int rcolo_channel_get_stats(struct rcolo_channel *ch,
                            struct rcolo_channel_stats *out)
{
    if (!ch || !out) {
        return -EINVAL;
    }
    *out = ch->stats;
    return 0;
}

int rcolo_session_get_stats(struct rcolo_session *s,
                            struct rcolo_session_stats *out)
{
    if (!s || !out) {
        return -EINVAL;
    }
    pthread_mutex_lock(&s->lock);
    *out = s->stats;
    memset(&out->total, 0, sizeof(out->total));
    for (unsigned i = 0; i < RCOLO_MAX_CHANNELS; i++) {
        struct rcolo_channel *ch = s->chan[i];
        if (!ch) {
            continue;
        }
        out->total.bytes += ch->stats.bytes;
        out->total.pages += ch->stats.pages;
        out->total.zero_pages += ch->stats.zero_pages;
        out->total.write_wrs += ch->stats.write_wrs;
        out->total.descriptors += ch->stats.descriptors;
        out->total.credit_waits += ch->stats.credit_waits;
        out->total.fences += ch->stats.fences;
    }
    pthread_mutex_unlock(&s->lock);
    return 0;
}
