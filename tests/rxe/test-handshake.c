/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The connection handshake against hostile peers, on real verbs (run under
 * scripts/with-rxe).  Each case prints what it sent and what came back.
 *
 * Part 1, hostile primaries: a raw rdma_cm client sends hand-made REQs to a
 * real secondary (this process's library session): garbage, a version 1
 * REQ, invented and reused challenges, a wrong-token proof, parameters
 * changed after the proof, data channels of no session, with a wrong proof,
 * out of range or duplicate, a second primary, and a replay of the real
 * primary's control REQ.  Every one must be refused with the right reason,
 * and the secondary must stay healthy: a real primary connects in the
 * middle and fences before and after.
 *
 * Part 3, a primary that proves the token and stops before it completes the
 * connection: the secondary gives up after its timeout=, and says why.
 *
 * Part 2, hostile secondaries: a raw rdma_cm listener plays a secondary
 * that accepts a HELLO, one that answers with a proof made with another
 * token, and one of the next protocol version that refuses ours; the
 * library's primary must refuse each with a clear error (the last one
 * naming both versions).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "internal.h" /* the secondary's nonces, to forge channel REQs */

#define TOKEN      "handshake-test-token"
#define CHANNELS   2
#define TIMEOUT_MS 20000
#define REGION_LEN (4u << 20)

static const char *addr;

/* The QP number every raw client's CM request carries. */
#define RAW_QPN 0xabcde

static unsigned cases;

static unsigned uri_timeout_ms = RCOLO_DEFAULT_TIMEOUT_MS;

static void uri_for(struct rcolo_uri *uri, const char *port, const char *token)
{
    char text[256];
    struct rcolo_error err = {0};

    snprintf(text, sizeof(text),
             "rdma-colo:%s:%s?channels=%d&token=%s&timeout=%u", addr, port,
             CHANNELS, token, uri_timeout_ms);
    CHECK(rcolo_uri_parse(text, uri, &err) == 0, "%s", err.message);
}

/* ------------------------------------------------------- raw client */

struct answer {
    enum rdma_cm_event_type event;
    uint8_t pdata[256];
    size_t len;
};

/* Send @pdata as a connect request (no QP: nothing may be accepted) and
 * return what came back.  With @keep, the id and its event channel are
 * handed back instead of destroyed (and an accept is not completed: no
 * RTU is sent). */
static struct answer raw_connect_keep(const char *port, const void *pdata,
                                      size_t len, struct rdma_cm_id **keep,
                                      struct rdma_event_channel **keep_ch)
{
    struct rdma_event_channel *ch = rdma_create_event_channel();
    struct rdma_addrinfo hints = {.ai_port_space = RDMA_PS_TCP}, *ai;
    struct rdma_cm_id *id;
    struct rdma_cm_event *ev;
    struct answer a = {0};

    CHECK(ch, "rdma_create_event_channel: %s", strerror(errno));
    CHECK(rdma_create_id(ch, &id, NULL, RDMA_PS_TCP) == 0, "rdma_create_id");
    CHECK(rdma_getaddrinfo(addr, port, &hints, &ai) == 0, "getaddrinfo");
    CHECK(rdma_resolve_addr(id, NULL, ai->ai_dst_addr, 2000) == 0,
          "resolve_addr");
    rdma_freeaddrinfo(ai);
    CHECK(rdma_get_cm_event(ch, &ev) == 0 &&
              ev->event == RDMA_CM_EVENT_ADDR_RESOLVED,
          "addr");
    rdma_ack_cm_event(ev);
    CHECK(rdma_resolve_route(id, 2000) == 0, "resolve_route");
    CHECK(rdma_get_cm_event(ch, &ev) == 0 &&
              ev->event == RDMA_CM_EVENT_ROUTE_RESOLVED,
          "route");
    rdma_ack_cm_event(ev);

    struct rdma_conn_param param = {
        .private_data = pdata,
        .private_data_len = (uint8_t)len,
        .responder_resources = 1,
        .initiator_depth = 1,
        .retry_count = 7,
        .qp_num = RAW_QPN,
    };
    CHECK(rdma_connect(id, &param) == 0, "rdma_connect: %s", strerror(errno));
    CHECK(rdma_get_cm_event(ch, &ev) == 0, "cm event");
    a.event = ev->event;
    if (ev->param.conn.private_data) {
        a.len = ev->param.conn.private_data_len; /* u8: fits pdata */
        memcpy(a.pdata, ev->param.conn.private_data, a.len);
    }
    rdma_ack_cm_event(ev);
    if (keep) {
        *keep = id;
        *keep_ch = ch;
    } else {
        rdma_destroy_id(id);
        rdma_destroy_event_channel(ch);
    }
    return a;
}

static struct answer raw_connect(const char *port, const void *pdata,
                                 size_t len)
{
    return raw_connect_keep(port, pdata, len, NULL, NULL);
}

