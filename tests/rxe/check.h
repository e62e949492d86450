/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * What the rxe test programs share: FAIL and CHECK (say where and why on
 * stderr, exit 1), a monotonic clock in seconds and a xorshift generator.
 * A program names itself in check_prog and, where two processes print,
 * the side in check_side.
 */
#ifndef RCOLO_TEST_CHECK_H
#define RCOLO_TEST_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *check_prog __attribute__((unused)) = "test";
static const char *check_side __attribute__((unused));

#define FAIL(...)                                                              \
    do {                                                                       \
        fprintf(stderr, "%s%s%s%s: FAIL at %s:%d: ", check_prog,               \
                check_side ? " (" : "", check_side ? check_side : "",          \
                check_side ? ")" : "", __FILE__, __LINE__);                    \
        fprintf(stderr, __VA_ARGS__);                                          \
        fprintf(stderr, "\n");                                                 \
        exit(1);                                                               \
    } while (0)

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            FAIL(__VA_ARGS__);                                                 \
        }                                                                      \
    } while (0)

static inline double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/*
 * The address a test's secondary listens on (and its primary connects
 * to): the other node's on with-rxe's pair topology
 * (RDMA_COLO_TEST_PEER_ADDR), the test's own on loopback.
 */
static inline const char *peer_addr(void)
{
    const char *p = getenv("RDMA_COLO_TEST_PEER_ADDR");

    return p ? p : getenv("RDMA_COLO_TEST_ADDR");
}

/* Bytes this node's netdev has sent over the link so far (pair topology:
 * what crossed the wire to the other node), or -1 on loopback, where
 * nothing crosses a link. */
static inline long long link_tx_bytes(void)
{
    const char *topo = getenv("RDMA_COLO_TOPOLOGY");
    const char *nd = getenv("RDMA_COLO_TEST_NETDEV");
    char path[128];
    long long v = -1;
    FILE *f;

    if (!topo || strcmp(topo, "pair") || !nd) {
        return -1;
    }
    snprintf(path, sizeof(path), "/sys/class/net/%s/statistics/tx_bytes", nd);
    f = fopen(path, "r");
    if (f) {
        if (fscanf(f, "%lld", &v) != 1) {
            v = -1;
        }
        fclose(f);
    }
    return v;
}

#endif /* RCOLO_TEST_CHECK_H */
