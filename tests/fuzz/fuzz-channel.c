/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzz target: a data channel's receive handling, stateful, on the fake
 * verbs (fake-verbs.h): the library's channel.c, receive.c, write.c and
 * fence.c run unchanged while the fuzzer plays the peer and the fabric.
 *
 * The first byte picks the side under test (one in four: the primary).
 *
 *  secondary: the peer (a hostile primary) sends descriptors (pages,
 *      fences, barriers, session fences; sequence numbers right, replayed
 *      or skipped; offsets in and out of bounds, unaligned; unknown
 *      regions), raw bytes, completions with errors or of another kind
 *      (a WRITE with immediate); the application takes descriptors and
 *      releases them in any order; the region is removed and added again;
 *      the fabric completes the secondary's CREDIT and FENCE_ACK sends.
 *  primary: the peer (a hostile secondary) returns credits (honest or
 *      more than owed), fence acks (right, stale, of no fence, ALL),
 *      raw bytes and failed completions, while the application writes
 *      pages, posts fences and barriers, waits for them and runs session
 *      fences.
 *
 * Properties, after every step: no memory error or leak (the sanitizers);
 * every descriptor handed to the application names the region's memory,
 * page-aligned offsets inside it and strictly increasing sequence numbers;
 * every message the library sends decodes; every RDMA WRITE lands inside
 * the peer's advertised region (fake-verbs.c); a failed session stays
 * failed and every call on it returns an error; nothing posts beyond its
 * queues or overflows a CQ (fake-verbs.c).
 */
#include <stdlib.h>
#include <string.h>

#include "fake-verbs.h"
#include "fuzz.h"

#define DEPTH 4 /* small: the slot rings stay below ASan's mmap threshold */
#define PAGES 16
#define LEN   (PAGES * 4096)
#define RADDR 0x7f0000000000ull
#define RKEY  0x77

struct input {
    const uint8_t *p;
    size_t left;
};

static uint8_t take(struct input *in)
{
    if (!in->left) {
        return 0;
    }
    in->left--;
    return *in->p++;
}

struct side {
    struct rcolo_session *s;
    struct rcolo_channel *ch;
    struct fake_qp *q;
    uint8_t *mem;
    bool region;
};

static void side_open(struct side *x, enum rcolo_role role)
{
    struct rcolo_error err;

    memset(x, 0, sizeof(*x));
    fake_verbs_reset();
    x->s = fake_session(role, DEPTH);
    x->mem = aligned_alloc(4096, LEN);
    memset(x->mem, 0xa5, LEN);
    if (role == RCOLO_PRIMARY) {
        struct rcolo_region_entry *t = g_new0(struct rcolo_region_entry, 1);

        *t = (struct rcolo_region_entry){.id = 0,
                                         .page_size = 4096,
                                         .length = LEN,
                                         .addr = RADDR,
                                         .rkey = RKEY,
                                         .name = "r0"};
        pthread_mutex_lock(&x->s->core.lock);
        rcolo_region_table_set_locked(x->s, t, 1);
        pthread_mutex_unlock(&x->s->core.lock);
        fake_remote_window(RADDR, LEN, RKEY);
    }
    FUZZ_CHECK(rcolo_region_add(x->s, 0, "r0", x->mem, LEN, 4096, &err) == 0);
    x->region = true;
    x->ch = rcolo_channel_new(x->s, 0);
    x->ch->id = fake_cm_id();
    FUZZ_CHECK(rcolo_channel_setup(x->ch, &err) == 0);
    x->ch->state = RCOLO_CHAN_ESTABLISHED;
    x->s->chan[0] = x->ch;
    x->q = fake_qp_of(x->ch->id->qp);
}

static void side_close(struct side *x)
{
    rcolo_session_destroy(x->s);
    free(x->mem);
}

/* A failed session stays failed: nothing on it succeeds any more. */
static void check_failed_sticks(struct side *x, int status_before)
{
    int now = rcolo_session_status(x->s);

    if (status_before) {
        FUZZ_CHECK(now == status_before);
    }
}

/* The library's own messages on the wire decode: DESC from a primary,
 * CREDIT or FENCE_ACK from a secondary. */
static void check_sent(struct side *x, uint64_t *last_desc_seq)
{
    const struct fake_wr *w = fake_oldest_send(x->q);
    struct rcolo_hdr h;

    if (!w || w->opcode != IBV_WR_SEND) {
        return;
    }
    const uint8_t *buf = (const uint8_t *)(uintptr_t)w->addr;
    FUZZ_CHECK(rcolo_hdr_decode(buf, w->length, &h) == 0);
    if (x->s->role == RCOLO_PRIMARY) {
        struct rcolo_desc_view v;

        FUZZ_CHECK(h.type == RCOLO_MSG_DESC);
        FUZZ_CHECK(rcolo_desc_decode(buf, w->length, &v) == 0);
        FUZZ_CHECK(v.seq == *last_desc_seq + 1);
        *last_desc_seq = v.seq;
    } else {
        FUZZ_CHECK(h.type == RCOLO_MSG_CREDIT || h.type == RCOLO_MSG_FENCE_ACK);
    }
}

