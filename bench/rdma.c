/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The rdma-colo transport under the checkpoint drivers.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "rdma-colo.h"

#define REGION_ID  1
#define TIMEOUT_MS 30000

static int parse_uri(const struct options *o, const char *port,
                     struct rcolo_uri *uri)
{
    struct rcolo_error err = {0};
    char text[600];

    if (port) {
        /* "both" mode: the fabric's address, a port chosen by the kernel,
         * the token main.c made (or --token) */
        snprintf(text, sizeof(text), "rdma-colo:%s:%s?channels=%u&token=%s",
                 o->tcp_addr, port, o->channels, o->token);
    } else {
        snprintf(text, sizeof(text), "%s", o->uri);
    }
    if (rcolo_uri_parse(text, uri, &err)) {
        BENCH_ERR("%s", err.message);
        return -EINVAL;
    }
    if (!port) {
        uri->channels = o->channels;
    }
    return 0;
}

static int read_exact(struct rcolo_session *s, void *buf, size_t len)
{
    uint8_t *p = buf;
    size_t got = 0;

    while (got < len) {
        ssize_t n = rcolo_stream_read(s, p + got, len - got, false);
        if (n <= 0) {
            return got == 0 && n == 0 ? 0 : (n < 0 ? (int)n : -EPIPE);
        }
        got += (size_t)n;
    }
    return (int)len;
}

static int write_all(struct rcolo_session *s, const void *buf, size_t len)
{
    ssize_t n = rcolo_stream_write(s, buf, len, false);
    return n == (ssize_t)len ? 0 : (n < 0 ? (int)n : -EIO);
}

/* --------------------------------------------------------------- primary */

struct rdma_primary {
    struct rcolo_session *s;
    struct rcolo_channel *ch[RCOLO_MAX_CHANNELS];
};

static int p_send(void *ctx, unsigned ch, const uint64_t *offs, unsigned n,
                  const uint64_t *zero, unsigned nzero)
{
    struct rdma_primary *p = ctx;
    return rcolo_write_pages(p->ch[ch], REGION_ID, offs, n, zero, nzero);
}

static int p_fence(void *ctx, unsigned ch)
{
    struct rdma_primary *p = ctx;
    int ret = rcolo_channel_fence_post(p->ch[ch]);
    return ret ? ret : rcolo_channel_fence_wait(p->ch[ch], TIMEOUT_MS);
}

static int p_barrier(void *ctx, unsigned ch)
{
    struct rdma_primary *p = ctx;
    int ret = rcolo_channel_barrier_post(p->ch[ch]);
    return ret ? ret : rcolo_channel_fence_wait(p->ch[ch], TIMEOUT_MS);
}

static int p_fence_all(void *ctx)
{
    return rcolo_fence(((struct rdma_primary *)ctx)->s, TIMEOUT_MS);
}

static void p_busy_poll(void *ctx, bool on)
{
    rcolo_session_set_busy_poll(((struct rdma_primary *)ctx)->s, on);
}

static int p_ctl_write(void *ctx, const void *buf, size_t len)
{
    return write_all(((struct rdma_primary *)ctx)->s, buf, len);
}

static int p_ctl_read(void *ctx, void *buf, size_t len)
{
    int n = read_exact(((struct rdma_primary *)ctx)->s, buf, len);
    return n == (int)len ? 0 : (n < 0 ? n : -EPIPE);
}

static const char *p_error(void *ctx)
{
    const char *e = rcolo_session_error(((struct rdma_primary *)ctx)->s);
    return *e ? e : "no session error";
}

int rdma_primary(const struct options *o, struct guest *g,
                 struct run_result *res)
{
    struct rdma_primary p = {0};
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    char port[8];
    int ret;

    res->name = "rdma";
    if (o->uri) {
        ret = parse_uri(o, NULL, &uri);
    } else {
        snprintf(port, sizeof(port), "%d", o->tcp_port);
        ret = parse_uri(o, port, &uri);
    }
    if (ret) {
        return ret;
    }
    ret = rcolo_connect(&uri, TIMEOUT_MS, &p.s, &err);
    if (!ret) {
        ret = rcolo_region_add(p.s, REGION_ID, "ram", g->mem, g->size,
                               g->page_size, &err);
    }
    for (unsigned i = 0; i < o->channels && !ret; i++) {
        ret = rcolo_channel_connect(p.s, i, TIMEOUT_MS, &p.ch[i], &err);
        if (!ret) {
            /* As QEMU's glue does: fewer wake-ups of the receive threads. */
            ret = rcolo_channel_set_desc_batch(p.ch[i], o->desc_batch);
            if (ret) {
                snprintf(err.message, sizeof(err.message),
                         "descriptor batch: %s", strerror(-ret));
            }
        }
    }
    if (ret) {
        snprintf(res->error, sizeof(res->error), "rdma: %s", err.message);
        rcolo_session_destroy(p.s);
        return ret;
    }
    struct primary_ops ops = {
        .name = "rdma",
        .ctx = &p,
        .send = p_send,
        .fence = p_fence,
        .barrier = p_barrier,
        .fence_all = p_fence_all,
        .busy_poll = p_busy_poll,
        .ctl_write = p_ctl_write,
        .ctl_read = p_ctl_read,
        .error = p_error,
    };
    ret = drive_primary(o, g, &ops, res);
    if (!ret) {
        /* Orderly close: end our stream, wait for the secondary's end. */
        char c;
        rcolo_stream_close(p.s);
        rcolo_stream_read(p.s, &c, 1, false);
    }
    rcolo_session_destroy(p.s);
    return ret;
}

