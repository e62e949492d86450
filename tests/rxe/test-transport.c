/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Transport tests on real verbs (run under scripts/with-rxe).  Primary and
 * secondary are separate processes: the secondary is forked, listens on
 * port 0 and tells the primary its port through a pipe.
 *
 *   test-transport TEST     run one test (the table at the end lists them,
 *                           and test-transport --list prints it)
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "internal.h" /* forged descriptors: a channel's QP, PD and seq */

#define MAIN_ID     1
#define MAIN_LEN    (256ull << 20)
#define HUGE_ID     2
#define HUGE_PAGE   (2u << 20)
#define HUGE_LEN    (32ull << 20)
#define PAGE        4096u
#define CHANNELS    4
#define CHECKPOINTS 60
#define BATCH       128
#define TIMEOUT_MS  20000

static const char *test_name = "?";

static void *map_region(uint64_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    CHECK(p != MAP_FAILED, "mmap %" PRIu64 ": %s", len, strerror(errno));
    return p;
}

/* 64-bit FNV-style hash over words: fast enough under TCG for 256 MiB. */
static uint64_t hash_mem(const void *p, uint64_t len)
{
    const uint64_t *w = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < len / 8; i++) {
        h = (h ^ w[i]) * 0x100000001b3ull;
    }
    return h;
}

static void fill_page(uint8_t *p, uint32_t size, uint64_t seed)
{
    uint64_t s = seed | 1;
    for (uint32_t i = 0; i < size; i += 8) {
        uint64_t v = xorshift(&s);
        memcpy(p + i, &v, 8);
    }
}

/* The timeout= of the URIs uri_for makes (0: the library's default), and
 * their channels=. */
static unsigned uri_timeout_ms;
static unsigned uri_channels = CHANNELS;
/* More options for the URIs uri_for makes ("&key=value...", or ""). */
static const char *uri_extra = "";

static void uri_for(struct rcolo_uri *uri, const char *port, const char *token)
{
    char text[512];
    struct rcolo_error err = {0};
    const char *addr = peer_addr();

    CHECK(addr, "RDMA_COLO_TEST_ADDR not set: run under scripts/with-rxe");
    /* Every session is authenticated, as users run it. */
    snprintf(text, sizeof(text),
             "rdma-colo:%s:%s?channels=%u&depth=32&token=%s", addr, port,
             uri_channels, token ? token : "rxe-test-token-0123");
    if (uri_timeout_ms) {
        snprintf(text + strlen(text), sizeof(text) - strlen(text),
                 "&timeout=%u", uri_timeout_ms);
    }
    snprintf(text + strlen(text), sizeof(text) - strlen(text), "%s", uri_extra);
    CHECK(rcolo_uri_parse(text, uri, &err) == 0, "%s", err.message);
}

/* ------------------------------------------------------------ secondary */

struct secondary {
    struct rcolo_session *s;
    uint8_t *cache[3], *guest[3];
    uint64_t len[3];
    uint32_t page[3];
    _Atomic uint64_t *bitmap[3];
    atomic_int errors;
    char last_error[256];
};

struct rx_thread {
    struct secondary *sec;
    struct rcolo_channel *ch;
    unsigned index;
    pthread_t tid;
    int result;                 /* the error that ended the loop */
    atomic_ulong fences;        /* fences handed to us (never a barrier) */
    atomic_ulong pages;         /* pages marked (normal and zero) */
    atomic_uint max_desc_pages; /* the largest page descriptor */
};

static void mark(struct secondary *sec, uint32_t region, uint64_t off)
{
    uint64_t page = off / sec->page[region];
    atomic_fetch_or(&sec->bitmap[region][page / 64], 1ull << (page % 64));
}

/* session-fence: the last channel's receive thread sleeps this long
 * before it marks and releases a page descriptor (set before the fork). */
static unsigned slow_release_ms;

static void *rx_loop(void *opaque)
{
    struct rx_thread *t = opaque;
    struct rcolo_desc d;

    for (;;) {
        int ret = rcolo_channel_recv(t->ch, &d, -1);
        if (ret) {
            t->result = ret;
            return NULL;
        }
        if (d.kind == RCOLO_DESC_FENCE) {
            atomic_fetch_add(&t->fences, 1);
        } else {
            if (slow_release_ms && t->index == CHANNELS - 1) {
                usleep(slow_release_ms * 1000u);
            }
            for (unsigned i = 0; i < d.n; i++) {
                mark(t->sec, d.region_id, d.offsets[i]);
            }
            for (unsigned i = 0; i < d.nzero; i++) {
                mark(t->sec, d.region_id, d.zero[i]);
            }
            atomic_fetch_add(&t->pages, d.n + d.nzero);
            if (d.n + d.nzero > atomic_load(&t->max_desc_pages)) {
                atomic_store(&t->max_desc_pages, d.n + d.nzero);
            }
        }
        ret = rcolo_channel_release(t->ch, &d);
        if (ret) {
            t->result = ret;
            return NULL;
        }
    }
}

/* COLO's flush: copy marked pages from the cache into the guest copy. */
static uint64_t flush(struct secondary *sec, uint32_t region)
{
    uint64_t pages = sec->len[region] / sec->page[region], copied = 0;

    for (uint64_t w = 0; w < (pages + 63) / 64; w++) {
        uint64_t bits = atomic_exchange(&sec->bitmap[region][w], 0);
        while (bits) {
            uint64_t p = w * 64 + (uint64_t)__builtin_ctzll(bits);
            bits &= bits - 1;
            memcpy(sec->guest[region] + p * sec->page[region],
                   sec->cache[region] + p * sec->page[region],
                   sec->page[region]);
            copied++;
        }
    }
    return copied;
}

static void stream_read_all(struct rcolo_session *s, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = rcolo_stream_read(s, p, len, false);
        CHECK(n > 0, "stream read: %zd (%s)", n, rcolo_session_error(s));
        p += n;
        len -= (size_t)n;
    }
}

static void stream_write_all(struct rcolo_session *s, const void *buf,
                             size_t len)
{
    ssize_t n = rcolo_stream_write(s, buf, len, false);
    CHECK(n == (ssize_t)len, "stream write: %zd (%s)", n,
          rcolo_session_error(s));
}

struct ckpt_msg {
    uint32_t kind; /* 1 checkpoint, 2 done, 3 count pages (hash[0] of them) */
    uint32_t index;
    uint64_t hash[3];
};

struct ckpt_reply {
    uint32_t index;
    uint32_t ok;
    uint64_t copied;
    uint64_t fences_seen; /* by the receive threads, summed */
    uint32_t max_desc_pages[CHANNELS];
};

static int run_secondary(int port_fd, const char *token, bool expect_refusal)
{
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    struct secondary sec = {0};
    struct rx_thread rx[CHANNELS] = {0};

    check_side = "secondary";
    uri_for(&uri, "0", token);
    CHECK(rcolo_listen(&uri, &sec.s, &err) == 0, "listen: %s", err.message);

    sec.len[MAIN_ID] = MAIN_LEN;
    sec.page[MAIN_ID] = PAGE;
    sec.len[HUGE_ID] = HUGE_LEN;
    sec.page[HUGE_ID] = HUGE_PAGE;
    for (int r = MAIN_ID; r <= HUGE_ID; r++) {
        sec.cache[r] = map_region(sec.len[r]);
        sec.guest[r] = map_region(sec.len[r]);
        sec.bitmap[r] = calloc((sec.len[r] / sec.page[r] + 63) / 64, 8);
    }
    CHECK(rcolo_region_add(sec.s, MAIN_ID, "pc.ram", sec.cache[MAIN_ID],
                           MAIN_LEN, PAGE, &err) == 0,
          "region: %s", err.message);
    CHECK(rcolo_region_add(sec.s, HUGE_ID, "huge.ram", sec.cache[HUGE_ID],
                           HUGE_LEN, HUGE_PAGE, &err) == 0,
          "region: %s", err.message);

    uint16_t port = (uint16_t)rcolo_session_port(sec.s);
    CHECK(write(port_fd, &port, sizeof(port)) == sizeof(port), "pipe");
    close(port_fd);

    if (expect_refusal) {
        /* The primary is refused; no control connection may come up. */
        int ret = rcolo_accept(sec.s, 3000, &err);
        CHECK(ret == -ETIMEDOUT, "refused primary got accepted: %d", ret);
        rcolo_session_destroy(sec.s);
        return 0;
    }

    CHECK(rcolo_accept(sec.s, TIMEOUT_MS, &err) == 0, "accept: %s",
          err.message);
    for (unsigned i = 0; i < CHANNELS; i++) {
        rx[i].sec = &sec;
        rx[i].index = i;
        CHECK(rcolo_channel_accept(sec.s, i, TIMEOUT_MS, &rx[i].ch, &err) == 0,
              "channel %u: %s", i, err.message);
        pthread_create(&rx[i].tid, NULL, rx_loop, &rx[i]);
    }

    int result = 0;
    for (;;) {
        struct ckpt_msg m;
        ssize_t n = rcolo_stream_read(sec.s, &m, sizeof(m), false);
        if (n <= 0) {
            /* oob-descriptor: the session failed under us. */
            result = (int)(n == 0 ? -EPIPE : n);
            break;
        }
        if (n < (ssize_t)sizeof(m)) {
            stream_read_all(sec.s, (uint8_t *)&m + n, sizeof(m) - (size_t)n);
        }
        if (m.kind == 2) {
            break;
        }
        struct ckpt_reply rep = {.index = m.index, .ok = 1};
        for (unsigned i = 0; i < CHANNELS; i++) {
            rep.fences_seen += atomic_load(&rx[i].fences);
            rep.max_desc_pages[i] = atomic_load(&rx[i].max_desc_pages);
        }
        if (m.kind == 3) {
            /* Descriptors flushed without a fence must arrive all the
             * same: wait (10 s at most) until hash[0] pages were marked. */
            double t0 = now_s();
            do {
                rep.copied = 0;
                for (unsigned i = 0; i < CHANNELS; i++) {
                    rep.copied += atomic_load(&rx[i].pages);
                }
            } while (rep.copied < m.hash[0] && now_s() - t0 < 10 &&
                     !usleep(1000));
            rep.ok = rep.copied == m.hash[0];
            stream_write_all(sec.s, &rep, sizeof(rep));
            continue;
        }
        for (int r = MAIN_ID; r <= HUGE_ID; r++) {
            rep.copied += flush(&sec, (uint32_t)r);
            if (hash_mem(sec.guest[r], sec.len[r]) != m.hash[r]) {
                rep.ok = 0;
            }
        }
        stream_write_all(sec.s, &rep, sizeof(rep));
    }
    if (result == 0) {
        /* The end of the stream must follow "done". */
        char c;
        CHECK(rcolo_stream_read(sec.s, &c, 1, false) == 0,
              "expected end of stream");
    }
    rcolo_session_shutdown(sec.s);
    for (unsigned i = 0; i < CHANNELS; i++) {
        pthread_join(rx[i].tid, NULL);
    }
    if (result) {
        /* Print what ended it: the oob test greps for this. */
        printf("secondary: session failed: %s\n", rcolo_session_error(sec.s));
        fflush(stdout);
        for (unsigned i = 0; i < CHANNELS; i++) {
            if (rx[i].result == -EPROTO) {
                result = -EPROTO;
            }
        }
    }
    rcolo_session_destroy(sec.s);
    return result == -EPROTO ? 42 : (result ? 1 : 0);
}

