/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The fabric path: which local address, RDMA device, port, GID and traffic
 * class a session's connections use.
 *
 * rdma_cm picks the device, port and GID from the route between two IP
 * addresses, so the path is chosen the way rdma_cm users choose it (rping
 * -I, ib_write_bw -R with a bind address): by the source address, given
 * directly (source=) or as the address a GID holds (gid-index=).  device=
 * and ib-port= do not steer the route, they check it: a connection that
 * would leave through another NIC fails with the NIC it would have used,
 * instead of replicating over the wrong network.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* "rxe0, mlx5_0": the devices this host has, for errors. */
static void device_names(char *buf, size_t size)
{
    int num = 0;
    struct ibv_device **list = ibv_get_device_list(&num);
    size_t o = 0;

    buf[0] = '\0';
    for (int i = 0; list && i < num && o < size; i++) {
        int n = snprintf(buf + o, size - o, "%s%s", i ? ", " : "",
                         ibv_get_device_name(list[i]));
        o += n > 0 ? (size_t)n : 0;
    }
    if (list) {
        ibv_free_device_list(list);
    }
    if (!buf[0]) {
        snprintf(buf, size, "none");
    }
}

/* Open device @name, or the only device if @name is "".  NULL with @err
 * filled if there is no such device (or several and no name). */
static struct ibv_context *open_device(const char *name,
                                       struct rcolo_error *err)
{
    int num = 0;
    struct ibv_device **list = ibv_get_device_list(&num);
    struct ibv_context *ctx = NULL;
    char names[256];
    int pick = -1;

    for (int i = 0; list && i < num; i++) {
        if (name[0] ? !strcmp(ibv_get_device_name(list[i]), name) : num == 1) {
            pick = i;
        }
    }
    if (pick >= 0) {
        ctx = ibv_open_device(list[pick]);
        if (!ctx) {
            rcolo_set_error(err, -errno, "cannot open RDMA device %s: %s",
                            ibv_get_device_name(list[pick]), strerror(errno));
        }
    }
    if (list) {
        ibv_free_device_list(list);
    }
    if (pick < 0) {
        device_names(names, sizeof(names));
        if (name[0]) {
            rcolo_set_error(err, -ENODEV,
                            "no RDMA device '%s' on this host (device=; it "
                            "has: %s)",
                            name, names);
        } else {
            rcolo_set_error(err, -EINVAL,
                            "gid-index= needs device= on a host with "
                            "several RDMA devices (it has: %s)",
                            names);
        }
    }
    return ctx;
}

int rcolo_path_check_options(const struct rcolo_uri *uri, enum rcolo_role role,
                             struct rcolo_error *err)
{
    struct ibv_context *ctx;

    if (role == RCOLO_SECONDARY &&
        (uri->source[0] ||
         (uri->flags & (RCOLO_URI_GID_INDEX | RCOLO_URI_TOS)))) {
        return rcolo_set_error(err, -EINVAL,
                               "source=, gid-index= and tos= choose the "
                               "primary's path (the secondary answers on "
                               "it): give them to the primary; the "
                               "secondary listens on HOST");
    }
    if (!uri->device[0]) {
        return 0;
    }
    ctx = open_device(uri->device, err);
    if (!ctx) {
        return err ? err->code : -ENODEV;
    }
    if (uri->ib_port) {
        struct ibv_device_attr attr;
        int ret = ibv_query_device(ctx, &attr);

        if (ret == 0 && uri->ib_port > attr.phys_port_cnt) {
            ibv_close_device(ctx);
            return rcolo_set_error(err, -ENODEV,
                                   "RDMA device %s has no port %u (ib-port=; "
                                   "it has %u)",
                                   uri->device, uri->ib_port,
                                   attr.phys_port_cnt);
        }
    }
    ibv_close_device(ctx);
    return 0;
}

