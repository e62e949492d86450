/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Data channels, what both roles share: set-up and teardown, completions
 * (the primary's control messages are handled here, the secondary's
 * descriptors queued for receive.c), the waits on a channel's CQ, and the
 * send slots and send-queue room every message needs.  The primary's
 * writes are write.c's, the secondary's descriptors receive.c's, the
 * session fence fence.c's.  Nothing here allocates or prints once the
 * channel is set up, and nothing takes the session lock.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* Send-queue WRs beyond the descriptor slots (RDMA WRITEs). */
#define RCOLO_SQ_WRITES 1024
/* Control messages (CREDIT, FENCE_ACK) are 16 bytes at most. */
#define RCOLO_CTL_MSG_SIZE   64
#define RCOLO_CTL_SEND_SLOTS 8

struct rcolo_channel *rcolo_channel_new(struct rcolo_session *s, unsigned index)
{
    struct rcolo_channel *ch = g_new0(struct rcolo_channel, 1);

    ch->s = s;
    ch->core = &s->core;
    ch->role = s->role;
    ch->index = index;
    return ch;
}

static int setup_primary(struct rcolo_channel *ch, struct ibv_pd *pd,
                         uint32_t depth, struct rcolo_error *err)
{
    struct rcolo_chan_tx *tx = &ch->tx;
    /*
     * Every descriptor needs a credit, so depth are in flight at most, but
     * a slot frees only when its SEND's completion is reaped, and the
     * secondary's credit for it often arrives before that (rxe acknowledges
     * lazily): slots beyond the credits keep the sender from waiting for
     * completions with credits in hand (measured: the control connection
     * with 16 slots for 16 credits made the COLO qtests 40 % slower).
     */
    uint32_t nsend = rcolo_pow2_roundup(depth + 2);
    uint32_t nctl = depth / rcolo_credit_batch(depth) + 4;
    uint32_t sq_depth = RCOLO_SQ_WRITES + nsend;
    int ret;

    ret = rcolo_qp_create(ch->id, pd, ch->s, &ch->res, sq_depth, nctl, err);
    if (!ret) {
        ret = rcolo_slots_init(&ch->send, pd, nsend, RCOLO_DESC_MAX_LEN,
                               RCOLO_WR_SEND_SLOT, err);
    }
    if (!ret) {
        ret = rcolo_slots_init(&ch->recv, pd, nctl, RCOLO_CTL_MSG_SIZE,
                               RCOLO_WR_RECV_SLOT, err);
    }
    rcolo_sq_init(&ch->sq, sq_depth);
    tx->write_ctx.type = RCOLO_WR_WRITE;
    tx->wrs = g_new0(struct ibv_send_wr, RCOLO_MAX_DESC_PAGES + 1);
    tx->sges = g_new0(struct ibv_sge, RCOLO_MAX_DESC_PAGES + 1);
    tx->runs = g_new0(struct rcolo_run, RCOLO_MAX_DESC_PAGES);
    tx->pend.offsets = g_new0(uint64_t, RCOLO_MAX_DESC_PAGES);
    tx->pend.zero = g_new0(uint64_t, RCOLO_MAX_DESC_PAGES);
    rcolo_credits_init(&tx->credits, depth);
    return ret;
}

static int setup_secondary(struct rcolo_channel *ch, struct ibv_pd *pd,
                           uint32_t depth, struct rcolo_error *err)
{
    struct rcolo_chan_rx *rx = &ch->rx;
    int ret;

    ret = rcolo_qp_create(ch->id, pd, ch->s, &ch->res, RCOLO_CTL_SEND_SLOTS,
                          depth, err);
    if (!ret) {
        ret = rcolo_slots_init(&ch->recv, pd, depth, RCOLO_DESC_MAX_LEN,
                               RCOLO_WR_RECV_SLOT, err);
    }
    if (!ret) {
        ret = rcolo_slots_init(&ch->send, pd, RCOLO_CTL_SEND_SLOTS,
                               RCOLO_CTL_MSG_SIZE, RCOLO_WR_SEND_SLOT, err);
    }
    rcolo_sq_init(&ch->sq, RCOLO_CTL_SEND_SLOTS);
    rx->offsets = g_new(uint64_t, (size_t)depth * RCOLO_MAX_DESC_PAGES);
    rcolo_fifo_init(&rx->ready_q, rcolo_pow2_roundup(depth));
    rx->ready = g_new0(struct ibv_wc, rx->ready_q.mask + 1);
    rcolo_rx_flow_init(&rx->flow, depth);
    return ret;
}

