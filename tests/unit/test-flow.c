/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Flow control without a device: the FIFO rings, credits and their batched
 * return, send-queue accounting with selective signaling, the primary's
 * fence sequencing, the secondary's descriptor sequencing and fence acks,
 * a sender/receiver model of a whole channel and one of the control
 * connection's stream (both directions), driven by random interleavings.
 * Hostile inputs (over-credit, unsolicited or replayed FENCE_ACK, sequence gaps
 * and replays, completions never asked for) must be refused as return values,
 * never trip an assert.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "flow.h"

/* ----------------------------------------------------------------- fifo */

static void test_pow2(void **state)
{
    assert_int_equal(rcolo_pow2_roundup(0), 1);
    assert_int_equal(rcolo_pow2_roundup(1), 1);
    assert_int_equal(rcolo_pow2_roundup(2), 2);
    assert_int_equal(rcolo_pow2_roundup(3), 4);
    assert_int_equal(rcolo_pow2_roundup(64), 64);
    assert_int_equal(rcolo_pow2_roundup(66), 128);
    assert_int_equal(rcolo_pow2_roundup(1025), 2048);
}

static void test_fifo_wraps_in_order(void **state)
{
    struct rcolo_fifo f;
    uint32_t vals[8];
    uint32_t next_in = 0, next_out = 0;

    rcolo_fifo_init(&f, 8);
    /* Push and pop in uneven steps for many laps: order is kept, the ring
     * never holds more than its capacity, indexes stay inside it. */
    for (int round = 0; round < 1000; round++) {
        int pushes = round % 5, pops = (round * 7) % 4;
        for (int i = 0; i < pushes && !rcolo_fifo_full(&f); i++) {
            uint32_t idx = rcolo_fifo_push(&f);
            assert_true(idx < 8);
            vals[idx] = next_in++;
        }
        for (int i = 0; i < pops && f.count; i++) {
            assert_int_equal(vals[rcolo_fifo_front(&f)], next_out);
            assert_int_equal(vals[rcolo_fifo_pop(&f)], next_out);
            next_out++;
        }
        assert_true(f.count <= 8);
        assert_int_equal(f.count, next_in - next_out);
    }
    assert_true(next_in > 1000);
    while (f.count) {
        assert_int_equal(vals[rcolo_fifo_pop(&f)], next_out++);
    }
    assert_int_equal(next_in, next_out);
}

static void test_fifo_full(void **state)
{
    struct rcolo_fifo f;

    rcolo_fifo_init(&f, 4);
    for (int i = 0; i < 4; i++) {
        assert_false(rcolo_fifo_full(&f));
        rcolo_fifo_push(&f);
    }
    assert_true(rcolo_fifo_full(&f));
    rcolo_fifo_pop(&f);
    assert_false(rcolo_fifo_full(&f));
}

/* -------------------------------------------------------------- credits */

static void test_credits_over_credit(void **state)
{
    struct rcolo_credits c;

    rcolo_credits_init(&c, 4);
    for (int i = 0; i < 4; i++) {
        assert_true(rcolo_credits_take(&c));
    }
    assert_false(rcolo_credits_take(&c)); /* none left: the sender waits */
    assert_true(rcolo_credits_give(&c, 3));
    assert_false(rcolo_credits_give(&c, 2)); /* 3 + 2 > 4: hostile */
    assert_int_equal(c.avail, 3);            /* ... and nothing changed */
    assert_true(rcolo_credits_give(&c, 1));
    assert_false(rcolo_credits_give(&c, 1)); /* all back: not one more */
    assert_false(rcolo_credits_give(&c, UINT32_MAX)); /* no wrap-around */
    assert_int_equal(c.avail, 4);
}

static void test_credit_return_batches(void **state)
{
    struct rcolo_credit_return r = {.batch = rcolo_credit_batch(64)};
    uint32_t returned = 0;

    assert_int_equal(r.batch, 16);
    assert_int_equal(rcolo_credit_batch(4), 1);
    for (int i = 1; i <= 100; i++) {
        uint32_t give = rcolo_credit_return_add(&r, 1);
        assert_true(give == 0 || give == 16);
        assert_int_equal(give != 0, i % 16 == 0);
        returned += give;
    }
    assert_int_equal(returned, 96);
    assert_int_equal(rcolo_credit_return_all(&r), 4);
    assert_int_equal(rcolo_credit_return_all(&r), 0);
}

/* ----------------------------------------------------------- send queue */

