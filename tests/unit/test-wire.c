/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Wire messages: every encoder round-trips through its decoder, and every
 * decoder refuses truncated, oversized, mislabelled and garbage input.
 * Also the page-run coalescing and credit accounting the data path uses.
 */
#include <endian.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "flow.h"
#include "wire.h"

/* ------------------------------------------------------------ CM data */

static struct rcolo_req sample_req(void)
{
    struct rcolo_req r = {
        .version = RCOLO_PROTOCOL_VERSION,
        .role = RCOLO_CONN_CONTROL,
        .index = 0,
        .channels = 4,
        .depth = 64,
    };
    for (unsigned i = 0; i < RCOLO_NONCE_LEN; i++) {
        r.snonce[i] = (uint8_t)i;
        r.cnonce[i] = (uint8_t)(RCOLO_NONCE_LEN + i);
    }
    struct rcolo_mac_input in = {.snonce = r.snonce,
                                 .cnonce = r.cnonce,
                                 .index = r.index,
                                 .channels = r.channels,
                                 .depth = r.depth,
                                 .qpn = 0x1234};
    rcolo_mac("tok", RCOLO_MAC_CONTROL_REQ, &in, r.mac);
    return r;
}

static void test_req_roundtrip(void **state)
{
    struct rcolo_req r = sample_req(), d;
    uint8_t buf[64];
    size_t n = rcolo_req_encode(&r, buf, sizeof(buf));

    assert_int_equal(n, RCOLO_WIRE_REQ_LEN);
    assert_true(n <= 56); /* IB/RoCE rdma_cm private data limit */
    assert_int_equal(rcolo_req_decode(buf, n, &d), RCOLO_REJ_NONE);
    assert_int_equal(d.role, RCOLO_CONN_CONTROL);
    assert_int_equal(d.channels, 4);
    assert_int_equal(d.depth, 64);
    assert_memory_equal(d.snonce, r.snonce, RCOLO_NONCE_LEN);
    assert_memory_equal(d.cnonce, r.cnonce, RCOLO_NONCE_LEN);
    assert_memory_equal(d.mac, r.mac, RCOLO_MAC_LEN);
    /* rdma_cm pads private data: trailing zeros are accepted */
    memset(buf + n, 0, sizeof(buf) - n);
    assert_int_equal(rcolo_req_decode(buf, sizeof(buf), &d), RCOLO_REJ_NONE);
    /* encoding into a too-small buffer writes nothing */
    assert_int_equal(rcolo_req_encode(&r, buf, n - 1), 0);
    /* HELLO: no parameters to check */
    r = (struct rcolo_req){.version = RCOLO_PROTOCOL_VERSION,
                           .role = RCOLO_CONN_HELLO};
    n = rcolo_req_encode(&r, buf, sizeof(buf));
    assert_int_equal(rcolo_req_decode(buf, n, &d), RCOLO_REJ_NONE);
    assert_int_equal(d.role, RCOLO_CONN_HELLO);
}

static void test_req_rejects(void **state)
{
    struct rcolo_req r = sample_req(), d;
    uint8_t buf[64];
    size_t n = rcolo_req_encode(&r, buf, sizeof(buf));

    assert_int_equal(rcolo_req_decode(NULL, 0, &d), RCOLO_REJ_BAD_MAGIC);
    assert_int_equal(rcolo_req_decode(buf, n - 1, &d), RCOLO_REJ_BAD_MAGIC);
    buf[0] ^= 0xff;
    assert_int_equal(rcolo_req_decode(buf, n, &d), RCOLO_REJ_BAD_MAGIC);
    buf[0] ^= 0xff;
    buf[4] = RCOLO_PROTOCOL_VERSION + 1;
    assert_int_equal(rcolo_req_decode(buf, n, &d), RCOLO_REJ_BAD_VERSION);
    /* a version 1 REQ (40 bytes) is told apart by its version alone */
    buf[4] = 1;
    assert_int_equal(rcolo_req_decode(buf, 40, &d), RCOLO_REJ_BAD_VERSION);
    assert_int_equal(rcolo_req_decode(buf, 5, &d), RCOLO_REJ_BAD_VERSION);
    buf[4] = RCOLO_PROTOCOL_VERSION;
    buf[5] = 7; /* role */
    assert_int_equal(rcolo_req_decode(buf, n, &d), RCOLO_REJ_BAD_ROLE);

    r.channels = 0;
    n = rcolo_req_encode(&r, buf, sizeof(buf));
    assert_int_equal(rcolo_req_decode(buf, n, &d), RCOLO_REJ_BAD_PARAMS);
    r = sample_req();
    r.depth = RCOLO_MAX_DEPTH + 1;
    n = rcolo_req_encode(&r, buf, sizeof(buf));
    assert_int_equal(rcolo_req_decode(buf, n, &d), RCOLO_REJ_BAD_PARAMS);
    r = sample_req();
    r.role = RCOLO_CONN_DATA;
    r.index = RCOLO_MAX_CHANNELS;
    n = rcolo_req_encode(&r, buf, sizeof(buf));
    assert_int_equal(rcolo_req_decode(buf, n, &d), RCOLO_REJ_BAD_CHANNEL);
}

