/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * rdma-colo: state shared by rdma-colo*.c and multifd-rdma-colo.c
 */

#ifndef QEMU_MIGRATION_RDMA_COLO_INT_H
#define QEMU_MIGRATION_RDMA_COLO_INT_H

#include <rdma-colo.h> /* librdmacolo */
#include "qemu/thread.h"
#include "system/ramblock.h"
#include "rdma-colo.h"

/* How long the source waits for the destination's COLO cache. */
#define RDMA_COLO_REGION_TIMEOUT_MS 60000
/* How long channel set-up may take before the migration fails. */
#define RDMA_COLO_CONNECT_TIMEOUT_MS 30000
/*
 * A fence waits for at most depth x 512 KiB per channel to land: seconds
 * even on a slow link.  Beyond this the destination is not receiving.
 */
#define RDMA_COLO_FENCE_TIMEOUT_MS 60000

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
} RdmaColoSession;

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
    /* destination: the descriptor being processed, released on next recv */
    struct rcolo_desc desc;
    bool holding_desc;
    /* destination: pages handed to multifd for marking, for the trace */
    uint64_t recv_pages;
    uint64_t recv_zero_pages;
};

/* rdma-colo-channel.c */
RdmaColoSession *rdma_colo_session_new(struct rcolo_session *rs,
                                       enum rcolo_role role);
void rdma_colo_session_unref(RdmaColoSession *sess);
QIOChannelRdmaColo *rdma_colo_channel_new(RdmaColoSession *sess, int index);
void rdma_colo_set_error(Error **errp, struct rcolo_session *rs, int ret,
                         const char *what);
void rdma_colo_region_name(const char *idstr, char *name, size_t size);

#endif /* QEMU_MIGRATION_RDMA_COLO_INT_H */
