/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The COLO checkpoint loop, the same for every transport:
 *   primary:   dirty (in --slices bursts while the guest "runs"; with
 *              background sync, the dirty pages go after each burst but the
 *              last, each push ended by barriers) -> send the pages still
 *              dirty over N channel threads -> sync every channel -> tell
 *              the secondary (hash) -> wait
 *   secondary: receive threads mark the bitmap; at the checkpoint the main
 *              thread flushes marked pages from the cache into its guest
 *              copy and compares memory hashes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

struct sender {
    const struct primary_ops *ops;
    const struct options *o;
    unsigned index;
    pthread_t tid;
    pthread_barrier_t *start, *done;
    const uint64_t *offs, *zero;
    unsigned n, nzero;
    bool stop;
    bool barrier; /* a background push: end with a barrier, not a fence */
    int ret;
    uint64_t last_send_ns; /* when its last page batch was posted */
    uint64_t cpu_ns;       /* thread CPU used in this checkpoint */
};

static void *sender_thread(void *opaque)
{
    struct sender *t = opaque;

    for (;;) {
        pthread_barrier_wait(t->start);
        if (t->stop) {
            return NULL;
        }
        uint64_t cpu0 = thread_cpu_ns();
        const uint64_t *offs = t->offs, *zero = t->zero;
        unsigned n = t->n, nzero = t->nzero;
        t->ret = 0;
        while ((n || nzero) && !t->ret) {
            unsigned bn = n < t->o->batch ? n : t->o->batch;
            unsigned bz = nzero < t->o->batch - bn ? nzero : t->o->batch - bn;
            t->ret = t->ops->send(t->ops->ctx, t->index, offs, bn, zero, bz);
            offs += bn;
            n -= bn;
            zero += bz;
            nzero -= bz;
        }
        t->last_send_ns = now_ns();
        if (!t->ret) {
            t->ret = t->barrier ? t->ops->barrier(t->ops->ctx, t->index)
                                : t->ops->fence(t->ops->ctx, t->index);
        }
        t->cpu_ns = thread_cpu_ns() - cpu0;
        pthread_barrier_wait(t->done);
    }
}

/* Split [0, n) into @parts contiguous chunks, multiples of @batch. */
static void split(unsigned n, unsigned parts, unsigned batch, unsigned i,
                  unsigned *start, unsigned *len)
{
    unsigned batches = (n + batch - 1) / batch;
    unsigned per = batches / parts, extra = batches % parts;
    unsigned b0 = i * per + (i < extra ? i : extra);
    unsigned nb = per + (i < extra ? 1 : 0);
    *start = b0 * batch < n ? b0 * batch : n;
    unsigned end = (b0 + nb) * batch < n ? (b0 + nb) * batch : n;
    *len = end - *start;
}

/*
 * The primary's dirty log: what each page became since it was last sent
 * (0 clean, 1 written, 2 zeroed), as QEMU's dirty bitmap plus its zero-page
 * detection see it.
 */
enum { PAGE_CLEAN, PAGE_WRITTEN, PAGE_ZEROED };

static void log_dirty(uint8_t *log, uint32_t page_size, const uint64_t *offs,
                      unsigned n, const uint64_t *zero, unsigned nzero)
{
    for (unsigned i = 0; i < n; i++) {
        log[offs[i] / page_size] = PAGE_WRITTEN;
    }
    for (unsigned i = 0; i < nzero; i++) {
        log[zero[i] / page_size] = PAGE_ZEROED;
    }
}

/* Take the logged pages, in address order, and clean the log. */
static void take_dirty(uint8_t *log, const struct guest *g, uint64_t *offs,
                       unsigned *n, uint64_t *zero, unsigned *nzero)
{
    *n = *nzero = 0;
    for (uint64_t p = 0; p < g->pages; p++) {
        if (log[p] == PAGE_WRITTEN) {
            offs[(*n)++] = p * g->page_size;
        } else if (log[p] == PAGE_ZEROED) {
            zero[(*nzero)++] = p * g->page_size;
        }
        log[p] = PAGE_CLEAN;
    }
}