/* ------------------------------------------------------------- secondary */

struct rx {
    struct rcolo_channel *ch;
    struct colo_secondary *colo;
    pthread_t tid;
    _Atomic uint64_t cpu_at_sync;
    _Atomic uint64_t user_at_sync;
};

struct rdma_secondary {
    struct rcolo_session *s;
    struct rx rx[RCOLO_MAX_CHANNELS];
    unsigned channels;
};

static void *rx_thread(void *opaque)
{
    struct rx *t = opaque;
    struct rcolo_desc d;

    while (rcolo_channel_recv(t->ch, &d, -1) == 0) {
        if (d.kind == RCOLO_DESC_PAGES) {
            for (unsigned i = 0; i < d.n; i++) {
                colo_mark(t->colo, d.offsets[i]);
            }
            for (unsigned i = 0; i < d.nzero; i++) {
                colo_mark(t->colo, d.zero[i]);
            }
        } else {
            atomic_store(&t->cpu_at_sync, thread_cpu_ns());
            atomic_store(&t->user_at_sync, thread_user_ns());
        }
        if (rcolo_channel_release(t->ch, &d)) {
            break;
        }
    }
    return NULL;
}

static int s_ctl_write(void *ctx, const void *buf, size_t len)
{
    return write_all(((struct rdma_secondary *)ctx)->s, buf, len);
}

static int s_ctl_read(void *ctx, void *buf, size_t len)
{
    return read_exact(((struct rdma_secondary *)ctx)->s, buf, len);
}

/* An empty fence is a session fence: it reaches channel 0's thread only. */
static void s_busy_poll(void *ctx, enum poll_scope scope)
{
    struct rdma_secondary *sec = ctx;

    rcolo_session_set_busy_poll(sec->s, scope == POLL_ALL);
    rcolo_channel_set_busy_poll(sec->rx[0].ch, scope == POLL_FENCE);
}

static void s_rx_cpu(void *ctx, uint64_t *total, uint64_t *user)
{
    struct rdma_secondary *s = ctx;
    *total = *user = 0;
    for (unsigned i = 0; i < s->channels; i++) {
        *total += atomic_load(&s->rx[i].cpu_at_sync);
        *user += atomic_load(&s->rx[i].user_at_sync);
    }
}

int rdma_secondary(const struct options *o, struct guest *g, uint8_t *cache,
                   int port_fd)
{
    struct rdma_secondary sec = {.channels = o->channels};
    struct colo_secondary colo = {.guest = g, .cache = cache};
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    int ret;

    ret = parse_uri(o, port_fd >= 0 ? "0" : NULL, &uri);
    if (ret) {
        return ret;
    }
    colo.bitmap = calloc((g->pages + 63) / 64, 8);
    ret = rcolo_listen(&uri, &sec.s, &err);
    if (!ret) {
        ret = rcolo_region_add(sec.s, REGION_ID, "ram", cache, g->size,
                               g->page_size, &err);
    }
    if (!ret && port_fd >= 0) {
        uint16_t port = (uint16_t)rcolo_session_port(sec.s);
        if (write(port_fd, &port, sizeof(port)) != sizeof(port)) {
            ret = -EPIPE;
        }
    }
    if (!ret) {
        ret = rcolo_accept(sec.s, TIMEOUT_MS, &err);
    }
    if (!ret) {
        sec.channels = rcolo_session_channels(sec.s);
    }
    for (unsigned i = 0; i < sec.channels && !ret; i++) {
        ret = rcolo_channel_accept(sec.s, i, TIMEOUT_MS, &sec.rx[i].ch, &err);
    }
    if (ret) {
        BENCH_ERR("rdma secondary: %s", err.message);
        rcolo_session_destroy(sec.s);
        free(colo.bitmap);
        return ret;
    }
    unsigned started = 0;
    for (unsigned i = 0; i < sec.channels; i++, started++) {
        sec.rx[i].colo = &colo;
        pthread_create(&sec.rx[i].tid, NULL, rx_thread, &sec.rx[i]);
    }
    struct secondary_ops ops = {
        .ctx = &sec,
        .ctl_write = s_ctl_write,
        .ctl_read = s_ctl_read,
        .rx_cpu = s_rx_cpu,
        .busy_poll = s_busy_poll,
    };
    ret = drive_secondary(o, &colo, &ops);
    if (!ret) {
        char c;
        rcolo_stream_close(sec.s);
        rcolo_stream_read(sec.s, &c, 1, false);
    }
    if (ret) {
        BENCH_ERR("rdma secondary: %s", *rcolo_session_error(sec.s)
                                            ? rcolo_session_error(sec.s)
                                            : strerror(-ret));
    }
    rcolo_session_shutdown(sec.s);
    for (unsigned i = 0; i < started; i++) {
        pthread_join(sec.rx[i].tid, NULL);
    }
    rcolo_session_destroy(sec.s);
    free(colo.bitmap);
    return ret;
}
