/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Results: the human table with ratios, raw JSON, and a gnuplot PNG.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

void progress(const struct options *o, const char *name, unsigned k, unsigned n,
              double gbps)
{
    if (!o->progress) {
        return;
    }
    fprintf(stderr, "\r[%s] checkpoint %u/%u  %.1f MB/s   ", name, k, n,
            gbps * 1000.0);
    if (k == n) {
        fprintf(stderr, "\n");
    }
}

const char *fabric_topology(void)
{
    const char *t = getenv("RDMA_COLO_TOPOLOGY");

    return t ? t : "loopback";
}

long long link_tx_bytes(void)
{
    const char *nd = getenv("RDMA_COLO_TEST_NETDEV");
    char path[128];
    long long v = 0;
    FILE *f;

    if (strcmp(fabric_topology(), "pair") || !nd) {
        return 0;
    }
    snprintf(path, sizeof(path), "/sys/class/net/%s/statistics/tx_bytes", nd);
    if ((f = fopen(path, "r"))) {
        if (fscanf(f, "%lld", &v) != 1) {
            v = 0;
        }
        fclose(f);
    }
    return v;
}

int wire_measure(const struct options *o, const char *when)
{
    if (!o->wire_cmd) {
        return 0;
    }
    if (!o->progress) {
        fflush(stdout);
    }
    int rc = system(o->wire_cmd);
    if (rc != 0) {
        BENCH_ERR("the wire reference (%s) failed %s: status %d", o->wire_cmd,
                  when, rc);
        return -EIO;
    }
    return 0;
}

