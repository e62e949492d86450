/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Sessions: listen/accept (secondary), connect (primary), the connection
 * handshake, the session thread (CM events, control connection, async
 * events), the error state, shutdown and destroy.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* -------------------------------------------------------------- errors */

static void disconnect_all_locked(struct rcolo_session *s)
{
    if (s->ctl.id && s->ctl.established) {
        rdma_disconnect(s->ctl.id);
    }
    for (unsigned i = 0; i < RCOLO_MAX_CHANNELS; i++) {
        struct rcolo_channel *ch = s->chan[i];
        if (ch && ch->id && ch->state == RCOLO_CHAN_ESTABLISHED) {
            rdma_disconnect(ch->id);
        }
    }
}

/* core.h's on_fail callback: the first failure was recorded (lock held). */
static void session_failed(void *opaque)
{
    struct rcolo_session *s = opaque;

    s->state = RCOLO_SESSION_FAILED;
    rcolo_ctl_update_fd_locked(s);
    /* Tell the peer at once: its waiters fail instead of hanging. */
    disconnect_all_locked(s);
}

void rcolo_session_set_busy_poll(struct rcolo_session *s, bool on)
{
    __atomic_store_n(&s->core.busy_poll, on, __ATOMIC_RELEASE);
}

int rcolo_session_status(const struct rcolo_session *s)
{
    return __atomic_load_n(&s->core.status, __ATOMIC_ACQUIRE);
}

const char *rcolo_session_error(const struct rcolo_session *s)
{
    return rcolo_session_status(s) ? s->core.error : "";
}

static int session_error(struct rcolo_session *s, struct rcolo_error *err)
{
    return rcolo_set_error(err, s->core.status, "%s", s->core.error);
}

/* ------------------------------------------------------------- create */

static int no_device_error(struct rcolo_error *err);

static int session_new(enum rcolo_role role, const struct rcolo_uri *uri,
                       struct rcolo_session **out, struct rcolo_error *err)
{
    struct rcolo_session *s;
    int ret;

    ret = rcolo_uri_check_auth(uri, role, err);
    if (ret) {
        return ret;
    }
    ret = no_device_error(err);
    if (ret) {
        return ret;
    }
    ret = rcolo_path_check_options(uri, role, err);
    if (ret) {
        return ret;
    }
    s = g_new0(struct rcolo_session, 1);
    s->role = role;
    s->uri = *uri;
    s->channels = uri->channels;
    s->depth = uri->depth;
    s->odp = -1;
    s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    s->ctl.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->wake_fd < 0 || s->ctl.fd < 0 ||
        rcolo_core_init(&s->core, session_failed, s)) {
        ret = rcolo_set_error(err, -errno, "cannot create session: %s",
                              strerror(errno));
        if (s->wake_fd >= 0) {
            close(s->wake_fd);
        }
        if (s->ctl.fd >= 0) {
            close(s->ctl.fd);
        }
        g_free(s);
        return ret;
    }
    s->core.timeout_ms = (int)uri->timeout_ms;
    s->core.owed_ms = RCOLO_OWED_FACTOR * (int)uri->timeout_ms;
    pthread_mutex_init(&s->ctl.write_lock, NULL);
    s->regions = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL,
                                       rcolo_region_free);
    *out = s;
    return 0;
}

static int session_pd(struct rcolo_session *s, struct ibv_context *verbs,
                      struct rcolo_error *err)
{
    if (s->pd) {
        if (verbs != s->verbs) {
            return rcolo_set_error(err, -EXDEV,
                                   "connection arrived on RDMA device %s, "
                                   "but the session uses %s",
                                   ibv_get_device_name(verbs->device),
                                   ibv_get_device_name(s->verbs->device));
        }
        return 0;
    }
    s->verbs = verbs;
    s->pd = ibv_alloc_pd(verbs);
    if (!s->pd) {
        return rcolo_set_error(err, -errno, "cannot allocate PD on %s: %s",
                               ibv_get_device_name(verbs->device),
                               strerror(errno));
    }
    fcntl(verbs->async_fd, F_SETFL,
          fcntl(verbs->async_fd, F_GETFL) | O_NONBLOCK);
    return rcolo_regions_register_all(s, err);
}

