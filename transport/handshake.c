/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The connection handshake (docs/protocol.md, "Handshake"): everything
 * between a CM connect request and an authenticated connection.
 *
 * Secondary: hand out single-use challenges, check a REQ (nothing is
 * allocated before the peer proved the token), accept with a proof of its
 * own or reject with a reason (rcolo_handshake_request, run by the session
 * thread for every connect request); rcolo_channel_accept.
 *
 * Primary: ask for a challenge, connect the control connection and check
 * the secondary's proof (rcolo_handshake_connect); rcolo_channel_connect.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "internal.h"

/*
 * Connection parameters of every connection, both sides.  Retries:
 * retry-count= for transport errors (default 6: rxe retries forever with
 * 7), 6 for RNR (7 would retry forever).
 */
static struct rdma_conn_param conn_param(const struct rcolo_session *s,
                                         const void *pdata, size_t len)
{
    return (struct rdma_conn_param){
        .private_data = pdata,
        .private_data_len = (uint8_t)len,
        /* No RDMA READ or atomic either way: the secondary's memory is
         * written to, never read (its MRs grant no remote read either),
         * and the primary never reads. */
        .responder_resources = 0,
        .initiator_depth = 0,
        .retry_count =
            (uint8_t)(s->uri.retry_count ? s->uri.retry_count
                                         : RCOLO_DEFAULT_RETRY_COUNT),
        .rnr_retry_count = 6,
    };
}

/* ------------------------------------------------ secondary: requests */

static int random_bytes(uint8_t *out, size_t len)
{
    ssize_t n;

    do {
        n = getrandom(out, len, 0);
    } while (n < 0 && errno == EINTR);
    return n == (ssize_t)len ? 0 : -(n < 0 ? errno : EIO);
}

/* Milliseconds since the challenges' epoch (a u32 that wraps after 49
 * days: expiries are compared as signed differences). */
static uint32_t challenge_clock(const struct rcolo_challenges *c)
{
    return (uint32_t)((rcolo_now_ns() - c->epoch) / 1000000);
}

/*
 * A HELLO from @peer may have a challenge: a token of its address's bucket
 * (RCOLO_HELLO_BURST at once, RCOLO_HELLO_RATE a second after that).
 * Addresses are hashed onto the buckets; two that share one share its rate.
 */
static bool hello_allowed(struct rcolo_session *s, const struct sockaddr *peer)
{
    struct rcolo_challenges *c = &s->chal;
    const uint8_t *a = NULL;
    size_t len = 0;
    uint32_t h = 2166136261u;

    if (peer && peer->sa_family == AF_INET) {
        a = (const uint8_t *)&((const struct sockaddr_in *)peer)->sin_addr;
        len = 4;
    } else if (peer && peer->sa_family == AF_INET6) {
        a = (const uint8_t *)&((const struct sockaddr_in6 *)peer)->sin6_addr;
        len = 16;
    }
    for (size_t i = 0; i < len; i++) {
        h = (h ^ a[i]) * 16777619u;
    }
    struct rcolo_hello_bucket *b = &c->bucket[h % RCOLO_HELLO_BUCKETS];
    int64_t now = rcolo_now_ns();
    double tokens =
        b->stamp ? b->tokens + (double)(now - b->stamp) * RCOLO_HELLO_RATE / 1e9
                 : RCOLO_HELLO_BURST;

    b->tokens = tokens > RCOLO_HELLO_BURST ? RCOLO_HELLO_BURST : tokens;
    b->stamp = now;
    if (b->tokens < 1) {
        c->slowed++;
        return false;
    }
    b->tokens -= 1;
    return true;
}

/* HELLO: a challenge (wire.h), nothing stored.  The serial tells apart
 * challenges of the same millisecond (65536 of them). */
static int issue_challenge(struct rcolo_session *s,
                           uint8_t snonce[RCOLO_NONCE_LEN])
{
    struct rcolo_challenges *c = &s->chal;

    if (!c->ready) {
        int ret = random_bytes(c->key, sizeof(c->key));

        if (ret) {
            return ret;
        }
        c->epoch = rcolo_now_ns();
        c->ready = true;
    }
    c->issued++;
    rcolo_challenge_make(c->key,
                         challenge_clock(c) + (uint32_t)s->core.timeout_ms,
                         (uint16_t)c->issued, snonce);
    return 0;
}

