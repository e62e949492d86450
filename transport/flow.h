/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Flow-control state machines, pure: no verbs, no locks, no I/O.  The data
 * channels and the control connection drive them from their completions;
 * the unit suite drives them with hostile sequences.  Each keeps its
 * invariants with asserts; each input that a peer controls is a return
 * value, never an assert.
 */
#ifndef RCOLO_FLOW_H
#define RCOLO_FLOW_H

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>

/* Smallest power of two >= @n (n <= 2^31). */
uint32_t rcolo_pow2_roundup(uint32_t n);

/* ----------------------------------------------------------- fifo */

/*
 * Head/count of a FIFO over a power-of-two ring of @mask + 1 entries; the
 * caller owns the entries and indexes them with the returned positions.
 */
struct rcolo_fifo {
    uint32_t head;
    uint32_t count;
    uint32_t mask;
};

static inline void rcolo_fifo_init(struct rcolo_fifo *f, uint32_t capacity)
{
    assert(capacity && (capacity & (capacity - 1)) == 0);
    f->head = 0;
    f->count = 0;
    f->mask = capacity - 1;
}

static inline bool rcolo_fifo_full(const struct rcolo_fifo *f)
{
    return f->count > f->mask;
}

/* Index for a new entry at the tail (the FIFO must not be full). */
static inline uint32_t rcolo_fifo_push(struct rcolo_fifo *f)
{
    assert(!rcolo_fifo_full(f));
    return (f->head + f->count++) & f->mask;
}

/* Index of the oldest entry (the FIFO must not be empty). */
static inline uint32_t rcolo_fifo_front(const struct rcolo_fifo *f)
{
    assert(f->count);
    return f->head;
}

/* Remove the oldest entry and return its index. */
static inline uint32_t rcolo_fifo_pop(struct rcolo_fifo *f)
{
    uint32_t i = rcolo_fifo_front(f);

    f->head = (f->head + 1) & f->mask;
    f->count--;
    return i;
}

/* -------------------------------------------------------- credits */

/*
 * Sender-side view of the peer's preposted receive slots.  take() consumes
 * one (false if none), give() adds what the peer returned and refuses more
 * than the peer ever had (a protocol error).
 */
struct rcolo_credits {
    uint32_t avail;
    uint32_t limit;
};

static inline void rcolo_credits_init(struct rcolo_credits *c, uint32_t n)
{
    c->avail = n;
    c->limit = n;
}

static inline bool rcolo_credits_take(struct rcolo_credits *c)
{
    if (c->avail == 0) {
        return false;
    }
    c->avail--;
    return true;
}

static inline bool rcolo_credits_give(struct rcolo_credits *c, uint32_t n)
{
    if (n > c->limit - c->avail) {
        return false;
    }
    c->avail += n;
    assert(c->avail <= c->limit);
    return true;
}

/*
 * Receiver side: slots consumed since the last credit return; returns the
 * number to send back now (0: keep accumulating).  Batching amortizes the
 * return message: the receiver answers once per @batch slots.
 */
struct rcolo_credit_return {
    uint32_t pending;
    uint32_t batch;
};

static inline uint32_t rcolo_credit_return_add(struct rcolo_credit_return *r,
                                               uint32_t n)
{
    r->pending += n;
    if (r->pending >= r->batch) {
        uint32_t give = r->pending;
        r->pending = 0;
        return give;
    }
    return 0;
}

/* Everything owed, now (piggy-backed on a message that goes anyway). */
static inline uint32_t rcolo_credit_return_all(struct rcolo_credit_return *r)
{
    uint32_t give = r->pending;

    r->pending = 0;
    return give;
}

/* Receive slots of which one in @batch returns credit: a quarter of the
 * window, so that the sender rarely waits. */
static inline uint32_t rcolo_credit_batch(uint32_t slots)
{
    return slots >= 8 ? slots / 4 : 1;
}

/* ---------------------------------------------------------- stream */

