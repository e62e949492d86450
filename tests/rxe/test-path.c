/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * test-path: the fabric path options on rxe (run under scripts/with-rxe).
 *
 * Each option chooses or checks the path of a real session, and the path
 * the session reports (rcolo_session_get_path: from the connection's cm_id
 * and its QP's address vector) shows it was used:
 *   source=ADDR                   the connection's local address is ADDR
 *   gid-index=N                   the QP's source GID is N, and N holds ADDR
 *   tos=N                         the QP's traffic class is N, on both sides
 *   device=DEV, ib-port=1         accepted on both sides; the path is DEV:1
 * and each wrong value fails with an error that names it: a device that does
 * not exist, a port or GID it lacks, a GID of the other address family, a
 * source address that is not local or has no RDMA device, the path options
 * on the secondary.  In the micro-VM (RDMA_COLO_FABRIC=vm) it also adds a
 * second rxe device, rxe1 on veth1, and checks that device=rxe1 is refused
 * for a route through rxe0, on both sides, and that gid-index= then needs
 * device=.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <infiniband/verbs.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "rdma-colo.h"

#define TIMEOUT_MS 20000
#define TOS        106 /* DSCP AF31 (26) << 2 | ECT(0): a RoCE v2 setting */

/* The primary's node, and the secondary's (the other node on with-rxe's
 * pair topology, the same on loopback). */
static const char *addr, *dev, *netdev, *peer, *peer_dev, *peer_netdev;

static void parse(struct rcolo_uri *uri, const char *port, const char *opts)
{
    char text[512];
    struct rcolo_error err = {0};

    snprintf(text, sizeof(text),
             "rdma-colo:%s:%s?token=path-test-token-0123%s%s", peer, port,
             *opts ? "&" : "", opts);
    CHECK(rcolo_uri_parse(text, uri, &err) == 0, "%s: %s", text, err.message);
}

/*
 * Run @fn in a child and check it succeeded.  Every session is made in
 * such a child: a process that forks its secondary after using verbs would
 * hand the child librdmacm's device contexts, which belong to the parent
 * (the kernel refuses their use with EACCES).  The parent never opens one.
 */
static void step(void (*fn)(void *arg), void *arg)
{
    int status;
    pid_t pid;

    fflush(stdout);
    pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        alarm(300);
        fn(arg);
        fflush(stdout);
        _exit(0);
    }
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
              WEXITSTATUS(status) == 0,
          "a step failed (status 0x%x)", status);
}

/* ------------------------------------------------------------ secondary */

struct secondary {
    const char *opts;
    unsigned tos; /* expected traffic class of its QP */
};

/* Listen with @opts, report the port, accept, check the path the primary
 * chose arrived here too, wait for the primary's byte. */
static int secondary_main(int port_fd, const struct secondary *a)
{
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    struct rcolo_session *s;
    struct rcolo_path p;
    uint16_t port;
    char byte;

    check_side = "secondary";
    parse(&uri, "0", a->opts);
    CHECK(rcolo_listen(&uri, &s, &err) == 0, "listen (%s): %s", a->opts,
          err.message);
    port = (uint16_t)rcolo_session_port(s);
    CHECK(write(port_fd, &port, sizeof(port)) == sizeof(port), "pipe");
    close(port_fd);
    CHECK(rcolo_accept(s, TIMEOUT_MS, &err) == 0, "accept: %s", err.message);
    CHECK(rcolo_session_get_path(s, &p) == 0, "secondary's path");
    CHECK(!strcmp(p.device, peer_dev) && p.port == 1, "secondary on %s:%u",
          p.device, p.port);
    /* The CM request carries the traffic class: the answers use it. */
    CHECK(p.traffic_class == a->tos,
          "secondary's QP has traffic class %u, expected %u", p.traffic_class,
          a->tos);
    CHECK(rcolo_stream_read(s, &byte, 1, false) == 1, "primary's byte: %s",
          rcolo_session_error(s));
    rcolo_session_destroy(s);
    return 0;
}

static pid_t fork_secondary(const struct secondary *a, char *port, size_t size)
{
    int fds[2];
    uint16_t p;
    pid_t pid;

    CHECK(pipe(fds) == 0, "pipe");
    pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        close(fds[0]);
        alarm(120);
        _exit(secondary_main(fds[1], a));
    }
    close(fds[1]);
    CHECK(read(fds[0], &p, sizeof(p)) == sizeof(p), "secondary did not start");
    close(fds[0]);
    snprintf(port, size, "%u", p);
    return pid;
}