/* Hand each sender thread its share of the lists and run one round. */
static int run_senders(struct sender *t, unsigned nch, unsigned batch,
                       pthread_barrier_t *start, pthread_barrier_t *done,
                       uint64_t *offs, unsigned n, uint64_t *zero,
                       unsigned nzero, bool barrier)
{
    int ret = 0;

    for (unsigned i = 0; i < nch; i++) {
        unsigned s0, len;
        split(n, nch, batch, i, &s0, &len);
        t[i].offs = offs + s0;
        t[i].n = len;
        split(nzero, nch, batch, i, &s0, &len);
        t[i].zero = zero + s0;
        t[i].nzero = len;
        t[i].barrier = barrier;
    }
    pthread_barrier_wait(start);
    pthread_barrier_wait(done);
    for (unsigned i = 0; i < nch; i++) {
        if (t[i].ret && !ret) {
            ret = t[i].ret;
        }
    }
    return ret;
}

/* Open or close the checkpoint window's busy polling on both sides: the
 * primary's fence waits spin; the secondary's waiters of @scope do. */
static int busy_poll(const struct primary_ops *ops, enum poll_scope scope)
{
    struct ckpt_cmd cmd = {
        .kind = CMD_BUSY_POLL, .index = scope, .hash = scope};
    struct ckpt_reply rep;
    int ret = ops->ctl_write(ops->ctx, &cmd, sizeof(cmd));
    if (!ret) {
        ret = ops->ctl_read(ops->ctx, &rep, sizeof(rep));
    }
    ops->busy_poll(ops->ctx, scope != POLL_OFF);
    return ret;
}

