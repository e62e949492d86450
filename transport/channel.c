/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Data channels: the RDMA WRITE + descriptor data path and the fence
 * (primary, struct rcolo_chan_tx), the descriptor receive path
 * (secondary, struct rcolo_chan_rx), and the completion handling both
 * share.  Nothing here allocates or prints once the channel is set up,
 * and nothing takes the session lock on the data path except to look up
 * a region the channel has not used before.
 */
#include <errno.h>
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

    ret = rcolo_qp_create(ch->id, pd, &ch->res, sq_depth, nctl, err);
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

    ret =
        rcolo_qp_create(ch->id, pd, &ch->res, RCOLO_CTL_SEND_SLOTS, depth, err);
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

/*
 * Channel counters have one writer, the channel's thread, and are read by
 * any thread (rcolo_*_get_stats): relaxed atomic loads and stores, no
 * locked instruction on the data path, no torn or racy read.
 */
static inline void stat_add(uint64_t *counter, uint64_t n)
{
    __atomic_store_n(counter, __atomic_load_n(counter, __ATOMIC_RELAXED) + n,
                     __ATOMIC_RELAXED);
}

static void stats_read(const struct rcolo_channel_stats *in,
                       struct rcolo_channel_stats *out)
{
    const uint64_t *src = (const uint64_t *)in;
    uint64_t *dst = (uint64_t *)out;

    for (size_t i = 0; i < sizeof(*in) / sizeof(uint64_t); i++) {
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
    }
}

static int chan_fail(struct rcolo_channel *ch, int code, const char *what,
                     const char *detail)
{
    return rcolo_fail(ch->core, code, "data channel %u: %s%s", ch->index, what,
                      detail ? detail : "");
}