static void deliver(struct side *x, const void *buf, uint32_t len,
                    struct input *in)
{
    uint8_t how = take(in);
    enum ibv_wc_status st = IBV_WC_SUCCESS;
    enum ibv_wc_opcode op = IBV_WC_RECV;

    if (how % 16 == 1) {
        st = (how >> 4) % 2 ? IBV_WC_WR_FLUSH_ERR : IBV_WC_REM_OP_ERR;
    } else if (how % 16 == 2) {
        op = IBV_WC_RECV_RDMA_WITH_IMM;
    }
    fake_deliver(x->q, buf, len, st, op);
}

/* The primary can send a descriptor of up to @wrs work requests without
 * waiting: a credit, a send slot, send-queue room.  (A wait the input
 * leaves unanswered ends the session as stalled, after owed_ms: correct,
 * but a millisecond per input.) */
static bool can_send(const struct side *x, uint32_t wrs)
{
    return x->ch->tx.credits.avail > 0 &&
           !rcolo_fifo_full(&x->ch->send.inflight) &&
           rcolo_sq_has_room(&x->ch->sq, wrs);
}

/* ------------------------------------------------------- secondary */

static void secondary_desc(struct side *x, struct input *in)
{
    uint8_t buf[RCOLO_DESC_MAX_LEN];
    uint64_t offs[RCOLO_MAX_DESC_PAGES], zero[4];
    uint8_t kind = take(in), k = take(in);
    /* The next sequence number the channel takes: those it took, and the
     * ones queued for it. */
    uint64_t seq = x->ch->rx.flow.seq + x->ch->rx.ready_q.count + 1;
    uint32_t region = 0, n = 0, nzero = 0;
    uint8_t flags = 0;

    if (k % 8 == 0) {
        seq += (uint64_t)(k >> 3) % 3 - 1; /* replayed, or one skipped */
    }
    switch (kind % 4) {
    case 0:
        n = 1 + take(in) % 8;
        nzero = take(in) % 3;
        for (uint32_t i = 0; i < n + nzero; i++) {
            uint8_t o = take(in);
            /* Mostly inside; sometimes past the end or unaligned. */
            uint64_t off =
                (uint64_t)(o % (PAGES + 2)) * 4096 + (o % 32 == 31 ? 8 : 0);
            if (i < n) {
                offs[i] = off;
            } else {
                zero[i - n] = off;
            }
        }
        if (kind % 32 == 4) {
            region = 1 + kind / 32; /* no such region */
        }
        break;
    case 1:
        flags = RCOLO_DESC_FLAG_FENCE;
        break;
    case 2:
        flags = RCOLO_DESC_FLAG_FENCE | RCOLO_DESC_FLAG_BARRIER;
        break;
    case 3:
        flags = RCOLO_DESC_FLAG_FENCE | RCOLO_DESC_FLAG_BARRIER |
                RCOLO_DESC_FLAG_ALL;
        offs[0] = seq - (kind >> 2) % 2; /* the channel's last, or before */
        n = 1;
        break;
    }
    size_t len = rcolo_desc_encode(buf, sizeof(buf), flags, region, seq, offs,
                                   n, zero, nzero);
    FUZZ_CHECK(len > 0);
    deliver(x, buf, (uint32_t)len, in);
}

static int run_secondary(struct input *in)
{
    struct side x;
    struct rcolo_desc held[DEPTH + 1];
    unsigned nheld = 0;
    uint64_t last_seq = 0, unused = 0;

    side_open(&x, RCOLO_SECONDARY);
    while (in->left) {
        int before = rcolo_session_status(x.s);
        uint8_t op = take(in);

        switch (op % 8) {
        case 0:
            secondary_desc(&x, in);
            break;
        case 1: {
            uint8_t raw[64];
            uint32_t len = take(in) % (sizeof(raw) + 1);
            for (uint32_t i = 0; i < len; i++) {
                raw[i] = take(in);
            }
            deliver(&x, raw, len, in);
            break;
        }
        case 2:
        case 3: {
            struct rcolo_desc d;
            int ret = rcolo_channel_recv(x.ch, &d, 0);

            if (before) {
                FUZZ_CHECK(ret != 0);
            }
            if (ret) {
                break;
            }
            FUZZ_CHECK(nheld < DEPTH);
            FUZZ_CHECK(d.seq > last_seq);
            last_seq = d.seq;
            if (d.kind == RCOLO_DESC_PAGES) {
                FUZZ_CHECK(d.region_id == 0 && d.region_addr == x.mem &&
                           d.page_size == 4096 && d.n + d.nzero >= 1 &&
                           d.n + d.nzero <= RCOLO_MAX_DESC_PAGES);
                for (uint32_t i = 0; i < d.n; i++) {
                    FUZZ_CHECK(d.offsets[i] % 4096 == 0 && d.offsets[i] < LEN);
                }
                for (uint32_t i = 0; i < d.nzero; i++) {
                    FUZZ_CHECK(d.zero[i] % 4096 == 0 && d.zero[i] < LEN);
                    /* zero pages are zeroed before they are handed out */
                    FUZZ_CHECK(x.mem[d.zero[i]] == 0);
                }
            }
            held[nheld++] = d;
            break;
        }
        case 4:
            if (nheld) {
                unsigned k = take(in) % nheld;
                int ret = rcolo_channel_release(x.ch, &held[k]);
                if (before) {
                    FUZZ_CHECK(ret != 0);
                }
                held[k] = held[--nheld];
            }
            break;
        case 5:
            check_sent(&x, &unused);
            fake_complete_send(x.q, take(in) % 32 == 0 ? IBV_WC_RETRY_EXC_ERR
                                                       : IBV_WC_SUCCESS);
            break;
        case 6:
            if (x.region) {
                FUZZ_CHECK(rcolo_region_remove(x.s, 0) == 0);
                x.region = false;
            } else {
                struct rcolo_error err;
                FUZZ_CHECK(rcolo_region_add(x.s, 0, "r0", x.mem, LEN, 4096,
                                            &err) == 0);
                x.region = true;
            }
            break;
        case 7:
            /* The peer floods: a descriptor into every posted receive. */
            for (unsigned i = take(in) % 4; i > 0; i--) {
                secondary_desc(&x, in);
            }
            break;
        }
        check_failed_sticks(&x, before);
    }
    side_close(&x);
    return 0;
}

