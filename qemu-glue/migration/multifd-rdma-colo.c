/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * rdma-colo: multifd channels as RDMA data channels
 *
 * Source: the pages of a multifd packet are RDMA-written from the RAMBlock
 * into the destination's COLO cache and the page list goes as the
 * descriptor; a multifd sync is a fence, which returns once every page
 * written before it is placed and its descriptor released.
 *
 * Destination: each descriptor becomes the multifd packet the socket
 * transport would have read, so multifd_recv_unfill_packet() validates it
 * and the COLO code marks the bitmap (and, before COLO state, copies the
 * cache to guest RAM) exactly as for TCP; only the payload read is skipped.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "qemu/lockable.h"
#include "qemu/timer.h"
#include "exec/target_page.h"
#include "migration.h"
#include "migration-stats.h"
#include "qemu-file.h"
#include "rdma-colo-int.h"
#include "trace.h"

/* The page lists are handed to the library as they are. */
QEMU_BUILD_BUG_ON(sizeof(ram_addr_t) != sizeof(uint64_t));

bool rdma_colo_send_channel_create(gpointer opaque, Error **errp)
{
    MultiFDSendParams *p = opaque;
    MigrationState *s = migrate_get_current();
    QIOChannelRdmaColo *stream =
        QIO_CHANNEL_RDMA_COLO(qemu_file_get_ioc(s->to_dst_file));
    QIOChannelRdmaColo *rioc = rdma_colo_channel_new(stream->sess, p->id);
    struct rcolo_error err;
    bool ok = true;

    if (rcolo_channel_connect(stream->sess->rs, p->id,
                              RDMA_COLO_CONNECT_TIMEOUT_MS, &rioc->ch,
                              &err) < 0) {
        error_setg(errp, "rdma-colo: multifd channel %u: %s", p->id,
                   err.message);
        object_unref(OBJECT(rioc));
        ok = false;
    } else {
        qio_channel_set_name(QIO_CHANNEL(rioc), "migration-rdma-colo-data");
        multifd_channel_connect(p, QIO_CHANNEL(rioc)); /* takes our ref */
    }
    /* Synchronous, like the file transport. */
    multifd_send_channel_created();
    return ok;
}

/*
 * The region of @block in the destination's COLO cache, registering the
 * block's own memory as the write source on first use.
 */
static bool rdma_colo_region_for(QIOChannelRdmaColo *rioc, RAMBlock *block,
                                 Error **errp)
{
    RdmaColoSession *sess = rioc->sess;
    char name[RCOLO_MAX_NAME + 1];
    struct rcolo_error err;
    uint32_t id, page_size;
    uint64_t length;
    int ret;

    if (block == rioc->last_block) {
        return true;
    }
    /* The destination publishes its whole cache at once, as 0..n-1. */
    if (rcolo_region_wait(sess->rs, 0, RDMA_COLO_REGION_TIMEOUT_MS, &err) < 0) {
        error_setg(errp, "rdma-colo: waiting for the destination's COLO "
                   "cache: %s", err.message);
        return false;
    }
    rdma_colo_region_name(block->idstr, name, sizeof(name));
    if (rcolo_region_lookup(sess->rs, name, &id, &length, &page_size) < 0) {
        error_setg(errp, "rdma-colo: the destination has no COLO cache for "
                   "RAMBlock %s", block->idstr);
        return false;
    }
    if (length != block->used_length) {
        error_setg(errp, "rdma-colo: RAMBlock %s is 0x" RAM_ADDR_FMT
                   " bytes here, 0x%" PRIx64 " on the destination",
                   block->idstr, block->used_length, length);
        return false;
    }
    WITH_QEMU_LOCK_GUARD(&sess->lock) {
        ret = rcolo_region_add(sess->rs, id, name, block->host,
                               block->used_length, page_size, &err);
    }
    if (ret < 0 && ret != -EEXIST) {
        error_setg(errp, "rdma-colo: RAMBlock %s: %s", block->idstr,
                   err.message);
        return false;
    }
    if (ret == 0) {
        trace_rdma_colo_region(block->idstr, name, id, length);
    }
    rioc->last_block = block;
    rioc->last_region = id;
    return true;
}

int rdma_colo_send_pages(MultiFDSendParams *p, Error **errp)
{
    QIOChannelRdmaColo *rioc = QIO_CHANNEL_RDMA_COLO(p->c);
    MultiFDPages_t *pages = &p->data->u.ram;
    const uint64_t *offsets = (const uint64_t *)pages->offset;
    int ret;

    if (!rdma_colo_region_for(rioc, pages->block, errp)) {
        return -1;
    }
    ret = rcolo_write_pages(rioc->ch, rioc->last_region, offsets,
                            pages->normal_num, offsets + pages->normal_num,
                            pages->num - pages->normal_num);
    if (ret < 0) {
        rdma_colo_set_error(errp, rioc->sess->rs, ret, "RDMA write");
        return -1;
    }
    /*
     * Nothing is left for the channel to write (p->iovs_num stays 0) and no
     * multifd packet is built: the descriptor carried the page lists.
     */
    p->packets_sent++;
    stat64_add(&mig_stats.multifd_bytes,
               (uint64_t)pages->normal_num * multifd_ram_page_size());
    return 0;
}