/* The peer withheld what it owes for the session's timeout: fail. */
static int stalled(struct rcolo_channel *ch, const char *what)
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
        return chan_fail(ch, -EPROTO, "malformed control message", NULL);
    }
    if (h.type == RCOLO_MSG_FENCE_ACK) {
        uint8_t flags;

        if (rcolo_fence_ack_decode(buf, wc->byte_len, &seq, &flags)) {
            return chan_fail(ch, -EPROTO, "malformed fence ack", NULL);
        }
        /* A session fence's ack may come on any channel (the one the
         * secondary released last on). */
        if (!rcolo_fence_tx_ack((flags & RCOLO_FENCE_ACK_ALL)
                                    ? &ch->s->sfence_tx
                                    : &ch->tx.fence,
                                seq)) {
            return chan_fail(ch, -EPROTO,
                             (flags & RCOLO_FENCE_ACK_ALL)
                                 ? "unexpected session fence ack"
                                 : "unexpected fence ack",
                             NULL);
        }
    } else if (h.type != RCOLO_MSG_CREDIT || wc->byte_len != RCOLO_HDR_LEN) {
        return chan_fail(ch, -EPROTO, "unexpected message type", NULL);
    }
    if (!rcolo_credits_give(&ch->tx.credits, h.credits)) {
        return chan_fail(ch, -EPROTO, "peer returned more credits than it had",
                         NULL);
    }
    if (rcolo_slots_post_recv(ch->id->qp, &ch->recv, slot)) {
        return chan_fail(ch, -EIO, "cannot repost receive", NULL);
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
        return chan_fail(ch, rcolo_wc_errno(wc->status), "", detail);
    }
    switch (ctx->type) {
    case RCOLO_WR_SEND_SLOT:
        if (!rcolo_slots_retire(&ch->send, ctx->slot)) {
            return chan_fail(ch, -EIO, "send completion out of order", NULL);
        }
        /* A SEND is signaled like every k-th WRITE: */
        __attribute__((fallthrough));
    case RCOLO_WR_WRITE:
        if (!rcolo_sq_completed(&ch->sq)) {
            return chan_fail(ch, -EIO, "unexpected send completion", NULL);
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
    return chan_fail(ch, -EIO, "completion of an unknown work request", NULL);
}

/*
 * Poll the CQ once.  Send completions free send-queue room and slots;
 * receive completions are control messages (primary, handled now) or
 * descriptors (secondary, queued for rcolo_channel_recv).  Returns the
 * number of completions seen or the session error.
 */
static int chan_progress(void *opaque)
{
    struct rcolo_channel *ch = opaque;
    struct ibv_wc wc[16];

    /*
     * The secondary's ready queue cannot overflow: it holds as many entries
     * as there are receive slots, and a slot completes again only after
     * rcolo_channel_release reposted it.
     */
    int n = ibv_poll_cq(ch->res.cq, 16, wc);
    if (n < 0) {
        return chan_fail(ch, -EIO, "ibv_poll_cq failed", NULL);
    }
    for (int i = 0; i < n; i++) {
        int ret = completion(ch, &wc[i]);
        if (ret) {
            return ret;
        }
    }
    return n;
}

static int chan_sleep(void *opaque, int64_t deadline)
{
    struct rcolo_channel *ch = opaque;

    /* Arm, then look once more: a completion may have raced with it. */
    ibv_req_notify_cq(ch->res.cq, 0);
    int n = chan_progress(ch);
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
    .poll = chan_progress,
    .block = chan_sleep,
    .busy = chan_busy,
};

void rcolo_channel_set_busy_poll(struct rcolo_channel *ch, bool on)
{
    __atomic_store_n(&ch->busy_poll, on, __ATOMIC_RELEASE);
}

/* Wait on this channel's completions until @done(@arg) or @deadline. */
static int chan_wait(struct rcolo_channel *ch, bool (*done)(void *arg),
                     int64_t deadline, int64_t spin_ns)
{
    return rcolo_wait(ch->core, &chan_wait_ops, ch, done, ch, deadline,
                      spin_ns);
}

/*
 * Remember the longest wait for something the peer owes (credits,
 * send-queue room, a fence acknowledgement) since @start: it tells an
 * operator how much margin the stall timeout (timeout=) has.
 */
static void note_owed_wait(struct rcolo_channel *ch, int64_t start)
{
    uint64_t waited = (uint64_t)(rcolo_now_ns() - start);

    if (waited >
        __atomic_load_n(&ch->stats.owed_wait_ns_max, __ATOMIC_RELAXED)) {
        __atomic_store_n(&ch->stats.owed_wait_ns_max, waited, __ATOMIC_RELAXED);
    }
}

/* Wait, until the session's owed deadline, for something the peer owes. */
static int owed_wait(struct rcolo_channel *ch, bool (*done)(void *arg),
                     void *arg, int64_t spin_ns)
{
    int64_t start = rcolo_now_ns();
    int ret = rcolo_wait(ch->core, &chan_wait_ops, ch, done, arg,
                         rcolo_owed_deadline(ch->core), spin_ns);

    note_owed_wait(ch, start);
    return ret;
}

/* Post the SEND of @len bytes in slot @slot, signaled, after the @nchain
 * RDMA WRITEs already built in @wrs/@sges (which have room for one more). */
static int post_send_slot(struct rcolo_channel *ch, uint32_t slot, uint32_t len,
                          struct ibv_send_wr *wrs, struct ibv_sge *sges,
                          unsigned nchain)
{
    rcolo_slots_send_wr(&ch->send, slot, len, ch->res.max_inline, &wrs[nchain],
                        &sges[nchain]);
    wrs[nchain].next = NULL;
    rcolo_sq_posted(&ch->sq, true);
    int ret = rcolo_post_send(ch->id, wrs);
    if (ret) {
        return chan_fail(ch, ret, "ibv_post_send failed: ", strerror(-ret));
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
        ret = owed_wait(ch, ready, need, RCOLO_SPIN_NS);
    }
    if (ret == -ETIMEDOUT) {
        return stalled(ch, "acknowledged no message");
    }
    return ret;
}

static int reserve_send(struct rcolo_channel *ch, uint32_t wrs, int *slot)
{
    struct sq_need need = {.ch = ch, .wrs = wrs};
    int ret = reserve(ch, sq_ready, &need);

    if (ret) {
        return ret;
    }
    *slot = rcolo_slots_acquire(&ch->send);
    return 0;
}

/* -------------------------------------------------------- primary */

/*
 * The region a write goes to, without the session lock when it is the last
 * one's.  Against rcolo_region_remove (a Dekker pair): this side sets
 * in_write, then reads the cache; remove clears every cache, then reads
 * every in_write.  So either remove sees in_write and refuses, or this side
 * sees the cleared cache and looks the region up under the lock, after
 * remove freed it.  A region is never used after it was freed.
 */
static struct rcolo_region *chan_region(struct rcolo_channel *ch, uint32_t id)
{
    struct rcolo_region *r =
        __atomic_load_n(&ch->tx.last_region, __ATOMIC_SEQ_CST);

    if (r && r->id == id) {
        return r;
    }
    pthread_mutex_lock(&ch->core->lock);
    r = rcolo_region_find_locked(ch->s, id);
    __atomic_store_n(&ch->tx.last_region, r, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&ch->core->lock);
    return r;
}

static bool have_credit(void *arg)
{
    struct rcolo_channel *ch = arg;

    return ch->tx.credits.avail > 0;
}

static int take_credit(struct rcolo_channel *ch)
{
    if (!have_credit(ch)) {
        stat_add(&ch->stats.credit_waits, 1);
        int ret = owed_wait(ch, have_credit, ch, RCOLO_SPIN_NS);
        if (ret == -ETIMEDOUT) {
            return stalled(ch, "returned no credit");
        }
        if (ret) {
            return ret;
        }
    }
    rcolo_credits_take(&ch->tx.credits);
    return 0;
}

static bool offsets_valid(const struct rcolo_region *r, const uint64_t *offs,
                          unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        if ((offs[i] & (r->page_size - 1)) || offs[i] >= r->length) {
            return false;
        }
    }
    return true;
}

