/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Thin wrappers over libibverbs / librdmacm: QP and CQ setup, message
 * slot rings, interruptible waits, and error texts.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "internal.h"

int rcolo_set_error(struct rcolo_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

/* --------------------------------------------------------------- slots */

int rcolo_slots_init(struct rcolo_slots *r, struct ibv_pd *pd, uint32_t count,
                     uint32_t size, enum rcolo_wr_type type,
                     struct rcolo_error *err)
{
    size_t total = (size_t)count * size;

    memset(r, 0, sizeof(*r));
    r->count = count;
    r->size = size;
    if (posix_memalign((void **)&r->buf, 4096, total)) {
        return rcolo_set_error(err, -ENOMEM, "out of memory (%zu bytes)",
                               total);
    }
    memset(r->buf, 0, total);
    r->ctx = g_new0(struct rcolo_wr_ctx, count);
    r->busy = g_new0(bool, count);
    for (uint32_t i = 0; i < count; i++) {
        r->ctx[i].type = type;
        r->ctx[i].slot = i;
    }
    /* Message buffers are local only: no remote access of any kind. */
    r->mr = ibv_reg_mr(pd, r->buf, total, IBV_ACCESS_LOCAL_WRITE);
    if (!r->mr) {
        return rcolo_reg_mr_error(err, errno, total, "message buffers");
    }
    return 0;
}

void rcolo_slots_fini(struct rcolo_slots *r)
{
    if (r->mr) {
        ibv_dereg_mr(r->mr);
    }
    free(r->buf);
    g_free(r->ctx);
    g_free(r->busy);
    memset(r, 0, sizeof(*r));
}

int rcolo_post_recv_slot(struct ibv_qp *qp, struct rcolo_slots *r, uint32_t i)
{
    struct ibv_sge sge = {
        .addr = (uintptr_t)rcolo_slot_buf(r, i),
        .length = r->size,
        .lkey = r->mr->lkey,
    };
    struct ibv_recv_wr wr = {
        .wr_id = (uintptr_t)&r->ctx[i],
        .sg_list = &sge,
        .num_sge = 1,
    };
    struct ibv_recv_wr *bad;

    return -ibv_post_recv(qp, &wr, &bad);
}

/* ---------------------------------------------------------------- QPs */

int rcolo_qp_create(struct rdma_cm_id *id, struct ibv_pd *pd,
                    struct rcolo_qp_res *res, uint32_t send_wr,
                    uint32_t recv_wr, struct rcolo_error *err)
{
    struct ibv_qp_init_attr attr = {
        .cap = {.max_send_wr = send_wr,
                .max_recv_wr = recv_wr,
                .max_send_sge = 1,
                .max_recv_sge = 1},
        .qp_type = IBV_QPT_RC,
        .sq_sig_all = 0,
    };

    res->comp = ibv_create_comp_channel(id->verbs);
    if (!res->comp) {
        return rcolo_set_error(err, -errno,
                               "cannot create completion channel: %s",
                               strerror(errno));
    }
    /* Non-blocking, so that a wake-up without an event never blocks. */
    fcntl(res->comp->fd, F_SETFL, fcntl(res->comp->fd, F_GETFL) | O_NONBLOCK);
    res->cq =
        ibv_create_cq(id->verbs, (int)(send_wr + recv_wr), NULL, res->comp, 0);
    if (!res->cq) {
        return rcolo_set_error(err, -errno, "cannot create CQ of %u: %s",
                               send_wr + recv_wr, strerror(errno));
    }
    attr.send_cq = res->cq;
    attr.recv_cq = res->cq;
    if (rdma_create_qp(id, pd, &attr)) {
        return rcolo_set_error(err, -errno,
                               "cannot create RC QP (%u send, %u recv WRs): %s",
                               send_wr, recv_wr, strerror(errno));
    }
    return 0;
}

void rcolo_qp_destroy(struct rdma_cm_id *id, struct rcolo_qp_res *res)
{
    if (id && id->qp) {
        rdma_destroy_qp(id);
    }
    if (res->cq) {
        ibv_destroy_cq(res->cq);
        res->cq = NULL;
    }
    if (res->comp) {
        ibv_destroy_comp_channel(res->comp);
        res->comp = NULL;
    }
}

int rcolo_cq_wait(struct rcolo_qp_res *res, int abort_fd, int timeout_ms)
{
    struct pollfd pfd[2] = {
        {.fd = res->comp->fd, .events = POLLIN},
        {.fd = abort_fd, .events = POLLIN},
    };
    struct ibv_cq *cq;
    void *ctx;

    for (;;) {
        int n = poll(pfd, 2, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (n == 0) {
            return 0;
        }
        if (pfd[1].revents) {
            return -ECANCELED;
        }
        break;
    }
    /* The comp channel fd is non-blocking: a spurious wake is fine. */
    if (ibv_get_cq_event(res->comp, &cq, &ctx) == 0) {
        ibv_ack_cq_events(cq, 1);
    }
    return 1;
}

int rcolo_reg_mr_error(struct rcolo_error *err, int errnum, uint64_t length,
                       const char *what)
{
    struct rlimit rl;

    if ((errnum == ENOMEM || errnum == EPERM || errnum == EAGAIN) &&
        getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        return rcolo_set_error(
            err, -ENOMEM,
            "cannot register %s (%llu MiB): locked-memory limit is %llu KiB; "
            "raise it with 'ulimit -l unlimited' (or LimitMEMLOCK=infinity "
            "for a systemd service, --ulimit memlock=-1 for a container)",
            what, (unsigned long long)(length >> 20),
            (unsigned long long)(rl.rlim_cur >> 10));
    }
    return rcolo_set_error(err, -errnum, "cannot register %s (%llu MiB): %s",
                           what, (unsigned long long)(length >> 20),
                           strerror(errnum));
}

void rcolo_cm_tune(struct rdma_cm_id *id)
{
    /* ~67 ms per retry, 7 retries: a dead peer shows as a failed WR within
     * about half a second instead of the provider's default (seconds). */
    uint8_t timeout = 14;

    rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &timeout,
                    sizeof(timeout));
}

/* ---------------------------------------------------------------- CM */

static const char *cm_event_name(enum rdma_cm_event_type t)
{
    return rdma_event_str(t);
}

int rcolo_cm_wait(struct rdma_event_channel *ch, enum rdma_cm_event_type type,
                  int timeout_ms, int abort_fd, void *pdata, size_t *pdata_len,
                  int *reject_status, struct rcolo_error *err)
{
    struct pollfd pfd[2] = {
        {.fd = ch->fd, .events = POLLIN},
        {.fd = abort_fd, .events = POLLIN},
    };
    int64_t deadline = rcolo_deadline(timeout_ms);
    struct rdma_cm_event *ev;

    for (;;) {
        int n = poll(pfd, abort_fd >= 0 ? 2 : 1, rcolo_deadline_ms(deadline));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return rcolo_set_error(err, -errno, "poll: %s", strerror(errno));
        }
        if (n == 0) {
            return rcolo_set_error(err, -ETIMEDOUT, "timed out waiting for %s",
                                   cm_event_name(type));
        }
        if (abort_fd >= 0 && pfd[1].revents) {
            return rcolo_set_error(err, -ECANCELED, "session shut down");
        }
        if (rdma_get_cm_event(ch, &ev)) {
            if (errno == EAGAIN) {
                continue;
            }
            return rcolo_set_error(err, -errno, "rdma_get_cm_event: %s",
                                   strerror(errno));
        }
        break;
    }

    enum rdma_cm_event_type got = ev->event;
    int status = ev->status;
    if (pdata && pdata_len) {
        size_t n = 0;
        if ((got == RDMA_CM_EVENT_ESTABLISHED ||
             got == RDMA_CM_EVENT_CONNECT_RESPONSE ||
             got == RDMA_CM_EVENT_REJECTED) &&
            ev->param.conn.private_data) {
            n = ev->param.conn.private_data_len;
            if (n > *pdata_len) {
                n = *pdata_len;
            }
            memcpy(pdata, ev->param.conn.private_data, n);
        }
        *pdata_len = n;
    }
    rdma_ack_cm_event(ev);

    if (got == type) {
        return 0;
    }
    if (reject_status) {
        *reject_status = status;
    }
    switch (got) {
    case RDMA_CM_EVENT_REJECTED:
        return rcolo_set_error(err, -ECONNREFUSED, "connection refused");
    case RDMA_CM_EVENT_UNREACHABLE:
        return rcolo_set_error(err, -EHOSTUNREACH, "peer unreachable");
    case RDMA_CM_EVENT_ADDR_ERROR:
        return rcolo_set_error(err, -EADDRNOTAVAIL,
                               "cannot resolve address to an RDMA device "
                               "(no RDMA device on the route to it?)");
    case RDMA_CM_EVENT_ROUTE_ERROR:
        return rcolo_set_error(err, -EHOSTUNREACH, "cannot resolve route");
    case RDMA_CM_EVENT_CONNECT_ERROR:
        return rcolo_set_error(err, -ECONNABORTED, "connection error");
    default:
        return rcolo_set_error(err, -EPROTO, "unexpected CM event %s (%d)",
                               cm_event_name(got), status);
    }
}
