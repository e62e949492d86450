/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The control connection: one RC QP per session carrying the region table,
 * the byte stream (QEMU's migration stream and COLO's return path) and the
 * stream's credits, with credit-based flow control over a fixed pool of
 * receive slots (bounded memory both ways).
 *
 * The session thread reaps the control CQ (rcolo_ctl_poll) under the
 * session lock; stream readers and writers (stream.c) run in the caller's
 * threads and wait on the session's condition variable.
 */
#include <endian.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

int rcolo_ctl_setup(struct rcolo_session *s, struct rdma_cm_id *id,
                    struct rcolo_error *err)
{
    struct rcolo_ctl *c = &s->ctl;
    int ret;

    c->id = id;
    ret = rcolo_qp_create(id, s->pd, s, &c->res, RCOLO_CTL_SEND, RCOLO_CTL_RECV,
                          err);
    if (!ret) {
        ret = rcolo_slots_init(&c->send, s->pd, RCOLO_CTL_SEND,
                               RCOLO_STREAM_SLOT_SIZE, RCOLO_WR_SEND_SLOT, err);
    }
    if (!ret) {
        ret = rcolo_slots_init(&c->recv, s->pd, RCOLO_CTL_RECV,
                               RCOLO_STREAM_SLOT_SIZE, RCOLO_WR_RECV_SLOT, err);
    }
    for (uint32_t i = 0; !ret && i < RCOLO_CTL_RECV; i++) {
        ret = rcolo_slots_post_recv(id->qp, &c->recv, i);
        if (ret) {
            ret = rcolo_set_error(err, ret, "cannot post receive: %s",
                                  strerror(-ret));
        }
    }
    if (ret) {
        return ret;
    }
    ibv_req_notify_cq(c->res.cq, 0);
    rcolo_credits_init(&c->credits, RCOLO_STREAM_SLOTS);
    c->credit_return = (struct rcolo_credit_return){
        .batch = rcolo_credit_batch(RCOLO_STREAM_SLOTS)};
    rcolo_fifo_init(&c->ready_q, G_N_ELEMENTS(c->ready));
    c->read_off = 0;
    c->eof = false;
    return 0;
}

void rcolo_ctl_teardown(struct rcolo_session *s)
{
    struct rcolo_ctl *c = &s->ctl;

    if (c->id) {
        rcolo_qp_destroy(c->id, &c->res);
        rdma_destroy_id(c->id);
        c->id = NULL;
    } else {
        rcolo_qp_destroy(NULL, &c->res);
    }
    rcolo_slots_fini(&c->send);
    rcolo_slots_fini(&c->recv);
    c->ready_q.count = 0;
}

void rcolo_ctl_update_fd_locked(struct rcolo_session *s)
{
    struct rcolo_ctl *c = &s->ctl;
    bool want = c->ready_q.count > 0 || c->eof || s->core.status != 0;
    uint64_t v = 1;

    if (want && !c->fd_signaled) {
        if (write(c->fd, &v, sizeof(v)) == sizeof(v)) {
            c->fd_signaled = true;
        }
    } else if (!want && c->fd_signaled) {
        if (read(c->fd, &v, sizeof(v)) == sizeof(v)) {
            c->fd_signaled = false;
        }
    }
}

/* ------------------------------------------------------------ sending */

struct send_wait {
    struct rcolo_session *s;
    bool credit;
};

static bool can_send(void *arg)
{
    struct send_wait *w = arg;
    struct rcolo_ctl *c = &w->s->ctl;

    return !rcolo_fifo_full(&c->send.inflight) &&
           (!w->credit || c->credits.avail > 0);
}

static int acquire(struct rcolo_session *s, bool credit, int64_t deadline,
                   bool nonblock)
{
    struct send_wait w = {.s = s, .credit = credit};
    int ret;

    if (nonblock) {
        ret = rcolo_status(&s->core);
        if (!ret && !can_send(&w)) {
            ret = -EAGAIN;
        }
    } else if (!can_send(&w)) {
        int64_t start = rcolo_now_ns();
        uint64_t waited;

        ret = rcolo_wait_locked(&s->core, can_send, &w, deadline);
        /* How close a healthy session came to the stall timeout. */
        waited = (uint64_t)(rcolo_now_ns() - start);
        if (waited > s->stats.stream_owed_wait_ns_max) {
            s->stats.stream_owed_wait_ns_max = waited;
        }
    } else {
        ret = 0; /* as rcolo_wait: what it waits for comes first */
    }
    if (ret == -ETIMEDOUT) {
        /* Only the peer frees stream slots and credits: it is stalled. */
        return rcolo_fail_locked(&s->core, -ETIMEDOUT,
                                 "control connection: the peer %s for %d ms "
                                 "(stalled or overloaded?)",
                                 credit && s->ctl.credits.avail == 0
                                     ? "read no stream data"
                                     : "acknowledged no message",
                                 s->core.owed_ms);
    }
    if (ret) {
        return ret;
    }
    if (credit) {
        rcolo_credits_take(&s->ctl.credits);
    }
    return rcolo_slots_acquire(&s->ctl.send);
}