/* Fork a peer process running @fn(@port_fd, @arg) (it listens on port 0
 * and writes the port to @port_fd); return its pid and the port. */
static pid_t fork_peer(int (*fn)(int port_fd, void *arg), void *arg, char *port,
                       size_t size)
{
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        close(fds[0]);
        check_side = "secondary";
        alarm(300);
        _exit(fn(fds[1], arg));
    }
    close(fds[1]);
    uint16_t p;
    CHECK(read(fds[0], &p, sizeof(p)) == sizeof(p), "secondary did not start");
    close(fds[0]);
    snprintf(port, size, "%u", p);
    return pid;
}

/* In a forked peer: listen on port 0 ... */
static struct rcolo_session *listen_port0(void)
{
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    struct rcolo_session *s;

    uri_for(&uri, "0", NULL);
    CHECK(rcolo_listen(&uri, &s, &err) == 0, "listen: %s", err.message);
    return s;
}

/* ... and tell the parent the port (then the primary may connect). */
static struct rcolo_session *report_port(struct rcolo_session *s, int port_fd)
{
    uint16_t p16 = (uint16_t)rcolo_session_port(s);
    CHECK(write(port_fd, &p16, 2) == 2, "pipe");
    close(port_fd);
    return s;
}

static struct rcolo_session *listen_and_report(int port_fd)
{
    return report_port(listen_port0(), port_fd);
}

struct secondary_args {
    const char *token;
    bool expect_refusal;
};

static int secondary_main(int port_fd, void *opaque)
{
    struct secondary_args *a = opaque;
    return run_secondary(port_fd, a->token, a->expect_refusal);
}

static pid_t fork_secondary(char *port, size_t size, const char *token,
                            bool expect_refusal)
{
    static struct secondary_args a;
    a = (struct secondary_args){token, expect_refusal};
    return fork_peer(secondary_main, &a, port, size);
}

