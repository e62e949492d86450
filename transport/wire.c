/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Wire encoding and strict decoding.  See wire.h and docs/protocol.md.
 */
#include <endian.h>
#include <errno.h>
#include <string.h>

#include <glib.h>

#include "wire.h"

static void put8(uint8_t **p, uint8_t v)
{
    *(*p)++ = v;
}

static void put16(uint8_t **p, uint16_t v)
{
    v = htobe16(v);
    memcpy(*p, &v, 2);
    *p += 2;
}

static void put32(uint8_t **p, uint32_t v)
{
    v = htobe32(v);
    memcpy(*p, &v, 4);
    *p += 4;
}

static void put64(uint8_t **p, uint64_t v)
{
    v = htobe64(v);
    memcpy(*p, &v, 8);
    *p += 8;
}

static uint8_t get8(const uint8_t **p)
{
    return *(*p)++;
}

static uint16_t get16(const uint8_t **p)
{
    uint16_t v;
    memcpy(&v, *p, 2);
    *p += 2;
    return be16toh(v);
}

static uint32_t get32(const uint8_t **p)
{
    uint32_t v;
    memcpy(&v, *p, 4);
    *p += 4;
    return be32toh(v);
}

static uint64_t get64(const uint8_t **p)
{
    uint64_t v;
    memcpy(&v, *p, 8);
    *p += 8;
    return be64toh(v);
}

static const char *mac_label(enum rcolo_mac_kind kind)
{
    switch (kind) {
    case RCOLO_MAC_CONTROL_REQ:
        return "rdma-colo v6 control request";
    case RCOLO_MAC_CONTROL_REP:
        return "rdma-colo v6 control accept";
    case RCOLO_MAC_DATA_REQ:
        return "rdma-colo v6 data request";
    case RCOLO_MAC_DATA_REP:
        return "rdma-colo v6 data accept";
    }
    return "rdma-colo v6 ?";
}

void rcolo_mac(const char *token, enum rcolo_mac_kind kind,
               const struct rcolo_mac_input *in, uint8_t out[RCOLO_MAC_LEN])
{
    const char *label = mac_label(kind);
    uint8_t msg[3 * RCOLO_NONCE_LEN + 10], *p = msg;
    uint8_t digest[32];
    gsize dlen = sizeof(digest);
    const char *key = token ? token : "";
    GHmac *h = g_hmac_new(G_CHECKSUM_SHA256, (const guchar *)key, strlen(key));

    memcpy(p, in->snonce, RCOLO_NONCE_LEN);
    p += RCOLO_NONCE_LEN;
    memcpy(p, in->cnonce, RCOLO_NONCE_LEN);
    p += RCOLO_NONCE_LEN;
    if (in->conn_nonce) {
        memcpy(p, in->conn_nonce, RCOLO_NONCE_LEN);
    } else {
        memset(p, 0, RCOLO_NONCE_LEN);
    }
    p += RCOLO_NONCE_LEN;
    put16(&p, in->index);
    put16(&p, in->channels);
    put16(&p, in->depth);
    put32(&p, in->qpn);
    /* The label includes its NUL: no label is a prefix of another's
     * input. */
    g_hmac_update(h, (const guchar *)label, (gssize)strlen(label) + 1);
    g_hmac_update(h, msg, sizeof(msg));
    g_hmac_get_digest(h, digest, &dlen);
    g_hmac_unref(h);
    memcpy(out, digest, RCOLO_MAC_LEN);
    explicit_bzero(digest, sizeof(digest));
    explicit_bzero(msg, sizeof(msg));
}

#define CHALLENGE_LABEL "rdma-colo v6 challenge"

void rcolo_challenge_make(const uint8_t key[RCOLO_CHALLENGE_KEY_LEN],
                          uint32_t expiry, uint16_t serial,
                          uint8_t out[RCOLO_NONCE_LEN])
{
    uint8_t digest[32], *p = out;
    gsize dlen = sizeof(digest);
    GHmac *h = g_hmac_new(G_CHECKSUM_SHA256, key, RCOLO_CHALLENGE_KEY_LEN);

    put32(&p, expiry);
    put16(&p, serial);
    g_hmac_update(h, (const guchar *)CHALLENGE_LABEL,
                  (gssize)sizeof(CHALLENGE_LABEL));
    g_hmac_update(h, out, 6);
    g_hmac_get_digest(h, digest, &dlen);
    g_hmac_unref(h);
    memcpy(p, digest, RCOLO_NONCE_LEN - 6);
    memset(digest, 0, sizeof(digest));
}

