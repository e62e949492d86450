/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Memory regions: registration (pin-all, or on-demand paging when the
 * device supports it), the secondary's region table, the primary's match
 * of its regions against it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static void probe_odp(struct rcolo_session *s)
{
    struct ibv_device_attr_ex attr;

    if (s->odp >= 0) {
        return;
    }
    s->odp = 0;
    if (ibv_query_device_ex(s->verbs, NULL, &attr) == 0 &&
        (attr.odp_caps.general_caps & IBV_ODP_SUPPORT) &&
        (attr.odp_caps.per_transport_caps.rc_odp_caps &
         IBV_ODP_SUPPORT_WRITE)) {
        s->odp = 1;
    }
}

int rcolo_region_register(struct rcolo_session *s, struct rcolo_region *r,
                          struct rcolo_error *err)
{
    struct ibv_mr *mr;
    int access;

    probe_odp(s);
    /*
     * The secondary's cache is a write target; it is never readable from
     * the wire (no IBV_ACCESS_REMOTE_READ).  The primary's pages are only
     * a local source of RDMA WRITEs.
     */
    access = s->role == RCOLO_SECONDARY
                 ? IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE
                 : 0;
    if (s->odp == 1) {
        access |= IBV_ACCESS_ON_DEMAND | IBV_ACCESS_LOCAL_WRITE;
    }
    mr = ibv_reg_mr(s->pd, r->addr, r->length, access);
    /* Atomic: rcolo_session_get_stats reads it under core.lock, which the
     * registration of a table added before the PD existed does not hold. */
    __atomic_store_n(&r->mr, mr, __ATOMIC_RELEASE);
    if (!mr) {
        char what[RCOLO_MAX_NAME + 32];
        snprintf(what, sizeof(what), "region %u '%s'", r->id, r->name);
        return rcolo_reg_mr_error(err, errno, r->length, what);
    }
    return 0;
}

int rcolo_regions_register_all(struct rcolo_session *s, struct rcolo_error *err)
{
    GHashTableIter it;
    gpointer value;

    g_hash_table_iter_init(&it, s->regions);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        struct rcolo_region *r = value;
        if (!r->mr) {
            int ret = rcolo_region_register(s, r, err);
            if (ret) {
                return ret;
            }
        }
    }
    return 0;
}

/*
 * The session's PD on @verbs, the device of its first connection (or of
 * the secondary's listen address), and every region registered on it; a
 * later connection must come on the same device.  The device's async
 * events are read by the session thread without blocking.
 */
int rcolo_regions_attach(struct rcolo_session *s, struct ibv_context *verbs,
                         struct rcolo_error *err)
{
    if (s->pd) {
        if (verbs != s->verbs) {
            return rcolo_set_error(err, -EXDEV,
                                   "connection arrived on RDMA device %s, "
                                   "but the session uses %s",
                                   ibv_get_device_name(verbs->device),
                                   ibv_get_device_name(s->verbs->device));
        }
        return 0;
    }
    s->verbs = verbs;
    s->pd = ibv_alloc_pd(verbs);
    if (!s->pd) {
        return rcolo_set_error(err, -errno, "cannot allocate PD on %s: %s",
                               ibv_get_device_name(verbs->device),
                               strerror(errno));
    }
    fcntl(verbs->async_fd, F_SETFL,
          fcntl(verbs->async_fd, F_GETFL) | O_NONBLOCK);
    return rcolo_regions_register_all(s, err);
}

void rcolo_region_free(gpointer p)
{
    struct rcolo_region *r = p;

    if (r->mr) {
        ibv_dereg_mr(r->mr);
    }
    g_free(r);
}

static const struct rcolo_region_entry *find_remote(struct rcolo_session *s,
                                                    uint32_t id)
{
    for (int i = 0; i < s->nremote; i++) {
        if (s->remote[i].id == id) {
            return &s->remote[i];
        }
    }
    return NULL;
}

int rcolo_region_add(struct rcolo_session *s, uint32_t id, const char *name,
                     void *addr, uint64_t length, uint32_t page_size,
                     struct rcolo_error *err)
{
    struct rcolo_region *r;
    int ret;

