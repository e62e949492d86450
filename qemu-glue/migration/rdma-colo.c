/*
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * rdma-colo: COLO migration over RDMA (librdmacolo) - the address, and
 * the set-up of both sides
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "io/task.h"
#include "qemu/cutils.h"
#include "qemu/yank.h"
#include "crypto/secret_common.h"
#include "system/memory.h"
#include "channel.h"
#include "migration.h"
#include "options.h"
#include "qemu-file.h"
#include "rdma-colo.h"
#include "rdma-colo-channel.h"
#include "trace.h"

/* -------------------------------------------------------- addresses */

/* The token is copied only where it is needed, and wiped after use. */
static void rdma_colo_forget_uri(struct rcolo_uri *uri)
{
    explicit_bzero(uri->token, sizeof(uri->token));
}

/* The QAPI copy of the token, once the session has its own. */
static void rdma_colo_forget_addr_token(RdmaColoAddress *addr)
{
    if (addr->token) {
        explicit_bzero(addr->token, strlen(addr->token));
    }
}

/*
 * Overwrite the token= values of @text with '*', in place.  The text of
 * -incoming is QEMU's argv: its error location quotes it ("-incoming
 * URI: ..."), and /proc/PID/cmdline shows it; a QMP or HMP argument is a
 * string freed without wiping.  (secret= keeps a token off the command
 * line altogether: the user guide's form.)
 */
static void rdma_colo_redact_uri(char *text)
{
    char *q = strchr(text, '?');

    while (q) {
        char *opt = q + 1;

        q = strchr(opt, '&');
        if (g_str_has_prefix(opt, "token=")) {
            char *v = opt + strlen("token=");
            size_t n = q ? (size_t)(q - v) : strlen(v);

            memset(v, '*', n);
        }
    }
}

/*
 * The URI options QEMU takes: the library's but channels= (QEMU's is the
 * multifd-channels parameter, refused here with that reason) and
 * insecure= (QEMU always authenticates, refused after parsing with its
 * reason, and left out of the list of known options).  Only option names
 * are quoted: a value may be the token, and nothing is copied (a copy
 * would have to be wiped, as the token is elsewhere).
 */
#define RDMA_COLO_QEMU_REFUSES (RCOLO_URI_OPT_CHANNELS | RCOLO_URI_OPT_INSECURE)

static bool rdma_colo_check_options(const char *uri, Error **errp)
{
    for (const char *o = strchr(uri, '?'); o; o = strchr(o, '&')) {
        size_t klen = strcspn(++o, "=&");
        unsigned opt = rcolo_uri_option(o, klen);
        char known[256];

        if (opt == RCOLO_URI_OPT_CHANNELS) {
            error_setg(errp, "rdma-colo: the number of data channels is the "
                       "multifd-channels parameter, not a URI option");
            return false;
        }
        if (!opt && klen) { /* the library reports empty ones */
            rcolo_uri_option_names(RDMA_COLO_QEMU_REFUSES, known,
                                   sizeof(known));
            error_setg(errp, "rdma-colo: unknown URI option '%.*s' (known: "
                       "%s)", (int)klen, o, known);
            return false;
        }
    }
    return true;
}