int rcolo_session_odp(struct rcolo_session *s)
{
    return s->odp < 0 ? -ENODEV : s->odp;
}

unsigned rcolo_session_channels(const struct rcolo_session *s)
{
    return s->channels;
}

/* ---------------------------------------------------- control setup */

/* Secondary: the control connection is up; send the region table.  Runs
 * in the session thread, which is what frees send slots: all are free now,
 * and it is the first message, so a credit is there too. */
static void ctl_established_locked(struct rcolo_session *s)
{
    s->ctl.established = true;
    int ret = rcolo_ctl_send_table_locked(s, rcolo_deadline(0));
    if (ret) {
        rcolo_fail_locked(&s->core, ret, "cannot send region table: %s",
                          strerror(-ret));
        return;
    }
    s->state = RCOLO_SESSION_READY;
    pthread_cond_broadcast(&s->core.cond);
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
static struct rdma_cm_id *on_connect_request(struct rcolo_session *s,
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
         session_pd(s, id->verbs, &err))) {
        why = RCOLO_REJ_NO_RESOURCES;
    }
    if (why == RCOLO_REJ_NONE) {
        rcolo_cm_tune(id);
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
    struct rdma_conn_param param = {
        .private_data = pdata,
        .private_data_len = (uint8_t)n,
        .responder_resources = 1,
        .initiator_depth = 1,
        .retry_count = 7,
        .rnr_retry_count = 6,
    };
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

/* ------------------------------------------------------ session thread */

static const char *id_name(struct rcolo_session *s, struct rdma_cm_id *id,
                           char *buf, size_t size)
{
    if (id == s->ctl.id) {
        return "control connection";
    }
    struct rcolo_channel *ch = id->context;
    if (ch) {
        snprintf(buf, size, "data channel %u", ch->index);
        return buf;
    }
    return "connection";
}

static void handle_cm_event(struct rcolo_session *s)
{
    struct rdma_cm_event *ev;
    struct rdma_cm_id *destroy = NULL;
    char name[32];

    if (rdma_get_cm_event(s->cm, &ev)) {
        return;
    }
    pthread_mutex_lock(&s->core.lock);
    switch (ev->event) {
    case RDMA_CM_EVENT_CONNECT_REQUEST:
        if (s->role == RCOLO_SECONDARY && !s->thread_stop) {
            destroy = on_connect_request(s, ev);
        } else {
            rdma_reject(ev->id, NULL, 0);
            destroy = ev->id;
        }
        break;
    case RDMA_CM_EVENT_ESTABLISHED:
        if (ev->id == s->ctl.id) {
            ctl_established_locked(s);
        } else if (ev->id->context) {
            struct rcolo_channel *ch = ev->id->context;
            ch->state = RCOLO_CHAN_ESTABLISHED;
            pthread_cond_broadcast(&s->core.cond);
        }
        break;
    case RDMA_CM_EVENT_DISCONNECTED:
        rcolo_fail_locked(&s->core, -ECONNRESET, "peer disconnected (%s)",
                          id_name(s, ev->id, name, sizeof(name)));
        rdma_disconnect(ev->id);
        break;
    case RDMA_CM_EVENT_DEVICE_REMOVAL:
        rcolo_fail_locked(&s->core, -ENODEV, "RDMA device removed");
        break;
    case RDMA_CM_EVENT_CONNECT_ERROR:
    case RDMA_CM_EVENT_UNREACHABLE:
    case RDMA_CM_EVENT_REJECTED:
        rcolo_fail_locked(&s->core, -ECONNABORTED, "%s failed: %s (%d)",
                          id_name(s, ev->id, name, sizeof(name)),
                          rdma_event_str(ev->event), ev->status);
        break;
    default:
        break; /* TIMEWAIT_EXIT, ADDR_CHANGE: nothing to do */
    }
    pthread_mutex_unlock(&s->core.lock);
    rdma_ack_cm_event(ev);
    if (destroy) {
        rdma_destroy_id(destroy);
    }
}

static void handle_async_event(struct rcolo_session *s)
{
    struct ibv_async_event ev;

    if (ibv_get_async_event(s->verbs, &ev)) {
        return;
    }
    switch (ev.event_type) {
    case IBV_EVENT_QP_FATAL:
    case IBV_EVENT_QP_REQ_ERR:
    case IBV_EVENT_QP_ACCESS_ERR:
    case IBV_EVENT_CQ_ERR:
    case IBV_EVENT_DEVICE_FATAL:
    case IBV_EVENT_PORT_ERR:
        rcolo_fail(&s->core, -EIO, "RDMA async event: %s",
                   ibv_event_type_str(ev.event_type));
        break;
    default:
        break;
    }
    ibv_ack_async_event(&ev);
}

static void *session_thread(void *opaque)
{
    struct rcolo_session *s = opaque;

    for (;;) {
        struct pollfd pfd[4];
        int n = 0, ctl = -1, async = -1, timeout = -1;

        pthread_mutex_lock(&s->core.lock);
        bool stop = s->thread_stop;
        if (s->state == RCOLO_SESSION_ACCEPTING && !s->core.status) {
            timeout = rcolo_deadline_ms(s->accept_deadline);
            if (timeout == 0) {
                rcolo_fail_locked(&s->core, -ETIMEDOUT,
                                  "the primary did not complete the control "
                                  "connection within %d ms (stalled?)",
                                  s->core.timeout_ms);
                timeout = -1;
            }
        }
        if (!stop) {
            int ka = rcolo_ctl_keepalive_locked(s);

            if (ka >= 0 && (timeout < 0 || ka < timeout)) {
                timeout = ka;
            }
        }
        pthread_mutex_unlock(&s->core.lock);
        if (stop) {
            break;
        }
        pfd[n++] = (struct pollfd){.fd = s->wake_fd, .events = POLLIN};
        pfd[n++] = (struct pollfd){.fd = s->cm->fd, .events = POLLIN};
        if (s->ctl.res.comp) {
            ctl = n;
            pfd[n++] =
                (struct pollfd){.fd = s->ctl.res.comp->fd, .events = POLLIN};
        }
        if (s->verbs) {
            async = n;
            pfd[n++] =
                (struct pollfd){.fd = s->verbs->async_fd, .events = POLLIN};
        }
        if (poll(pfd, (nfds_t)n, timeout) <= 0) {
            continue; /* interrupted, or a deadline: see above */
        }
        if (pfd[0].revents) {
            uint64_t v;
            if (read(s->wake_fd, &v, sizeof(v)) < 0) {
                /* nothing pending */
            }
        }
        if (pfd[1].revents) {
            handle_cm_event(s);
        }
        if (ctl >= 0 && pfd[ctl].revents) {
            rcolo_ctl_poll(s);
        }
        if (async >= 0 && pfd[async].revents) {
            handle_async_event(s);
        }
    }
    return NULL;
}

static void session_wake(struct rcolo_session *s)
{
    uint64_t one = 1;
    if (write(s->wake_fd, &one, sizeof(one)) < 0) {
        /* cannot fail short of overflow */
    }
}

static int session_start_thread(struct rcolo_session *s,
                                struct rcolo_error *err)
{
    int ret = pthread_create(&s->thread, NULL, session_thread, s);
    if (ret) {
        return rcolo_set_error(err, -ret, "cannot start session thread: %s",
                               strerror(ret));
    }
    s->thread_started = true;
    return 0;
}

/* ------------------------------------------------------------ listen */

static int resolve(const struct rcolo_uri *uri, bool passive,
                   struct rdma_addrinfo **res, struct rcolo_error *err)
{
    struct rdma_addrinfo hints = {.ai_port_space = RDMA_PS_TCP};

    if (passive) {
        hints.ai_flags = RAI_PASSIVE;
    }
    if (rdma_getaddrinfo(uri->host, uri->port, &hints, res)) {
        return rcolo_set_error(err, -EADDRNOTAVAIL,
                               "cannot resolve %s port %s: %s", uri->host,
                               uri->port, strerror(errno));
    }
    return 0;
}

static int no_device_error(struct rcolo_error *err)
{
    int num = 0;
    struct ibv_device **list = ibv_get_device_list(&num);

    if (list) {
        ibv_free_device_list(list);
    }
    if (num == 0) {
        return rcolo_set_error(err, -ENODEV,
                               "no RDMA device found (load rdma_rxe and "
                               "'rdma link add', or install an HCA driver)");
    }
    return 0;
}

int rcolo_listen(const struct rcolo_uri *uri, struct rcolo_session **out,
                 struct rcolo_error *err)
{
    struct rcolo_session *s;
    struct rdma_addrinfo *ai = NULL;
    int ret;

    *out = NULL;
    ret = session_new(RCOLO_SECONDARY, uri, &s, err);
    if (ret) {
        return ret;
    }
    ret = rcolo_cm_channel_open(&s->cm, err);
    if (ret) {
        goto fail;
    }
    ret = resolve(uri, true, &ai, err);
    if (ret) {
        goto fail;
    }
    if (rdma_create_id(s->cm, &s->listen_id, NULL, RDMA_PS_TCP)) {
        ret =
            rcolo_set_error(err, -errno, "rdma_create_id: %s", strerror(errno));
        goto fail;
    }
    if (rdma_bind_addr(s->listen_id, ai->ai_src_addr)) {
        ret = rcolo_set_error(err, -errno, "cannot bind %s port %s: %s",
                              uri->host, uri->port, strerror(errno));
        goto fail;
    }
    if (rdma_listen(s->listen_id, 64)) {
        ret = rcolo_set_error(err, -errno, "cannot listen on %s port %s: %s",
                              uri->host, uri->port, strerror(errno));
        goto fail;
    }
    /* Bound to one device's address: register regions as they come, so
     * that a memlock problem shows at rcolo_region_add. */
    if (s->listen_id->verbs) {
        char route[300];

        snprintf(route, sizeof(route), "the listen address %s", uri->host);
        ret =
            rcolo_path_check_id(uri, RCOLO_SECONDARY, s->listen_id, route, err);
        if (ret) {
            goto fail;
        }
        ret = session_pd(s, s->listen_id->verbs, err);
        if (ret) {
            goto fail;
        }
    }
    s->state = RCOLO_SESSION_LISTENING;
    ret = session_start_thread(s, err);
    if (ret) {
        goto fail;
    }
    rdma_freeaddrinfo(ai);
    *out = s;
    return 0;

fail:
    if (ai) {
        rdma_freeaddrinfo(ai);
    }
    rcolo_session_destroy(s);
    return ret;
}

int rcolo_session_port(struct rcolo_session *s)
{
    if (!s->listen_id) {
        return -EINVAL;
    }
    return be16toh(rdma_get_src_port(s->listen_id));
}

static bool session_ready(void *arg)
{
    struct rcolo_session *s = arg;

    return s->state == RCOLO_SESSION_READY;
}

int rcolo_accept(struct rcolo_session *s, int timeout_ms,
                 struct rcolo_error *err)
{
    int ret;

    pthread_mutex_lock(&s->core.lock);
    ret = rcolo_wait_locked(&s->core, session_ready, s,
                            rcolo_deadline(timeout_ms));
    if (s->core.status) {
        ret = session_error(s, err); /* a stall is the session's -ETIMEDOUT */
    } else if (ret == -ETIMEDOUT) {
        rcolo_set_error(err, ret, "no primary connected within %d ms",
                        timeout_ms);
    }
    pthread_mutex_unlock(&s->core.lock);
    return ret;
}

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
        ret = session_error(s, err);
    } else if (ret == -ETIMEDOUT) {
        rcolo_set_error(err, ret, "data channel %u not connected within %d ms",
                        index, timeout_ms);
    } else if (ret) {
        ret = session_error(s, err);
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

/* ------------------------------------------------------------ connect */

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
    ret = resolve(&s->uri, false, &ai, err);
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
    rcolo_cm_tune(*pid);
    return session_pd(s, (*pid)->verbs, err);
}

