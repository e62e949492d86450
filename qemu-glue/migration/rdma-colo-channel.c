/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * rdma-colo: the session (shared by all channels) and the QIOChannel that
 * carries the migration stream and stands for the multifd data channels
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "io/channel-util.h"
#include "io/channel-watch.h"
#include "qemu/cutils.h"
#include "qemu/lockable.h"
#include "system/memory.h"
#include "rdma-colo-channel.h"
#include "trace.h"

/* ------------------------------------------------------------ session */

/*
 * The live sessions, for query-migrate.  A session leaves the list before
 * it is destroyed, under the lock a reader holds: no reference is taken.
 */
static GMutex rdma_colo_sessions_lock;
static GSList *rdma_colo_sessions;

RdmaColoSession *rdma_colo_session_new(struct rcolo_session *rs,
                                              enum rcolo_role role)
{
    RdmaColoSession *sess = g_atomic_rc_box_new0(RdmaColoSession);

    sess->rs = rs;
    sess->role = role;
    qemu_mutex_init(&sess->lock);
    qemu_mutex_init(&sess->stats_lock);
    g_mutex_lock(&rdma_colo_sessions_lock);
    rdma_colo_sessions = g_slist_prepend(rdma_colo_sessions, sess);
    g_mutex_unlock(&rdma_colo_sessions_lock);
    return sess;
}

void rdma_colo_session_foreach(enum rcolo_role role,
                               void (*fn)(RdmaColoSession *sess, void *opaque),
                               void *opaque)
{
    g_mutex_lock(&rdma_colo_sessions_lock);
    for (GSList *l = rdma_colo_sessions; l; l = l->next) {
        RdmaColoSession *sess = l->data;

        if (sess->role == role) {
            fn(sess, opaque);
        }
    }
    g_mutex_unlock(&rdma_colo_sessions_lock);
}

void rdma_colo_fence_latency_record(RdmaColoSession *sess, int64_t ns)
{
    QEMU_LOCK_GUARD(&sess->stats_lock);
    sess->fence_ns[sess->fences_recorded++ % RDMA_COLO_FENCE_SAMPLES] = ns;
}

static void rdma_colo_session_clear(gpointer data)
{
    RdmaColoSession *sess = data;

    g_mutex_lock(&rdma_colo_sessions_lock);
    rdma_colo_sessions = g_slist_remove(rdma_colo_sessions, sess);
    g_mutex_unlock(&rdma_colo_sessions_lock);
    /* Every channel of the session is gone: no thread uses it any more. */
    if (sess->rs &&
        trace_event_get_state_backends(TRACE_RDMA_COLO_SESSION_END)) {
        struct rcolo_session_stats st = { 0 };

        rcolo_session_get_stats(sess->rs, &st);
        trace_rdma_colo_session_end(
            sess->role == RCOLO_PRIMARY ? "primary" : "secondary",
            rcolo_session_status(sess->rs), st.total.bytes, st.fences,
            st.total.owed_wait_ns_max, st.stream_owed_wait_ns_max);
    }
    rcolo_session_shutdown(sess->rs);
    rcolo_session_destroy(sess->rs);
    qemu_mutex_destroy(&sess->lock);
    qemu_mutex_destroy(&sess->stats_lock);
    g_free(sess->blocks);
    if (sess->discard_disabled) {
        /* Nothing is pinned any more: ballooning may free pages again. */
        ram_block_discard_disable(false);
    }
}

void rdma_colo_session_unref(RdmaColoSession *sess)
{
    g_atomic_rc_box_release_full(sess, rdma_colo_session_clear);
}

void rdma_colo_set_error(Error **errp, RdmaColoSession *sess, int ret,
                         const char *what)
{
    struct rcolo_session *rs = sess ? sess->rs : NULL;
    const char *why = rs ? rcolo_session_error(rs) : "";

    /*
     * COLO reports a failed stream as "Can't send COLO message" with the
     * QEMUFile's errno, and multifd keeps only the first error: say once
     * why the session itself failed (not when this side ended it).
     */
    if (rs && *why && rcolo_session_status(rs) != -ESHUTDOWN &&
        !qatomic_xchg(&sess->failure_reported, true)) {
        error_report("rdma-colo: the session failed: %s", why);
    }
    error_setg(errp, "rdma-colo: %s: %s", what,
               *why ? why : strerror(-ret));
}