int rcolo_ctl_acquire_locked(struct rcolo_session *s, bool credit,
                             bool nonblock)
{
    return acquire(s, credit, rcolo_owed_deadline(&s->core), nonblock);
}

static int post_locked(struct rcolo_session *s, int slot, uint32_t len)
{
    struct rcolo_ctl *c = &s->ctl;
    struct ibv_send_wr wr;
    struct ibv_sge sge;

    rcolo_slots_send_wr(&c->send, (uint32_t)slot, len, c->res.max_inline, &wr,
                        &sge);
    int ret = rcolo_post_send(c->id, &wr);
    if (ret) {
        return rcolo_fail_locked(&s->core, ret, "control connection: post: %s",
                                 strerror(-ret));
    }
    return 0;
}

int rcolo_ctl_post_stream_locked(struct rcolo_session *s, int slot,
                                 uint8_t type, uint32_t len)
{
    struct rcolo_ctl *c = &s->ctl;
    /* Piggy-back whatever credits we owe the peer. */
    uint16_t credits = (uint16_t)rcolo_credit_return_all(&c->credit_return);

    rcolo_stream_hdr_encode(rcolo_slot_buf(&c->send, (uint32_t)slot), type, len,
                            credits);
    return post_locked(s, slot, RCOLO_HDR_LEN + len);
}

/* Return freed receive slots to the peer once a batch is reached. */
static int return_credits_locked(struct rcolo_session *s, uint32_t n)
{
    struct rcolo_ctl *c = &s->ctl;
    uint32_t give = rcolo_credit_return_add(&c->credit_return, n);
    int slot;

    if (!give) {
        return 0;
    }
    slot = acquire(s, false, rcolo_owed_deadline(&s->core), false);
    if (slot < 0) {
        return slot;
    }
    rcolo_credit_encode(rcolo_slot_buf(&c->send, (uint32_t)slot), c->send.size,
                        (uint16_t)give);
    return post_locked(s, slot, RCOLO_HDR_LEN);
}

int rcolo_ctl_send_table_locked(struct rcolo_session *s, int64_t deadline)
{
    struct rcolo_ctl *c = &s->ctl;
    size_t len;
    int slot = acquire(s, true, deadline, false);
    int ret;

    if (slot < 0) {
        return slot;
    }
    ret = rcolo_region_table_build_locked(
        s, rcolo_slot_buf(&c->send, (uint32_t)slot), c->send.size, &len);
    if (ret) {
        /* The slot and credit are spent: the session cannot go on. */
        return rcolo_fail_locked(&s->core, ret, "region table too large");
    }
    return post_locked(s, slot, (uint32_t)len);
}

int rcolo_regions_publish(struct rcolo_session *s, struct rcolo_error *err)
{
    int ret;

    if (s->role != RCOLO_SECONDARY) {
        return rcolo_set_error(err, -EINVAL, "only the secondary publishes");
    }
    pthread_mutex_lock(&s->core.lock);
    if (s->state != RCOLO_SESSION_READY && s->core.status == 0) {
        pthread_mutex_unlock(&s->core.lock);
        return rcolo_set_error(err, -ENOTCONN, "no primary connected yet");
    }
    ret = rcolo_ctl_send_table_locked(s, rcolo_owed_deadline(&s->core));
    if (ret) {
        rcolo_set_error(err, ret, "cannot publish regions: %s",
                        s->core.status ? s->core.error : strerror(-ret));
    }
    pthread_mutex_unlock(&s->core.lock);
    return ret;
}

/* ---------------------------------------------------------- keepalive */

static int64_t timeout_ns(const struct rcolo_session *s)
{
    return (int64_t)s->core.timeout_ms * 1000000;
}

/* A ping or a reply, header only, needing no credit: at most one of each
 * is unanswered, and the peer's RCOLO_STREAM_EXTRA receive slots have room
 * for them beside the credit-only messages.  -EAGAIN: no send slot now
 * (the SENDs in flight complete, and their completions wake the session
 * thread, which tries again). */
static int send_keepalive_locked(struct rcolo_session *s, bool reply)
{
    struct rcolo_ctl *c = &s->ctl;
    int slot = acquire(s, false, -1, true);

    if (slot < 0) {
        return slot;
    }
    rcolo_keepalive_encode(rcolo_slot_buf(&c->send, (uint32_t)slot),
                           c->send.size, reply);
    return post_locked(s, slot, RCOLO_HDR_LEN);
}

