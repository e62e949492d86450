/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * rdma-colo: COLO migration over RDMA (librdmacolo)
 *
 * The migration stream and COLO's return path run over the session's
 * reliable stream, wrapped as a QIOChannel.  Each multifd channel is one of
 * the session's data channels: the source RDMA-WRITEs the pages of a multifd
 * packet from the RAMBlock straight into the destination's COLO cache and
 * sends the packet's page list as a descriptor (multifd-rdma-colo.h).
 *
 * This header: the migration address, for migration.c, which uses it only
 * where CONFIG_RDMA_COLO is defined.
 */

#ifndef QEMU_MIGRATION_RDMA_COLO_H
#define QEMU_MIGRATION_RDMA_COLO_H

#include "qapi/qapi-types-migration.h"

#ifdef CONFIG_RDMA_COLO /* RdmaColoAddress exists with it only */

/* Also redacts token= values in @uri in place (QEMU may quote it). */
bool rdma_colo_parse_uri(const char *uri, RdmaColoAddress *addr,
                         Error **errp);
bool rdma_colo_caps_check(bool *caps, Error **errp);
bool rdma_colo_check(RdmaColoAddress *addr, Error **errp);
void rdma_colo_start_incoming_migration(RdmaColoAddress *addr, Error **errp);
void rdma_colo_start_outgoing_migration(MigrationState *s,
                                        RdmaColoAddress *addr, Error **errp);

#endif /* CONFIG_RDMA_COLO */

#endif /* QEMU_MIGRATION_RDMA_COLO_H */