/* What a REQ's QP number is when the REQ has no QP: a HELLO is always
 * rejected, so nothing ever uses it. */
#define HELLO_QP_NUM 0xc0100

/* Send the REQ, wait for ESTABLISHED, move the id onto the session's
 * event channel.  A refusal fills @rej (reason 0 if it was not ours). */
static int connect_finish(struct rcolo_session *s,
                          struct rdma_event_channel *pch, struct rdma_cm_id *id,
                          const struct rcolo_req *req, struct rcolo_rep *rep,
                          struct rcolo_rej *rej, int64_t deadline,
                          struct rcolo_error *err)
{
    uint8_t req_buf[RCOLO_WIRE_REQ_LEN];
    uint8_t reply[64];
    size_t reply_len = sizeof(reply);
    struct rdma_conn_param param = {
        .private_data = req_buf,
        .private_data_len =
            (uint8_t)rcolo_req_encode(req, req_buf, sizeof(req_buf)),
        .responder_resources = 1,
        .initiator_depth = 1,
        .retry_count = 7,
        .rnr_retry_count = 6,
        .qp_num = id->qp ? 0 : HELLO_QP_NUM,
    };
    int ret;

    memset(rej, 0, sizeof(*rej));
    if (rdma_connect(id, &param)) {
        return rcolo_set_error(err, -errno, "rdma_connect: %s",
                               strerror(errno));
    }
    /* Without a QP, an accept is reported as CONNECT_RESPONSE. */
    ret = rcolo_cm_wait(pch,
                        id->qp ? RDMA_CM_EVENT_ESTABLISHED
                               : RDMA_CM_EVENT_CONNECT_RESPONSE,
                        deadline, &s->core, reply, &reply_len, err);
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
    if (!id->qp) {
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
 * on a throw-away id without a QP). */
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
    struct rcolo_rej rej;
    struct rcolo_rep rep;
    int ret;