static int wait_child(pid_t pid)
{
    int status;
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* -------------------------------------------------------------- primary */

struct primary {
    struct rcolo_session *s;
    struct rcolo_channel *ch[CHANNELS];
    uint8_t *mem[3];
    uint64_t len[3];
    uint32_t page[3];
    uint64_t rr;
};

/* Descriptor batching per channel, so that every test runs both ways:
 * the largest, an odd size, off (one descriptor per write), the largest
 * (session-fence's slow channel). */
static const unsigned desc_batch[CHANNELS] = {RCOLO_MAX_DESC_PAGES, 300, 0,
                                              RCOLO_MAX_DESC_PAGES};

static struct primary *connect_primary(const char *port, const char *token)
{
    struct primary *p = calloc(1, sizeof(*p));
    struct rcolo_uri uri;
    struct rcolo_error err = {0};

    uri_for(&uri, port, token);
    CHECK(rcolo_connect(&uri, TIMEOUT_MS, &p->s, &err) == 0, "connect: %s",
          err.message);
    p->len[MAIN_ID] = MAIN_LEN;
    p->page[MAIN_ID] = PAGE;
    p->len[HUGE_ID] = HUGE_LEN;
    p->page[HUGE_ID] = HUGE_PAGE;
    for (int r = MAIN_ID; r <= HUGE_ID; r++) {
        p->mem[r] = map_region(p->len[r]);
    }
    CHECK(rcolo_region_add(p->s, MAIN_ID, "pc.ram", p->mem[MAIN_ID], MAIN_LEN,
                           PAGE, &err) == 0,
          "region: %s", err.message);
    CHECK(rcolo_region_add(p->s, HUGE_ID, "huge.ram", p->mem[HUGE_ID], HUGE_LEN,
                           HUGE_PAGE, &err) == 0,
          "region: %s", err.message);
    /* Channels connect in reverse order: any order must work. */
    for (int i = CHANNELS - 1; i >= 0; i--) {
        CHECK(rcolo_channel_connect(p->s, (unsigned)i, TIMEOUT_MS, &p->ch[i],
                                    &err) == 0,
              "channel %d: %s", i, err.message);
        CHECK(rcolo_channel_set_desc_batch(p->ch[i], desc_batch[i]) == 0,
              "descriptor batch of channel %d", i);
    }
    return p;
}

/* Send dirty pages of one region in batches, round-robin over channels. */
static void send_pages(struct primary *p, uint32_t region, uint64_t *offs,
                       unsigned n, uint64_t *zero, unsigned nzero)
{
    while (n || nzero) {
        unsigned bn = n < BATCH ? n : BATCH;
        unsigned bz = nzero < BATCH - bn ? nzero : BATCH - bn;
        struct rcolo_channel *ch = p->ch[p->rr++ % CHANNELS];
        int ret = rcolo_write_pages(ch, region, offs, bn, zero, bz);
        CHECK(ret == 0, "write_pages: %d (%s)", ret, rcolo_session_error(p->s));
        offs += bn;
        n -= bn;
        zero += bz;
        nzero -= bz;
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Dirty pages with pattern @k % 6; returns pages dirtied. */
static unsigned dirty(struct primary *p, unsigned k, uint64_t *rng)
{
    static uint64_t offs[40000], zero[8000];
    unsigned n = 0, nz = 0, pattern = k % 6;
    uint64_t pages = MAIN_LEN / PAGE;

    switch (pattern) {
    case 0: /* uniform random 4 KiB pages */
        for (unsigned i = 0; i < 3000; i++) {
            offs[n++] = (xorshift(rng) % pages) * PAGE;
        }
        break;
    case 1: /* contiguous runs */
        for (unsigned r = 0; r < 24; r++) {
            uint64_t start = xorshift(rng) % (pages - 512);
            unsigned len = 1 + (unsigned)(xorshift(rng) % 512);
            for (unsigned i = 0; i < len; i++) {
                offs[n++] = (start + i) * PAGE;
            }
        }
        break;
    case 2: /* zero pages among normal pages */
        for (unsigned i = 0; i < 2000; i++) {
            offs[n++] = (xorshift(rng) % pages) * PAGE;
        }
        for (unsigned i = 0; i < 1500; i++) {
            zero[nz++] = (xorshift(rng) % pages) * PAGE;
        }
        break;
    case 3: /* empty checkpoint */
        break;
    case 4: { /* 2 MiB pages of the huge region */
        uint64_t hp = HUGE_LEN / HUGE_PAGE;
        for (unsigned i = 0; i < 5; i++) {
            offs[n++] = (xorshift(rng) % hp) * HUGE_PAGE;
        }
        break;
    }
    case 5: /* hot set: the same few thousand pages again and again */
        for (unsigned i = 0; i < 4000; i++) {
            offs[n++] = (xorshift(rng) % 2048) * PAGE;
        }
        break;
    }

    uint32_t region = pattern == 4 ? HUGE_ID : MAIN_ID;
    uint32_t psize = p->page[region];
    /* Dedupe (a page is sent once per checkpoint, as QEMU's bitmap does)
     * and keep normal and zero sets disjoint. */
    qsort(offs, n, 8, cmp_u64);
    unsigned u = 0;
    for (unsigned i = 0; i < n; i++) {
        if (u == 0 || offs[i] != offs[u - 1]) {
            offs[u++] = offs[i];
        }
    }
    n = u;
    qsort(zero, nz, 8, cmp_u64);
    u = 0;
    for (unsigned i = 0; i < nz; i++) {
        if ((u == 0 || zero[i] != zero[u - 1]) &&
            !bsearch(&zero[i], offs, n, 8, cmp_u64)) {
            zero[u++] = zero[i];
        }
    }
    nz = u;
    for (unsigned i = 0; i < n; i++) {
        fill_page(p->mem[region] + offs[i], psize,
                  ((uint64_t)k << 40) ^ offs[i] ^ xorshift(rng));
    }
    for (unsigned i = 0; i < nz; i++) {
        memset(p->mem[region] + zero[i], 0, psize);
    }
    send_pages(p, region, offs, n, zero, nz);
    return n + nz;
}

static void primary_close(struct primary *p)
{
    for (int r = MAIN_ID; r <= HUGE_ID; r++) {
        munmap(p->mem[r], p->len[r]);
    }
    rcolo_session_destroy(p->s);
    free(p);
}

/* Post @what (a fence or a barrier) on every channel, then wait for every
 * ack: QEMU's multifd sync, or what its background sync does after pages
 * sent while the guest runs, before the next ones (maybe the same pages,
 * newer). */
static void sync_all_channels(struct primary *p, unsigned k,
                              int (*post)(struct rcolo_channel *),
                              const char *what)
{
    for (unsigned i = 0; i < CHANNELS; i++) {
        int ret = post(p->ch[i]);
        CHECK(ret == 0, "%s %u on channel %u: %d (%s)", what, k, i, ret,
              rcolo_session_error(p->s));
    }
    for (unsigned i = 0; i < CHANNELS; i++) {
        int ret = rcolo_channel_fence_wait(p->ch[i], TIMEOUT_MS);
        CHECK(ret == 0, "%s %u on channel %u not acked: %d (%s)", what, k, i,
              ret, rcolo_session_error(p->s));
    }
}

static void barrier_all(struct primary *p, unsigned k)
{
    sync_all_channels(p, k, rcolo_channel_barrier_post, "barrier");
}

static void fence_all_channels(struct primary *p, unsigned k)
{
    sync_all_channels(p, k, rcolo_channel_fence_post, "fence");
}

/*
 * @background: each interval's pages go in two passes, as with QEMU's
 * background sync: a first pass and a barrier while "the guest runs", then
 * a second pass (new content, some of the same pages, other channels)
 * and the checkpoint's fence.  The secondary must end up with the second
 * pass's content and its receive threads must never see a barrier.
 */
static int test_replicate(bool background)
{
    char port[8];
    long long link0 = link_tx_bytes();
    pid_t child =
        fork_secondary(port, sizeof(port), "s3cret-token-0123", false);
    struct primary *p = connect_primary(port, "s3cret-token-0123");
    uint64_t rng = 0x1234567;

    CHECK(rcolo_channel_set_desc_batch(p->ch[0], RCOLO_MAX_DESC_PAGES + 1) ==
              -EINVAL,
          "a descriptor batch beyond RCOLO_MAX_DESC_PAGES was accepted");
    uint64_t total_pages = 0;
    double t0 = now_s();

    /* Start from the same (non-zero) memory on both sides: a first full
     * copy, like COLO's initial migration. */
    for (int r = MAIN_ID; r <= HUGE_ID; r++) {
        for (uint64_t off = 0; off < p->len[r]; off += p->page[r]) {
            fill_page(p->mem[r] + off, p->page[r], off * 7 + (uint64_t)r);
        }
        static uint64_t offs[BATCH];
        for (uint64_t off = 0; off < p->len[r];) {
            unsigned n = 0;
            while (n < BATCH && off < p->len[r]) {
                offs[n++] = off;
                off += p->page[r];
            }
            send_pages(p, (uint32_t)r, offs, n, NULL, 0);
        }
    }
    /* Batched descriptors go out on rcolo_channel_flush(), no fence
     * needed: the secondary's receive threads see every page. */
    uint64_t initial = MAIN_LEN / PAGE + HUGE_LEN / HUGE_PAGE;
    for (unsigned i = 0; i < CHANNELS; i++) {
        int ret = rcolo_channel_flush(p->ch[i]);
        CHECK(ret == 0, "flush of channel %u: %d (%s)", i, ret,
              rcolo_session_error(p->s));
    }
    struct ckpt_msg count = {.kind = 3, .hash = {initial}};
    struct ckpt_reply counted;
    stream_write_all(p->s, &count, sizeof(count));
    stream_read_all(p->s, &counted, sizeof(counted));
    CHECK(counted.ok,
          "after the initial copy and a flush of every channel "
          "(no fence) the secondary marked %" PRIu64 " pages of %" PRIu64,
          counted.copied, initial);

    /* A quarter as many, with two passes each: every pattern 2-3 times,
     * in CI time (the test also runs under the sanitizers). */
    const unsigned checkpoints = background ? CHECKPOINTS / 4 : CHECKPOINTS;
    uint64_t channel_fences = 0;

    for (unsigned k = 0; k <= checkpoints; k++) {
        if (k > 0) {
            total_pages += dirty(p, k, &rng);
        }
        if (k > 0 && background) {
            barrier_all(p, k);
            /* Same pattern (k % 6), newer content. */
            total_pages += dirty(p, k + 6 * 1000, &rng);
        }
        /* Checkpoints alternate between the two fences: a fence of every
         * channel (QEMU's multifd sync: every receive thread sees it) and
         * the session fence (one message; no receive thread sees it). */
        bool session_fence = k % 2;
        if (session_fence) {
            int ret = rcolo_fence(p->s, TIMEOUT_MS);
            CHECK(ret == 0, "fence %u: %d (%s)", k, ret,
                  rcolo_session_error(p->s));
        } else {
            fence_all_channels(p, k);
            channel_fences += CHANNELS;
        }
        struct ckpt_msg m = {.kind = 1, .index = k};
        for (int r = MAIN_ID; r <= HUGE_ID; r++) {
            m.hash[r] = hash_mem(p->mem[r], p->len[r]);
        }
        stream_write_all(p->s, &m, sizeof(m));
        struct ckpt_reply rep;
        stream_read_all(p->s, &rep, sizeof(rep));
        CHECK(rep.index == k, "reply for %u, expected %u", rep.index, k);
        CHECK(rep.fences_seen == channel_fences,
              "the secondary's receive threads saw %" PRIu64 " fences after "
              "%u checkpoints of %d channels, expected %" PRIu64
              " (a barrier or session fence reached them?)",
              rep.fences_seen, k + 1, CHANNELS, channel_fences);
        CHECK(rep.ok,
              "checkpoint %u (pattern %u): secondary's guest copy "
              "differs from the primary's memory",
              k, k % 6);
    }
    struct ckpt_msg done = {.kind = 2};
    stream_write_all(p->s, &done, sizeof(done));
    CHECK(rcolo_stream_close(p->s) == 0, "stream close");
    /* Batched channels sent descriptors larger than one call's pages (up
     * to their batch), the one without batching never did. */
    for (unsigned i = 0; i < CHANNELS; i++) {
        unsigned got = counted.max_desc_pages[i];
        bool batched = desc_batch[i] > 1;
        CHECK(got <= (batched ? desc_batch[i] : BATCH) &&
                  (!batched || got > BATCH),
              "channel %u (descriptor batch %u): largest descriptor %u pages "
              "in the initial copy of %u-page writes",
              i, desc_batch[i], got, BATCH);
    }

    struct rcolo_session_stats st;
    rcolo_session_get_stats(p->s, &st);
    /* Registration mode was probed from the device: pinned unless the
     * device reports RC write on-demand paging (rxe on 6.1 does not). */
    int odp = rcolo_session_odp(p->s);
    CHECK(odp == 0 || odp == 1, "ODP capability not probed: %d", odp);
    /* Every fence waited for its acknowledgement: an owed wait. */
    CHECK(st.total.owed_wait_ns_max > 0 &&
              st.total.owed_wait_ns_max < (uint64_t)TIMEOUT_MS * 1000000,
          "longest owed wait %" PRIu64 " ns (fence max %" PRIu64 " ns)",
          st.total.owed_wait_ns_max, st.fence_ns_max);
    CHECK(st.total.barriers == (background ? checkpoints * CHANNELS : 0),
          "%" PRIu64 " barriers posted", st.total.barriers);
    /* What the session pins: both regions, whole, until one is removed. */
    CHECK(st.regions == 2 && st.registered_bytes == MAIN_LEN + HUGE_LEN,
          "session stats: %" PRIu64 " regions of %" PRIu64 " bytes "
          "registered, expected 2 of %llu",
          st.regions, st.registered_bytes, MAIN_LEN + HUGE_LEN);
    CHECK(rcolo_region_remove(p->s, HUGE_ID) == 0, "remove huge region");
    rcolo_session_get_stats(p->s, &st);
    CHECK(st.regions == 1 && st.registered_bytes == MAIN_LEN,
          "after removing a region: %" PRIu64 " regions of %" PRIu64
          " bytes registered, expected 1 of %llu",
          st.regions, st.registered_bytes, MAIN_LEN);
    int rc = wait_child(child);
    CHECK(rc == 0, "secondary exited %d", rc);
    /* On the pair topology every byte RDMA-written crossed the link. */
    long long link = link0 < 0 ? -1 : link_tx_bytes() - link0;
    CHECK(link < 0 || (uint64_t)link >= st.total.bytes,
          "the link carried %lld bytes for %" PRIu64 " RDMA-written", link,
          st.total.bytes);
    if (link >= 0) {
        printf("test-transport %s: the link from %s carried %lld bytes, "
               "%.2f x the %" PRIu64 " RDMA-written\n",
               test_name, getenv("RDMA_COLO_TEST_NETDEV"), link,
               (double)link / (double)st.total.bytes, st.total.bytes);
    }
    printf("test-transport %s: device %s: %u checkpoints over %d "
           "channels (random, runs, zero, empty, 2 MiB, hot-set pages%s): "
           "%" PRIu64 " pages dirtied, %" PRIu64 " bytes RDMA-written in "
           "%" PRIu64 " WRs, %" PRIu64 " descriptors, %" PRIu64 " fences "
           "of every channel and %" PRIu64 " session fences (mean %.1f us; "
           "checkpoints alternate), %" PRIu64 " barriers; the secondary's "
           "receive threads saw exactly the channel fences; descriptor "
           "batches %u/%u/%u/%u pages gave descriptors of up to "
           "%u/%u/%u/%u pages from %u-page writes, and a flush without a "
           "fence delivered all %" PRIu64 " pages of the initial copy; "
           "longest wait for the secondary "
           "%.1f ms (data), %.1f ms (stream); secondary's guest copy "
           "verified equal (hash of 256 MiB + 32 MiB) after every "
           "checkpoint; memory %s, 2 regions of 288 MiB counted as "
           "registered and 1 of 256 MiB after removing one; %.1f s\n",
           test_name, getenv("RDMA_COLO_TEST_DEV"), checkpoints, CHANNELS,
           background ? "; each interval in two passes split by a barrier, "
                        "the second re-sending pages with newer content"
                      : "",
           total_pages, st.total.bytes, st.total.write_wrs,
           st.total.descriptors, channel_fences / CHANNELS, st.fences,
           st.fences ? st.fence_ns_total / 1e3 / st.fences : 0.0,
           st.total.barriers, desc_batch[0], desc_batch[1], desc_batch[2],
           desc_batch[3], counted.max_desc_pages[0], counted.max_desc_pages[1],
           counted.max_desc_pages[2], counted.max_desc_pages[3], BATCH, initial,
           st.total.owed_wait_ns_max / 1e6, st.stream_owed_wait_ns_max / 1e6,
           odp ? "on-demand paged (device has RC write ODP)"
               : "pinned (device has no RC write ODP)",
           now_s() - t0);
    primary_close(p);
    return 0;
}

/*
 * The session fence waits for every channel, not only its own: the
 * secondary's last receive thread sleeps 300 ms before it marks and
 * releases each page descriptor.  A page written on that channel, then
 * rcolo_fence(): the fence reaches channel 0 at once, but its ack may only
 * come after the slow release, and the checkpoint after it must find the
 * page marked (an early ack would flush without it: the hashes differ).
 */
static int test_session_fence(void)
{
    char port[8];
    const unsigned rounds = 3, empty = 100;

    slow_release_ms = 300; /* the forked secondary's receive threads */
    pid_t child = fork_secondary(port, sizeof(port), NULL, false);
    slow_release_ms = 0;
    struct primary *p = connect_primary(port, NULL);
    double shortest = 1e9;

    for (unsigned k = 0; k < rounds; k++) {
        uint64_t off = (uint64_t)(k + 1) * 17 * PAGE;
        fill_page(p->mem[MAIN_ID] + off, PAGE, 1000 + k);
        int ret =
            rcolo_write_pages(p->ch[CHANNELS - 1], MAIN_ID, &off, 1, NULL, 0);
        CHECK(ret == 0, "write: %d (%s)", ret, rcolo_session_error(p->s));
        double t0 = now_s();
        ret = rcolo_fence(p->s, TIMEOUT_MS);
        double dt = now_s() - t0;
        CHECK(ret == 0, "fence %u: %d (%s)", k, ret, rcolo_session_error(p->s));
        CHECK(dt >= 0.29,
              "session fence %u returned after %.3f s, before the slow "
              "receive thread of channel %d released its page (300 ms)",
              k, dt, CHANNELS - 1);
        shortest = dt < shortest ? dt : shortest;
        struct ckpt_msg m = {.kind = 1, .index = k};
        for (int r = MAIN_ID; r <= HUGE_ID; r++) {
            m.hash[r] = hash_mem(p->mem[r], p->len[r]);
        }
        stream_write_all(p->s, &m, sizeof(m));
        struct ckpt_reply rep;
        stream_read_all(p->s, &rep, sizeof(rep));
        CHECK(rep.index == k && rep.ok && rep.copied == 1,
              "checkpoint %u after the session fence: %s, %" PRIu64
              " pages flushed (expected the 1 written)",
              k, rep.ok ? "copies equal" : "COPIES DIFFER", rep.copied);
        CHECK(rep.fences_seen == 0,
              "the secondary's receive threads saw %" PRIu64 " fences",
              rep.fences_seen);
    }
    /* Empty session fences: one round trip each, whatever the channels. */
    double t0 = now_s();
    for (unsigned k = 0; k < empty; k++) {
        int ret = rcolo_fence(p->s, TIMEOUT_MS);
        CHECK(ret == 0, "empty fence %u: %d (%s)", k, ret,
              rcolo_session_error(p->s));
    }
    double empty_us = (now_s() - t0) / empty * 1e6;
    struct rcolo_session_stats st;
    rcolo_session_get_stats(p->s, &st);
    CHECK(st.fences == rounds + empty && st.total.fences == rounds + empty,
          "%" PRIu64 " session fences counted, %" PRIu64
          " on channels, expected %u",
          st.fences, st.total.fences, rounds + empty);
    struct ckpt_msg done = {.kind = 2};
    stream_write_all(p->s, &done, sizeof(done));
    CHECK(rcolo_stream_close(p->s) == 0, "stream close");
    int rc = wait_child(child);
    CHECK(rc == 0, "secondary exited %d", rc);
    printf("test-transport session-fence: %u session fences over %d channels "
           "each waited for the slow receive thread of channel %d (shortest "
           "%.0f ms >= its 300 ms), the page it carried was marked and "
           "flushed every time, no receive thread saw a fence; %u empty "
           "session fences took %.0f us each\n",
           rounds, CHANNELS, CHANNELS - 1, shortest * 1e3, empty, empty_us);
    primary_close(p);
    return 0;
}

static int test_wrong_token(void)
{
    char port[8];
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    struct rcolo_session *s = NULL;

    pid_t child =
        fork_secondary(port, sizeof(port), "right-token-0123456", true);
    uri_for(&uri, port, "wrong-token-0123456");
    int ret = rcolo_connect(&uri, TIMEOUT_MS, &s, &err);
    CHECK(ret == -ECONNREFUSED, "connect returned %d (%s)", ret, err.message);
    CHECK(s == NULL, "session returned on failure");
    CHECK(strstr(err.message, "token"), "error does not name the token: %s",
          err.message);
    int rc = wait_child(child);
    CHECK(rc == 0, "secondary saw a connection: exit %d", rc);
    printf("test-transport %s: refused with \"%s\"; the secondary never "
           "accepted a control connection, so no rkey left it\n",
           test_name, err.message);
    return 0;
}

/* ------------------------------------------------- hostile descriptors */

/*
 * A hostile primary's descriptors.  The library's write path never sends
 * a bad one (the installed library has no fault injection), so the test
 * forges them with wire.c's encoder and posts them on a real channel's QP
 * from a buffer of its own, as the channel's next descriptor.  Each must
 * fail the secondary's session with -EPROTO and the reason, before any
 * page of it is handed out, and the primary's session promptly.
 */
#define HOSTILE_LEN (1u << 20)

struct hostile {
    const char *what;
    uint32_t region;
    uint64_t offset;
    uint64_t seq_skip; /* descriptors skipped: 0 is the right seq */
    const char *want;  /* in the secondary's error */
};

static const struct hostile hostile_cases[] = {
    {"one page past the end", MAIN_ID, HOSTILE_LEN, 0, "out of bounds"},
    {"the last page, 8 bytes in", MAIN_ID, HOSTILE_LEN - PAGE + 8, 0,
     "unaligned"},
    {"2^64 - 4 KiB (wraps when a page is added)", MAIN_ID, -(uint64_t)PAGE, 0,
     "out of bounds"},
    {"a region the secondary has not", 99, 0, 0, "unknown region"},
    {"a sequence number one ahead", MAIN_ID, 0, 1, "out of sequence"},
};

/* What the hostile secondary's session ended with, for the parent. */
static char *hostile_error;

static int hostile_secondary(int port_fd, void *arg)
{
    struct rcolo_error err = {0};
    struct rcolo_session *s = listen_port0();
    struct rcolo_channel *ch;
    struct rcolo_desc d;

    CHECK(rcolo_region_add(s, MAIN_ID, "pc.ram", map_region(HOSTILE_LEN),
                           HOSTILE_LEN, PAGE, &err) == 0,
          "region: %s", err.message);
    report_port(s, port_fd);
    CHECK(rcolo_accept(s, TIMEOUT_MS, &err) == 0, "accept: %s", err.message);
    CHECK(rcolo_channel_accept(s, 0, TIMEOUT_MS, &ch, &err) == 0, "channel: %s",
          err.message);
    for (;;) {
        int ret = rcolo_channel_recv(ch, &d, TIMEOUT_MS);
        if (ret) {
            snprintf(hostile_error, 256, "%s", rcolo_session_error(s));
            return ret == -EPROTO ? 42 : 1;
        }
        /* Only the honest page may ever be handed out. */
        CHECK(d.kind == RCOLO_DESC_PAGES && d.n == 1 && d.offsets[0] == 0,
              "a hostile descriptor was handed out: region %u, %u pages",
              d.region_id, d.n);
        CHECK(rcolo_channel_release(ch, &d) == 0, "release");
    }
}

static void forge_descriptor(struct rcolo_session *s, struct rcolo_channel *ch,
                             const struct hostile *h)
{
    static uint8_t buf[256];
    struct ibv_mr *mr = ibv_reg_mr(s->pd, buf, sizeof(buf), 0);
    size_t len =
        rcolo_desc_encode(buf, sizeof(buf), 0, h->region,
                          ++ch->tx.seq + h->seq_skip, &h->offset, 1, NULL, 0);
    struct ibv_sge sge = {.addr = (uintptr_t)buf,
                          .length = (uint32_t)len,
                          .lkey = mr ? mr->lkey : 0};
    /* Unsignaled; should it be flushed, the channel takes it for one of
     * its own WRITEs that failed. */
    struct ibv_send_wr wr = {.wr_id = (uintptr_t)&ch->tx.write_ctx,
                             .sg_list = &sge,
                             .num_sge = 1,
                             .opcode = IBV_WR_SEND},
                       *bad;

    CHECK(mr, "ibv_reg_mr: %s", strerror(errno));
    CHECK(len > 0, "the encoder refused the descriptor");
    CHECK(rcolo_credits_take(&ch->tx.credits), "no credit for the forgery");
    CHECK(ibv_post_send(ch->id->qp, &wr, &bad) == 0, "ibv_post_send");
}

/* In its own process (see test-path's step()): a process that used verbs
 * must not fork the next secondary. */
static int hostile_case(const struct hostile *h)
{
    char port[8];
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    struct rcolo_session *s;
    struct rcolo_channel *ch;
    uint64_t zero = 0;

    pid_t child = fork_peer(hostile_secondary, NULL, port, sizeof(port));
    uri_for(&uri, port, NULL);
    CHECK(rcolo_connect(&uri, TIMEOUT_MS, &s, &err) == 0, "connect: %s",
          err.message);
    CHECK(rcolo_region_add(s, MAIN_ID, "pc.ram", map_region(HOSTILE_LEN),
                           HOSTILE_LEN, PAGE, &err) == 0,
          "region: %s", err.message);
    CHECK(rcolo_channel_connect(s, 0, TIMEOUT_MS, &ch, &err) == 0,
          "channel: %s", err.message);
    /* An honest page and a fence: the channel works, every credit back. */
    CHECK(rcolo_write_pages(ch, MAIN_ID, &zero, 1, NULL, 0) == 0 &&
              rcolo_fence(s, TIMEOUT_MS) == 0,
          "the honest page: %s", rcolo_session_error(s));
    double t0 = now_s();
    forge_descriptor(s, ch, h);
    int ret = rcolo_fence(s, 10000);
    double dt = now_s() - t0;
    int rc = wait_child(child);
    CHECK(rc == 42, "%s: the secondary did not fail with -EPROTO (exit %d)",
          h->what, rc);
    CHECK(strstr(hostile_error, h->want),
          "%s: the secondary's error does not say '%s': %s", h->what, h->want,
          hostile_error);
    CHECK(ret != 0 && ret != -ETIMEDOUT,
          "%s: the primary carried on (fence returned %d)", h->what, ret);
    printf("  %-42s -> secondary: %s; primary failed after %.2f s: %s\n",
           h->what, hostile_error, dt, rcolo_session_error(s));
    rcolo_session_destroy(s); /* deregisters what it registered; the
                                 forgery's buffer dies with the process */
    return 0;
}

static int test_hostile_descriptor(void)
{
    unsigned n = sizeof(hostile_cases) / sizeof(hostile_cases[0]);

    uri_channels = 1;
    hostile_error = mmap(NULL, 256, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(hostile_error != MAP_FAILED, "mmap");
    printf("test-transport hostile-descriptor: %u descriptors forged on a "
           "real channel, each in a new session (1 MiB region, 4 KiB "
           "pages):\n",
           n);
    for (unsigned i = 0; i < n; i++) {
        fflush(stdout);
        pid_t pid = fork();
        CHECK(pid >= 0, "fork");
        if (pid == 0) {
            alarm(120);
            int rc = hostile_case(&hostile_cases[i]);
            fflush(stdout);
            _exit(rc);
        }
        CHECK(wait_child(pid) == 0, "case '%s' failed", hostile_cases[i].what);
    }
    printf("test-transport hostile-descriptor: all %u refused by the "
           "secondary before any of their pages was handed out\n",
           n);
    return 0;
}

static int test_kill_secondary(void)
{
    char port[8];
    pid_t child = fork_secondary(port, sizeof(port), NULL, false);
    struct primary *p = connect_primary(port, NULL);
    uint64_t rng = 99, offs[BATCH];
    double t_kill = 0;
    int ret = 0;

    for (unsigned iter = 0; iter < 100000 && ret == 0; iter++) {
        if (iter == 200) {
            kill(child, SIGKILL); /* mid-checkpoint */
            t_kill = now_s();
        }
        for (unsigned i = 0; i < BATCH; i++) {
            offs[i] = (xorshift(&rng) % (MAIN_LEN / PAGE)) * PAGE;
        }
        qsort(offs, BATCH, 8, cmp_u64);
        ret = rcolo_write_pages(p->ch[iter % CHANNELS], MAIN_ID, offs, 1, NULL,
                                0);
        if (ret == 0 && iter % 50 == 49) {
            ret = rcolo_fence(p->s, 30000);
        }
        if (t_kill && now_s() - t_kill > 30) {
            FAIL("no error 30 s after the secondary was killed");
        }
    }
    CHECK(ret != 0 && ret != -ETIMEDOUT, "primary returned %d", ret);
    wait_child(child);
    printf("test-transport kill-secondary: secondary SIGKILLed mid-checkpoint;"
           " the primary failed after %.2f s with %d: %s\n",
           now_s() - t_kill, ret, rcolo_session_error(p->s));
    primary_close(p);
    return 0;
}

/*
 * A secondary that is alive but stalled (SIGSTOP: its kernel still
 * acknowledges every RDMA WRITE and SEND, so no work request fails) must end
 * the primary's session with an error that says so, within the session's
 * timeout, instead of blocking it forever in a credit or fence wait.
 */
/* A session ended by a stalled peer: -ETIMEDOUT, an error that says
 * @want, between @lo and @hi seconds after the stall began. */
static void check_stall_error(struct rcolo_session *s, int ret,
                              const char *want, double waited, double lo,
                              double hi, const char *who)
{
    CHECK(ret == -ETIMEDOUT, "%s returned %d (%s), not -ETIMEDOUT", who, ret,
          rcolo_session_error(s));
    CHECK(strstr(rcolo_session_error(s), want),
          "%s: the error does not say \"%s\": %s", who, want,
          rcolo_session_error(s));
    CHECK(waited >= lo && waited < hi,
          "%s failed %.2f s after the stall began, expected %.1f-%.0f s", who,
          waited, lo, hi);
}

static int test_stall_secondary(void)
{
    char port[8];
    pid_t child = fork_secondary(port, sizeof(port), NULL, false);
    struct primary *p;
    uint64_t rng = 7, offs[BATCH];
    double t_stop, waited;
    int ret;

    uri_timeout_ms = 2000;
    p = connect_primary(port, NULL);
    ret = rcolo_fence(p->s, TIMEOUT_MS);
    CHECK(ret == 0, "first fence: %d (%s)", ret, rcolo_session_error(p->s));
    kill(child, SIGSTOP);
    t_stop = now_s();
    for (unsigned iter = 0; ret == 0; iter++) {
        for (unsigned i = 0; i < BATCH; i++) {
            offs[i] = (xorshift(&rng) % (MAIN_LEN / PAGE)) * PAGE;
        }
        qsort(offs, BATCH, 8, cmp_u64);
        ret = rcolo_write_pages(p->ch[iter % CHANNELS], MAIN_ID, offs, BATCH,
                                NULL, 0);
        if (ret == 0 && iter % 50 == 49) {
            ret = rcolo_fence(p->s, TIMEOUT_MS);
        }
        if (now_s() - t_stop > 20) {
            FAIL("no error 20 s after the secondary was stopped");
        }
    }
    waited = now_s() - t_stop;
    check_stall_error(p->s, ret, "stalled", waited, 1.5, 10, "primary");
    /* The wait cut short by the failure is the longest owed wait the stats
     * report: the credit wait's own 2 s, or less when the keepalive (a
     * ping sent up to 0.5 s before the stop) expired first. */
    struct rcolo_session_stats st;
    rcolo_session_get_stats(p->s, &st);
    double owed_max = st.total.owed_wait_ns_max / 1e9;
    CHECK(owed_max >= 1.3 && owed_max <= waited + 0.1,
          "longest owed wait %.3f s, expected about the 2 s timeout "
          "(failed after %.2f s)",
          owed_max, waited);
    kill(child, SIGKILL);
    wait_child(child);
    printf("test-transport stall-secondary: secondary SIGSTOPped (its "
           "kernel kept acknowledging); with timeout=2000 the primary "
           "failed after %.2f s with -ETIMEDOUT: %s; stats: longest owed "
           "wait %.3f s\n",
           waited, rcolo_session_error(p->s), owed_max);
    primary_close(p);
    return 0;
}

/*
 * A peer whose process stops while nothing is owed (COLO between
 * checkpoints, or waiting for a reply on the stream): only the keepalive
 * can notice.  Part 1: the secondary stops, the idle primary's session
 * must fail; part 2: the primary stops, the idle secondary's must.
 */
static double wait_failed(struct rcolo_session *s, double t0)
{
    while (rcolo_session_status(s) == 0) {
        if (now_s() - t0 > 20) {
            FAIL("no error 20 s after the peer was stopped");
        }
        usleep(10000);
    }
    return now_s() - t0;
}

static void check_keepalive_failure(struct rcolo_session *s, double waited,
                                    const char *who)
{
    /* Ping every 0.5 s; the unanswered one expires 2 s after it went. */
    check_stall_error(s, rcolo_session_status(s),
                      "stalled: it answered no keepalive", waited, 1.4, 6, who);
}

static int test_stall_idle(void)
{
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    char port[8];
    double waited;
    int fds[2];

    /* Every child is forked before this process uses verbs.  The child of
     * part 2 is the primary: it waits for the port, connects, goes idle. */
    uri_timeout_ms = 2000;
    CHECK(pipe(fds) == 0, "pipe");
    pid_t idle_primary = fork();
    CHECK(idle_primary >= 0, "fork");
    if (idle_primary == 0) {
        struct rcolo_session *ps;
        struct rcolo_channel *ch;
        uint16_t p16;
        check_side = "primary";
        close(fds[1]);
        CHECK(read(fds[0], &p16, sizeof(p16)) == sizeof(p16), "no port");
        snprintf(port, sizeof(port), "%u", p16);
        uri_for(&uri, port, NULL);
        CHECK(rcolo_connect(&uri, TIMEOUT_MS, &ps, &err) == 0, "connect: %s",
              err.message);
        CHECK(rcolo_channel_connect(ps, 0, TIMEOUT_MS, &ch, &err) == 0,
              "channel: %s", err.message);
        for (;;) {
            pause();
        }
    }
    close(fds[0]);
    pid_t child = fork_secondary(port, sizeof(port), NULL, false);

    /* Part 1: the secondary stops while the primary sends nothing. */
    struct primary *p = connect_primary(port, NULL);
    int ret = rcolo_fence(p->s, TIMEOUT_MS);
    CHECK(ret == 0, "fence: %d (%s)", ret, rcolo_session_error(p->s));
    usleep(1500000); /* idle, healthy: keepalives come and go */
    CHECK(rcolo_session_status(p->s) == 0, "idle session failed: %s",
          rcolo_session_error(p->s));
    kill(child, SIGSTOP);
    waited = wait_failed(p->s, now_s());
    check_keepalive_failure(p->s, waited, "primary");
    printf("test-transport stall-idle: secondary SIGSTOPped while the "
           "primary sent nothing: the primary failed after %.2f s "
           "(timeout=2000): %s\n",
           waited, rcolo_session_error(p->s));
    kill(child, SIGKILL);
    wait_child(child);
    primary_close(p);

    /* Part 2: the primary stops while the secondary waits for data. */
    check_side = "secondary";
    struct rcolo_session *s;
    struct rcolo_channel *ch;
    uri_for(&uri, "0", NULL);
    CHECK(rcolo_listen(&uri, &s, &err) == 0, "listen: %s", err.message);
    uint16_t p16 = (uint16_t)rcolo_session_port(s);
    CHECK(write(fds[1], &p16, sizeof(p16)) == sizeof(p16), "pipe");
    close(fds[1]);
    CHECK(rcolo_accept(s, TIMEOUT_MS, &err) == 0, "accept: %s", err.message);
    CHECK(rcolo_channel_accept(s, 0, TIMEOUT_MS, &ch, &err) == 0, "channel: %s",
          err.message);
    usleep(1500000);
    CHECK(rcolo_session_status(s) == 0, "idle session failed: %s",
          rcolo_session_error(s));
    kill(idle_primary, SIGSTOP);
    waited = wait_failed(s, now_s());
    check_keepalive_failure(s, waited, "secondary");
    printf("test-transport stall-idle: primary SIGSTOPped while idle: the "
           "secondary failed after %.2f s: %s\n",
           waited, rcolo_session_error(s));
    kill(idle_primary, SIGKILL);
    wait_child(idle_primary);
    rcolo_session_destroy(s);
    return 0;
}

/*
 * A secondary whose process runs (its session thread answers every
 * keepalive) but whose application consumes nothing: the primary's wait
 * for credits is what must end, after the owed deadline
 * (RCOLO_OWED_FACTOR x timeout=), with an error that names it.
 */
static int stubborn_secondary(int port_fd, void *arg)
{
    struct rcolo_error err = {0};
    struct rcolo_session *s = listen_port0();
    struct rcolo_channel *ch[CHANNELS];
    uint8_t *cache = map_region(MAIN_LEN);
    uint8_t *huge = map_region(HUGE_LEN);

    (void)arg;
    CHECK(rcolo_region_add(s, MAIN_ID, "pc.ram", cache, MAIN_LEN, PAGE, &err) ==
              0,
          "region: %s", err.message);
    CHECK(rcolo_region_add(s, HUGE_ID, "huge.ram", huge, HUGE_LEN, HUGE_PAGE,
                           &err) == 0,
          "region: %s", err.message);
    report_port(s, port_fd);
    CHECK(rcolo_accept(s, TIMEOUT_MS, &err) == 0, "accept: %s", err.message);
    for (unsigned i = 0; i < CHANNELS; i++) {
        CHECK(rcolo_channel_accept(s, i, TIMEOUT_MS, &ch[i], &err) == 0,
              "channel %u: %s", i, err.message);
    }
    sleep(60); /* alive, consuming nothing; the parent kills us */
    return 0;
}

static int test_stall_owed(void)
{
    char port[8];
    uint64_t off = 0;
    int ret;

    uri_timeout_ms = 2000;
    pid_t child = fork_peer(stubborn_secondary, NULL, port, sizeof(port));
    struct primary *p = connect_primary(port, NULL);
    double t0 = now_s(), waited;
    while ((ret = rcolo_write_pages(p->ch[0], MAIN_ID, &off, 1, NULL, 0)) ==
           0) {
        off = (off + PAGE) % MAIN_LEN;
        if (now_s() - t0 > 30) {
            FAIL("no error 30 s after the secondary stopped consuming");
        }
    }
    waited = now_s() - t0;
    check_stall_error(p->s, ret, "returned no credit for 8000 ms", waited, 7.5,
                      15, "primary");
    kill(child, SIGKILL);
    wait_child(child);
    printf("test-transport stall-owed: a secondary that answers keepalives "
           "but consumes nothing: with timeout=2000 the primary failed after "
           "%.2f s (owed deadline 4 x 2 s) with -ETIMEDOUT: %s\n",
           waited, rcolo_session_error(p->s));
    primary_close(p);
    return 0;
}

static int test_kill_primary(void)
{
    /* The child is the primary; the parent observes the secondary.  Fork
     * before any verbs use, and hand the port over a pipe. */
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    char port[8];
    int fds[2];

    CHECK(pipe(fds) == 0, "pipe");
    pid_t child = fork();
    CHECK(child >= 0, "fork");
    if (child == 0) {
        struct rcolo_session *ps;
        struct rcolo_channel *ch;
        uint16_t p16;
        check_side = "primary";
        close(fds[1]);
        CHECK(read(fds[0], &p16, sizeof(p16)) == sizeof(p16), "no port");
        snprintf(port, sizeof(port), "%u", p16);
        uint8_t *mem = map_region(MAIN_LEN);
        uri_for(&uri, port, NULL);
        CHECK(rcolo_connect(&uri, TIMEOUT_MS, &ps, &err) == 0, "connect: %s",
              err.message);
        CHECK(rcolo_region_add(ps, MAIN_ID, "pc.ram", mem, MAIN_LEN, PAGE,
                               &err) == 0,
              "region: %s", err.message);
        CHECK(rcolo_channel_connect(ps, 0, TIMEOUT_MS, &ch, &err) == 0,
              "channel: %s", err.message);
        for (uint64_t i = 0;; i++) {
            uint64_t off = (i % (MAIN_LEN / PAGE)) * PAGE;
            if (rcolo_write_pages(ch, MAIN_ID, &off, 1, NULL, 0)) {
                _exit(1);
            }
        }
    }
    close(fds[0]);
    check_side = "secondary";
    struct rcolo_session *s;
    uri_for(&uri, "0", NULL);
    CHECK(rcolo_listen(&uri, &s, &err) == 0, "listen: %s", err.message);
    uint8_t *cache = map_region(MAIN_LEN);
    CHECK(rcolo_region_add(s, MAIN_ID, "pc.ram", cache, MAIN_LEN, PAGE, &err) ==
              0,
          "region: %s", err.message);
    uint16_t p16 = (uint16_t)rcolo_session_port(s);
    CHECK(write(fds[1], &p16, sizeof(p16)) == sizeof(p16), "pipe");
    close(fds[1]);

    struct rcolo_channel *ch;
    CHECK(rcolo_accept(s, TIMEOUT_MS, &err) == 0, "accept: %s", err.message);
    CHECK(rcolo_channel_accept(s, 0, TIMEOUT_MS, &ch, &err) == 0, "channel: %s",
          err.message);
    struct rcolo_desc d;
    int ret;
    unsigned got = 0;
    double t_kill = 0;
    while ((ret = rcolo_channel_recv(ch, &d, 30000)) == 0) {
        rcolo_channel_release(ch, &d);
        if (++got == 500) {
            kill(child, SIGKILL);
            t_kill = now_s();
        }
    }
    CHECK(t_kill > 0, "recv failed before the kill: %d (%s)", ret,
          rcolo_session_error(s));
    CHECK(ret != -ETIMEDOUT, "secondary only timed out: no error seen");
    wait_child(child);
    printf("test-transport kill-primary: primary SIGKILLed after %u "
           "descriptors; the secondary's recv failed after %.2f s with %d: "
           "%s\n",
           got, now_s() - t_kill, ret, rcolo_session_error(s));
    rcolo_session_destroy(s);
    munmap(cache, MAIN_LEN);
    return 0;
}

/* ----------------------------------------------------------- stream */

#define STREAM_UP   (40u << 20) /* primary -> secondary */
#define STREAM_DOWN (8u << 20)  /* secondary -> primary, concurrently */

struct stream_writer {
    struct rcolo_session *s;
    uint32_t len;
    uint64_t seed;
    uint64_t calls;    /* rcolo_stream_write/writev calls */
    uint64_t elements; /* buffers handed over (iov elements) */
};

/*
 * Hand @buf over as QEMU's QEMUFile does: a vector of up to 64 elements,
 * many of them tiny (8-byte headers between 4 KiB pages).
 */
static void stream_writev_all(struct stream_writer *w, uint8_t *buf, size_t n,
                              uint64_t *rng)
{
    struct iovec iov[64];
    size_t off = 0;

    while (off < n) {
        int cnt = 0;
        size_t len = 0;

        while (cnt < 64 && off + len < n) {
            size_t piece = xorshift(rng) % 3 ? 1 + xorshift(rng) % 16
                                             : 1 + xorshift(rng) % 5000;
            if (piece > n - off - len) {
                piece = n - off - len;
            }
            iov[cnt].iov_base = buf + off + len;
            iov[cnt].iov_len = piece;
            len += piece;
            cnt++;
        }
        ssize_t r = rcolo_stream_writev(w->s, iov, cnt, false);
        CHECK(r == (ssize_t)len, "stream writev: %zd of %zu (%s)", r, len,
              rcolo_session_error(w->s));
        w->calls++;
        w->elements += (uint64_t)cnt;
        off += len;
    }
}

static void *stream_writer_thread(void *opaque)
{
    struct stream_writer *w = opaque;
    static __thread uint8_t buf[200000];
    uint64_t rng = w->seed, pos = 0;

    while (pos < w->len) {
        size_t n = 1 + xorshift(&rng) % sizeof(buf);
        if (n > w->len - pos) {
            n = w->len - pos;
        }
        for (size_t i = 0; i < n; i++) {
            buf[i] = (uint8_t)((pos + i) * 131 + (pos + i) / 4099);
        }
        if (xorshift(&rng) % 2) {
            stream_write_all(w->s, buf, n);
            w->calls++;
            w->elements++;
        } else {
            stream_writev_all(w, buf, n, &rng);
        }
        pos += n;
    }
    CHECK(rcolo_stream_close(w->s) == 0, "stream close");
    return NULL;
}

/* Read everything with non-blocking reads and poll(); check the bytes. */
static uint64_t stream_read_verify(struct rcolo_session *s, uint64_t seed,
                                   unsigned *polls)
{
    static __thread uint8_t buf[300000];
    struct pollfd pfd = {.fd = rcolo_stream_fd(s), .events = POLLIN};
    uint64_t rng = seed, pos = 0;

    for (;;) {
        size_t want = 1 + xorshift(&rng) % sizeof(buf);
        ssize_t n = rcolo_stream_read(s, buf, want, true);
        if (n == -EAGAIN) {
            CHECK(poll(&pfd, 1, 10000) == 1,
                  "stream fd never became "
                  "readable (at byte %" PRIu64 ")",
                  pos);
            (*polls)++;
            continue;
        }
        if (n == 0) {
            return pos;
        }
        CHECK(n > 0 && (size_t)n <= want, "stream read returned %zd (%s)", n,
              rcolo_session_error(s));
        for (ssize_t i = 0; i < n; i++, pos++) {
            CHECK(buf[i] == (uint8_t)(pos * 131 + pos / 4099),
                  "stream byte %" PRIu64 " corrupted", pos);
        }
    }
}

static void stream_side(struct rcolo_session *s, uint32_t send, uint32_t recv,
                        const char *who)
{
    struct stream_writer w = {.s = s, .len = send, .seed = send};
    pthread_t tid;
    unsigned polls = 0;

    pthread_create(&tid, NULL, stream_writer_thread, &w);
    uint64_t got = stream_read_verify(s, recv * 7ull, &polls);
    pthread_join(tid, NULL);
    /*
     * Packing: each call may end in a part-filled message, but no more.
     * One message per element (no packing) would exceed this bound.
     */
    struct rcolo_session_stats st;
    rcolo_session_get_stats(s, &st);
    uint64_t bound = send / 65536 + w.calls;
    CHECK(st.stream_messages_sent <= bound,
          "%s: %" PRIu64 " stream messages for %u bytes in %" PRIu64
          " calls (at most %" PRIu64 " expected)",
          who, st.stream_messages_sent, send, w.calls, bound);
    CHECK(w.elements > bound,
          "%s: the test handed over too few small "
          "elements (%" PRIu64 ") to show packing",
          who, w.elements);
    printf("test-transport stream: %s wrote %" PRIu64 " buffers in %" PRIu64
           " calls as %" PRIu64 " messages (at most 64 KiB each)\n",
           who, w.elements, w.calls, st.stream_messages_sent);
    CHECK(got == recv,
          "%s read %" PRIu64 " bytes before end of stream, "
          "expected %u",
          who, got, recv);
    printf("test-transport stream: %s sent %u bytes and received %" PRIu64
           " bytes, every byte checked, end of stream seen (%u polls on the "
           "stream fd)\n",
           who, send, got, polls);
    fflush(stdout);
}

static int stream_secondary(int port_fd, void *arg)
{
    struct rcolo_error err = {0};
    struct rcolo_session *s = listen_and_report(port_fd);

    CHECK(rcolo_accept(s, TIMEOUT_MS, &err) == 0, "accept: %s", err.message);
    stream_side(s, STREAM_DOWN, STREAM_UP, "secondary");
    rcolo_session_destroy(s);
    return 0;
}

static int test_stream(void)
{
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    struct rcolo_session *s;
    char port[8];

    pid_t child = fork_peer(stream_secondary, NULL, port, sizeof(port));
    uri_for(&uri, port, NULL);
    CHECK(rcolo_connect(&uri, TIMEOUT_MS, &s, &err) == 0, "connect: %s",
          err.message);
    double t0 = now_s();
    stream_side(s, STREAM_UP, STREAM_DOWN, "primary");
    double dt = now_s() - t0;
    struct rcolo_session_stats st;
    rcolo_session_get_stats(s, &st);
    CHECK(st.stream_bytes_sent == STREAM_UP &&
              st.stream_bytes_received == STREAM_DOWN,
          "stream stats %" PRIu64 "/%" PRIu64, st.stream_bytes_sent,
          st.stream_bytes_received);
    int rc = wait_child(child);
    CHECK(rc == 0, "secondary exited %d", rc);
    printf("test-transport stream: %.1f MB/s up while %.1f MB/s down, "
           "bounded to 16 x 64 KiB receive slots per side\n",
           STREAM_UP / dt / 1e6, STREAM_DOWN / dt / 1e6);
    rcolo_session_destroy(s);
    return 0;
}

/* ------------------------------------------------------ late region */

#define LATE_LEN (16ull << 20)

static int late_region_secondary(int port_fd, void *arg)
{
    struct rcolo_error err = {0};
    struct rcolo_session *s = listen_and_report(port_fd);
    struct rcolo_channel *ch;
    struct rcolo_desc d;
    const uint64_t len = LATE_LEN;

    CHECK(rcolo_accept(s, TIMEOUT_MS, &err) == 0, "accept: %s", err.message);
    /* Only now does the cache exist (QEMU: ram_load_setup). */
    usleep(200000);
    uint8_t *cache = map_region(len);
    CHECK(rcolo_region_add(s, MAIN_ID, "pc.ram", cache, len, PAGE, &err) == 0,
          "region: %s", err.message);
    CHECK(rcolo_regions_publish(s, &err) == 0, "publish: %s", err.message);
    CHECK(rcolo_channel_accept(s, 0, TIMEOUT_MS, &ch, &err) == 0, "channel: %s",
          err.message);
    /* Event-loop style: non-blocking recv, poll() on the channel fd. */
    unsigned pages = 0, polls = 0;
    struct pollfd pfd = {.fd = rcolo_channel_fd(ch), .events = POLLIN};
    for (;;) {
        int r = rcolo_channel_recv(ch, &d, 0);
        if (r == -EAGAIN) {
            CHECK(poll(&pfd, 1, TIMEOUT_MS) == 1,
                  "channel fd never became readable");
            polls++;
            continue;
        }
        CHECK(r == 0, "recv: %s", rcolo_session_error(s));
        bool fence = d.kind == RCOLO_DESC_FENCE;
        pages += d.n;
        CHECK(rcolo_channel_release(ch, &d) == 0, "release");
        if (fence) {
            break;
        }
    }
    for (uint64_t off = 0; off < len; off += PAGE) {
        CHECK(cache[off] == (uint8_t)(off / PAGE + 1),
              "page at %" PRIu64 " not replicated", off);
    }
    printf("test-transport late-region: secondary published its 16 MiB "
           "region after accepting; %u pages arrived in it, verified; "
           "descriptors taken from a poll() loop on the channel fd "
           "(%u wake-ups)\n",
           pages, polls);
    fflush(stdout);
    char c;
    rcolo_stream_read(s, &c, 1, false); /* until the primary is done */
    rcolo_session_destroy(s);
    return 0;
}

static int test_late_region(void)
{
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    const uint64_t len = LATE_LEN;
    char port[8];

    pid_t child = fork_peer(late_region_secondary, NULL, port, sizeof(port));
    struct rcolo_session *s;
    struct rcolo_channel *ch;
    uint8_t *mem = map_region(len);
    uri_for(&uri, port, NULL);
    uri.channels = 1;
    CHECK(rcolo_connect(&uri, TIMEOUT_MS, &s, &err) == 0, "connect: %s",
          err.message);
    /* Not advertised yet: adding it must be refused, waiting must work. */
    CHECK(rcolo_region_add(s, MAIN_ID, "pc.ram", mem, len, PAGE, &err) ==
              -ENOENT,
          "region added before it was advertised");
    double t0 = now_s();
    CHECK(rcolo_region_wait(s, MAIN_ID, TIMEOUT_MS, &err) == 0, "wait: %s",
          err.message);
    double waited = now_s() - t0;
    CHECK(rcolo_region_add(s, MAIN_ID, "pc.ram", mem, len, PAGE, &err) == 0,
          "region: %s", err.message);
    CHECK(rcolo_region_wait(s, 99, 100, &err) == -ETIMEDOUT,
          "waiting for a region never advertised did not time out");
    CHECK(rcolo_channel_connect(s, 0, TIMEOUT_MS, &ch, &err) == 0,
          "channel: %s", err.message);
    static uint64_t offs[BATCH];
    for (uint64_t off = 0; off < len;) {
        unsigned n = 0;
        while (n < BATCH && off < len) {
            mem[off] = (uint8_t)(off / PAGE + 1);
            offs[n++] = off;
            off += PAGE;
        }
        CHECK(rcolo_write_pages(ch, MAIN_ID, offs, n, NULL, 0) == 0,
              "write: %s", rcolo_session_error(s));
    }
    /* A channel fence: the secondary's loop ends at the fence it sees. */
    CHECK(rcolo_channel_fence_post(ch) == 0 &&
              rcolo_channel_fence_wait(ch, TIMEOUT_MS) == 0,
          "fence: %s", rcolo_session_error(s));
    rcolo_stream_close(s);
    int rc = wait_child(child);
    CHECK(rc == 0, "secondary exited %d", rc);
    printf("test-transport late-region: the primary waited %.3f s for the "
           "region, was refused it before, timed out on an unknown one\n",
           waited);
    rcolo_session_destroy(s);
    return 0;
}

/* --------------------------------------------------------- shutdown */

struct blocked {
    int (*fn)(struct blocked *);
    struct rcolo_session *s;
    struct rcolo_channel *ch;
    int ret;
    double woke;
    pthread_t tid;
};

static int block_recv(struct blocked *b)
{
    struct rcolo_desc d;
    return rcolo_channel_recv(b->ch, &d, -1);
}

static int block_read(struct blocked *b)
{
    char c;
    return (int)rcolo_stream_read(b->s, &c, 1, false);
}

static int block_fence(struct blocked *b)
{
    return rcolo_fence(b->s, -1);
}

static void *blocked_thread(void *opaque)
{
    struct blocked *b = opaque;
    b->ret = b->fn(b);
    b->woke = now_s();
    return NULL;
}

static int shutdown_secondary(int port_fd, void *arg)
{
    int *go = arg;
    struct rcolo_error err = {0};
    struct rcolo_session *s = listen_port0();

    /* Secondary: accepts, takes the page descriptor and never releases it,
     * so the primary's fence blocks; both sides shut down from a thread. */
    struct blocked b[2] = {{.fn = block_recv}, {.fn = block_read}};
    close(go[1]);
    uint8_t *cache = map_region(1 << 20);
    CHECK(rcolo_region_add(s, MAIN_ID, "pc.ram", cache, 1 << 20, PAGE, &err) ==
              0,
          "region: %s", err.message);
    /* Registered before the port is told: in the first region table. */
    report_port(s, port_fd);
    CHECK(rcolo_accept(s, TIMEOUT_MS, &err) == 0, "accept: %s", err.message);
    CHECK(rcolo_channel_accept(s, 0, TIMEOUT_MS, &b[0].ch, &err) == 0,
          "channel: %s", err.message);
    /* Wait until the primary's fence is pending, then block. */
    char c;
    CHECK(read(go[0], &c, 1) == 1, "go");
    struct rcolo_desc d;
    CHECK(rcolo_channel_recv(b[0].ch, &d, TIMEOUT_MS) == 0 &&
              d.kind == RCOLO_DESC_PAGES && d.n == 1,
          "page descriptor");
    b[1].s = s;
    pthread_create(&b[1].tid, NULL, blocked_thread, &b[1]);
    usleep(300000);
    double t0 = now_s();
    rcolo_session_shutdown(s); /* the fence is never released */
    pthread_join(b[1].tid, NULL);
    CHECK(b[1].ret == -ESHUTDOWN, "blocked read returned %d", b[1].ret);
    CHECK(b[1].woke - t0 < 1.0, "blocked read woke after %.2f s",
          b[1].woke - t0);
    CHECK(rcolo_channel_recv(b[0].ch, &d, -1) == -ESHUTDOWN,
          "recv after shutdown");
    printf("test-transport shutdown (secondary): a thread blocked in "
           "rcolo_stream_read woke %.3f s after rcolo_session_shutdown "
           "with -ESHUTDOWN\n",
           b[1].woke - t0);
    fflush(stdout);
    rcolo_session_destroy(s);
    return 0;
}

static int test_shutdown(void)
{
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    char port[8];
    static int go[2];

    CHECK(pipe(go) == 0, "pipe");
    pid_t child = fork_peer(shutdown_secondary, go, port, sizeof(port));
    close(go[0]);
    struct rcolo_session *s;
    struct blocked b = {.fn = block_fence};
    uint8_t *mem = map_region(1 << 20);
    uri_for(&uri, port, NULL);
    uri.channels = 1;
    CHECK(rcolo_connect(&uri, TIMEOUT_MS, &s, &err) == 0, "connect: %s",
          err.message);
    CHECK(rcolo_region_add(s, MAIN_ID, "pc.ram", mem, 1 << 20, PAGE, &err) == 0,
          "region: %s", err.message);
    CHECK(rcolo_channel_connect(s, 0, TIMEOUT_MS, &b.ch, &err) == 0,
          "channel: %s", err.message);
    uint64_t off = 0;
    CHECK(rcolo_write_pages(b.ch, MAIN_ID, &off, 1, NULL, 0) == 0, "write: %s",
          rcolo_session_error(s));
    b.s = s;
    pthread_create(&b.tid, NULL, blocked_thread, &b);
    CHECK(write(go[1], "g", 1) == 1, "go");
    /* The secondary never releases the page: the fence blocks until the
     * secondary's shutdown disconnects us. */
    pthread_join(b.tid, NULL);
    CHECK(b.ret == -ECONNRESET || b.ret == -ESHUTDOWN,
          "blocked fence returned %d (%s)", b.ret, rcolo_session_error(s));
    int rc = wait_child(child);
    CHECK(rc == 0, "secondary exited %d", rc);
    /* Our own shutdown on an already failed session: no-op, no hang. */
    double t0 = now_s();
    rcolo_session_shutdown(s);
    rcolo_session_shutdown(s);
    printf("test-transport shutdown (primary): a thread blocked in "
           "rcolo_fence returned %d when the peer shut down (%s); repeated "
           "shutdown took %.3f s\n",
           b.ret, rcolo_session_error(s), now_s() - t0);
    rcolo_session_destroy(s);
    return 0;
}
/* ------------------------------------------------- stream-rate (bench) */

/*
 * Not a test (no meson entry; figures are printed, never asserted): the
 * stream's rate for QEMUFile-shaped writes, 8-byte headers between 4 KiB
 * pages, 64 elements per call, alternately one rcolo_stream_write per
 * element (as the QEMU glue did before rcolo_stream_writev) and one
 * rcolo_stream_writev per vector.  docs/benchmarks.md quotes it.
 */
#define RATE_BYTES  (24u << 20)
#define RATE_ROUNDS 4

static int rate_secondary(int port_fd, void *arg)
{
    struct rcolo_error err = {0};
    struct rcolo_session *s = listen_and_report(port_fd);
    static uint8_t buf[1 << 20];
    CHECK(rcolo_accept(s, TIMEOUT_MS, &err) == 0, "accept: %s", err.message);
    while (rcolo_stream_read(s, buf, sizeof(buf), false) > 0) {
    }
    rcolo_session_destroy(s);
    return 0;
}

static int test_stream_rate(void)
{
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    struct rcolo_session *s;
    char port[8];
    static uint8_t page[4096], hdr[8];
    pid_t child = fork_peer(rate_secondary, NULL, port, sizeof(port));
    uri_for(&uri, port, NULL);
    CHECK(rcolo_connect(&uri, TIMEOUT_MS, &s, &err) == 0, "connect: %s",
          err.message);
    for (int r = 0; r < RATE_ROUNDS; r++) {
        bool vec = r % 2;
        struct rcolo_session_stats a, b;
        rcolo_session_get_stats(s, &a);
        double t0 = now_s();
        for (size_t done = 0; done < RATE_BYTES; done += 32 * (4096 + 8)) {
            struct iovec iov[64];
            for (int k = 0; k < 32; k++) {
                iov[2 * k] = (struct iovec){hdr, 8};
                iov[2 * k + 1] = (struct iovec){page, 4096};
            }
            if (vec) {
                CHECK(rcolo_stream_writev(s, iov, 64, false) == 32 * 4104,
                      "stream writev: %s", rcolo_session_error(s));
            } else {
                for (int k = 0; k < 64; k++) {
                    CHECK(rcolo_stream_write(s, iov[k].iov_base, iov[k].iov_len,
                                             false) == (ssize_t)iov[k].iov_len,
                          "stream write: %s", rcolo_session_error(s));
                }
            }
        }
        double dt = now_s() - t0;
        rcolo_session_get_stats(s, &b);
        printf("stream-rate %-12s %.1f MB/s, %" PRIu64 " messages\n",
               vec ? "writev" : "per-element",
               (b.stream_bytes_sent - a.stream_bytes_sent) / dt / 1e6,
               b.stream_messages_sent - a.stream_messages_sent);
        fflush(stdout);
    }
    CHECK(rcolo_stream_close(s) == 0, "stream close");
    CHECK(wait_child(child) == 0, "secondary failed");
    rcolo_session_destroy(s);
    return 0;
}

/* ----------------------------------------------------------- partition */

/*
 * On the pair topology: the link between the nodes is cut (rxe-pair link
 * cut: nothing passes either way, both ports stay up, as behind a switch)
 * while a session is idle, or while the primary writes.  Each side must
 * find out by itself and fail with an error that names the cause; the
 * time each took is printed for each setting (docs/protocol.md has the
 * table).  The bound checked is the documented one: the keepalive's
 * timeout= plus a quarter (an idle session that sees no work request
 * fail), plus 2 s of scheduling slack.
 */
struct partition_case {
    const char *what;
    unsigned timeout_ms; /* 0: the default */
    const char *extra;   /* more URI options */
    bool busy;           /* the primary writes pages when the link goes */
};

static const struct partition_case partition_cases[] = {
    {"defaults, idle", 0, "", false},
    {"defaults, primary writing", 0, "", true},
    {"timeout=2000, idle", 2000, "", false},
    {"ack-timeout=18 (1.07 s), idle", 0, "&ack-timeout=18", false},
    {"ack-timeout=10 retry-count=3, idle", 0, "&ack-timeout=10&retry-count=3",
     false},
};

/* What the secondary of a partition case saw, for the parent. */
struct partition_seen {
    double failed_at; /* now_s() */
    char error[256];
};
static struct partition_seen *partition_seen;

static int partition_secondary(int port_fd, void *arg)
{
    struct rcolo_error err = {0};
    struct rcolo_session *s = listen_port0();
    struct rcolo_channel *ch;
    struct rcolo_desc d;

    CHECK(rcolo_region_add(s, MAIN_ID, "pc.ram", map_region(HOSTILE_LEN),
                           HOSTILE_LEN, PAGE, &err) == 0,
          "region: %s", err.message);
    report_port(s, port_fd);
    CHECK(rcolo_accept(s, TIMEOUT_MS, &err) == 0, "accept: %s", err.message);
    CHECK(rcolo_channel_accept(s, 0, TIMEOUT_MS, &ch, &err) == 0, "channel: %s",
          err.message);
    while (rcolo_channel_recv(ch, &d, -1) == 0) {
        rcolo_channel_release(ch, &d);
    }
    partition_seen->failed_at = now_s();
    snprintf(partition_seen->error, sizeof(partition_seen->error), "%s",
             rcolo_session_error(s));
    rcolo_session_destroy(s);
    return 0;
}

static void link_cmd(const char *what)
{
    char cmd[512];

    snprintf(cmd, sizeof(cmd), "%s link %s", getenv("RDMA_COLO_PAIR"), what);
    CHECK(system(cmd) == 0, "%s failed", cmd);
}

static volatile int writer_stop;

static void *partition_writer(void *arg)
{
    struct rcolo_channel *ch = arg;
    uint64_t rng = 7, offs[64];

    while (!writer_stop) {
        for (unsigned i = 0; i < 64; i++) {
            offs[i] = (xorshift(&rng) % (HOSTILE_LEN / PAGE)) * PAGE;
        }
        qsort(offs, 64, 8, cmp_u64);
        if (rcolo_write_pages(ch, MAIN_ID, offs, 64, NULL, 0)) {
            break;
        }
    }
    return NULL;
}

static int partition_case(const struct partition_case *c)
{
    char port[8];
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    struct rcolo_session *s;
    struct rcolo_channel *ch;
    uint64_t zero = 0;
    pthread_t writer;

    uri_timeout_ms = c->timeout_ms;
    uri_extra = c->extra;
    pid_t child = fork_peer(partition_secondary, NULL, port, sizeof(port));
    uri_for(&uri, port, NULL);
    CHECK(rcolo_connect(&uri, TIMEOUT_MS, &s, &err) == 0, "connect: %s",
          err.message);
    CHECK(rcolo_region_add(s, MAIN_ID, "pc.ram", map_region(HOSTILE_LEN),
                           HOSTILE_LEN, PAGE, &err) == 0,
          "region: %s", err.message);
    CHECK(rcolo_channel_connect(s, 0, TIMEOUT_MS, &ch, &err) == 0,
          "channel: %s", err.message);
    CHECK(rcolo_write_pages(ch, MAIN_ID, &zero, 1, NULL, 0) == 0 &&
              rcolo_fence(s, TIMEOUT_MS) == 0,
          "the first page: %s", rcolo_session_error(s));
    if (c->busy) {
        pthread_create(&writer, NULL, partition_writer, ch);
        usleep(300000);
    } else {
        usleep(2500000); /* idle: keepalives come and go */
    }
    CHECK(rcolo_session_status(s) == 0, "failed before the cut: %s",
          rcolo_session_error(s));
    double t0 = now_s();
    link_cmd("cut");
    double primary = wait_failed(s, t0);
    if (c->busy) {
        writer_stop = 1;
        pthread_join(writer, NULL);
    }
    CHECK(wait_child(child) == 0, "secondary failed");
    double secondary = partition_seen->failed_at - t0;
    link_cmd("heal");
    unsigned timeout = c->timeout_ms ? c->timeout_ms : RCOLO_DEFAULT_TIMEOUT_MS;
    double bound = timeout * 1.25 / 1000 + 2;
    printf("  %-36s primary %.2f s: %s\n  %-36s secondary %.2f s: %s\n",
           c->what, primary, rcolo_session_error(s), "", secondary,
           partition_seen->error);
    CHECK(primary <= bound && secondary <= bound,
          "%s: detected after %.2f s (primary) and %.2f s (secondary), "
          "beyond %.2f s",
          c->what, primary, secondary, bound);
    rcolo_session_destroy(s);
    return 0;
}

static int test_partition(void)
{
    unsigned n = sizeof(partition_cases) / sizeof(partition_cases[0]);
    const char *topo = getenv("RDMA_COLO_TOPOLOGY");

    CHECK(topo && !strcmp(topo, "pair") && getenv("RDMA_COLO_PAIR"),
          "needs the pair topology: scripts/with-rxe --topology pair");
    uri_channels = 1;
    partition_seen = mmap(NULL, sizeof(*partition_seen), PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(partition_seen != MAP_FAILED, "mmap");
    printf("test-transport partition: the link cut under %u sessions, time "
           "until each side failed:\n",
           n);
    for (unsigned i = 0; i < n; i++) {
        fflush(stdout);
        pid_t pid = fork();
        CHECK(pid >= 0, "fork");
        if (pid == 0) {
            alarm(120);
            int rc = partition_case(&partition_cases[i]);
            fflush(stdout);
            _exit(rc);
        }
        CHECK(wait_child(pid) == 0, "case '%s' failed",
              partition_cases[i].what);
    }
    printf("test-transport partition: every side of %u sessions found the "
           "cut link by itself, with its cause named, within timeout= "
           "+ 25 %% + 2 s\n",
           n);
    return 0;
}

static int test_replicate_plain(void)
{
    return test_replicate(false);
}

static int test_replicate_background(void)
{
    return test_replicate(true);
}

/*
 * Two sessions in one process (as in a QEMU whose failback overlaps)
 * share the device's context and so its async events, which either
 * session's thread may read.  An event must end only the session it is
 * about.  rxe raises IBV_EVENT_CQ_ERR when a CQ overflows: zero-length RDMA
 * WRITEs, signalled, posted on one channel of the first primary and never
 * reaped (the send queue frees its entries as they complete, the CQ does
 * not) overflow that channel's CQ.
 */
static int test_async_routing(void)
{
    char port1[8], port2[8];
    pid_t c1 = fork_secondary(port1, sizeof(port1), NULL, false);
    pid_t c2 = fork_secondary(port2, sizeof(port2), NULL, false);
    struct primary *p1 = connect_primary(port1, NULL);
    struct primary *p2 = connect_primary(port2, NULL);
    struct rcolo_channel *ch = p1->ch[0];
    struct ibv_send_wr wr =
                           {
                               .wr_id = (uintptr_t)&ch->tx.write_ctx,
                               .opcode = IBV_WR_RDMA_WRITE,
                               .send_flags = IBV_SEND_SIGNALED,
                           },
                       *bad;
    unsigned long posted = 0;
    double t0 = now_s();

    CHECK(p1->s->verbs == p2->s->verbs,
          "the two primaries are on different device contexts");
    CHECK(rcolo_fence(p1->s, TIMEOUT_MS) == 0 &&
              rcolo_fence(p2->s, TIMEOUT_MS) == 0,
          "fence before the event");
    while (rcolo_session_status(p1->s) == 0) {
        CHECK(now_s() - t0 < 20,
              "no CQ error after %lu completions on a CQ "
              "of %d",
              posted, ch->res.cq->cqe);
        if (ibv_post_send(ch->id->qp, &wr, &bad) == 0) {
            posted++;
        } else {
            usleep(1000); /* the send queue is full: let it complete */
        }
    }
    const char *why = rcolo_session_error(p1->s);
    CHECK(strstr(why, "CQ error"),
          "the first session failed for another "
          "reason: %s",
          why);
    usleep(200000); /* room for a misrouted event to land */
    CHECK(rcolo_session_status(p2->s) == 0, "the second session failed too: %s",
          rcolo_session_error(p2->s));
    CHECK(rcolo_fence(p2->s, TIMEOUT_MS) == 0,
          "the second session's fence "
          "after the event: %s",
          rcolo_session_error(p2->s));
    printf("test-transport async-routing: %lu unreaped completions overflowed "
           "a CQ of %d of the first of two sessions in this process: it "
           "failed after %.2f s (%s); the second, on the same device "
           "context, fenced on\n",
           posted, ch->res.cq->cqe, now_s() - t0, why);
    primary_close(p1);
    struct ckpt_msg done = {.kind = 2};
    stream_write_all(p2->s, &done, sizeof(done));
    CHECK(rcolo_stream_close(p2->s) == 0, "stream close");
    CHECK(wait_child(c2) == 0, "the second secondary failed");
    wait_child(c1); /* its primary is gone: it fails, as it should */
    primary_close(p2);
    return 0;
}

/* The tests, in the order --list prints them; tests/meson.build runs the
 * ones marked in_suite. */
static const struct {
    const char *name;
    int (*run)(void);
    bool in_suite;
    const char *what;
} tests[] = {
    {"replicate", test_replicate_plain, true,
     "checkpoints with every dirty pattern, verified byte for byte after "
     "each fence"},
    {"replicate-background", test_replicate_background, true,
     "the same with background pushes split by barriers"},
    {"session-fence", test_session_fence, true,
     "the session fence waits for every channel's releases"},
    {"async-routing", test_async_routing, true,
     "an async event ends the one of two sessions in a process it is about"},
    {"wrong-token", test_wrong_token, true, "refused before any rkey leaves"},
    {"hostile-descriptor", test_hostile_descriptor, true,
     "forged descriptors (bounds, alignment, region, sequence) fail both "
     "sides"},
    {"kill-secondary", test_kill_secondary, true,
     "the primary errors out, no hang"},
    {"stall-secondary", test_stall_secondary, true,
     "a SIGSTOPped secondary ends the primary's session within timeout="},
    {"stall-idle", test_stall_idle, true,
     "the keepalive finds a stopped peer while nothing is sent"},
    {"stall-owed", test_stall_owed, true,
     "a live secondary that returns no credit ends the session"},
    {"kill-primary", test_kill_primary, true,
     "the secondary errors out, no hang"},
    {"stream", test_stream, true,
     "48 MiB both ways at once in odd pieces, write and writev, poll()"},
    {"late-region", test_late_region, true,
     "the secondary publishes its cache after the primary connected"},
    {"shutdown", test_shutdown, true,
     "rcolo_session_shutdown wakes blocked recv/read/fence within 1 s"},
    {"partition", test_partition, false,
     "(pair topology) the link cut: both sides fail by themselves, timed"},
    {"stream-rate", test_stream_rate, false,
     "(benchmark) stream MB/s, a write per element versus one writev"},
};

int main(int argc, char **argv)
{
    size_t n = sizeof(tests) / sizeof(tests[0]);

    if (argc == 2 && !strcmp(argv[1], "--list")) {
        for (size_t i = 0; i < n; i++) {
            printf("%s%s\t%s\n", tests[i].name, tests[i].in_suite ? "" : " *",
                   tests[i].what);
        }
        return 0;
    }
    CHECK(argc == 2, "usage: test-transport TEST|--list");
    static char prog[64];

    test_name = argv[1];
    snprintf(prog, sizeof(prog), "test-transport %s", test_name);
    check_prog = prog;
    check_side = "primary";
    alarm(600);
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(test_name, tests[i].name)) {
            return tests[i].run();
        }
    }
    FAIL("unknown test %s (test-transport --list)", test_name);
}
