/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The TCP baseline, shaped like QEMU's multifd without compression: per
 * channel a socket; per packet a header with the page offsets, then the
 * pages by writev straight from guest memory; received with readv into the
 * COLO cache and marked in the bitmap.  A sync is a packet with the SYNC
 * flag answered by one byte.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <limits.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "bench.h"

#define TCP_MAGIC   0x11223344u /* multifd's */
#define FLAG_SYNC   1u
#define HELLO_MAGIC 0x54435042u
#define MAX_PAGES   4096

struct hello {
    uint32_t magic;
    uint32_t role; /* 0 control, 1 data */
    uint32_t index;
};

struct pkt_hdr {
    uint32_t magic;
    uint32_t flags;
    uint32_t normal;
    uint32_t zero;
    uint64_t seq;
};

static int write_full(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return n < 0 ? -errno : -EPIPE;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Returns len, 0 at EOF before any byte, or -errno. */
static int read_full(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, p + got, len - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return n == 0 && got == 0 ? 0 : (n < 0 ? -errno : -EPIPE);
        }
        got += (size_t)n;
    }
    return (int)len;
}

/* writev/readv until every iovec is done (updates @iov in place). */
static int iov_full(ssize_t (*op)(int, const struct iovec *, int), int fd,
                    struct iovec *iov, int cnt)
{
    while (cnt > 0) {
        ssize_t n = op(fd, iov, cnt > IOV_MAX ? IOV_MAX : cnt);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return n < 0 ? -errno : -EPIPE;
        }
        while (cnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

static int writev_full(int fd, struct iovec *iov, int cnt)
{
    return iov_full(writev, fd, iov, cnt);
}

static int readv_full(int fd, struct iovec *iov, int cnt)
{
    return iov_full(readv, fd, iov, cnt);
}

static void tune(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* --------------------------------------------------------------- primary */

struct tcp_primary {
    int ctl;
    unsigned channels;
    int fd[64];
    struct guest *g;
    struct {
        uint8_t *hdr; /* header + offsets */
        struct iovec *iov;
        uint64_t seq;
    } ch[64];
    char error[128];
};

static int p_send(void *ctx, unsigned ch, const uint64_t *offs, unsigned n,
                  const uint64_t *zero, unsigned nzero)
{
    struct tcp_primary *p = ctx;
    struct pkt_hdr *h = (struct pkt_hdr *)p->ch[ch].hdr;
    uint64_t *o = (uint64_t *)(h + 1);
    struct iovec *iov = p->ch[ch].iov;

    *h = (struct pkt_hdr){
        .magic = TCP_MAGIC, .normal = n, .zero = nzero, .seq = ++p->ch[ch].seq};
    memcpy(o, offs, n * 8ull);
    memcpy(o + n, zero, nzero * 8ull);
    iov[0].iov_base = h;
    iov[0].iov_len = sizeof(*h) + (n + nzero) * 8ull;
    for (unsigned i = 0; i < n; i++) {
        iov[i + 1].iov_base = p->g->mem + offs[i];
        iov[i + 1].iov_len = p->g->page_size;
    }
    int ret = writev_full(p->fd[ch], iov, (int)n + 1);
    if (ret) {
        snprintf(p->error, sizeof(p->error), "channel %u: %s", ch,
                 strerror(-ret));
    }
    return ret;
}

static int p_fence(void *ctx, unsigned ch)
{
    struct tcp_primary *p = ctx;
    struct pkt_hdr h = {
        .magic = TCP_MAGIC, .flags = FLAG_SYNC, .seq = ++p->ch[ch].seq};
    uint8_t ack;
    int ret = write_full(p->fd[ch], &h, sizeof(h));
    if (!ret) {
        ret = read_full(p->fd[ch], &ack, 1) == 1 ? 0 : -EPIPE;
    }
    if (ret) {
        snprintf(p->error, sizeof(p->error), "channel %u sync: %s", ch,
                 strerror(-ret));
    }
    return ret;
}

/* All channels' syncs in flight at once, then every ack. */
static int p_fence_all(void *ctx)
{
    struct tcp_primary *p = ctx;
    int ret = 0;
    for (unsigned i = 0; i < p->channels && !ret; i++) {
        struct pkt_hdr h = {
            .magic = TCP_MAGIC, .flags = FLAG_SYNC, .seq = ++p->ch[i].seq};
        ret = write_full(p->fd[i], &h, sizeof(h));
    }
    for (unsigned i = 0; i < p->channels && !ret; i++) {
        uint8_t ack;
        ret = read_full(p->fd[i], &ack, 1) == 1 ? 0 : -EPIPE;
    }
    return ret;
}

/* Sockets have no polling mode to switch: blocking reads as multifd. */
static void p_busy_poll(void *ctx, bool on)
{
}

static void s_busy_poll(void *ctx, enum poll_scope scope)
{
}

static int p_ctl_write(void *ctx, const void *buf, size_t len)
{
    return write_full(((struct tcp_primary *)ctx)->ctl, buf, len);
}

static int p_ctl_read(void *ctx, void *buf, size_t len)
{
    int n = read_full(((struct tcp_primary *)ctx)->ctl, buf, len);
    return n == (int)len ? 0 : (n < 0 ? n : -EPIPE);
}

static const char *p_error(void *ctx)
{
    struct tcp_primary *p = ctx;
    return p->error[0] ? p->error : "connection closed";
}

static int tcp_dial(const char *addr, int port, struct hello hello)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    char ps[8];
    snprintf(ps, sizeof(ps), "%d", port);
    if (getaddrinfo(addr, ps, &hints, &ai)) {
        return -EADDRNOTAVAIL;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen)) {
        int e = -errno;
        freeaddrinfo(ai);
        if (fd >= 0) {
            close(fd);
        }
        return e;
    }
    freeaddrinfo(ai);
    tune(fd);
    if (write_full(fd, &hello, sizeof(hello))) {
        close(fd);
        return -EPIPE;
    }
    return fd;
}

int tcp_primary(const struct options *o, struct guest *g, int port,
                struct run_result *res)
{
    struct tcp_primary p = {.ctl = -1, .g = g, .channels = o->channels};
    int ret = 0;

