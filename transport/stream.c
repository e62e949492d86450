/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The control connection: a reliable byte stream (QEMU's migration stream
 * and COLO's return path) plus the region table, with credit-based flow
 * control over a fixed pool of receive slots (bounded memory both ways).
 *
 * The session thread reaps the control CQ (rcolo_ctl_completion); readers
 * and writers run in the caller's threads and wait on the session's
 * condition variable.
 */
#include <errno.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal.h"

int rcolo_stream_init(struct rcolo_session *s, struct rcolo_error *err)
{
    struct rcolo_stream *st = &s->stream;

    rcolo_credits_init(&st->credits, RCOLO_STREAM_SLOTS);
    st->credit_return.batch = RCOLO_STREAM_SLOTS / 4;
    st->credit_return.pending = 0;
    st->ready_head = st->ready_count = 0;
    st->read_off = 0;
    st->eof = false;
    return 0;
}

void rcolo_stream_fini(struct rcolo_session *s)
{
    s->stream.ready_count = 0;
}

void rcolo_stream_update_fd_locked(struct rcolo_session *s)
{
    struct rcolo_stream *st = &s->stream;
    bool want = st->ready_count > 0 || st->eof || s->status != 0;
    uint64_t v = 1;

    if (want && !st->fd_signaled) {
        if (write(st->fd, &v, sizeof(v)) == sizeof(v)) {
            st->fd_signaled = true;
        }
    } else if (!want && st->fd_signaled) {
        if (read(st->fd, &v, sizeof(v)) == sizeof(v)) {
            st->fd_signaled = false;
        }
    }
}

int rcolo_stream_fd(struct rcolo_session *s)
{
    return s->stream.fd;
}

/* ------------------------------------------------------ control sends */

static int free_send_slot(struct rcolo_session *s, uint32_t *slot)
{
    struct rcolo_slots *r = &s->ctl_send;

    for (uint32_t k = 0; k < r->count; k++) {
        uint32_t i = (r->next + k) % r->count;
        if (!r->busy[i]) {
            r->next = (i + 1) % r->count;
            *slot = i;
            return 0;
        }
    }
    return -EAGAIN;
}

int rcolo_ctl_get_send_slot_locked(struct rcolo_session *s, int64_t deadline,
                                   uint32_t *slot)
{
    for (;;) {
        if (s->status) {
            return s->status;
        }
        if (free_send_slot(s, slot) == 0) {
            return 0;
        }
        if (rcolo_session_wait_locked(s, deadline) == -ETIMEDOUT) {
            return -ETIMEDOUT;
        }
    }
}

int rcolo_ctl_post_send_locked(struct rcolo_session *s, uint32_t slot,
                               uint32_t len)
{
    struct ibv_sge sge = {
        .addr = (uintptr_t)rcolo_slot_buf(&s->ctl_send, slot),
        .length = len,
        .lkey = s->ctl_send.mr->lkey,
    };
    struct ibv_send_wr wr = {
        .wr_id = (uintptr_t)&s->ctl_send.ctx[slot],
        .sg_list = &sge,
        .num_sge = 1,
        .opcode = IBV_WR_SEND,
        .send_flags = IBV_SEND_SIGNALED,
    };
    struct ibv_send_wr *bad;
    int ret = ibv_post_send(s->ctl_id->qp, &wr, &bad);

    if (ret) {
        return rcolo_session_fail_locked(
            s, -ret, "control connection: post: %s", strerror(ret));
    }
    s->ctl_send.busy[slot] = true;
    return 0;
}

/* Return freed receive slots to the peer once a batch is reached. */
static int return_credits_locked(struct rcolo_session *s, uint32_t n)
{
    uint32_t give = rcolo_credit_return_add(&s->stream.credit_return, n);
    uint32_t slot;
    int ret;

    if (!give) {
        return 0;
    }
    ret = rcolo_ctl_get_send_slot_locked(s, -1, &slot);
    if (ret) {
        return ret;
    }
    rcolo_credit_encode(rcolo_slot_buf(&s->ctl_send, slot), s->ctl_send.size,
                        (uint16_t)give);
    return rcolo_ctl_post_send_locked(s, slot, RCOLO_HDR_LEN);
}

/* -------------------------------------------------- session thread */

static void repost(struct rcolo_session *s, uint32_t slot)
{
    int ret = rcolo_post_recv_slot(s->ctl_id->qp, &s->ctl_recv, slot);
    if (ret) {
        rcolo_session_fail_locked(s, ret, "control connection: repost: %s",
                                  strerror(-ret));
    }
}

static void on_region_table(struct rcolo_session *s, const uint8_t *buf,
                            uint32_t len)
{
    if (s->role != RCOLO_PRIMARY) {
        rcolo_session_fail_locked(s, -EPROTO,
                                  "control connection: region table sent "
                                  "to the secondary");
        return;
    }
    /* Decode into a scratch table: a malformed update must not leave a
     * half-written table behind (the session fails anyway). */
    struct rcolo_region_entry *t =
        g_new0(struct rcolo_region_entry, RCOLO_MAX_REGIONS);
    int n = rcolo_region_table_decode(buf, len, t, RCOLO_MAX_REGIONS);
    if (n < 0) {
        g_free(t);
        rcolo_session_fail_locked(s, -EPROTO,
                                  "control connection: malformed region "
                                  "table");
        return;
    }
    g_free(s->remote);
    s->remote = t;
    s->nremote = n;
    s->table_received = true;
}

void rcolo_ctl_completion(struct rcolo_session *s, struct ibv_wc *wc)
{
    struct rcolo_wr_ctx *ctx = (struct rcolo_wr_ctx *)(uintptr_t)wc->wr_id;
    struct rcolo_stream *st = &s->stream;
    struct rcolo_hdr h;

    if (wc->status != IBV_WC_SUCCESS) {
        rcolo_session_fail_locked(s,
                                  wc->status == IBV_WC_WR_FLUSH_ERR ||
                                          wc->status == IBV_WC_RETRY_EXC_ERR
                                      ? -ECONNRESET
                                      : -EIO,
                                  "control connection: %s",
                                  ibv_wc_status_str(wc->status));
        return;
    }
    if (ctx->type == RCOLO_WR_SEND_SLOT) {
        s->ctl_send.busy[ctx->slot] = false;
        pthread_cond_broadcast(&s->cond);
        return;
    }

    const uint8_t *buf = rcolo_slot_buf(&s->ctl_recv, ctx->slot);
    if (rcolo_hdr_decode(buf, wc->byte_len, &h)) {
        rcolo_session_fail_locked(s, -EPROTO,
                                  "control connection: malformed message");
        return;
    }
    if (!rcolo_credits_give(&st->credits, h.credits)) {
        rcolo_session_fail_locked(s, -EPROTO,
                                  "control connection: peer returned more "
                                  "credits than it had");
        return;
    }
    switch (h.type) {
    case RCOLO_MSG_CREDIT:
        if (h.length != RCOLO_HDR_LEN || h.flags) {
            rcolo_session_fail_locked(s, -EPROTO,
                                      "control connection: bad credit message");
            return;
        }
        repost(s, ctx->slot);
        break;
    case RCOLO_MSG_REGION_TABLE:
        on_region_table(s, buf, wc->byte_len);
        repost(s, ctx->slot);
        /* Counted now, sent with the next stream write or credit batch. */
        st->credit_return.pending++;
        break;
    case RCOLO_MSG_STREAM:
        if (h.length == RCOLO_HDR_LEN || h.flags ||
            st->ready_count >= RCOLO_STREAM_SLOTS + RCOLO_STREAM_EXTRA) {
            rcolo_session_fail_locked(s, -EPROTO,
                                      "control connection: bad stream "
                                      "message");
            return;
        }
        st->ready[(st->ready_head + st->ready_count) %
                  (RCOLO_STREAM_SLOTS + RCOLO_STREAM_EXTRA)] = ctx->slot;
        st->ready_count++;
        s->stats.stream_bytes_received += h.length - RCOLO_HDR_LEN;
        break;
    case RCOLO_MSG_STREAM_END:
        if (h.length != RCOLO_HDR_LEN || h.flags) {
            rcolo_session_fail_locked(s, -EPROTO,
                                      "control connection: bad end marker");
            return;
        }
        st->eof = true;
        repost(s, ctx->slot);
        st->credit_return.pending++;
        break;
    default:
        rcolo_session_fail_locked(s, -EPROTO,
                                  "control connection: unexpected message "
                                  "type %u",
                                  h.type);
        return;
    }
    rcolo_stream_update_fd_locked(s);
    pthread_cond_broadcast(&s->cond);
}

/* ------------------------------------------------------------- API */

/*
 * Gather up to @room bytes from @iov, starting @skip bytes into the element
 * at index *@idx, into @dst; advances *@idx and *@skip past what was taken.
 */
static size_t gather(uint8_t *dst, size_t room, const struct iovec *iov,
                     int iovcnt, int *idx, size_t *skip)
{
    size_t n = 0;

    while (n < room && *idx < iovcnt) {
        size_t avail = iov[*idx].iov_len - *skip;
        size_t take = avail < room - n ? avail : room - n;

        memcpy(dst + n, (const uint8_t *)iov[*idx].iov_base + *skip, take);
        n += take;
        *skip += take;
        if (*skip == iov[*idx].iov_len) {
            ++*idx;
            *skip = 0;
        }
    }
    return n;
}

ssize_t rcolo_stream_writev(struct rcolo_session *s, const struct iovec *iov,
                            int iovcnt, bool nonblock)
{
    struct rcolo_stream *st = &s->stream;
    size_t done = 0, total = 0;
    size_t skip = 0;
    int idx = 0;
    int ret = 0;

    if (!s->ctl_id) {
        return -ENOTCONN;
    }
    if (iovcnt < 0 || (iovcnt > 0 && !iov)) {
        return -EINVAL;
    }
    for (int k = 0; k < iovcnt; k++) {
        total += iov[k].iov_len;
    }
    pthread_mutex_lock(&st->write_lock);
    pthread_mutex_lock(&s->lock);
    /*
     * Pack the elements into as few STREAM messages as fit: QEMU's
     * QEMUFile hands over 8-byte headers and 4 KiB pages as separate
     * elements, and a message per element would spend a 64 KiB receive
     * slot (and a credit) on each.
     */
    while (done < total) {
        uint32_t slot;
        if (s->status) {
            ret = s->status;
            break;
        }
        if (st->credits.avail == 0 || free_send_slot(s, &slot) != 0) {
            if (nonblock) {
                ret = -EAGAIN;
                break;
            }
            rcolo_session_wait_locked(s, -1);
            continue;
        }
        rcolo_credits_take(&st->credits);
        uint8_t *msg = rcolo_slot_buf(&s->ctl_send, slot);
        size_t chunk = gather(msg + RCOLO_HDR_LEN, RCOLO_STREAM_PAYLOAD, iov,
                              iovcnt, &idx, &skip);
        /* Piggy-back whatever credits we owe the peer. */
        uint16_t credits = (uint16_t)st->credit_return.pending;
        st->credit_return.pending = 0;
        rcolo_stream_hdr_encode(msg, RCOLO_MSG_STREAM, (uint32_t)chunk,
                                credits);
        ret = rcolo_ctl_post_send_locked(s, slot,
                                         (uint32_t)(RCOLO_HDR_LEN + chunk));
        if (ret) {
            break;
        }
        done += chunk;
        s->stats.stream_bytes_sent += chunk;
        s->stats.stream_messages_sent++;
    }
    pthread_mutex_unlock(&s->lock);
    pthread_mutex_unlock(&st->write_lock);
    return done > 0 || total == 0 ? (ssize_t)done : ret;
}

ssize_t rcolo_stream_write(struct rcolo_session *s, const void *buf, size_t len,
                           bool nonblock)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};

    return rcolo_stream_writev(s, &iov, 1, nonblock);
}

