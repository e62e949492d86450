/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The reliable byte stream (QEMU's migration stream and COLO's return
 * path), on the control connection's STREAM messages (ctl.c).  Writers
 * pack iovecs into messages of up to 64 KiB; readers copy out of the
 * received slots in order.
 */
#include <errno.h>
#include <string.h>
#include <sys/uio.h>

#include "internal.h"

int rcolo_stream_fd(struct rcolo_session *s)
{
    return s->ctl.fd;
}

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
    struct rcolo_ctl *c = &s->ctl;
    size_t done = 0, total = 0;
    size_t skip = 0;
    int idx = 0;
    int ret = 0;

    if (!c->id) {
        return -ENOTCONN;
    }
    if (iovcnt < 0 || (iovcnt > 0 && !iov)) {
        return -EINVAL;
    }
    for (int k = 0; k < iovcnt; k++) {
        total += iov[k].iov_len;
    }
    pthread_mutex_lock(&c->write_lock);
    pthread_mutex_lock(&s->core.lock);
    /*
     * Pack the elements into as few STREAM messages as fit: QEMU's
     * QEMUFile hands over 8-byte headers and 4 KiB pages as separate
     * elements, and a message per element would spend a 64 KiB receive
     * slot (and a credit) on each.
     */
    while (done < total) {
        int slot = rcolo_ctl_acquire_locked(s, true, nonblock);
        if (slot < 0) {
            ret = slot;
            break;
        }
        uint8_t *msg = rcolo_slot_buf(&c->send, (uint32_t)slot);
        size_t chunk = gather(msg + RCOLO_HDR_LEN, RCOLO_STREAM_PAYLOAD, iov,
                              iovcnt, &idx, &skip);
        ret = rcolo_ctl_post_stream_locked(s, slot, RCOLO_MSG_STREAM,
                                           (uint32_t)chunk);
        if (ret) {
            break;
        }
        done += chunk;
        s->stats.stream_bytes_sent += chunk;
        s->stats.stream_messages_sent++;
    }
    pthread_mutex_unlock(&s->core.lock);
    pthread_mutex_unlock(&c->write_lock);
    return done > 0 || total == 0 ? (ssize_t)done : ret;
}

ssize_t rcolo_stream_write(struct rcolo_session *s, const void *buf, size_t len,
                           bool nonblock)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};

    return rcolo_stream_writev(s, &iov, 1, nonblock);
}

static bool readable(void *arg)
{
    struct rcolo_session *s = arg;

    return rcolo_ctl_stream_pending_locked(s) || s->ctl.eof ||
           s->core.status != 0;
}

ssize_t rcolo_stream_read(struct rcolo_session *s, void *buf, size_t len,
                          bool nonblock)
{
    struct rcolo_ctl *c = &s->ctl;
    uint8_t *p = buf;
    size_t done = 0;
    ssize_t ret = 0;
    const uint8_t *msg;
    uint32_t payload;

    if (!c->id) {
        return -ENOTCONN;
    }
    if (len == 0) {
        return 0;
    }
    pthread_mutex_lock(&s->core.lock);
    if (nonblock && !readable(s)) {
        pthread_mutex_unlock(&s->core.lock);
        return -EAGAIN;
    }
    rcolo_wait_locked(&s->core, readable, s, -1);
    /* Buffered data is delivered before an error or the end. */
    while (done < len && (msg = rcolo_ctl_stream_head_locked(s, &payload))) {
        size_t n = payload - c->read_off;
        if (n > len - done) {
            n = len - done;
        }
        memcpy(p + done, msg + c->read_off, n);
        done += n;
        c->read_off += (uint32_t)n;
        if (c->read_off == payload) {
            rcolo_ctl_stream_pop_locked(s);
        }
    }
    if (done > 0) {
        ret = (ssize_t)done;
    } else if (s->core.status) {
        ret = s->core.status;
    } else {
        ret = 0; /* end of stream */
    }
    rcolo_ctl_update_fd_locked(s);
    pthread_mutex_unlock(&s->core.lock);
    return ret;
}

int rcolo_stream_close(struct rcolo_session *s)
{
    struct rcolo_ctl *c = &s->ctl;
    int ret;

    if (!c->id) {
        return -ENOTCONN;
    }
    pthread_mutex_lock(&c->write_lock);
    pthread_mutex_lock(&s->core.lock);
    ret = rcolo_ctl_acquire_locked(s, true, false);
    if (ret >= 0) {
        ret = rcolo_ctl_post_stream_locked(s, ret, RCOLO_MSG_STREAM_END, 0);
    }
    pthread_mutex_unlock(&s->core.lock);
    pthread_mutex_unlock(&c->write_lock);
    return ret;
}

int rcolo_stream_writable(struct rcolo_session *s)
{
    struct rcolo_ctl *c = &s->ctl;
    int ret;

    pthread_mutex_lock(&s->core.lock);
    ret = s->core.status
              ? s->core.status
              : (c->credits.avail > 0 && !rcolo_fifo_full(&c->send.inflight));
    pthread_mutex_unlock(&s->core.lock);
    return ret;
}
