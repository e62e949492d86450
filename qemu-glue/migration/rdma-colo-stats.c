/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * rdma-colo: the session's statistics in query-migrate
 *
 * The counters are the library's (rcolo_session_get_stats); the fence
 * latencies are what the source's multifd threads measured around each
 * channel's sync, kept in a ring of the last RDMA_COLO_FENCE_SAMPLES.
 */

#include "qemu/osdep.h"
#include "qemu/lockable.h"
#include "rdma-colo-channel.h"
#include "rdma-colo-stats.h"

static int rdma_colo_cmp_ns(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of @n sorted samples, in microseconds. */
static uint64_t rdma_colo_percentile_us(const int64_t *sorted, unsigned n,
                                        unsigned pct)
{
    unsigned rank = (n * pct + 99) / 100;

    return sorted[MAX(rank, 1) - 1] / 1000;
}

static RdmaColoLatency *rdma_colo_fence_latency(RdmaColoSession *sess)
{
    int64_t ns[RDMA_COLO_FENCE_SAMPLES];
    RdmaColoLatency *lat;
    unsigned n;

    WITH_QEMU_LOCK_GUARD(&sess->stats_lock) {
        n = MIN(sess->fences_recorded, RDMA_COLO_FENCE_SAMPLES);
        memcpy(ns, sess->fence_ns, n * sizeof(ns[0]));
    }
    if (!n) {
        return NULL;
    }
    qsort(ns, n, sizeof(ns[0]), rdma_colo_cmp_ns);
    lat = g_new0(RdmaColoLatency, 1);
    lat->samples = n;
    lat->p50 = rdma_colo_percentile_us(ns, n, 50);
    lat->p99 = rdma_colo_percentile_us(ns, n, 99);
    lat->max = ns[n - 1] / 1000;
    return lat;
}

static RdmaColoPath *rdma_colo_path(RdmaColoSession *sess)
{
    struct rcolo_path p;
    RdmaColoPath *out;

    if (rcolo_session_get_path(sess->rs, &p) < 0) {
        return NULL; /* not connected (yet, or any more) */
    }
    out = g_new0(RdmaColoPath, 1);
    out->device = g_strdup(p.device);
    out->port = p.port;
    out->gid_index = p.gid_index;
    out->traffic_class = p.traffic_class;
    out->mtu = p.mtu;
    out->local = g_strdup(p.local);
    out->remote = g_strdup(p.remote);
    return out;
}

static void rdma_colo_fill(RdmaColoSession *sess, void *opaque)
{
    MigrationInfo *info = opaque;
    struct rcolo_session_stats st = { 0 };
    RdmaColoStats *out;
    int status;

    if (info->rdma_colo) {
        return; /* a newer session is listed first */
    }
    rcolo_session_get_stats(sess->rs, &st);
    out = g_new0(RdmaColoStats, 1);
    out->bytes = st.total.bytes;
    out->pages = st.total.pages;
    out->zero_pages = st.total.zero_pages;
    out->write_requests = st.total.write_wrs;
    out->descriptors = st.total.descriptors;
    out->fences = st.total.fences;
    out->barriers = st.total.barriers;
    out->credit_waits = st.total.credit_waits;
    out->owed_wait_max = MAX(st.total.owed_wait_ns_max,
                             st.stream_owed_wait_ns_max) / 1000;
    out->stream_bytes_sent = st.stream_bytes_sent;
    out->stream_bytes_received = st.stream_bytes_received;
    out->regions = st.regions;
    out->registered_bytes = st.registered_bytes;
    out->on_demand_paging = rcolo_session_odp(sess->rs) == 1;
    status = rcolo_session_status(sess->rs);
    if (status) {
        const char *why = rcolo_session_error(sess->rs);

        out->error = g_strdup(*why ? why : strerror(-status));
    }
    out->fence_latency = rdma_colo_fence_latency(sess);
    out->path = rdma_colo_path(sess);
    info->rdma_colo = out;
}

void rdma_colo_populate_info(MigrationInfo *info, bool outgoing)
{
    rdma_colo_session_foreach(outgoing ? RCOLO_PRIMARY : RCOLO_SECONDARY,
                              rdma_colo_fill, info);
}
