/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * rdma-colo-bench: COLO checkpoint replication benchmark.  Shared types.
 */
#ifndef BENCH_H
#define BENCH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum pattern {
    PAT_RANDOM,     /* uniform random pages */
    PAT_HOTSET,     /* 90 % of writes into a 10 % hot set */
    PAT_SEQUENTIAL, /* runs of contiguous pages */
    PAT_MIXED,      /* a third of each */
};

struct options {
    const char *role;     /* both, primary, secondary */
    const char *uri;      /* rdma-colo:HOST:PORT, for primary/secondary */
    const char *tcp_addr; /* address for the TCP baseline */
    int tcp_port;
    int port_fd; /* internal (--port-fd): a secondary re-executed by
                    --role both writes its port there */
    bool run_rdma, run_tcp;
    uint64_t size; /* guest RAM bytes */
    uint32_t page_size;
    enum pattern pattern;
    uint64_t dirty;    /* bytes dirtied per checkpoint */
    unsigned zero_pct; /* share of dirty pages that become zero */
    unsigned checkpoints;
    unsigned interval_ms; /* guest run time between checkpoints */
    unsigned slices;      /* the guest dirties in this many bursts per
                             interval, each --dirty / slices */
    bool background;      /* add the rdma-bg phase */
    bool bg;              /* this phase: push all but the last burst while
                             the guest runs, each push ended by barriers */
    unsigned channels;
    unsigned batch;        /* pages per write call / multifd packet */
    unsigned desc_batch;   /* rdma: pages one descriptor may carry (0: one
                              descriptor per --batch) */
    unsigned empty_fences; /* empty-checkpoint fences to time */
    uint64_t seed;
    bool verify;
    const char *json;
    const char *plot;
    const char *wire;     /* perftest-ref --out file (appended to) */
    const char *wire_cmd; /* measures the wire into it, between phases */
    const char *token;
    bool progress;
    int busy_poll; /* BUSY_NONE, BUSY_FENCE, BUSY_ALL */
};
enum { BUSY_NONE, BUSY_FENCE, BUSY_ALL };
/* Which of the secondary's waiters spin (CMD_BUSY_POLL): none; the ones
 * an empty fence needs (rdma-colo: channel 0's thread, which the session
 * fence reaches; TCP: none can); every receive thread. */
enum poll_scope { POLL_OFF, POLL_FENCE, POLL_ALL };

/* One checkpoint's figures. */
struct sample {
    uint64_t pages, zero_pages, bytes; /* sent at the checkpoint */
    uint64_t bg_pages;                 /* sent while the guest ran, before
                                          it (normal + zero) */
    uint64_t bg_bytes;                 /* ... their payload */
    uint64_t bg_ns;                    /* those pushes, barriers included */
    uint64_t transfer_ns;              /* pages sent + fence returned */
    uint64_t fence_ns;                 /* the fence alone */
    uint64_t pri_cpu_ns;               /* primary sender threads */
    uint64_t sec_cpu_ns;  /* secondary receive threads, user + sys */
    uint64_t sec_user_ns; /* ... user only (sys includes softirq work,
                             e.g. rxe's, charged to whoever ran) */
    uint64_t sys_cpu_ns;  /* whole machine (all CPUs, busy time) */
    uint64_t flush_ns;
    bool verified;
};

struct run_result {
    const char *name; /* "rdma" or "tcp" */
    struct sample *samples;
    unsigned count;
    uint64_t *empty_fence_ns;
    unsigned empty_count;
    bool ok;
    char error[512];
    /* Bytes this node sent over the link during the phase (with-rxe's
     * pair topology); 0 on loopback. */
    long long link_bytes;
};

/* The guest memory and its per-page hashes (for O(dirty) verification:
 * the memory hash is the sum of page hashes, updated as pages change). */
struct guest {
    uint8_t *mem;
    uint64_t size;
    uint32_t page_size;
    uint64_t pages;
    uint64_t *page_hash;
    uint64_t total_hash;
};

/* Checkpoint messages between the two sides (over the session stream for
 * rdma, over the control socket for tcp). */
struct ckpt_cmd {
    uint32_t kind; /* CMD_CHECKPOINT, CMD_EMPTY, CMD_DONE */
    uint32_t index;
    uint64_t hash; /* primary's memory hash after this checkpoint */
};
enum { CMD_CHECKPOINT = 1, CMD_DONE = 2, CMD_BUSY_POLL = 3 /* hash: on */ };

struct ckpt_reply {
    uint32_t index;
    uint32_t verified;
    uint64_t sec_cpu_ns;
    uint64_t sec_user_ns;
    uint64_t flush_ns;
    uint64_t first_bad_page; /* UINT64_MAX when verified */
};

/* workload.c */
int guest_init(struct guest *g, uint64_t size, uint32_t page_size,
               uint64_t seed, bool hashes);