static void wait_secondary(pid_t pid)
{
    int status;

    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
              WEXITSTATUS(status) == 0,
          "secondary failed (status 0x%x)", status);
}

/* A session with @popts on the primary and @sopts on the secondary; return
 * the primary's path. */
struct session_args {
    const char *popts, *sopts;
    unsigned tos;
    int out; /* pipe for the primary's path */
};

static void session_step(void *arg)
{
    const struct session_args *sa = arg;
    const char *popts = sa->popts, *sopts = sa->sopts;
    unsigned tos = sa->tos;
    struct secondary a = {.opts = sopts, .tos = tos};
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    struct rcolo_session *s;
    struct rcolo_path p;
    char port[8];
    pid_t pid = fork_secondary(&a, port, sizeof(port));

    parse(&uri, port, popts);
    CHECK(rcolo_connect(&uri, TIMEOUT_MS, &s, &err) == 0, "connect (%s): %s",
          popts, err.message);
    CHECK(rcolo_session_get_path(s, &p) == 0, "primary's path");
    CHECK(rcolo_stream_write(s, "x", 1, false) == 1, "byte");
    wait_secondary(pid);
    rcolo_session_destroy(s);
    CHECK(write(sa->out, &p, sizeof(p)) == sizeof(p), "pipe");
}

/* A session with @popts on the primary and @sopts on the secondary (whose
 * QP must have traffic class @tos); return the primary's path. */
static struct rcolo_path session_with(const char *popts, const char *sopts,
                                      unsigned tos)
{
    struct session_args sa = {popts, sopts, tos, -1};
    struct rcolo_path p;
    int fds[2];

    CHECK(pipe(fds) == 0, "pipe");
    sa.out = fds[1];
    step(session_step, &sa);
    CHECK(read(fds[0], &p, sizeof(p)) == sizeof(p), "pipe");
    close(fds[0]);
    close(fds[1]);
    return p;
}

/* ------------------------------------------------------------- errors */

/* The primary (@connect) or the secondary fails with @opts, naming @needle;
 * nobody listens at the port: every path error comes before the peer. */
struct refusal {
    bool connect;
    const char *opts, *needle;
};

static void refused_step(void *arg)
{
    const struct refusal *r = arg;
    bool connect = r->connect;
    const char *opts = r->opts, *needle = r->needle;
    struct rcolo_uri uri;
    struct rcolo_error err = {0};
    struct rcolo_session *s = NULL;
    int ret;

    parse(&uri, connect ? "9" : "0", opts);
    ret = connect ? rcolo_connect(&uri, TIMEOUT_MS, &s, &err)
                  : rcolo_listen(&uri, &s, &err);
    CHECK(ret < 0 && !s, "%s with %s succeeded", connect ? "connect" : "listen",
          opts);
    CHECK(strstr(err.message, needle), "%s with %s: '%s' lacks '%s'",
          connect ? "connect" : "listen", opts, err.message, needle);
    printf("test-path: %s with %s refused: %s\n",
           connect ? "primary" : "secondary", opts, err.message);
}

static void refused(bool connect, const char *opts, const char *needle)
{
    struct refusal r = {connect, opts, needle};

    step(refused_step, &r);
}

/* ------------------------------------------------------------- GIDs */

/* GID indexes of @dev port 1: the one holding ::ffff:@addr, and one
 * holding an IPv6 address (-1 if none). */
static void find_gids_here(int *v4, int *v6)
{
    struct ibv_device **list = ibv_get_device_list(NULL);
    struct ibv_context *ctx = NULL;
    struct ibv_port_attr pa;
    struct in_addr want;

    CHECK(inet_pton(AF_INET, addr, &want) == 1, "address %s", addr);
    for (int i = 0; list && list[i]; i++) {
        if (!strcmp(ibv_get_device_name(list[i]), dev)) {
            ctx = ibv_open_device(list[i]);
        }
    }
    ibv_free_device_list(list);
    CHECK(ctx, "cannot open %s", dev);
    CHECK(ibv_query_port(ctx, 1, &pa) == 0, "query port");
    *v4 = *v6 = -1;
    for (int i = 0; i < pa.gid_tbl_len; i++) {
        union ibv_gid g;
        static const uint8_t mapped[12] = {[10] = 0xff, [11] = 0xff};

        if (ibv_query_gid(ctx, 1, i, &g) || !g.global.interface_id) {
            continue;
        }
        if (!memcmp(g.raw, mapped, 12)) {
            if (!memcmp(g.raw + 12, &want, 4) && *v4 < 0) {
                *v4 = i;
            }
        } else if (*v6 < 0) {
            *v6 = i;
        }
    }
    ibv_close_device(ctx);
    CHECK(*v4 >= 0, "no GID of %s holds %s", dev, addr);
}