int rcolo_channel_setup(struct rcolo_channel *ch, struct rcolo_error *err)
{
    struct rcolo_session *s = ch->s;
    int ret = ch->role == RCOLO_PRIMARY
                  ? setup_primary(ch, s->pd, s->depth, err)
                  : setup_secondary(ch, s->pd, s->depth, err);

    for (uint32_t i = 0; !ret && i < ch->recv.count; i++) {
        ret = rcolo_slots_post_recv(ch->id->qp, &ch->recv, i);
        if (ret) {
            ret = rcolo_set_error(err, ret, "cannot post receive: %s",
                                  strerror(-ret));
        }
    }
    return ret;
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
    rcolo_sq_fini(&ch->sq);
    if (ch->role == RCOLO_PRIMARY) {
        g_free(ch->tx.wrs);
        g_free(ch->tx.sges);
        g_free(ch->tx.runs);
        g_free(ch->tx.pend.offsets);
        g_free(ch->tx.pend.zero);
    } else {
        g_free(ch->rx.offsets);
        g_free(ch->rx.ready);
    }
    g_free(ch);
}

int rcolo_channel_fd(struct rcolo_channel *ch)
{
    return ch->res.comp->fd;
}

/* The counters' one writer is the channel's thread (rcolo_stat_add). */
static void stats_read(const struct rcolo_channel_stats *in,
                       struct rcolo_channel_stats *out)
{
    const uint64_t *src = (const uint64_t *)in;
    uint64_t *dst = (uint64_t *)out;

    for (size_t i = 0; i < sizeof(*in) / sizeof(uint64_t); i++) {
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
    }
}

/*
 * Against rcolo_region_remove (a Dekker pair): the caller sets region_busy,
 * then this reads the cache; remove clears every cache, then reads every
 * region_busy.  So either remove sees region_busy and refuses, or this sees
 * the cleared cache and looks the region up under the lock, after remove
 * freed it.  A region is never used after it was freed, and a descriptor
 * of the cached region takes no lock.
 */
struct rcolo_region *rcolo_chan_region(struct rcolo_channel *ch, uint32_t id)
{
    struct rcolo_region *r =
        __atomic_load_n(&ch->region_cache, __ATOMIC_SEQ_CST);

    assert(__atomic_load_n(&ch->region_busy, __ATOMIC_RELAXED));
    if (r && r->id == id) {
        return r;
    }
    pthread_mutex_lock(&ch->core->lock);
    r = rcolo_region_find_locked(ch->s, id);
    __atomic_store_n(&ch->region_cache, r, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&ch->core->lock);
    return r;
}

int rcolo_chan_fail(struct rcolo_channel *ch, int code, const char *what,
                    const char *detail)
{
    return rcolo_fail(ch->core, code, "data channel %u: %s%s", ch->index, what,
                      detail ? detail : "");
}

int rcolo_chan_stalled(struct rcolo_channel *ch, const char *what)
{
    char detail[128];

    snprintf(detail, sizeof(detail), " %s for %d ms (stalled or overloaded?)",
             what, ch->core->owed_ms);
    return rcolo_fail(
        ch->core, -ETIMEDOUT, "data channel %u: the %s%s", ch->index,
        ch->role == RCOLO_PRIMARY ? "secondary" : "primary", detail);
}

/* ------------------------------------------------------- completions */