/* @snonce is a challenge of ours, not expired and not answered yet. */
static bool challenge_fresh(struct rcolo_session *s,
                            const uint8_t snonce[RCOLO_NONCE_LEN])
{
    struct rcolo_challenges *c = &s->chal;
    uint32_t expiry;

    if (!c->ready || !rcolo_challenge_check(c->key, snonce, &expiry)) {
        return false;
    }
    int32_t left = (int32_t)(expiry - challenge_clock(c));
    if (left < 0 || left > s->core.timeout_ms) {
        return false;
    }
    for (unsigned i = 0; i < RCOLO_USED_CHALLENGES; i++) {
        if (c->used[i].set &&
            !memcmp(c->used[i].nonce, snonce, RCOLO_NONCE_LEN)) {
            return false;
        }
    }
    return true;
}

/* @snonce was answered with a valid proof: it is used (single use).  Only
 * a primary that proved the token gets here, so no flood fills this. */
static void challenge_used(struct rcolo_session *s,
                           const uint8_t snonce[RCOLO_NONCE_LEN])
{
    struct rcolo_challenges *c = &s->chal;
    struct rcolo_used_challenge *u =
        &c->used[c->next_used++ % RCOLO_USED_CHALLENGES];

    memcpy(u->nonce, snonce, RCOLO_NONCE_LEN);
    u->set = true;
}

/*
 * The REQ's proof, over what it names and the QP number its CM request
 * carried (@qpn): a control REQ's nonces are its own; a data REQ's are
 * the session's and the channel's own nonce (its cnonce field).
 */
static bool mac_ok(struct rcolo_session *s, enum rcolo_mac_kind kind,
                   const struct rcolo_req *req, uint32_t qpn)
{
    uint8_t want[RCOLO_MAC_LEN];
    bool data = kind == RCOLO_MAC_DATA_REQ;
    struct rcolo_mac_input in = {
        .snonce = req->snonce,
        .cnonce = data ? s->cnonce : req->cnonce,
        .conn_nonce = data ? req->cnonce : NULL,
        .index = req->index,
        .channels = req->channels,
        .depth = req->depth,
        .qpn = qpn,
    };

    rcolo_mac(s->uri.token, kind, &in, want);
    bool ok = rcolo_mac_equal(want, req->mac);
    explicit_bzero(want, sizeof(want));
    return ok;
}

/*
 * Nothing is allocated and no state changes before the peer proved the
 * token; a challenge is used up only by a valid proof.
 */
static enum rcolo_reject_reason check_request(struct rcolo_session *s,
                                              struct rdma_cm_id *id,
                                              const struct rcolo_req *req,
                                              uint32_t qpn)
{
    switch (req->role) {
    case RCOLO_CONN_HELLO:
        if (s->ctl.id || s->state != RCOLO_SESSION_LISTENING) {
            return RCOLO_REJ_BUSY;
        }
        return hello_allowed(s, rdma_get_peer_addr(id)) ? RCOLO_REJ_CHALLENGE
                                                        : RCOLO_REJ_SLOW_DOWN;
    case RCOLO_CONN_CONTROL:
        if (!challenge_fresh(s, req->snonce)) {
            return RCOLO_REJ_BAD_NONCE;
        }
        if (!mac_ok(s, RCOLO_MAC_CONTROL_REQ, req, qpn)) {
            /* A wrong proof costs its address a HELLO: guesses at the
             * token are limited as challenges are. */
            hello_allowed(s, rdma_get_peer_addr(id));
            return RCOLO_REJ_BAD_TOKEN;
        }
        if (s->ctl.id || s->state != RCOLO_SESSION_LISTENING) {
            return RCOLO_REJ_BUSY;
        }
        challenge_used(s, req->snonce);
        return RCOLO_REJ_NONE;
    case RCOLO_CONN_DATA:
        /* A channel of this session: its snonce; the proof covers the
         * session's cnonce, the channel's own nonce and its QP. */
        if (s->state != RCOLO_SESSION_READY ||
            memcmp(req->snonce, s->snonce, RCOLO_NONCE_LEN)) {
            return RCOLO_REJ_BAD_NONCE;
        }
        if (!mac_ok(s, RCOLO_MAC_DATA_REQ, req, qpn)) {
            return RCOLO_REJ_BAD_TOKEN;
        }
        if (req->index >= s->channels || s->chan[req->index]) {
            return RCOLO_REJ_BAD_CHANNEL;
        }
        return RCOLO_REJ_NONE;
    }
    return RCOLO_REJ_BAD_ROLE;
}