/* --------------------------------------------------------- primary */

static int run_primary(struct input *in)
{
    struct side x;
    uint64_t last_desc = 0;

    side_open(&x, RCOLO_PRIMARY);
    while (in->left) {
        int before = rcolo_session_status(x.s);
        uint8_t op = take(in), buf[RCOLO_FENCE_ACK_LEN + 64];
        size_t len;

        switch (op % 10) {
        case 0: {
            uint64_t offs[8], zero[2];
            unsigned n = take(in) % 9, nz = take(in) % 3;

            for (unsigned i = 0; i < n; i++) {
                offs[i] = (uint64_t)(take(in) % PAGES) * 4096;
            }
            for (unsigned i = 0; i < nz; i++) {
                zero[i] = (uint64_t)(take(in) % PAGES) * 4096;
            }
            /* Offsets in order, as the API asks. */
            for (unsigned i = 1; i < n; i++) {
                for (unsigned j = i; j > 0 && offs[j - 1] > offs[j]; j--) {
                    uint64_t t = offs[j];
                    offs[j] = offs[j - 1];
                    offs[j - 1] = t;
                }
            }
            if (!can_send(&x, n + 1) && !before && take(in) % 64) {
                break; /* rarely: wait, and stall */
            }
            int ret = rcolo_write_pages(x.ch, 0, offs, n, zero, nz);
            if (before) {
                FUZZ_CHECK(ret != 0);
            }
            break;
        }
        case 1:
            len = rcolo_credit_encode(buf, sizeof(buf),
                                      (uint16_t)(take(in) % (DEPTH + 3)));
            deliver(&x, buf, (uint32_t)len, in);
            break;
        case 2: {
            uint8_t k = take(in);
            uint64_t seq = x.ch->tx.seq - k % 4 + (k % 16 == 15 ? 5 : 0);
            len = rcolo_fence_ack_encode(buf, sizeof(buf),
                                         k & 0x40 ? RCOLO_FENCE_ACK_ALL : 0,
                                         seq, (uint16_t)((k >> 4) % 3));
            deliver(&x, buf, (uint32_t)len, in);
            break;
        }
        case 3: {
            uint32_t n = take(in) % 40;
            for (uint32_t i = 0; i < n; i++) {
                buf[i] = take(in);
            }
            deliver(&x, buf, n, in);
            break;
        }
        case 4:
            if (can_send(&x, 1) || before) {
                (void)(take(in) % 2 ? rcolo_channel_barrier_post(x.ch)
                                    : rcolo_channel_fence_post(x.ch));
            }
            break;
        case 5:
            (void)rcolo_channel_fence_wait(x.ch, 0);
            break;
        case 6:
        case 7:
            check_sent(&x, &last_desc);
            fake_complete_send(x.q, take(in) % 32 == 0 ? IBV_WC_RETRY_EXC_ERR
                                                       : IBV_WC_SUCCESS);
            break;
        case 8:
            if (can_send(&x, 1) || before) {
                (void)rcolo_fence(x.s, 0);
            }
            break;
        case 9:
            /* The fabric completes everything posted so far. */
            while (fake_oldest_send(x.q)) {
                check_sent(&x, &last_desc);
                fake_complete_send(x.q, IBV_WC_SUCCESS);
            }
            break;
        }
        check_failed_sticks(&x, before);
    }
    side_close(&x);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct input in = {data, size};

    if (!size) {
        return 0;
    }
    /* One input in four is the primary's: its set-up costs 8 times the
     * secondary's (a 128 KiB work-request chain, mmapped under ASan). */
    return take(&in) % 4 == 3 ? run_primary(&in) : run_secondary(&in);
}