static int gid_source(const struct rcolo_uri *uri, int family,
                      struct sockaddr_storage *src, struct rcolo_error *err)
{
    unsigned port = uri->ib_port ? uri->ib_port : 1;
    struct ibv_context *ctx = open_device(uri->device, err);
    struct ibv_gid_entry entry;
    static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0,    0,
                                          0, 0, 0, 0, 0xff, 0xff};
    const char *dev;
    char shown[INET6_ADDRSTRLEN];
    int ret;

    if (!ctx) {
        return err ? err->code : -ENODEV;
    }
    dev = ibv_get_device_name(ctx->device);
    memset(&entry, 0, sizeof(entry));
    ret = ibv_query_gid_ex(ctx, port, uri->gid_index, &entry, 0);
    if (ret) {
        ibv_close_device(ctx);
        return rcolo_set_error(err, -ENODEV,
                               "RDMA device %s port %u has no GID at index "
                               "%u (gid-index=): %s",
                               dev, port, uri->gid_index, strerror(ret));
    }
    ibv_close_device(ctx);
    if (entry.gid_type == IBV_GID_TYPE_IB) {
        return rcolo_set_error(err, -EINVAL,
                               "gid-index= picks a RoCE GID; %s port %u is "
                               "InfiniBand: give its IPoIB address as "
                               "source=",
                               dev, port);
    }
    memset(src, 0, sizeof(*src));
    if (!memcmp(entry.gid.raw, v4_mapped, sizeof(v4_mapped))) {
        struct sockaddr_in *sin = (struct sockaddr_in *)src;

        sin->sin_family = AF_INET;
        memcpy(&sin->sin_addr, entry.gid.raw + 12, 4);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)src;

        sin6->sin6_family = AF_INET6;
        memcpy(&sin6->sin6_addr, entry.gid.raw, 16);
        if (IN6_IS_ADDR_LINKLOCAL(&sin6->sin6_addr)) {
            sin6->sin6_scope_id = entry.ndev_ifindex;
        }
    }
    if (src->ss_family != family) {
        inet_ntop(AF_INET6, entry.gid.raw, shown, sizeof(shown));
        return rcolo_set_error(err, -EINVAL,
                               "GID %u of %s port %u holds %s, an %s "
                               "address; the secondary's is %s (gid-index= "
                               "of the other family's GID)",
                               uri->gid_index, dev, port, shown,
                               src->ss_family == AF_INET ? "IPv4" : "IPv6",
                               family == AF_INET ? "IPv4" : "IPv6");
    }
    return 1;
}

int rcolo_path_source(const struct rcolo_uri *uri, int family,
                      struct sockaddr_storage *src, struct rcolo_error *err)
{
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST};
    struct addrinfo *ai;
    int ret;

    if (uri->flags & RCOLO_URI_GID_INDEX) {
        return gid_source(uri, family, src, err);
    }
    if (!uri->source[0]) {
        return 0;
    }
    ret = getaddrinfo(uri->source, NULL, &hints, &ai);
    if (ret) {
        return rcolo_set_error(err, -EINVAL, "source=%s: %s", uri->source,
                               gai_strerror(ret));
    }
    if (ai->ai_family != family) {
        freeaddrinfo(ai);
        return rcolo_set_error(err, -EINVAL,
                               "source=%s is an %s address; the secondary's "
                               "is %s",
                               uri->source, family == AF_INET ? "IPv6" : "IPv4",
                               family == AF_INET ? "IPv4" : "IPv6");
    }
    memset(src, 0, sizeof(*src));
    memcpy(src, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    return 1;
}

int rcolo_path_check_id(const struct rcolo_uri *uri, enum rcolo_role role,
                        struct rdma_cm_id *id, const char *route,
                        struct rcolo_error *err)
{
    const char *dev = ibv_get_device_name(id->verbs->device);
    /* What moves the path: the primary's source, the secondary's HOST. */
    const char *hint = role == RCOLO_SECONDARY
                           ? "listen on an address of that device"
                           : "choose it with source= or gid-index=";

    if (uri->device[0] && strcmp(dev, uri->device)) {
        return rcolo_set_error(err, -EXDEV,
                               "%s goes through RDMA device %s port %u, not "
                               "device=%s (the path follows the IP route: "
                               "%s)",
                               route, dev, id->port_num, uri->device, hint);
    }
    if (uri->ib_port && id->port_num != uri->ib_port) {
        return rcolo_set_error(err, -EXDEV,
                               "%s goes through port %u of RDMA device %s, "
                               "not ib-port=%u",
                               route, id->port_num, dev, uri->ib_port);
    }
    return 0;
}

