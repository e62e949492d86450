/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The secondary's data path (struct rcolo_chan_rx): descriptors taken from
 * the completions channel.c queued, validated completely
 * (docs/protocol.md) and handed to the application; releases, which repost
 * the receive slot and return credits, and the fence acknowledgements they
 * owe.  Barriers and session fences are the library's own: answered here
 * (fence.c for the session fence), never handed out.  Nothing here
 * allocates or prints.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* Send @reply: a fence ack (@ack_flags RCOLO_FENCE_ACK_ALL: the session
 * fence's) if it has one, else credits alone. */
static int secondary_send_ctl(struct rcolo_channel *ch,
                              struct rcolo_rx_reply reply, uint8_t ack_flags)
{
    int slot;
    int ret = rcolo_chan_reserve_send(ch, 1, &slot);

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

    return rcolo_chan_post_send(ch, (uint32_t)slot, (uint32_t)len, &wr, &sge,
                                0);
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
static int take_pages(struct rcolo_channel *ch, struct rcolo_desc *desc,
                      const struct rcolo_desc_view *v, uint32_t slot);

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
        return rcolo_chan_fail(ch, -EPROTO, "malformed descriptor", NULL);
    }
    if (!rcolo_rx_accept(&rx->flow, v.seq)) {
        snprintf(detail, sizeof(detail), " (seq %llu, expected %llu)",
                 (unsigned long long)v.seq,
                 (unsigned long long)rx->flow.seq + 1);
        return rcolo_chan_fail(ch, -EPROTO, "descriptor out of sequence",
                               detail);
    }
    memset(desc, 0, sizeof(*desc));
    desc->seq = v.seq;
    desc->priv_ = (void *)(uintptr_t)(slot + 1);
    if (v.all) {
        /* Ours to answer, once every channel released what it names. */
        desc->kind = RCOLO_DESC_FENCE;
        int ret = rcolo_sfence_install(ch, &v);
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

    /* The region is used (bounds, zero pages) only while region_busy is
     * set: rcolo_region_remove refuses meanwhile (rcolo_chan_region). */
    __atomic_store_n(&ch->region_busy, 1, __ATOMIC_SEQ_CST);
    int ret = take_pages(ch, desc, &v, slot);
    __atomic_store_n(&ch->region_busy, 0, __ATOMIC_RELEASE);
    return ret;
}

static int take_pages(struct rcolo_channel *ch, struct rcolo_desc *desc,
                      const struct rcolo_desc_view *vp, uint32_t slot)
{
    struct rcolo_desc_view v = *vp;
    char detail[96];
    struct rcolo_region *r = rcolo_chan_region(ch, v.region_id);

    if (!r) {
        snprintf(detail, sizeof(detail), " %u", v.region_id);
        return rcolo_chan_fail(ch, -EPROTO, "descriptor names unknown region",
                               detail);
    }
    uint64_t *offs = ch->rx.offsets + (size_t)slot * RCOLO_MAX_DESC_PAGES;
    uint32_t bad = 0;
    if (rcolo_desc_offsets(&v, offs, r->length, r->page_size, &bad)) {
        snprintf(detail, sizeof(detail), " (entry %u of region %u, %llu bytes)",
                 bad, r->id, (unsigned long long)r->length);
        return rcolo_chan_fail(ch, -EPROTO,
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
    rcolo_stat_add(&ch->stats.descriptors, 1);
    rcolo_stat_add(&ch->stats.pages, v.n);
    rcolo_stat_add(&ch->stats.zero_pages, v.nzero);
    rcolo_stat_add(&ch->stats.bytes, (uint64_t)v.n * r->page_size);
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
                ret = rcolo_chan_progress(ch);
            }
            if (ret >= 0 && !descriptor_ready(ch)) {
                struct ibv_cq *cq;
                void *ctx;
                while (ibv_get_cq_event(ch->res.comp, &cq, &ctx) == 0) {
                    ibv_ack_cq_events(cq, 1);
                }
                ibv_req_notify_cq(ch->res.cq, 0);
                ret = rcolo_chan_progress(ch);
            }
            if (ret < 0) {
                return ret;
            }
            if (!descriptor_ready(ch)) {
                return -EAGAIN;
            }
        } else {
            ret =
                rcolo_chan_wait(ch, descriptor_ready, deadline, RCOLO_SPIN_NS);
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
        return rcolo_chan_fail(ch, ret, "cannot repost receive", NULL);
    }
    /* A session fence is acked across channels, not by the channel's flow. */
    bool fence = desc->kind == RCOLO_DESC_FENCE && by != RELEASE_SESSION_FENCE;
    struct rcolo_rx_reply reply =
        rcolo_rx_release(&ch->rx.flow, fence, desc->seq);
    if (by == RELEASE_BARRIER) {
        rcolo_stat_add(&ch->stats.barriers, 1);
    } else if (fence) {
        rcolo_stat_add(&ch->stats.fences, 1);
    }
    uint64_t session_ack = 0;
    if (ch->rx.flow.held == 0) {
        __atomic_store_n(&ch->rx.done_seq, ch->rx.flow.seq, __ATOMIC_SEQ_CST);
        session_ack = rcolo_sfence_claim(ch->s);
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
