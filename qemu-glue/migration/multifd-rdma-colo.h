/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * rdma-colo: multifd channels as RDMA data channels into the COLO cache
 *
 * multifd calls in through hooks it chooses once: per migration the send
 * methods, per channel the channel ops and the receive thread.  The
 * destination registers its COLO cache (remote write only) for the source
 * to write into.  Inline stubs without the library.
 */

#ifndef QEMU_MIGRATION_MULTIFD_RDMA_COLO_H
#define QEMU_MIGRATION_MULTIFD_RDMA_COLO_H

#include "multifd.h"

#ifdef CONFIG_RDMA_COLO

#include "rdma-colo-channel.h"

bool rdma_colo_outgoing(void);
bool rdma_colo_send_channel_create(gpointer opaque, Error **errp);
const MultiFDMethods *rdma_colo_multifd_methods(void);
const MultiFDChannelOps *rdma_colo_channel_ops(QIOChannel *ioc);
void *rdma_colo_multifd_recv_thread(void *opaque);

/* Destination: register (and advertise) / deregister the COLO cache. */
bool rdma_colo_cache_register(Error **errp);
void rdma_colo_cache_unregister(void);

#else

static inline bool qio_channel_is_rdma_colo(QIOChannel *ioc)
{
    return false;
}

static inline int rdma_colo_channel_index(QIOChannel *ioc)
{
    return -1;
}

static inline bool rdma_colo_outgoing(void)
{
    return false;
}

static inline bool rdma_colo_send_channel_create(gpointer opaque,
                                                 Error **errp)
{
    g_assert_not_reached();
}

static inline const MultiFDMethods *rdma_colo_multifd_methods(void)
{
    return NULL;
}

static inline const MultiFDChannelOps *rdma_colo_channel_ops(QIOChannel *ioc)
{
    return NULL;
}

static inline void *rdma_colo_multifd_recv_thread(void *opaque)
{
    g_assert_not_reached();
}

static inline bool rdma_colo_cache_register(Error **errp)
{
    return true;
}

static inline void rdma_colo_cache_unregister(void)
{
}

#endif /* CONFIG_RDMA_COLO */

#endif /* QEMU_MIGRATION_MULTIFD_RDMA_COLO_H */