/* Primary: a control message from the secondary. */
static int primary_recv_ctl(struct rcolo_channel *ch, struct ibv_wc *wc,
                            uint32_t slot)
{
    const uint8_t *buf = rcolo_slot_buf(&ch->recv, slot);
    struct rcolo_hdr h;
    uint64_t seq;

    if (rcolo_hdr_decode(buf, wc->byte_len, &h)) {
        return rcolo_chan_fail(ch, -EPROTO, "malformed control message", NULL);
    }
    if (h.type == RCOLO_MSG_FENCE_ACK) {
        uint8_t flags;

        if (rcolo_fence_ack_decode(buf, wc->byte_len, &seq, &flags)) {
            return rcolo_chan_fail(ch, -EPROTO, "malformed fence ack", NULL);
        }
        /* A session fence's ack may come on any channel (the one the
         * secondary released last on). */
        if (!rcolo_fence_tx_ack((flags & RCOLO_FENCE_ACK_ALL)
                                    ? &ch->s->sfence_tx
                                    : &ch->tx.fence,
                                seq)) {
            return rcolo_chan_fail(ch, -EPROTO,
                                   (flags & RCOLO_FENCE_ACK_ALL)
                                       ? "unexpected session fence ack"
                                       : "unexpected fence ack",
                                   NULL);
        }
    } else if (h.type != RCOLO_MSG_CREDIT || wc->byte_len != RCOLO_HDR_LEN) {
        return rcolo_chan_fail(ch, -EPROTO, "unexpected message type", NULL);
    }
    if (!rcolo_credits_give(&ch->tx.credits, h.credits)) {
        return rcolo_chan_fail(ch, -EPROTO,
                               "peer returned more credits than it had", NULL);
    }
    if (rcolo_slots_post_recv(ch->id->qp, &ch->recv, slot)) {
        return rcolo_chan_fail(ch, -EIO, "cannot repost receive", NULL);
    }
    return 0;
}

static int completion(struct rcolo_channel *ch, struct ibv_wc *wc)
{
    struct rcolo_wr_ctx *ctx = rcolo_wc_ctx(wc);
    char detail[96];

    if (wc->status != IBV_WC_SUCCESS) {
        snprintf(detail, sizeof(detail), "%s failed: %s", rcolo_wc_what(wc),
                 ibv_wc_status_str(wc->status));
        return rcolo_chan_fail(ch, rcolo_wc_errno(wc->status), "", detail);
    }
    /* What completed must be what was posted: a peer's RDMA WRITE with
     * immediate would consume a receive and complete as something else. */
    if (!rcolo_wc_opcode_ok(wc)) {
        snprintf(detail, sizeof(detail), "(opcode %d, flags 0x%x)",
                 (int)wc->opcode, (unsigned)wc->wc_flags);
        return rcolo_chan_fail(
            ch, -EPROTO, "completion of another kind than posted ", detail);
    }
    switch (ctx->type) {
    case RCOLO_WR_SEND_SLOT:
        if (!rcolo_slots_retire(&ch->send, ctx->slot)) {
            return rcolo_chan_fail(ch, -EIO, "send completion out of order",
                                   NULL);
        }
        /* A SEND is signaled like every k-th WRITE: */
        __attribute__((fallthrough));
    case RCOLO_WR_WRITE:
        if (!rcolo_sq_completed(&ch->sq)) {
            return rcolo_chan_fail(ch, -EIO, "unexpected send completion",
                                   NULL);
        }
        return 0;
    case RCOLO_WR_RECV_SLOT:
        ch->recv.held[ctx->slot] = true;
        if (ch->role == RCOLO_PRIMARY) {
            return primary_recv_ctl(ch, wc, ctx->slot);
        }
        ch->rx.ready[rcolo_fifo_push(&ch->rx.ready_q)] = *wc;
        return 0;
    }
    return rcolo_chan_fail(ch, -EIO, "completion of an unknown work request",
                           NULL);
}

int rcolo_chan_progress(struct rcolo_channel *ch)
{
    struct ibv_wc wc[16];

    /*
     * The secondary's ready queue cannot overflow: it holds as many entries
     * as there are receive slots, and a slot completes again only after
     * rcolo_channel_release reposted it.
     */
    int n = ibv_poll_cq(ch->res.cq, 16, wc);
    if (n < 0) {
        return rcolo_chan_fail(ch, -EIO, "ibv_poll_cq failed", NULL);
    }
    for (int i = 0; i < n; i++) {
        int ret = completion(ch, &wc[i]);
        if (ret) {
            return ret;
        }
    }
    return n;
}

static int chan_poll(void *opaque)
{
    return rcolo_chan_progress(opaque);
}

static int chan_sleep(void *opaque, int64_t deadline)
{
    struct rcolo_channel *ch = opaque;

    /* Arm, then look once more: a completion may have raced with it. */
    ibv_req_notify_cq(ch->res.cq, 0);
    int n = rcolo_chan_progress(ch);
    if (n != 0) {
        return n < 0 ? n : 0;
    }
    return rcolo_cq_sleep(&ch->res, ch->core, deadline);
}

