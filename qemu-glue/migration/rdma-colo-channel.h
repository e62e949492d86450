/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * rdma-colo: the session and the QIOChannel over it, which carries the
 * migration stream (and COLO's return path) and stands for the data
 * channels of multifd
 */

#ifndef QEMU_MIGRATION_RDMA_COLO_CHANNEL_H
#define QEMU_MIGRATION_RDMA_COLO_CHANNEL_H

#include <rdma-colo.h> /* librdmacolo */
#include "io/channel.h"
#include "qemu/thread.h"
#include "system/ramblock.h"

/* How long the source waits for the destination's COLO cache. */
#define RDMA_COLO_REGION_TIMEOUT_MS 60000
/* How long channel set-up may take before the migration fails. */
#define RDMA_COLO_CONNECT_TIMEOUT_MS 30000
/*
 * A fence waits for at most depth x 512 KiB per channel to land: seconds
 * even on a slow link.  Beyond this the destination is not receiving.
 */
#define RDMA_COLO_FENCE_TIMEOUT_MS 60000

/* Fence latencies kept for query-migrate: 64 checkpoints of 4 channels. */
#define RDMA_COLO_FENCE_SAMPLES 256

/*
 * One librdmacolo session, shared (reference-counted) by the migration
 * stream channel and the data channels; destroyed with the last of them.
 */
typedef struct RdmaColoSession {
    struct rcolo_session *rs;
    enum rcolo_role role;
    /* source: serialises registering RAMBlocks on first use */
    QemuMutex lock;
    /* destination: RAMBlock of region id i (the COLO cache) */
    RAMBlock **blocks;
    unsigned nblocks;
    /* source: RAM discard disabled while the session may pin guest RAM */
    bool discard_disabled;
    /* source: the last multifd syncs' fence latencies, in ns (a ring) */
    QemuMutex stats_lock;
    int64_t fence_ns[RDMA_COLO_FENCE_SAMPLES];
    uint64_t fences_recorded;
    /* the session's failure was reported (once, by rdma_colo_set_error) */
    bool failure_reported;
} RdmaColoSession;

#define TYPE_QIO_CHANNEL_RDMA_COLO "qio-channel-rdma-colo"
OBJECT_DECLARE_SIMPLE_TYPE(QIOChannelRdmaColo, QIO_CHANNEL_RDMA_COLO)

struct QIOChannelRdmaColo {
    QIOChannel parent;
    RdmaColoSession *sess;
    int index;                /* -1: the migration stream, else data channel */
    struct rcolo_channel *ch; /* data channel, once connected */
    bool blocking;
    bool closed;
    /* source: the RAMBlock last written, and its region id */
    RAMBlock *last_block;
    uint32_t last_region;
    /* destination: pages handed to multifd for marking, for the trace */
    uint64_t recv_pages;
    uint64_t recv_zero_pages;
};

RdmaColoSession *rdma_colo_session_new(struct rcolo_session *rs,
                                       enum rcolo_role role);
void rdma_colo_session_unref(RdmaColoSession *sess);
void rdma_colo_fence_latency_record(RdmaColoSession *sess, int64_t ns);
/*
 * Call @fn for each live session of @role, under the lock that keeps it
 * alive: @fn may read the session's statistics, nothing slower.
 */
void rdma_colo_session_foreach(enum rcolo_role role,
                               void (*fn)(RdmaColoSession *sess, void *opaque),
                               void *opaque);
/*
 * A channel of @sess (a reference is taken), or of no session yet (NULL:
 * the outgoing stream, attached once its connect worker is done); @index
 * -1 is the stream, 0.. a multifd data channel.
 */
QIOChannelRdmaColo *rdma_colo_channel_new(RdmaColoSession *sess, int index);
void rdma_colo_set_error(Error **errp, RdmaColoSession *sess, int ret,
                         const char *what);
void rdma_colo_region_name(const char *idstr, char *name, size_t size);
bool qio_channel_is_rdma_colo(QIOChannel *ioc);
int rdma_colo_channel_index(QIOChannel *ioc);

#endif /* QEMU_MIGRATION_RDMA_COLO_CHANNEL_H */