void guest_fini(struct guest *g);
uint64_t page_hash(const uint8_t *page, uint32_t size, uint64_t index);
void guest_rehash_page(struct guest *g, uint64_t index);
/* Choose and dirty this checkpoint's pages; fills sorted @offs/@zero. */
void workload_dirty(struct guest *g, const struct options *o, uint64_t *rng,
                    uint64_t *offs, unsigned *n, uint64_t *zero,
                    unsigned *nzero, unsigned checkpoint);
uint64_t workload_max_pages(const struct options *o);
uint64_t first_diff_page(const struct guest *a_hashes,
                         const struct guest *b_hashes);

/* time/cpu */
uint64_t now_ns(void);
uint64_t thread_cpu_ns(void);
uint64_t thread_user_ns(void);
uint64_t machine_busy_ns(void);

struct colo_secondary;

/* A transport as the checkpoint drivers see it (rdma.c, tcp.c). */
struct primary_ops {
    const char *name;
    void *ctx;
    /* Channel @ch's thread: send pages (one descriptor / packet per call). */
    int (*send)(void *ctx, unsigned ch, const uint64_t *offs, unsigned n,
                const uint64_t *zero, unsigned nzero);
    /* Channel @ch's thread: sync the channel (post + wait for the ack). */
    int (*fence)(void *ctx, unsigned ch);
    /* Channel @ch's thread: a barrier (pages sent between checkpoints:
     * placed and ordered, the secondary's application not involved).
     * NULL where the transport has none. */
    int (*barrier)(void *ctx, unsigned ch);
    /* Main thread: sync every channel at once (an empty checkpoint). */
    int (*fence_all)(void *ctx);
    /* Busy-poll instead of sleeping (the checkpoint window). */
    void (*busy_poll)(void *ctx, bool on);
    int (*ctl_write)(void *ctx, const void *buf, size_t len);
    int (*ctl_read)(void *ctx, void *buf, size_t len);
    const char *(*error)(void *ctx);
};

struct secondary_ops {
    void *ctx;
    int (*ctl_write)(void *ctx, const void *buf, size_t len);
    /* Returns bytes read (> 0), 0 at end, < 0 on error. */
    int (*ctl_read)(void *ctx, void *buf, size_t len);
    /* CPU time (total, user) the receive threads had used at their
     * latest sync. */
    void (*rx_cpu)(void *ctx, uint64_t *total, uint64_t *user);
    void (*busy_poll)(void *ctx, enum poll_scope scope);
};

/* driver.c: the COLO checkpoint loop on each side. */
int drive_primary(const struct options *o, struct guest *g,
                  const struct primary_ops *ops, struct run_result *res);
int drive_secondary(const struct options *o, struct colo_secondary *c,
                    const struct secondary_ops *ops);

/* rdma.c / tcp.c: one phase each; primary side returns samples. */
int rdma_primary(const struct options *o, struct guest *g,
                 struct run_result *res);
int rdma_secondary(const struct options *o, struct guest *g, uint8_t *cache,
                   int port_fd);
int tcp_primary(const struct options *o, struct guest *g, int port,
                struct run_result *res);
int tcp_secondary(const struct options *o, struct guest *g, uint8_t *cache,
                  int port_fd);

/* Shared secondary-side checkpoint handling. */
struct colo_secondary {
    struct guest *guest;
    uint8_t *cache;
    _Atomic uint64_t *bitmap;
};
void colo_mark(struct colo_secondary *c, uint64_t offset);
/* Flush marked pages into the guest, updating its hash; returns pages. */
uint64_t colo_flush(struct colo_secondary *c);

/* report.c */
/* One perftest figure over the reference runs: the median and the spread. */
struct wire_figure {
    double median, min, max;
    unsigned n;
};
struct wire_limit {
    struct wire_figure bw_4k, bw_64k, lat_8, lat_4k, bw_4k_multi;
    int multi_qps;
    bool have;
};
/* The topology (with-rxe's RDMA_COLO_TOPOLOGY, "loopback" if unset) and
 * the bytes this node's netdev sent so far over the link (pair; 0 on
 * loopback, where nothing crosses one). */
const char *fabric_topology(void);
long long link_tx_bytes(void);
/* Run o->wire_cmd, which appends one round of figures to o->wire. */
int wire_measure(const struct options *o, const char *when);
void wire_load(const char *path, struct wire_limit *w);
void report_table(const struct options *o, const struct run_result *r,
                  unsigned nr, const struct wire_limit *w);
int report_json(const char *path, const struct options *o,
                const struct run_result *r, unsigned nr,
                const struct wire_limit *w);
int report_plot(const char *path, const struct run_result *r, unsigned nr);

void progress(const struct options *o, const char *name, unsigned k, unsigned n,
              double gbps);

#define BENCH_ERR(...) bench_error(__VA_ARGS__)
void bench_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