int drive_primary(const struct options *o, struct guest *g,
                  const struct primary_ops *ops, struct run_result *res)
{
    unsigned nch = o->channels;
    /* The dirty log can hold every page of the guest. */
    uint64_t *offs = calloc(g->pages + 1, 8), *zero = calloc(g->pages + 1, 8);
    struct sender *t = calloc(nch, sizeof(*t));
    pthread_barrier_t start, done;
    uint64_t rng = o->seed ^ 0x5eed;
    int ret = 0;

    res->name = o->bg ? "rdma-bg" : ops->name;
    res->samples = calloc(o->checkpoints, sizeof(struct sample));
    res->empty_fence_ns = calloc(o->empty_fences + 1, 8);
    pthread_barrier_init(&start, NULL, nch + 1);
    pthread_barrier_init(&done, NULL, nch + 1);
    for (unsigned i = 0; i < nch; i++) {
        t[i] = (struct sender){
            .ops = ops, .o = o, .index = i, .start = &start, .done = &done};
        pthread_create(&t[i].tid, NULL, sender_thread, &t[i]);
    }

    /* Each burst dirties its share of --dirty (the same workload seeds as
     * without bursts when there is one). */
    struct options burst = *o;
    burst.dirty = o->dirty / o->slices;
    uint8_t *log = calloc(g->pages, 1);

    for (unsigned k = 0; k < o->checkpoints && !ret; k++) {
        struct sample *s = &res->samples[k];
        unsigned n, nzero;

        for (unsigned j = 0; j < o->slices && !ret; j++) {
            if (o->interval_ms) {
                usleep(o->interval_ms * 1000u / o->slices); /* the guest runs */
            }
            workload_dirty(g, &burst, &rng, offs, &n, zero, &nzero,
                           k * o->slices + j);
            log_dirty(log, g->page_size, offs, n, zero, nzero);
            if (o->bg && j + 1 < o->slices) {
                /* Background sync: what is dirty now goes while the guest
                 * runs; re-dirtied pages go again later. */
                take_dirty(log, g, offs, &n, zero, &nzero);
                uint64_t b0 = now_ns();
                ret = run_senders(t, nch, o->batch, &start, &done, offs, n,
                                  zero, nzero, true);
                s->bg_ns += now_ns() - b0;
                s->bg_pages += n + nzero;
                s->bg_bytes += (uint64_t)n * g->page_size;
                for (unsigned i = 0; i < nch; i++) {
                    s->pri_cpu_ns += t[i].cpu_ns;
                }
            }
        }
        if (ret) {
            snprintf(res->error, sizeof(res->error),
                     "%s: background push before checkpoint %u: %s (%s)",
                     ops->name, k, strerror(ret < 0 ? -ret : ret),
                     ops->error(ops->ctx));
            break;
        }
        take_dirty(log, g, offs, &n, zero, &nzero);
        if (o->busy_poll == BUSY_ALL) {
            ret = busy_poll(ops, POLL_ALL); /* COLO: CHECKPOINT_REQUEST */
            if (ret) {
                break;
            }
        }
        uint64_t busy0 = machine_busy_ns();
        uint64_t t0 = now_ns();
        ret = run_senders(t, nch, o->batch, &start, &done, offs, n, zero, nzero,
                          false);
        uint64_t t1 = now_ns();
        uint64_t busy1 = machine_busy_ns();

        uint64_t last_send = t0;
        for (unsigned i = 0; i < nch; i++) {
            if (t[i].last_send_ns > last_send) {
                last_send = t[i].last_send_ns;
            }
            s->pri_cpu_ns += t[i].cpu_ns;
        }
        if (ret) {
            snprintf(res->error, sizeof(res->error),
                     "%s: checkpoint %u: %s (%s)", ops->name, k,
                     strerror(ret < 0 ? -ret : ret), ops->error(ops->ctx));
            break;
        }
        s->pages = n;
        s->zero_pages = nzero;
        s->bytes = (uint64_t)n * g->page_size;
        s->transfer_ns = t1 - t0;
        s->fence_ns = t1 - last_send;
        s->sys_cpu_ns = busy1 - busy0;

        if (o->busy_poll == BUSY_ALL) {
            ops->busy_poll(ops->ctx, false); /* the secondary's ends at flush */
        }
        struct ckpt_cmd cmd = {
            .kind = CMD_CHECKPOINT, .index = k, .hash = g->total_hash};
        struct ckpt_reply rep;
        ret = ops->ctl_write(ops->ctx, &cmd, sizeof(cmd));
        if (!ret) {
            ret = ops->ctl_read(ops->ctx, &rep, sizeof(rep));
        }
        if (ret || rep.index != k) {
            snprintf(res->error, sizeof(res->error),
                     "%s: checkpoint %u: control exchange failed (%s)",
                     ops->name, k, ops->error(ops->ctx));
            ret = ret ? ret : -EPROTO;
            break;
        }
        s->sec_cpu_ns = rep.sec_cpu_ns;
        s->sec_user_ns = rep.sec_user_ns;
        s->flush_ns = rep.flush_ns;
        s->verified = rep.verified;
        res->count = k + 1;
        if (o->verify && !rep.verified) {
            uint64_t first = UINT64_MAX;
            if (ops->ctl_write(ops->ctx, g->page_hash,
                               g->pages * sizeof(uint64_t)) == 0) {
                ops->ctl_read(ops->ctx, &first, sizeof(first));
            }
            rep.first_bad_page = first;
            snprintf(res->error, sizeof(res->error),
                     "%s: checkpoint %u: VERIFICATION FAILED: the "
                     "secondary's guest copy differs from the primary's "
                     "memory, first differing page %llu (offset 0x%llx)",
                     ops->name, k, (unsigned long long)rep.first_bad_page,
                     (unsigned long long)rep.first_bad_page * g->page_size);
            ret = -EIO;
            break;
        }
        progress(o, ops->name, k + 1, o->checkpoints,
                 s->bytes / (double)s->transfer_ns);
    }

    /* Empty checkpoints: the fence alone on every channel, from one thread,
     * inside one checkpoint window. */
    if (!ret && o->empty_fences && o->busy_poll != BUSY_NONE) {
        ret = busy_poll(ops, POLL_FENCE);
    }
    for (unsigned k = 0; k < o->empty_fences && !ret; k++) {
        uint64_t t0 = now_ns();
        ret = ops->fence_all(ops->ctx);
        res->empty_fence_ns[k] = now_ns() - t0;
        if (ret) {
            snprintf(res->error, sizeof(res->error), "%s: empty fence: %s",
                     ops->name, ops->error(ops->ctx));
            break;
        }
        res->empty_count = k + 1;
    }
    if (!ret && o->empty_fences && o->busy_poll != BUSY_NONE) {
        ret = busy_poll(ops, POLL_OFF);
    }

    for (unsigned i = 0; i < nch; i++) {
        t[i].stop = true;
    }
    pthread_barrier_wait(&start);
    for (unsigned i = 0; i < nch; i++) {
        pthread_join(t[i].tid, NULL);
    }
    if (!ret) {
        struct ckpt_cmd cmd = {.kind = CMD_DONE};
        ret = ops->ctl_write(ops->ctx, &cmd, sizeof(cmd));
    }
    pthread_barrier_destroy(&start);
    pthread_barrier_destroy(&done);
    free(log);
    free(t);
    free(offs);
    free(zero);
    res->ok = ret == 0;
    return ret;
}