int rcolo_path_check_qp(const struct rcolo_uri *uri, struct rdma_cm_id *id,
                        struct rcolo_error *err)
{
    struct ibv_qp_attr attr;
    struct ibv_qp_init_attr init;

    if (!(uri->flags & RCOLO_URI_GID_INDEX) || !id->qp) {
        return 0;
    }
    if (ibv_query_qp(id->qp, &attr, IBV_QP_AV, &init)) {
        return rcolo_set_error(err, -errno, "cannot query the QP: %s",
                               strerror(errno));
    }
    if (attr.ah_attr.grh.sgid_index != uri->gid_index) {
        return rcolo_set_error(err, -EXDEV,
                               "the connection uses GID %u, not gid-index=%u "
                               "(a GID of the same address but another RoCE "
                               "version? rdma_cm uses the port's default "
                               "RoCE mode, see cma_roce_mode)",
                               attr.ah_attr.grh.sgid_index, uri->gid_index);
    }
    return 0;
}

static void sockaddr_str(struct sockaddr *sa, char *buf, size_t size)
{
    const void *addr =
        sa->sa_family == AF_INET6
            ? (const void *)&((struct sockaddr_in6 *)sa)->sin6_addr
            : (const void *)&((struct sockaddr_in *)sa)->sin_addr;

    if (!inet_ntop(sa->sa_family, addr, buf, (socklen_t)size)) {
        snprintf(buf, size, "?");
    }
}

int rcolo_session_get_path(struct rcolo_session *s, struct rcolo_path *out)
{
    struct ibv_qp_attr attr;
    struct ibv_qp_init_attr init;
    struct rdma_cm_id *id;
    int ret = 0;

    if (!s || !out) {
        return -EINVAL;
    }
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&s->core.lock);
    id = s->ctl.established ? s->ctl.id : NULL;
    if (!id || !id->qp) {
        ret = -ENOTCONN;
    } else if (ibv_query_qp(id->qp, &attr, IBV_QP_AV | IBV_QP_PATH_MTU,
                            &init)) {
        ret = -errno;
    } else {
        snprintf(out->device, sizeof(out->device), "%s",
                 ibv_get_device_name(id->verbs->device));
        out->port = id->port_num;
        out->gid_index = attr.ah_attr.grh.sgid_index;
        out->traffic_class = attr.ah_attr.grh.traffic_class;
        out->mtu = 128u << attr.path_mtu; /* IBV_MTU_256 is 1 */
        sockaddr_str(rdma_get_local_addr(id), out->local, sizeof(out->local));
        sockaddr_str(rdma_get_peer_addr(id), out->remote, sizeof(out->remote));
    }
    pthread_mutex_unlock(&s->core.lock);
    return ret;
}

int rcolo_path_resolve(const struct rcolo_uri *uri, bool passive,
                       struct rdma_addrinfo **res, struct rcolo_error *err)
{
    struct rdma_addrinfo hints = {.ai_port_space = RDMA_PS_TCP};

    if (passive) {
        hints.ai_flags = RAI_PASSIVE;
    }
    if (rdma_getaddrinfo(uri->host, uri->port, &hints, res)) {
        return rcolo_set_error(err, -EADDRNOTAVAIL,
                               "cannot resolve %s port %s: %s", uri->host,
                               uri->port, strerror(errno));
    }
    /* Without a token that authenticates (rcolo_uri_check_auth let the
     * name pass as loopback), what it resolved to must be loopback too. */
    for (struct rdma_addrinfo *ai = *res; ai && rcolo_uri_needs_loopback(uri);
         ai = ai->ai_next) {
        const struct sockaddr *sa = passive ? ai->ai_src_addr : ai->ai_dst_addr;

        if (!rcolo_sockaddr_is_loopback(sa)) {
            char shown[INET6_ADDRSTRLEN + 8];

            sockaddr_str((struct sockaddr *)sa, shown, sizeof(shown));
            rdma_freeaddrinfo(*res);
            *res = NULL;
            return rcolo_set_error(err, -EACCES,
                                   "%s resolved to %s, not a loopback "
                                   "address: a token of at least %d "
                                   "characters is needed there",
                                   uri->host, shown, RCOLO_MIN_TOKEN);
        }
    }
    return 0;
}
