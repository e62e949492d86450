/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The bottom layer of the library: time and deadlines, error recording,
 * a session's failure state and lock, and the one wait loop every waiter
 * uses.  It calls nothing else in the library; the layers above reach back
 * only through the documented on_fail callback.
 */
#ifndef RCOLO_CORE_H
#define RCOLO_CORE_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rdma-colo.h"

#define container_of(ptr, type, member)                                        \
    ((type *)((char *)(ptr)-offsetof(type, member)))

/* ---------------------------------------------------------------- time */

int64_t rcolo_now_ns(void);
/* Absolute deadline @timeout_ms from now; -1 (no deadline) if negative. */
int64_t rcolo_deadline(int timeout_ms);
/* Milliseconds left until @deadline, rounded up: -1 (none), 0 (passed). */
int rcolo_deadline_ms(int64_t deadline);

/* -------------------------------------------------------------- errors */

/* Fill @err (may be NULL) and return @code (a negative errno). */
int rcolo_set_error(struct rcolo_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---------------------------------------------------- failure and lock */

/*
 * A session's lock, its condition variable, and its failure state.
 *
 * Lock rules: @lock guards the session's shared state (regions, channel
 * table, control connection and stream); data channels are owned by one
 * thread each and do not take it on the data path.  @cond is broadcast on
 * every change a lock holder may wait for.  @status is written once, under
 * @lock, with release order after @error: lock-free readers load @status
 * (acquire) and may then read @error.
 */
struct rcolo_core {
    pthread_mutex_t lock;
    pthread_cond_t cond; /* CLOCK_MONOTONIC */
    int status;          /* 0, or the first failure's negative errno */
    char error[256];     /* the first failure's text */
    int abort_fd;        /* eventfd: readable once the session failed */
    bool busy_poll;      /* atomic: waiters spin instead of sleeping */
    int timeout_ms;      /* timeout=: keepalive, handshake */
    int owed_ms;         /* how long the peer may withhold what it owes:
                            RCOLO_OWED_FACTOR * timeout_ms */
    /*
     * Called once, with @lock held, right after the first failure was
     * recorded: the session disconnects and wakes its pollers here.
     */
    void (*on_fail)(void *opaque);
    void *opaque;
};

int rcolo_core_init(struct rcolo_core *c, void (*on_fail)(void *opaque),
                    void *opaque);
void rcolo_core_fini(struct rcolo_core *c);

/* Record the first failure (later ones are dropped) and return the
 * session's status.  _locked: @c->lock is held. */
int rcolo_fail(struct rcolo_core *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int rcolo_fail_locked(struct rcolo_core *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static inline int rcolo_status(const struct rcolo_core *c)
{
    return __atomic_load_n(&c->status, __ATOMIC_ACQUIRE);
}

/* The session's failure, copied into @err; 0 (and @err untouched) while
 * it is healthy. */
int rcolo_core_error(const struct rcolo_core *c, struct rcolo_error *err);

/* ----------------------------------------------------------- the wait */

/*
 * How a waiter makes progress.  poll() does work without blocking (reaps
 * completions) and returns > 0 if it found any, 0 if not, or a negative
 * errno; it may be NULL when others make the progress (state guarded by
 * the lock).  block() sleeps until progress may be possible or @deadline
 * (-1: none) passes, and returns 0 or a negative errno.
 */
struct rcolo_wait_ops {
    int (*poll)(void *ctx);
    int (*block)(void *ctx, int64_t deadline);
    /* Optional: busy polling is on for this waiter (a channel's own
     * switch), besides the session's. */
    bool (*busy)(void *ctx);
};

/*
 * The one wait loop of the library: returns 0 as soon as @done(@arg)
 * holds, the session's error once it failed, or -ETIMEDOUT at @deadline.
 * While @spin_ns lasts, or as long as busy polling is on, it calls
 * poll() without sleeping.  @done is checked before the failure, so that
 * a waiter may choose to see its data before the error.
 */
int rcolo_wait(struct rcolo_core *c, const struct rcolo_wait_ops *ops,
               void *ctx, bool (*done)(void *arg), void *arg, int64_t deadline,
               int64_t spin_ns);

/*
 * A peer whose process stopped is found by the keepalive within timeout=
 * (+ a quarter); a wait for something the peer owes only has to catch a
 * peer that runs but makes no progress, and must not fire on a slow but
 * healthy one: the longest owed wait measured in a healthy COLO pair was
 * 0.8 s (scripts/colo-sweep, nested TCG), and machines of the same kind
 * run these tests up to 9 times slower.
 */
#define RCOLO_OWED_FACTOR 4

/*
 * Deadline of a wait for something the peer owes (credits, acknowledgements,
 * stream space): a peer that is alive but stalled (stopped, hung, swapped
 * out) must end the session with an error, not block the caller forever.
 * Waits for the peer's next message are idle and take no such deadline.
 */
static inline int64_t rcolo_owed_deadline(const struct rcolo_core *c)
{
    return rcolo_deadline(c->owed_ms);
}

/* rcolo_wait on state guarded by @c->lock, which the caller holds: sleeps
 * on @c->cond. */
int rcolo_wait_locked(struct rcolo_core *c, bool (*done)(void *arg), void *arg,
                      int64_t deadline);

#endif /* RCOLO_CORE_H */
