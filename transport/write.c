/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The primary's data path (struct rcolo_chan_tx): RDMA WRITEs of dirty
 * pages straight from the primary's memory into the secondary's region,
 * each batch followed by a page descriptor (RC ordering places the data
 * before the descriptor's receive completes); credits; descriptor
 * batching; a channel's fences and barriers.  Nothing here allocates or
 * prints, and the session lock is taken only to look up a region the
 * channel has not used before.
 */
#include <errno.h>
#include <string.h>

#include "internal.h"

/* Largest RDMA WRITE built from a run of contiguous pages. */
#define RCOLO_MAX_WRITE_BYTES (1u << 20)
/* One send-queue WR in RCOLO_SIGNAL_EVERY is signaled, so that the queue
 * can be reclaimed. */
#define RCOLO_SIGNAL_EVERY 64

static bool have_credit(void *arg)
{
    struct rcolo_channel *ch = arg;

    return ch->tx.credits.avail > 0;
}

static int take_credit(struct rcolo_channel *ch)
{
    if (!have_credit(ch)) {
        rcolo_stat_add(&ch->stats.credit_waits, 1);
        int ret = rcolo_chan_owed_wait(ch, have_credit, ch, RCOLO_SPIN_NS);
        if (ret == -ETIMEDOUT) {
            return rcolo_chan_stalled(ch, "returned no credit");
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
        rcolo_stat_add(&ch->stats.bytes, tx->runs[i].length);
    }
    rcolo_stat_add(&ch->stats.write_wrs, nruns);
}

/* Encode a page descriptor into @slot and post it after the @nchain WRITEs
 * already built: RC ordering places their data before the descriptor's
 * receive completes. */
static int post_desc(struct rcolo_channel *ch, int slot, uint32_t region_id,
                     const uint64_t *offsets, unsigned n, const uint64_t *zero,
                     unsigned nzero, unsigned nchain)
{
    struct rcolo_chan_tx *tx = &ch->tx;
    uint8_t *buf = rcolo_slot_buf(&ch->send, (uint32_t)slot);
    size_t len = rcolo_desc_encode(buf, ch->send.size, false, region_id,
                                   ++tx->seq, offsets, n, zero, nzero);
    int ret = rcolo_chan_post_send(ch, (uint32_t)slot, (uint32_t)len, tx->wrs,
                                   tx->sges, nchain);
    if (!ret) {
        rcolo_stat_add(&ch->stats.descriptors, 1);
    }
    return ret;
}

/* A credit and a send slot for one descriptor (no WRITE before it). */
static int desc_slot(struct rcolo_channel *ch, int *slot)
{
    int ret = take_credit(ch);

    return ret ? ret : rcolo_chan_reserve_send(ch, 1, slot);
}

int rcolo_chan_flush_desc(struct rcolo_channel *ch)
{
    struct rcolo_pending_desc *pd = &ch->tx.pend;
    int slot;

    if (!pd->n && !pd->nzero) {
        return 0;
    }
    int ret = desc_slot(ch, &slot);
    if (!ret) {
        ret = post_desc(ch, slot, pd->region_id, pd->offsets, pd->n, pd->zero,
                        pd->nzero, 0);
    }
    if (!ret) {
        pd->n = pd->nzero = 0;
    }
    return ret;
}

int rcolo_chan_control_slot(struct rcolo_channel *ch, int *slot)
{
    int ret = rcolo_chan_flush_desc(ch);

    return ret ? ret : desc_slot(ch, slot);
}

/* Batched: post the WRITEs now (the last one signaled, so that their
 * send-queue room comes back without a descriptor behind them) and add the
 * pages to the pending descriptor. */
static int write_batched(struct rcolo_channel *ch, const struct rcolo_region *r,
                         const uint64_t *offsets, unsigned n,
                         const uint64_t *zero, unsigned nzero, unsigned nruns)
{
    struct rcolo_chan_tx *tx = &ch->tx;
    struct rcolo_pending_desc *pd = &tx->pend;
    int ret = 0;

    if ((pd->n || pd->nzero) &&
        (pd->region_id != r->id ||
         pd->n + pd->nzero + n + nzero > tx->batch_pages)) {
        ret = rcolo_chan_flush_desc(ch);
    }
    if (!ret && nruns) {
        ret = rcolo_chan_reserve_sq(ch, nruns);
        if (!ret) {
            build_writes(ch, r, nruns, true);
            tx->wrs[nruns - 1].next = NULL;
            ret = rcolo_post_send(ch->id, tx->wrs);
            if (ret) {
                return rcolo_chan_fail(
                    ch, ret, "ibv_post_send failed: ", strerror(-ret));
            }
        }
    }
    if (ret) {
        return ret;
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
        ret = rcolo_chan_flush_desc(ch);
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
    r = rcolo_chan_region(ch, region_id);
    if (!r) {
        return -ENOENT;
    }
    if (!offsets_valid(r, offsets, n) || !offsets_valid(r, zero, nzero)) {
        return -EINVAL;
    }

    if (n) {
        nruns = rcolo_coalesce(offsets, n, r->page_size, RCOLO_MAX_WRITE_BYTES,
                               tx->runs, RCOLO_MAX_DESC_PAGES, &consumed);
    }
    if (tx->batch_pages > 1) {
        ret = write_batched(ch, r, offsets, n, zero, nzero, nruns);
    } else {
        ret = take_credit(ch);
        if (!ret) {
            ret = rcolo_chan_reserve_send(ch, nruns + 1, &slot);
        }
        if (!ret) {
            build_writes(ch, r, nruns, false);
            ret =
                post_desc(ch, slot, region_id, offsets, n, zero, nzero, nruns);
        }
    }
    if (ret) {
        return ret;
    }
    rcolo_stat_add(&ch->stats.pages, n);
    rcolo_stat_add(&ch->stats.zero_pages, nzero);
    /* Reap what is done without waiting: keeps the CQ short. */
    ret = rcolo_chan_progress(ch);
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
    __atomic_store_n(&ch->region_busy, 1, __ATOMIC_SEQ_CST);
    ret = write_pages(ch, region_id, offsets, n, zero, nzero);
    __atomic_store_n(&ch->region_busy, 0, __ATOMIC_RELEASE);
    return ret;
}

int rcolo_channel_set_desc_batch(struct rcolo_channel *ch, unsigned max_pages)
{
    if (ch->role != RCOLO_PRIMARY || max_pages > RCOLO_MAX_DESC_PAGES) {
        return -EINVAL;
    }
    int ret = rcolo_chan_flush_desc(ch);
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
    return ret ? ret : rcolo_chan_flush_desc(ch);
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
    ret = rcolo_chan_control_slot(ch, &slot);
    if (ret) {
        return ret;
    }
    size_t len =
        rcolo_desc_encode(rcolo_slot_buf(&ch->send, (uint32_t)slot),
                          ch->send.size, flags, 0, ++tx->seq, NULL, 0, NULL, 0);
    ret = rcolo_chan_post_send(ch, (uint32_t)slot, (uint32_t)len, tx->wrs,
                               tx->sges, 0);
    if (ret) {
        return ret;
    }
    rcolo_fence_tx_post(&tx->fence, tx->seq);
    if (flags & RCOLO_DESC_FLAG_BARRIER) {
        rcolo_stat_add(&ch->stats.barriers, 1);
    } else {
        rcolo_stat_add(&ch->stats.fences, 1);
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
    ret = rcolo_chan_wait(ch, fence_acked, owed_first ? owed : mine,
                          RCOLO_FENCE_SPIN_NS);
    rcolo_chan_note_owed_wait(ch, start);
    if (ret == -ETIMEDOUT && owed_first) {
        return rcolo_chan_stalled(ch, "acknowledged no fence");
    }
    return ret;
}