static void hex(const char *s, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(s + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t)v;
    }
}

static void test_mac(void **state)
{
    struct rcolo_req r = sample_req();
    uint8_t want[RCOLO_MAC_LEN], a[RCOLO_MAC_LEN], b[RCOLO_MAC_LEN];
    uint8_t conn[RCOLO_NONCE_LEN];

    for (unsigned i = 0; i < RCOLO_NONCE_LEN; i++) {
        conn[i] = (uint8_t)(100 + i);
    }
    /* Known answers from an independent HMAC (Python's hmac module):
     * HMAC-SHA256(key, label NUL | snonce | cnonce | conn_nonce (zeros if
     * none) | index | channels | depth | qpn), first 20 bytes. */
    hex("6e85e52c46aae4652c3762a52b111023c0b3d56f", want, RCOLO_MAC_LEN);
    assert_memory_equal(r.mac, want, RCOLO_MAC_LEN);
    struct rcolo_mac_input data = {.snonce = r.snonce,
                                   .cnonce = r.cnonce,
                                   .conn_nonce = conn,
                                   .index = 3,
                                   .qpn = 0xabcdef};
    rcolo_mac("", RCOLO_MAC_DATA_REQ, &data, a);
    hex("4d62249d213c68a6b983804f86eb2fd0d584a900", want, RCOLO_MAC_LEN);
    assert_memory_equal(a, want, RCOLO_MAC_LEN);
    rcolo_mac(NULL, RCOLO_MAC_DATA_REQ, &data, b);
    assert_memory_equal(a, b, RCOLO_MAC_LEN);

    /* Every input and the kind change the MAC. */
    struct rcolo_mac_input base = {.snonce = r.snonce,
                                   .cnonce = r.cnonce,
                                   .channels = 4,
                                   .depth = 64,
                                   .qpn = 0x1234},
                           in;
    unsigned changed = 0;
#define DIFFERS(tok, kind, mod)                                                \
    do {                                                                       \
        in = base;                                                             \
        mod;                                                                   \
        rcolo_mac(tok, kind, &in, a);                                          \
        assert_false(rcolo_mac_equal(a, r.mac));                               \
        changed++;                                                             \
    } while (0)
    DIFFERS("tok", RCOLO_MAC_CONTROL_REP, (void)0);
    DIFFERS("tol", RCOLO_MAC_CONTROL_REQ, (void)0);
    DIFFERS("tok", RCOLO_MAC_CONTROL_REQ,
            (in.snonce = r.cnonce, in.cnonce = r.snonce));
    DIFFERS("tok", RCOLO_MAC_CONTROL_REQ, in.conn_nonce = conn);
    DIFFERS("tok", RCOLO_MAC_CONTROL_REQ, in.depth = 63);
    DIFFERS("tok", RCOLO_MAC_CONTROL_REQ, in.channels = 5);
    DIFFERS("tok", RCOLO_MAC_CONTROL_REQ, in.index = 1);
    DIFFERS("tok", RCOLO_MAC_CONTROL_REQ, in.qpn = 0x1235);
#undef DIFFERS
    rcolo_mac("tok", RCOLO_MAC_CONTROL_REQ, &base, a);
    assert_true(rcolo_mac_equal(a, r.mac));
    /* a difference in any byte is seen */
    for (unsigned i = 0; i < RCOLO_MAC_LEN; i++) {
        memcpy(b, a, RCOLO_MAC_LEN);
        b[i] ^= 0x80;
        assert_false(rcolo_mac_equal(a, b));
    }
    printf("unit-wire mac: known answers of an independent HMAC hold; each "
           "of %u inputs (token, kind, nonces, the connection's nonce, "
           "index, channels, depth, QP number) changes the MAC\n",
           changed);
}

/* Stateless challenges: a known answer, the MAC checked, each byte
 * matters. */
static void test_challenge(void **state)
{
    uint8_t key[RCOLO_CHALLENGE_KEY_LEN], c[RCOLO_NONCE_LEN],
        want[RCOLO_NONCE_LEN];
    uint32_t expiry;

    memset(key, 0x55, sizeof(key));
    rcolo_challenge_make(key, 0x01020304, 0x0506, c);
    hex("0102030405068345ba44011d", want, RCOLO_NONCE_LEN);
    assert_memory_equal(c, want, RCOLO_NONCE_LEN);
    assert_true(rcolo_challenge_check(key, c, &expiry));
    assert_int_equal(expiry, 0x01020304);
    for (unsigned i = 0; i < RCOLO_NONCE_LEN; i++) {
        memcpy(want, c, sizeof(want));
        want[i] ^= 0x01;
        assert_false(rcolo_challenge_check(key, want, &expiry));
    }
    key[31] ^= 1;
    assert_false(rcolo_challenge_check(key, c, &expiry));
    printf("unit-wire challenge: a known answer; a change of any byte or of "
           "the key is refused\n");
}