/* Build the RDMA WRITEs of @nruns runs of tx->runs into tx->wrs, chained
 * (the last one's next is &tx->wrs[nruns]), and account for them; one in
 * RCOLO_SIGNAL_EVERY is signaled, and the last one if @signal_last. */
static void build_writes(struct rcolo_channel *ch, const struct rcolo_region *r,
                         unsigned nruns, bool signal_last)
{
    struct rcolo_chan_tx *tx = &ch->tx;

    for (unsigned i = 0; i < nruns; i++) {
        struct ibv_send_wr *wr = &tx->wrs[i];
        bool signaled = (ch->sq.posted + 1) % RCOLO_SIGNAL_EVERY == 0 ||
                        (signal_last && i == nruns - 1);

        tx->sges[i] = (struct ibv_sge){
            .addr = (uintptr_t)(r->addr + tx->runs[i].offset),
            .length = (uint32_t)tx->runs[i].length,
            .lkey = r->mr->lkey,
        };
        *wr = (struct ibv_send_wr){
            .wr_id = (uintptr_t)&tx->write_ctx,
            .next = &tx->wrs[i + 1],
            .sg_list = &tx->sges[i],
            .num_sge = 1,
            .opcode = IBV_WR_RDMA_WRITE,
            .send_flags = signaled ? IBV_SEND_SIGNALED : 0,
            .wr.rdma = {.remote_addr = r->remote_addr + tx->runs[i].offset,
                        .rkey = r->rkey},
        };
        rcolo_sq_posted(&ch->sq, signaled);
        stat_add(&ch->stats.bytes, tx->runs[i].length);
    }
    stat_add(&ch->stats.write_wrs, nruns);
}

/* Encode a page descriptor into @slot and post it after the @nchain WRITEs
 * already built: RC ordering places their data before the descriptor's
 * receive completes. */
static int post_desc(struct rcolo_channel *ch, int slot, uint32_t region_id,
                     const uint64_t *offsets, unsigned n, const uint64_t *zero,
                     unsigned nzero, uint64_t hostile_offset, unsigned nchain)
{
    struct rcolo_chan_tx *tx = &ch->tx;
    uint8_t *buf = rcolo_slot_buf(&ch->send, (uint32_t)slot);
    size_t len = rcolo_desc_encode(buf, ch->send.size, false, region_id,
                                   ++tx->seq, offsets, n, zero, nzero);

    if (hostile_offset && n) {
        uint64_t bad = htobe64(hostile_offset);
        memcpy(buf + RCOLO_DESC_FIXED_LEN, &bad, sizeof(bad));
    }
    int ret = post_send_slot(ch, (uint32_t)slot, (uint32_t)len, tx->wrs,
                             tx->sges, nchain);
    if (!ret) {
        stat_add(&ch->stats.descriptors, 1);
    }
    return ret;
}

/* Send the batched descriptor, if pages wait for one. */
static int flush_desc(struct rcolo_channel *ch)
{
    struct rcolo_pending_desc *pd = &ch->tx.pend;
    int slot;

    if (!pd->n && !pd->nzero) {
        return 0;
    }
    int ret = take_credit(ch);
    if (!ret) {
        ret = reserve_send(ch, 1, &slot);
    }
    if (!ret) {
        ret = post_desc(ch, slot, pd->region_id, pd->offsets, pd->n, pd->zero,
                        pd->nzero, pd->hostile_offset, 0);
    }
    if (!ret) {
        pd->n = pd->nzero = 0;
        pd->hostile_offset = 0;
    }
    return ret;
}

/* Batched: post the WRITEs now (the last one signaled, so that their
 * send-queue room comes back without a descriptor behind them) and add the
 * pages to the pending descriptor. */