static void show(const char *sent, const struct answer *a,
                 const struct rcolo_rej *j)
{
    if (a->event == RDMA_CM_EVENT_REJECTED && j) {
        printf("  sent %-58s -> REJ %s\n", sent, rcolo_reject_str(j->reason));
    } else {
        printf("  sent %-58s -> %s\n", sent, rdma_event_str(a->event));
    }
}

/* Send a REQ and require a REJ with @want; returns the REJ. */
static struct rcolo_rej expect_rej(const char *port, const char *what,
                                   const void *pdata, size_t len,
                                   enum rcolo_reject_reason want)
{
    struct answer a = raw_connect(port, pdata, len);
    struct rcolo_rej j;
    int ret = rcolo_rej_decode(a.pdata, a.len, &j);

    show(what, &a, ret ? NULL : &j);
    CHECK(a.event == RDMA_CM_EVENT_REJECTED, "%s: got %s, not a reject", what,
          rdma_event_str(a.event));
    CHECK(ret == 0, "%s: the reject is not an rdma-colo REJ", what);
    CHECK(j.reason == want, "%s: reason '%s', wanted '%s'", what,
          rcolo_reject_str(j.reason), rcolo_reject_str(want));
    CHECK(j.version == RCOLO_PROTOCOL_VERSION, "%s: REJ version %u", what,
          j.version);
    cases++;
    return j;
}

/*
 * A REQ proved with @token as the QP @qpn: a control REQ over @snonce and
 * @cnonce; a data REQ over the session's @snonce and @cnonce and a
 * channel nonce of its own (in its cnonce field, as the library's).
 */
static size_t req_qp(uint8_t *buf, enum rcolo_conn_role role, uint16_t index,
                     uint16_t channels, const uint8_t *snonce,
                     const uint8_t *cnonce, const char *token,
                     enum rcolo_mac_kind kind, uint32_t qpn)
{
    static const uint8_t dnonce[RCOLO_NONCE_LEN] = {
        0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77};
    uint8_t zero[RCOLO_NONCE_LEN] = {0};
    struct rcolo_req r = {
        .version = RCOLO_PROTOCOL_VERSION,
        .role = role,
        .index = index,
        .channels = channels,
        .depth = role == RCOLO_CONN_CONTROL ? 64 : 0,
    };
    bool data = role == RCOLO_CONN_DATA;

    if (snonce) {
        memcpy(r.snonce, snonce, RCOLO_NONCE_LEN);
    }
    if (data) {
        memcpy(r.cnonce, dnonce, RCOLO_NONCE_LEN);
    } else if (cnonce) {
        memcpy(r.cnonce, cnonce, RCOLO_NONCE_LEN);
    }
    if (token) {
        struct rcolo_mac_input in = {
            .snonce = r.snonce,
            .cnonce = data ? (cnonce ? cnonce : zero) : r.cnonce,
            .conn_nonce = data ? dnonce : NULL,
            .index = r.index,
            .channels = r.channels,
            .depth = r.depth,
            .qpn = qpn,
        };
        rcolo_mac(token, kind, &in, r.mac);
    }
    return rcolo_req_encode(&r, buf, RCOLO_WIRE_REQ_LEN);
}

static size_t req(uint8_t *buf, enum rcolo_conn_role role, uint16_t index,
                  uint16_t channels, const uint8_t *snonce,
                  const uint8_t *cnonce, const char *token,
                  enum rcolo_mac_kind kind)
{
    return req_qp(buf, role, index, channels, snonce, cnonce, token, kind,
                  RAW_QPN);
}

static struct rcolo_rej challenge(const char *port)
{
    uint8_t buf[RCOLO_WIRE_REQ_LEN];
    size_t n = req(buf, RCOLO_CONN_HELLO, 0, 0, NULL, NULL, NULL, 0);

    return expect_rej(port, "HELLO", buf, n, RCOLO_REJ_CHALLENGE);
}

/* ------------------------------------------------ part 1: secondary */

static void *cache;

static struct rcolo_session *secondary(char *port, size_t size)
{
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    struct rcolo_session *s;