int rdma_colo_send_sync(MultiFDSendParams *p, Error **errp)
{
    QIOChannelRdmaColo *rioc = QIO_CHANNEL_RDMA_COLO(p->c);
    int64_t start = get_clock();
    int ret;

    /*
     * The fence returns once the destination has every earlier page of this
     * channel in its cache: pages written after the sync, maybe on another
     * channel, can never be overtaken by older ones still in flight.
     */
    ret = rcolo_channel_fence_post(rioc->ch);
    if (ret == 0) {
        ret = rcolo_channel_fence_wait(rioc->ch, RDMA_COLO_FENCE_TIMEOUT_MS);
    }
    if (ret == -ETIMEDOUT) {
        error_setg(errp, "rdma-colo: multifd channel %u: the destination did "
                   "not acknowledge a sync within %d s (is multifd on, with "
                   "the same multifd-channels, there?)", p->id,
                   RDMA_COLO_FENCE_TIMEOUT_MS / 1000);
        return -1;
    }
    if (ret < 0) {
        rdma_colo_set_error(errp, rioc->sess->rs, ret, "fence");
        return -1;
    }
    if (trace_event_get_state_backends(TRACE_RDMA_COLO_SYNC)) {
        struct rcolo_channel_stats st = { 0 };

        rcolo_channel_get_stats(rioc->ch, &st);
        trace_rdma_colo_sync(p->id, get_clock() - start, st.bytes, st.pages,
                             st.zero_pages, st.write_wrs);
    }
    return 0;
}

static void rdma_colo_fill_packet(MultiFDRecvParams *p, RAMBlock *block,
                                  const struct rcolo_desc *desc)
{
    MultiFDPacket_t *packet = p->packet;

    packet->pages_alloc = cpu_to_be32(multifd_ram_page_count());
    packet->normal_pages = cpu_to_be32(desc->n);
    packet->zero_pages = cpu_to_be32(desc->nzero);
    packet->next_packet_size = 0;
    pstrcpy(packet->ramblock, sizeof(packet->ramblock), block->idstr);
    for (unsigned i = 0; i < desc->n; i++) {
        packet->offset[i] = cpu_to_be64(desc->offsets[i]);
    }
    for (unsigned i = 0; i < desc->nzero; i++) {
        packet->offset[desc->n + i] = cpu_to_be64(desc->zero[i]);
    }
}

/*
 * Returns 1 with the next packet in @hdr and p->packet, 0 at the end of the
 * session (local shutdown, or the source went away: as EOF on a socket), or
 * -1 with @errp set.
 */
int rdma_colo_recv_packet(MultiFDRecvParams *p, MultiFDPacketHdr_t *hdr,
                          Error **errp)
{
    QIOChannelRdmaColo *rioc = QIO_CHANNEL_RDMA_COLO(p->c);
    RdmaColoSession *sess = rioc->sess;
    struct rcolo_desc *desc = &rioc->desc;
    uint32_t flags = MULTIFD_FLAG_NOCOMP;
    struct rcolo_error err = { 0 };
    int ret, status;

    if (!rioc->ch) {
        ret = rcolo_channel_accept(sess->rs, rioc->index, -1, &rioc->ch, &err);
        if (ret < 0) {
            goto fail;
        }
    }
    /* The previous packet's pages are marked (and copied): let it go. */
    if (rioc->holding_desc) {
        rioc->holding_desc = false;
        ret = rcolo_channel_release(rioc->ch, desc);
        if (ret < 0) {
            goto fail;
        }
    }
    ret = rcolo_channel_recv(rioc->ch, desc, -1);
    if (ret < 0) {
        goto fail;
    }

    p->packet->packet_num = cpu_to_be64(desc->seq);
    if (desc->kind == RCOLO_DESC_FENCE) {
        /*
         * Ack now: the source's sync waits for it, while this thread is
         * about to wait for the main thread's multifd_recv_sync_main().
         */
        flags = MULTIFD_FLAG_SYNC;
        p->packet->normal_pages = 0;
        p->packet->zero_pages = 0;
        trace_rdma_colo_recv_sync(rioc->index, rioc->recv_pages,
                                  rioc->recv_zero_pages);
        ret = rcolo_channel_release(rioc->ch, desc);
        if (ret < 0) {
            goto fail;
        }
    } else {
        /* The library checked bounds against the registered cache. */
        if (desc->region_id >= qatomic_load_acquire(&sess->nblocks) ||
            desc->page_size != multifd_ram_page_size() ||
            desc->n + desc->nzero > multifd_ram_page_count()) {
            error_setg(errp, "rdma-colo: multifd channel %d: descriptor for "
                       "region %u with %u+%u pages of %u bytes does not fit "
                       "a multifd packet", rioc->index, desc->region_id,
                       desc->n, desc->nzero, desc->page_size);
            return -1;
        }
        rdma_colo_fill_packet(p, sess->blocks[desc->region_id], desc);
        rioc->holding_desc = true;
        rioc->recv_pages += desc->n;
        rioc->recv_zero_pages += desc->nzero;
    }
    hdr->magic = cpu_to_be32(MULTIFD_MAGIC);
    hdr->version = cpu_to_be32(MULTIFD_VERSION);
    hdr->flags = cpu_to_be32(flags);
    return 1;

fail:
    status = rcolo_session_status(sess->rs);
    if (status == -ESHUTDOWN || status == -ECONNRESET) {
        return 0;
    }
    if (err.message[0]) {
        error_setg(errp, "rdma-colo: multifd channel %d: %s", rioc->index,
                   err.message);
    } else {
        rdma_colo_set_error(errp, sess->rs, ret, "multifd channel");
    }
    return -1;
}