static bool chan_busy(void *opaque)
{
    struct rcolo_channel *ch = opaque;

    return __atomic_load_n(&ch->busy_poll, __ATOMIC_RELAXED);
}

static const struct rcolo_wait_ops chan_wait_ops = {
    .poll = chan_poll,
    .block = chan_sleep,
    .busy = chan_busy,
};

void rcolo_channel_set_busy_poll(struct rcolo_channel *ch, bool on)
{
    __atomic_store_n(&ch->busy_poll, on, __ATOMIC_RELEASE);
}

int rcolo_chan_wait(struct rcolo_channel *ch, bool (*done)(void *arg),
                    int64_t deadline, int64_t spin_ns)
{
    return rcolo_wait(ch->core, &chan_wait_ops, ch, done, ch, deadline,
                      spin_ns);
}

void rcolo_chan_note_owed_wait(struct rcolo_channel *ch, int64_t start)
{
    uint64_t waited = (uint64_t)(rcolo_now_ns() - start);

    if (waited >
        __atomic_load_n(&ch->stats.owed_wait_ns_max, __ATOMIC_RELAXED)) {
        __atomic_store_n(&ch->stats.owed_wait_ns_max, waited, __ATOMIC_RELAXED);
    }
}

int rcolo_chan_owed_wait(struct rcolo_channel *ch, bool (*done)(void *arg),
                         void *arg, int64_t spin_ns)
{
    int64_t start = rcolo_now_ns();
    int ret = rcolo_wait(ch->core, &chan_wait_ops, ch, done, arg,
                         rcolo_owed_deadline(ch->core), spin_ns);

    rcolo_chan_note_owed_wait(ch, start);
    return ret;
}

int rcolo_chan_post_send(struct rcolo_channel *ch, uint32_t slot, uint32_t len,
                         struct ibv_send_wr *wrs, struct ibv_sge *sges,
                         unsigned nchain)
{
    rcolo_slots_send_wr(&ch->send, slot, len, ch->res.max_inline, &wrs[nchain],
                        &sges[nchain]);
    wrs[nchain].next = NULL;
    rcolo_sq_posted(&ch->sq, true);
    int ret = rcolo_post_send(ch->id, wrs);
    if (ret) {
        return rcolo_chan_fail(ch, ret,
                               "ibv_post_send failed: ", strerror(-ret));
    }
    return 0;
}

/* A send slot and send-queue room for @wrs WRs, waiting for completions if
 * need be. */
struct sq_need {
    struct rcolo_channel *ch;
    uint32_t wrs;
};

static bool sq_ready(void *arg)
{
    struct sq_need *n = arg;

    return rcolo_sq_has_room(&n->ch->sq, n->wrs) &&
           !rcolo_fifo_full(&n->ch->send.inflight);
}

static bool sq_room(void *arg)
{
    struct sq_need *n = arg;

    return rcolo_sq_has_room(&n->ch->sq, n->wrs);
}

/* Wait for @ready(@need), owed by the peer. */
static int reserve(struct rcolo_channel *ch, bool (*ready)(void *arg),
                   struct sq_need *need)
{
    int ret = 0;

    /* Only a real wait reads the clock for its deadline. */
    if (!ready(need)) {
        ret = rcolo_chan_owed_wait(ch, ready, need, RCOLO_SPIN_NS);
    }
    if (ret == -ETIMEDOUT) {
        return rcolo_chan_stalled(ch, "acknowledged no message");
    }
    return ret;
}

int rcolo_chan_reserve_send(struct rcolo_channel *ch, uint32_t wrs, int *slot)
{
    struct sq_need need = {.ch = ch, .wrs = wrs};
    int ret = reserve(ch, sq_ready, &need);

    if (ret) {
        return ret;
    }
    *slot = rcolo_slots_acquire(&ch->send);
    return 0;
}

int rcolo_chan_reserve_sq(struct rcolo_channel *ch, uint32_t wrs)
{
    struct sq_need need = {.ch = ch, .wrs = wrs};

    return reserve(ch, sq_room, &need);
}

int rcolo_channel_get_stats(struct rcolo_channel *ch,
                            struct rcolo_channel_stats *out)
{
    if (!ch || !out) {
        return -EINVAL;
    }
    stats_read(&ch->stats, out);
    return 0;
}