    uri_for(&uri, "0", TOKEN);
    CHECK(rcolo_listen(&uri, &s, &err) == 0, "listen: %s", err.message);
    cache = mmap(NULL, REGION_LEN, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(cache != MAP_FAILED, "mmap");
    CHECK(rcolo_region_add(s, 1, "ram", cache, REGION_LEN, 4096, &err) == 0,
          "region: %s", err.message);
    snprintf(port, size, "%d", rcolo_session_port(s));
    return s;
}

struct accepter {
    struct rcolo_session *s;
    struct rcolo_channel *ch[CHANNELS];
    int ret;
};

static void *accept_thread(void *opaque)
{
    struct accepter *a = opaque;
    struct rcolo_error err = {0};

    a->ret = rcolo_accept(a->s, TIMEOUT_MS, &err);
    for (unsigned i = 0; !a->ret && i < CHANNELS; i++) {
        a->ret = rcolo_channel_accept(a->s, i, TIMEOUT_MS, &a->ch[i], &err);
    }
    if (a->ret) {
        fprintf(stderr, "secondary: %s\n", err.message);
    }
    return NULL;
}

static void *control_accept_thread(void *opaque)
{
    struct accepter *a = opaque;
    struct rcolo_error err = {0};

    a->ret = rcolo_accept(a->s, TIMEOUT_MS, &err);
    if (a->ret) {
        fprintf(stderr, "secondary: %s\n", err.message);
    }
    return NULL;
}

/* Serve descriptors so that fences complete. */
static void *serve_thread(void *opaque)
{
    struct rcolo_channel *ch = opaque;

    for (;;) {
        struct rcolo_desc d;
        if (rcolo_channel_recv(ch, &d, -1) || rcolo_channel_release(ch, &d)) {
            return NULL;
        }
    }
}

static void part_secondary(void)
{
    char port[8];
    struct rcolo_session *s = secondary(port, sizeof(port));
    uint8_t buf[64], nonce[RCOLO_NONCE_LEN];
    struct rcolo_rej x, y, z;
    size_t n;

    printf("part 1: hostile primaries against a real secondary at %s:%s\n",
           addr, port);
    memset(buf, 0x5a, sizeof(buf));
    expect_rej(port, "16 bytes of garbage", buf, 16, RCOLO_REJ_BAD_MAGIC);
    expect_rej(port, "no private data", NULL, 0, RCOLO_REJ_BAD_MAGIC);
    n = req(buf, RCOLO_CONN_CONTROL, 0, CHANNELS, NULL, NULL, TOKEN,
            RCOLO_MAC_CONTROL_REQ);
    buf[4] = 1;
    expect_rej(port, "a version 1 control REQ (40 bytes)", buf, 40,
               RCOLO_REJ_BAD_VERSION);
    buf[4] = RCOLO_PROTOCOL_VERSION;
    buf[5] = 9;
    expect_rej(port, "role 9", buf, n, RCOLO_REJ_BAD_ROLE);
    memset(nonce, 0x42, sizeof(nonce));
    n = req(buf, RCOLO_CONN_CONTROL, 0, CHANNELS, nonce, nonce, TOKEN,
            RCOLO_MAC_CONTROL_REQ);
    expect_rej(port, "CONTROL answering a challenge never issued", buf, n,
               RCOLO_REJ_BAD_NONCE);

    x = challenge(port);
    y = challenge(port);
    CHECK(memcmp(x.snonce, y.snonce, RCOLO_NONCE_LEN),
          "two HELLOs got the same challenge");
    n = req(buf, RCOLO_CONN_CONTROL, 0, CHANNELS, x.snonce, nonce, "guess",
            RCOLO_MAC_CONTROL_REQ);
    expect_rej(port, "CONTROL(challenge 1) proved with another token", buf, n,
               RCOLO_REJ_BAD_TOKEN);
    /* A wrong proof uses nothing up (it costs its address a HELLO): the
     * challenge may be answered again until it expires or is answered
     * right. */
    n = req(buf, RCOLO_CONN_CONTROL, 0, CHANNELS, x.snonce, nonce, "guess2",
            RCOLO_MAC_CONTROL_REQ);
    expect_rej(port, "CONTROL(challenge 1 again) with a third token", buf, n,
               RCOLO_REJ_BAD_TOKEN);
    /* A challenge of the right shape made with another key. */
    uint8_t forged[RCOLO_NONCE_LEN], otherkey[RCOLO_CHALLENGE_KEY_LEN];
    memset(otherkey, 0x33, sizeof(otherkey));
    memcpy(forged, x.snonce, 6); /* its expiry and serial */
    rcolo_challenge_make(otherkey,
                         ((uint32_t)x.snonce[0] << 24) |
                             ((uint32_t)x.snonce[1] << 16) |
                             ((uint32_t)x.snonce[2] << 8) | x.snonce[3],
                         (uint16_t)(x.snonce[4] << 8 | x.snonce[5]), forged);
    n = req(buf, RCOLO_CONN_CONTROL, 0, CHANNELS, forged, nonce, TOKEN,
            RCOLO_MAC_CONTROL_REQ);
    expect_rej(port,
               "CONTROL answering challenge 1 re-signed with another "
               "key",
               buf, n, RCOLO_REJ_BAD_NONCE);
    n = req(buf, RCOLO_CONN_CONTROL, 0, CHANNELS, y.snonce, nonce, TOKEN,
            RCOLO_MAC_CONTROL_REQ);
    buf[9] = CHANNELS + 1; /* channels, after the proof was made */
    expect_rej(port, "CONTROL(challenge 2), channels changed after proof", buf,
               n, RCOLO_REJ_BAD_TOKEN);
    z = challenge(port);
    n = req(buf, RCOLO_CONN_CONTROL, 0, 0, z.snonce, nonce, TOKEN,
            RCOLO_MAC_CONTROL_REQ);
    expect_rej(port, "CONTROL(challenge 3) asking for 0 channels", buf, n,
               RCOLO_REJ_BAD_PARAMS);
    n = req(buf, RCOLO_CONN_DATA, 0, 0, z.snonce, nonce, TOKEN,
            RCOLO_MAC_DATA_REQ);
    expect_rej(port, "DATA 0 before any control connection", buf, n,
               RCOLO_REJ_BAD_NONCE);
    CHECK(rcolo_session_status(s) == 0, "secondary failed: %s",
          rcolo_session_error(s));
    printf("  the secondary is still listening, unharmed\n");

    /* The real primary. */
    struct accepter acc = {.s = s};
    pthread_t t;
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    struct rcolo_session *p;
    struct rcolo_channel *pch[CHANNELS];

    pthread_create(&t, NULL, accept_thread, &acc);
    uri_for(&uri, port, TOKEN);
    CHECK(rcolo_connect(&uri, TIMEOUT_MS, &p, &err) == 0, "connect: %s",
          err.message);
    for (unsigned i = 0; i < CHANNELS; i++) {
        CHECK(rcolo_channel_connect(p, i, TIMEOUT_MS, &pch[i], &err) == 0,
              "channel %u: %s", i, err.message);
    }
    pthread_join(t, NULL);
    CHECK(acc.ret == 0, "secondary accept failed");
    pthread_t serve[CHANNELS];
    for (unsigned i = 0; i < CHANNELS; i++) {
        pthread_create(&serve[i], NULL, serve_thread, acc.ch[i]);
    }
    CHECK(rcolo_fence(p, TIMEOUT_MS) == 0, "fence: %s", rcolo_session_error(p));
    printf("  a real primary connected after all that and fenced\n");
    /* No QP of either side takes an RDMA READ or atomic (responder
     * resources 0), nor issues one: the MRs are not the only guard. */
    struct ibv_qp *qps[2 * (CHANNELS + 1)];
    unsigned nqp = 0;
    qps[nqp++] = s->ctl.id->qp;
    qps[nqp++] = p->ctl.id->qp;
    for (unsigned i = 0; i < CHANNELS; i++) {
        qps[nqp++] = acc.ch[i]->id->qp;
        qps[nqp++] = pch[i]->id->qp;
    }
    for (unsigned i = 0; i < nqp; i++) {
        struct ibv_qp_attr a;
        struct ibv_qp_init_attr ia;
        CHECK(ibv_query_qp(qps[i], &a,
                           IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MAX_QP_RD_ATOMIC,
                           &ia) == 0,
              "ibv_query_qp");
        CHECK(a.max_dest_rd_atomic == 0 && a.max_rd_atomic == 0,
              "QP %u of the %s: max_dest_rd_atomic %u, max_rd_atomic %u", i,
              i % 2 ? "primary" : "secondary", a.max_dest_rd_atomic,
              a.max_rd_atomic);
    }
    printf("  its %u QPs and the secondary's grant no RDMA READ or atomic "
           "(max_dest_rd_atomic 0) and issue none (max_rd_atomic 0)\n",
           nqp / 2);

    n = req(buf, RCOLO_CONN_HELLO, 0, 0, NULL, NULL, NULL, 0);
    expect_rej(port, "HELLO while a primary is connected", buf, n,
               RCOLO_REJ_BUSY);
    /* What an eavesdropper saw: the real control REQ, replayed. */
    n = req(buf, RCOLO_CONN_CONTROL, 0, CHANNELS, s->snonce, s->cnonce, TOKEN,
            RCOLO_MAC_CONTROL_REQ);
    expect_rej(port, "replay of the real primary's control REQ", buf, n,
               RCOLO_REJ_BAD_NONCE);
    n = req(buf, RCOLO_CONN_DATA, 0, 0, s->snonce, s->cnonce, TOKEN,
            RCOLO_MAC_DATA_REQ);
    expect_rej(port, "DATA 0 of this session, right proof (index taken)", buf,
               n, RCOLO_REJ_BAD_CHANNEL);
    /* What a replay from another QP is: a proof made for another QP. */
    n = req_qp(buf, RCOLO_CONN_DATA, 1, 0, s->snonce, s->cnonce, TOKEN,
               RCOLO_MAC_DATA_REQ, RAW_QPN + 1);
    expect_rej(port, "DATA 1 proved for another QP (a replay)", buf, n,
               RCOLO_REJ_BAD_TOKEN);
    n = req(buf, RCOLO_CONN_DATA, CHANNELS, 0, s->snonce, s->cnonce, TOKEN,
            RCOLO_MAC_DATA_REQ);
    expect_rej(port, "DATA index = channels, right proof", buf, n,
               RCOLO_REJ_BAD_CHANNEL);
    n = req(buf, RCOLO_CONN_DATA, CHANNELS, 0, s->snonce, s->cnonce, "guess",
            RCOLO_MAC_DATA_REQ);
    expect_rej(port, "DATA of this session proved with another token", buf, n,
               RCOLO_REJ_BAD_TOKEN);
    n = req(buf, RCOLO_CONN_DATA, 1, 0, s->snonce, nonce, TOKEN,
            RCOLO_MAC_DATA_REQ);
    expect_rej(port, "DATA proved with another primary nonce", buf, n,
               RCOLO_REJ_BAD_TOKEN);
    n = req(buf, RCOLO_CONN_DATA, 1, 0, nonce, s->cnonce, TOKEN,
            RCOLO_MAC_DATA_REQ);
    expect_rej(port, "DATA of another session (its challenge)", buf, n,
               RCOLO_REJ_BAD_NONCE);

    CHECK(rcolo_fence(p, TIMEOUT_MS) == 0, "fence after the attacks: %s",
          rcolo_session_error(p));
    CHECK(rcolo_session_status(s) == 0 && rcolo_session_status(p) == 0,
          "a session failed: %s / %s", rcolo_session_error(s),
          rcolo_session_error(p));
    printf("  the real session fenced again, both sides healthy\n");
    rcolo_session_shutdown(s);
    for (unsigned i = 0; i < CHANNELS; i++) {
        pthread_join(serve[i], NULL);
    }
    rcolo_session_destroy(p);
    rcolo_session_destroy(s);
    munmap(cache, REGION_LEN);
}

/*
 * A primary that proves the token and then stops before completing the
 * connection (its RTU comes from its process): the secondary must not wait
 * forever; it fails after its timeout= (2000 ms here) and says why.
 */
/* The secondary gave up on a connection the primary never completed, with
 * -ETIMEDOUT naming @want, after its timeout=2000 (since @t0). */
static void expect_gave_up(int ret, const struct rcolo_error *err,
                           const char *want, double t0)
{
    double dt = now_s() - t0;

    printf("  the secondary gave up after %.2f s: %d (%s)\n", dt, ret,
           err->message);
    CHECK(ret == -ETIMEDOUT && strstr(err->message, want),
          "accept returned %d (%s)", ret, err->message);
    CHECK(dt > 1.0 && dt < 10.0, "gave up after %.2f s, timeout=2000", dt);
    cases++;
}

static void part_stalled_handshake(void)
{
    char port[8];
    struct rcolo_session *s;
    uint8_t buf[64], nonce[RCOLO_NONCE_LEN];
    struct rcolo_error err = {0};
    struct rdma_cm_id *id;
    struct rdma_event_channel *ch;
    struct rcolo_rej x;
    size_t n;

    printf("part 3: a primary that stops in the middle of the handshake\n");
    uri_timeout_ms = 2000;
    s = secondary(port, sizeof(port));
    uri_timeout_ms = RCOLO_DEFAULT_TIMEOUT_MS;
    x = challenge(port);
    memset(nonce, 0x33, sizeof(nonce));
    n = req(buf, RCOLO_CONN_CONTROL, 0, CHANNELS, x.snonce, nonce, TOKEN,
            RCOLO_MAC_CONTROL_REQ);
    struct answer a = raw_connect_keep(port, buf, n, &id, &ch);
    printf("  sent %-58s -> %s, and no RTU\n",
           "CONTROL(challenge) with the right proof", rdma_event_str(a.event));
    CHECK(a.event == RDMA_CM_EVENT_CONNECT_RESPONSE,
          "the secondary did not accept a correct proof: %s",
          rdma_event_str(a.event));
    double t0 = now_s();
    int ret = rcolo_accept(s, 20000, &err);
    expect_gave_up(ret, &err, "did not complete", t0);
    rcolo_session_destroy(s);
    munmap(cache, REGION_LEN);
    rdma_destroy_id(id);
    rdma_destroy_event_channel(ch);

    /* The same for a data channel: a real primary connects the control
     * connection and channel 0; channel 1's REQ, proved, never completes. */
    uri_timeout_ms = 2000;
    s = secondary(port, sizeof(port));
    uri_timeout_ms = RCOLO_DEFAULT_TIMEOUT_MS;
    struct accepter acc = {.s = s};
    pthread_t t;
    struct rcolo_uri uri;
    struct rcolo_session *p;
    struct rcolo_channel *pch0, *sch;

    pthread_create(&t, NULL, control_accept_thread, &acc);
    uri_for(&uri, port, TOKEN);
    CHECK(rcolo_connect(&uri, TIMEOUT_MS, &p, &err) == 0, "connect: %s",
          err.message);
    pthread_join(t, NULL);
    CHECK(acc.ret == 0, "secondary accept failed");
    CHECK(rcolo_channel_connect(p, 0, TIMEOUT_MS, &pch0, &err) == 0,
          "channel 0: %s", err.message);
    CHECK(rcolo_channel_accept(s, 0, TIMEOUT_MS, &sch, &err) == 0,
          "accept of channel 0: %s", err.message);
    n = req(buf, RCOLO_CONN_DATA, 1, 0, s->snonce, s->cnonce, TOKEN,
            RCOLO_MAC_DATA_REQ);
    a = raw_connect_keep(port, buf, n, &id, &ch);
    printf("  sent %-58s -> %s, and no RTU\n",
           "DATA 1 of the session with the right proof",
           rdma_event_str(a.event));
    CHECK(a.event == RDMA_CM_EVENT_CONNECT_RESPONSE,
          "the secondary did not accept a proved data channel: %s",
          rdma_event_str(a.event));
    t0 = now_s();
    ret = rcolo_channel_accept(s, 1, 20000, &sch, &err);
    expect_gave_up(ret, &err, "data channel 1", t0);
    rcolo_session_destroy(p);
    rcolo_session_destroy(s);
    munmap(cache, REGION_LEN);
    rdma_destroy_id(id);
    rdma_destroy_event_channel(ch);
}

/* ------------------------------------------------ part 2: primary */

enum fake_mode {
    FAKE_ACCEPT_HELLO, /* accepts the HELLO (a listener that is not ours) */
    FAKE_WRONG_PROOF,  /* challenges, then accepts with another token's MAC */
    FAKE_NEWER,        /* speaks the next protocol version: refuses ours */
    FAKE_MODES,
};

struct fake {
    enum fake_mode mode;
    struct rdma_event_channel *ch;
    struct rdma_cm_id *listen;
    int port;
    unsigned requests;
};

static void *fake_thread(void *opaque)
{
    struct fake *f = opaque;
    uint8_t snonce[RCOLO_NONCE_LEN];
    struct rdma_cm_event *ev;

    memset(snonce, 0x77, sizeof(snonce));
    while (rdma_get_cm_event(f->ch, &ev) == 0) {
        struct rdma_cm_id *id = ev->id;
        struct rcolo_req r;
        uint8_t out[64];
        size_t n;

        if (ev->event != RDMA_CM_EVENT_CONNECT_REQUEST) {
            rdma_ack_cm_event(ev);
            if (id != f->listen) {
                rdma_destroy_id(id);
            }
            continue;
        }
        f->requests++;
        rcolo_req_decode(ev->param.conn.private_data,
                         ev->param.conn.private_data_len, &r);
        struct rdma_conn_param param = {
            .responder_resources = 1,
            .initiator_depth = 1,
            .qp_num = 0x12345,
            .private_data = out,
        };
        struct rcolo_rep rep = {.channels = CHANNELS, .depth = 64};
        if (f->mode == FAKE_NEWER) {
            /* A REJ of ours, with the refuser's version (byte 4) one up. */
            n = rcolo_rej_encode(RCOLO_REJ_BAD_VERSION, NULL, out, sizeof(out));
            out[4] = RCOLO_PROTOCOL_VERSION + 1;
            rdma_reject(id, out, (uint8_t)n);
            rdma_ack_cm_event(ev);
            rdma_destroy_id(id);
            continue;
        }
        if (f->mode == FAKE_WRONG_PROOF && r.role == RCOLO_CONN_HELLO) {
            n = rcolo_rej_encode(RCOLO_REJ_CHALLENGE, snonce, out, sizeof(out));
            rdma_reject(id, out, (uint8_t)n);
            rdma_ack_cm_event(ev);
            rdma_destroy_id(id);
            continue;
        }
        if (f->mode == FAKE_WRONG_PROOF) {
            struct rcolo_mac_input in = {.snonce = r.snonce,
                                         .cnonce = r.cnonce,
                                         .channels = rep.channels,
                                         .depth = rep.depth,
                                         .qpn = 0x12345};
            rcolo_mac("not-the-token", RCOLO_MAC_CONTROL_REP, &in, rep.mac);
        }
        param.private_data_len =
            (uint8_t)rcolo_rep_encode(&rep, out, sizeof(out));
        rdma_accept(id, &param);
        rdma_ack_cm_event(ev);
    }
    return NULL;
}

static void fake_case(enum fake_mode mode, int want_ret, const char *want,
                      const char *what)
{
    /* Static: its thread outlives this call (it blocks in
     * rdma_get_cm_event until the process exits). */
    static struct fake fakes[FAKE_MODES];
    struct fake *f = &fakes[mode];

    *f = (struct fake){.mode = mode};
    struct rdma_addrinfo hints = {.ai_port_space = RDMA_PS_TCP,
                                  .ai_flags = RAI_PASSIVE},
                         *ai;
    pthread_t t;
    char port[8];
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    struct rcolo_session *p = NULL;

    f->ch = rdma_create_event_channel();
    CHECK(f->ch && rdma_create_id(f->ch, &f->listen, NULL, RDMA_PS_TCP) == 0,
          "fake: create");
    CHECK(rdma_getaddrinfo(addr, "0", &hints, &ai) == 0, "fake: addrinfo");
    CHECK(rdma_bind_addr(f->listen, ai->ai_src_addr) == 0, "fake: bind");
    rdma_freeaddrinfo(ai);
    CHECK(rdma_listen(f->listen, 8) == 0, "fake: listen");
    snprintf(port, sizeof(port), "%u", be16toh(rdma_get_src_port(f->listen)));
    pthread_create(&t, NULL, fake_thread, f);

    uri_for(&uri, port, TOKEN);
    int ret = rcolo_connect(&uri, 10000, &p, &err);
    printf("  %-54s -> %d: %s\n", what, ret, err.message);
    CHECK(ret == want_ret && p == NULL && strstr(err.message, want),
          "%s: connect returned %d (%s), wanted %d with '%s'", what, ret,
          err.message, want_ret, want);
    cases++;
    /* The fake's thread blocks in rdma_get_cm_event: leave it to exit(). */
}

static void part_primary(void)
{
    printf("part 2: a real primary against fake secondaries\n");
    fake_case(FAKE_ACCEPT_HELLO, -EPROTO, "asked for a challenge",
              "a listener that accepts HELLO");
    fake_case(FAKE_WRONG_PROOF, -EACCES, "did not prove the session token",
              "a secondary proving another token");
    char newer[64];
    snprintf(newer, sizeof(newer), "protocol version mismatch (it speaks %u",
             RCOLO_PROTOCOL_VERSION + 1);
    fake_case(FAKE_NEWER, -ECONNREFUSED, newer,
              "a secondary of the next protocol version");
}

/* ------------------------------------------------------- flood */

/*
 * test-handshake flood (pair topology): a flood of HELLOs from another
 * process, on the secondary's own node (another source address than the
 * primary's), before, while and after a real primary connects.  The
 * secondary hands out stateless challenges and limits HELLOs per source
 * address: the flood can neither evict the primary's challenge nor take
 * its turn, and the primary connects, opens its channels and fences.
 */
#define FLOOD_THREADS 4
#define FLOOD_MIN     1000

struct flood_counts {
    volatile int go, stop;
    char port[8];
    unsigned long sent, challenged, slowed, other;
};
static struct flood_counts *flood;

/* One HELLO from @src to addr:port; the REJ's reason (0: no REJ). */
static int flood_hello(const char *src, const char *port)
{
    struct rdma_event_channel *ch = rdma_create_event_channel();
    struct rdma_addrinfo hints = {.ai_port_space = RDMA_PS_TCP}, *ai, *sai;
    struct rdma_cm_id *id;
    struct rdma_cm_event *ev;
    uint8_t buf[64];
    size_t n = req(buf, RCOLO_CONN_HELLO, 0, 0, NULL, NULL, NULL, 0);
    int reason = 0;

    CHECK(ch && rdma_create_id(ch, &id, NULL, RDMA_PS_TCP) == 0, "flood: id");
    CHECK(rdma_getaddrinfo(addr, port, &hints, &ai) == 0 &&
              rdma_getaddrinfo(src, NULL, &hints, &sai) == 0,
          "flood: getaddrinfo");
    CHECK(rdma_resolve_addr(id, sai->ai_dst_addr, ai->ai_dst_addr, 2000) == 0,
          "flood: resolve_addr");
    rdma_freeaddrinfo(ai);
    rdma_freeaddrinfo(sai);
    if (rdma_get_cm_event(ch, &ev) == 0) {
        bool ok = ev->event == RDMA_CM_EVENT_ADDR_RESOLVED;
        rdma_ack_cm_event(ev);
        if (ok && rdma_resolve_route(id, 2000) == 0 &&
            rdma_get_cm_event(ch, &ev) == 0) {
            ok = ev->event == RDMA_CM_EVENT_ROUTE_RESOLVED;
            rdma_ack_cm_event(ev);
            struct rdma_conn_param param = {
                .private_data = buf,
                .private_data_len = (uint8_t)n,
                .qp_num = 0xf100d,
            };
            if (ok && rdma_connect(id, &param) == 0 &&
                rdma_get_cm_event(ch, &ev) == 0) {
                struct rcolo_rej j;
                if (ev->event == RDMA_CM_EVENT_REJECTED &&
                    rcolo_rej_decode(ev->param.conn.private_data,
                                     ev->param.conn.private_data_len,
                                     &j) == 0) {
                    reason = j.reason;
                }
                rdma_ack_cm_event(ev);
            }
        }
    }
    rdma_destroy_id(id);
    rdma_destroy_event_channel(ch);
    return reason;
}

static void *flood_thread(void *arg)
{
    const char *src = arg;

    while (!flood->stop) {
        int r = flood_hello(src, flood->port);
        __atomic_add_fetch(&flood->sent, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(r == RCOLO_REJ_CHALLENGE   ? &flood->challenged
                           : r == RCOLO_REJ_SLOW_DOWN ? &flood->slowed
                                                      : &flood->other,
                           1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static unsigned long flood_sent(void)
{
    return __atomic_load_n(&flood->sent, __ATOMIC_RELAXED);
}

static int test_flood(void)
{
    const char *topo = getenv("RDMA_COLO_TOPOLOGY");
    const char *src = getenv("RDMA_COLO_TEST_PEER_ADDR");

    CHECK(topo && !strcmp(topo, "pair") && src,
          "needs the pair topology (the flood comes from the secondary's "
          "node, the primary from the other): scripts/with-rxe --topology "
          "pair");
    flood = mmap(NULL, sizeof(*flood), PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(flood != MAP_FAILED, "mmap");
    /* The flooder is forked before this process opens a device. */
    pid_t flooder = fork();
    CHECK(flooder >= 0, "fork");
    if (flooder == 0) {
        pthread_t t[FLOOD_THREADS];

        check_side = "flooder";
        alarm(200);
        while (!flood->go) {
            usleep(1000);
        }
        for (unsigned i = 0; i < FLOOD_THREADS; i++) {
            pthread_create(&t[i], NULL, flood_thread, (void *)src);
        }
        for (unsigned i = 0; i < FLOOD_THREADS; i++) {
            pthread_join(t[i], NULL);
        }
        _exit(0);
    }

    char port[8];
    struct rcolo_session *s = secondary(port, sizeof(port));
    struct accepter acc = {.s = s};
    pthread_t t;
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    struct rcolo_session *p;
    struct rcolo_channel *pch[CHANNELS];
    struct rcolo_session_stats ps, ss;

    snprintf(flood->port, sizeof(flood->port), "%s", port);
    flood->go = 1;
    double t0 = now_s();
    /* FLOOD_MIN HELLOs before the primary starts, and on until it has
     * fenced. */
    while (flood_sent() < FLOOD_MIN) {
        CHECK(now_s() - t0 < 60, "the flood sent only %lu HELLOs in 60 s",
              flood_sent());
        usleep(10000);
    }
    unsigned long before = flood_sent();
    double t1 = now_s();
    pthread_create(&t, NULL, accept_thread, &acc);
    uri_for(&uri, port, TOKEN);
    CHECK(rcolo_connect(&uri, TIMEOUT_MS, &p, &err) == 0,
          "connect under the flood: %s", err.message);
    for (unsigned i = 0; i < CHANNELS; i++) {
        CHECK(rcolo_channel_connect(p, i, TIMEOUT_MS, &pch[i], &err) == 0,
              "channel %u: %s", i, err.message);
    }
    double connected = now_s() - t1;
    unsigned long during = flood_sent() - before;
    pthread_join(t, NULL);
    CHECK(acc.ret == 0, "secondary accept failed");
    pthread_t serve[CHANNELS];
    for (unsigned i = 0; i < CHANNELS; i++) {
        pthread_create(&serve[i], NULL, serve_thread, acc.ch[i]);
    }
    CHECK(rcolo_fence(p, TIMEOUT_MS) == 0, "fence: %s", rcolo_session_error(p));
    flood->stop = 1;
    int st;
    CHECK(waitpid(flooder, &st, 0) == flooder && WIFEXITED(st) &&
              WEXITSTATUS(st) == 0,
          "flooder failed (status 0x%x)", st);
    CHECK(rcolo_fence(p, TIMEOUT_MS) == 0, "fence after the flood: %s",
          rcolo_session_error(p));
    rcolo_session_get_stats(p, &ps);
    rcolo_session_get_stats(s, &ss);
    printf("test-handshake flood: %lu HELLOs from %s (%d threads) in %.1f s, "
           "%lu of them while the primary connected (the rest before it "
           "started): %lu answered with a "
           "challenge, %lu with SLOW_DOWN, %lu otherwise (BUSY once a primary "
           "is connected); the secondary handed out %" PRIu64
           " challenges and slowed %" PRIu64 " HELLOs down\n",
           flood_sent(), src, FLOOD_THREADS, now_s() - t0, during,
           flood->challenged, flood->slowed, flood->other, ss.challenges_issued,
           ss.hellos_slowed);
    printf("test-handshake flood: the primary from %s connected its control "
           "connection and %d channels in %.2f s under the flood (%" PRIu64
           " retries) and fenced before and after it\n",
           getenv("RDMA_COLO_TEST_ADDR"), CHANNELS, connected,
           ps.connect_retries);
    CHECK(ss.hellos_slowed > 0, "the flood was never slowed down");
    rcolo_session_destroy(p);
    rcolo_session_destroy(s);
    return 0;
}

int main(int argc, char **argv)
{
    check_prog = "test-handshake";
    /* The secondaries (real and fake) on the other node on the pair
     * topology; the hostile clients connect to them from this one. */
    addr = peer_addr();
    CHECK(addr, "RDMA_COLO_TEST_ADDR not set: run under scripts/with-rxe");
    alarm(300);
    if (argc == 2 && !strcmp(argv[1], "flood")) {
        check_prog = "test-handshake flood";
        return test_flood();
    }
    CHECK(argc == 1, "usage: test-handshake [flood]");
    part_secondary();
    part_stalled_handshake();
    part_primary();
    printf("test-handshake: %u hostile or probing handshakes answered as "
           "expected; no unauthenticated peer got a connection, a region table "
           "or guest memory, and the real session was unharmed\n",
           cases);
    return 0;
}
