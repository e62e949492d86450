/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * rdma-colo: multifd channels as RDMA data channels
 *
 * Source: the pages of a multifd packet are RDMA-written from the RAMBlock
 * into the destination's COLO cache at once, and their page list goes in a
 * descriptor shared by up to RCOLO_MAX_DESC_PAGES pages (eight packets of
 * 4 KiB pages): the library sends it when it is full, before another
 * RAMBlock's pages, and before every sync.  A multifd sync is a fence,
 * which returns once every page written before it is placed and its
 * descriptor released.
 *
 * Destination: each channel has its own receive thread, which wakes up
 * once per descriptor (that wake-up, not the marking, is most of its CPU
 * time, hence the batching), turns it straight into the receive state
 * (RAMBlock, normal and zero page offsets) a packet's worth at a time, and
 * hands that to the COLO code, which marks the bitmap (and, before COLO
 * state, copies the cache to guest RAM) exactly as for TCP.
 * No packet is built or parsed on this side: the library validated the
 * descriptor against the registered cache.
 *
 * multifd calls in through three hooks chosen once per migration or per
 * channel: rdma_colo_multifd_methods() (the RAM packet), the channel's
 * MultiFDChannelOps (hello, SYNC, local sync) and
 * rdma_colo_multifd_recv_thread().
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "qemu/lockable.h"
#include "qemu/main-loop.h"
#include "qemu/rcu.h"
#include "qemu/timer.h"
#include "exec/target_page.h"
#include "migration.h"
#include "migration-stats.h"
#include "qemu-file.h"
#include "ram.h"
#include "multifd-rdma-colo.h"
#include "multifd-colo.h"
#include "trace.h"

/* The page lists are handed to the library as they are. */
QEMU_BUILD_BUG_ON(sizeof(ram_addr_t) != sizeof(uint64_t));

bool rdma_colo_outgoing(void)
{
    MigrationState *s = migrate_get_current();

    return s->to_dst_file &&
           qio_channel_is_rdma_colo(qemu_file_get_ioc(s->to_dst_file));
}

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
        /* Before the channel's thread exists: it owns the channel then. */
        rcolo_channel_set_desc_batch(rioc->ch, RCOLO_MAX_DESC_PAGES);
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

/*
 * The pages go straight from guest RAM and the descriptor carries their
 * list, so nothing uses p->iov; multifd expects it allocated all the same.
 */
static int rdma_colo_send_setup(MultiFDSendParams *p, Error **errp)
{
    p->iov = g_new0(struct iovec, multifd_ram_page_count() + 1);
    return 0;
}

static void rdma_colo_send_cleanup(MultiFDSendParams *p, Error **errp)
{
    g_clear_pointer(&p->iov, g_free);
}

