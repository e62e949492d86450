/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * rdma-write-smoke: proves the RDMA fabric under the tests is real.
 *
 * Scenario: a "secondary" process listens with rdma_cm on the test device's
 * address, registers a buffer for local use and REMOTE_WRITE (never
 * REMOTE_READ) and SENDs its address and rkey to the "primary" process.  The
 * primary RDMA-WRITEs a pseudo-random pattern into that buffer in several
 * work requests, then SENDs a "done" message on the same QP: RC ordering
 * guarantees the writes are placed before that message is received.  The
 * secondary compares the buffer byte for byte with the pattern it derives
 * from the same seed and SENDs back how many bytes matched.  Both sides
 * must agree; any mismatch, error or hang (a 60 s alarm) fails the test.
 *
 * Needs RDMA_COLO_TEST_DEV / RDMA_COLO_TEST_ADDR (set by scripts/with-rxe).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rdma/rdma_cma.h>

#include "check.h"
#include <rdma/rdma_verbs.h>

#define BUF_LEN     (4u << 20)
#define WRITE_CHUNK (256u << 10)
#define ALARM_SECS  60

struct remote_buf {
    uint64_t addr;
    uint32_t rkey;
    uint32_t len;
};

struct verdict {
    uint64_t bytes_matched;
    uint64_t first_mismatch;
};

static const char *prog = "rdma-write-smoke";

static void die(const char *what)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(errno));
    exit(1);
}

static void fill_pattern(uint8_t *buf, size_t len, uint64_t seed)
{
    uint64_t x = seed;

    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (uint8_t)x;
    }
}

static struct rdma_addrinfo *resolve(const char *addr, const char *port,
                                     bool passive)
{
    struct rdma_addrinfo hints = {.ai_port_space = RDMA_PS_TCP};
    struct rdma_addrinfo *res;

    if (passive) {
        hints.ai_flags = RAI_PASSIVE;
    }
    if (rdma_getaddrinfo(addr, port, &hints, &res)) {
        die("rdma_getaddrinfo");
    }
    return res;
}

static struct ibv_qp_init_attr qp_attr(void)
{
    struct ibv_qp_init_attr attr = {
        .cap = {.max_send_wr = 32,
                .max_recv_wr = 4,
                .max_send_sge = 1,
                .max_recv_sge = 1},
        .qp_type = IBV_QPT_RC,
        .sq_sig_all = 0,
    };
    return attr;
}

static void wait_send(struct rdma_cm_id *id)
{
    struct ibv_wc wc;

    if (rdma_get_send_comp(id, &wc) <= 0) {
        die("rdma_get_send_comp");
    }
    if (wc.status != IBV_WC_SUCCESS) {
        fprintf(stderr, "%s: send completion: %s\n", prog,
                ibv_wc_status_str(wc.status));
        exit(1);
    }
}

static void wait_recv(struct rdma_cm_id *id)
{
    struct ibv_wc wc;

    if (rdma_get_recv_comp(id, &wc) <= 0) {
        die("rdma_get_recv_comp");
    }
    if (wc.status != IBV_WC_SUCCESS) {
        fprintf(stderr, "%s: recv completion: %s\n", prog,
                ibv_wc_status_str(wc.status));
        exit(1);
    }
}