/* Returns an id to destroy once the event is acked, or NULL. */
struct rdma_cm_id *rcolo_handshake_request(struct rcolo_session *s,
                                           struct rdma_cm_event *ev)
{
    struct rdma_cm_id *id = ev->id;
    struct rcolo_req req;
    struct rcolo_error err = {0};
    uint8_t pdata[RCOLO_WIRE_REJ_LEN > RCOLO_WIRE_REP_LEN ? RCOLO_WIRE_REJ_LEN
                                                          : RCOLO_WIRE_REP_LEN];
    uint8_t challenge[RCOLO_NONCE_LEN];
    enum rcolo_reject_reason why;
    struct rcolo_channel *ch = NULL;

    why = rcolo_req_decode(ev->param.conn.private_data,
                           ev->param.conn.private_data_len, &req);
    if (why == RCOLO_REJ_NONE) {
        why = check_request(s, id, &req, ev->param.conn.qp_num);
    }
    if (why == RCOLO_REJ_NONE &&
        (rcolo_path_check_id(&s->uri, RCOLO_SECONDARY, id,
                             "a connection to this secondary", &err) ||
         rcolo_regions_attach(s, id->verbs, &err) ||
         rcolo_cm_tune(id, s->uri.ack_timeout, &err))) {
        why = RCOLO_REJ_NO_RESOURCES;
    }
    if (why == RCOLO_REJ_NONE) {
        if (req.role == RCOLO_CONN_CONTROL) {
            s->channels = req.channels;
            s->depth = req.depth < s->depth ? req.depth : s->depth;
            if (rcolo_ctl_setup(s, id, &err)) {
                why = RCOLO_REJ_NO_RESOURCES;
                /* The id is destroyed below, after the ack. */
                rcolo_qp_destroy(id, &s->ctl.res);
                s->ctl.id = NULL;
                rcolo_ctl_teardown(s);
            } else {
                memcpy(s->snonce, req.snonce, RCOLO_NONCE_LEN);
                memcpy(s->cnonce, req.cnonce, RCOLO_NONCE_LEN);
            }
        } else {
            ch = rcolo_channel_new(s, req.index);
            ch->id = id;
            if (rcolo_channel_setup(ch, &err)) {
                why = RCOLO_REJ_NO_RESOURCES;
                ch->id = NULL; /* destroyed below, after the ack */
                rcolo_qp_destroy(id, &ch->res);
                rcolo_channel_free(ch);
                ch = NULL;
            }
        }
    }

    if (why == RCOLO_REJ_CHALLENGE) {
        int ret = issue_challenge(s, challenge);
        if (ret) {
            why = RCOLO_REJ_NO_RESOURCES;
            rcolo_set_error(&err, ret, "no random nonce: %s", strerror(-ret));
        }
    }
    if (why != RCOLO_REJ_NONE) {
        size_t n =
            rcolo_rej_encode(why, why == RCOLO_REJ_CHALLENGE ? challenge : NULL,
                             pdata, sizeof(pdata));
        rdma_reject(id, pdata, (uint8_t)n);
        if (why == RCOLO_REJ_NO_RESOURCES) {
            /* Our own failure, not the peer's fault: record it. */
            rcolo_fail_locked(&s->core, err.code ? err.code : -ENOMEM,
                              "cannot accept connection: %s", err.message);
        }
        return id;
    }