static void test_sq_selective_signaling(void **state)
{
    struct rcolo_sq q;

    rcolo_sq_init(&q, 8);
    /* 7 unsignaled WRITEs and a signaled SEND fill the queue. */
    for (int i = 0; i < 7; i++) {
        rcolo_sq_posted(&q, false);
    }
    assert_true(rcolo_sq_has_room(&q, 1));
    rcolo_sq_posted(&q, true);
    assert_false(rcolo_sq_has_room(&q, 1));
    assert_int_equal(rcolo_sq_inflight(&q), 8);
    /* Its one completion retires all eight. */
    assert_true(rcolo_sq_completed(&q));
    assert_int_equal(rcolo_sq_inflight(&q), 0);
    assert_true(rcolo_sq_has_room(&q, 8));
    assert_false(rcolo_sq_has_room(&q, 9));
    rcolo_sq_fini(&q);
}

static void test_sq_partial_retire(void **state)
{
    struct rcolo_sq q;

    rcolo_sq_init(&q, 16);
    rcolo_sq_posted(&q, false);
    rcolo_sq_posted(&q, true); /* 2 */
    rcolo_sq_posted(&q, false);
    rcolo_sq_posted(&q, false);
    rcolo_sq_posted(&q, true); /* 5 */
    rcolo_sq_posted(&q, false);
    assert_true(rcolo_sq_completed(&q));
    assert_int_equal(rcolo_sq_inflight(&q), 4);
    assert_true(rcolo_sq_completed(&q));
    assert_int_equal(rcolo_sq_inflight(&q), 1); /* the unsignaled tail */
    rcolo_sq_fini(&q);
}

static void test_sq_unexpected_completion(void **state)
{
    struct rcolo_sq q;

    rcolo_sq_init(&q, 4);
    assert_false(rcolo_sq_completed(&q)); /* nothing was asked for */
    rcolo_sq_posted(&q, true);
    assert_true(rcolo_sq_completed(&q));
    assert_false(rcolo_sq_completed(&q)); /* a second, duplicated one */
    assert_int_equal(rcolo_sq_inflight(&q), 0);
    rcolo_sq_fini(&q);
}

/* ---------------------------------------------------------------- fence */

static void test_fence_tx_sequence(void **state)
{
    struct rcolo_fence_tx f = {0};

    assert_true(rcolo_fence_tx_idle(&f));
    assert_false(rcolo_fence_tx_ack(&f, 0)); /* unsolicited, seq 0 */
    assert_false(rcolo_fence_tx_ack(&f, 1)); /* unsolicited */
    rcolo_fence_tx_post(&f, 5);
    assert_false(rcolo_fence_tx_idle(&f));
    assert_false(rcolo_fence_tx_ack(&f, 4)); /* an older one */
    assert_false(rcolo_fence_tx_ack(&f, 6)); /* a future one */
    assert_true(rcolo_fence_tx_ack(&f, 5));
    assert_true(rcolo_fence_tx_idle(&f));
    assert_false(rcolo_fence_tx_ack(&f, 5)); /* replayed */
    rcolo_fence_tx_post(&f, 9);
    assert_true(rcolo_fence_tx_ack(&f, 9));
}

/* ----------------------------------------------- descriptors (secondary) */

static void test_rx_sequence_gaps_and_replays(void **state)
{
    struct rcolo_rx_flow f;

    rcolo_rx_flow_init(&f, 64);
    assert_false(rcolo_rx_accept(&f, 0)); /* seq starts at 1 */
    assert_false(rcolo_rx_accept(&f, 2)); /* gap */
    assert_true(rcolo_rx_accept(&f, 1));
    assert_false(rcolo_rx_accept(&f, 1)); /* replay */
    assert_false(rcolo_rx_accept(&f, UINT64_MAX));
    assert_true(rcolo_rx_accept(&f, 2));
    assert_int_equal(f.held, 2);
}

static void test_rx_fence_ack_waits_for_held(void **state)
{
    struct rcolo_rx_flow f;
    struct rcolo_rx_reply r;

    rcolo_rx_flow_init(&f, 64); /* batch 16 */
    assert_true(rcolo_rx_accept(&f, 1));
    assert_true(rcolo_rx_accept(&f, 2));
    assert_true(rcolo_rx_accept(&f, 3)); /* the fence */
    /* Fence released first: its ack waits for the two pages before it. */
    r = rcolo_rx_release(&f, true, 3);
    assert_int_equal(r.ack, 0);
    assert_int_equal(r.credits, 0);
    r = rcolo_rx_release(&f, false, 1);
    assert_int_equal(r.ack, 0);
    r = rcolo_rx_release(&f, false, 2);
    assert_int_equal(r.ack, 3); /* now, with every credit owed */
    assert_int_equal(r.credits, 3);
    assert_int_equal(f.held, 0);
    assert_false(f.ack_pending);
}