bool rcolo_challenge_check(const uint8_t key[RCOLO_CHALLENGE_KEY_LEN],
                           const uint8_t nonce[RCOLO_NONCE_LEN],
                           uint32_t *expiry)
{
    uint8_t want[RCOLO_NONCE_LEN];
    volatile uint8_t diff = 0;
    const uint8_t *p = nonce;

    *expiry = get32(&p);
    rcolo_challenge_make(key, *expiry, get16(&p), want);
    for (unsigned i = 6; i < RCOLO_NONCE_LEN; i++) {
        diff |= want[i] ^ nonce[i];
    }
    return diff == 0;
}

bool rcolo_mac_equal(const uint8_t a[RCOLO_MAC_LEN],
                     const uint8_t b[RCOLO_MAC_LEN])
{
    volatile uint8_t diff = 0;

    for (unsigned i = 0; i < RCOLO_MAC_LEN; i++) {
        diff |= a[i] ^ b[i];
    }
    return diff == 0;
}

/* ---------------------------------------------------------------- CM */

size_t rcolo_req_encode(const struct rcolo_req *r, uint8_t *buf, size_t size)
{
    uint8_t *p = buf;

    if (size < RCOLO_WIRE_REQ_LEN) {
        return 0;
    }
    put32(&p, RCOLO_MAGIC);
    put8(&p, r->version);
    put8(&p, (uint8_t)r->role);
    put16(&p, r->index);
    put16(&p, r->channels);
    put16(&p, r->depth);
    memcpy(p, r->snonce, RCOLO_NONCE_LEN);
    p += RCOLO_NONCE_LEN;
    memcpy(p, r->cnonce, RCOLO_NONCE_LEN);
    p += RCOLO_NONCE_LEN;
    memcpy(p, r->mac, RCOLO_MAC_LEN);
    p += RCOLO_MAC_LEN;
    return (size_t)(p - buf);
}

enum rcolo_reject_reason rcolo_req_decode(const void *buf, size_t len,
                                          struct rcolo_req *r)
{
    const uint8_t *p = buf;

    memset(r, 0, sizeof(*r));
    /* A version byte is all an older or newer peer needs to be told
     * apart; rdma_cm may pad private data with zeros: longer is fine. */
    if (!buf || len < 5 || get32(&p) != RCOLO_MAGIC) {
        return RCOLO_REJ_BAD_MAGIC;
    }
    r->version = get8(&p);
    if (r->version != RCOLO_PROTOCOL_VERSION) {
        return RCOLO_REJ_BAD_VERSION;
    }
    if (len < RCOLO_WIRE_REQ_LEN) {
        return RCOLO_REJ_BAD_MAGIC;
    }
    uint8_t role = get8(&p);
    r->index = get16(&p);
    r->channels = get16(&p);
    r->depth = get16(&p);
    memcpy(r->snonce, p, RCOLO_NONCE_LEN);
    p += RCOLO_NONCE_LEN;
    memcpy(r->cnonce, p, RCOLO_NONCE_LEN);
    p += RCOLO_NONCE_LEN;
    memcpy(r->mac, p, RCOLO_MAC_LEN);
    switch (role) {
    case RCOLO_CONN_CONTROL:
        r->role = RCOLO_CONN_CONTROL;
        if (r->index != 0 || r->channels < 1 ||
            r->channels > RCOLO_MAX_CHANNELS || r->depth < 2 ||
            r->depth > RCOLO_MAX_DEPTH) {
            return RCOLO_REJ_BAD_PARAMS;
        }
        break;
    case RCOLO_CONN_DATA:
        r->role = RCOLO_CONN_DATA;
        if (r->index >= RCOLO_MAX_CHANNELS) {
            return RCOLO_REJ_BAD_CHANNEL;
        }
        break;
    case RCOLO_CONN_HELLO:
        r->role = RCOLO_CONN_HELLO;
        break;
    default:
        return RCOLO_REJ_BAD_ROLE;
    }
    return RCOLO_REJ_NONE;
}