static int gid_pipe[2];

static void find_gids_step(void *arg)
{
    int g[2];

    find_gids_here(&g[0], &g[1]);
    CHECK(write(gid_pipe[1], g, sizeof(g)) == sizeof(g), "pipe");
}

static void find_gids(int *v4, int *v6)
{
    int g[2];

    CHECK(pipe(gid_pipe) == 0, "pipe");
    step(find_gids_step, NULL);
    CHECK(read(gid_pipe[0], g, sizeof(g)) == sizeof(g), "pipe");
    close(gid_pipe[0]);
    close(gid_pipe[1]);
    *v4 = g[0];
    *v6 = g[1];
}

/* An IPv4 address of this host on no RDMA device's netdev (veth1 in the
 * micro-VM), or NULL. */
static const char *non_rdma_address(char *buf, size_t size)
{
    struct ifaddrs *ifa, *i;
    const char *found = NULL;

    CHECK(getifaddrs(&ifa) == 0, "getifaddrs");
    for (i = ifa; i; i = i->ifa_next) {
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET &&
            strcmp(i->ifa_name, "lo") && strcmp(i->ifa_name, netdev) &&
            strcmp(i->ifa_name, peer_netdev)) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr,
                      buf, (socklen_t)size);
            found = buf;
            break;
        }
    }
    freeifaddrs(ifa);
    return found;
}