static int write_batched(struct rcolo_channel *ch, const struct rcolo_region *r,
                         const uint64_t *offsets, unsigned n,
                         const uint64_t *zero, unsigned nzero, unsigned nruns,
                         bool hostile)
{
    struct rcolo_chan_tx *tx = &ch->tx;
    struct rcolo_pending_desc *pd = &tx->pend;
    int ret = 0;

    if ((pd->n || pd->nzero) &&
        (pd->region_id != r->id ||
         pd->n + pd->nzero + n + nzero > tx->batch_pages)) {
        ret = flush_desc(ch);
    }
    if (!ret && nruns) {
        struct sq_need need = {.ch = ch, .wrs = nruns};

        ret = reserve(ch, sq_room, &need);
        if (!ret) {
            build_writes(ch, r, nruns, true);
            tx->wrs[nruns - 1].next = NULL;
            ret = rcolo_post_send(ch->id, tx->wrs);
            if (ret) {
                return chan_fail(ch, ret,
                                 "ibv_post_send failed: ", strerror(-ret));
            }
        }
    }
    if (ret) {
        return ret;
    }
    if (hostile) {
        pd->hostile_offset = r->length; /* one page past the end */
    }
    pd->region_id = r->id;
    if (n) { /* memcpy's source may not be NULL, even for 0 bytes */
        memcpy(pd->offsets + pd->n, offsets, n * sizeof(*offsets));
    }
    if (nzero) {
        memcpy(pd->zero + pd->nzero, zero, nzero * sizeof(*zero));
    }
    pd->n += n;
    pd->nzero += nzero;
    if (pd->n + pd->nzero >= tx->batch_pages) {
        ret = flush_desc(ch);
    }
    return ret;
}

static int write_pages(struct rcolo_channel *ch, uint32_t region_id,
                       const uint64_t *offsets, unsigned n,
                       const uint64_t *zero, unsigned nzero)
{
    struct rcolo_chan_tx *tx = &ch->tx;
    struct rcolo_region *r;
    unsigned nruns = 0, consumed = 0;
    int slot;
    int ret = rcolo_status(ch->core);

    if (ret) {
        return ret;
    }
    if ((uint64_t)n + nzero > RCOLO_MAX_DESC_PAGES || (n && !offsets) ||
        (nzero && !zero)) {
        return -EINVAL;
    }
    r = chan_region(ch, region_id);
    if (!r) {
        return -ENOENT;
    }
    if (!offsets_valid(r, offsets, n) || !offsets_valid(r, zero, nzero)) {
        return -EINVAL;
    }

    bool hostile = rcolo_fault_fire(RCOLO_FAULT_DESC_OUT_OF_BOUNDS);
    if (!hostile && n) {
        nruns = rcolo_coalesce(offsets, n, r->page_size, RCOLO_MAX_WRITE_BYTES,
                               tx->runs, RCOLO_MAX_DESC_PAGES, &consumed);
    }
    if (tx->batch_pages > 1) {
        ret = write_batched(ch, r, offsets, n, zero, nzero, nruns, hostile);
    } else {
        ret = take_credit(ch);
        if (!ret) {
            ret = reserve_send(ch, nruns + 1, &slot);
        }
        if (!ret) {
            build_writes(ch, r, nruns, false);
            ret = post_desc(ch, slot, region_id, offsets, n, zero, nzero,
                            hostile ? r->length : 0, nruns);
        }
    }
    if (ret) {
        return ret;
    }
    stat_add(&ch->stats.pages, n);
    stat_add(&ch->stats.zero_pages, nzero);
    /* Reap what is done without waiting: keeps the CQ short. */
    ret = chan_progress(ch);
    return ret < 0 ? ret : 0;
}

int rcolo_write_pages(struct rcolo_channel *ch, uint32_t region_id,
                      const uint64_t *offsets, unsigned n, const uint64_t *zero,
                      unsigned nzero)
{
    int ret;

    if (ch->role != RCOLO_PRIMARY) {
        return -EINVAL;
    }
    __atomic_store_n(&ch->tx.in_write, 1, __ATOMIC_SEQ_CST);
    ret = write_pages(ch, region_id, offsets, n, zero, nzero);
    __atomic_store_n(&ch->tx.in_write, 0, __ATOMIC_RELEASE);
    return ret;
}

int rcolo_channel_set_desc_batch(struct rcolo_channel *ch, unsigned max_pages)
{
    if (ch->role != RCOLO_PRIMARY || max_pages > RCOLO_MAX_DESC_PAGES) {
        return -EINVAL;
    }
    int ret = flush_desc(ch);
    if (!ret) {
        ch->tx.batch_pages = max_pages;
    }
    return ret;
}

int rcolo_channel_flush(struct rcolo_channel *ch)
{
    if (ch->role != RCOLO_PRIMARY) {
        return -EINVAL;
    }
    int ret = rcolo_status(ch->core);
    return ret ? ret : flush_desc(ch);
}