bool rdma_colo_parse_uri(const char *uri_text, RdmaColoAddress *addr,
                         Error **errp)
{
    struct rcolo_uri u;
    struct rcolo_error err;
    /*
     * Parsed from a copy: the caller's text is redacted first, whatever
     * the outcome (QEMU may quote it in the error).
     */
    g_autofree char *uri = g_strdup(uri_text);
    int ret = -EINVAL;

    if (strstr(uri_text, "token=")) {
        rdma_colo_redact_uri((char *)uri_text);
    }
    if (rdma_colo_check_options(uri, errp)) {
        ret = rcolo_uri_parse(uri, &u, &err);
        if (ret < 0) {
            error_setg(errp, "%s", err.message);
        }
    }
    explicit_bzero(uri, strlen(uri));
    if (ret < 0) {
        return false;
    }
    if (u.flags & RCOLO_URI_INSECURE) {
        error_setg(errp, "rdma-colo: QEMU always authenticates the peer: "
                   "give token= or secret=ID (-object secret,id=ID,...)");
        return false;
    }
    addr->host = g_strdup(u.host);
    addr->port = g_strdup(u.port);
    addr->has_depth = true;
    addr->depth = u.depth;
    addr->has_timeout = true;
    addr->timeout = u.timeout_ms;
    if (u.token[0]) {
        addr->token = g_strdup(u.token);
    }
    if (u.secret_id[0]) {
        addr->secret = g_strdup(u.secret_id);
    }
    if (u.source[0]) {
        addr->source = g_strdup(u.source);
    }
    if (u.device[0]) {
        addr->device = g_strdup(u.device);
    }
    addr->has_ib_port = u.ib_port != 0;
    addr->ib_port = u.ib_port;
    addr->has_gid_index = u.flags & RCOLO_URI_GID_INDEX;
    addr->gid_index = u.gid_index;
    addr->has_tos = u.flags & RCOLO_URI_TOS;
    addr->tos = u.tos;
    addr->has_ack_timeout = u.ack_timeout != 0;
    addr->ack_timeout = u.ack_timeout;
    addr->has_retry_count = u.retry_count != 0;
    addr->retry_count = u.retry_count;
    rdma_colo_forget_uri(&u);
    return true;
}

/* secret=ID: the token is the secret object's (UTF-8, no NUL) content. */
static bool rdma_colo_resolve_secret(struct rcolo_uri *uri, Error **errp)
{
    g_autofree char *data = NULL;
    size_t len;

    if (!uri->secret_id[0]) {
        return true;
    }
    data = qcrypto_secret_lookup_as_utf8(uri->secret_id, errp);
    if (!data) {
        return false;
    }
    len = strlen(data);
    if (len == 0 || len > RCOLO_MAX_TOKEN) {
        error_setg(errp, "rdma-colo: secret '%s' must hold 1..%d bytes",
                   uri->secret_id, RCOLO_MAX_TOKEN);
    } else {
        memcpy(uri->token, data, len + 1);
    }
    explicit_bzero(data, len);
    return len && len <= RCOLO_MAX_TOKEN;
}

/* Both address forms go through the library's one URI validator. */
static bool rdma_colo_addr_to_uri(RdmaColoAddress *addr, unsigned channels,
                                  struct rcolo_uri *uri, Error **errp)
{
    struct rcolo_error err;
    g_autofree char *text = NULL;
    g_autoptr(GString) opts = g_string_new("");
    bool v6 = strchr(addr->host, ':') && addr->host[0] != '[';
    static const char token_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                      "abcdefghijklmnopqrstuvwxyz"
                                      "0123456789._~-";

    /* Nothing of the QAPI form may smuggle in URI syntax. */
    if (strpbrk(addr->host, "?&=/") || strpbrk(addr->port, "?&=/") ||
        (addr->source && strpbrk(addr->source, "?&=/")) ||
        (addr->token && addr->token[strspn(addr->token, token_chars)]) ||
        (addr->secret && addr->secret[strspn(addr->secret, token_chars)]) ||
        (addr->device && addr->device[strspn(addr->device, token_chars)])) {
        error_setg(errp, "rdma-colo: invalid address: host, port and source "
                   "must not contain '?&=/', the token, secret id and "
                   "device only [A-Za-z0-9._~-]");
        return false;
    }
    if (addr->token && addr->secret) {
        error_setg(errp, "rdma-colo: give token or secret, not both");
        return false;
    }
    /* The options without the token first: it is copied once, then wiped. */
    if (addr->secret) {
        g_string_append_printf(opts, "&secret=%s", addr->secret);
    }
    if (addr->has_depth) {
        g_string_append_printf(opts, "&depth=%u", addr->depth);
    }
    if (addr->has_timeout) {
        g_string_append_printf(opts, "&timeout=%u", addr->timeout);
    }
    if (addr->source) {
        g_string_append_printf(opts, "&source=%s", addr->source);
    }
    if (addr->has_gid_index) {
        g_string_append_printf(opts, "&gid-index=%u", addr->gid_index);
    }
    if (addr->has_tos) {
        g_string_append_printf(opts, "&tos=%u", addr->tos);
    }
    if (addr->device) {
        g_string_append_printf(opts, "&device=%s", addr->device);
    }
    if (addr->has_ib_port) {
        g_string_append_printf(opts, "&ib-port=%u", addr->ib_port);
    }
    if (addr->has_ack_timeout) {
        g_string_append_printf(opts, "&ack-timeout=%u", addr->ack_timeout);
    }
    if (addr->has_retry_count) {
        g_string_append_printf(opts, "&retry-count=%u", addr->retry_count);
    }
    text = g_strdup_printf("rdma-colo:%s%s%s:%s?channels=%u%s%s%s",
                           v6 ? "[" : "", addr->host, v6 ? "]" : "",
                           addr->port, channels, opts->str,
                           addr->token ? "&token=" : "",
                           addr->token ? addr->token : "");
    if (rcolo_uri_parse(text, uri, &err) < 0) {
        /*
         * The library's message is "invalid rdma-colo URI: REASON (in
         * 'URI')", and that URI is the one built here, which the user of
         * this form never typed: keep the reason only.
         */
        const char *reason = err.message;
        const char *in = strstr(reason, " (in '");

        if (g_str_has_prefix(reason, "invalid rdma-colo URI: ")) {
            reason += strlen("invalid rdma-colo URI: ");
        }
        error_setg(errp, "rdma-colo: invalid address (host '%s', port "
                   "'%s'): %.*s", addr->host, addr->port,
                   in && in > reason ? (int)(in - reason) : (int)strlen(reason),
                   reason);
        explicit_bzero(text, strlen(text));
        return false;
    }
    explicit_bzero(text, strlen(text));
    return rdma_colo_resolve_secret(uri, errp);
}