    res->name = "tcp";
    p.ctl = tcp_dial(o->tcp_addr, port, (struct hello){HELLO_MAGIC, 0, 0});
    if (p.ctl < 0) {
        snprintf(res->error, sizeof(res->error), "tcp: connect to %s:%d: %s",
                 o->tcp_addr, port, strerror(-p.ctl));
        return p.ctl;
    }
    for (unsigned i = 0; i < o->channels; i++) {
        p.fd[i] =
            tcp_dial(o->tcp_addr, port, (struct hello){HELLO_MAGIC, 1, i});
        if (p.fd[i] < 0) {
            ret = p.fd[i];
            snprintf(res->error, sizeof(res->error), "tcp: channel %u: %s", i,
                     strerror(-ret));
            for (unsigned j = 0; j < i; j++) {
                close(p.fd[j]);
            }
            close(p.ctl);
            return ret;
        }
        p.ch[i].hdr = malloc(sizeof(struct pkt_hdr) + 8 * MAX_PAGES);
        p.ch[i].iov = calloc(MAX_PAGES + 1, sizeof(struct iovec));
    }
    struct primary_ops ops = {
        .name = "tcp",
        .ctx = &p,
        .send = p_send,
        .fence = p_fence,
        .fence_all = p_fence_all,
        .busy_poll = p_busy_poll,
        .ctl_write = p_ctl_write,
        .ctl_read = p_ctl_read,
        .error = p_error,
    };
    ret = drive_primary(o, g, &ops, res);
    if (!ret) {
        char c;
        shutdown(p.ctl, SHUT_WR);
        (void)read_full(p.ctl, &c, 1); /* the secondary's EOF */
    }
    for (unsigned i = 0; i < o->channels; i++) {
        close(p.fd[i]);
        free(p.ch[i].hdr);
        free(p.ch[i].iov);
    }
    close(p.ctl);
    return ret;
}

/* ------------------------------------------------------------- secondary */

struct tcp_rx {
    int fd;
    struct colo_secondary *colo;
    pthread_t tid;
    _Atomic uint64_t cpu_at_sync;
    _Atomic uint64_t user_at_sync;
    int ret;
};

struct tcp_secondary {
    int ctl;
    struct tcp_rx rx[64];
    unsigned channels;
};

static void *rx_thread(void *opaque)
{
    struct tcp_rx *t = opaque;
    struct guest *g = t->colo->guest;
    uint64_t *offs = malloc(8 * MAX_PAGES);
    struct iovec *iov = calloc(MAX_PAGES, sizeof(*iov));

    for (;;) {
        struct pkt_hdr h;
        int n = read_full(t->fd, &h, sizeof(h));
        if (n <= 0) {
            t->ret = n;
            break;
        }
        /* Validate before use, as multifd_ram_unfill_packet does. */
        if (h.magic != TCP_MAGIC || (uint64_t)h.normal + h.zero > MAX_PAGES ||
            (h.flags & ~FLAG_SYNC)) {
            t->ret = -EPROTO;
            break;
        }
        if (h.flags & FLAG_SYNC) {
            uint8_t ack = 1;
            atomic_store(&t->cpu_at_sync, thread_cpu_ns());
            atomic_store(&t->user_at_sync, thread_user_ns());
            if (write_full(t->fd, &ack, 1)) {
                break;
            }
            continue;
        }
        unsigned total = h.normal + h.zero;
        if (read_full(t->fd, offs, total * 8ull) != (int)(total * 8)) {
            t->ret = -EPIPE;
            break;
        }
        for (unsigned i = 0; i < total; i++) {
            if ((offs[i] % g->page_size) || offs[i] >= g->size) {
                t->ret = -EPROTO;
                goto out;
            }
        }
        for (unsigned i = 0; i < h.normal; i++) {
            iov[i].iov_base = t->colo->cache + offs[i];
            iov[i].iov_len = g->page_size;
        }
        if (h.normal && readv_full(t->fd, iov, (int)h.normal)) {
            t->ret = -EPIPE;
            break;
        }
        for (unsigned i = 0; i < h.normal; i++) {
            colo_mark(t->colo, offs[i]);
        }
        for (unsigned i = h.normal; i < total; i++) {
            memset(t->colo->cache + offs[i], 0, g->page_size);
            colo_mark(t->colo, offs[i]);
        }
    }
out:
    free(offs);
    free(iov);
    return NULL;
}

static int s_ctl_write(void *ctx, const void *buf, size_t len)
{
    return write_full(((struct tcp_secondary *)ctx)->ctl, buf, len);
}

static int s_ctl_read(void *ctx, void *buf, size_t len)
{
    return read_full(((struct tcp_secondary *)ctx)->ctl, buf, len);
}

static void s_rx_cpu(void *ctx, uint64_t *total, uint64_t *user)
{
    struct tcp_secondary *s = ctx;
    *total = *user = 0;
    for (unsigned i = 0; i < s->channels; i++) {
        *total += atomic_load(&s->rx[i].cpu_at_sync);
        *user += atomic_load(&s->rx[i].user_at_sync);
    }
}

int tcp_secondary(const struct options *o, struct guest *g, uint8_t *cache,
                  int port_fd)
{
    struct tcp_secondary sec = {.ctl = -1, .channels = o->channels};
    struct colo_secondary colo = {.guest = g, .cache = cache};
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t slen = sizeof(sa);
    int lfd, one = 1, ret = 0;

    if (inet_pton(AF_INET, o->tcp_addr, &sa.sin_addr) != 1) {
        BENCH_ERR("tcp: '%s' is not an IPv4 address", o->tcp_addr);
        return -EINVAL;
    }
    sa.sin_port = htons((uint16_t)(port_fd >= 0 ? 0 : o->tcp_port));
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, 64) ||
        getsockname(lfd, (struct sockaddr *)&sa, &slen)) {
        BENCH_ERR("tcp: cannot listen on %s: %s", o->tcp_addr, strerror(errno));
        close(lfd);
        return -errno;
    }
    if (port_fd >= 0) {
        uint16_t port = ntohs(sa.sin_port);
        if (write(port_fd, &port, sizeof(port)) != sizeof(port)) {
            close(lfd);
            return -EPIPE;
        }
    }
    colo.bitmap = calloc((g->pages + 63) / 64, 8);
    for (unsigned i = 0; i < sec.channels; i++) {
        sec.rx[i].fd = -1;
    }
    /* Control and data connections, in any order. */
    for (unsigned got = 0; got < sec.channels + 1;) {
        struct hello h;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0 || read_full(fd, &h, sizeof(h)) != sizeof(h) ||
            h.magic != HELLO_MAGIC || h.role > 1 ||
            (h.role == 1 &&
             (h.index >= sec.channels || sec.rx[h.index].fd >= 0)) ||
            (h.role == 0 && sec.ctl >= 0)) {
            BENCH_ERR("tcp: bad connection from the primary");
            if (fd >= 0) {
                close(fd);
            }
            ret = -EPROTO;
            break;
        }
        tune(fd);
        if (h.role == 0) {
            sec.ctl = fd;
        } else {
            sec.rx[h.index].fd = fd;
        }
        got++;
    }
    close(lfd);
    unsigned started = 0;
    if (!ret) {
        for (; started < sec.channels; started++) {
            sec.rx[started].colo = &colo;
            pthread_create(&sec.rx[started].tid, NULL, rx_thread,
                           &sec.rx[started]);
        }
        struct secondary_ops ops = {
            .ctx = &sec,
            .ctl_write = s_ctl_write,
            .ctl_read = s_ctl_read,
            .rx_cpu = s_rx_cpu,
            .busy_poll = s_busy_poll,
        };
        ret = drive_secondary(o, &colo, &ops);
        if (ret) {
            BENCH_ERR("tcp secondary: %s", strerror(-ret));
        }
    }
    if (sec.ctl >= 0) {
        shutdown(sec.ctl, SHUT_RDWR);
    }
    for (unsigned i = 0; i < sec.channels; i++) {
        if (sec.rx[i].fd >= 0) {
            shutdown(sec.rx[i].fd, SHUT_RDWR);
        }
    }
    for (unsigned i = 0; i < started; i++) {
        pthread_join(sec.rx[i].tid, NULL);
    }
    for (unsigned i = 0; i < sec.channels; i++) {
        if (sec.rx[i].fd >= 0) {
            close(sec.rx[i].fd);
        }
    }
    if (sec.ctl >= 0) {
        close(sec.ctl);
    }
    free(colo.bitmap);
    return ret;
}