static int post_fence(struct rcolo_channel *ch, uint8_t flags)
{
    struct rcolo_chan_tx *tx = &ch->tx;
    int slot;
    int ret = rcolo_status(ch->core);

    if (ret) {
        return ret;
    }
    if (ch->role != RCOLO_PRIMARY || !rcolo_fence_tx_idle(&tx->fence)) {
        return -EINVAL;
    }
    ret = flush_desc(ch);
    if (!ret) {
        ret = take_credit(ch);
    }
    if (!ret) {
        ret = reserve_send(ch, 1, &slot);
    }
    if (ret) {
        return ret;
    }
    size_t len =
        rcolo_desc_encode(rcolo_slot_buf(&ch->send, (uint32_t)slot),
                          ch->send.size, flags, 0, ++tx->seq, NULL, 0, NULL, 0);
    ret =
        post_send_slot(ch, (uint32_t)slot, (uint32_t)len, tx->wrs, tx->sges, 0);
    if (ret) {
        return ret;
    }
    rcolo_fence_tx_post(&tx->fence, tx->seq);
    if (flags & RCOLO_DESC_FLAG_BARRIER) {
        stat_add(&ch->stats.barriers, 1);
    } else {
        stat_add(&ch->stats.fences, 1);
    }
    return 0;
}

int rcolo_channel_fence_post(struct rcolo_channel *ch)
{
    return post_fence(ch, RCOLO_DESC_FLAG_FENCE);
}

int rcolo_channel_barrier_post(struct rcolo_channel *ch)
{
    return post_fence(ch, RCOLO_DESC_FLAG_FENCE | RCOLO_DESC_FLAG_BARRIER);
}

static bool fence_acked(void *arg)
{
    struct rcolo_channel *ch = arg;

    return rcolo_fence_tx_idle(&ch->tx.fence);
}

int rcolo_channel_fence_wait(struct rcolo_channel *ch, int timeout_ms)
{
    int64_t start = rcolo_now_ns();
    int64_t mine = rcolo_deadline(timeout_ms);
    int64_t owed = rcolo_owed_deadline(ch->core);
    bool owed_first = mine < 0 || owed < mine;
    int ret;

    if (ch->role != RCOLO_PRIMARY) {
        return -EINVAL;
    }
    ret = chan_wait(ch, fence_acked, owed_first ? owed : mine,
                    RCOLO_FENCE_SPIN_NS);
    note_owed_wait(ch, start);
    if (ret == -ETIMEDOUT && owed_first) {
        return stalled(ch, "acknowledged no fence");
    }
    return ret;
}

/* ------------------------------------------------------ secondary */

/* Send @reply: a fence ack (@ack_flags RCOLO_FENCE_ACK_ALL: the session
 * fence's) if it has one, else credits alone. */
static int secondary_send_ctl(struct rcolo_channel *ch,
                              struct rcolo_rx_reply reply, uint8_t ack_flags)
{
    int slot;
    int ret = reserve_send(ch, 1, &slot);

    if (ret) {
        return ret;
    }
    uint8_t *buf = rcolo_slot_buf(&ch->send, (uint32_t)slot);
    size_t len =
        reply.ack
            ? rcolo_fence_ack_encode(buf, ch->send.size, ack_flags, reply.ack,
                                     (uint16_t)reply.credits)
            : rcolo_credit_encode(buf, ch->send.size, (uint16_t)reply.credits);
    struct ibv_send_wr wr;
    struct ibv_sge sge;

    return post_send_slot(ch, (uint32_t)slot, (uint32_t)len, &wr, &sge, 0);
}

/* Who releases a descriptor: the application, or the library itself (a
 * barrier; a session fence). */
enum release_by {
    RELEASE_APP,
    RELEASE_BARRIER,
    RELEASE_SESSION_FENCE,
};

static int release(struct rcolo_channel *ch, struct rcolo_desc *desc,
                   enum release_by by);

/*
 * A session fence arrived on channel 0: check it and install it (see
 * struct rcolo_sfence_rx).  Returns 0 or the session's error.
 */