/* The secondary: owns the target buffer and checks it. */
static int run_secondary(const char *addr, int port_pipe, uint64_t seed)
{
    struct ibv_qp_init_attr attr = qp_attr();
    struct rdma_addrinfo *ai = resolve(addr, NULL, true);
    struct rdma_cm_id *listen_id, *id;
    struct remote_buf info;
    struct verdict verdict = {0};
    uint8_t done_msg[8];
    uint16_t port;

    if (rdma_create_ep(&listen_id, ai, NULL, &attr)) {
        die("rdma_create_ep (listen)");
    }
    rdma_freeaddrinfo(ai);
    if (rdma_listen(listen_id, 1)) {
        die("rdma_listen");
    }
    port = be16toh(rdma_get_src_port(listen_id));
    if (write(port_pipe, &port, sizeof(port)) != sizeof(port)) {
        die("write port");
    }
    close(port_pipe);

    if (rdma_get_request(listen_id, &id)) {
        die("rdma_get_request");
    }

    uint8_t *buf = aligned_alloc(4096, BUF_LEN);
    uint8_t *expect = malloc(BUF_LEN);
    if (!buf || !expect) {
        die("malloc");
    }
    memset(buf, 0, BUF_LEN);
    /* REMOTE_WRITE only: the peer must never be able to read our memory. */
    struct ibv_mr *mr = ibv_reg_mr(
        id->pd, buf, BUF_LEN, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    struct ibv_mr *info_mr = rdma_reg_msgs(id, &info, sizeof(info));
    struct ibv_mr *done_mr = rdma_reg_msgs(id, done_msg, sizeof(done_msg));
    struct ibv_mr *verdict_mr = rdma_reg_msgs(id, &verdict, sizeof(verdict));
    if (!mr || !info_mr || !done_mr || !verdict_mr) {
        die("ibv_reg_mr");
    }
    if (rdma_post_recv(id, NULL, done_msg, sizeof(done_msg), done_mr)) {
        die("rdma_post_recv");
    }
    if (rdma_accept(id, NULL)) {
        die("rdma_accept");
    }

    info.addr = htobe64((uintptr_t)buf);
    info.rkey = htobe32(mr->rkey);
    info.len = htobe32(BUF_LEN);
    if (rdma_post_send(id, NULL, &info, sizeof(info), info_mr,
                       IBV_SEND_SIGNALED)) {
        die("rdma_post_send (info)");
    }
    wait_send(id);
    wait_recv(id); /* "done": every RDMA WRITE before it is placed */

    fill_pattern(expect, BUF_LEN, seed);
    verdict.first_mismatch = UINT64_MAX;
    for (size_t i = 0; i < BUF_LEN; i++) {
        if (buf[i] == expect[i]) {
            verdict.bytes_matched++;
        } else if (verdict.first_mismatch == UINT64_MAX) {
            verdict.first_mismatch = i;
        }
    }
    uint64_t matched = verdict.bytes_matched;
    uint64_t first = verdict.first_mismatch;
    verdict.bytes_matched = htobe64(matched);
    verdict.first_mismatch = htobe64(first);
    if (rdma_post_send(id, NULL, &verdict, sizeof(verdict), verdict_mr,
                       IBV_SEND_SIGNALED)) {
        die("rdma_post_send (verdict)");
    }
    wait_send(id);

    rdma_disconnect(id);
    rdma_dereg_mr(verdict_mr);
    rdma_dereg_mr(done_mr);
    rdma_dereg_mr(info_mr);
    ibv_dereg_mr(mr);
    rdma_destroy_ep(id);
    rdma_destroy_ep(listen_id);
    free(buf);
    free(expect);
    if (matched != BUF_LEN) {
        fprintf(stderr,
                "%s: secondary: only %" PRIu64 " of %u bytes match, "
                "first mismatch at offset %" PRIu64 "\n",
                prog, matched, BUF_LEN, first);
        return 1;
    }
    return 0;
}

/* The primary: writes the pattern into the secondary's buffer. */
static int run_primary(const char *addr, uint16_t port, uint64_t seed,
                       const char *want_dev)
{
    struct ibv_qp_init_attr attr = qp_attr();
    char port_str[8];
    struct rdma_cm_id *id;
    struct remote_buf info;
    struct verdict verdict;
    uint8_t done_msg[8] = "done";

    snprintf(port_str, sizeof(port_str), "%u", port);
    struct rdma_addrinfo *ai = resolve(addr, port_str, false);
    if (rdma_create_ep(&id, ai, NULL, &attr)) {
        die("rdma_create_ep (connect)");
    }
    rdma_freeaddrinfo(ai);

    const char *dev = ibv_get_device_name(id->verbs->device);
    if (want_dev && strcmp(dev, want_dev) != 0) {
        fprintf(stderr, "%s: connected through %s, expected %s\n", prog, dev,
                want_dev);
        return 1;
    }

    uint8_t *src = aligned_alloc(4096, BUF_LEN);
    if (!src) {
        die("malloc");
    }
    fill_pattern(src, BUF_LEN, seed);
    struct ibv_mr *src_mr = rdma_reg_write(id, src, BUF_LEN);
    struct ibv_mr *info_mr = rdma_reg_msgs(id, &info, sizeof(info));
    struct ibv_mr *verdict_mr = rdma_reg_msgs(id, &verdict, sizeof(verdict));
    struct ibv_mr *done_mr = rdma_reg_msgs(id, done_msg, sizeof(done_msg));
    if (!src_mr || !info_mr || !verdict_mr || !done_mr) {
        die("ibv_reg_mr");
    }
    if (rdma_post_recv(id, NULL, &info, sizeof(info), info_mr) ||
        rdma_post_recv(id, NULL, &verdict, sizeof(verdict), verdict_mr)) {
        die("rdma_post_recv");
    }
    if (rdma_connect(id, NULL)) {
        die("rdma_connect");
    }
    wait_recv(id);
    uint64_t raddr = be64toh(info.addr);
    uint32_t rkey = be32toh(info.rkey);
    if (be32toh(info.len) != BUF_LEN) {
        fprintf(stderr, "%s: peer buffer is %u bytes, want %u\n", prog,
                be32toh(info.len), BUF_LEN);
        return 1;
    }

    /* Unsignaled writes, then one signaled SEND ordered after them. */
    for (uint32_t off = 0; off < BUF_LEN; off += WRITE_CHUNK) {
        if (rdma_post_write(id, NULL, src + off, WRITE_CHUNK, src_mr, 0,
                            raddr + off, rkey)) {
            die("rdma_post_write");
        }
    }
    if (rdma_post_send(id, NULL, done_msg, sizeof(done_msg), done_mr,
                       IBV_SEND_SIGNALED)) {
        die("rdma_post_send (done)");
    }
    wait_send(id);
    wait_recv(id);

    uint64_t matched = be64toh(verdict.bytes_matched);
    printf("%s: device %s, address %s: RDMA-WRITE %u bytes in %u work "
           "requests into the peer's registered memory; peer verified "
           "%" PRIu64 "/%u bytes byte for byte\n",
           prog, dev, addr, BUF_LEN, BUF_LEN / WRITE_CHUNK, matched, BUF_LEN);

    rdma_disconnect(id);
    rdma_dereg_mr(done_mr);
    rdma_dereg_mr(verdict_mr);
    rdma_dereg_mr(info_mr);
    rdma_dereg_mr(src_mr);
    rdma_destroy_ep(id);
    free(src);
    return matched == BUF_LEN ? 0 : 1;
}

int main(void)
{
    const char *dev = getenv("RDMA_COLO_TEST_DEV");
    /* The secondary's address: the other node's on the pair topology. */
    const char *addr = peer_addr();
    long long link0 = link_tx_bytes();
    uint64_t seed = 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
    int fds[2];
    int num_devices = 0;

    struct ibv_device **list = ibv_get_device_list(&num_devices);
    if (!list || num_devices == 0) {
        /* Fail, never skip: a test that cannot reach a device proves nothing.
         */
        fprintf(stderr,
                "%s: FAIL: no RDMA device (run under scripts/with-rxe)\n",
                prog);
        return 1;
    }
    ibv_free_device_list(list);
    if (!addr) {
        fprintf(stderr,
                "%s: FAIL: RDMA_COLO_TEST_ADDR is not set "
                "(run under scripts/with-rxe)\n",
                prog);
        return 1;
    }

    alarm(ALARM_SECS);
    if (pipe(fds)) {
        die("pipe");
    }
    pid_t child = fork();
    if (child < 0) {
        die("fork");
    }
    if (child == 0) {
        close(fds[0]);
        prog = "rdma-write-smoke (secondary)";
        _exit(run_secondary(addr, fds[1], seed));
    }
    close(fds[1]);
    uint16_t port;
    if (read(fds[0], &port, sizeof(port)) != sizeof(port)) {
        fprintf(stderr, "%s: secondary did not start listening\n", prog);
        waitpid(child, NULL, 0);
        return 1;
    }
    close(fds[0]);

    int rc = run_primary(addr, port, seed, dev);
    int status;
    if (waitpid(child, &status, 0) < 0) {
        die("waitpid");
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "%s: secondary failed (status 0x%x)\n", prog, status);
        rc = 1;
    }
    if (link0 >= 0) {
        long long link = link_tx_bytes() - link0;

        printf("%s: the link from %s carried %lld bytes for the %u "
               "RDMA-written\n",
               prog, getenv("RDMA_COLO_TEST_NETDEV"), link, BUF_LEN);
        if (link < BUF_LEN) {
            rc = 1;
        }
    }
    printf("%s: %s\n", prog, rc == 0 ? "PASS" : "FAIL");
    return rc;
}
