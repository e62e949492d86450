/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Time, errors, the failure state and the wait loop
 * (see core.h).
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

/* ---------------------------------------------------------------- time */

int64_t rcolo_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t rcolo_deadline(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : rcolo_now_ns() + (int64_t)timeout_ms * 1000000;
}

int rcolo_deadline_ms(int64_t deadline)
{
    if (deadline < 0) {
        return -1;
    }
    int64_t left = deadline - rcolo_now_ns();
    if (left <= 0) {
        return 0;
    }
    left = (left + 999999) / 1000000;
    return left > 1000000 ? 1000000 : (int)left;
}

/* -------------------------------------------------------------- errors */

int rcolo_set_error(struct rcolo_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

/* ---------------------------------------------------- failure and lock */

int rcolo_core_error(const struct rcolo_core *c, struct rcolo_error *err)
{
    int status = rcolo_status(c);

    return status ? rcolo_set_error(err, status, "%s", c->error) : 0;
}

int rcolo_core_init(struct rcolo_core *c, void (*on_fail)(void *opaque),
                    void *opaque)
{
    pthread_condattr_t ca;

    c->status = 0;
    c->error[0] = '\0';
    c->busy_poll = false;
    c->timeout_ms = RCOLO_DEFAULT_TIMEOUT_MS;
    c->owed_ms = RCOLO_OWED_FACTOR * RCOLO_DEFAULT_TIMEOUT_MS;
    c->on_fail = on_fail;
    c->opaque = opaque;
    c->abort_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->abort_fd < 0) {
        return -errno;
    }
    pthread_mutex_init(&c->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cond, &ca);
    pthread_condattr_destroy(&ca);
    return 0;
}

void rcolo_core_fini(struct rcolo_core *c)
{
    if (c->abort_fd >= 0) {
        close(c->abort_fd);
        c->abort_fd = -1;
    }
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
}

static int fail_va(struct rcolo_core *c, int code, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static int fail_va(struct rcolo_core *c, int code, const char *fmt, va_list ap)
{
    if (c->status == 0) {
        uint64_t one = 1;

        /* The text first: lock-free readers check status, then read it. */
        vsnprintf(c->error, sizeof(c->error), fmt, ap);
        __atomic_store_n(&c->status, code < 0 ? code : -EIO, __ATOMIC_RELEASE);
        if (write(c->abort_fd, &one, sizeof(one)) < 0) {
            /* an eventfd write cannot fail short of overflow */
        }
        pthread_cond_broadcast(&c->cond);
        if (c->on_fail) {
            c->on_fail(c->opaque);
        }
    }
    return c->status;
}

int rcolo_fail_locked(struct rcolo_core *c, int code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    int ret = fail_va(c, code, fmt, ap);
    va_end(ap);
    return ret;
}

int rcolo_fail(struct rcolo_core *c, int code, const char *fmt, ...)
{
    va_list ap;

    pthread_mutex_lock(&c->lock);
    va_start(ap, fmt);
    int ret = fail_va(c, code, fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&c->lock);
    return ret;
}

/* ----------------------------------------------------------- the wait */

int rcolo_wait(struct rcolo_core *c, const struct rcolo_wait_ops *ops,
               void *ctx, bool (*done)(void *arg), void *arg, int64_t deadline,
               int64_t spin_ns)
{
    int64_t spin_end;

    /* The common case on the data path: nothing to wait for, no clock. */
    if (done(arg)) {
        return 0;
    }
    spin_end = spin_ns > 0 ? rcolo_now_ns() + spin_ns : 0;
    for (;;) {
        if (done(arg)) {
            return 0;
        }
        int st = rcolo_status(c);
        if (st) {
            return st;
        }
        if (ops->poll) {
            int n = ops->poll(ctx);
            if (n < 0) {
                return n;
            }
            if (n > 0) {
                continue;
            }
        }
        int64_t now = rcolo_now_ns();
        if (deadline >= 0 && now >= deadline) {
            return -ETIMEDOUT;
        }
        if (ops->poll && (now < spin_end ||
                          __atomic_load_n(&c->busy_poll, __ATOMIC_RELAXED) ||
                          (ops->busy && ops->busy(ctx)))) {
            /* More pollers than CPUs must not starve the ones with work
             * (or the kernel's softirq, which is the device under rxe). */
            if (now >= spin_end) {
                sched_yield();
            }
            continue;
        }
        int ret = ops->block(ctx, deadline);
        if (ret < 0 && ret != -ETIMEDOUT) {
            return ret;
        }
    }
}

static int cond_block(void *ctx, int64_t deadline)
{
    struct rcolo_core *c = ctx;

    if (deadline < 0) {
        return -pthread_cond_wait(&c->cond, &c->lock);
    }
    struct timespec ts = {.tv_sec = deadline / 1000000000,
                          .tv_nsec = deadline % 1000000000};
    return -pthread_cond_timedwait(&c->cond, &c->lock, &ts);
}

int rcolo_wait_locked(struct rcolo_core *c, bool (*done)(void *arg), void *arg,
                      int64_t deadline)
{
    static const struct rcolo_wait_ops cond_ops = {.block = cond_block};

    return rcolo_wait(c, &cond_ops, c, done, arg, deadline, 0);
}