static int sfence_install(struct rcolo_channel *ch,
                          const struct rcolo_desc_view *v)
{
    struct rcolo_session *s = ch->s;
    uint64_t target[RCOLO_MAX_CHANNELS];
    char detail[96];

    if (ch->index != 0 || v->n != s->channels) {
        snprintf(detail, sizeof(detail), " (on channel %u, for %u channels)",
                 ch->index, v->n);
        return chan_fail(ch, -EPROTO, "malformed session fence", detail);
    }
    rcolo_desc_entries(v, target);
    /* Its own channel's entry is exact: the descriptor just before it. */
    if (target[0] != v->seq - 1) {
        return chan_fail(ch, -EPROTO,
                         "session fence names the wrong last "
                         "descriptor of its own channel",
                         NULL);
    }
    if (__atomic_load_n(&s->sfence_rx.pending, __ATOMIC_SEQ_CST)) {
        return chan_fail(ch, -EPROTO, "session fence while one is unanswered",
                         NULL);
    }
    /* Relaxed atomics: a thread that read the last fence's seq may still
     * read these; its compare-and-swap then fails. */
    for (unsigned i = 0; i < v->n; i++) {
        __atomic_store_n(&s->sfence_rx.target[i], target[i], __ATOMIC_RELAXED);
    }
    __atomic_store_n(&s->sfence_rx.pending, v->seq, __ATOMIC_SEQ_CST);
    stat_add(&ch->stats.fences, 1);
    return 0;
}

/*
 * After a release left this channel holding nothing: the session fence's
 * seq if every channel has now released what it names and this thread won
 * the right to ack it, else 0.
 */
static uint64_t sfence_claim(struct rcolo_session *s)
{
    uint64_t seq = __atomic_load_n(&s->sfence_rx.pending, __ATOMIC_SEQ_CST);

    if (!seq) {
        return 0;
    }
    for (unsigned i = 0; i < s->channels; i++) {
        struct rcolo_channel *c =
            __atomic_load_n(&s->chan[i], __ATOMIC_ACQUIRE);
        uint64_t done =
            c ? __atomic_load_n(&c->rx.done_seq, __ATOMIC_SEQ_CST) : 0;

        if (done < __atomic_load_n(&s->sfence_rx.target[i], __ATOMIC_RELAXED)) {
            return 0; /* that channel's release will look again */
        }
    }
    return __atomic_compare_exchange_n(&s->sfence_rx.pending, &seq, 0, false,
                                       __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)
               ? seq
               : 0;
}

/* 0: @desc is the application's; 1: a barrier or session fence, answered
 * here; or -errno. */
static int take_descriptor(struct rcolo_channel *ch, struct rcolo_desc *desc)
{
    struct rcolo_chan_rx *rx = &ch->rx;
    struct ibv_wc *wc = &rx->ready[rcolo_fifo_pop(&rx->ready_q)];
    uint32_t slot = rcolo_wc_ctx(wc)->slot;
    const uint8_t *buf = rcolo_slot_buf(&ch->recv, slot);
    struct rcolo_desc_view v;
    char detail[96];

    if (rcolo_desc_decode(buf, wc->byte_len, &v)) {
        return chan_fail(ch, -EPROTO, "malformed descriptor", NULL);
    }
    if (!rcolo_rx_accept(&rx->flow, v.seq)) {
        snprintf(detail, sizeof(detail), " (seq %llu, expected %llu)",
                 (unsigned long long)v.seq,
                 (unsigned long long)rx->flow.seq + 1);
        return chan_fail(ch, -EPROTO, "descriptor out of sequence", detail);
    }
    memset(desc, 0, sizeof(*desc));
    desc->seq = v.seq;
    desc->priv_ = (void *)(uintptr_t)(slot + 1);
    if (v.all) {
        /* Ours to answer, once every channel released what it names. */
        desc->kind = RCOLO_DESC_FENCE;
        int ret = sfence_install(ch, &v);
        if (!ret) {
            ret = release(ch, desc, RELEASE_SESSION_FENCE);
        }
        return ret ? ret : 1;
    }
    if (v.barrier) {
        /*
         * Ours to answer: released now, acked (by rcolo_rx_release) once
         * the application released every earlier descriptor.
         */
        desc->kind = RCOLO_DESC_FENCE;
        int ret = release(ch, desc, RELEASE_BARRIER);
        return ret ? ret : 1;
    }
    if (v.fence) {
        desc->kind = RCOLO_DESC_FENCE;
        return 0;
    }

    pthread_mutex_lock(&ch->core->lock);
    struct rcolo_region *r = rcolo_region_find_locked(ch->s, v.region_id);
    pthread_mutex_unlock(&ch->core->lock);
    if (!r) {
        snprintf(detail, sizeof(detail), " %u", v.region_id);
        return chan_fail(ch, -EPROTO, "descriptor names unknown region",
                         detail);
    }
    uint64_t *offs = rx->offsets + (size_t)slot * RCOLO_MAX_DESC_PAGES;
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
    stat_add(&ch->stats.descriptors, 1);
    stat_add(&ch->stats.pages, v.n);
    stat_add(&ch->stats.zero_pages, v.nzero);
    stat_add(&ch->stats.bytes, (uint64_t)v.n * r->page_size);
    return 0;
}

