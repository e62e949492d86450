/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * rdma-colo-bench: replicate COLO checkpoints of a synthetic guest over
 * rdma-colo and over a TCP multifd-style baseline, verify every checkpoint,
 * and report both against the wire limit measured by perftest.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "rdma-colo.h"

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: rdma-colo-bench [options]\n"
        "  --role both|primary|secondary   both (default) forks the secondary\n"
        "  --uri rdma-colo:HOST:PORT       rdma endpoint (primary/secondary "
        "roles)\n"
        "  --addr IPV4                     fabric address (default "
        "$RDMA_COLO_TEST_PEER_ADDR, else\n"
        "                                  $RDMA_COLO_TEST_ADDR: the "
        "secondary's)\n"
        "  --tcp-port N                    TCP baseline port "
        "(primary/secondary)\n"
        "  --transport rdma|tcp|both       what to run (default both)\n"
        "  --size BYTES                    guest RAM (default 1G; K/M/G "
        "suffixes)\n"
        "  --page-size 4096|2M             page size (default 4096)\n"
        "  --pattern random|hotset|sequential|mixed   (default random)\n"
        "  --dirty BYTES                   dirtied per checkpoint (default "
        "64M)\n"
        "  --zero PCT                      share of dirty pages that are zero\n"
        "  --checkpoints N                 (default 20)\n"
        "  --interval MS                   guest run time between checkpoints "
        "(0)\n"
        "  --slices N                      the guest dirties in N bursts per\n"
        "                                  interval, --dirty/N each (1)\n"
        "  --background                    also run rdma-bg: the dirty pages\n"
        "                                  go after every burst but the last\n"
        "                                  (QEMU's x-colo-background-sync), "
        "so\n"
        "                                  the checkpoint sends what the last\n"
        "                                  burst dirtied\n"
        "  --channels N                    data channels (default 4)\n"
        "  --batch N                       pages per write call/packet (128)\n"
        "  --desc-batch N                  rdma: pages one descriptor may\n"
        "                                  carry, several calls' worth, as\n"
        "                                  QEMU's glue does (1024; 0: one\n"
        "                                  descriptor per call)\n"
        "  --empty-fences N                empty checkpoints to time (200)\n"
        "  --seed N                        workload seed (default 1)\n"
        "  --no-verify                     skip the per-checkpoint "
        "verification\n"
        "  --token T                       session token for --role both\n"
        "                                  (default: random; with --uri, put\n"
        "                                  token= in the URI)\n"
        "  --wire FILE                     perftest-ref --out results, for "
        "ratios\n"
        "                                  (every round in it: each figure is\n"
        "                                  their median, shown with its "
        "spread)\n"
        "  --wire-cmd CMD                  shell command that appends a round\n"
        "                                  to --wire FILE; run before the "
        "first\n"
        "                                  phase, between phases and after "
        "the\n"
        "                                  last (>= 3 rounds interleaved)\n"
        "  --json FILE                     every raw sample\n"
        "  --plot FILE.png                 latency distributions (gnuplot)\n"
        "  --busy-poll auto|none|fence|all busy-poll in the checkpoint "
        "window:\n"
        "                                  fence while timing empty fences "
        "(the\n"
        "                                  primary and the secondary's "
        "channel 0),\n"
        "                                  all also around every checkpoint "
        "(every\n"
        "                                  receive thread); auto (default): "
        "fence\n"
        "                                  with 2 CPUs or more, else none\n"
        "  --quiet                         no progress line\n"
        "  --version                       print the version and exit\n");
}

static uint64_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    uint64_t mul = 1;
    switch (*end) {
    case 'k':
    case 'K':
        mul = 1ull << 10;
        end++;
        break;
    case 'm':
    case 'M':
        mul = 1ull << 20;
        end++;
        break;
    case 'g':
    case 'G':
        mul = 1ull << 30;
        end++;
        break;
    }
    if (*end || v <= 0) {
        BENCH_ERR("bad size '%s'", s);
        exit(2);
    }
    return (uint64_t)(v * (double)mul);
}

static unsigned parse_uint(const char *s, unsigned min, unsigned max,
                           const char *what)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (*end || v < min || v > max) {
        BENCH_ERR("%s must be %u..%u, not '%s'", what, min, max, s);
        exit(2);
    }
    return (unsigned)v;
}