    if (!name) {
        name = "";
    }
    if (page_size < 4096 || (page_size & (page_size - 1))) {
        return rcolo_set_error(err, -EINVAL,
                               "region %u: page size %u is not a power of "
                               "two >= 4096",
                               id, page_size);
    }
    if (length == 0 || (length & (page_size - 1)) || ((uintptr_t)addr & 4095)) {
        return rcolo_set_error(err, -EINVAL,
                               "region %u: length %llu must be a non-zero "
                               "multiple of the page size %u and the address "
                               "4 KiB aligned",
                               id, (unsigned long long)length, page_size);
    }
    if (strlen(name) > RCOLO_MAX_NAME) {
        return rcolo_set_error(err, -EINVAL,
                               "region %u: name longer than %d bytes", id,
                               RCOLO_MAX_NAME);
    }
    pthread_mutex_lock(&s->core.lock);
    if (g_hash_table_contains(s->regions, GUINT_TO_POINTER(id))) {
        pthread_mutex_unlock(&s->core.lock);
        return rcolo_set_error(err, -EEXIST, "region %u already added", id);
    }
    if (g_hash_table_size(s->regions) >= RCOLO_MAX_REGIONS) {
        pthread_mutex_unlock(&s->core.lock);
        return rcolo_set_error(err, -ENOSPC, "more than %d regions",
                               RCOLO_MAX_REGIONS);
    }
    r = g_new0(struct rcolo_region, 1);
    r->id = id;
    g_strlcpy(r->name, name, sizeof(r->name));
    r->addr = addr;
    r->length = length;
    r->page_size = page_size;

    if (s->role == RCOLO_PRIMARY) {
        const struct rcolo_region_entry *e = find_remote(s, id);
        if (!e) {
            ret = rcolo_set_error(err, -ENOENT,
                                  "region %u '%s': the secondary has no such "
                                  "region",
                                  id, name);
            goto fail;
        }
        if (e->length != length || e->page_size != page_size ||
            strcmp(e->name, name) != 0) {
            ret = rcolo_set_error(
                err, -EINVAL,
                "region %u: local '%s' (%llu bytes, %u-byte pages) does not "
                "match the secondary's '%s' (%llu bytes, %u-byte pages)",
                id, name, (unsigned long long)length, page_size, e->name,
                (unsigned long long)e->length, e->page_size);
            goto fail;
        }
        r->remote_addr = e->addr;
        r->rkey = e->rkey;
    }
    if (s->pd) {
        /*
         * Registering pins a whole RAMBlock: seconds for a large guest.  Do
         * it without the session lock, which the session thread and
         * shutdown need meanwhile.  The PD, once there, stays; the ODP probe
         * runs here, under the lock, so that the unlocked part only reads.
         */
        probe_odp(s);
        pthread_mutex_unlock(&s->core.lock);
        ret = rcolo_region_register(s, r, err);
        pthread_mutex_lock(&s->core.lock);
        if (ret) {
            goto fail;
        }
        if (g_hash_table_contains(s->regions, GUINT_TO_POINTER(id)) ||
            g_hash_table_size(s->regions) >= RCOLO_MAX_REGIONS) {
            /* Another thread added it (or filled the table) meanwhile. */
            ret = rcolo_set_error(err, -EEXIST,
                                  "region %u already added, or more than %d "
                                  "regions",
                                  id, RCOLO_MAX_REGIONS);
            goto fail;
        }
    }
    g_hash_table_insert(s->regions, GUINT_TO_POINTER(id), r);
    pthread_mutex_unlock(&s->core.lock);
    return 0;

fail:
    pthread_mutex_unlock(&s->core.lock);
    if (r->mr) {
        ibv_dereg_mr(r->mr);
    }
    g_free(r);
    return ret;
}