    /* The secondary proves the token too, over the primary's nonce: a
     * host that merely listens at the address receives no guest RAM. */
    struct rcolo_rep rep = {
        .channels = (uint16_t)s->channels,
        .depth = (uint16_t)s->depth,
    };
    struct rdma_cm_id *qp_id = req.role == RCOLO_CONN_CONTROL ? s->ctl.id : id;
    struct rcolo_mac_input in = {
        .snonce = s->snonce,
        .cnonce = s->cnonce,
        .conn_nonce = req.role == RCOLO_CONN_DATA ? req.cnonce : NULL,
        .index = req.index,
        .channels = rep.channels,
        .depth = rep.depth,
        .qpn = qp_id->qp->qp_num,
    };
    rcolo_mac(s->uri.token,
              req.role == RCOLO_CONN_CONTROL ? RCOLO_MAC_CONTROL_REP
                                             : RCOLO_MAC_DATA_REP,
              &in, rep.mac);
    size_t n = rcolo_rep_encode(&rep, pdata, sizeof(pdata));
    struct rdma_conn_param param = conn_param(s, pdata, n);
    if (req.role == RCOLO_CONN_CONTROL) {
        id->context = NULL;
        s->state = RCOLO_SESSION_ACCEPTING;
        /* The primary proved the token; completing the connection is
         * owed (its RTU comes from its process, which may be stopped). */
        s->accept_deadline = rcolo_deadline(s->core.timeout_ms);
    } else {
        id->context = ch;
        ch->state = RCOLO_CHAN_CONNECTING;
        /* As for the control connection: its completion is owed. */
        ch->accept_deadline = rcolo_deadline(s->core.timeout_ms);
        /* Read without the lock by the channels' session-fence check. */
        __atomic_store_n(&s->chan[ch->index], ch, __ATOMIC_RELEASE);
    }
    if (rdma_accept(id, &param)) {
        rcolo_fail_locked(&s->core, -errno, "rdma_accept: %s", strerror(errno));
    }
    return NULL;
}

/* ------------------------------------------------------------ primary */

/* Resolve address and route for a new id on a private event channel. */
static int connect_resolve(struct rcolo_session *s,
                           struct rdma_event_channel **pch,
                           struct rdma_cm_id **pid, int64_t deadline,
                           struct rcolo_error *err)
{
    struct rdma_addrinfo *ai;
    struct sockaddr_storage src;
    char route[300];
    int ret;