static void test_rep_rej(void **state)
{
    struct rcolo_rep r = {.channels = 8, .depth = 32}, d;
    struct rcolo_rej j;
    uint8_t buf[32], nonce[RCOLO_NONCE_LEN];
    size_t n;

    memset(r.mac, 0xa5, sizeof(r.mac));
    n = rcolo_rep_encode(&r, buf, sizeof(buf));
    assert_int_equal(n, RCOLO_WIRE_REP_LEN);
    assert_int_equal(rcolo_rep_decode(buf, n, &d), 0);
    assert_int_equal(d.channels, 8);
    assert_int_equal(d.depth, 32);
    assert_memory_equal(d.mac, r.mac, RCOLO_MAC_LEN);
    assert_int_equal(rcolo_rep_decode(buf, n - 1, &d), -EPROTO);
    buf[9] = 0; /* depth = 0 */
    buf[8] = 0;
    assert_int_equal(rcolo_rep_decode(buf, n, &d), -EPROTO);

    for (unsigned i = 0; i < RCOLO_NONCE_LEN; i++) {
        nonce[i] = (uint8_t)(i + 1);
    }
    for (int why = 1; why < RCOLO_REJ__MAX; why++) {
        n = rcolo_rej_encode(why, why == RCOLO_REJ_CHALLENGE ? nonce : NULL,
                             buf, sizeof(buf));
        assert_int_equal(n, RCOLO_WIRE_REJ_LEN);
        assert_int_equal(rcolo_rej_decode(buf, n, &j), 0);
        assert_int_equal(j.reason, why);
        assert_int_equal(j.version, RCOLO_PROTOCOL_VERSION);
        assert_string_not_equal(rcolo_reject_str(why), "unknown reason");
        if (why == RCOLO_REJ_CHALLENGE) {
            assert_memory_equal(j.snonce, nonce, RCOLO_NONCE_LEN);
        }
    }
    /* a challenge must carry its nonce */
    n = rcolo_rej_encode(RCOLO_REJ_CHALLENGE, nonce, buf, sizeof(buf));
    assert_int_equal(rcolo_rej_decode(buf, RCOLO_WIRE_REJ_MIN, &j), -EPROTO);
    n = rcolo_rej_encode(RCOLO_REJ_CHALLENGE, NULL, buf, sizeof(buf));
    assert_int_equal(rcolo_rej_decode(buf, n, &j), -EPROTO);
    /* a version 1 REJ (8 bytes) still says why */
    n = rcolo_rej_encode(RCOLO_REJ_BAD_VERSION, NULL, buf, sizeof(buf));
    buf[4] = 1;
    assert_int_equal(rcolo_rej_decode(buf, RCOLO_WIRE_REJ_MIN, &j), 0);
    assert_int_equal(j.reason, RCOLO_REJ_BAD_VERSION);
    assert_int_equal(j.version, 1);
    assert_int_equal(rcolo_rej_decode(buf, 3, &j), -EPROTO);
    buf[5] = RCOLO_REJ__MAX;
    assert_int_equal(rcolo_rej_decode(buf, RCOLO_WIRE_REJ_LEN, &j), -EPROTO);
    buf[5] = 0;
    assert_int_equal(rcolo_rej_decode(buf, RCOLO_WIRE_REJ_LEN, &j), -EPROTO);
    buf[5] = RCOLO_REJ_BUSY;
    buf[0] = 0; /* someone else's reject (e.g. no listener) */
    assert_int_equal(rcolo_rej_decode(buf, RCOLO_WIRE_REJ_LEN, &j), -EPROTO);
}

/* --------------------------------------------------------- descriptors */

static void test_desc_roundtrip(void **state)
{
    static uint8_t buf[RCOLO_DESC_MAX_LEN];
    uint64_t offs[3] = {0, 4096, 1 << 20}, zero[2] = {8192, 12288};
    uint64_t out[5];
    struct rcolo_desc_view v;
    size_t n =
        rcolo_desc_encode(buf, sizeof(buf), false, 7, 99, offs, 3, zero, 2);

    assert_int_equal(n, RCOLO_DESC_FIXED_LEN + 5 * 8);
    assert_int_equal(rcolo_desc_decode(buf, n, &v), 0);
    assert_false(v.fence);
    assert_int_equal(v.region_id, 7);
    assert_int_equal(v.n, 3);
    assert_int_equal(v.nzero, 2);
    assert_true(v.seq == 99);
    assert_int_equal(rcolo_desc_offsets(&v, out, 2 << 20, 4096, NULL), 0);
    assert_true(out[2] == (1 << 20) && out[3] == 8192 && out[4] == 12288);
}