/*
 * Region names are the RAMBlock idstr, or a digest of it when it does not
 * fit the wire's name field; both sides compute the same.
 */
void rdma_colo_region_name(const char *idstr, char *name, size_t size)
{
    g_autofree char *digest = NULL;

    if (strlen(idstr) <= RCOLO_MAX_NAME) {
        pstrcpy(name, size, idstr);
        return;
    }
    digest = g_compute_checksum_for_string(G_CHECKSUM_SHA256, idstr, -1);
    snprintf(name, size, "~%.*s", RCOLO_MAX_NAME - 1, digest);
}

/* ------------------------------------------------------------ channel */

QIOChannelRdmaColo *rdma_colo_channel_new(RdmaColoSession *sess, int index)
{
    QIOChannelRdmaColo *rioc =
        QIO_CHANNEL_RDMA_COLO(object_new(TYPE_QIO_CHANNEL_RDMA_COLO));

    rioc->sess = sess ? g_atomic_rc_box_acquire(sess) : NULL;
    rioc->index = index;
    rioc->blocking = true;
    qio_channel_set_feature(QIO_CHANNEL(rioc), QIO_CHANNEL_FEATURE_SHUTDOWN);
    return rioc;
}

bool qio_channel_is_rdma_colo(QIOChannel *ioc)
{
    return ioc && object_dynamic_cast(OBJECT(ioc), TYPE_QIO_CHANNEL_RDMA_COLO);
}

int rdma_colo_channel_index(QIOChannel *ioc)
{
    return qio_channel_is_rdma_colo(ioc) ? QIO_CHANNEL_RDMA_COLO(ioc)->index
                                         : -1;
}

static bool rdma_colo_check_stream(QIOChannelRdmaColo *rioc, Error **errp)
{
    if (rioc->index >= 0) {
        error_setg(errp, "rdma-colo: data channel %d carries no byte stream",
                   rioc->index);
        return false;
    }
    if (rioc->closed) {
        error_setg(errp, "rdma-colo: channel closed");
        return false;
    }
    return true;
}

static ssize_t qio_channel_rdma_colo_readv(QIOChannel *ioc,
                                           const struct iovec *iov,
                                           size_t niov, int **fds,
                                           size_t *nfds, int flags,
                                           Error **errp)
{
    QIOChannelRdmaColo *rioc = QIO_CHANNEL_RDMA_COLO(ioc);
    ssize_t done = 0;

    if (!rdma_colo_check_stream(rioc, errp)) {
        return -1;
    }
    for (size_t i = 0; i < niov; i++) {
        ssize_t n;

        if (!iov[i].iov_len) {
            continue;
        }
        /* Block for the first byte only; then take what is buffered. */
        n = rcolo_stream_read(rioc->sess->rs, iov[i].iov_base, iov[i].iov_len,
                              !rioc->blocking || done > 0);
        if (n == -EAGAIN) {
            return done ? done : QIO_CHANNEL_ERR_BLOCK;
        }
        if (n < 0) {
            if (done) {
                return done;
            }
            rdma_colo_set_error(errp, rioc->sess, n, "stream read");
            return -1;
        }
        done += n;
        if (n < iov[i].iov_len) {
            break;
        }
    }
    return done;
}

static ssize_t qio_channel_rdma_colo_writev(QIOChannel *ioc,
                                            const struct iovec *iov,
                                            size_t niov, int *fds, size_t nfds,
                                            int flags, Error **errp)
{
    QIOChannelRdmaColo *rioc = QIO_CHANNEL_RDMA_COLO(ioc);
    ssize_t n;

    if (!rdma_colo_check_stream(rioc, errp)) {
        return -1;
    }
    /*
     * Writes always block: the stream is credit-based and bounded, and the
     * only writers (migration thread, COLO threads, return path) block.
     * One call for the whole vector: QEMUFile's 8-byte headers and 4 KiB
     * pages then share 64 KiB messages instead of taking one each.
     */
    n = rcolo_stream_writev(rioc->sess->rs, iov, niov, false);
    if (n < 0) {
        rdma_colo_set_error(errp, rioc->sess, n, "stream write");
        return -1;
    }
    return n;
}