static unsigned rdma_colo_data_channels(void)
{
    return migrate_multifd() ? migrate_multifd_channels() : 1;
}

bool rdma_colo_caps_check(bool *caps, Error **errp)
{
    static const MigrationCapability unsupported[] = {
        MIGRATION_CAPABILITY_POSTCOPY_RAM,  MIGRATION_CAPABILITY_XBZRLE,
        MIGRATION_CAPABILITY_MAPPED_RAM,    MIGRATION_CAPABILITY_ZERO_COPY_SEND,
        MIGRATION_CAPABILITY_RDMA_PIN_ALL,
    };

    for (int i = 0; i < ARRAY_SIZE(unsupported); i++) {
        if (caps[unsupported[i]]) {
            error_setg(errp, "rdma-colo: capability %s is not supported",
                       MigrationCapability_str(unsupported[i]));
            return false;
        }
    }
    if (migrate_multifd_compression() != MULTIFD_COMPRESSION_NONE) {
        error_setg(errp, "rdma-colo: multifd compression is not supported: "
                   "pages are written directly into the peer's memory");
        return false;
    }
    if (migrate_tls()) {
        error_setg(errp, "rdma-colo: TLS is not supported");
        return false;
    }
    return true;
}

/*
 * Before migrate or migrate-incoming changes any state: the capabilities,
 * and an address that can be authenticated (its secret resolves; a token
 * off loopback).  A failed migrate-incoming cannot be retried.
 */
bool rdma_colo_check(RdmaColoAddress *addr, Error **errp)
{
    struct rcolo_uri uri;
    struct rcolo_error err;
    bool ok;

    if (!rdma_colo_caps_check(migrate_get_current()->capabilities, errp) ||
        !rdma_colo_addr_to_uri(addr, 1, &uri, errp)) {
        return false;
    }
    ok = rcolo_uri_check_auth(&uri, 0, &err) == 0;
    if (!ok && uri.token[0]) {
        /*
         * Too short for this host: the library says so (never the
         * token, its length).
         */
        error_setg(errp, "rdma-colo: %s", err.message);
    } else if (!ok) {
        error_setg(errp, "rdma-colo: a token is needed to reach %s: give "
                   "secret=ID (with -object secret,id=ID,file=...) or token=",
                   addr->host);
    }
    rdma_colo_forget_uri(&uri);
    return ok;
}

static bool rdma_colo_require_colo(Error **errp)
{
    if (!migrate_colo()) {
        error_setg(errp, "rdma-colo: this transport is for COLO only: "
                   "enable the x-colo capability on both sides");
        return false;
    }
    return true;
}

