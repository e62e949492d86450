/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Synthetic guest RAM, deterministic from a seed, and the dirty patterns.
 *
 * Verification is O(dirty): the memory hash is the sum of per-page hashes
 * (each mixed with its page index), updated as pages change; both sides
 * keep one, the secondary over its guest copy.  A page that did not arrive,
 * arrived wrong or was not flushed changes the secondary's sum.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/resource.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "bench.h"

void bench_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "rdma-colo-bench: error: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
}

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t thread_user_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    return (uint64_t)ru.ru_utime.tv_sec * 1000000000ull +
           (uint64_t)ru.ru_utime.tv_usec * 1000ull;
}

uint64_t machine_busy_ns(void)
{
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");

    if (!f) {
        return 0;
    }
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0],
                   &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 8) {
        return 0;
    }
    /* user nice system [idle iowait] irq softirq steal, in 1/100 s */
    unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    return busy * 10000000ull;
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

uint64_t page_hash(const uint8_t *page, uint32_t size, uint64_t index)
{
    const uint64_t *w = (const uint64_t *)page;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (index * 0xff51afd7ed558ccdull);

    for (uint32_t i = 0; i < size / 8; i += 4) {
        h = (h ^ w[i]) * 0x100000001b3ull;
        h = (h ^ w[i + 1]) * 0x100000001b3ull;
        h = (h ^ w[i + 2]) * 0x100000001b3ull;
        h = (h ^ w[i + 3]) * 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

void guest_rehash_page(struct guest *g, uint64_t index)
{
    uint64_t h = page_hash(g->mem + index * g->page_size, g->page_size, index);
    g->total_hash += h - g->page_hash[index];
    g->page_hash[index] = h;
}

/* Touch every cache line of a page with fresh values. */
static void scribble(uint8_t *page, uint32_t size, uint64_t *rng)
{
    for (uint32_t off = 0; off < size; off += 64) {
        uint64_t v = xorshift(rng);
        memcpy(page + off, &v, 8);
    }
}

int guest_init(struct guest *g, uint64_t size, uint32_t page_size,
               uint64_t seed, bool hashes)
{
    memset(g, 0, sizeof(*g));
    g->size = size;
    g->page_size = page_size;
    g->pages = size / page_size;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE;
    if (page_size >= (2u << 20)) {
        flags |= MAP_HUGETLB;
    }
    g->mem = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (g->mem == MAP_FAILED && (flags & MAP_HUGETLB)) {
        /* No hugetlbfs pages: 2 MiB "pages" on normal memory still test
         * the transport's 2 MiB page size. */
        g->mem = mmap(NULL, size, PROT_READ | PROT_WRITE, flags & ~MAP_HUGETLB,
                      -1, 0);
    }
    if (g->mem == MAP_FAILED) {
        g->mem = NULL;
        BENCH_ERR("cannot allocate %llu MiB of guest memory: %s",
                  (unsigned long long)(size >> 20), strerror(errno));
        return -ENOMEM;
    }
    uint64_t rng = seed | 1;
    for (uint64_t p = 0; p < g->pages; p++) {
        scribble(g->mem + p * page_size, page_size, &rng);
    }
    if (hashes) {
        g->page_hash = calloc(g->pages, sizeof(uint64_t));
        for (uint64_t p = 0; p < g->pages; p++) {
            guest_rehash_page(g, p);
        }
    }
    return 0;
}

void guest_fini(struct guest *g)
{
    if (g->mem) {
        munmap(g->mem, g->size);
    }
    free(g->page_hash);
    memset(g, 0, sizeof(*g));
}

uint64_t workload_max_pages(const struct options *o)
{
    uint64_t pages = o->size / o->page_size;
    uint64_t want = (o->dirty + o->page_size - 1) / o->page_size;
    return want < pages ? want : pages;
}

static uint64_t pick(const struct options *o, uint64_t pages, uint64_t *rng,
                     uint64_t *run_left, uint64_t *run_next, unsigned i)
{
    enum pattern p = o->pattern;

    if (p == PAT_MIXED) {
        p = (enum pattern)(i % 3);
    }
    switch (p) {
    case PAT_HOTSET: {
        uint64_t hot = pages / 10 ? pages / 10 : 1;
        if (xorshift(rng) % 10 < 9) {
            return xorshift(rng) % hot;
        }
        return xorshift(rng) % pages;
    }
    case PAT_SEQUENTIAL:
        if (*run_left == 0) {
            *run_left = 16 + xorshift(rng) % 241; /* 64 KiB .. 1 MiB */
            *run_next = xorshift(rng) % pages;
        }
        (*run_left)--;
        return (*run_next)++ % pages;
    default:
        return xorshift(rng) % pages;
    }
}

void workload_dirty(struct guest *g, const struct options *o, uint64_t *rng,
                    uint64_t *offs, unsigned *n, uint64_t *zero,
                    unsigned *nzero, unsigned checkpoint)
{
    static uint64_t *chosen; /* bitmap of pages dirtied this checkpoint */
    static uint64_t chosen_words;
    uint64_t want = workload_max_pages(o), got = 0, tries = 0;
    uint64_t run_left = 0, run_next = 0;

    if (chosen_words != (g->pages + 63) / 64) {
        free(chosen);
        chosen_words = (g->pages + 63) / 64;
        chosen = calloc(chosen_words, 8);
    }
    /* Distinct pages, as QEMU's dirty bitmap yields them. */
    while (got < want && tries < want * 20) {
        uint64_t p =
            pick(o, g->pages, rng, &run_left, &run_next, (unsigned)tries++);
        if (!(chosen[p / 64] & (1ull << (p % 64)))) {
            chosen[p / 64] |= 1ull << (p % 64);
            got++;
        }
    }
    *n = *nzero = 0;
    for (uint64_t w = 0; w < chosen_words; w++) {
        uint64_t bits = chosen[w];
        chosen[w] = 0;
        while (bits) {
            uint64_t p = w * 64 + (uint64_t)__builtin_ctzll(bits);
            bits &= bits - 1;
            uint8_t *page = g->mem + p * g->page_size;
            if (o->zero_pct && xorshift(rng) % 100 < o->zero_pct) {
                memset(page, 0, g->page_size);
                zero[(*nzero)++] = p * g->page_size;
            } else {
                scribble(page, g->page_size, rng);
                offs[(*n)++] = p * g->page_size;
            }
            if (g->page_hash) {
                guest_rehash_page(g, p);
            }
        }
    }
    (void)checkpoint;
}

uint64_t first_diff_page(const struct guest *a, const struct guest *b)
{
    for (uint64_t p = 0; p < a->pages && p < b->pages; p++) {
        if (a->page_hash[p] != b->page_hash[p]) {
            return p;
        }
    }
    return UINT64_MAX;
}

void colo_mark(struct colo_secondary *c, uint64_t offset)
{
    uint64_t p = offset / c->guest->page_size;
    atomic_fetch_or_explicit(&c->bitmap[p / 64], 1ull << (p % 64),
                             memory_order_relaxed);
}

uint64_t colo_flush(struct colo_secondary *c)
{
    struct guest *g = c->guest;
    uint64_t copied = 0;

    for (uint64_t w = 0; w < (g->pages + 63) / 64; w++) {
        uint64_t bits =
            atomic_exchange_explicit(&c->bitmap[w], 0, memory_order_acq_rel);
        while (bits) {
            uint64_t p = w * 64 + (uint64_t)__builtin_ctzll(bits);
            bits &= bits - 1;
            memcpy(g->mem + p * g->page_size, c->cache + p * g->page_size,
                   g->page_size);
            if (g->page_hash) {
                guest_rehash_page(g, p);
            }
            copied++;
        }
    }
    return copied;
}