static void parse(int argc, char **argv, struct options *o)
{
    enum {
        O_ROLE = 256,
        O_URI,
        O_ADDR,
        O_TCP_PORT,
        O_TRANSPORT,
        O_SIZE,
        O_PAGE,
        O_PATTERN,
        O_DIRTY,
        O_ZERO,
        O_CKPT,
        O_INTERVAL,
        O_SLICES,
        O_BACKGROUND,
        O_CHAN,
        O_BATCH,
        O_DESC_BATCH,
        O_EMPTY,
        O_SEED,
        O_NOVERIFY,
        O_TOKEN,
        O_WIRE,
        O_WIRE_CMD,
        O_JSON,
        O_PLOT,
        O_QUIET,
        O_BUSY,
        O_VERSION,
        O_PORT_FD
    };
    static const struct option lo[] = {
        {"role", 1, 0, O_ROLE},
        {"uri", 1, 0, O_URI},
        {"addr", 1, 0, O_ADDR},
        {"tcp-port", 1, 0, O_TCP_PORT},
        {"transport", 1, 0, O_TRANSPORT},
        {"size", 1, 0, O_SIZE},
        {"page-size", 1, 0, O_PAGE},
        {"pattern", 1, 0, O_PATTERN},
        {"dirty", 1, 0, O_DIRTY},
        {"zero", 1, 0, O_ZERO},
        {"checkpoints", 1, 0, O_CKPT},
        {"interval", 1, 0, O_INTERVAL},
        {"slices", 1, 0, O_SLICES},
        {"background", 0, 0, O_BACKGROUND},
        {"channels", 1, 0, O_CHAN},
        {"batch", 1, 0, O_BATCH},
        {"desc-batch", 1, 0, O_DESC_BATCH},
        {"empty-fences", 1, 0, O_EMPTY},
        {"seed", 1, 0, O_SEED},
        {"no-verify", 0, 0, O_NOVERIFY},
        {"token", 1, 0, O_TOKEN},
        {"wire", 1, 0, O_WIRE},
        {"wire-cmd", 1, 0, O_WIRE_CMD},
        {"json", 1, 0, O_JSON},
        {"plot", 1, 0, O_PLOT},
        {"quiet", 0, 0, O_QUIET},
        {"busy-poll", 1, 0, O_BUSY},
        /* informational */
        {"help", 0, 0, 'h'},
        {"version", 0, 0, O_VERSION},
        /* internal: --role both re-executes its rdma secondaries */
        {"port-fd", 1, 0, O_PORT_FD},
        {0, 0, 0, 0},
    };
    *o = (struct options){
        .role = "both",
        .run_rdma = true,
        .run_tcp = true,
        .size = 1ull << 30,
        .page_size = 4096,
        .pattern = PAT_RANDOM,
        .dirty = 64ull << 20,
        .checkpoints = 20,
        .slices = 1,
        .channels = 4,
        .batch = 128,
        .desc_batch = 1024,
        .empty_fences = 200,
        .seed = 1,
        .verify = true,
        /* The secondary's address: on with-rxe's pair topology the other
         * node's, so that both transports cross the link. */
        .tcp_addr = getenv("RDMA_COLO_TEST_PEER_ADDR")
                        ? getenv("RDMA_COLO_TEST_PEER_ADDR")
                        : getenv("RDMA_COLO_TEST_ADDR"),
        .tcp_port = 0,
        .progress = isatty(2),
        .busy_poll = -1,
        .port_fd = -1,
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case O_ROLE:
            if (strcmp(optarg, "both") && strcmp(optarg, "primary") &&
                strcmp(optarg, "secondary")) {
                BENCH_ERR("--role must be both, primary or secondary");
                exit(2);
            }
            o->role = optarg;
            break;
        case O_URI:
            o->uri = optarg;
            break;
        case O_ADDR:
            o->tcp_addr = optarg;
            break;
        case O_TCP_PORT:
            o->tcp_port = (int)parse_uint(optarg, 1, 65535, "--tcp-port");
            break;
        case O_TRANSPORT:
            o->run_rdma = !strcmp(optarg, "rdma") || !strcmp(optarg, "both");
            o->run_tcp = !strcmp(optarg, "tcp") || !strcmp(optarg, "both");
            if (!o->run_rdma && !o->run_tcp) {
                BENCH_ERR("--transport must be rdma, tcp or both");
                exit(2);
            }
            break;
        case O_SIZE:
            o->size = parse_size(optarg);
            break;
        case O_PAGE:
            o->page_size = (uint32_t)parse_size(optarg);
            break;
        case O_PATTERN:
            if (!strcmp(optarg, "random"))
                o->pattern = PAT_RANDOM;
            else if (!strcmp(optarg, "hotset"))
                o->pattern = PAT_HOTSET;
            else if (!strcmp(optarg, "sequential"))
                o->pattern = PAT_SEQUENTIAL;
            else if (!strcmp(optarg, "mixed"))
                o->pattern = PAT_MIXED;
            else {
                BENCH_ERR("unknown pattern '%s'", optarg);
                exit(2);
            }
            break;
        case O_DIRTY:
            o->dirty = parse_size(optarg);
            break;
        case O_ZERO:
            o->zero_pct = parse_uint(optarg, 0, 100, "--zero");
            break;
        case O_CKPT:
            o->checkpoints = parse_uint(optarg, 1, 1000000, "--checkpoints");
            break;
        case O_INTERVAL:
            o->interval_ms = parse_uint(optarg, 0, 100000, "--interval");
            break;
        case O_SLICES:
            o->slices = parse_uint(optarg, 1, 64, "--slices");
            break;
        case O_BACKGROUND:
            o->background = true;
            break;
        case O_CHAN:
            o->channels = parse_uint(optarg, 1, 64, "--channels");
            break;
        case O_BATCH:
            o->batch = parse_uint(optarg, 1, 1024, "--batch");
            break;
        case O_DESC_BATCH:
            o->desc_batch = parse_uint(optarg, 0, 1024, "--desc-batch");
            break;
        case O_EMPTY:
            o->empty_fences = parse_uint(optarg, 0, 1000000, "--empty-fences");
            break;
        case O_SEED:
            o->seed = strtoull(optarg, NULL, 0);
            break;
        case O_NOVERIFY:
            o->verify = false;
            break;
        case O_TOKEN:
            o->token = optarg;
            break;
        case O_WIRE:
            o->wire = optarg;
            break;
        case O_WIRE_CMD:
            o->wire_cmd = optarg;
            break;
        case O_JSON:
            o->json = optarg;
            break;
        case O_PLOT:
            o->plot = optarg;
            break;
        case O_QUIET:
            o->progress = false;
            break;
        case O_BUSY:
            if (!strcmp(optarg, "auto"))
                o->busy_poll = -1;
            else if (!strcmp(optarg, "none"))
                o->busy_poll = BUSY_NONE;
            else if (!strcmp(optarg, "fence"))
                o->busy_poll = BUSY_FENCE;
            else if (!strcmp(optarg, "all"))
                o->busy_poll = BUSY_ALL;
            else {
                BENCH_ERR("--busy-poll must be none, fence or all");
                exit(2);
            }
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case O_PORT_FD:
            o->port_fd = (int)parse_uint(optarg, 0, 1024, "--port-fd");
            break;
        case O_VERSION:
            printf("rdma-colo-bench %s (rdma-colo wire protocol %d)\n",
                   RDMA_COLO_VERSION, RCOLO_PROTOCOL_VERSION);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (o->busy_poll < 0) {
        /* Spinning pollers beyond the CPU count starve each other (and the
         * kernel's rxe work): worse than sleeping.  An empty fence is a
         * session fence: two pollers, the primary's fence and the
         * secondary's channel 0. */
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        o->busy_poll = cpus >= 2 ? BUSY_FENCE : BUSY_NONE;
    }
    if (optind < argc) {
        BENCH_ERR("unexpected argument '%s'", argv[optind]);
        exit(2);
    }
    if (o->page_size != 4096 && o->page_size != 2u << 20) {
        BENCH_ERR("--page-size must be 4096 or 2M (QEMU's pages: 4 KiB, or "
                  "2 MiB huge pages)");
        exit(2);
    }
    if (o->size % o->page_size || o->size < o->page_size) {
        BENCH_ERR("--size must be a multiple of --page-size");
        exit(2);
    }
    if (o->background && (!o->run_rdma || o->slices < 2)) {
        BENCH_ERR("--background needs the rdma transport and --slices >= 2 "
                  "(pages can only go between bursts)");
        exit(2);
    }
    if (!o->tcp_addr && (!strcmp(o->role, "both") || o->run_tcp)) {
        BENCH_ERR("no address: give --addr, or run under scripts/with-rxe "
                  "(which sets RDMA_COLO_TEST_ADDR)");
        exit(2);
    }
    if (!strcmp(o->role, "both") && !o->token) {
        /* Both sides are ours: a random token (made before the fork), so
         * the handshake is measured as users run it, authenticated. */
        static char token[33];
        uint8_t r[16];

        if (getentropy(r, sizeof(r))) {
            BENCH_ERR("getentropy: %s", strerror(errno));
            exit(1);
        }
        for (unsigned i = 0; i < sizeof(r); i++) {
            snprintf(token + 2 * i, 3, "%02x", r[i]);
        }
        o->token = token;
    }
    if (strcmp(o->role, "both") && o->run_rdma && !o->uri && o->port_fd < 0) {
        BENCH_ERR("--role %s needs --uri rdma-colo:HOST:PORT", o->role);
        exit(2);
    }
    if (strcmp(o->role, "both") && o->run_tcp && !o->tcp_port) {
        BENCH_ERR("--role %s needs --tcp-port for the TCP baseline "
                  "(or --transport rdma)",
                  o->role);
        exit(2);
    }
}

/* Secondary side of one phase (in the forked child or --role secondary). */
static int secondary_phase(const struct options *o, bool rdma, int port_fd)
{
    struct guest g;
    int ret = guest_init(&g, o->size, o->page_size, o->seed, true);
    if (ret) {
        return ret;
    }
    /* The COLO cache starts as a copy of the guest, as after the first
     * full migration. */
    struct guest cache;
    ret = guest_init(&cache, o->size, o->page_size, o->seed, false);
    if (!ret) {
        ret = rdma ? rdma_secondary(o, &g, cache.mem, port_fd)
                   : tcp_secondary(o, &g, cache.mem, port_fd);
        guest_fini(&cache);
    }
    guest_fini(&g);
    return ret;
}

static int primary_phase(const struct options *o, bool rdma, int port,
                         struct run_result *res)
{
    struct guest g;
    struct options oo = *o;
    int ret = guest_init(&g, o->size, o->page_size, o->seed, true);
    if (ret) {
        return ret;
    }
    oo.tcp_port = port;
    ret = rdma ? rdma_primary(&oo, &g, res) : tcp_primary(&oo, &g, port, res);
    if (ret && res->error[0]) {
        BENCH_ERR("%s", res->error);
    } else if (ret) {
        BENCH_ERR("%s run failed: %s", rdma ? "rdma" : "tcp",
                  strerror(ret < 0 ? -ret : ret));
    }
    guest_fini(&g);
    return ret;
}

static int saved_argc;
static char **saved_argv;

/*
 * An rdma secondary runs in a fresh image: librdmacm keeps its device
 * contexts per process, and a child forked after this process used them
 * (a second rdma phase) would inherit contexts it cannot use (EACCES).
 * Our own options again, then the secondary's.
 */
static void exec_secondary(const struct options *o, int port_fd)
{
    char fd[16];
    char **argv = calloc((size_t)saved_argc + 12, sizeof(char *));
    int n = 0;

    snprintf(fd, sizeof(fd), "%d", port_fd);
    for (int i = 0; i < saved_argc; i++) {
        argv[n++] = saved_argv[i];
    }
    argv[n++] = "--role";
    argv[n++] = "secondary";
    argv[n++] = "--transport";
    argv[n++] = "rdma";
    argv[n++] = "--port-fd";
    argv[n++] = fd;
    argv[n++] = "--token";
    argv[n++] = (char *)o->token;
    argv[n++] = "--quiet";
    argv[n] = NULL;
    execv("/proc/self/exe", argv);
    BENCH_ERR("cannot re-execute for the rdma secondary: %s", strerror(errno));
    _exit(1);
}

/* One phase with a forked secondary. */
static int both_phase(const struct options *o, bool rdma,
                      struct run_result *res)
{
    int fds[2];
    if (pipe(fds)) {
        return -errno;
    }
    pid_t pid = fork();
    if (pid < 0) {
        return -errno;
    }
    if (pid == 0) {
        close(fds[0]);
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the primary */
        if (rdma) {
            exec_secondary(o, fds[1]);
        }
        _exit(secondary_phase(o, rdma, fds[1]) ? 1 : 0);
    }
    close(fds[1]);
    uint16_t port;
    int ret;
    if (read(fds[0], &port, sizeof(port)) != sizeof(port)) {
        BENCH_ERR("the %s secondary did not start", rdma ? "rdma" : "tcp");
        ret = -ECHILD;
    } else {
        ret = primary_phase(o, rdma, port, res);
    }
    close(fds[0]);
    if (ret) {
        kill(pid, SIGTERM);
    }
    int status;
    waitpid(pid, &status, 0);
    if (!ret && (!WIFEXITED(status) || WEXITSTATUS(status))) {
        BENCH_ERR("the %s secondary failed", rdma ? "rdma" : "tcp");
        ret = -ECHILD;
    }
    return ret;
}

int main(int argc, char **argv)
{
    struct options o;
    struct run_result res[3] = {{0}};
    unsigned nr = 0;
    int ret = 0;

    setvbuf(stdout, NULL, _IOLBF, 0);
    saved_argc = argc;
    saved_argv = argv;
    parse(argc, argv, &o);

    if (!strcmp(o.role, "secondary") && o.port_fd >= 0) {
        /* one rdma phase, re-executed by --role both */
        return secondary_phase(&o, true, o.port_fd) ? 1 : 0;
    }
    if (!strcmp(o.role, "secondary")) {
        if (o.run_rdma) {
            ret = secondary_phase(&o, true, -1);
        }
        if (!ret && o.background) {
            ret = secondary_phase(&o, true, -1); /* rdma-bg */
        }
        if (!ret && o.run_tcp) {
            ret = secondary_phase(&o, false, -1);
        }
        return ret ? 1 : 0;
    }

    bool both = !strcmp(o.role, "both");
    /* The wire reference is measured around every phase, so that a
     * machine whose speed drifts during the run shows in its spread. */
    if (o.wire_cmd && !both) {
        BENCH_ERR("--wire-cmd needs --role both");
        return 2;
    }
    ret = wire_measure(&o, "before the first phase");
    if (!ret && o.run_rdma) {
        res[nr].name = "rdma";
        res[nr].link_bytes = -link_tx_bytes();
        ret = both ? both_phase(&o, true, &res[nr])
                   : primary_phase(&o, true, 0, &res[nr]);
        res[nr].link_bytes += link_tx_bytes();
        nr++;
        ret = ret ? ret : wire_measure(&o, "after the rdma phase");
    }
    if (!ret && o.background) {
        struct options bg = o;

        bg.bg = true;
        res[nr].name = "rdma-bg";
        res[nr].link_bytes = -link_tx_bytes();
        ret = both ? both_phase(&bg, true, &res[nr])
                   : primary_phase(&bg, true, 0, &res[nr]);
        res[nr].link_bytes += link_tx_bytes();
        nr++;
        ret = ret ? ret : wire_measure(&o, "after the rdma-bg phase");
    }
    if (!ret && o.run_tcp) {
        res[nr].name = "tcp";
        res[nr].link_bytes = -link_tx_bytes();
        ret = both ? both_phase(&o, false, &res[nr])
                   : primary_phase(&o, false, o.tcp_port, &res[nr]);
        res[nr].link_bytes += link_tx_bytes();
        nr++;
        ret = ret ? ret : wire_measure(&o, "after the tcp phase");
    }
    /* At least three rounds, for a median and a spread. */
    for (unsigned rounds = 1 + nr; !ret && o.wire_cmd && rounds < 3; rounds++) {
        ret = wire_measure(&o, "for a third round");
    }
    struct wire_limit w;
    wire_load(o.wire, &w);
    unsigned done = 0;
    for (unsigned i = 0; i < nr; i++) {
        done += res[i].count;
    }
    if (done) { /* nothing to tabulate when no checkpoint ran */
        report_table(&o, res, nr, &w);
    }
    if (o.json && report_json(o.json, &o, res, nr, &w)) {
        ret = ret ? ret : -EIO;
    }
    if (o.plot && report_plot(o.plot, res, nr)) {
        ret = ret ? ret : -EIO;
    }
    for (unsigned i = 0; i < nr; i++) {
        free(res[i].samples);
        free(res[i].empty_fence_ns);
    }
    return ret ? 1 : 0;
}
