/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzz target: every decoder of what a peer can send (wire.c) - the CM
 * private data of the handshake (REQ, REP, REJ) and every message on the
 * control connection and the data channels.  The first byte picks the
 * decoder, the rest is the peer's bytes.  Beyond "no crash, no sanitizer
 * report", each accepted input must satisfy the decoder's contract: a
 * decoded REQ/REP re-encodes to the same fields, a descriptor's offsets
 * are page-aligned and inside the region, a region table's entries are
 * valid and unique.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "wire.h"

static void req(const uint8_t *p, size_t n)
{
    struct rcolo_req r, again;
    uint8_t buf[RCOLO_WIRE_REQ_LEN];

    if (rcolo_req_decode(p, n, &r) != RCOLO_REJ_NONE) {
        return;
    }
    FUZZ_CHECK(r.version == RCOLO_PROTOCOL_VERSION);
    if (r.role == RCOLO_CONN_CONTROL) {
        FUZZ_CHECK(r.channels >= 1 && r.channels <= RCOLO_MAX_CHANNELS);
        FUZZ_CHECK(r.depth >= 2 && r.depth <= RCOLO_MAX_DEPTH);
    } else if (r.role == RCOLO_CONN_DATA) {
        FUZZ_CHECK(r.index < RCOLO_MAX_CHANNELS);
    } else {
        FUZZ_CHECK(r.role == RCOLO_CONN_HELLO);
    }
    FUZZ_CHECK(rcolo_req_encode(&r, buf, sizeof(buf)) == RCOLO_WIRE_REQ_LEN);
    FUZZ_CHECK(rcolo_req_decode(buf, sizeof(buf), &again) == RCOLO_REJ_NONE);
    FUZZ_CHECK(!memcmp(&r, &again, sizeof(r)));
}

static void rep(const uint8_t *p, size_t n)
{
    struct rcolo_rep r, again;
    uint8_t buf[RCOLO_WIRE_REP_LEN];

    if (rcolo_rep_decode(p, n, &r)) {
        return;
    }
    FUZZ_CHECK(r.channels >= 1 && r.channels <= RCOLO_MAX_CHANNELS);
    FUZZ_CHECK(r.depth >= 2 && r.depth <= RCOLO_MAX_DEPTH);
    FUZZ_CHECK(rcolo_rep_encode(&r, buf, sizeof(buf)) == RCOLO_WIRE_REP_LEN);
    FUZZ_CHECK(rcolo_rep_decode(buf, sizeof(buf), &again) == 0);
    FUZZ_CHECK(!memcmp(&r, &again, sizeof(r)));
}

static void rej(const uint8_t *p, size_t n)
{
    struct rcolo_rej j;
    static const uint8_t zero[RCOLO_NONCE_LEN];

    if (rcolo_rej_decode(p, n, &j)) {
        return;
    }
    FUZZ_CHECK(j.reason > RCOLO_REJ_NONE && j.reason < RCOLO_REJ__MAX);
    FUZZ_CHECK(rcolo_reject_str(j.reason)[0]);
    if (j.reason == RCOLO_REJ_CHALLENGE) {
        FUZZ_CHECK(memcmp(j.snonce, zero, RCOLO_NONCE_LEN));
    }
}

static void desc(const uint8_t *p, size_t n)
{
    struct rcolo_desc_view d;
    struct rcolo_hdr h;
    static uint64_t off[RCOLO_MAX_DESC_PAGES];
    /* A region of 64 pages of 4 KiB, and one of 3 pages of 2 MiB. */
    static const struct {
        uint64_t len;
        uint32_t page;
    } regions[] = {{64 * 4096, 4096}, {3ull << 21, 2u << 20}};
    uint32_t bad;

    if (rcolo_hdr_decode(p, n, &h) || rcolo_desc_decode(p, n, &d)) {
        return;
    }
    FUZZ_CHECK(d.n + d.nzero <= RCOLO_MAX_DESC_PAGES);
    FUZZ_CHECK(n == RCOLO_DESC_FIXED_LEN + 8ull * (d.n + d.nzero));
    FUZZ_CHECK(!d.fence || d.all || d.n + d.nzero == 0);
    FUZZ_CHECK(!d.barrier || d.fence);
    FUZZ_CHECK(!d.all || (d.barrier && d.region_id == 0 && d.nzero == 0 &&
                          d.n >= 1 && d.n <= RCOLO_MAX_CHANNELS));
    for (unsigned r = 0; r < 2; r++) {
        if (rcolo_desc_offsets(&d, off, regions[r].len, regions[r].page,
                               &bad)) {
            FUZZ_CHECK(bad < d.n + d.nzero);
            continue;
        }
        for (uint32_t i = 0; i < d.n + d.nzero; i++) {
            FUZZ_CHECK(off[i] % regions[r].page == 0);
            FUZZ_CHECK(off[i] < regions[r].len &&
                       regions[r].len - off[i] >= regions[r].page);
        }
    }
}

static void table(const uint8_t *p, size_t n)
{
    static struct rcolo_region_entry e[8];
    int count = rcolo_region_table_decode(p, n, e, 8);

    for (int i = 0; i < count; i++) {
        FUZZ_CHECK(e[i].page_size >= 4096 &&
                   !(e[i].page_size & (e[i].page_size - 1)));
        FUZZ_CHECK(e[i].length && e[i].length % e[i].page_size == 0);
        FUZZ_CHECK(e[i].addr + e[i].length > e[i].addr);
        FUZZ_CHECK(strlen(e[i].name) <= RCOLO_MAX_NAME);
        for (int j = 0; j < i; j++) {
            FUZZ_CHECK(e[i].id != e[j].id);
        }
    }
}

static void small(const uint8_t *p, size_t n)
{
    struct rcolo_hdr h;
    uint64_t seq;

    if (rcolo_hdr_decode(p, n, &h) == 0) {
        FUZZ_CHECK(h.length == n && h.length >= RCOLO_HDR_LEN);
        FUZZ_CHECK(h.type >= 1 && h.type < RCOLO_MSG__MAX);
    }
    uint8_t flags;
    if (rcolo_fence_ack_decode(p, n, &seq, &flags) == 0) {
        FUZZ_CHECK(n == RCOLO_FENCE_ACK_LEN);
        FUZZ_CHECK((flags & ~RCOLO_FENCE_ACK_ALL) == 0);
    }
    bool reply;
    if (rcolo_keepalive_decode(p, n, &reply) == 0) {
        /* Accepted: exactly what rcolo_keepalive_encode makes. */
        uint8_t again[RCOLO_HDR_LEN];
        FUZZ_CHECK(n == RCOLO_HDR_LEN);
        FUZZ_CHECK(rcolo_keepalive_encode(again, sizeof(again), reply) ==
                   RCOLO_HDR_LEN);
        FUZZ_CHECK(memcmp(again, p, RCOLO_HDR_LEN) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static void (*const decoders[])(const uint8_t *, size_t) = {
        req, rep, rej, desc, table, small,
    };

    if (size < 1) {
        return 0;
    }
    /* Copy to an exact-size heap buffer: ASan sees any over-read. */
    uint8_t *p = malloc(size - 1 ? size - 1 : 1);
    memcpy(p, data + 1, size - 1);
    decoders[data[0] % (sizeof(decoders) / sizeof(decoders[0]))](p, size - 1);
    free(p);
    return 0;
}