int rcolo_ctl_keepalive_locked(struct rcolo_session *s)
{
    struct rcolo_ctl *c = &s->ctl;
    int64_t now, next;

    if (s->state != RCOLO_SESSION_READY || s->core.status) {
        return -1;
    }
    now = rcolo_now_ns();
    if (c->ka_reply_owed && send_keepalive_locked(s, true) == 0) {
        c->ka_reply_owed = false;
    }
    if (c->ka_sent) {
        next = c->ka_sent + timeout_ns(s);
        if (now >= next) {
            rcolo_fail_locked(&s->core, -ETIMEDOUT,
                              "the peer stalled: it answered no keepalive "
                              "for %d ms (its process is stopped or hung?)",
                              s->core.timeout_ms);
            return -1;
        }
    } else {
        if (!c->ka_next) {
            /* A ping every quarter of the timeout. */
            c->ka_next = now + timeout_ns(s) / 4;
        }
        next = c->ka_next;
        if (now >= next && send_keepalive_locked(s, false) == 0) {
            c->ka_sent = now;
            next = now + timeout_ns(s);
        }
    }
    if (s->core.status) {
        return -1;
    }
    /* Rounded up, and never 0: a ping or reply without a send slot waits
     * for a completion, not in a busy loop. */
    return next > now ? (int)((next - now + 999999) / 1000000) : 1;
}

static void on_keepalive(struct rcolo_session *s, const uint8_t *buf,
                         uint32_t len)
{
    struct rcolo_ctl *c = &s->ctl;
    bool reply;

    if (rcolo_keepalive_decode(buf, len, &reply)) {
        rcolo_fail_locked(&s->core, -EPROTO,
                          "control connection: bad keepalive");
    } else if (reply && !c->ka_sent) {
        rcolo_fail_locked(&s->core, -EPROTO,
                          "control connection: keepalive reply to no ping");
    } else if (reply) {
        c->ka_sent = 0;
        c->ka_next = rcolo_now_ns() + timeout_ns(s) / 4;
    } else if (c->ka_reply_owed) {
        rcolo_fail_locked(&s->core, -EPROTO,
                          "control connection: a second keepalive ping "
                          "before the first was answered");
    } else {
        c->ka_reply_owed = true; /* answered by rcolo_ctl_keepalive_locked */
    }
}

/* ------------------------------------------------------------ reading */

bool rcolo_ctl_stream_pending_locked(struct rcolo_session *s)
{
    return s->ctl.ready_q.count > 0;
}

const uint8_t *rcolo_ctl_stream_head_locked(struct rcolo_session *s,
                                            uint32_t *payload)
{
    struct rcolo_ctl *c = &s->ctl;
    uint32_t len;

    if (c->ready_q.count == 0) {
        return NULL;
    }
    const uint8_t *msg =
        rcolo_slot_buf(&c->recv, c->ready[rcolo_fifo_front(&c->ready_q)]);
    /* The header was validated on arrival: only its length is needed. */
    memcpy(&len, msg + 4, sizeof(len));
    *payload = be32toh(len) - RCOLO_HDR_LEN;
    return msg + RCOLO_HDR_LEN;
}

static void repost(struct rcolo_session *s, uint32_t slot)
{
    int ret = rcolo_slots_post_recv(s->ctl.id->qp, &s->ctl.recv, slot);

    if (ret) {
        rcolo_fail_locked(&s->core, ret, "control connection: repost: %s",
                          strerror(-ret));
    }
}

void rcolo_ctl_stream_pop_locked(struct rcolo_session *s)
{
    struct rcolo_ctl *c = &s->ctl;
    uint32_t slot = c->ready[rcolo_fifo_pop(&c->ready_q)];

    c->read_off = 0;
    repost(s, slot);
    return_credits_locked(s, 1);
}

/* ------------------------------------------------------ completions */

static void on_region_table(struct rcolo_session *s, const uint8_t *buf,
                            uint32_t len)
{
    if (s->role != RCOLO_PRIMARY) {
        rcolo_fail_locked(&s->core, -EPROTO,
                          "control connection: region table sent to the "
                          "secondary");
        return;
    }
    /* Decode into a scratch table: a malformed update must not leave a
     * half-written table behind (the session fails anyway). */
    struct rcolo_region_entry *t =
        g_new0(struct rcolo_region_entry, RCOLO_MAX_REGIONS);
    int n = rcolo_region_table_decode(buf, len, t, RCOLO_MAX_REGIONS);
    if (n < 0) {
        g_free(t);
        rcolo_fail_locked(&s->core, -EPROTO,
                          "control connection: malformed region table");
        return;
    }
    rcolo_region_table_set_locked(s, t, n);
    s->ctl.table_received = true;
}

