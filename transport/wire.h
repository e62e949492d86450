/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Wire formats: connection private data and the messages on the control
 * connection and the data channels.  Every multi-byte field is big-endian
 * (network order, as QEMU's multifd packets).  Decoders validate every field
 * against its limits before anything is used; see docs/protocol.md.
 *
 * This file is pure: no verbs, no I/O, no allocation but GLib's HMAC state in
 * rcolo_mac (handshake only, never the data path), so the unit suite can
 * feed it truncated, oversized and garbage input.
 */
#ifndef RCOLO_WIRE_H
#define RCOLO_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rdma-colo.h"

#define RCOLO_MAGIC 0x52434f4cu /* "RCOL" */

/* --- connection private data (rdma_cm REQ / REP / REJ) ---------------- */

enum rcolo_conn_role {
    RCOLO_CONN_CONTROL = 1,
    RCOLO_CONN_DATA = 2,
    RCOLO_CONN_HELLO = 3, /* asks for a challenge; always rejected */
};

/*
 * The handshake (protocol version 6; docs/protocol.md has the sequence).
 * Every secret-bearing field is a truncated HMAC-SHA256 keyed with the
 * session token, so nothing on the wire can be replayed into another
 * connection:
 *
 *   1. primary  -> HELLO REQ                      (a throw-away QP)
 *      secondary <- REJ CHALLENGE(snonce)          fresh, single use
 *   2. primary  -> CONTROL REQ(snonce, cnonce, mac_req)
 *      secondary checks the challenge is its own and unused, then the
 *      MAC in constant time, and only then allocates anything;
 *      secondary <- REP(mac_rep)                   proves the secondary
 *   3. primary  -> DATA REQ i (snonce, dnonce, mac_data(i))   dnonce fresh
 *      secondary <- REP(mac_data_rep(i))
 *   Every MAC also covers the prover's QP number (struct rcolo_mac_input).
 *
 * REQ (primary -> secondary, RCOLO_WIRE_REQ_LEN = 56, the most rdma_cm
 * carries over IB/RoCE):
 *   magic u32, version u8, role u8, index u16, channels u16, depth u16,
 *   snonce[12], cnonce[12] (a DATA REQ: the channel's own nonce, the
 *   session's cnonce being known to both), mac[20]
 * REP (secondary -> primary on accept, 30 bytes):
 *   magic u32, version u8, status u8, channels u16, depth u16, mac[20]
 * REJ (secondary -> primary, 20 bytes):
 *   magic u32, version u8, reason u8, reserved u16, snonce[12] (the
 *   challenge for RCOLO_REJ_CHALLENGE, else zero)
 */
#define RCOLO_NONCE_LEN    12
#define RCOLO_MAC_LEN      20 /* HMAC-SHA256, truncated (RFC 2104 sec. 5) */
#define RCOLO_WIRE_REQ_LEN (12 + 2 * RCOLO_NONCE_LEN + RCOLO_MAC_LEN)
#define RCOLO_WIRE_REP_LEN (10 + RCOLO_MAC_LEN)
#define RCOLO_WIRE_REJ_LEN (8 + RCOLO_NONCE_LEN)
#define RCOLO_WIRE_REJ_MIN 8 /* what every version's REJ starts with */

/* REJ reasons (secondary -> primary). */
enum rcolo_reject_reason {
    RCOLO_REJ_NONE = 0,
    RCOLO_REJ_BAD_MAGIC = 1,
    RCOLO_REJ_BAD_VERSION = 2,
    RCOLO_REJ_BAD_TOKEN = 3, /* the MAC does not verify */
    RCOLO_REJ_BAD_ROLE = 4,
    RCOLO_REJ_BUSY = 5,         /* a control connection is already up */
    RCOLO_REJ_BAD_CHANNEL = 6,  /* index out of range or already connected */
    RCOLO_REJ_BAD_NONCE = 7,    /* not our challenge, used, or expired */
    RCOLO_REJ_NO_RESOURCES = 8, /* region registration or QP failed */
    RCOLO_REJ_BAD_PARAMS = 9,   /* channels/depth out of range */
    RCOLO_REJ_CHALLENGE = 10,   /* answer to HELLO: not an error */
    RCOLO_REJ_SLOW_DOWN = 11,   /* too many HELLOs from this address */
    RCOLO_REJ__MAX
};

/* The whole REQ is encoded by hand; the struct is only the decoded view. */
struct rcolo_req {
    uint8_t version;
    enum rcolo_conn_role role;
    uint16_t index;
    uint16_t channels;
    uint16_t depth;
    uint8_t snonce[RCOLO_NONCE_LEN];
    uint8_t cnonce[RCOLO_NONCE_LEN];
    uint8_t mac[RCOLO_MAC_LEN];
};

struct rcolo_rep {
    uint16_t channels;
    uint16_t depth;
    uint8_t mac[RCOLO_MAC_LEN];
};

struct rcolo_rej {
    uint8_t version; /* the refuser's protocol version */
    uint8_t reason;  /* enum rcolo_reject_reason, never NONE */
    uint8_t snonce[RCOLO_NONCE_LEN];
};

/* What each MAC proves; each kind is domain-separated from the others. */
enum rcolo_mac_kind {
    RCOLO_MAC_CONTROL_REQ = 1, /* primary: knows the token, these params */
    RCOLO_MAC_CONTROL_REP,     /* secondary: knows it, grants these */
    RCOLO_MAC_DATA_REQ,        /* primary: channel index of this session */
    RCOLO_MAC_DATA_REP,        /* secondary: accepts that channel */
};

/*
 * What a MAC covers (protocol version 6): the session's two nonces, the
 * connection's own nonce (a data channel's, fresh for each connect; none
 * for the control connection, whose snonce is fresh), the channel index,
 * the parameters, and the QP number of the side that proves (its CM
 * message carries it): a proof cannot be replayed from another QP, nor
 * into another connection.
 */
struct rcolo_mac_input {
    const uint8_t *snonce;     /* RCOLO_NONCE_LEN, the session's */
    const uint8_t *cnonce;     /* RCOLO_NONCE_LEN, the session's */
    const uint8_t *conn_nonce; /* RCOLO_NONCE_LEN, or NULL: none (zeros) */
    uint16_t index, channels, depth;
    uint32_t qpn;
};

/*
 * HMAC-SHA256(token, label(kind) NUL | snonce | cnonce | conn_nonce |
 * index | channels | depth | qpn), truncated to RCOLO_MAC_LEN; integers
 * big-endian.  @token is NUL-terminated (an empty token still yields a MAC,
 * which then proves nothing).
 */
void rcolo_mac(const char *token, enum rcolo_mac_kind kind,
               const struct rcolo_mac_input *in, uint8_t out[RCOLO_MAC_LEN]);
/* Constant-time comparison: the time does not depend on where @a and @b
 * differ. */
bool rcolo_mac_equal(const uint8_t a[RCOLO_MAC_LEN],
                     const uint8_t b[RCOLO_MAC_LEN]);

/*
 * Stateless challenges (HELLO's answer; protocol version 6): be32 @expiry |
 * be16 @serial | the first 6 bytes of HMAC-SHA256(@key, label | expiry |
 * serial), @key the secondary's own random key.  The secondary stores
 * nothing when it hands one out, so no flood of HELLOs can evict another's
 * challenge; it checks a returned one by its MAC (in constant time) and its
 * expiry.  A 48-bit MAC is enough: a challenge lives for timeout= at most.
 */
#define RCOLO_CHALLENGE_KEY_LEN 32
void rcolo_challenge_make(const uint8_t key[RCOLO_CHALLENGE_KEY_LEN],
                          uint32_t expiry, uint16_t serial,
                          uint8_t out[RCOLO_NONCE_LEN]);
/* Whether @nonce was made with @key; its expiry in @expiry. */
bool rcolo_challenge_check(const uint8_t key[RCOLO_CHALLENGE_KEY_LEN],
                           const uint8_t nonce[RCOLO_NONCE_LEN],
                           uint32_t *expiry);

size_t rcolo_req_encode(const struct rcolo_req *r, uint8_t *buf, size_t size);
/* Structure and ranges only (the MAC and nonces are the session's to
 * check).  Returns RCOLO_REJ_NONE, or the reason the REQ must be
 * rejected. */
enum rcolo_reject_reason rcolo_req_decode(const void *buf, size_t len,
                                          struct rcolo_req *r);

size_t rcolo_rep_encode(const struct rcolo_rep *r, uint8_t *buf, size_t size);
int rcolo_rep_decode(const void *buf, size_t len, struct rcolo_rep *r);

size_t rcolo_rej_encode(enum rcolo_reject_reason why,
                        const uint8_t snonce[RCOLO_NONCE_LEN], uint8_t *buf,
                        size_t size);
/* Returns 0, or -EPROTO if @buf is not an rdma-colo REJ (e.g. the kernel's
 * own reject when nobody listens).  Any version may say why it refused; a
 * CHALLENGE must carry its nonce. */
int rcolo_rej_decode(const void *buf, size_t len, struct rcolo_rej *r);
const char *rcolo_reject_str(int reason);

/* --- messages (SEND/RECV) --------------------------------------------- */

enum rcolo_msg_type {
    RCOLO_MSG_DESC = 1,         /* data: pages placed, or fence */
    RCOLO_MSG_FENCE_ACK = 2,    /* data: secondary -> primary */
    RCOLO_MSG_CREDIT = 3,       /* data or control: receive slots freed */
    RCOLO_MSG_REGION_TABLE = 4, /* control: secondary -> primary */
    RCOLO_MSG_STREAM = 5,       /* control: stream bytes (+ credits) */
    RCOLO_MSG_STREAM_END = 6,   /* control: end of stream */
    RCOLO_MSG_KEEPALIVE = 7,    /* control: a ping, or its reply */
    RCOLO_MSG__MAX
};

/* Every message starts with this 8-byte header. */
#define RCOLO_HDR_LEN 8
struct rcolo_hdr {
    uint8_t type;
    uint8_t flags;
    uint16_t credits; /* receive slots the sender freed (piggy-backed) */
    uint32_t length;  /* whole message, header included */
};

#define RCOLO_DESC_FLAG_FENCE 0x01
/* With FENCE: a barrier, which the secondary's library acknowledges itself
 * once every earlier descriptor of the channel is released; it is never
 * handed to the application (protocol version 4). */
#define RCOLO_DESC_FLAG_BARRIER 0x02
/* With FENCE and BARRIER: a session fence (protocol version 5), sent on
 * channel 0.  Its n entries (no zero pages, region 0) are the sequence
 * number of the last descriptor sent on each channel, in channel order,
 * its own channel's included: the secondary's library acknowledges it, from
 * whichever channel releases last, once every channel released those. */
#define RCOLO_DESC_FLAG_ALL 0x04

/* DESC: header, region id, normal count, zero count, reserved, seq, then
 * (normal + zero) 64-bit offsets. */
#define RCOLO_DESC_FIXED_LEN (RCOLO_HDR_LEN + 24)
#define RCOLO_DESC_MAX_LEN   (RCOLO_DESC_FIXED_LEN + 8 * RCOLO_MAX_DESC_PAGES)

struct rcolo_desc_view {
    bool fence;
    bool barrier; /* implies fence */
    bool all;     /* a session fence: implies barrier; n entries */
    uint32_t region_id;
    uint32_t n;
    uint32_t nzero;
    uint64_t seq;
    const uint8_t *offsets_be; /* n + nzero big-endian u64, unaligned */
};

/* @flags: 0 for pages, RCOLO_DESC_FLAG_FENCE (| RCOLO_DESC_FLAG_BARRIER)
 * for a fence, which names no pages; FENCE | BARRIER | ALL for a session
 * fence, with one entry per channel in @offsets (1..RCOLO_MAX_CHANNELS of
 * them) and none in @zero. */
size_t rcolo_desc_encode(uint8_t *buf, size_t size, uint8_t flags,
                         uint32_t region_id, uint64_t seq,
                         const uint64_t *offsets, uint32_t n,
                         const uint64_t *zero, uint32_t nzero);
/* Structure only (lengths, counts); regions are checked by the caller
 * with rcolo_desc_check_bounds.  Returns 0 or -EPROTO. */
int rcolo_desc_decode(const void *buf, size_t len, struct rcolo_desc_view *d);

/* Decode the offsets into @out (n + nzero entries) and check that each is
 * page-aligned and the page lies inside [0, region_len).  Returns 0 or
 * -EPROTO (with the index of the first bad offset in *bad). */
int rcolo_desc_offsets(const struct rcolo_desc_view *d, uint64_t *out,
                       uint64_t region_len, uint32_t page_size, uint32_t *bad);

/* Decode a session fence's n entries (sequence numbers, any value). */
void rcolo_desc_entries(const struct rcolo_desc_view *d, uint64_t *out);

/* FENCE_ACK: header + seq (of the fence descriptor).  Flag ALL: the ack
 * of the session fence @seq of channel 0, on any channel. */
#define RCOLO_FENCE_ACK_LEN (RCOLO_HDR_LEN + 8)
#define RCOLO_FENCE_ACK_ALL 0x01
size_t rcolo_fence_ack_encode(uint8_t *buf, size_t size, uint8_t flags,
                              uint64_t seq, uint16_t credits);
int rcolo_fence_ack_decode(const void *buf, size_t len, uint64_t *seq,
                           uint8_t *flags);

/* CREDIT: header only. */
size_t rcolo_credit_encode(uint8_t *buf, size_t size, uint16_t credits);

/* KEEPALIVE: header only; flags 0 (a ping) or RCOLO_KEEPALIVE_REPLY. */
#define RCOLO_KEEPALIVE_REPLY 0x01
size_t rcolo_keepalive_encode(uint8_t *buf, size_t size, bool reply);
/* Returns 0 (*reply set) or -EPROTO. */
int rcolo_keepalive_decode(const void *buf, size_t len, bool *reply);

/* Generic header decode: checks type range and that length == @len (the
 * received byte count) and >= the header.  Returns 0 or -EPROTO. */
int rcolo_hdr_decode(const void *buf, size_t len, struct rcolo_hdr *h);

/* REGION_TABLE: header, count, reserved, then count entries of
 * RCOLO_REGION_ENTRY_LEN bytes. */
#define RCOLO_REGION_ENTRY_LEN       96
#define RCOLO_REGION_TABLE_FIXED_LEN (RCOLO_HDR_LEN + 8)

struct rcolo_region_entry {
    uint32_t id;
    uint32_t page_size;
    uint64_t length;
    uint64_t addr;
    uint32_t rkey;
    char name[RCOLO_MAX_NAME + 1];
};

size_t rcolo_region_table_len(uint32_t count);
size_t rcolo_region_table_encode(uint8_t *buf, size_t size,
                                 const struct rcolo_region_entry *e,
                                 uint32_t count);
/* Decodes and validates every entry (page size a power of two >= 4096,
 * length a non-zero multiple of it, addr + length does not wrap, name
 * NUL-terminated, ids unique).  Returns the count or -EPROTO. */
int rcolo_region_table_decode(const void *buf, size_t len,
                              struct rcolo_region_entry *out,
                              uint32_t max_count);

/* STREAM: header + payload. */
#define RCOLO_STREAM_HDR_LEN RCOLO_HDR_LEN
size_t rcolo_stream_hdr_encode(uint8_t *buf, uint8_t type, uint32_t payload,
                               uint16_t credits);

/* --- page-run coalescing ------------------------------------------------ */

struct rcolo_run {
    uint64_t offset;
    uint64_t length;
};

/*
 * Group @n page offsets into runs of contiguous pages, in the given order (a
 * run grows while the next offset directly follows it and it stays within
 * @max_run bytes).  Writes at most @max_runs runs and returns how many;
 * *consumed is set to the number of offsets covered.
 */
unsigned rcolo_coalesce(const uint64_t *offsets, unsigned n, uint32_t page_size,
                        uint64_t max_run, struct rcolo_run *runs,
                        unsigned max_runs, unsigned *consumed);

#endif /* RCOLO_WIRE_H */