/* ------------------------------------------------------------ incoming */

/*
 * The primary's control connection is accepted on a worker thread, not on
 * the first stream bytes: the source may wait (in a multifd sync) for the
 * destination's multifd threads before it flushes the stream.
 */
static void rdma_colo_accept_worker(QIOTask *task, gpointer opaque)
{
    QIOChannelRdmaColo *rioc = QIO_CHANNEL_RDMA_COLO(qio_task_get_source(task));
    struct rcolo_error err;
    Error *local_err = NULL;

    if (rcolo_accept(rioc->sess->rs, -1, &err) < 0) {
        error_setg(&local_err, "rdma-colo: %s", err.message);
        qio_task_set_error(task, local_err);
    }
}

/*
 * Yank while the destination waits for its primary (a primary stopped in
 * the middle of the handshake, say): migration registers its own yank only
 * once the channel is processed.
 */
static void rdma_colo_yank_accept(void *opaque)
{
    RdmaColoSession *sess = opaque;

    rcolo_session_shutdown(sess->rs);
}

static void rdma_colo_incoming_accepted(QIOTask *task, gpointer opaque)
{
    QIOChannel *ioc = QIO_CHANNEL(qio_task_get_source(task));
    RdmaColoSession *sess = QIO_CHANNEL_RDMA_COLO(ioc)->sess;
    MigrationIncomingState *mis = migration_incoming_get_current();
    Error *local_err = NULL;
    unsigned channels;

    yank_unregister_function(MIGRATION_YANK_INSTANCE, rdma_colo_yank_accept,
                             sess);

    if (qio_task_propagate_error(task, &local_err) ||
        !rdma_colo_require_colo(&local_err) ||
        !rdma_colo_caps_check(migrate_get_current()->capabilities,
                              &local_err)) {
        goto fail;
    }
    channels = rcolo_session_channels(sess->rs);
    if (!migrate_multifd() && channels > 1) {
        error_setg(&local_err, "rdma-colo: the source uses %u multifd "
                   "channels, multifd is off here", channels);
        goto fail;
    }
    if (migrate_multifd() && channels != migrate_multifd_channels()) {
        error_setg(&local_err,
                   "rdma-colo: the source uses %u multifd channels, this "
                   "side expects %u (multifd-channels must match)",
                   channels, migrate_multifd_channels());
        goto fail;
    }
    trace_rdma_colo_accepted(channels);

    migration_channel_process_incoming(ioc);
    /* The data channels are accepted by their own multifd threads. */
    for (unsigned i = 0; migrate_multifd() && i < channels; i++) {
        g_autoptr(QIOChannelRdmaColo) data = rdma_colo_channel_new(sess, i);

        qio_channel_set_name(QIO_CHANNEL(data), "migration-rdma-colo-data");
        migration_channel_process_incoming(QIO_CHANNEL(data));
    }
    return;

fail:
    rcolo_session_shutdown(sess->rs);
    migrate_set_error(migrate_get_current(), local_err);
    error_report_err(local_err);
    migrate_set_state(&mis->state, mis->state, MIGRATION_STATUS_FAILED);
    if (mis->exit_on_error) {
        exit(EXIT_FAILURE);
    }
}

void rdma_colo_start_incoming_migration(RdmaColoAddress *addr, Error **errp)
{
    g_autoptr(QIOChannelRdmaColo) rioc = NULL;
    struct rcolo_session *rs = NULL;
    struct rcolo_uri uri;
    struct rcolo_error err;
    RdmaColoSession *sess;
    QIOTask *task;

    if (ram_block_discard_is_required()) {
        error_setg(errp, "rdma-colo: cannot disable RAM discard");
        return;
    }
    if (!rdma_colo_addr_to_uri(addr, 1, &uri, errp)) {
        return;
    }
    rdma_colo_forget_addr_token(addr);
    if (rcolo_listen(&uri, &rs, &err) < 0) {
        rdma_colo_forget_uri(&uri);
        error_setg(errp, "%s", err.message);
        rcolo_session_destroy(rs);
        return;
    }
    rdma_colo_forget_uri(&uri);
    trace_rdma_colo_listen(uri.host, rcolo_session_port(rs));

    sess = rdma_colo_session_new(rs, RCOLO_SECONDARY);
    rioc = rdma_colo_channel_new(sess, -1);
    rdma_colo_session_unref(sess);
    /* rioc keeps sess alive until rdma_colo_incoming_accepted. */
    yank_register_function(MIGRATION_YANK_INSTANCE, rdma_colo_yank_accept,
                           sess);
    qio_channel_set_name(QIO_CHANNEL(rioc), "migration-rdma-colo-incoming");
    task = qio_task_new(OBJECT(rioc), rdma_colo_incoming_accepted, NULL, NULL);
    qio_task_run_in_thread(task, rdma_colo_accept_worker, NULL, NULL, NULL);
}