/* Test hook: damage one received page in the cache before the flush. */
static void corrupt_one_marked_page(struct colo_secondary *c)
{
    for (uint64_t w = 0; w < (c->guest->pages + 63) / 64; w++) {
        uint64_t bits = atomic_load(&c->bitmap[w]);
        if (bits) {
            uint64_t p = w * 64 + (uint64_t)__builtin_ctzll(bits);
            c->cache[p * c->guest->page_size + 100] ^= 0x5a;
            return;
        }
    }
}

/* After a failed verification the primary sends its page hashes; answer
 * with the first page whose guest copy differs. */
static int report_first_difference(struct colo_secondary *c,
                                   const struct secondary_ops *ops)
{
    struct guest theirs = *c->guest;
    size_t len = c->guest->pages * sizeof(uint64_t);
    uint8_t *p;
    size_t got = 0;

    theirs.page_hash = malloc(len);
    p = (uint8_t *)theirs.page_hash;
    while (got < len) {
        int n = ops->ctl_read(ops->ctx, p + got, len - got);
        if (n <= 0) {
            free(theirs.page_hash);
            return n == 0 ? -EPIPE : n;
        }
        got += (size_t)n;
    }
    uint64_t first = first_diff_page(&theirs, c->guest);
    free(theirs.page_hash);
    return ops->ctl_write(ops->ctx, &first, sizeof(first));
}

int drive_secondary(const struct options *o, struct colo_secondary *c,
                    const struct secondary_ops *ops)
{
    uint64_t cpu_prev = 0, user_prev = 0;

    for (;;) {
        struct ckpt_cmd cmd;
        int n = ops->ctl_read(ops->ctx, &cmd, sizeof(cmd));
        if (n <= 0) {
            return n == 0 ? -EPIPE : n;
        }
        if (cmd.kind == CMD_DONE) {
            return 0;
        }
        if (cmd.kind == CMD_BUSY_POLL) {
            struct ckpt_reply rep = {.index = cmd.index};
            ops->busy_poll(ops->ctx, cmd.hash <= POLL_ALL
                                         ? (enum poll_scope)cmd.hash
                                         : POLL_OFF);
            int ret = ops->ctl_write(ops->ctx, &rep, sizeof(rep));
            if (ret) {
                return ret;
            }
            continue;
        }
        if (cmd.kind != CMD_CHECKPOINT) {
            return -EPROTO;
        }
        struct ckpt_reply rep = {.index = cmd.index};
        uint64_t cpu, user;
        ops->rx_cpu(ops->ctx, &cpu, &user);
        rep.sec_cpu_ns = cpu - cpu_prev;
        rep.sec_user_ns = user - user_prev;
        cpu_prev = cpu;
        user_prev = user;
        uint64_t t0 = now_ns();
        ops->busy_poll(ops->ctx, POLL_OFF); /* the checkpoint window ends */
        if (cmd.index == 1 && getenv("RDMA_COLO_BENCH_CORRUPT")) {
            corrupt_one_marked_page(c); /* proves verification can fail */
        }
        colo_flush(c);
        rep.flush_ns = now_ns() - t0;
        rep.verified = c->guest->total_hash == cmd.hash;
        rep.first_bad_page = UINT64_MAX;
        int ret = ops->ctl_write(ops->ctx, &rep, sizeof(rep));
        if (!ret && !rep.verified) {
            ret = report_first_difference(c, ops);
        }
        if (ret) {
            return ret;
        }
    }
    (void)o;
}