    ret = rcolo_cm_channel_open(pch, err);
    if (ret) {
        return ret;
    }
    if (rdma_create_id(*pch, pid, NULL, RDMA_PS_TCP)) {
        return rcolo_set_error(err, -errno, "rdma_create_id: %s",
                               strerror(errno));
    }
    ret = rcolo_path_resolve(&s->uri, false, &ai, err);
    if (ret) {
        return ret;
    }
    ret = rcolo_path_source(&s->uri, ai->ai_dst_addr->sa_family, &src, err);
    if (ret < 0) {
        rdma_freeaddrinfo(ai);
        return ret;
    }
    if (ret > 0) {
        char shown[INET6_ADDRSTRLEN] = "?";
        const struct sockaddr *sa = (const struct sockaddr *)&src;

        inet_ntop(
            sa->sa_family,
            sa->sa_family == AF_INET
                ? (const void *)&((const struct sockaddr_in *)sa)->sin_addr
                : (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr,
            shown, sizeof(shown));
        snprintf(route, sizeof(route), "the route from %s to %s", shown,
                 s->uri.host);
    } else {
        snprintf(route, sizeof(route), "the route to %s", s->uri.host);
    }
    ret = rdma_resolve_addr(*pid, ret > 0 ? (struct sockaddr *)&src : NULL,
                            ai->ai_dst_addr, 2000);
    rdma_freeaddrinfo(ai);
    if (ret) {
        return rcolo_set_error(err, -errno, "cannot resolve %s: %s%s", route,
                               strerror(errno),
                               errno == EADDRNOTAVAIL || errno == ENODEV
                                   ? " (is the source an address of an "
                                     "RDMA interface of this host?)"
                                   : "");
    }
    ret = rcolo_cm_wait(*pch, RDMA_CM_EVENT_ADDR_RESOLVED, deadline, &s->core,
                        NULL, NULL, err);
    if (ret) {
        return ret;
    }
    ret = rcolo_path_check_id(&s->uri, RCOLO_PRIMARY, *pid, route, err);
    if (ret) {
        return ret;
    }
    if (s->uri.flags & RCOLO_URI_TOS) {
        uint8_t tos = (uint8_t)s->uri.tos;

        if (rdma_set_option(*pid, RDMA_OPTION_ID, RDMA_OPTION_ID_TOS, &tos,
                            sizeof(tos))) {
            return rcolo_set_error(err, -errno, "cannot set tos=%u: %s",
                                   s->uri.tos, strerror(errno));
        }
    }
    if (rdma_resolve_route(*pid, 2000)) {
        return rcolo_set_error(err, -errno, "cannot resolve route: %s",
                               strerror(errno));
    }
    ret = rcolo_cm_wait(*pch, RDMA_CM_EVENT_ROUTE_RESOLVED, deadline, &s->core,
                        NULL, NULL, err);
    if (ret) {
        return ret;
    }
    ret = rcolo_cm_tune(*pid, s->uri.ack_timeout, err);
    return ret ? ret : rcolo_regions_attach(s, (*pid)->verbs, err);
}

/* Send the REQ, wait for ESTABLISHED, move the id onto the session's
 * event channel.  A refusal fills @rej (reason 0 if it was not ours).
 * Every REQ has a QP of its own, a HELLO's too: the CM of the peer keys
 * connections by (QP number, device), and two REQs from one device with
 * one QP number look like a stale connection, which it rejects and
 * disconnects (a fixed number for every HELLO broke concurrent handshakes
 * from one host). */
static int connect_finish(struct rcolo_session *s,
                          struct rdma_event_channel *pch, struct rdma_cm_id *id,
                          const struct rcolo_req *req, struct rcolo_rep *rep,
                          struct rcolo_rej *rej, int64_t deadline,
                          struct rcolo_error *err)
{
    uint8_t req_buf[RCOLO_WIRE_REQ_LEN];
    uint8_t reply[64];
    size_t reply_len = sizeof(reply);
    struct rdma_conn_param param =
        conn_param(s, req_buf, rcolo_req_encode(req, req_buf, sizeof(req_buf)));
    int ret;

    assert(id->qp);
    memset(rej, 0, sizeof(*rej));
    if (rdma_connect(id, &param)) {
        return rcolo_set_error(err, -errno, "rdma_connect: %s",
                               strerror(errno));
    }
    ret = rcolo_cm_wait(pch, RDMA_CM_EVENT_ESTABLISHED, deadline, &s->core,
                        reply, &reply_len, err);
    if (ret == -ECONNREFUSED) {
        if (rcolo_rej_decode(reply, reply_len, rej) < 0) {
            return rcolo_set_error(err, -ECONNREFUSED,
                                   "connection to %s:%s refused (nobody "
                                   "listening there?)",
                                   s->uri.host, s->uri.port);
        }
        if (rej->reason == RCOLO_REJ_BAD_VERSION) {
            return rcolo_set_error(err, -ECONNREFUSED,
                                   "secondary at %s:%s refused the "
                                   "connection: protocol version mismatch "
                                   "(it speaks %u, this side %u)",
                                   s->uri.host, s->uri.port, rej->version,
                                   RCOLO_PROTOCOL_VERSION);
        }
        return rcolo_set_error(err, -ECONNREFUSED,
                               "secondary at %s:%s refused the "
                               "connection: %s",
                               s->uri.host, s->uri.port,
                               rcolo_reject_str(rej->reason));
    }
    if (ret) {
        return ret;
    }
    if (req->role == RCOLO_CONN_HELLO) {
        return rcolo_set_error(err, -EPROTO,
                               "%s:%s accepted a connection that asked for "
                               "a challenge (not an rdma-colo secondary?)",
                               s->uri.host, s->uri.port);
    }
    if (rcolo_rep_decode(reply, reply_len, rep)) {
        return rcolo_set_error(err, -EPROTO,
                               "secondary's accept reply is malformed");
    }
    if (rdma_migrate_id(id, s->cm)) {
        return rcolo_set_error(err, -errno, "rdma_migrate_id: %s",
                               strerror(errno));
    }
    return 0;
}

/* Primary: ask the secondary for a challenge (a HELLO it always refuses,
 * on a throw-away id with a throw-away QP). */
static int request_challenge(struct rcolo_session *s,
                             uint8_t snonce[RCOLO_NONCE_LEN], int64_t deadline,
                             struct rcolo_rej *rej_out, struct rcolo_error *err)
{
    struct rdma_event_channel *pch = NULL;
    struct rdma_cm_id *id = NULL;
    struct rcolo_req req = {
        .version = RCOLO_PROTOCOL_VERSION,
        .role = RCOLO_CONN_HELLO,
    };
    struct rcolo_qp_res res = {0};
    struct rcolo_rej rej;
    struct rcolo_rep rep;
    int ret;

