/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * rdma-colo: COLO migration over RDMA (librdmacolo)
 *
 * The migration stream and COLO's return path run over the session's
 * reliable stream, wrapped as a QIOChannel.  Each multifd channel is one of
 * the session's data channels: the source RDMA-WRITEs the pages of a multifd
 * packet from the RAMBlock straight into the destination's COLO cache and
 * sends the packet's page list as a descriptor; the destination turns the
 * descriptor back into the multifd packet the socket transport would have
 * read, so the multifd and COLO code above sees no difference, except that
 * the page payload is already in place.
 */

#ifndef QEMU_MIGRATION_RDMA_COLO_H
#define QEMU_MIGRATION_RDMA_COLO_H

#include "io/channel.h"
#include "qapi/qapi-types-migration.h"
#include "multifd.h"

#ifdef CONFIG_RDMA_COLO

#define TYPE_QIO_CHANNEL_RDMA_COLO "qio-channel-rdma-colo"
OBJECT_DECLARE_SIMPLE_TYPE(QIOChannelRdmaColo, QIO_CHANNEL_RDMA_COLO)

bool rdma_colo_parse_uri(const char *uri, RdmaColoAddress *addr,
                         Error **errp);
bool rdma_colo_caps_check(bool *caps, Error **errp);
void rdma_colo_start_incoming_migration(RdmaColoAddress *addr, Error **errp);
void rdma_colo_start_outgoing_migration(MigrationState *s,
                                        RdmaColoAddress *addr, Error **errp);

bool qio_channel_is_rdma_colo(QIOChannel *ioc);
int rdma_colo_channel_index(QIOChannel *ioc);
bool rdma_colo_outgoing(void);

/* Destination: register (and advertise) / deregister the COLO cache. */
bool rdma_colo_cache_register(Error **errp);
void rdma_colo_cache_unregister(void);

/* multifd-rdma-colo.c */
bool rdma_colo_send_channel_create(gpointer opaque, Error **errp);
int rdma_colo_send_pages(MultiFDSendParams *p, Error **errp);
int rdma_colo_send_sync(MultiFDSendParams *p, Error **errp);
int rdma_colo_recv_packet(MultiFDRecvParams *p, MultiFDPacketHdr_t *hdr,
                          Error **errp);

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

static inline bool rdma_colo_cache_register(Error **errp)
{
    return true;
}

static inline void rdma_colo_cache_unregister(void)
{
}

static inline bool rdma_colo_send_channel_create(gpointer opaque,
                                                 Error **errp)
{
    g_assert_not_reached();
}

static inline int rdma_colo_send_pages(MultiFDSendParams *p, Error **errp)
{
    g_assert_not_reached();
}

static inline int rdma_colo_send_sync(MultiFDSendParams *p, Error **errp)
{
    g_assert_not_reached();
}

static inline int rdma_colo_recv_packet(MultiFDRecvParams *p,
                                        MultiFDPacketHdr_t *hdr, Error **errp)
{
    g_assert_not_reached();
}

#endif /* CONFIG_RDMA_COLO */

#endif /* QEMU_MIGRATION_RDMA_COLO_H */