    if (rcolo_fault_fire(RCOLO_FAULT_BAD_VERSION)) {
        req.version++;
    }
    ret = connect_resolve(s, &pch, &id, deadline, err);
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
        rdma_destroy_id(id);
    }
    if (pch) {
        rdma_destroy_event_channel(pch);
    }
    return ret;
}

static bool table_received(void *arg)
{
    struct rcolo_session *s = arg;

    return s->ctl.table_received;
}

int rcolo_connect(const struct rcolo_uri *uri, int timeout_ms,
                  struct rcolo_session **out, struct rcolo_error *err)
{
    int64_t deadline = rcolo_deadline(timeout_ms);
    struct rdma_event_channel *pch = NULL;
    struct rdma_cm_id *id = NULL;
    struct rcolo_rep rep;
    struct rcolo_session *s;
    int ret;

    *out = NULL;
    if (strcmp(uri->port, "0") == 0) {
        return rcolo_set_error(err, -EINVAL, "cannot connect to port 0");
    }
    ret = session_new(RCOLO_PRIMARY, uri, &s, err);
    if (ret) {
        return ret;
    }
    ret = rcolo_cm_channel_open(&s->cm, err);
    if (ret) {
        goto fail;
    }

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
        ret = rcolo_set_error(err, -EACCES,
                              "%s:%s accepted but did not prove the session "
                              "token (another token there, or not the "
                              "secondary you meant)",
                              uri->host, uri->port);
        goto fail;
    }
    /* The secondary may lower the depth, nothing else. */
    if (rep.channels != uri->channels || rep.depth < 2 ||
        rep.depth > uri->depth) {
        ret = rcolo_set_error(err, -EPROTO,
                              "secondary at %s:%s answered with %u channels "
                              "of depth %u (asked for %u of depth %u)",
                              uri->host, uri->port, rep.channels, rep.depth,
                              uri->channels, uri->depth);
        goto fail;
    }
    ret = rcolo_path_check_qp(uri, s->ctl.id, err);
    if (ret) {
        goto fail;
    }
    s->channels = rep.channels;
    s->depth = rep.depth;
    s->ctl.established = true;

    ret = session_start_thread(s, err);
    if (ret) {
        goto fail;
    }
    /* The region table is the secondary's first message. */
    pthread_mutex_lock(&s->core.lock);
    if (rcolo_wait_locked(&s->core, table_received, s, deadline) ==
        -ETIMEDOUT) {
        rcolo_fail_locked(&s->core, -ETIMEDOUT,
                          "no region table from the secondary");
    }
    if (s->core.status == 0) {
        s->state = RCOLO_SESSION_READY;
        session_wake(s); /* its keepalive starts now */
    }
    ret = s->core.status;
    if (ret) {
        session_error(s, err);
    }
    pthread_mutex_unlock(&s->core.lock);
    if (ret) {
        goto fail;
    }
    *out = s;
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
    rcolo_session_destroy(s);
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
    if (s->core.status) {
        return session_error(s, err);
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

/* ---------------------------------------------------- shutdown/destroy */

void rcolo_session_shutdown(struct rcolo_session *s)
{
    if (!s) {
        return;
    }
    /* Failing the session wakes every waiter and disconnects. */
    rcolo_fail(&s->core, -ESHUTDOWN, "session shut down");
    session_wake(s);
}

void rcolo_session_destroy(struct rcolo_session *s)
{
    if (!s) {
        return;
    }
    if (s->thread_started) {
        pthread_mutex_lock(&s->core.lock);
        s->thread_stop = true;
        pthread_mutex_unlock(&s->core.lock);
        session_wake(s);
        pthread_join(s->thread, NULL);
        s->thread_started = false;
    }
    for (unsigned i = 0; i < RCOLO_MAX_CHANNELS; i++) {
        if (s->chan[i]) {
            if (s->chan[i]->id && s->chan[i]->state == RCOLO_CHAN_ESTABLISHED) {
                rdma_disconnect(s->chan[i]->id);
            }
            rcolo_channel_free(s->chan[i]);
            s->chan[i] = NULL;
        }
    }
    if (s->ctl.id && s->ctl.established) {
        rdma_disconnect(s->ctl.id);
    }
    rcolo_ctl_teardown(s);
    if (s->listen_id) {
        rdma_destroy_id(s->listen_id);
    }
    if (s->regions) {
        g_hash_table_destroy(s->regions); /* deregisters */
    }
    g_free(s->remote);
    if (s->pd) {
        ibv_dealloc_pd(s->pd);
    }
    if (s->cm) {
        rdma_destroy_event_channel(s->cm);
    }
    close(s->wake_fd);
    close(s->ctl.fd);
    pthread_mutex_destroy(&s->ctl.write_lock);
    rcolo_core_fini(&s->core);
    g_free(s);
}

/* -------------------------------------------------------------- stats */

int rcolo_session_get_stats(struct rcolo_session *s,
                            struct rcolo_session_stats *out)
{
    GHashTableIter it;
    gpointer value;

    if (!s || !out) {
        return -EINVAL;
    }
    pthread_mutex_lock(&s->core.lock);
    *out = s->stats;
    memset(&out->total, 0, sizeof(out->total));
    for (unsigned i = 0; i < RCOLO_MAX_CHANNELS; i++) {
        struct rcolo_channel_stats c;
        if (!s->chan[i]) {
            continue;
        }
        rcolo_channel_get_stats(s->chan[i], &c);
        out->total.bytes += c.bytes;
        out->total.pages += c.pages;
        out->total.zero_pages += c.zero_pages;
        out->total.write_wrs += c.write_wrs;
        out->total.descriptors += c.descriptors;
        out->total.credit_waits += c.credit_waits;
        out->total.fences += c.fences;
        out->total.barriers += c.barriers;
        if (c.owed_wait_ns_max > out->total.owed_wait_ns_max) {
            out->total.owed_wait_ns_max = c.owed_wait_ns_max;
        }
    }
    /* The region table changes under core.lock only. */
    g_hash_table_iter_init(&it, s->regions);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        struct rcolo_region *r = value;
        if (__atomic_load_n(&r->mr, __ATOMIC_ACQUIRE)) {
            out->regions++;
            out->registered_bytes += r->length;
        }
    }
    pthread_mutex_unlock(&s->core.lock);
    return 0;
}
