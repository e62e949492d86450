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
#include <time.h>

static const char *check_prog = "test";
static const char *check_side;

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

#endif /* RCOLO_TEST_CHECK_H */