size_t rcolo_rep_encode(const struct rcolo_rep *r, uint8_t *buf, size_t size)
{
    uint8_t *p = buf;

    if (size < RCOLO_WIRE_REP_LEN) {
        return 0;
    }
    put32(&p, RCOLO_MAGIC);
    put8(&p, RCOLO_PROTOCOL_VERSION);
    put8(&p, 0);
    put16(&p, r->channels);
    put16(&p, r->depth);
    memcpy(p, r->mac, RCOLO_MAC_LEN);
    p += RCOLO_MAC_LEN;
    return (size_t)(p - buf);
}

int rcolo_rep_decode(const void *buf, size_t len, struct rcolo_rep *r)
{
    const uint8_t *p = buf;

    if (!buf || len < RCOLO_WIRE_REP_LEN || get32(&p) != RCOLO_MAGIC ||
        get8(&p) != RCOLO_PROTOCOL_VERSION || get8(&p) != 0) {
        return -EPROTO;
    }
    r->channels = get16(&p);
    r->depth = get16(&p);
    memcpy(r->mac, p, RCOLO_MAC_LEN);
    if (r->channels < 1 || r->channels > RCOLO_MAX_CHANNELS || r->depth < 2 ||
        r->depth > RCOLO_MAX_DEPTH) {
        return -EPROTO;
    }
    return 0;
}

size_t rcolo_rej_encode(enum rcolo_reject_reason why,
                        const uint8_t snonce[RCOLO_NONCE_LEN], uint8_t *buf,
                        size_t size)
{
    uint8_t *p = buf;

    if (size < RCOLO_WIRE_REJ_LEN) {
        return 0;
    }
    put32(&p, RCOLO_MAGIC);
    put8(&p, RCOLO_PROTOCOL_VERSION);
    put8(&p, (uint8_t)why);
    put16(&p, 0);
    if (snonce) {
        memcpy(p, snonce, RCOLO_NONCE_LEN);
    } else {
        memset(p, 0, RCOLO_NONCE_LEN);
    }
    p += RCOLO_NONCE_LEN;
    return (size_t)(p - buf);
}

int rcolo_rej_decode(const void *buf, size_t len, struct rcolo_rej *r)
{
    const uint8_t *p = buf;

    memset(r, 0, sizeof(*r));
    if (!buf || len < RCOLO_WIRE_REJ_MIN || get32(&p) != RCOLO_MAGIC) {
        return -EPROTO;
    }
    r->version = get8(&p);
    r->reason = get8(&p);
    if (r->reason == RCOLO_REJ_NONE || r->reason >= RCOLO_REJ__MAX) {
        return -EPROTO;
    }
    if (r->reason == RCOLO_REJ_CHALLENGE) {
        static const uint8_t zero[RCOLO_NONCE_LEN];

        if (r->version != RCOLO_PROTOCOL_VERSION || len < RCOLO_WIRE_REJ_LEN) {
            return -EPROTO;
        }
        (void)get16(&p);
        memcpy(r->snonce, p, RCOLO_NONCE_LEN);
        if (!memcmp(r->snonce, zero, RCOLO_NONCE_LEN)) {
            return -EPROTO;
        }
    }
    return 0;
}

const char *rcolo_reject_str(int reason)
{
    switch (reason) {
    case RCOLO_REJ_BAD_MAGIC:
        return "not an rdma-colo connection";
    case RCOLO_REJ_BAD_VERSION:
        return "protocol version mismatch";
    case RCOLO_REJ_BAD_TOKEN:
        return "wrong session token (the proof of the token does not "
               "verify)";
    case RCOLO_REJ_BAD_ROLE:
        return "unknown connection role";
    case RCOLO_REJ_BUSY:
        return "a primary is already connected";
    case RCOLO_REJ_BAD_CHANNEL:
        return "bad or duplicate channel index";
    case RCOLO_REJ_BAD_NONCE:
        return "stale, reused or unknown challenge (or a channel of "
               "another session)";
    case RCOLO_REJ_NO_RESOURCES:
        return "secondary is out of resources";
    case RCOLO_REJ_BAD_PARAMS:
        return "channel count or depth out of range";
    case RCOLO_REJ_CHALLENGE:
        return "challenge (not an error)";
    case RCOLO_REJ_SLOW_DOWN:
        return "too many connection attempts from this address";
    default:
        return "unknown reason";
    }
}