static void test_rx_credits_in_batches(void **state)
{
    struct rcolo_rx_flow f;
    uint32_t credits = 0, replies = 0;

    rcolo_rx_flow_init(&f, 16); /* batch 4 */
    for (uint64_t seq = 1; seq <= 10; seq++) {
        assert_true(rcolo_rx_accept(&f, seq));
        struct rcolo_rx_reply r = rcolo_rx_release(&f, false, seq);
        assert_int_equal(r.ack, 0);
        credits += r.credits;
        replies += r.credits != 0;
    }
    assert_int_equal(credits, 8);
    assert_int_equal(replies, 2);
    /* A fence flushes the rest. */
    assert_true(rcolo_rx_accept(&f, 11));
    struct rcolo_rx_reply r = rcolo_rx_release(&f, true, 11);
    assert_int_equal(r.ack, 11);
    assert_int_equal(r.credits, 3);
}

/* ------------------------------------------------------ a channel, modelled */

/*
 * A primary and a secondary joined by two in-order queues (the QP's two
 * directions), stepped in a random order: the primary sends descriptors
 * while it has credits and now and then a fence (waiting for its ack); the
 * secondary takes descriptors into a bounded ready queue, holds a few,
 * releases them out of arrival order, and returns credits.  Invariants:
 * the secondary never receives more than it has slots for, credits are
 * conserved, every fence is acked exactly once, after everything before
 * it was released.
 */
#define SLOTS 16
#define QLEN  64

struct msg {
    bool fence;
    bool ack;
    uint64_t seq;
    uint32_t credits;
};

struct queue {
    struct msg m[QLEN];
    struct rcolo_fifo f;
};

static void q_push(struct queue *q, struct msg m)
{
    assert_false(rcolo_fifo_full(&q->f));
    q->m[rcolo_fifo_push(&q->f)] = m;
}

static void test_channel_model(void **state)
{
    struct queue to_sec, to_pri;
    struct rcolo_credits credits;
    struct rcolo_fence_tx fence = {0};
    struct rcolo_rx_flow rx;
    struct msg held[SLOTS];
    unsigned nheld = 0;
    uint64_t seq = 0, fences = 0, acks = 0, released_pages = 0, sent_pages = 0;

    srand(12345);
    rcolo_fifo_init(&to_sec.f, QLEN);
    rcolo_fifo_init(&to_pri.f, QLEN);
    rcolo_credits_init(&credits, SLOTS);
    rcolo_rx_flow_init(&rx, SLOTS);

    for (int step = 0; step < 200000; step++) {
        switch (rand() % 4) {
        case 0: /* primary: send, if it may */
            if (!rcolo_fence_tx_idle(&fence) || !rcolo_credits_take(&credits)) {
                break;
            }
            seq++;
            if (rand() % 16 == 0) {
                rcolo_fence_tx_post(&fence, seq);
                fences++;
                q_push(&to_sec, (struct msg){.fence = true, .seq = seq});
            } else {
                sent_pages++;
                q_push(&to_sec, (struct msg){.seq = seq});
            }
            break;
        case 1: /* secondary: a descriptor arrives into a free slot */
            if (to_sec.f.count == 0) {
                break;
            }
            /* Credits bound what is in flight plus what is held. */
            assert_true(nheld + to_sec.f.count <= SLOTS);
            struct msg m = to_sec.m[rcolo_fifo_pop(&to_sec.f)];
            assert_true(rcolo_rx_accept(&rx, m.seq));
            held[nheld++] = m;
            break;
        case 2: /* secondary: release one, any of those held */
            if (nheld == 0) {
                break;
            }
            unsigned k = (unsigned)rand() % nheld;
            struct msg d = held[k];
            held[k] = held[--nheld];
            released_pages += !d.fence;
            struct rcolo_rx_reply r = rcolo_rx_release(&rx, d.fence, d.seq);
            if (r.ack) {
                /* Only once nothing before it is still held. */
                for (unsigned i = 0; i < nheld; i++) {
                    assert_true(held[i].seq > r.ack);
                }
            }
            if (r.credits || r.ack) {
                q_push(&to_pri, (struct msg){.ack = r.ack != 0,
                                             .seq = r.ack,
                                             .credits = r.credits});
            }
            break;
        case 3: /* primary: a control message arrives */
            if (to_pri.f.count == 0) {
                break;
            }
            struct msg c = to_pri.m[rcolo_fifo_pop(&to_pri.f)];
            if (c.ack) {
                assert_true(rcolo_fence_tx_ack(&fence, c.seq));
                acks++;
            }
            assert_true(rcolo_credits_give(&credits, c.credits));
            break;
        }
        /* Conservation: the primary's credits plus everything in flight
         * or held or owed is exactly the window. */
        uint32_t owed = rx.credit.pending;
        for (unsigned i = 0; i < to_pri.f.count; i++) {
            owed += to_pri.m[(to_pri.f.head + i) & to_pri.f.mask].credits;
        }
        assert_int_equal(credits.avail + to_sec.f.count + nheld + owed, SLOTS);
    }
    assert_true(fences > 100);
    assert_true(acks >= fences - 1); /* the last may still be in flight */
    assert_true(released_pages > 1000);
    assert_true(released_pages <= sent_pages);
    printf("test-flow: channel model: %llu descriptors, %llu fences acked, "
           "credits conserved at every step\n",
           (unsigned long long)seq, (unsigned long long)acks);
}