static void ctl_completion(struct rcolo_session *s, struct ibv_wc *wc)
{
    struct rcolo_wr_ctx *ctx = rcolo_wc_ctx(wc);
    struct rcolo_ctl *c = &s->ctl;
    struct rcolo_hdr h;

    if (wc->status != IBV_WC_SUCCESS) {
        rcolo_fail_locked(&s->core, rcolo_wc_errno(wc->status),
                          "control connection: %s failed: %s",
                          rcolo_wc_what(wc), ibv_wc_status_str(wc->status));
        return;
    }
    if (!rcolo_wc_opcode_ok(wc)) {
        rcolo_fail_locked(&s->core, -EPROTO,
                          "control connection: completion of another kind "
                          "than posted (opcode %d, flags 0x%x)",
                          (int)wc->opcode, (unsigned)wc->wc_flags);
        return;
    }
    if (ctx->type == RCOLO_WR_SEND_SLOT) {
        if (!rcolo_slots_retire(&c->send, ctx->slot)) {
            rcolo_fail_locked(&s->core, -EIO,
                              "control connection: send completion out of "
                              "order");
            return;
        }
        pthread_cond_broadcast(&s->core.cond);
        return;
    }

    c->recv.held[ctx->slot] = true;
    const uint8_t *buf = rcolo_slot_buf(&c->recv, ctx->slot);
    if (rcolo_hdr_decode(buf, wc->byte_len, &h)) {
        rcolo_fail_locked(&s->core, -EPROTO,
                          "control connection: malformed message");
        return;
    }
    if (!rcolo_credits_give(&c->credits, h.credits)) {
        rcolo_fail_locked(&s->core, -EPROTO,
                          "control connection: peer returned more credits "
                          "than it had");
        return;
    }
    switch (h.type) {
    case RCOLO_MSG_CREDIT:
        if (h.length != RCOLO_HDR_LEN || h.flags) {
            rcolo_fail_locked(&s->core, -EPROTO,
                              "control connection: bad credit message");
            return;
        }
        repost(s, ctx->slot);
        break;
    case RCOLO_MSG_REGION_TABLE:
        on_region_table(s, buf, wc->byte_len);
        repost(s, ctx->slot);
        /* Counted now, sent with the next stream write or credit batch. */
        c->credit_return.pending++;
        break;
    case RCOLO_MSG_STREAM:
        if (h.length == RCOLO_HDR_LEN || h.flags ||
            c->ready_q.count >= RCOLO_CTL_RECV) {
            rcolo_fail_locked(&s->core, -EPROTO,
                              "control connection: bad stream message");
            return;
        }
        c->ready[rcolo_fifo_push(&c->ready_q)] = ctx->slot;
        s->stats.stream_bytes_received += h.length - RCOLO_HDR_LEN;
        break;
    case RCOLO_MSG_KEEPALIVE:
        on_keepalive(s, buf, wc->byte_len);
        repost(s, ctx->slot);
        break;
    case RCOLO_MSG_STREAM_END:
        if (h.length != RCOLO_HDR_LEN || h.flags) {
            rcolo_fail_locked(&s->core, -EPROTO,
                              "control connection: bad end marker");
            return;
        }
        c->eof = true;
        repost(s, ctx->slot);
        c->credit_return.pending++;
        break;
    default:
        rcolo_fail_locked(&s->core, -EPROTO,
                          "control connection: unexpected message type %u",
                          h.type);
        return;
    }
    rcolo_ctl_update_fd_locked(s);
    pthread_cond_broadcast(&s->core.cond);
}

void rcolo_ctl_poll(struct rcolo_session *s)
{
    struct rcolo_ctl *c = &s->ctl;
    struct ibv_cq *cq;
    void *ctx;
    struct ibv_wc wc[8];

    if (ibv_get_cq_event(c->res.comp, &cq, &ctx) == 0) {
        ibv_ack_cq_events(cq, 1);
    }
    ibv_req_notify_cq(c->res.cq, 0);
    for (;;) {
        int n = ibv_poll_cq(c->res.cq, 8, wc);
        if (n < 0) {
            /* As on a data channel: a CQ that cannot be polled is lost. */
            rcolo_fail(&s->core, -EIO,
                       "control connection: ibv_poll_cq failed (%d)", n);
            break;
        }
        if (n == 0) {
            break;
        }
        pthread_mutex_lock(&s->core.lock);
        for (int i = 0; i < n; i++) {
            ctl_completion(s, &wc[i]);
        }
        pthread_mutex_unlock(&s->core.lock);
    }
}