/* ---------------------------------------------------------- messages */

static void hdr_put(uint8_t **p, uint8_t type, uint8_t flags, uint16_t credits,
                    uint32_t length)
{
    put8(p, type);
    put8(p, flags);
    put16(p, credits);
    put32(p, length);
}

int rcolo_hdr_decode(const void *buf, size_t len, struct rcolo_hdr *h)
{
    const uint8_t *p = buf;

    if (!buf || len < RCOLO_HDR_LEN) {
        return -EPROTO;
    }
    h->type = get8(&p);
    h->flags = get8(&p);
    h->credits = get16(&p);
    h->length = get32(&p);
    if (h->type == 0 || h->type >= RCOLO_MSG__MAX || h->length != len) {
        return -EPROTO;
    }
    return 0;
}

/*
 * The rules every DESC obeys, for the encoder and the decoder alike: known
 * flags only; a barrier is a fence and a session fence a barrier; a fence
 * names no pages, a session fence names one entry per channel and no
 * region.
 */
static bool desc_shape_valid(uint8_t flags, uint32_t region_id, uint32_t n,
                             uint32_t nzero)
{
    const uint8_t known =
        RCOLO_DESC_FLAG_FENCE | RCOLO_DESC_FLAG_BARRIER | RCOLO_DESC_FLAG_ALL;
    bool fence = flags & RCOLO_DESC_FLAG_FENCE;
    bool barrier = flags & RCOLO_DESC_FLAG_BARRIER;
    bool all = flags & RCOLO_DESC_FLAG_ALL;

    if ((flags & ~known) || (barrier && !fence) || (all && !barrier)) {
        return false;
    }
    if (all) {
        return region_id == 0 && nzero == 0 && n >= 1 &&
               n <= RCOLO_MAX_CHANNELS;
    }
    return !fence || (uint64_t)n + nzero == 0;
}

size_t rcolo_desc_encode(uint8_t *buf, size_t size, uint8_t flags,
                         uint32_t region_id, uint64_t seq,
                         const uint64_t *offsets, uint32_t n,
                         const uint64_t *zero, uint32_t nzero)
{
    uint8_t *p = buf;
    size_t len;

    if ((uint64_t)n + nzero > RCOLO_MAX_DESC_PAGES ||
        !desc_shape_valid(flags, region_id, n, nzero)) {
        return 0;
    }
    len = RCOLO_DESC_FIXED_LEN + 8 * ((size_t)n + nzero);
    if (size < len) {
        return 0;
    }
    hdr_put(&p, RCOLO_MSG_DESC, flags, 0, (uint32_t)len);
    put32(&p, region_id);
    put32(&p, n);
    put32(&p, nzero);
    put32(&p, 0);
    put64(&p, seq);
    for (uint32_t i = 0; i < n; i++) {
        put64(&p, offsets[i]);
    }
    for (uint32_t i = 0; i < nzero; i++) {
        put64(&p, zero[i]);
    }
    return len;
}