static void test_desc_limits(void **state)
{
    static uint8_t buf[RCOLO_DESC_MAX_LEN + 64];
    static uint64_t offs[RCOLO_MAX_DESC_PAGES + 1];
    struct rcolo_desc_view v;

    for (unsigned i = 0; i <= RCOLO_MAX_DESC_PAGES; i++) {
        offs[i] = (uint64_t)i * 4096;
    }
    size_t n = rcolo_desc_encode(buf, sizeof(buf), false, 1, 1, offs,
                                 RCOLO_MAX_DESC_PAGES, NULL, 0);
    assert_int_equal(n, RCOLO_DESC_MAX_LEN);
    assert_int_equal(rcolo_desc_decode(buf, n, &v), 0);
    /* one page too many: refused by the encoder ... */
    assert_int_equal(rcolo_desc_encode(buf, sizeof(buf), false, 1, 1, offs,
                                       RCOLO_MAX_DESC_PAGES + 1, NULL, 0),
                     0);
    /* ... and by the decoder when a peer claims it anyway */
    uint32_t big = htobe32(RCOLO_MAX_DESC_PAGES + 1);
    memcpy(buf + RCOLO_HDR_LEN + 4, &big, 4);
    assert_int_equal(rcolo_desc_decode(buf, n, &v), -EPROTO);
    /* counts whose product would wrap 32 bits */
    big = htobe32(0x20000000);
    memcpy(buf + RCOLO_HDR_LEN + 4, &big, 4);
    memcpy(buf + RCOLO_HDR_LEN + 8, &big, 4);
    assert_int_equal(rcolo_desc_decode(buf, n, &v), -EPROTO);
}

static void test_desc_malformed(void **state)
{
    uint8_t buf[256];
    uint64_t off = 4096;
    struct rcolo_desc_view v;
    size_t n =
        rcolo_desc_encode(buf, sizeof(buf), false, 1, 1, &off, 1, NULL, 0);

    assert_int_equal(rcolo_desc_decode(buf, n - 1, &v), -EPROTO); /* short */
    assert_int_equal(rcolo_desc_decode(buf, n + 8, &v), -EPROTO); /* long */
    assert_int_equal(rcolo_desc_decode(buf, 4, &v), -EPROTO);
    assert_int_equal(rcolo_desc_decode(NULL, 0, &v), -EPROTO);
    buf[0] = RCOLO_MSG_CREDIT; /* wrong type */
    assert_int_equal(rcolo_desc_decode(buf, n, &v), -EPROTO);
    buf[0] = RCOLO_MSG_DESC;
    buf[1] = 0x80; /* unknown flag */
    assert_int_equal(rcolo_desc_decode(buf, n, &v), -EPROTO);
    buf[1] = RCOLO_DESC_FLAG_FENCE; /* a fence that names pages */
    assert_int_equal(rcolo_desc_decode(buf, n, &v), -EPROTO);
    buf[1] = 0;
    buf[RCOLO_HDR_LEN + 12] = 1; /* reserved field */
    assert_int_equal(rcolo_desc_decode(buf, n, &v), -EPROTO);

    /* garbage never decodes as a valid descriptor by accident */
    srand(7);
    for (int i = 0; i < 10000; i++) {
        size_t len = (size_t)(rand() % (int)sizeof(buf));
        for (size_t j = 0; j < len; j++) {
            buf[j] = (uint8_t)rand();
        }
        if (rcolo_desc_decode(buf, len, &v) == 0) {
            /* only possible if the length field matched; then the counts
             * must agree with it */
            assert_int_equal(len, RCOLO_DESC_FIXED_LEN + 8 * (v.n + v.nzero));
        }
    }
}

static void test_desc_bounds(void **state)
{
    uint8_t buf[256];
    uint64_t out[4], bad_at = 0;
    uint32_t bad = 0;
    struct rcolo_desc_view v;
    uint64_t len = 1 << 20;
    uint64_t cases[][2] = {
        {len, 0},                   /* one past the end */
        {len - 2048, 0},            /* unaligned, last page */
        {4095, 0},                  /* unaligned */
        {UINT64_MAX & ~4095ull, 0}, /* huge: must not wrap */
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t offs[2] = {0, cases[i][0]};
        size_t n = rcolo_desc_encode(buf, sizeof(buf), false, 1, 1, offs, 1,
                                     &offs[1], 1);
        assert_int_equal(rcolo_desc_decode(buf, n, &v), 0);
        assert_int_equal(rcolo_desc_offsets(&v, out, len, 4096, &bad), -EPROTO);
        assert_int_equal(bad, 1);
    }
    /* 2 MiB pages: the last whole page is fine, a 4 KiB-aligned one not */
    uint64_t ok = len * 4 - (2 << 20), notok = 4096;
    size_t n =
        rcolo_desc_encode(buf, sizeof(buf), false, 1, 1, &ok, 1, NULL, 0);
    rcolo_desc_decode(buf, n, &v);
    assert_int_equal(rcolo_desc_offsets(&v, out, len * 4, 2 << 20, NULL), 0);
    n = rcolo_desc_encode(buf, sizeof(buf), false, 1, 1, &notok, 1, NULL, 0);
    rcolo_desc_decode(buf, n, &v);
    assert_int_equal(rcolo_desc_offsets(&v, out, len * 4, 2 << 20, NULL),
                     -EPROTO);
    (void)bad_at;
}