static int qio_channel_rdma_colo_set_blocking(QIOChannel *ioc, bool enabled,
                                              Error **errp)
{
    QIO_CHANNEL_RDMA_COLO(ioc)->blocking = enabled;
    return 0;
}

static int qio_channel_rdma_colo_close(QIOChannel *ioc, Error **errp)
{
    QIOChannelRdmaColo *rioc = QIO_CHANNEL_RDMA_COLO(ioc);

    if (rioc->index < 0 && !rioc->closed) {
        /* End of stream for the peer; the session lives while referenced. */
        rcolo_stream_close(rioc->sess->rs);
    }
    rioc->closed = true;
    return 0;
}

static int qio_channel_rdma_colo_shutdown(QIOChannel *ioc,
                                          QIOChannelShutdown how,
                                          Error **errp)
{
    QIOChannelRdmaColo *rioc = QIO_CHANNEL_RDMA_COLO(ioc);

    /*
     * Yank, failover and multifd termination all end the whole session:
     * every thread blocked on it, on either side, wakes with an error.
     */
    if (trace_event_get_state_backends(TRACE_RDMA_COLO_SHUTDOWN)) {
        /* Who ended it: here, or the peer or fabric before (its error). */
        int status = rcolo_session_status(rioc->sess->rs);

        trace_rdma_colo_shutdown(rioc->index, status,
                                 status ? rcolo_session_error(rioc->sess->rs)
                                        : "running, this ends it");
    }
    rcolo_session_shutdown(rioc->sess->rs);
    return 0;
}

static GSource *qio_channel_rdma_colo_create_watch(QIOChannel *ioc,
                                                   GIOCondition condition)
{
    QIOChannelRdmaColo *rioc = QIO_CHANNEL_RDMA_COLO(ioc);

    /* Readable while stream data, end of stream or an error is pending. */
    return qio_channel_create_fd_watch(ioc, rcolo_stream_fd(rioc->sess->rs),
                                       condition);
}

static void qio_channel_rdma_colo_set_aio_fd_handler(QIOChannel *ioc,
                                                     AioContext *read_ctx,
                                                     IOHandler *io_read,
                                                     AioContext *write_ctx,
                                                     IOHandler *io_write,
                                                     void *opaque)
{
    QIOChannelRdmaColo *rioc = QIO_CHANNEL_RDMA_COLO(ioc);
    int fd = rcolo_stream_fd(rioc->sess->rs);

    qio_channel_util_set_aio_fd_handler(fd, read_ctx, io_read, fd, write_ctx,
                                        io_write, opaque);
}

static void qio_channel_rdma_colo_finalize(Object *obj)
{
    QIOChannelRdmaColo *rioc = QIO_CHANNEL_RDMA_COLO(obj);

    if (rioc->sess) {
        rdma_colo_session_unref(rioc->sess);
    }
}

static void qio_channel_rdma_colo_class_init(ObjectClass *klass,
                                             const void *class_data)
{
    QIOChannelClass *ioc_klass = QIO_CHANNEL_CLASS(klass);

    ioc_klass->io_writev = qio_channel_rdma_colo_writev;
    ioc_klass->io_readv = qio_channel_rdma_colo_readv;
    ioc_klass->io_set_blocking = qio_channel_rdma_colo_set_blocking;
    ioc_klass->io_close = qio_channel_rdma_colo_close;
    ioc_klass->io_shutdown = qio_channel_rdma_colo_shutdown;
    ioc_klass->io_create_watch = qio_channel_rdma_colo_create_watch;
    ioc_klass->io_set_aio_fd_handler = qio_channel_rdma_colo_set_aio_fd_handler;
}

static const TypeInfo qio_channel_rdma_colo_info = {
    .parent = TYPE_QIO_CHANNEL,
    .name = TYPE_QIO_CHANNEL_RDMA_COLO,
    .instance_size = sizeof(QIOChannelRdmaColo),
    .instance_finalize = qio_channel_rdma_colo_finalize,
    .class_init = qio_channel_rdma_colo_class_init,
};

static void qio_channel_rdma_colo_register_types(void)
{
    type_register_static(&qio_channel_rdma_colo_info);
}

type_init(qio_channel_rdma_colo_register_types);