    ret = connect_resolve(s, &pch, &id, deadline, err);
    if (ret == 0) {
        ret = rcolo_qp_create(id, s->pd, s, &res, 1, 1, err);
    }
    if (ret == 0) {
        ret = connect_finish(s, pch, id, &req, &rep, &rej, deadline, err);
        if (ret == 0) {
            ret = -EPROTO; /* connect_finish said why */
        } else if (ret == -ECONNREFUSED && rej.reason == RCOLO_REJ_CHALLENGE) {
            memcpy(snonce, rej.snonce, RCOLO_NONCE_LEN);
            ret = 0;
        }
        *rej_out = rej;
    }
    if (id) {
        rcolo_qp_destroy(id, &res);
        rdma_destroy_id(id);
    }
    if (pch) {
        rdma_destroy_event_channel(pch);
    }
    return ret;
}

/*
 * Primary: the control connection, authenticated both ways.  On success
 * s->ctl is connected (its id on the session's event channel), the
 * secondary proved the token over this side's nonce, and s->channels and
 * s->depth hold what it agreed to.
 */
int rcolo_handshake_connect(struct rcolo_session *s, int64_t deadline,
                            struct rcolo_error *err)
{
    const struct rcolo_uri *uri = &s->uri;
    struct rdma_event_channel *pch = NULL;
    struct rdma_cm_id *id = NULL;
    struct rcolo_rep rep;
    int ret;