/*
 * The control connection's stream: every message that carries data (STREAM,
 * STREAM_END, REGION_TABLE) needs a credit, one of the peer's
 * RCOLO_STREAM_SLOTS receive slots, and returns its credit once consumed.
 * Credits go back piggy-backed on data or, when a batch is owed and no data
 * goes, in a credit-only message that needs no credit.  Each of those
 * carries at least a batch, so at most SLOTS / batch are ever in flight:
 * RCOLO_STREAM_EXTRA receive slots more than credits cover them
 * (unit-flow's stream model checks it).
 */
#define RCOLO_STREAM_SLOTS 16
#define RCOLO_STREAM_EXTRA 8

/* ------------------------------------------------------ send queue */

/*
 * Send-queue accounting of an RC QP on which only some WRs are signaled.
 * RC send completions arrive in posting order, so each signaled completion
 * retires every WR up to and including it: the positions of the signaled
 * WRs wait in a FIFO, and a completion pops the oldest.
 */
struct rcolo_sq {
    uint32_t depth;  /* WRs the queue holds */
    uint64_t posted; /* WRs posted */
    uint64_t done;   /* WRs known complete */
    struct rcolo_fifo sig;
    uint64_t *sig_pos; /* posted count of each signaled WR, oldest first */
};

void rcolo_sq_init(struct rcolo_sq *q, uint32_t depth);
void rcolo_sq_fini(struct rcolo_sq *q);

static inline uint32_t rcolo_sq_inflight(const struct rcolo_sq *q)
{
    return (uint32_t)(q->posted - q->done);
}

static inline bool rcolo_sq_has_room(const struct rcolo_sq *q, uint32_t n)
{
    return rcolo_sq_inflight(q) + n <= q->depth;
}

/* One WR was posted (there was room). */
void rcolo_sq_posted(struct rcolo_sq *q, bool signaled);

/* A signaled WR completed.  False if none was outstanding: a completion
 * the queue never asked for (a bug or a broken device). */
bool rcolo_sq_completed(struct rcolo_sq *q);

/* ----------------------------------------------- fence (primary) */

/*
 * One fence outstanding per channel at most: post() records the sequence
 * number of the fence descriptor, ack() accepts only its acknowledgement.
 */
struct rcolo_fence_tx {
    uint64_t posted; /* seq of the last fence sent, 0 = none */
    uint64_t acked;
};

static inline bool rcolo_fence_tx_idle(const struct rcolo_fence_tx *f)
{
    return f->posted == f->acked;
}

static inline void rcolo_fence_tx_post(struct rcolo_fence_tx *f, uint64_t seq)
{
    assert(rcolo_fence_tx_idle(f) && seq > f->posted);
    f->posted = seq;
}

/* The peer acked fence @seq: false if no fence is outstanding or @seq is
 * not the one (unsolicited, replayed or forged). */
static inline bool rcolo_fence_tx_ack(struct rcolo_fence_tx *f, uint64_t seq)
{
    if (rcolo_fence_tx_idle(f) || seq != f->posted) {
        return false;
    }
    f->acked = seq;
    return true;
}

/* --------------------------------------- descriptors (secondary) */

/*
 * The secondary's side of a data channel: descriptors must come in
 * sequence; each released one returns a credit (in batches); a fence is
 * acked once every descriptor before it is released, and its ack carries
 * every credit still owed.
 */
struct rcolo_rx_flow {
    uint64_t seq;  /* last descriptor accepted */
    uint32_t held; /* accepted, not yet released */
    struct rcolo_credit_return credit;
    bool ack_pending;
    uint64_t ack_seq;
};

static inline void rcolo_rx_flow_init(struct rcolo_rx_flow *f, uint32_t slots)
{
    *f = (struct rcolo_rx_flow){.credit.batch = rcolo_credit_batch(slots)};
}

/* Descriptor @seq arrived: false if out of sequence (gap or replay). */
bool rcolo_rx_accept(struct rcolo_rx_flow *f, uint64_t seq);

/* What to send after a release. */
struct rcolo_rx_reply {
    uint32_t credits; /* 0: nothing to send (unless ack) */
    uint64_t ack;     /* fence seq to ack, 0: none */
};

/* A descriptor was released (@fence: it was fence @seq). */
struct rcolo_rx_reply rcolo_rx_release(struct rcolo_rx_flow *f, bool fence,
                                       uint64_t seq);

#endif /* RCOLO_FLOW_H */