/* ------------------------------------------------------------ outgoing */

typedef struct {
    struct rcolo_uri uri;
    char *host;
} RdmaColoConnect;

static void rdma_colo_connect_free(gpointer opaque)
{
    RdmaColoConnect *c = opaque;

    rdma_colo_forget_uri(&c->uri);
    g_free(c->host);
    g_free(c);
}

static void rdma_colo_connect_worker(QIOTask *task, gpointer opaque)
{
    QIOChannelRdmaColo *rioc = QIO_CHANNEL_RDMA_COLO(qio_task_get_source(task));
    RdmaColoConnect *c = opaque;
    struct rcolo_session *rs = NULL;
    struct rcolo_error err;
    Error *local_err = NULL;

    /*
     * Guest RAM is pinned (registered) for RDMA WRITEs on first use: a page
     * a balloon or free page reporting discarded would be replaced behind
     * the registration, and the source would write stale data.
     */
    if (ram_block_discard_disable(true)) {
        error_setg(&local_err, "rdma-colo: cannot disable RAM discard (a "
                   "device relies on it); the source's RAM must stay pinned");
        qio_task_set_error(task, local_err);
        return;
    }
    if (rcolo_connect(&c->uri, RDMA_COLO_CONNECT_TIMEOUT_MS, &rs, &err) < 0) {
        ram_block_discard_disable(false);
        rcolo_session_destroy(rs);
        error_setg(&local_err, "%s", err.message);
        qio_task_set_error(task, local_err);
        return;
    }
    rioc->sess = rdma_colo_session_new(rs, RCOLO_PRIMARY);
    rioc->sess->discard_disabled = true;
    trace_rdma_colo_connected(c->uri.host, c->uri.port,
                              rcolo_session_channels(rs));
}

static void rdma_colo_outgoing_connected(QIOTask *task, gpointer opaque)
{
    QIOChannel *ioc = QIO_CHANNEL(qio_task_get_source(task));
    RdmaColoConnect *c = opaque;
    Error *err = NULL;

    qio_task_propagate_error(task, &err);
    migration_channel_connect(migrate_get_current(), ioc, c->host, err);
}

void rdma_colo_start_outgoing_migration(MigrationState *s,
                                        RdmaColoAddress *addr, Error **errp)
{
    g_autoptr(QIOChannelRdmaColo) rioc = NULL;
    RdmaColoConnect *c;
    QIOTask *task;

    if (!rdma_colo_require_colo(errp) ||
        !rdma_colo_caps_check(s->capabilities, errp)) {
        return;
    }
    /* The source's RAM is registered (pinned) on first use. */
    if (ram_block_discard_is_required()) {
        error_setg(errp, "rdma-colo: cannot disable RAM discard");
        return;
    }
    c = g_new0(RdmaColoConnect, 1);
    if (!rdma_colo_addr_to_uri(addr, rdma_colo_data_channels(), &c->uri,
                               errp)) {
        rdma_colo_connect_free(c);
        return;
    }
    rdma_colo_forget_addr_token(addr);
    c->host = g_strdup(addr->host);

    /* The session is attached by the worker once connected. */
    rioc = rdma_colo_channel_new(NULL, -1);
    qio_channel_set_name(QIO_CHANNEL(rioc), "migration-rdma-colo-outgoing");

    task = qio_task_new(OBJECT(rioc), rdma_colo_outgoing_connected, c,
                        rdma_colo_connect_free);
    qio_task_run_in_thread(task, rdma_colo_connect_worker, c, NULL, NULL);
}