int rcolo_desc_decode(const void *buf, size_t len, struct rcolo_desc_view *d)
{
    struct rcolo_hdr h;
    const uint8_t *p = buf;

    if (rcolo_hdr_decode(buf, len, &h) || h.type != RCOLO_MSG_DESC ||
        len < RCOLO_DESC_FIXED_LEN) {
        return -EPROTO;
    }
    p += RCOLO_HDR_LEN;
    d->fence = h.flags & RCOLO_DESC_FLAG_FENCE;
    d->barrier = h.flags & RCOLO_DESC_FLAG_BARRIER;
    d->all = h.flags & RCOLO_DESC_FLAG_ALL;
    d->region_id = get32(&p);
    d->n = get32(&p);
    d->nzero = get32(&p);
    if (get32(&p) != 0) {
        return -EPROTO;
    }
    d->seq = get64(&p);
    /* Counts first, in 64 bits, so no product can wrap. */
    if ((uint64_t)d->n + d->nzero > RCOLO_MAX_DESC_PAGES ||
        len != RCOLO_DESC_FIXED_LEN + 8 * ((uint64_t)d->n + d->nzero)) {
        return -EPROTO;
    }
    if (!desc_shape_valid(h.flags, d->region_id, d->n, d->nzero)) {
        return -EPROTO;
    }
    d->offsets_be = p;
    return 0;
}

int rcolo_desc_offsets(const struct rcolo_desc_view *d, uint64_t *out,
                       uint64_t region_len, uint32_t page_size, uint32_t *bad)
{
    const uint8_t *p = d->offsets_be;
    uint32_t total = d->n + d->nzero;

    for (uint32_t i = 0; i < total; i++) {
        uint64_t off = get64(&p);
        if ((off & (page_size - 1)) || off >= region_len ||
            region_len - off < page_size) {
            if (bad) {
                *bad = i;
            }
            return -EPROTO;
        }
        out[i] = off;
    }
    return 0;
}

void rcolo_desc_entries(const struct rcolo_desc_view *d, uint64_t *out)
{
    const uint8_t *p = d->offsets_be;

    for (uint32_t i = 0; i < d->n + d->nzero; i++) {
        out[i] = get64(&p);
    }
}

size_t rcolo_fence_ack_encode(uint8_t *buf, size_t size, uint8_t flags,
                              uint64_t seq, uint16_t credits)
{
    uint8_t *p = buf;

    if (size < RCOLO_FENCE_ACK_LEN || (flags & ~RCOLO_FENCE_ACK_ALL)) {
        return 0;
    }
    hdr_put(&p, RCOLO_MSG_FENCE_ACK, flags, credits, RCOLO_FENCE_ACK_LEN);
    put64(&p, seq);
    return RCOLO_FENCE_ACK_LEN;
}

int rcolo_fence_ack_decode(const void *buf, size_t len, uint64_t *seq,
                           uint8_t *flags)
{
    struct rcolo_hdr h;
    const uint8_t *p = buf;

    if (rcolo_hdr_decode(buf, len, &h) || h.type != RCOLO_MSG_FENCE_ACK ||
        len != RCOLO_FENCE_ACK_LEN || (h.flags & ~RCOLO_FENCE_ACK_ALL)) {
        return -EPROTO;
    }
    p += RCOLO_HDR_LEN;
    *flags = h.flags;
    *seq = get64(&p);
    return 0;
}

size_t rcolo_credit_encode(uint8_t *buf, size_t size, uint16_t credits)
{
    uint8_t *p = buf;

    if (size < RCOLO_HDR_LEN) {
        return 0;
    }
    hdr_put(&p, RCOLO_MSG_CREDIT, 0, credits, RCOLO_HDR_LEN);
    return RCOLO_HDR_LEN;
}

size_t rcolo_keepalive_encode(uint8_t *buf, size_t size, bool reply)
{
    uint8_t *p = buf;

    if (size < RCOLO_HDR_LEN) {
        return 0;
    }
    hdr_put(&p, RCOLO_MSG_KEEPALIVE, reply ? RCOLO_KEEPALIVE_REPLY : 0, 0,
            RCOLO_HDR_LEN);
    return RCOLO_HDR_LEN;
}

int rcolo_keepalive_decode(const void *buf, size_t len, bool *reply)
{
    struct rcolo_hdr h;

    if (rcolo_hdr_decode(buf, len, &h) || h.type != RCOLO_MSG_KEEPALIVE ||
        len != RCOLO_HDR_LEN || (h.flags & ~RCOLO_KEEPALIVE_REPLY) ||
        h.credits) {
        return -EPROTO;
    }
    *reply = h.flags & RCOLO_KEEPALIVE_REPLY;
    return 0;
}