    /*
     * Refusals that a later attempt may not meet are retried until the
     * connect deadline: a challenge that expired in a queue of HELLOs
     * (BAD_NONCE), or too many HELLOs from this address (SLOW_DOWN: a
     * flood from here, or a neighbour that shares its bucket).  Waits
     * double from 20 ms to 640 ms between attempts.
     */
    for (int attempt = 0, wait_ms = 20;; attempt++) {
        struct rcolo_rej rej = {0};

        ret = request_challenge(s, s->snonce, deadline, &rej, err);
        if (ret == 0) {
            ret = random_bytes(s->cnonce, RCOLO_NONCE_LEN);
            if (ret) {
                rcolo_set_error(err, ret, "no random nonce: %s",
                                strerror(-ret));
            }
        }
        if (ret == 0) {
            ret = connect_resolve(s, &pch, &id, deadline, err);
        }
        if (ret == 0) {
            ret = rcolo_ctl_setup(s, id, err);
        }
        if (ret == 0) {
            struct rcolo_req req = {
                .version = RCOLO_PROTOCOL_VERSION,
                .role = RCOLO_CONN_CONTROL,
                .channels = (uint16_t)uri->channels,
                .depth = (uint16_t)uri->depth,
            };
            memcpy(req.snonce, s->snonce, RCOLO_NONCE_LEN);
            memcpy(req.cnonce, s->cnonce, RCOLO_NONCE_LEN);
            struct rcolo_mac_input in = {
                .snonce = req.snonce,
                .cnonce = req.cnonce,
                .channels = req.channels,
                .depth = req.depth,
                .qpn = id->qp->qp_num,
            };
            rcolo_mac(uri->token, RCOLO_MAC_CONTROL_REQ, &in, req.mac);
            ret = connect_finish(s, pch, id, &req, &rep, &rej, deadline, err);
        }
        if (ret == 0) {
            break;
        }
        bool again =
            ret == -ECONNREFUSED && (rej.reason == RCOLO_REJ_BAD_NONCE ||
                                     rej.reason == RCOLO_REJ_SLOW_DOWN);
        if (s->ctl.id) {
            rcolo_ctl_teardown(s); /* destroys id */
        } else if (id) {
            rdma_destroy_id(id);
        }
        id = NULL;
        if (pch) {
            rdma_destroy_event_channel(pch);
            pch = NULL;
        }
        if (!again) {
            return ret;
        }
        int left = rcolo_deadline_ms(deadline);
        if (left == 0) {
            return rcolo_set_error(err, -ETIMEDOUT,
                                   "secondary at %s:%s still refused at the "
                                   "connect deadline, after %d attempts: %s",
                                   uri->host, uri->port, attempt + 1,
                                   rcolo_reject_str(rej.reason));
        }
        s->stats.connect_retries++;
        usleep((useconds_t)(left >= 0 && left < wait_ms ? left : wait_ms) *
               1000);
        wait_ms = wait_ms < 640 ? 2 * wait_ms : 640;
    }
    rdma_destroy_event_channel(pch);
    pch = NULL;
    /* Before anything of the secondary is believed: did it prove the
     * token over our nonce? */
    uint8_t want[RCOLO_MAC_LEN];
    struct rcolo_mac_input in = {
        .snonce = s->snonce,
        .cnonce = s->cnonce,
        .channels = rep.channels,
        .depth = rep.depth,
        .qpn = rcolo_qp_dest_qpn(s->ctl.id->qp),
    };
    rcolo_mac(uri->token, RCOLO_MAC_CONTROL_REP, &in, want);
    if (!rcolo_mac_equal(want, rep.mac)) {
        return rcolo_set_error(err, -EACCES,
                               "%s:%s accepted but did not prove the session "
                               "token (another token there, or not the "
                               "secondary you meant)",
                               uri->host, uri->port);
    }
    /* The secondary may lower the depth, nothing else. */
    if (rep.channels != uri->channels || rep.depth < 2 ||
        rep.depth > uri->depth) {
        return rcolo_set_error(err, -EPROTO,
                               "secondary at %s:%s answered with %u channels "
                               "of depth %u (asked for %u of depth %u)",
                               uri->host, uri->port, rep.channels, rep.depth,
                               uri->channels, uri->depth);
    }
    ret = rcolo_path_check_qp(uri, s->ctl.id, err);
    if (ret) {
        return ret;
    }
    s->channels = rep.channels;
    s->depth = rep.depth;
    s->ctl.established = true;
    return 0;
}

int rcolo_channel_connect(struct rcolo_session *s, unsigned index,
                          int timeout_ms, struct rcolo_channel **out,
                          struct rcolo_error *err)
{
    int64_t deadline = rcolo_deadline(timeout_ms);
    struct rdma_event_channel *pch = NULL;
    struct rcolo_channel *ch;
    int ret;

    *out = NULL;
    if (s->role != RCOLO_PRIMARY || index >= s->channels) {
        return rcolo_set_error(err, -EINVAL,
                               "bad channel index %u (session has %u)", index,
                               s->channels);
    }
    if (rcolo_status(&s->core)) {
        return rcolo_core_error(&s->core, err);
    }
    pthread_mutex_lock(&s->core.lock);
    if (s->chan[index]) {
        pthread_mutex_unlock(&s->core.lock);
        return rcolo_set_error(err, -EEXIST, "channel %u already connected",
                               index);
    }
    ch = rcolo_channel_new(s, index);
    ch->state = RCOLO_CHAN_CONNECTING;
    s->chan[index] = ch; /* reserve the index */
    pthread_mutex_unlock(&s->core.lock);

