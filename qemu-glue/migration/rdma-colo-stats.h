/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * rdma-colo: the session's statistics in query-migrate
 */

#ifndef QEMU_MIGRATION_RDMA_COLO_STATS_H
#define QEMU_MIGRATION_RDMA_COLO_STATS_H

#include "qapi/qapi-types-migration.h"

#ifdef CONFIG_RDMA_COLO /* MigrationInfo has @rdma-colo with it only */

/* Fill @info->rdma_colo from the live session of this side, if any. */
void rdma_colo_populate_info(MigrationInfo *info, bool outgoing);

#else

static inline void rdma_colo_populate_info(MigrationInfo *info,
                                           bool outgoing)
{
}

#endif /* CONFIG_RDMA_COLO */

#endif /* QEMU_MIGRATION_RDMA_COLO_STATS_H */