#define WIRE_MAX_RUNS 16

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void figure(struct wire_figure *f, double *v, unsigned n)
{
    memset(f, 0, sizeof(*f));
    if (!n) {
        return;
    }
    qsort(v, n, sizeof(*v), cmp_double);
    f->n = n;
    f->min = v[0];
    f->max = v[n - 1];
    f->median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void wire_load(const char *path, struct wire_limit *w)
{
    static const char *const keys[] = {
        "write_bw_4096_MBps", "write_bw_65536_MBps", "write_lat_8_us",
        "write_lat_4096_us",  "write_bw_4096_q",
    };
    double v[5][WIRE_MAX_RUNS];
    unsigned n[5] = {0};
    char key[64];
    double x;
    FILE *f;

    memset(w, 0, sizeof(*w));
    if (!path || !(f = fopen(path, "r"))) {
        return;
    }
    /* One line per figure and round, rounds appended one after another. */
    while (fscanf(f, "%63s %lf", key, &x) == 2) {
        for (unsigned k = 0; k < 5; k++) {
            bool match = k == 4 ? !strncmp(key, keys[k], strlen(keys[k]))
                                : !strcmp(key, keys[k]);
            if (match && n[k] < WIRE_MAX_RUNS) {
                v[k][n[k]++] = x;
                if (k == 4) {
                    w->multi_qps = atoi(key + strlen(keys[k]));
                }
            }
        }
    }
    fclose(f);
    figure(&w->bw_4k, v[0], n[0]);
    figure(&w->bw_64k, v[1], n[1]);
    figure(&w->lat_8, v[2], n[2]);
    figure(&w->lat_4k, v[3], n[3]);
    figure(&w->bw_4k_multi, v[4], n[4]);
    w->have = w->bw_4k.n && w->bw_64k.n && w->lat_8.n;
}

/* "65.7 MB/s (median of 3, 47.3-66.1)", or the one value. */
static const char *show_figure(const struct wire_figure *f, const char *unit,
                               char *buf, size_t size)
{
    if (f->n > 1) {
        snprintf(buf, size, "%.1f %s (median of %u runs, %.1f-%.1f)", f->median,
                 unit, f->n, f->min, f->max);
    } else {
        snprintf(buf, size, "%.1f %s", f->median, unit);
    }
    return buf;
}

/* A throughput's ratio to a figure, with its spread over the runs. */
static void show_ratio(const char *label, double value,
                       const struct wire_figure *f)
{
    printf("  %-40s %6.1f %%", label, 100.0 * value / f->median);
    if (f->n > 1) {
        printf("  (%.1f-%.1f %% against each of the %u reference runs)",
               100.0 * value / f->max, 100.0 * value / f->min, f->n);
    }
    printf("\n");
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

struct summary {
    double mean_ms, p50_ms, p99_ms, max_ms, fence_ms;
    double MBps, pages_per_s;
    double pri_cpu_per_gib, sec_cpu_per_gib, sec_user_per_gib;
    double sys_cpu_per_gib, flush_ms;
    double empty_p50_us, empty_p99_us;
    double ckpt_pages, bg_pages, bg_ms; /* means per checkpoint */
    uint64_t bytes, pages;
    double link_mib, link_per_byte; /* pair topology: what crossed the link */
};

static double pct(const uint64_t *sorted, unsigned n, double p)
{
    if (!n) {
        return 0;
    }
    unsigned i = (unsigned)(p * (n - 1) + 0.5);
    return (double)sorted[i];
}

static void summarize(const struct run_result *r, struct summary *s)
{
    uint64_t *t = calloc(r->count + 1, 8);
    uint64_t total_ns = 0, fence_ns = 0, pri = 0, sec = 0, sys = 0, fl = 0;
    uint64_t secu = 0;

    memset(s, 0, sizeof(*s));
    for (unsigned i = 0; i < r->count; i++) {
        const struct sample *x = &r->samples[i];
        t[i] = x->transfer_ns;
        total_ns += x->transfer_ns;
        fence_ns += x->fence_ns;
        s->bytes += x->bytes;
        s->pages += x->pages + x->zero_pages;
        pri += x->pri_cpu_ns;
        sec += x->sec_cpu_ns;
        secu += x->sec_user_ns;
        sys += x->sys_cpu_ns;
        fl += x->flush_ns;
        s->bg_pages += x->bg_pages;
        s->bg_ms += x->bg_ns / 1e6;
    }
    if (r->count) {
        s->ckpt_pages = (double)s->pages / r->count;
        s->bg_pages /= r->count;
        s->bg_ms /= r->count;
    }
    qsort(t, r->count, 8, cmp_u64);
    if (r->count) {
        s->mean_ms = total_ns / 1e6 / r->count;
        s->p50_ms = pct(t, r->count, 0.5) / 1e6;
        s->p99_ms = pct(t, r->count, 0.99) / 1e6;
        s->max_ms = t[r->count - 1] / 1e6;
        s->fence_ms = fence_ns / 1e6 / r->count;
        s->flush_ms = fl / 1e6 / r->count;
    }
    if (total_ns) {
        s->MBps = s->bytes * 1e3 / total_ns;
        s->pages_per_s = s->pages * 1e9 / total_ns;
    }
    /* CPU per GiB moved, background pages included (the secondary's
     * receive CPU covers them too). */
    uint64_t moved = s->bytes;
    for (unsigned i = 0; i < r->count; i++) {
        moved += r->samples[i].bg_bytes;
    }
    double gib = moved / (double)(1ull << 30);
    if (gib > 0) {
        s->pri_cpu_per_gib = pri / 1e9 / gib;
        s->sec_cpu_per_gib = sec / 1e9 / gib;
        s->sec_user_per_gib = secu / 1e9 / gib;
        s->sys_cpu_per_gib = sys / 1e9 / gib;
    }
    free(t);
    if (r->empty_count) {
        uint64_t *e = malloc(r->empty_count * 8ull);
        memcpy(e, r->empty_fence_ns, r->empty_count * 8ull);
        qsort(e, r->empty_count, 8, cmp_u64);
        s->empty_p50_us = pct(e, r->empty_count, 0.5) / 1e3;
        s->empty_p99_us = pct(e, r->empty_count, 0.99) / 1e3;
        free(e);
    }
    s->link_mib = (double)r->link_bytes / (1 << 20);
    s->link_per_byte = s->bytes ? (double)r->link_bytes / (double)s->bytes : 0;
}

static const char *pattern_name(enum pattern p)
{
    static const char *names[] = {"random", "hotset", "sequential", "mixed"};
    return names[p];
}

void report_table(const struct options *o, const struct run_result *r,
                  unsigned nr, const struct wire_limit *w)
{
    struct summary s[3];
    const struct summary *rdma = NULL, *tcp = NULL, *bg = NULL;

    printf("\nrdma-colo-bench: %llu MiB guest, %u-byte pages, pattern %s, "
           "%llu MiB dirtied per checkpoint in %u burst%s (%u%% zero), "
           "%u channels, "
           "%u pages per write (rdma descriptors of up to %u), "
           "%u checkpoints, seed %llu\n",
           (unsigned long long)(o->size >> 20), o->page_size,
           pattern_name(o->pattern), (unsigned long long)(o->dirty >> 20),
           o->slices, o->slices > 1 ? "s" : "", o->zero_pct, o->channels,
           o->batch, o->desc_batch > o->batch ? o->desc_batch : o->batch,
           o->checkpoints, (unsigned long long)o->seed);
    if (w->have) {
        char a[96], b[96], c[96], d[96];

        printf("wire limit (perftest, same device, same run): ib_write_bw "
               "4 KiB %s, 64 KiB %s; ib_write_lat 8 B %s, 4 KiB %s\n",
               show_figure(&w->bw_4k, "MB/s", a, sizeof(a)),
               show_figure(&w->bw_64k, "MB/s", b, sizeof(b)),
               show_figure(&w->lat_8, "us", c, sizeof(c)),
               show_figure(&w->lat_4k, "us", d, sizeof(d)));
        if (w->multi_qps) {
            printf("  ib_write_bw 4 KiB over %d QPs: %s\n", w->multi_qps,
                   show_figure(&w->bw_4k_multi, "MB/s", a, sizeof(a)));
        }
    }
    if (!strcmp(fabric_topology(), "pair")) {
        printf("fabric: pair topology (with-rxe): the secondary on the other "
               "node, every byte over the link from %s\n",
               getenv("RDMA_COLO_TEST_NETDEV") ? getenv("RDMA_COLO_TEST_NETDEV")
                                               : "?");
    }
    printf("\n%-28s", "");
    for (unsigned i = 0; i < nr; i++) {
        summarize(&r[i], &s[i]);
        if (!strcmp(r[i].name, "rdma")) {
            rdma = &s[i];
        } else if (!strcmp(r[i].name, "rdma-bg")) {
            bg = &s[i];
        } else {
            tcp = &s[i];
        }
        printf("%14s", r[i].name);
    }
    printf("\n");
#define ROW(label, fmt, field)                                                 \
    do {                                                                       \
        printf("%-28s", label);                                                \
        for (unsigned i = 0; i < nr; i++) {                                    \
            printf(fmt, s[i].field);                                           \
        }                                                                      \
        printf("\n");                                                          \
    } while (0)
    ROW("checkpoint transfer mean ms", "%14.2f", mean_ms);
    ROW("  p50 ms", "%14.2f", p50_ms);
    ROW("  p99 ms", "%14.2f", p99_ms);
    ROW("  max ms", "%14.2f", max_ms);
    ROW("  of which fence, mean ms", "%14.2f", fence_ms);
    ROW("pages sent at checkpoint", "%14.0f", ckpt_pages);
    ROW("pages sent before, guest up", "%14.0f", bg_pages);
    ROW("  those pushes, ms", "%14.2f", bg_ms);
    ROW("throughput MB/s", "%14.1f", MBps);
    if (!strcmp(fabric_topology(), "pair")) {
        ROW("link MiB sent (pair)", "%14.1f", link_mib);
        ROW("  per payload byte", "%14.2f", link_per_byte);
    }
    ROW("pages/s", "%14.0f", pages_per_s);
    ROW("primary CPU s/GiB", "%14.3f", pri_cpu_per_gib);
    ROW("secondary rx CPU s/GiB", "%14.3f", sec_cpu_per_gib);
    /* The user/system split is sampled at the scheduler tick: coarse. */
    ROW("  user part (tick-sampled)", "%14.3f", sec_user_per_gib);
    ROW("whole machine CPU s/GiB", "%14.3f", sys_cpu_per_gib);
    ROW("secondary flush mean ms", "%14.2f", flush_ms);
    ROW("empty checkpoint fence p50 us", "%14.1f", empty_p50_us);
    ROW("  p99 us", "%14.1f", empty_p99_us);
#undef ROW
    printf("\nratios:\n");
    if (rdma && w->have) {
        bool seq = o->pattern == PAT_SEQUENTIAL;
        char label[64];

        snprintf(label, sizeof(label),
                 "rdma throughput / ib_write_bw %s:", seq ? "64 KiB" : "4 KiB");
        show_ratio(label, rdma->MBps, seq ? &w->bw_64k : &w->bw_4k);
        if (w->multi_qps && !seq) {
            snprintf(
                label, sizeof(label),
                "rdma throughput / ib_write_bw 4 KiB, %d QPs:", w->multi_qps);
            show_ratio(label, rdma->MBps, &w->bw_4k_multi);
        }
        printf("  %-40s %6.2f x", "rdma empty fence / ib_write_lat 8 B:",
               rdma->empty_p50_us / w->lat_8.median);
        if (w->lat_8.n > 1) {
            printf("  (%.2f-%.2f x against each of the %u reference runs)",
                   rdma->empty_p50_us / w->lat_8.max,
                   rdma->empty_p50_us / w->lat_8.min, w->lat_8.n);
        }
        printf("\n");
    }
    if (bg && rdma && rdma->mean_ms > 0) {
        printf("  rdma-bg / rdma checkpoint transfer:  %6.2f x (mean), "
               "%6.2f x (p99)\n",
               bg->mean_ms / rdma->mean_ms,
               rdma->p99_ms > 0 ? bg->p99_ms / rdma->p99_ms : 0.0);
    }
    if (bg && tcp && tcp->mean_ms > 0) {
        printf("  rdma-bg / tcp checkpoint transfer:   %6.2f x (mean)\n",
               bg->mean_ms / tcp->mean_ms);
    }
    if (rdma && tcp && tcp->MBps > 0) {
        printf("  rdma / tcp throughput:                %6.2f x\n",
               rdma->MBps / tcp->MBps);
        if (tcp->sec_cpu_per_gib > 0) {
            printf("  rdma / tcp secondary rx CPU per GiB:  %6.1f %%\n",
                   100.0 * rdma->sec_cpu_per_gib / tcp->sec_cpu_per_gib);
        }
        if (tcp->sys_cpu_per_gib > 0) {
            printf("  rdma / tcp whole-machine CPU per GiB: %6.1f %%\n",
                   100.0 * rdma->sys_cpu_per_gib / tcp->sys_cpu_per_gib);
        }
    }
    for (unsigned i = 0; i < nr; i++) {
        unsigned ok = 0;
        for (unsigned k = 0; k < r[i].count; k++) {
            ok += r[i].samples[k].verified;
        }
        printf("%s: %u/%u checkpoints verified (secondary's guest copy == "
               "primary's memory)%s\n",
               r[i].name, ok, r[i].count, o->verify ? "" : " [--no-verify]");
    }
}

int report_json(const char *path, const struct options *o,
                const struct run_result *r, unsigned nr,
                const struct wire_limit *w)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        BENCH_ERR("cannot write %s: %s", path, strerror(errno));
        return -errno;
    }
    fprintf(f,
            "{\n  \"config\": {\"size\": %llu, \"page_size\": %u, "
            "\"pattern\": \"%s\", \"dirty\": %llu, \"zero_pct\": %u, "
            "\"channels\": %u, \"batch\": %u, \"desc_batch\": %u, "
            "\"checkpoints\": %u, \"seed\": %llu},\n",
            (unsigned long long)o->size, o->page_size, pattern_name(o->pattern),
            (unsigned long long)o->dirty, o->zero_pct, o->channels, o->batch,
            o->desc_batch, o->checkpoints, (unsigned long long)o->seed);
    /* Where it ran: on the pair topology, what crossed the link during
     * the rdma phase, against the bytes it RDMA-wrote. */
    long long rdma_link = 0;
    unsigned long long rdma_bytes = 0;
    for (unsigned i = 0; i < nr; i++) {
        if (!strcmp(r[i].name, "rdma")) {
            rdma_link = r[i].link_bytes;
            for (unsigned k = 0; k < r[i].count; k++) {
                rdma_bytes += r[i].samples[k].bytes;
            }
        }
    }
    fprintf(f,
            "  \"fabric\": {\"topology\": \"%s\", \"netdev\": \"%s\", "
            "\"link_bytes\": %lld, \"rdma_bytes\": %llu},\n",
            fabric_topology(),
            getenv("RDMA_COLO_TEST_NETDEV") ? getenv("RDMA_COLO_TEST_NETDEV")
                                            : "",
            rdma_link, rdma_bytes);
    /* Medians, and each figure's runs (min, max, count). */
    fprintf(f,
            "  \"wire\": {\"write_bw_4096_MBps\": %.2f, "
            "\"write_bw_65536_MBps\": %.2f, \"write_lat_8_us\": %.2f, "
            "\"write_lat_4096_us\": %.2f, \"runs\": %u, "
            "\"write_bw_4096_MBps_range\": [%.2f, %.2f], "
            "\"write_bw_65536_MBps_range\": [%.2f, %.2f], "
            "\"write_lat_8_us_range\": [%.2f, %.2f]},\n  \"runs\": [\n",
            w->bw_4k.median, w->bw_64k.median, w->lat_8.median,
            w->lat_4k.median, w->bw_4k.n, w->bw_4k.min, w->bw_4k.max,
            w->bw_64k.min, w->bw_64k.max, w->lat_8.min, w->lat_8.max);
    for (unsigned i = 0; i < nr; i++) {
        fprintf(f,
                "    {\"transport\": \"%s\", \"ok\": %s, \"link_bytes\": "
                "%lld, \"samples\": [\n",
                r[i].name, r[i].ok ? "true" : "false", r[i].link_bytes);
        for (unsigned k = 0; k < r[i].count; k++) {
            const struct sample *s = &r[i].samples[k];
            fprintf(
                f,
                "      {\"checkpoint\": %u, \"pages\": %llu, "
                "\"zero_pages\": %llu, \"bytes\": %llu, "
                "\"transfer_ns\": %llu, \"fence_ns\": %llu, "
                "\"primary_cpu_ns\": %llu, \"secondary_cpu_ns\": %llu, "
                "\"secondary_user_ns\": %llu, "
                "\"machine_cpu_ns\": %llu, \"flush_ns\": %llu, "
                "\"background_pages\": %llu, \"background_ns\": %llu, "
                "\"verified\": %s}%s\n",
                k, (unsigned long long)s->pages,
                (unsigned long long)s->zero_pages, (unsigned long long)s->bytes,
                (unsigned long long)s->transfer_ns,
                (unsigned long long)s->fence_ns,
                (unsigned long long)s->pri_cpu_ns,
                (unsigned long long)s->sec_cpu_ns,
                (unsigned long long)s->sec_user_ns,
                (unsigned long long)s->sys_cpu_ns,
                (unsigned long long)s->flush_ns,
                (unsigned long long)s->bg_pages, (unsigned long long)s->bg_ns,
                s->verified ? "true" : "false", k + 1 < r[i].count ? "," : "");
        }
        fprintf(f, "    ], \"empty_fence_ns\": [");
        for (unsigned k = 0; k < r[i].empty_count; k++) {
            fprintf(f, "%s%llu", k ? ", " : "",
                    (unsigned long long)r[i].empty_fence_ns[k]);
        }
        fprintf(f, "]}%s\n", i + 1 < nr ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    return fclose(f) ? -errno : 0;
}

int report_plot(const char *path, const struct run_result *r, unsigned nr)
{
    char data[] = "/tmp/rdma-colo-bench-XXXXXX";
    int fd = mkstemp(data);
    if (fd < 0) {
        return -errno;
    }
    FILE *f = fdopen(fd, "w");
    /* One block per transport: sorted transfer times as a CDF, then the
     * empty-fence times likewise. */
    for (unsigned i = 0; i < nr; i++) {
        uint64_t *t = calloc(r[i].count + 1, 8);
        for (unsigned k = 0; k < r[i].count; k++) {
            t[k] = r[i].samples[k].transfer_ns;
        }
        qsort(t, r[i].count, 8, cmp_u64);
        for (unsigned k = 0; k < r[i].count; k++) {
            fprintf(f, "%.3f %.4f\n", t[k] / 1e6, (k + 1.0) / r[i].count);
        }
        fprintf(f, "\n\n");
        free(t);
    }
    for (unsigned i = 0; i < nr; i++) {
        uint64_t *t = calloc(r[i].empty_count + 1, 8);
        memcpy(t, r[i].empty_fence_ns, r[i].empty_count * 8ull);
        qsort(t, r[i].empty_count, 8, cmp_u64);
        for (unsigned k = 0; k < r[i].empty_count; k++) {
            fprintf(f, "%.2f %.4f\n", t[k] / 1e3, (k + 1.0) / r[i].empty_count);
        }
        fprintf(f, "\n\n");
        free(t);
    }
    fclose(f);

    FILE *g = popen("gnuplot", "w");
    if (!g) {
        unlink(data);
        BENCH_ERR("cannot run gnuplot (scripts/bootstrap installs it)");
        return -ENOENT;
    }
    fprintf(g, "set terminal png size 1100,450\nset output '%s'\n", path);
    fprintf(g, "set multiplot layout 1,2\nset grid\nset key bottom right\n");
    fprintf(g, "set title 'checkpoint transfer time (CDF)'\n"
               "set xlabel 'ms'\nset ylabel 'fraction of checkpoints'\n");
    fprintf(g, "plot ");
    for (unsigned i = 0; i < nr; i++) {
        fprintf(g, "%s'%s' index %u using 1:2 with steps lw 2 title '%s'",
                i ? ", " : "", data, i, r[i].name);
    }
    fprintf(g, "\nset title 'empty checkpoint fence (CDF)'\n"
               "set xlabel 'us'\nset logscale x\n");
    fprintf(g, "plot ");
    for (unsigned i = 0; i < nr; i++) {
        fprintf(g, "%s'%s' index %u using 1:2 with steps lw 2 title '%s'",
                i ? ", " : "", data, nr + i, r[i].name);
    }
    fprintf(g, "\nunset multiplot\n");
    int rc = pclose(g);
    unlink(data);
    if (rc != 0) {
        BENCH_ERR("gnuplot failed (exit %d)", rc);
        return -EIO;
    }
    return 0;
}
