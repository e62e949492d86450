/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Flow-control state machines (see flow.h). */
#include <glib.h>

#include "flow.h"

uint32_t rcolo_pow2_roundup(uint32_t n)
{
    uint32_t p = 1;

    assert(n <= (1u << 31));
    while (p < n) {
        p <<= 1;
    }
    return p;
}

void rcolo_sq_init(struct rcolo_sq *q, uint32_t depth)
{
    uint32_t cap = rcolo_pow2_roundup(depth);

    q->depth = depth;
    q->posted = 0;
    q->done = 0;
    rcolo_fifo_init(&q->sig, cap);
    q->sig_pos = g_new0(uint64_t, cap);
}

void rcolo_sq_fini(struct rcolo_sq *q)
{
    g_free(q->sig_pos);
    q->sig_pos = NULL;
}

void rcolo_sq_posted(struct rcolo_sq *q, bool signaled)
{
    assert(rcolo_sq_has_room(q, 1));
    q->posted++;
    if (signaled) {
        /* At most depth WRs are in flight, so at most depth signaled. */
        q->sig_pos[rcolo_fifo_push(&q->sig)] = q->posted;
    }
}

bool rcolo_sq_completed(struct rcolo_sq *q)
{
    if (q->sig.count == 0) {
        return false;
    }
    q->done = q->sig_pos[rcolo_fifo_pop(&q->sig)];
    assert(q->done <= q->posted);
    return true;
}

bool rcolo_rx_accept(struct rcolo_rx_flow *f, uint64_t seq)
{
    if (seq != f->seq + 1) {
        return false;
    }
    f->seq = seq;
    f->held++;
    return true;
}

struct rcolo_rx_reply rcolo_rx_release(struct rcolo_rx_flow *f, bool fence,
                                       uint64_t seq)
{
    struct rcolo_rx_reply r = {0};

    assert(f->held > 0);
    f->held--;
    r.credits = rcolo_credit_return_add(&f->credit, 1);
    if (fence) {
        f->ack_pending = true;
        f->ack_seq = seq;
    }
    if (f->ack_pending && f->held == 0) {
        /* Every earlier descriptor is released: ack, with every credit. */
        r.credits += rcolo_credit_return_all(&f->credit);
        r.ack = f->ack_seq;
        f->ack_pending = false;
    }
    return r;
}