/* Fences and barriers name no pages; a barrier is always a fence; no other
 * flag exists.  The encoder refuses what the decoder refuses. */
static void test_fence_and_barrier_desc(void **state)
{
    uint8_t buf[256];
    uint64_t off = 4096;
    struct rcolo_desc_view v;
    const uint8_t fb = RCOLO_DESC_FLAG_FENCE | RCOLO_DESC_FLAG_BARRIER;
    size_t n = rcolo_desc_encode(buf, sizeof(buf), RCOLO_DESC_FLAG_FENCE, 0, 5,
                                 NULL, 0, NULL, 0);

    assert_int_equal(n, RCOLO_DESC_FIXED_LEN);
    assert_int_equal(rcolo_desc_decode(buf, n, &v), 0);
    assert_true(v.fence && !v.barrier && v.seq == 5);
    n = rcolo_desc_encode(buf, sizeof(buf), fb, 0, 6, NULL, 0, NULL, 0);
    assert_int_equal(n, RCOLO_DESC_FIXED_LEN);
    assert_int_equal(rcolo_desc_decode(buf, n, &v), 0);
    assert_true(v.fence && v.barrier && v.seq == 6);

    /* a barrier that is not a fence, an unknown flag, a fence with pages */
    buf[1] = RCOLO_DESC_FLAG_BARRIER;
    assert_int_equal(rcolo_desc_decode(buf, n, &v), -EPROTO);
    buf[1] = RCOLO_DESC_FLAG_FENCE | 0x08;
    assert_int_equal(rcolo_desc_decode(buf, n, &v), -EPROTO);
    assert_int_equal(rcolo_desc_encode(buf, sizeof(buf),
                                       RCOLO_DESC_FLAG_BARRIER, 0, 1, NULL, 0,
                                       NULL, 0),
                     0);
    assert_int_equal(
        rcolo_desc_encode(buf, sizeof(buf), 0x08, 0, 1, NULL, 0, NULL, 0), 0);
    assert_int_equal(
        rcolo_desc_encode(buf, sizeof(buf), fb, 0, 1, &off, 1, NULL, 0), 0);
    n = rcolo_desc_encode(buf, sizeof(buf), 0, 1, 1, &off, 1, NULL, 0);
    buf[1] = fb;
    assert_int_equal(rcolo_desc_decode(buf, n, &v), -EPROTO);
    print_message("fence and barrier descriptors: both round-trip; a bare "
                  "barrier flag, an unknown flag and a fence naming pages "
                  "are refused by encoder and decoder\n");
}

/*
 * A session fence (protocol 5) is a barrier naming one sequence number per
 * channel, 1..RCOLO_MAX_CHANNELS of them, no zero pages and no region;
 * every other shape with the ALL flag is refused both ways.
 */