/* MultiFDMethods.send_prepare: the whole RAM packet, sent. */
static int rdma_colo_send_prepare(MultiFDSendParams *p, Error **errp)
{
    QIOChannelRdmaColo *rioc = QIO_CHANNEL_RDMA_COLO(p->c);
    MultiFDPages_t *pages = &p->data->u.ram;
    const uint64_t *offsets = (const uint64_t *)pages->offset;
    int ret;

    multifd_send_zero_page_detect(p);
    if (!rdma_colo_region_for(rioc, pages->block, errp)) {
        return -1;
    }
    ret = rcolo_write_pages(rioc->ch, rioc->last_region, offsets,
                            pages->normal_num, offsets + pages->normal_num,
                            pages->num - pages->normal_num);
    if (ret < 0) {
        rdma_colo_set_error(errp, rioc->sess, ret, "RDMA write");
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

static const MultiFDMethods multifd_rdma_colo_methods = {
    .send_setup = rdma_colo_send_setup,
    .send_cleanup = rdma_colo_send_cleanup,
    .send_prepare = rdma_colo_send_prepare,
};

const MultiFDMethods *rdma_colo_multifd_methods(void)
{
    return rdma_colo_outgoing() ? &multifd_rdma_colo_methods : NULL;
}

static int rdma_colo_send_hello(MultiFDSendParams *p, Error **errp)
{
    return 0; /* the session numbered the channel when it connected it */
}

static int rdma_colo_send_sync(MultiFDSendParams *p, Error **errp)
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
    if (ret == -ETIMEDOUT && !rcolo_session_status(rioc->sess->rs)) {
        /* Our own limit, not the session's stall deadline. */
        error_setg(errp, "rdma-colo: multifd channel %u: the destination did "
                   "not acknowledge a sync within %d s (is multifd on, with "
                   "the same multifd-channels, there?)", p->id,
                   RDMA_COLO_FENCE_TIMEOUT_MS / 1000);
        return -1;
    }
    if (ret < 0) {
        rdma_colo_set_error(errp, rioc->sess, ret, "fence");
        return -1;
    }
    rdma_colo_fence_latency_record(rioc->sess, get_clock() - start);
    if (trace_event_get_state_backends(TRACE_RDMA_COLO_SYNC)) {
        struct rcolo_channel_stats st = { 0 };

        rcolo_channel_get_stats(rioc->ch, &st);
        trace_rdma_colo_sync(p->id, get_clock() - start, st.bytes, st.pages,
                             st.zero_pages, st.write_wrs);
    }
    return 0;
}

/*
 * A local sync (COLO's background sync, between checkpoints): a barrier,
 * which the destination's library acknowledges once every earlier page of
 * this channel is placed and marked, without waking its main thread, which
 * is not in a multifd sync then.  Pages sent after it, on any channel, can
 * never be overtaken by these.
 */
static int rdma_colo_sync_local(MultiFDSendParams *p, Error **errp)
{
    QIOChannelRdmaColo *rioc = QIO_CHANNEL_RDMA_COLO(p->c);
    int ret;

    ret = rcolo_channel_barrier_post(rioc->ch);
    if (ret == 0) {
        ret = rcolo_channel_fence_wait(rioc->ch, RDMA_COLO_FENCE_TIMEOUT_MS);
    }
    if (ret < 0) {
        rdma_colo_set_error(errp, rioc->sess, ret, "barrier");
        return -1;
    }
    return 0;
}

static const MultiFDChannelOps rdma_colo_multifd_channel_ops = {
    .send_hello = rdma_colo_send_hello,
    .send_sync = rdma_colo_send_sync,
    .sync_local = rdma_colo_sync_local,
};

const MultiFDChannelOps *rdma_colo_channel_ops(QIOChannel *ioc)
{
    return qio_channel_is_rdma_colo(ioc) ? &rdma_colo_multifd_channel_ops
                                         : NULL;
}

/*
 * The pages are in the cache already: mark them, as multifd-nocomp.c does
 * after reading them.
 */
static void rdma_colo_recv_pages(MultiFDRecvParams *p)
{
    multifd_colo_prepare_recv(p);
    multifd_recv_zero_page_process(p);
    for (int i = 0; i < p->normal_num; i++) {
        ramblock_recv_bitmap_set_offset(p->block, p->normal[i]);
    }
    multifd_colo_process_recv(p);
}

/*
 * Receive @desc: make it the channel's receive state, what
 * multifd_ram_unfill_packet() would have decoded from a packet, and mark
 * its pages, a packet's worth (multifd_ram_page_count()) at a time, since
 * that is what p->normal and p->zero hold; a descriptor has up to
 * RCOLO_MAX_DESC_PAGES pages.
 */
static bool rdma_colo_recv_desc(MultiFDRecvParams *p,
                                const struct rcolo_desc *desc, Error **errp)
{
    RdmaColoSession *sess = QIO_CHANNEL_RDMA_COLO(p->c)->sess;
    uint32_t max = multifd_ram_page_count();
    unsigned ni = 0, zi = 0;

    /* The library checked the offsets against the registered cache. */
    if (desc->region_id >= qatomic_load_acquire(&sess->nblocks) ||
        desc->page_size != multifd_ram_page_size()) {
        error_setg(errp, "rdma-colo: multifd channel %u: descriptor for "
                   "region %u with pages of %u bytes does not fit a "
                   "RAMBlock of %u-byte pages", p->id, desc->region_id,
                   desc->page_size, multifd_ram_page_size());
        return false;
    }
    p->block = sess->blocks[desc->region_id];
    p->host = p->block->colo_cache; /* x-colo is required */
    p->packet_num = desc->seq;
    p->packets_recved++;
    do {
        p->normal_num = MIN(desc->n - ni, max);
        p->zero_num = MIN(desc->nzero - zi, max - p->normal_num);
        if (p->normal_num) {
            memcpy(p->normal, desc->offsets + ni,
                   p->normal_num * sizeof(p->normal[0]));
        }
        if (p->zero_num) {
            memcpy(p->zero, desc->zero + zi,
                   p->zero_num * sizeof(p->zero[0]));
        }
        ni += p->normal_num;
        zi += p->zero_num;
        rdma_colo_recv_pages(p);
    } while (ni < desc->n || zi < desc->nzero);
    return true;
}

/*
 * The receive thread of an rdma-colo data channel, instead of
 * multifd_recv_thread(): descriptors instead of packets, the same sync
 * protocol with the main thread.
 */
void *rdma_colo_multifd_recv_thread(void *opaque)
{
    MultiFDRecvParams *p = opaque;
    QIOChannelRdmaColo *rioc = QIO_CHANNEL_RDMA_COLO(p->c);
    RdmaColoSession *sess = rioc->sess;
    struct rcolo_error err = { 0 };
    struct rcolo_desc desc;
    Error *local_err = NULL;
    int ret, status;

    rcu_register_thread();
    ret = rcolo_channel_accept(sess->rs, rioc->index, -1, &rioc->ch, &err);
    while (ret == 0 && !multifd_recv_should_exit()) {
        ret = rcolo_channel_recv(rioc->ch, &desc, -1);
        if (ret < 0) {
            break;
        }
        if (desc.kind == RCOLO_DESC_FENCE) {
            /*
             * Ack now: the source's sync waits for it, while this thread
             * waits for the main thread's multifd_recv_sync_main().
             */
            trace_rdma_colo_recv_sync(rioc->index, rioc->recv_pages,
                                      rioc->recv_zero_pages);
            ret = rcolo_channel_release(rioc->ch, &desc);
            if (ret == 0) {
                multifd_recv_sync_reached(p);
            }
            continue;
        }
        if (!rdma_colo_recv_desc(p, &desc, &local_err)) {
            break;
        }
        rioc->recv_pages += desc.n;
        rioc->recv_zero_pages += desc.nzero;
        /* Marked (and copied): the source may reuse the slot. */
        ret = rcolo_channel_release(rioc->ch, &desc);
    }

    /* Our shutdown, or the source went away: as EOF on a socket. */
    status = rcolo_session_status(sess->rs);
    if (!local_err && ret < 0 && status != -ESHUTDOWN &&
        status != -ECONNRESET) {
        if (err.message[0]) {
            error_setg(&local_err, "rdma-colo: multifd channel %d: %s",
                       rioc->index, err.message);
        } else {
            rdma_colo_set_error(&local_err, sess, ret, "multifd channel");
        }
    }
    if (local_err) {
        multifd_recv_terminate_threads(local_err);
        error_free(local_err);
    }
    rcu_unregister_thread();
    return NULL;
}

/* ---------------------------------------------------------- COLO cache */

static RdmaColoSession *rdma_colo_incoming_session(void)
{
    MigrationIncomingState *mis = migration_incoming_get_current();
    QIOChannel *ioc =
        mis->from_src_file ? qemu_file_get_ioc(mis->from_src_file) : NULL;

    return qio_channel_is_rdma_colo(ioc) ? QIO_CHANNEL_RDMA_COLO(ioc)->sess
                                         : NULL;
}

/*
 * Called once colo_init_ram_cache() allocated the cache: register every
 * block's cache as region i (remote write only, never remote read) and
 * send the table, all at once, to the source, which waits for it before
 * its first write.
 *
 * The blocks are listed under the RCU read lock, and registered (pinning
 * the whole cache: seconds for a large guest) and published (a wait for the
 * source) after it: a reader holding it that long would hold up every
 * synchronize_rcu().  They stay valid: this runs under the big lock, which
 * RAM block removal needs, and migration blocks memory hot-unplug.
 */
bool rdma_colo_cache_register(Error **errp)
{
    RdmaColoSession *sess = rdma_colo_incoming_session();
    struct rcolo_error err;
    RAMBlock *block;
    unsigned n = 0, count = 0;

    if (!sess) {
        return true;
    }
    assert(bql_locked());
    WITH_RCU_READ_LOCK_GUARD() {
        RAMBLOCK_FOREACH_NOT_IGNORED(block) {
            count++;
        }
        sess->blocks = g_new0(RAMBlock *, count);
        RAMBLOCK_FOREACH_NOT_IGNORED(block) {
            sess->blocks[n++] = block;
        }
    }
    for (n = 0; n < count; n++) {
        char name[RCOLO_MAX_NAME + 1];

        block = sess->blocks[n];
        rdma_colo_region_name(block->idstr, name, sizeof(name));
        if (rcolo_region_add(sess->rs, n, name, block->colo_cache,
                             block->used_length, qemu_target_page_size(),
                             &err) < 0) {
            error_setg(errp, "rdma-colo: COLO cache of %s: %s", block->idstr,
                       err.message);
            return false;
        }
        trace_rdma_colo_region(block->idstr, name, n, block->used_length);
    }
    /* Pairs with the multifd threads' load: blocks[] is filled first. */
    qatomic_store_release(&sess->nblocks, count);
    if (rcolo_regions_publish(sess->rs, &err) < 0) {
        error_setg(errp, "rdma-colo: %s", err.message);
        return false;
    }
    return true;
}

/* Called before colo_release_ram_cache() frees the cache. */
void rdma_colo_cache_unregister(void)
{
    RdmaColoSession *sess = rdma_colo_incoming_session();

    if (!sess) {
        return;
    }
    /* A late RDMA WRITE into a deregistered region fails the source. */
    rcolo_session_shutdown(sess->rs);
    for (unsigned i = 0; i < sess->nblocks; i++) {
        /*
         * -EBUSY: a receive thread is decoding a descriptor of it; shut
         * down, it leaves at once.  The cache is freed after this.
         */
        while (rcolo_region_remove(sess->rs, i) == -EBUSY) {
            g_usleep(1000);
        }
    }
    qatomic_set(&sess->nblocks, 0);
}