int rcolo_region_remove(struct rcolo_session *s, uint32_t id)
{
    bool found;

    pthread_mutex_lock(&s->core.lock);
    /* rcolo_chan_region: clear every cache, then look for a channel using
     * one (a primary's writer, a secondary's receive thread decoding a
     * descriptor); one that starts later finds no cache and waits for the
     * lock. */
    for (unsigned i = 0; i < RCOLO_MAX_CHANNELS; i++) {
        if (s->chan[i]) {
            __atomic_store_n(&s->chan[i]->region_cache, NULL, __ATOMIC_SEQ_CST);
        }
    }
    for (unsigned i = 0; i < RCOLO_MAX_CHANNELS; i++) {
        if (s->chan[i] &&
            __atomic_load_n(&s->chan[i]->region_busy, __ATOMIC_SEQ_CST)) {
            pthread_mutex_unlock(&s->core.lock);
            return -EBUSY;
        }
    }
    found = g_hash_table_remove(s->regions, GUINT_TO_POINTER(id));
    pthread_mutex_unlock(&s->core.lock);
    return found ? 0 : -ENOENT;
}

int rcolo_region_lookup(struct rcolo_session *s, const char *name, uint32_t *id,
                        uint64_t *length, uint32_t *page_size)
{
    int ret = -ENOENT;

    pthread_mutex_lock(&s->core.lock);
    for (int i = 0; i < s->nremote; i++) {
        if (strcmp(s->remote[i].name, name) == 0) {
            *id = s->remote[i].id;
            *length = s->remote[i].length;
            *page_size = s->remote[i].page_size;
            ret = 0;
            break;
        }
    }
    pthread_mutex_unlock(&s->core.lock);
    return ret;
}

int rcolo_region_table_build_locked(struct rcolo_session *s, uint8_t *buf,
                                    size_t size, size_t *len)
{
    guint count = g_hash_table_size(s->regions);
    struct rcolo_region_entry *e =
        g_new0(struct rcolo_region_entry, count ? count : 1);
    GHashTableIter it;
    gpointer value;
    uint32_t n = 0;

    g_hash_table_iter_init(&it, s->regions);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        struct rcolo_region *r = value;
        if (!r->mr) {
            continue;
        }
        e[n].id = r->id;
        e[n].page_size = r->page_size;
        e[n].length = r->length;
        e[n].addr = (uintptr_t)r->addr;
        e[n].rkey = r->mr->rkey;
        g_strlcpy(e[n].name, r->name, sizeof(e[n].name));
        n++;
    }
    *len = rcolo_region_table_encode(buf, size, e, n);
    g_free(e);
    return *len ? 0 : -EMSGSIZE;
}

struct rcolo_region *rcolo_region_find_locked(struct rcolo_session *s,
                                              uint32_t id)
{
    struct rcolo_region *r =
        g_hash_table_lookup(s->regions, GUINT_TO_POINTER(id));

    return r && r->mr ? r : NULL;
}

void rcolo_region_table_set_locked(struct rcolo_session *s,
                                   struct rcolo_region_entry *table, int n)
{
    g_free(s->remote);
    s->remote = table;
    s->nremote = n;
    pthread_cond_broadcast(&s->core.cond);
}

struct remote_wait {
    struct rcolo_session *s;
    uint32_t id;
};

static bool remote_known(void *arg)
{
    struct remote_wait *w = arg;

    return find_remote(w->s, w->id) != NULL;
}

int rcolo_region_wait(struct rcolo_session *s, uint32_t id, int timeout_ms,
                      struct rcolo_error *err)
{
    struct remote_wait w = {.s = s, .id = id};
    int ret;

    pthread_mutex_lock(&s->core.lock);
    ret = rcolo_wait_locked(&s->core, remote_known, &w,
                            rcolo_deadline(timeout_ms));
    if (ret == -ETIMEDOUT) {
        rcolo_set_error(err, ret,
                        "the secondary did not advertise region %u within %d "
                        "ms",
                        id, timeout_ms);
    } else if (ret) {
        rcolo_set_error(err, ret, "%s", s->core.error);
    }
    pthread_mutex_unlock(&s->core.lock);
    return ret;
}