static bool descriptor_ready(void *arg)
{
    struct rcolo_channel *ch = arg;

    return ch->rx.ready_q.count > 0;
}

int rcolo_channel_recv(struct rcolo_channel *ch, struct rcolo_desc *desc,
                       int timeout_ms)
{
    int64_t deadline = rcolo_deadline(timeout_ms);
    int ret;

    if (ch->role != RCOLO_SECONDARY) {
        return -EINVAL;
    }
    do {
        ret = rcolo_status(ch->core);
        if (ret) {
            return ret;
        }
        if (timeout_ms == 0) {
            /*
             * Event-loop use: consume stale events, arm, and look once more
             * (a completion may have raced with arming), so that
             * rcolo_channel_fd() polls readable exactly when work comes.
             */
            if (!descriptor_ready(ch)) {
                ret = chan_progress(ch);
            }
            if (ret >= 0 && !descriptor_ready(ch)) {
                struct ibv_cq *cq;
                void *ctx;
                while (ibv_get_cq_event(ch->res.comp, &cq, &ctx) == 0) {
                    ibv_ack_cq_events(cq, 1);
                }
                ibv_req_notify_cq(ch->res.cq, 0);
                ret = chan_progress(ch);
            }
            if (ret < 0) {
                return ret;
            }
            if (!descriptor_ready(ch)) {
                return -EAGAIN;
            }
        } else {
            ret = chan_wait(ch, descriptor_ready, deadline, RCOLO_SPIN_NS);
            if (ret) {
                return ret;
            }
        }
        /* A barrier is not the caller's: look for the next descriptor. */
        ret = take_descriptor(ch, desc);
    } while (ret == 1);
    return ret;
}

static int release(struct rcolo_channel *ch, struct rcolo_desc *desc,
                   enum release_by by)
{
    uint32_t slot = (uint32_t)((uintptr_t)desc->priv_ - 1);
    int ret;

    if (ch->role != RCOLO_SECONDARY || slot >= ch->recv.count ||
        !ch->recv.held[slot]) {
        return -EINVAL;
    }
    ret = rcolo_status(ch->core);
    if (ret) {
        return ret;
    }
    desc->priv_ = NULL;
    ret = rcolo_slots_post_recv(ch->id->qp, &ch->recv, slot);
    if (ret) {
        return chan_fail(ch, ret, "cannot repost receive", NULL);
    }
    /* A session fence is acked across channels, not by the channel's flow. */
    bool fence = desc->kind == RCOLO_DESC_FENCE && by != RELEASE_SESSION_FENCE;
    struct rcolo_rx_reply reply =
        rcolo_rx_release(&ch->rx.flow, fence, desc->seq);
    if (by == RELEASE_BARRIER) {
        stat_add(&ch->stats.barriers, 1);
    } else if (fence) {
        stat_add(&ch->stats.fences, 1);
    }
    uint64_t session_ack = 0;
    if (ch->rx.flow.held == 0) {
        __atomic_store_n(&ch->rx.done_seq, ch->rx.flow.seq, __ATOMIC_SEQ_CST);
        session_ack = sfence_claim(ch->s);
    }
    if (reply.credits || reply.ack) {
        ret = secondary_send_ctl(ch, reply, 0);
    }
    if (!ret && session_ack) {
        /* With every credit still owed on this channel. */
        struct rcolo_rx_reply all = {
            .credits = rcolo_credit_return_all(&ch->rx.flow.credit),
            .ack = session_ack,
        };
        ret = secondary_send_ctl(ch, all, RCOLO_FENCE_ACK_ALL);
    }
    return ret;
}

int rcolo_channel_release(struct rcolo_channel *ch, struct rcolo_desc *desc)
{
    return release(ch, desc, RELEASE_APP);
}

/* ------------------------------------------------------------ fence */

/*
 * The session fence: one descriptor on channel 0 naming the last
 * descriptor sent on every channel, one acknowledgement from the
 * secondary's library once all of them are released.  A fence of every
 * channel instead needs every receive thread to wake up, which costs more
 * than the round trip wherever threads outnumber CPUs.
 *
 * It covers the channels established when it starts: another thread may
 * still be connecting one, which has sent nothing yet and has no CQ to
 * wait on.
 */
struct sfence_wait {
    struct rcolo_session *s;
    unsigned n;
    struct rcolo_channel *ch[RCOLO_MAX_CHANNELS];
};

static int sfence_progress(void *opaque)
{
    struct sfence_wait *w = opaque;
    int found = 0;

    for (unsigned i = 0; i < w->n; i++) {
        int n = chan_progress(w->ch[i]);
        if (n < 0) {
            return n;
        }
        found += n;
    }
    return found;
}