size_t rcolo_stream_hdr_encode(uint8_t *buf, uint8_t type, uint32_t payload,
                               uint16_t credits)
{
    uint8_t *p = buf;

    hdr_put(&p, type, 0, credits, RCOLO_HDR_LEN + payload);
    return RCOLO_HDR_LEN;
}

/* ----------------------------------------------------- region table */

size_t rcolo_region_table_len(uint32_t count)
{
    return RCOLO_REGION_TABLE_FIXED_LEN +
           (size_t)count * RCOLO_REGION_ENTRY_LEN;
}

size_t rcolo_region_table_encode(uint8_t *buf, size_t size,
                                 const struct rcolo_region_entry *e,
                                 uint32_t count)
{
    size_t len = rcolo_region_table_len(count);
    uint8_t *p = buf;

    if (count > RCOLO_MAX_REGIONS || size < len) {
        return 0;
    }
    hdr_put(&p, RCOLO_MSG_REGION_TABLE, 0, 0, (uint32_t)len);
    put32(&p, count);
    put32(&p, 0);
    for (uint32_t i = 0; i < count; i++) {
        put32(&p, e[i].id);
        put32(&p, e[i].page_size);
        put64(&p, e[i].length);
        put64(&p, e[i].addr);
        put32(&p, e[i].rkey);
        put32(&p, 0);
        memset(p, 0, RCOLO_MAX_NAME + 1);
        memcpy(p, e[i].name, strnlen(e[i].name, RCOLO_MAX_NAME));
        p += RCOLO_MAX_NAME + 1;
    }
    return len;
}

static bool page_size_ok(uint32_t ps)
{
    return ps >= 4096 && (ps & (ps - 1)) == 0;
}

int rcolo_region_table_decode(const void *buf, size_t len,
                              struct rcolo_region_entry *out,
                              uint32_t max_count)
{
    struct rcolo_hdr h;
    const uint8_t *p = buf;
    uint32_t count;

    if (rcolo_hdr_decode(buf, len, &h) || h.type != RCOLO_MSG_REGION_TABLE ||
        h.flags || len < RCOLO_REGION_TABLE_FIXED_LEN) {
        return -EPROTO;
    }
    p += RCOLO_HDR_LEN;
    count = get32(&p);
    if (get32(&p) != 0 || count > RCOLO_MAX_REGIONS || count > max_count ||
        len != rcolo_region_table_len(count)) {
        return -EPROTO;
    }
    for (uint32_t i = 0; i < count; i++) {
        struct rcolo_region_entry *e = &out[i];
        e->id = get32(&p);
        e->page_size = get32(&p);
        e->length = get64(&p);
        e->addr = get64(&p);
        e->rkey = get32(&p);
        if (get32(&p) != 0) {
            return -EPROTO;
        }
        if (memchr(p, 0, RCOLO_MAX_NAME + 1) == NULL) {
            return -EPROTO;
        }
        memcpy(e->name, p, RCOLO_MAX_NAME + 1);
        p += RCOLO_MAX_NAME + 1;
        if (!page_size_ok(e->page_size) || e->length == 0 ||
            (e->length & (e->page_size - 1)) || e->addr + e->length < e->addr) {
            return -EPROTO;
        }
        for (uint32_t j = 0; j < i; j++) {
            if (out[j].id == e->id) {
                return -EPROTO;
            }
        }
    }
    return (int)count;
}

/* -------------------------------------------------------- coalescing */

unsigned rcolo_coalesce(const uint64_t *offsets, unsigned n, uint32_t page_size,
                        uint64_t max_run, struct rcolo_run *runs,
                        unsigned max_runs, unsigned *consumed)
{
    unsigned nr = 0, i = 0;

    if (max_run < page_size) {
        max_run = page_size;
    }
    while (i < n && nr < max_runs) {
        struct rcolo_run *r = &runs[nr++];
        r->offset = offsets[i];
        r->length = page_size;
        i++;
        while (i < n && offsets[i] == r->offset + r->length &&
               r->length + page_size <= max_run) {
            r->length += page_size;
            i++;
        }
    }
    *consumed = i;
    return nr;
}