static void test_session_fence_desc(void **state)
{
    uint8_t buf[RCOLO_DESC_FIXED_LEN + 8 * (RCOLO_MAX_CHANNELS + 1)];
    const uint8_t all =
        RCOLO_DESC_FLAG_FENCE | RCOLO_DESC_FLAG_BARRIER | RCOLO_DESC_FLAG_ALL;
    uint64_t last[RCOLO_MAX_CHANNELS + 1], got[RCOLO_MAX_CHANNELS];
    struct rcolo_desc_view v;
    size_t n;

    for (unsigned i = 0; i <= RCOLO_MAX_CHANNELS; i++) {
        last[i] = 0x0102030405060708ull * (i + 1); /* any value at all */
    }
    n = rcolo_desc_encode(buf, sizeof(buf), all, 0, 9, last, 4, NULL, 0);
    assert_int_equal(n, RCOLO_DESC_FIXED_LEN + 4 * 8);
    assert_int_equal(rcolo_desc_decode(buf, n, &v), 0);
    assert_true(v.fence && v.barrier && v.all && v.seq == 9 && v.n == 4);
    rcolo_desc_entries(&v, got);
    assert_memory_equal(got, last, 4 * 8);
    n = rcolo_desc_encode(buf, sizeof(buf), all, 0, 9, last, RCOLO_MAX_CHANNELS,
                          NULL, 0);
    assert_int_equal(rcolo_desc_decode(buf, n, &v), 0);
    assert_int_equal(v.n, RCOLO_MAX_CHANNELS);

    /* Refused by the encoder: too many or no channels, zero pages, a
     * region, ALL without BARRIER or without FENCE. */
    assert_int_equal(rcolo_desc_encode(buf, sizeof(buf), all, 0, 9, last,
                                       RCOLO_MAX_CHANNELS + 1, NULL, 0),
                     0);
    assert_int_equal(
        rcolo_desc_encode(buf, sizeof(buf), all, 0, 9, NULL, 0, NULL, 0), 0);
    assert_int_equal(
        rcolo_desc_encode(buf, sizeof(buf), all, 0, 9, last, 2, last, 1), 0);
    assert_int_equal(
        rcolo_desc_encode(buf, sizeof(buf), all, 7, 9, last, 2, NULL, 0), 0);
    assert_int_equal(
        rcolo_desc_encode(buf, sizeof(buf),
                          RCOLO_DESC_FLAG_FENCE | RCOLO_DESC_FLAG_ALL, 0, 9,
                          last, 2, NULL, 0),
        0);
    assert_int_equal(rcolo_desc_encode(buf, sizeof(buf), RCOLO_DESC_FLAG_ALL, 0,
                                       9, last, 2, NULL, 0),
                     0);

    /* Refused by the decoder: the same shapes, built from valid messages
     * by changing one field. */
    n = rcolo_desc_encode(buf, sizeof(buf), all, 0, 9, last, 2, NULL, 0);
    buf[1] = RCOLO_DESC_FLAG_FENCE | RCOLO_DESC_FLAG_ALL;
    assert_int_equal(rcolo_desc_decode(buf, n, &v), -EPROTO);
    buf[1] = all;
    buf[11] = 7; /* region id 7 */
    assert_int_equal(rcolo_desc_decode(buf, n, &v), -EPROTO);
    buf[11] = 0;
    buf[15] = 1; /* n = 1, z = 1 */
    buf[19] = 1;
    assert_int_equal(rcolo_desc_decode(buf, n, &v), -EPROTO);
    n = rcolo_desc_encode(buf, sizeof(buf), 0, 1, 1, last, 1, NULL, 0);
    buf[1] = all;
    buf[11] = 0; /* a page descriptor relabelled, region 0 */
    assert_int_equal(rcolo_desc_decode(buf, n, &v), 0); /* shape is fine: */
    assert_true(v.all && v.n == 1); /* the channel checks its entries */
    n = rcolo_desc_encode(buf, sizeof(buf), RCOLO_DESC_FLAG_FENCE, 0, 1, NULL,
                          0, NULL, 0);
    buf[1] = all; /* no channel at all */
    assert_int_equal(rcolo_desc_decode(buf, n, &v), -EPROTO);
    print_message("session fence descriptors: 4 and %d entries round-trip; "
                  "too many or no entries, zero pages, a region, ALL "
                  "without BARRIER or FENCE are refused by encoder and "
                  "decoder\n",
                  RCOLO_MAX_CHANNELS);
}

static void test_fence_and_credit(void **state)
{
    uint8_t buf[64];
    uint64_t seq = 0;
    uint8_t flags = 0xff;
    struct rcolo_hdr h;
    size_t n = rcolo_fence_ack_encode(buf, sizeof(buf), 0, 1234, 9);

    assert_int_equal(n, RCOLO_FENCE_ACK_LEN);
    assert_int_equal(rcolo_fence_ack_decode(buf, n, &seq, &flags), 0);
    assert_true(seq == 1234 && flags == 0);
    assert_int_equal(rcolo_hdr_decode(buf, n, &h), 0);
    assert_int_equal(h.credits, 9);
    assert_int_equal(rcolo_fence_ack_decode(buf, n - 1, &seq, &flags), -EPROTO);
    /* The session fence's ack; no other flag. */
    n = rcolo_fence_ack_encode(buf, sizeof(buf), RCOLO_FENCE_ACK_ALL, 77, 0);
    assert_int_equal(rcolo_fence_ack_decode(buf, n, &seq, &flags), 0);
    assert_true(seq == 77 && flags == RCOLO_FENCE_ACK_ALL);
    buf[1] = 0x02;
    assert_int_equal(rcolo_fence_ack_decode(buf, n, &seq, &flags), -EPROTO);
    assert_int_equal(rcolo_fence_ack_encode(buf, sizeof(buf), 0x02, 77, 0), 0);

    n = rcolo_credit_encode(buf, sizeof(buf), 16);
    assert_int_equal(rcolo_hdr_decode(buf, n, &h), 0);
    assert_int_equal(h.type, RCOLO_MSG_CREDIT);
    assert_int_equal(h.credits, 16);
    assert_int_equal(rcolo_fence_ack_decode(buf, n, &seq, &flags), -EPROTO);
    buf[0] = 0;
    assert_int_equal(rcolo_hdr_decode(buf, n, &h), -EPROTO);
    buf[0] = RCOLO_MSG__MAX;
    assert_int_equal(rcolo_hdr_decode(buf, n, &h), -EPROTO);
}