ssize_t rcolo_stream_read(struct rcolo_session *s, void *buf, size_t len,
                          bool nonblock)
{
    struct rcolo_stream *st = &s->stream;
    const uint32_t ring = RCOLO_STREAM_SLOTS + RCOLO_STREAM_EXTRA;
    uint8_t *p = buf;
    size_t done = 0;
    ssize_t ret = 0;

    if (!s->ctl_id) {
        return -ENOTCONN;
    }
    if (len == 0) {
        return 0;
    }
    pthread_mutex_lock(&s->lock);
    while (st->ready_count == 0 && !st->eof && s->status == 0) {
        if (nonblock) {
            pthread_mutex_unlock(&s->lock);
            return -EAGAIN;
        }
        rcolo_session_wait_locked(s, -1);
    }
    /* Buffered data is delivered before an error or the end. */
    while (done < len && st->ready_count > 0) {
        uint32_t slot = st->ready[st->ready_head];
        const uint8_t *msg = rcolo_slot_buf(&s->ctl_recv, slot);
        uint32_t msg_len;
        memcpy(&msg_len, msg + 4, 4);
        uint32_t payload = be32toh(msg_len) - RCOLO_HDR_LEN;
        size_t n = payload - st->read_off;
        if (n > len - done) {
            n = len - done;
        }
        memcpy(p + done, msg + RCOLO_HDR_LEN + st->read_off, n);
        done += n;
        st->read_off += (uint32_t)n;
        if (st->read_off == payload) {
            st->read_off = 0;
            st->ready_head = (st->ready_head + 1) % ring;
            st->ready_count--;
            repost(s, slot);
            return_credits_locked(s, 1);
        }
    }
    if (done > 0) {
        ret = (ssize_t)done;
    } else if (s->status) {
        ret = s->status;
    } else {
        ret = 0; /* end of stream */
    }
    rcolo_stream_update_fd_locked(s);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int rcolo_stream_close(struct rcolo_session *s)
{
    struct rcolo_stream *st = &s->stream;
    uint32_t slot;
    int ret = 0;

    if (!s->ctl_id) {
        return -ENOTCONN;
    }
    pthread_mutex_lock(&st->write_lock);
    pthread_mutex_lock(&s->lock);
    while (s->status == 0 &&
           (st->credits.avail == 0 || free_send_slot(s, &slot) != 0)) {
        rcolo_session_wait_locked(s, -1);
    }
    if (s->status) {
        ret = s->status;
    } else {
        rcolo_credits_take(&st->credits);
        uint16_t credits = (uint16_t)st->credit_return.pending;
        st->credit_return.pending = 0;
        rcolo_stream_hdr_encode(rcolo_slot_buf(&s->ctl_send, slot),
                                RCOLO_MSG_STREAM_END, 0, credits);
        ret = rcolo_ctl_post_send_locked(s, slot, RCOLO_HDR_LEN);
    }
    pthread_mutex_unlock(&s->lock);
    pthread_mutex_unlock(&st->write_lock);
    return ret;
}

int rcolo_stream_writable(struct rcolo_session *s)
{
    uint32_t slot;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = s->status
              ? s->status
              : (s->stream.credits.avail > 0 && free_send_slot(s, &slot) == 0);
    pthread_mutex_unlock(&s->lock);
    return ret;
}