    ret = connect_resolve(s, &pch, &ch->id, deadline, err);
    if (ret == 0) {
        ch->id->context = ch;
        ret = rcolo_channel_setup(ch, err);
    }
    if (ret == 0) {
        struct rcolo_req req = {
            .version = RCOLO_PROTOCOL_VERSION,
            .role = RCOLO_CONN_DATA,
            .index = (uint16_t)index,
        };
        struct rcolo_rep rep;
        struct rcolo_rej rej;
        uint8_t want[RCOLO_MAC_LEN];

        /* The channel's own nonce goes where a control REQ has the
         * primary's (the session's cnonce is known to both). */
        uint8_t dnonce[RCOLO_NONCE_LEN];
        ret = random_bytes(dnonce, sizeof(dnonce));
        if (ret) {
            rcolo_set_error(err, ret, "no random nonce: %s", strerror(-ret));
        }
        memcpy(req.snonce, s->snonce, RCOLO_NONCE_LEN);
        memcpy(req.cnonce, dnonce, RCOLO_NONCE_LEN);
        struct rcolo_mac_input in = {
            .snonce = s->snonce,
            .cnonce = s->cnonce,
            .conn_nonce = dnonce,
            .index = req.index,
            .qpn = ch->id->qp->qp_num,
        };
        rcolo_mac(s->uri.token, RCOLO_MAC_DATA_REQ, &in, req.mac);
        if (ret == 0) {
            ret =
                connect_finish(s, pch, ch->id, &req, &rep, &rej, deadline, err);
        }
        if (ret == 0) {
            in.channels = rep.channels;
            in.depth = rep.depth;
            in.qpn = rcolo_qp_dest_qpn(ch->id->qp);
            rcolo_mac(s->uri.token, RCOLO_MAC_DATA_REP, &in, want);
            if (!rcolo_mac_equal(want, rep.mac)) {
                ret = rcolo_set_error(err, -EACCES,
                                      "data channel %u: the secondary did "
                                      "not prove the session token",
                                      index);
            } else if (rep.channels != s->channels || rep.depth != s->depth) {
                ret = rcolo_set_error(
                    err, -EPROTO,
                    "data channel %u: the secondary answered %u channels "
                    "of depth %u (the session has %u of depth %u)",
                    index, rep.channels, rep.depth, s->channels, s->depth);
            }
        }
    }
    if (ret) {
        pthread_mutex_lock(&s->core.lock);
        s->chan[index] = NULL;
        pthread_mutex_unlock(&s->core.lock);
        rcolo_channel_free(ch);
        if (pch) {
            rdma_destroy_event_channel(pch);
        }
        return ret;
    }
    rdma_destroy_event_channel(pch);
    pthread_mutex_lock(&s->core.lock);
    ch->state = RCOLO_CHAN_ESTABLISHED;
    pthread_mutex_unlock(&s->core.lock);
    *out = ch;
    return 0;
}

/* ------------------------------------------------- secondary: channels */

struct chan_wait {
    struct rcolo_session *s;
    unsigned index;
};

/* A channel to hand out, or a reason to stop waiting for one. */
static bool chan_decided(void *arg)
{
    struct chan_wait *w = arg;
    struct rcolo_session *s = w->s;

    return s->core.status ||
           (s->state == RCOLO_SESSION_READY && w->index >= s->channels) ||
           (s->chan[w->index] &&
            s->chan[w->index]->state == RCOLO_CHAN_ESTABLISHED);
}

int rcolo_channel_accept(struct rcolo_session *s, unsigned index,
                         int timeout_ms, struct rcolo_channel **out,
                         struct rcolo_error *err)
{
    struct chan_wait w = {.s = s, .index = index};
    int ret;

    *out = NULL;
    if (s->role != RCOLO_SECONDARY || index >= RCOLO_MAX_CHANNELS) {
        return rcolo_set_error(err, -EINVAL, "bad channel index %u", index);
    }
    pthread_mutex_lock(&s->core.lock);
    ret = rcolo_wait_locked(&s->core, chan_decided, &w,
                            rcolo_deadline(timeout_ms));
    if (s->core.status) {
        ret = rcolo_core_error(&s->core, err);
    } else if (ret == -ETIMEDOUT) {
        rcolo_set_error(err, ret, "data channel %u not connected within %d ms",
                        index, timeout_ms);
    } else if (ret) {
        ret = rcolo_core_error(&s->core, err);
    } else if (index >= s->channels) {
        ret = rcolo_set_error(err, -EINVAL,
                              "channel %u: the session has %u channels", index,
                              s->channels);
    } else {
        *out = s->chan[index];
    }
    pthread_mutex_unlock(&s->core.lock);
    return ret;
}