/* A ping and its reply round-trip; anything else with the keepalive type
 * (unknown flags, credits, a body, another type) is refused. */
static void test_keepalive(void **state)
{
    uint8_t buf[64];
    bool reply = true;
    size_t n = rcolo_keepalive_encode(buf, sizeof(buf), false);

    (void)state;
    assert_int_equal(n, RCOLO_HDR_LEN);
    assert_int_equal(rcolo_keepalive_decode(buf, n, &reply), 0);
    assert_false(reply);
    n = rcolo_keepalive_encode(buf, sizeof(buf), true);
    assert_int_equal(rcolo_keepalive_decode(buf, n, &reply), 0);
    assert_true(reply);
    assert_int_equal(rcolo_keepalive_encode(buf, RCOLO_HDR_LEN - 1, true), 0);

    buf[1] = 0x02; /* unknown flag */
    assert_int_equal(rcolo_keepalive_decode(buf, n, &reply), -EPROTO);
    buf[1] = RCOLO_KEEPALIVE_REPLY;
    buf[3] = 1; /* credits: a keepalive carries none */
    assert_int_equal(rcolo_keepalive_decode(buf, n, &reply), -EPROTO);
    buf[3] = 0;
    assert_int_equal(rcolo_keepalive_decode(buf, n + 1, &reply), -EPROTO);
    n = rcolo_credit_encode(buf, sizeof(buf), 0);
    assert_int_equal(rcolo_keepalive_decode(buf, n, &reply), -EPROTO);
    printf("unit-wire keepalive: ping and reply round-trip; unknown flags, "
           "credits, a longer message and a CREDIT refused\n");
}

/* --------------------------------------------------------- region table */

static void test_region_table(void **state)
{
    static uint8_t buf[128 * 1024];
    struct rcolo_region_entry e[3] = {
        {.id = 1,
         .page_size = 4096,
         .length = 1 << 30,
         .addr = 0x7f0000000000,
         .rkey = 0x1234,
         .name = "pc.ram"},
        {.id = 9,
         .page_size = 2 << 20,
         .length = 64 << 20,
         .addr = 0x1000,
         .rkey = 7,
         .name = ""},
        {.id = 3,
         .page_size = 4096,
         .length = 4096,
         .addr = 0,
         .rkey = 1,
         .name = "vga.vram"},
    };
    static struct rcolo_region_entry out[RCOLO_MAX_REGIONS];
    size_t n = rcolo_region_table_encode(buf, sizeof(buf), e, 3);

    assert_int_equal(n, rcolo_region_table_len(3));
    assert_int_equal(rcolo_region_table_decode(buf, n, out, 3), 3);
    assert_string_equal(out[0].name, "pc.ram");
    assert_true(out[0].addr == 0x7f0000000000 && out[0].rkey == 0x1234);
    assert_int_equal(out[1].page_size, 2 << 20);
    /* fewer slots than entries */
    assert_int_equal(rcolo_region_table_decode(buf, n, out, 2), -EPROTO);
    /* truncated, extended */
    assert_int_equal(rcolo_region_table_decode(buf, n - 1, out, 3), -EPROTO);
    assert_int_equal(rcolo_region_table_decode(buf, n + 96, out, 3), -EPROTO);
    /* max count encodes within one control slot */
    static struct rcolo_region_entry many[RCOLO_MAX_REGIONS + 1];
    for (unsigned i = 0; i <= RCOLO_MAX_REGIONS; i++) {
        many[i] = e[2];
        many[i].id = i;
    }
    n = rcolo_region_table_encode(buf, sizeof(buf), many, RCOLO_MAX_REGIONS);
    assert_true(n > 0 && n <= 64 * 1024);
    assert_int_equal(rcolo_region_table_encode(buf, sizeof(buf), many,
                                               RCOLO_MAX_REGIONS + 1),
                     0);
}

static void test_region_table_invalid_entries(void **state)
{
    uint8_t buf[1024];
    struct rcolo_region_entry out[4];
    struct rcolo_region_entry base = {
        .id = 1, .page_size = 4096, .length = 8192, .rkey = 1};
    struct rcolo_region_entry bad[6];

    for (int i = 0; i < 6; i++) {
        bad[i] = base;
    }
    bad[0].page_size = 3000;         /* not a power of two */
    bad[1].page_size = 2048;         /* below 4 KiB */
    bad[2].length = 0;               /* empty */
    bad[3].length = 4096 + 512;      /* not a page multiple */
    bad[4].addr = UINT64_MAX - 4095; /* wraps */
    for (int i = 0; i < 5; i++) {
        size_t n = rcolo_region_table_encode(buf, sizeof(buf), &bad[i], 1);
        assert_int_equal(rcolo_region_table_decode(buf, n, out, 4), -EPROTO);
    }
    /* duplicate ids */
    struct rcolo_region_entry dup[2] = {base, base};
    size_t n = rcolo_region_table_encode(buf, sizeof(buf), dup, 2);
    assert_int_equal(rcolo_region_table_decode(buf, n, out, 4), -EPROTO);
    /* a name without its NUL */
    n = rcolo_region_table_encode(buf, sizeof(buf), &base, 1);
    memset(buf + RCOLO_REGION_TABLE_FIXED_LEN + 32, 'x', RCOLO_MAX_NAME + 1);
    assert_int_equal(rcolo_region_table_decode(buf, n, out, 4), -EPROTO);
}

