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
        .responder_resources = 1,
        .initiator_depth = 1,
        .retry_count =
            (uint8_t)(s->uri.retry_count ? s->uri.retry_count
                                         : RCOLO_DEFAULT_RETRY_COUNT),
        .rnr_retry_count = 6,
    };
}

/* ------------------------------------------------ secondary: requests */

static int random_nonce(uint8_t out[RCOLO_NONCE_LEN])
{
    ssize_t n;

    do {
        n = getrandom(out, RCOLO_NONCE_LEN, 0);
    } while (n < 0 && errno == EINTR);
    return n == RCOLO_NONCE_LEN ? 0 : -(n < 0 ? errno : EIO);
}

/* HELLO: hand out a fresh single-use challenge. */
static int issue_challenge(struct rcolo_session *s,
                           uint8_t snonce[RCOLO_NONCE_LEN])
{
    struct rcolo_challenge *c =
        &s->challenges[s->next_challenge++ % RCOLO_CHALLENGES];
    int ret = random_nonce(c->snonce);

    if (ret) {
        c->expires = 0;
        return ret;
    }
    c->expires = rcolo_deadline(s->core.timeout_ms);
    memcpy(snonce, c->snonce, RCOLO_NONCE_LEN);
    return 0;
}

/* A live challenge with this nonce: consume it (single use, answered
 * correctly or not). */
static bool take_challenge(struct rcolo_session *s,
                           const uint8_t snonce[RCOLO_NONCE_LEN])
{
    int64_t now = rcolo_now_ns();

    for (unsigned i = 0; i < RCOLO_CHALLENGES; i++) {
        struct rcolo_challenge *c = &s->challenges[i];

        if (c->expires && !memcmp(c->snonce, snonce, RCOLO_NONCE_LEN)) {
            bool live = c->expires > now;

            c->expires = 0;
            return live;
        }
    }
    return false;
}

static bool mac_ok(struct rcolo_session *s, enum rcolo_mac_kind kind,
                   const struct rcolo_req *req)
{
    uint8_t want[RCOLO_MAC_LEN];

    rcolo_mac(s->uri.token, kind, req->snonce, req->cnonce, req->index,
              req->channels, req->depth, want);
    return rcolo_mac_equal(want, req->mac);
}

/*
 * Nothing is allocated and no state changes before the peer proved the
 * token: a failed attempt costs the secondary one used challenge.
 */
static enum rcolo_reject_reason check_request(struct rcolo_session *s,
                                              const struct rcolo_req *req)
{
    switch (req->role) {
    case RCOLO_CONN_HELLO:
        return s->ctl.id || s->state != RCOLO_SESSION_LISTENING
                   ? RCOLO_REJ_BUSY
                   : RCOLO_REJ_CHALLENGE;
    case RCOLO_CONN_CONTROL:
        if (!take_challenge(s, req->snonce)) {
            return RCOLO_REJ_BAD_NONCE;
        }
        if (!mac_ok(s, RCOLO_MAC_CONTROL_REQ, req)) {
            return RCOLO_REJ_BAD_TOKEN;
        }
        if (s->ctl.id || s->state != RCOLO_SESSION_LISTENING) {
            return RCOLO_REJ_BUSY;
        }
        return RCOLO_REJ_NONE;
    case RCOLO_CONN_DATA:
        if (s->state != RCOLO_SESSION_READY ||
            memcmp(req->snonce, s->snonce, RCOLO_NONCE_LEN) ||
            memcmp(req->cnonce, s->cnonce, RCOLO_NONCE_LEN)) {
            return RCOLO_REJ_BAD_NONCE;
        }
        if (!mac_ok(s, RCOLO_MAC_DATA_REQ, req)) {
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
        why = check_request(s, &req);
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
    rcolo_mac(s->uri.token,
              req.role == RCOLO_CONN_CONTROL ? RCOLO_MAC_CONTROL_REP
                                             : RCOLO_MAC_DATA_REP,
              s->snonce, s->cnonce, req.index, rep.channels, rep.depth,
              rep.mac);
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
                             struct rcolo_error *err)
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
        ret = rcolo_qp_create(id, s->pd, &res, 1, 1, err);
    }
    if (ret == 0) {
        ret = connect_finish(s, pch, id, &req, &rep, &rej, deadline, err);
        if (ret == 0) {
            ret = -EPROTO; /* connect_finish said why */
        } else if (ret == -ECONNREFUSED && rej.reason == RCOLO_REJ_CHALLENGE) {
            memcpy(snonce, rej.snonce, RCOLO_NONCE_LEN);
            ret = 0;
        }
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

    /* A challenge can be evicted by a flood of HELLOs between our two
     * requests: ask again, a few times. */
    for (int attempt = 0;; attempt++) {
        struct rcolo_rej rej;

        ret = request_challenge(s, s->snonce, deadline, err);
        if (ret == 0) {
            ret = random_nonce(s->cnonce);
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
        if (ret) {
            goto fail;
        }
        struct rcolo_req req = {
            .version = RCOLO_PROTOCOL_VERSION,
            .role = RCOLO_CONN_CONTROL,
            .channels = (uint16_t)uri->channels,
            .depth = (uint16_t)uri->depth,
        };
        memcpy(req.snonce, s->snonce, RCOLO_NONCE_LEN);
        memcpy(req.cnonce, s->cnonce, RCOLO_NONCE_LEN);
        rcolo_mac(uri->token, RCOLO_MAC_CONTROL_REQ, req.snonce, req.cnonce, 0,
                  req.channels, req.depth, req.mac);
        ret = connect_finish(s, pch, id, &req, &rep, &rej, deadline, err);
        if (ret == -ECONNREFUSED && rej.reason == RCOLO_REJ_BAD_NONCE &&
            attempt < 2) {
            rcolo_ctl_teardown(s); /* destroys id */
            id = NULL;
            rdma_destroy_event_channel(pch);
            pch = NULL;
            continue;
        }
        if (ret) {
            goto fail;
        }
        break;
    }
    rdma_destroy_event_channel(pch);
    pch = NULL;
    /* Before anything of the secondary is believed: did it prove the
     * token over our nonce? */
    uint8_t want[RCOLO_MAC_LEN];
    rcolo_mac(uri->token, RCOLO_MAC_CONTROL_REP, s->snonce, s->cnonce, 0,
              rep.channels, rep.depth, want);
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

fail:
    if (id && s->ctl.id != id) {
        rdma_destroy_id(id);
    }
    if (pch) {
        /* The id (ctl_id) still lives on pch: destroy it before pch. */
        rcolo_ctl_teardown(s);
        rdma_destroy_event_channel(pch);
    }
    return ret;
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

        memcpy(req.snonce, s->snonce, RCOLO_NONCE_LEN);
        memcpy(req.cnonce, s->cnonce, RCOLO_NONCE_LEN);
        rcolo_mac(s->uri.token, RCOLO_MAC_DATA_REQ, req.snonce, req.cnonce,
                  req.index, 0, 0, req.mac);
        ret = connect_finish(s, pch, ch->id, &req, &rep, &rej, deadline, err);
        if (ret == 0) {
            rcolo_mac(s->uri.token, RCOLO_MAC_DATA_REP, s->snonce, s->cnonce,
                      req.index, rep.channels, rep.depth, want);
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