static int sfence_sleep(void *opaque, int64_t deadline)
{
    struct sfence_wait *w = opaque;
    struct rcolo_qp_res *res[RCOLO_MAX_CHANNELS];

    for (unsigned i = 0; i < w->n; i++) {
        ibv_req_notify_cq(w->ch[i]->res.cq, 0);
        res[i] = &w->ch[i]->res;
    }
    /* Look once more: a completion may have raced with arming. */
    int found = sfence_progress(w);
    if (found != 0) {
        return found < 0 ? found : 0;
    }
    return rcolo_cqs_sleep(res, w->n, &w->s->core, deadline);
}

static const struct rcolo_wait_ops sfence_wait_ops = {
    .poll = sfence_progress,
    .block = sfence_sleep,
};

static bool sfence_acked(void *arg)
{
    struct rcolo_session *s = arg;

    return rcolo_fence_tx_idle(&s->sfence_tx);
}

/* Post the session fence on channel 0 (w->ch[0]), naming the last
 * descriptor of every established channel (0: none, or not established). */
static int sfence_post(struct sfence_wait *w)
{
    struct rcolo_session *s = w->s;
    struct rcolo_channel *ch = w->ch[0];
    uint64_t last[RCOLO_MAX_CHANNELS] = {0};
    int slot;
    int ret = 0;

    /* Batched pages first: the fence names their descriptors. */
    for (unsigned i = 0; !ret && i < w->n; i++) {
        ret = flush_desc(w->ch[i]);
    }
    if (!ret) {
        ret = take_credit(ch);
    }
    if (!ret) {
        ret = reserve_send(ch, 1, &slot);
    }
    if (ret) {
        return ret;
    }
    for (unsigned i = 0; i < w->n; i++) {
        last[w->ch[i]->index] = w->ch[i]->tx.seq;
    }
    size_t len = rcolo_desc_encode(
        rcolo_slot_buf(&ch->send, (uint32_t)slot), ch->send.size,
        RCOLO_DESC_FLAG_FENCE | RCOLO_DESC_FLAG_BARRIER | RCOLO_DESC_FLAG_ALL,
        0, ++ch->tx.seq, last, s->channels, NULL, 0);
    ret = post_send_slot(ch, (uint32_t)slot, (uint32_t)len, ch->tx.wrs,
                         ch->tx.sges, 0);
    if (ret) {
        return ret;
    }
    rcolo_fence_tx_post(&s->sfence_tx, ch->tx.seq);
    stat_add(&ch->stats.fences, 1);
    return 0;
}

int rcolo_fence(struct rcolo_session *s, int timeout_ms)
{
    int64_t t0 = rcolo_now_ns();
    int64_t mine = rcolo_deadline(timeout_ms);
    int64_t owed = rcolo_owed_deadline(&s->core);
    bool owed_first = mine < 0 || owed < mine;
    struct sfence_wait w = {.s = s};
    int ret;

    if (s->role != RCOLO_PRIMARY || !rcolo_fence_tx_idle(&s->sfence_tx)) {
        return -EINVAL;
    }
    ret = rcolo_status(&s->core);
    if (ret) {
        return ret;
    }
    pthread_mutex_lock(&s->core.lock);
    for (unsigned i = 0; i < s->channels; i++) {
        if (s->chan[i] && s->chan[i]->state == RCOLO_CHAN_ESTABLISHED) {
            w.ch[w.n++] = s->chan[i];
        }
    }
    pthread_mutex_unlock(&s->core.lock);
    if (!w.n || w.ch[0]->index != 0) {
        return -ENOTCONN; /* the fence goes on channel 0 */
    }
    ret = sfence_post(&w);
    if (!ret) {
        ret = rcolo_wait(&s->core, &sfence_wait_ops, &w, sfence_acked, s,
                         owed_first ? owed : mine, RCOLO_FENCE_SPIN_NS);
        note_owed_wait(w.ch[0], t0);
    }
    if (ret == -ETIMEDOUT && owed_first) {
        return stalled(w.ch[0], "acknowledged no session fence");
    }
    if (ret) {
        return ret;
    }
    uint64_t dt = (uint64_t)(rcolo_now_ns() - t0);
    pthread_mutex_lock(&s->core.lock);
    s->stats.fences++;
    s->stats.fence_ns_total += dt;
    s->stats.fence_ns_last = dt;
    if (dt > s->stats.fence_ns_max) {
        s->stats.fence_ns_max = dt;
    }
    pthread_mutex_unlock(&s->core.lock);
    return 0;
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