/* ------------------------------------------------------------ coalescing */

static void test_coalesce(void **state)
{
    struct rcolo_run runs[8];
    unsigned used;
    uint64_t offs[] = {0, 4096, 8192, 20480, 24576, 4096, 65536};
    unsigned nr = rcolo_coalesce(offs, 7, 4096, 1 << 20, runs, 8, &used);

    assert_int_equal(nr, 4);
    assert_int_equal(used, 7);
    assert_true(runs[0].offset == 0 && runs[0].length == 3 * 4096);
    assert_true(runs[1].offset == 20480 && runs[1].length == 2 * 4096);
    assert_true(runs[2].offset == 4096 && runs[2].length == 4096);
    assert_true(runs[3].offset == 65536 && runs[3].length == 4096);
}

static void test_coalesce_bounds(void **state)
{
    static uint64_t offs[1024];
    struct rcolo_run runs[8];
    unsigned used;

    for (unsigned i = 0; i < 1024; i++) {
        offs[i] = (uint64_t)i * 4096;
    }
    /* 4 MiB contiguous, 1 MiB max run -> 4 runs */
    unsigned nr = rcolo_coalesce(offs, 1024, 4096, 1 << 20, runs, 8, &used);
    assert_int_equal(nr, 4);
    assert_int_equal(used, 1024);
    for (unsigned i = 0; i < 4; i++) {
        assert_true(runs[i].length == (1 << 20));
    }
    /* out of run slots: reports how far it got */
    nr = rcolo_coalesce(offs, 1024, 4096, 4096, runs, 8, &used);
    assert_int_equal(nr, 8);
    assert_int_equal(used, 8);
    /* 2 MiB pages: a max run below one page still moves whole pages */
    uint64_t huge[2] = {0, 2 << 20};
    nr = rcolo_coalesce(huge, 2, 2 << 20, 4096, runs, 8, &used);
    assert_int_equal(nr, 2);
    assert_true(runs[0].length == (2 << 20));
    assert_int_equal(rcolo_coalesce(offs, 0, 4096, 1 << 20, runs, 8, &used), 0);
    assert_int_equal(used, 0);
}

/* --------------------------------------------------------------- credits */

static void test_credits(void **state)
{
    struct rcolo_credits c;

    rcolo_credits_init(&c, 3);
    assert_true(rcolo_credits_take(&c));
    assert_true(rcolo_credits_take(&c));
    assert_true(rcolo_credits_take(&c));
    assert_false(rcolo_credits_take(&c)); /* never overrun the peer */
    assert_true(rcolo_credits_give(&c, 2));
    assert_false(rcolo_credits_give(&c, 2)); /* more than it ever had */
    assert_int_equal(c.avail, 2);
    assert_true(rcolo_credits_give(&c, 1));
    assert_false(rcolo_credits_give(&c, 1));
    assert_true(rcolo_credits_give(&c, 0));
    assert_int_equal(c.avail, 3);
}

static void test_credit_return_batches(void **state)
{
    struct rcolo_credit_return r = {.batch = 4};
    uint32_t sent = 0;

    for (int i = 0; i < 10; i++) {
        sent += rcolo_credit_return_add(&r, 1);
    }
    assert_int_equal(sent, 8); /* two batches of four */
    assert_int_equal(r.pending, 2);
    assert_int_equal(rcolo_credit_return_add(&r, 5), 7);
    assert_int_equal(r.pending, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_req_roundtrip),
        cmocka_unit_test(test_req_rejects),
        cmocka_unit_test(test_mac),
        cmocka_unit_test(test_challenge),
        cmocka_unit_test(test_rep_rej),
        cmocka_unit_test(test_desc_roundtrip),
        cmocka_unit_test(test_desc_limits),
        cmocka_unit_test(test_desc_malformed),
        cmocka_unit_test(test_desc_bounds),
        cmocka_unit_test(test_fence_and_barrier_desc),
        cmocka_unit_test(test_session_fence_desc),
        cmocka_unit_test(test_fence_and_credit),
        cmocka_unit_test(test_keepalive),
        cmocka_unit_test(test_region_table),
        cmocka_unit_test(test_region_table_invalid_entries),
        cmocka_unit_test(test_coalesce),
        cmocka_unit_test(test_coalesce_bounds),
        cmocka_unit_test(test_credits),
        cmocka_unit_test(test_credit_return_batches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