int main(void)
{
    char opts[256], sopts[128], other[INET_ADDRSTRLEN], needle[160];
    const char *other_addr;
    struct rcolo_path p;
    int v4, v6;

    check_prog = "test-path";
    check_side = "primary";
    alarm(600);
    addr = getenv("RDMA_COLO_TEST_ADDR");
    dev = getenv("RDMA_COLO_TEST_DEV");
    netdev = getenv("RDMA_COLO_TEST_NETDEV");
    CHECK(addr && dev && netdev, "run under scripts/with-rxe");
    peer = getenv("RDMA_COLO_TEST_PEER_ADDR")
               ? getenv("RDMA_COLO_TEST_PEER_ADDR")
               : addr;
    peer_dev = getenv("RDMA_COLO_TEST_PEER_DEV")
                   ? getenv("RDMA_COLO_TEST_PEER_DEV")
                   : dev;
    peer_netdev = getenv("RDMA_COLO_TEST_PEER_NETDEV")
                      ? getenv("RDMA_COLO_TEST_PEER_NETDEV")
                      : netdev;
    bool pair = strcmp(peer_dev, dev) != 0;

    /* Without tos= the traffic class is 0: a session with the option gets its
     * value. */
    p = session_with("", "", 0);
    CHECK(p.traffic_class == 0, "default traffic class %u", p.traffic_class);

    /* source=, device=, ib-port=, tos= on a real session. */
    snprintf(opts, sizeof(opts), "source=%s&device=%s&ib-port=1&tos=%d", addr,
             dev, TOS);
    snprintf(sopts, sizeof(sopts), "device=%s&ib-port=1", peer_dev);
    p = session_with(opts, sopts, TOS);
    CHECK(!strcmp(p.local, addr) && !strcmp(p.remote, peer),
          "path %s -> %s, expected %s -> %s", p.local, p.remote, addr, peer);
    CHECK(!strcmp(p.device, dev) && p.port == 1, "path on %s:%u", p.device,
          p.port);
    CHECK(p.traffic_class == TOS, "traffic class %u, expected %d",
          p.traffic_class, TOS);
    printf("test-path: %s -> connected from %s on %s port %u, GID %u, "
           "traffic class %u on both sides, MTU %u\n",
           opts, p.local, p.device, p.port, p.gid_index, p.traffic_class,
           p.mtu);

    /* gid-index=: the GID holding the address is the one used. */
    find_gids(&v4, &v6);
    /* (On the pair topology the host has two devices: device= too.) */
    snprintf(opts, sizeof(opts), "gid-index=%d%s%s", v4, pair ? "&device=" : "",
             pair ? dev : "");
    p = session_with(opts, "", 0);
    CHECK((int)p.gid_index == v4 && !strcmp(p.local, addr),
          "gid-index=%d: GID %u, from %s", v4, p.gid_index, p.local);
    printf("test-path: %s -> GID %u used, connected from %s\n", opts,
           p.gid_index, p.local);

    /* Wrong values, each named. */
    refused(true, "device=nosuch0", "no RDMA device 'nosuch0' on this host");
    snprintf(opts, sizeof(opts), "device=%s&ib-port=2", dev);
    snprintf(needle, sizeof(needle), "RDMA device %s has no port 2", dev);
    refused(true, opts, needle);
    refused(false, opts, needle);
    snprintf(needle, sizeof(needle), "port 1 has no GID at index 255");
    snprintf(opts, sizeof(opts), "gid-index=255%s%s", pair ? "&device=" : "",
             pair ? dev : "");
    refused(true, opts, needle);
    if (v6 >= 0) {
        snprintf(opts, sizeof(opts), "gid-index=%d%s%s", v6,
                 pair ? "&device=" : "", pair ? dev : "");
        refused(true, opts, "an IPv6 address; the secondary's is IPv4");
    } else {
        printf("test-path: %s has no IPv6 GID: family check not reached\n",
               dev);
    }
    refused(true, "source=203.0.113.7",
            "cannot resolve the route from "
            "203.0.113.7");
    refused(true, "source=::1", "source=::1 is an IPv6 address");
    refused(false, "tos=5", "choose the primary's path");
    refused(false, "source=127.0.0.1", "choose the primary's path");
    other_addr = non_rdma_address(other, sizeof(other));
    if (!other_addr) {
        printf("test-path: every IPv4 address here is on an RDMA device: "
               "source= of a netdev without one not tried\n");
    } else {
        snprintf(opts, sizeof(opts), "source=%s", other_addr);
        snprintf(needle, sizeof(needle), "cannot resolve the route from %s",
                 other_addr);
        refused(true, opts, needle);
    }

    /*
     * A second device: a route through one is not device= of the other.
     * On the pair topology it is the other node's; on loopback in the
     * micro-VM the test makes rxe1 on veth1 for it.
     */
    bool vm =
        getenv("RDMA_COLO_FABRIC") && !strcmp(getenv("RDMA_COLO_FABRIC"), "vm");
    if (pair || (vm && other_addr)) {
        const char *other_dev = pair ? peer_dev : "rxe1";
        /* The device the secondary must not name: not its own. */
        const char *not_peer = pair ? dev : "rxe1";

        if (!pair) {
            CHECK(system("rdma link add rxe1 type rxe netdev veth1") == 0,
                  "rdma link add rxe1");
        }
        snprintf(opts, sizeof(opts), "device=%s", other_dev);
        snprintf(needle, sizeof(needle),
                 "the route to %s goes through RDMA device %s port 1, not "
                 "device=%s",
                 peer, dev, other_dev);
        refused(true, opts, needle);
        snprintf(opts, sizeof(opts), "device=%s", not_peer);
        snprintf(
            needle, sizeof(needle),
            "the listen address %s goes through RDMA device %s port 1, not "
            "device=%s (the path follows the IP route: listen on an "
            "address of that device)",
            peer, peer_dev, not_peer);
        refused(false, opts, needle);
        refused(true, "gid-index=0",
                "gid-index= needs device= on a host with "
                "several RDMA devices");
        snprintf(opts, sizeof(opts), "gid-index=%d&device=%s", v4, dev);
        p = session_with(opts, "", 0);
        CHECK((int)p.gid_index == v4, "gid-index with device=: GID %u",
              p.gid_index);
        if (!pair) {
            CHECK(system("rdma link delete rxe1") == 0,
                  "rdma link delete rxe1");
        }
        printf("test-path: with a second device %s: device=%s refused for "
               "the route through %s, device=%s for the listen address on "
               "%s; gid-index= needs device=, and with it used GID %d\n",
               other_dev, other_dev, dev, not_peer, peer_dev, v4);
    }
    printf("test-path: fabric path options verified from %s (%s) to %s (%s): "
           "source=, gid-index=, tos=, device=, ib-port= used by real "
           "sessions, and each wrong value refused with its name\n",
           dev, addr, peer_dev, peer);
    return 0;
}
