/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzz target: one data channel's flow control (flow.h) between an honest
 * side and a peer whose messages the fuzzer writes.  The input is a list of
 * operations: honest descriptors, releases, credit returns and fence acks,
 * interleaved with hostile ones - sequence gaps and replays, over-credit,
 * unsolicited or forged fence acks, completions nobody asked for.  Every
 * hostile message must be refused and leave the state as it was; every
 * honest one accepted; and credits are conserved after every step.
 */
#include <stdint.h>
#include <string.h>

#include "flow.h"
#include "fuzz.h"

#define SLOTS 16 /* the secondary's receive slots: the primary's credits */

struct model {
    /* primary */
    struct rcolo_credits credits;
    struct rcolo_fence_tx fence;
    uint64_t seq;
    struct rcolo_sq sq;
    /* secondary */
    struct rcolo_rx_flow rx;
    bool held_fence[SLOTS]; /* accepted, unreleased descriptors, in order */
    uint64_t held_seq[SLOTS];
    uint32_t head, count;
    /* on the wire, secondary -> primary */
    uint32_t credits_in_flight;
    uint64_t ack_in_flight; /* 0: none */
};

static void conserved(const struct model *m)
{
    FUZZ_CHECK(m->credits.avail + m->credits_in_flight + m->rx.held +
                   m->rx.credit.pending ==
               SLOTS);
    FUZZ_CHECK(m->rx.held == m->count);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct model m = {0};

    rcolo_credits_init(&m.credits, SLOTS);
    rcolo_rx_flow_init(&m.rx, SLOTS);
    rcolo_sq_init(&m.sq, 8);
    for (size_t i = 0; i + 1 < size; i += 2) {
        uint8_t op = data[i] % 8, arg = data[i + 1];

        switch (op) {
        case 0: { /* honest descriptor (a fence when arg is odd and none
                     is outstanding) */
            bool fence = (arg & 1) && rcolo_fence_tx_idle(&m.fence);
            if (!rcolo_credits_take(&m.credits)) {
                break;
            }
            m.seq++;
            if (fence) {
                rcolo_fence_tx_post(&m.fence, m.seq);
            }
            FUZZ_CHECK(rcolo_rx_accept(&m.rx, m.seq));
            uint32_t slot = (m.head + m.count++) % SLOTS;
            m.held_fence[slot] = fence;
            m.held_seq[slot] = m.seq;
            break;
        }
        case 1: { /* hostile descriptor: a gap or a replay */
            struct rcolo_rx_flow before = m.rx;
            uint64_t seq = arg & 0x80 ? m.rx.seq + 2 + (arg & 0x7f)
                                      : m.rx.seq - (arg & 0x7f);
            FUZZ_CHECK(!rcolo_rx_accept(&m.rx, seq));
            FUZZ_CHECK(!memcmp(&before, &m.rx, sizeof(before)));
            break;
        }
        case 2: { /* the secondary releases its oldest descriptor */
            if (m.count == 0) {
                break;
            }
            bool fence = m.held_fence[m.head];
            uint64_t seq = m.held_seq[m.head];
            m.head = (m.head + 1) % SLOTS;
            m.count--;
            struct rcolo_rx_reply r = rcolo_rx_release(&m.rx, fence, seq);
            m.credits_in_flight += r.credits;
            if (r.ack) {
                /* Only once everything before it is released. */
                FUZZ_CHECK(m.count == 0 && r.ack == m.fence.posted);
                FUZZ_CHECK(m.rx.credit.pending == 0);
                m.ack_in_flight = r.ack;
            }
            break;
        }
        case 3: /* the credit returns arrive */
            FUZZ_CHECK(rcolo_credits_give(&m.credits, m.credits_in_flight));
            m.credits_in_flight = 0;
            break;
        case 4: { /* over-credit: more than the peer ever had */
            struct rcolo_credits before = m.credits;
            uint32_t n = m.credits.limit - m.credits.avail + 1 + arg;
            FUZZ_CHECK(!rcolo_credits_give(&m.credits, n));
            FUZZ_CHECK(!memcmp(&before, &m.credits, sizeof(before)));
            break;
        }
        case 5: { /* forged fence ack: unsolicited, stale or future */
            struct rcolo_fence_tx before = m.fence;
            uint64_t seq = arg & 1 ? m.fence.posted + 1 + (arg >> 1)
                                   : m.fence.acked - (arg >> 1);
            if (!rcolo_fence_tx_idle(&m.fence) && seq == m.fence.posted) {
                seq++;
            }
            FUZZ_CHECK(!rcolo_fence_tx_ack(&m.fence, seq));
            FUZZ_CHECK(!memcmp(&before, &m.fence, sizeof(before)));
            break;
        }
        case 6: /* the honest fence ack arrives (with its replay after) */
            if (m.ack_in_flight) {
                FUZZ_CHECK(rcolo_fence_tx_ack(&m.fence, m.ack_in_flight));
                FUZZ_CHECK(!rcolo_fence_tx_ack(&m.fence, m.ack_in_flight));
                m.ack_in_flight = 0;
            }
            break;
        case 7: /* send queue: post (signaled if arg odd) or complete */
            if (arg & 2) {
                bool had = m.sq.sig.count > 0;
                FUZZ_CHECK(rcolo_sq_completed(&m.sq) == had);
            } else if (rcolo_sq_has_room(&m.sq, 1)) {
                rcolo_sq_posted(&m.sq, arg & 1);
            }
            FUZZ_CHECK(rcolo_sq_inflight(&m.sq) <= m.sq.depth);
            break;
        }
        conserved(&m);
    }
    rcolo_sq_fini(&m.sq);
    return 0;
}
