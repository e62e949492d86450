/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Sessions: create, listen/accept (secondary), connect (primary), the
 * session thread (CM events, control connection, keepalive, async events),
 * the error state, shutdown, destroy and statistics.  The handshake itself
 * is handshake.c's.
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

/* ------------------------------------------------------------- create */

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

/* The process's sessions, for async events on a device (see
 * handle_async_event). */
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static GSList *live_sessions; /* under live_lock */

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
    pthread_mutex_lock(&live_lock);
    live_sessions = g_slist_prepend(live_sessions, s);
    pthread_mutex_unlock(&live_lock);
    *out = s;
    return 0;
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
            destroy = rcolo_handshake_request(s, ev);
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

/*
 * Async events.  A device context is the process's, shared by every session
 * on the device (rdma_cm opens each device once), and each session's thread
 * polls its async fd: the one that reads an event is often not the one it
 * concerns (two sessions in one QEMU while a failback overlaps).  A QP's or
 * CQ's event goes to its owner (their qp_context/cq_context,
 * rcolo_qp_create), a device's or port's to every session on the device.
 * The owner is alive while the event is not acknowledged (ibv_destroy_qp
 * and ibv_destroy_cq wait for that), and is told without taking its lock:
 * @async_event, then its wake-up, from which its own thread fails it.
 */

static void session_wake(struct rcolo_session *s);

static void async_post(struct rcolo_session *to, enum ibv_event_type type)
{
    int none = 0;

    /* The first event is the cause; later ones add nothing. */
    __atomic_compare_exchange_n(&to->async_event, &none, (int)type + 1, false,
                                __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    session_wake(to);
}

static void handle_async_event(struct rcolo_session *s)
{
    struct ibv_async_event ev;
    struct rcolo_session *owner = NULL;

    if (ibv_get_async_event(s->verbs, &ev)) {
        return;
    }
    switch (ev.event_type) {
    case IBV_EVENT_QP_FATAL:
    case IBV_EVENT_QP_REQ_ERR:
    case IBV_EVENT_QP_ACCESS_ERR:
        owner = ev.element.qp->qp_context;
        break;
    case IBV_EVENT_CQ_ERR:
        owner = ev.element.cq->cq_context;
        break;
    case IBV_EVENT_DEVICE_FATAL:
    case IBV_EVENT_PORT_ERR:
        pthread_mutex_lock(&live_lock);
        for (GSList *l = live_sessions; l; l = l->next) {
            struct rcolo_session *t = l->data;

            if (t->verbs == s->verbs) {
                async_post(t, ev.event_type);
            }
        }
        pthread_mutex_unlock(&live_lock);
        break;
    default:
        break;
    }
    if (owner) {
        async_post(owner, ev.event_type);
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
        int posted = __atomic_exchange_n(&s->async_event, 0, __ATOMIC_SEQ_CST);
        if (posted) {
            rcolo_fail_locked(&s->core, -EIO, "RDMA async event: %s",
                              ibv_event_type_str(posted - 1));
        }
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
        /* Data channels the secondary accepted: the primary owes each
         * its connection's completion (its RTU) too. */
        for (unsigned i = 0; !s->core.status && i < RCOLO_MAX_CHANNELS; i++) {
            struct rcolo_channel *ch = s->chan[i];

            if (s->role != RCOLO_SECONDARY || !ch ||
                ch->state != RCOLO_CHAN_CONNECTING) {
                continue;
            }
            int left = rcolo_deadline_ms(ch->accept_deadline);
            if (left == 0) {
                rcolo_fail_locked(&s->core, -ETIMEDOUT,
                                  "data channel %u: the primary did not "
                                  "complete the connection within %d ms "
                                  "(stalled?)",
                                  i, s->core.timeout_ms);
            } else if (timeout < 0 || left < timeout) {
                timeout = left;
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
    ret = rcolo_path_resolve(uri, true, &ai, err);
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
        ret = rcolo_regions_attach(s, s->listen_id->verbs, err);
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
        ret = rcolo_core_error(&s->core,
                               err); /* a stall is the session's -ETIMEDOUT */
    } else if (ret == -ETIMEDOUT) {
        rcolo_set_error(err, ret, "no primary connected within %d ms",
                        timeout_ms);
    }
    pthread_mutex_unlock(&s->core.lock);
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
    if (ret == 0) {
        ret = rcolo_handshake_connect(s, deadline, err);
    }
    if (ret == 0) {
        ret = session_start_thread(s, err);
    }
    if (ret) {
        rcolo_session_destroy(s);
        return ret;
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
        rcolo_core_error(&s->core, err);
    }
    pthread_mutex_unlock(&s->core.lock);
    if (ret) {
        rcolo_session_destroy(s);
        return ret;
    }
    *out = s;
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
    /* No device event for it from now on; QP and CQ events still come,
     * until they are destroyed below (each waits for its events). */
    pthread_mutex_lock(&live_lock);
    live_sessions = g_slist_remove(live_sessions, s);
    pthread_mutex_unlock(&live_lock);
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
    explicit_bzero(&s->chal, sizeof(s->chal));
    explicit_bzero(s->uri.token, sizeof(s->uri.token));
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
    out->challenges_issued = s->chal.issued;
    out->hellos_slowed = s->chal.slowed;
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