/* ------------------------------------------------------- stream, modelled */

/*
 * Both directions of the control connection's stream, stepped in a random
 * order: each side sends data while it has credits (piggy-backing the
 * credits it owes), consumes what it received at its own pace, and sends a
 * credit-only message when a batch is owed.  The receive slots a side has
 * posted (SLOTS + EXTRA) must never run out: a message arriving with no
 * slot posted would be an RNR stall on a real QP.
 */
struct stream_side {
    struct rcolo_credits credits; /* the peer's free data slots */
    struct rcolo_credit_return owed;
    int posted;      /* receive slots posted */
    int held;        /* data messages received, not consumed */
    struct queue in; /* messages on their way to this side */
    int min_posted;  /* the fewest slots ever posted at an arrival */
    unsigned credit_only;
};

static void test_stream_model(void **state)
{
    struct stream_side side[2];
    unsigned long data = 0;

    srand(777);
    for (int i = 0; i < 2; i++) {
        rcolo_credits_init(&side[i].credits, RCOLO_STREAM_SLOTS);
        side[i].owed = (struct rcolo_credit_return){
            .batch = rcolo_credit_batch(RCOLO_STREAM_SLOTS)};
        side[i].posted = RCOLO_STREAM_SLOTS + RCOLO_STREAM_EXTRA;
        side[i].held = 0;
        side[i].min_posted = side[i].posted;
        side[i].credit_only = 0;
        rcolo_fifo_init(&side[i].in.f, QLEN);
    }
    for (int step = 0; step < 400000; step++) {
        struct stream_side *me = &side[rand() % 2];
        struct stream_side *peer = me == &side[0] ? &side[1] : &side[0];

        switch (rand() % 3) {
        case 0: /* send data, if a credit allows */
            if (rcolo_credits_take(&me->credits)) {
                q_push(&peer->in,
                       (struct msg){.credits =
                                        rcolo_credit_return_all(&me->owed)});
                data++;
            }
            break;
        case 1: /* a message arrives: it needs a posted slot */
            if (me->in.f.count == 0) {
                break;
            }
            struct msg m = me->in.m[rcolo_fifo_pop(&me->in.f)];
            assert_true(me->posted > 0);
            me->posted--;
            if (me->posted < me->min_posted) {
                me->min_posted = me->posted;
            }
            assert_true(rcolo_credits_give(&me->credits, m.credits));
            if (m.ack) { /* credit-only: reposted at once */
                me->posted++;
            } else {
                me->held++;
            }
            break;
        case 2: /* the reader consumes one */
            if (me->held == 0) {
                break;
            }
            me->held--;
            me->posted++;
            uint32_t give = rcolo_credit_return_add(&me->owed, 1);
            if (give) {
                q_push(&peer->in, (struct msg){.ack = true, .credits = give});
                me->credit_only++;
            }
            break;
        }
    }
    assert_true(data > 10000);
    for (int i = 0; i < 2; i++) {
        assert_true(side[i].credit_only > 100);
        /* The extra slots were needed (credit-only messages did pile up
         * beyond the data credits) and sufficed. */
        assert_true(side[i].min_posted < RCOLO_STREAM_EXTRA);
    }
    printf("test-stream: stream model: %lu data messages, %u+%u credit-only; "
           "fewest receive slots left posted: %d and %d of %d\n",
           data, side[0].credit_only, side[1].credit_only, side[0].min_posted,
           side[1].min_posted, RCOLO_STREAM_SLOTS + RCOLO_STREAM_EXTRA);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pow2),
        cmocka_unit_test(test_fifo_wraps_in_order),
        cmocka_unit_test(test_fifo_full),
        cmocka_unit_test(test_credits_over_credit),
        cmocka_unit_test(test_credit_return_batches),
        cmocka_unit_test(test_sq_selective_signaling),
        cmocka_unit_test(test_sq_partial_retire),
        cmocka_unit_test(test_sq_unexpected_completion),
        cmocka_unit_test(test_fence_tx_sequence),
        cmocka_unit_test(test_rx_sequence_gaps_and_replays),
        cmocka_unit_test(test_rx_fence_ack_waits_for_held),
        cmocka_unit_test(test_rx_credits_in_batches),
        cmocka_unit_test(test_channel_model),
        cmocka_unit_test(test_stream_model),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
