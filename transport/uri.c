/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * rdma-colo:HOST:PORT[?key=value&...] parsing.  Strict: every part is
 * checked and the first problem is reported by name.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define SCHEME "rdma-colo:"

/*
 * Copy @text for an error message with every token= value replaced by
 * "***": errors end up in logs and in QEMU's query-migrate.
 */
static void redact(const char *text, char *out, size_t size)
{
    size_t o = 0;
    const char *q = strchr(text, '?');
    const char *p = text;

    while (*p && o + 1 < size) {
        bool opt_start = q && p > q && (p[-1] == '?' || p[-1] == '&');

        if (opt_start && !strncmp(p, "token=", 6)) {
            int n = snprintf(out + o, size - o, "token=***");
            o += (size_t)n < size - o ? (size_t)n : size - o - 1;
            p += 6 + strcspn(p + 6, "&");
            continue;
        }
        out[o++] = *p++;
    }
    out[o] = '\0';
}

static int uri_fail(struct rcolo_error *err, const char *text, const char *what)
{
    char shown[84];

    /* The reason first: a long URI must not push it out of the message. */
    redact(text, shown, sizeof(shown));
    return rcolo_set_error(err, -EINVAL,
                           "invalid rdma-colo URI: %s (in '%.80s%s')", what,
                           shown, strlen(shown) > 80 ? "..." : "");
}

/* A loopback address literal (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104), or
 * "localhost", whose resolved addresses rcolo_path_resolve checks too.  A
 * name that merely starts like one ("127.x.example") is not. */
bool rcolo_host_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;

    if (!strcmp(host, "localhost")) {
        return true;
    }
    if (inet_pton(AF_INET, host, &a4) == 1) {
        return (ntohl(a4.s_addr) >> 24) == 127;
    }
    if (inet_pton(AF_INET6, host, &a6) == 1) {
        return IN6_IS_ADDR_LOOPBACK(&a6) ||
               (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    }
    return false;
}

bool rcolo_sockaddr_is_loopback(const struct sockaddr *sa)
{
    if (sa && sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa && sa->sa_family == AF_INET6) {
        const struct in6_addr *a =
            &((const struct sockaddr_in6 *)sa)->sin6_addr;

        return IN6_IS_ADDR_LOOPBACK(a) ||
               (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

bool rcolo_uri_needs_loopback(const struct rcolo_uri *uri)
{
    return !(uri->flags & RCOLO_URI_INSECURE) &&
           strlen(uri->token) < RCOLO_MIN_TOKEN;
}

static bool parse_uint(const char *s, size_t len, unsigned long min,
                       unsigned long max, unsigned *out)
{
    unsigned long v = 0;

    if (len == 0 || len > 10) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return false;
        }
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v < min || v > max) {
        return false;
    }
    *out = (unsigned)v;
    return true;
}

static bool token_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '~' ||
           c == '-';
}

static bool host_char_ok(char c)
{
    return token_char_ok(c);
}

/*
 * The options: one parser each, which returns NULL or what is wrong with
 * the value (in @msg, or a constant).  Given twice is refused by the loop.
 */
typedef const char *(*opt_parser)(const char *val, size_t len,
                                  struct rcolo_uri *uri, char *msg,
                                  size_t size);

/* A name of [A-Za-z0-9._-] (no '~'), 1..@max characters, into @out. */
static bool copy_name(const char *val, size_t len, size_t max, char *out)
{
    if (len == 0 || len > max) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if (!token_char_ok(val[i]) || val[i] == '~') {
            return false;
        }
    }
    memcpy(out, val, len);
    out[len] = '\0';
    return true;
}

static const char *opt_channels(const char *val, size_t len,
                                struct rcolo_uri *uri, char *msg, size_t size)
{
    if (parse_uint(val, len, 1, RCOLO_MAX_CHANNELS, &uri->channels)) {
        return NULL;
    }
    snprintf(msg, size, "channels must be given once, 1..%d",
             RCOLO_MAX_CHANNELS);
    return msg;
}

static const char *opt_depth(const char *val, size_t len, struct rcolo_uri *uri,
                             char *msg, size_t size)
{
    if (parse_uint(val, len, 2, RCOLO_MAX_DEPTH, &uri->depth)) {
        return NULL;
    }
    snprintf(msg, size, "depth must be given once, 2..%d", RCOLO_MAX_DEPTH);
    return msg;
}

static const char *opt_timeout(const char *val, size_t len,
                               struct rcolo_uri *uri, char *msg, size_t size)
{
    if (parse_uint(val, len, RCOLO_MIN_TIMEOUT_MS, RCOLO_MAX_TIMEOUT_MS,
                   &uri->timeout_ms)) {
        return NULL;
    }
    snprintf(msg, size, "timeout must be given once, %d..%d ms",
             RCOLO_MIN_TIMEOUT_MS, RCOLO_MAX_TIMEOUT_MS);
    return msg;
}

static const char *opt_token(const char *val, size_t len, struct rcolo_uri *uri,
                             char *msg, size_t size)
{
    if (len == 0 || len > RCOLO_MAX_TOKEN) {
        snprintf(msg, size, "token must be given once, 1..%d characters",
                 RCOLO_MAX_TOKEN);
        return msg;
    }
    for (size_t i = 0; i < len; i++) {
        if (!token_char_ok(val[i])) {
            return "token may only contain A-Z a-z 0-9 . _ ~ -";
        }
    }
    memcpy(uri->token, val, len);
    uri->token[len] = '\0';
    return NULL;
}

static const char *opt_secret(const char *val, size_t len,
                              struct rcolo_uri *uri, char *msg, size_t size)
{
    if (len == 0 || len > RCOLO_MAX_SECRET_ID ||
        !((val[0] >= 'a' && val[0] <= 'z') ||
          (val[0] >= 'A' && val[0] <= 'Z'))) {
        snprintf(msg, size,
                 "secret must be given once, an object id of 1..%d "
                 "characters starting with a letter",
                 RCOLO_MAX_SECRET_ID);
        return msg;
    }
    if (!copy_name(val, len, RCOLO_MAX_SECRET_ID, uri->secret_id)) {
        return "secret may only contain A-Z a-z 0-9 . _ -";
    }
    return NULL;
}

static const char *opt_insecure(const char *val, size_t len,
                                struct rcolo_uri *uri, char *msg, size_t size)
{
    if (len == 2 && !memcmp(val, "on", 2)) {
        uri->flags |= RCOLO_URI_INSECURE;
        return NULL;
    }
    return len == 3 && !memcmp(val, "off", 3)
               ? NULL
               : "insecure must be given once, on or off";
}

static const char *opt_source(const char *val, size_t len,
                              struct rcolo_uri *uri, char *msg, size_t size)
{
    char addr[sizeof(uri->source)];
    unsigned char bin[sizeof(struct in6_addr)];

    if (len == 0 || len >= sizeof(addr)) {
        return "source must be given once";
    }
    memcpy(addr, val, len);
    addr[len] = '\0';
    if (inet_pton(AF_INET, addr, bin) != 1 &&
        inet_pton(AF_INET6, addr, bin) != 1) {
        return "source must be a numeric IPv4 or IPv6 address (no brackets)";
    }
    memcpy(uri->source, addr, len + 1);
    return NULL;
}

static const char *opt_device(const char *val, size_t len,
                              struct rcolo_uri *uri, char *msg, size_t size)
{
    if (len == 0 || len > RCOLO_MAX_DEVICE_NAME) {
        snprintf(msg, size,
                 "device must be given once, an RDMA device name of 1..%d "
                 "characters",
                 RCOLO_MAX_DEVICE_NAME);
        return msg;
    }
    if (!copy_name(val, len, RCOLO_MAX_DEVICE_NAME, uri->device)) {
        return "device may only contain A-Z a-z 0-9 . _ -";
    }
    return NULL;
}

static const char *opt_ib_port(const char *val, size_t len,
                               struct rcolo_uri *uri, char *msg, size_t size)
{
    return parse_uint(val, len, 1, 255, &uri->ib_port)
               ? NULL
               : "ib-port must be given once, 1..255";
}

static const char *opt_gid_index(const char *val, size_t len,
                                 struct rcolo_uri *uri, char *msg, size_t size)
{
    if (!parse_uint(val, len, 0, 255, &uri->gid_index)) {
        return "gid-index must be given once, 0..255";
    }
    uri->flags |= RCOLO_URI_GID_INDEX;
    return NULL;
}

static const char *opt_tos(const char *val, size_t len, struct rcolo_uri *uri,
                           char *msg, size_t size)
{
    if (!parse_uint(val, len, 0, 255, &uri->tos)) {
        return "tos must be given once, 0..255";
    }
    uri->flags |= RCOLO_URI_TOS;
    return NULL;
}

static const char *opt_ack_timeout(const char *val, size_t len,
                                   struct rcolo_uri *uri, char *msg,
                                   size_t size)
{
    if (parse_uint(val, len, 1, RCOLO_MAX_ACK_TIMEOUT, &uri->ack_timeout)) {
        return NULL;
    }
    snprintf(msg, size,
             "ack-timeout must be given once, 1..%d (4.096 us * 2^N)",
             RCOLO_MAX_ACK_TIMEOUT);
    return msg;
}

static const char *opt_retry_count(const char *val, size_t len,
                                   struct rcolo_uri *uri, char *msg,
                                   size_t size)
{
    return parse_uint(val, len, 1, 7, &uri->retry_count)
               ? NULL
               : "retry-count must be given once, 1..7";
}

/* In alphabetical order: the order error messages list them in. */
static const struct {
    const char *name;
    unsigned bit; /* RCOLO_URI_OPT_* */
    opt_parser parse;
} options[] = {
    {"ack-timeout", RCOLO_URI_OPT_ACK_TIMEOUT, opt_ack_timeout},
    {"channels", RCOLO_URI_OPT_CHANNELS, opt_channels},
    {"depth", RCOLO_URI_OPT_DEPTH, opt_depth},
    {"device", RCOLO_URI_OPT_DEVICE, opt_device},
    {"gid-index", RCOLO_URI_OPT_GID_INDEX, opt_gid_index},
    {"ib-port", RCOLO_URI_OPT_IB_PORT, opt_ib_port},
    {"insecure", RCOLO_URI_OPT_INSECURE, opt_insecure},
    {"retry-count", RCOLO_URI_OPT_RETRY_COUNT, opt_retry_count},
    {"secret", RCOLO_URI_OPT_SECRET, opt_secret},
    {"source", RCOLO_URI_OPT_SOURCE, opt_source},
    {"timeout", RCOLO_URI_OPT_TIMEOUT, opt_timeout},
    {"token", RCOLO_URI_OPT_TOKEN, opt_token},
    {"tos", RCOLO_URI_OPT_TOS, opt_tos},
};

#define NOPTIONS (sizeof(options) / sizeof(options[0]))

unsigned rcolo_uri_option(const char *name, size_t len)
{
    for (size_t i = 0; i < NOPTIONS; i++) {
        if (strlen(options[i].name) == len &&
            !memcmp(options[i].name, name, len)) {
            return options[i].bit;
        }
    }
    return 0;
}

int rcolo_uri_option_names(unsigned exclude, char *buf, size_t size)
{
    size_t n = 0;

    if (size) {
        buf[0] = '\0';
    }
    for (size_t i = 0; i < NOPTIONS; i++) {
        if (options[i].bit & exclude) {
            continue;
        }
        int w = snprintf(buf + (n < size ? n : size), n < size ? size - n : 0,
                         "%s%s", n ? ", " : "", options[i].name);
        n += (size_t)w;
    }
    return n < size ? (int)n : -ENOSPC;
}

static int parse_options(const char *text, const char *opts,
                         struct rcolo_uri *uri, struct rcolo_error *err)
{
    char msg[200];
    unsigned seen = 0;
    const char *p = opts;

    while (*p) {
        const char *end = strchr(p, '&');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        if (!eq) {
            snprintf(msg, sizeof(msg), "option '%.*s' has no value", (int)len,
                     p);
            return uri_fail(err, text, msg);
        }
        size_t klen = (size_t)(eq - p);
        unsigned bit = rcolo_uri_option(p, klen);
        size_t i = 0;

        while (i < NOPTIONS && options[i].bit != bit) {
            i++;
        }
        if (i == NOPTIONS) {
            char known[160];

            rcolo_uri_option_names(0, known, sizeof(known));
            snprintf(msg, sizeof(msg), "unknown option '%.*s' (known: %s)",
                     (int)klen, p, known);
            return uri_fail(err, text, msg);
        }
        /* Given twice: every parser refuses an empty value with the
         * message that says "must be given once". */
        const char *why = (seen & bit)
                              ? options[i].parse("", 0, uri, msg, sizeof(msg))
                              : options[i].parse(eq + 1, len - klen - 1, uri,
                                                 msg, sizeof(msg));
        if (why) {
            return uri_fail(err, text, why);
        }
        seen |= bit;
        if (!end) {
            break;
        }
        p = end + 1;
        if (!*p) {
            return uri_fail(err, text, "trailing '&'");
        }
    }
    if ((seen & RCOLO_URI_OPT_TOKEN) && (seen & RCOLO_URI_OPT_SECRET)) {
        return uri_fail(err, text, "give token= or secret=, not both");
    }
    if ((seen & RCOLO_URI_OPT_SOURCE) && (seen & RCOLO_URI_OPT_GID_INDEX)) {
        return uri_fail(err, text,
                        "give source= or gid-index=, not both (a GID "
                        "holds its address)");
    }
    return 0;
}

int rcolo_uri_parse(const char *text, struct rcolo_uri *uri,
                    struct rcolo_error *err)
{
    const char *p, *host, *host_end, *port, *port_end;
    unsigned port_num;
    char msg[64];

    if (!text || !uri) {
        return rcolo_set_error(err, -EINVAL, "invalid rdma-colo URI: NULL");
    }
    memset(uri, 0, sizeof(*uri));
    uri->channels = 4;
    uri->depth = 64;
    uri->timeout_ms = RCOLO_DEFAULT_TIMEOUT_MS;

    if (strncmp(text, SCHEME, strlen(SCHEME)) != 0) {
        return uri_fail(err, text, "must start with 'rdma-colo:'");
    }
    p = text + strlen(SCHEME);

    if (!strncmp(p, "//", 2)) {
        /* rdma-colo://HOST:PORT, as a URL: say so, not "bad host". */
        return uri_fail(err, text,
                        "HOST:PORT follows 'rdma-colo:' directly, without "
                        "'//'");
    }
    if (*p == '[') {
        host = p + 1;
        host_end = strchr(host, ']');
        if (!host_end) {
            return uri_fail(err, text, "IPv6 address lacks ']'");
        }
        if (host_end == host) {
            return uri_fail(err, text, "empty IPv6 address");
        }
        for (const char *c = host; c < host_end; c++) {
            /* hex digits, ':', '.', and a %zone of interface characters */
            if (!(token_char_ok(*c) || *c == ':' || *c == '%')) {
                return uri_fail(err, text, "bad character in IPv6 address");
            }
        }
        if (!memchr(host, ':', (size_t)(host_end - host))) {
            return uri_fail(err, text, "brackets are for IPv6 addresses");
        }
        p = host_end + 1;
        if (*p != ':') {
            return uri_fail(err, text, "expected ':PORT' after ']'");
        }
    } else {
        host = p;
        host_end = strchr(p, ':');
        if (!host_end) {
            return uri_fail(err, text, "expected HOST:PORT");
        }
        if (host_end == host) {
            return uri_fail(err, text, "empty host");
        }
        for (const char *c = host; c < host_end; c++) {
            if (!host_char_ok(*c)) {
                snprintf(msg, sizeof(msg), "bad character '%c' in host", *c);
                return uri_fail(err, text, msg);
            }
        }
        /* fe80::1:4444 splits at the first ':': name the real mistake. */
        if (memchr(host_end + 1, ':', strcspn(host_end + 1, "?"))) {
            return uri_fail(err, text,
                            "an IPv6 address goes in brackets: "
                            "rdma-colo:[ADDRESS]:PORT");
        }
        p = host_end;
    }
    if ((size_t)(host_end - host) >= sizeof(uri->host)) {
        return uri_fail(err, text, "host name too long");
    }
    memcpy(uri->host, host, (size_t)(host_end - host));

    port = p + 1;
    port_end = port + strcspn(port, "?");
    if (!parse_uint(port, (size_t)(port_end - port), 0, 65535, &port_num)) {
        return uri_fail(err, text, "port must be a number 0..65535");
    }
    snprintf(uri->port, sizeof(uri->port), "%u", port_num);

    if (*port_end == '?') {
        if (!port_end[1]) {
            return uri_fail(err, text, "empty option list after '?'");
        }
        return parse_options(text, port_end + 1, uri, err);
    }
    return 0;
}

int rcolo_uri_format(const struct rcolo_uri *uri, char *buf, size_t size)
{
    bool v6 = strchr(uri->host, ':') != NULL;
    /* timeout= only when it is not the default: an address without it
     * formats back to itself. */
    int n = snprintf(buf, size, SCHEME "%s%s%s:%s?channels=%u&depth=%u",
                     v6 ? "[" : "", uri->host, v6 ? "]" : "", uri->port,
                     uri->channels, uri->depth);

    if (n >= 0 && (size_t)n < size &&
        uri->timeout_ms != RCOLO_DEFAULT_TIMEOUT_MS) {
        n +=
            snprintf(buf + n, size - (size_t)n, "&timeout=%u", uri->timeout_ms);
    }
    if (n >= 0 && (size_t)n < size && uri->secret_id[0]) {
        n += snprintf(buf + n, size - (size_t)n, "&secret=%s", uri->secret_id);
    }
    if (n >= 0 && (size_t)n < size && (uri->flags & RCOLO_URI_INSECURE)) {
        n += snprintf(buf + n, size - (size_t)n, "&insecure=on");
    }
    if (n >= 0 && (size_t)n < size && uri->source[0]) {
        n += snprintf(buf + n, size - (size_t)n, "&source=%s", uri->source);
    }
    if (n >= 0 && (size_t)n < size && uri->device[0]) {
        n += snprintf(buf + n, size - (size_t)n, "&device=%s", uri->device);
    }
    if (n >= 0 && (size_t)n < size && uri->ib_port) {
        n += snprintf(buf + n, size - (size_t)n, "&ib-port=%u", uri->ib_port);
    }
    if (n >= 0 && (size_t)n < size && (uri->flags & RCOLO_URI_GID_INDEX)) {
        n += snprintf(buf + n, size - (size_t)n, "&gid-index=%u",
                      uri->gid_index);
    }
    if (n >= 0 && (size_t)n < size && (uri->flags & RCOLO_URI_TOS)) {
        n += snprintf(buf + n, size - (size_t)n, "&tos=%u", uri->tos);
    }
    if (n >= 0 && (size_t)n < size && uri->ack_timeout) {
        n += snprintf(buf + n, size - (size_t)n, "&ack-timeout=%u",
                      uri->ack_timeout);
    }
    if (n >= 0 && (size_t)n < size && uri->retry_count) {
        n += snprintf(buf + n, size - (size_t)n, "&retry-count=%u",
                      uri->retry_count);
    }

    if (n < 0 || (size_t)n >= size) {
        return -ENOSPC;
    }
    return n;
}

int rcolo_uri_check_auth(const struct rcolo_uri *uri, enum rcolo_role role,
                         struct rcolo_error *err)
{
    if (uri->secret_id[0] && !uri->token[0]) {
        return rcolo_set_error(err, -EINVAL,
                               "secret=%s: the application must resolve the "
                               "secret into the token (QEMU: -object "
                               "secret,id=%s); this one did not",
                               uri->secret_id, uri->secret_id);
    }
    if (!rcolo_uri_needs_loopback(uri) || rcolo_host_is_loopback(uri->host)) {
        return 0;
    }
    if (uri->token[0]) {
        /* Never the token itself: its length only. */
        return rcolo_set_error(
            err, -EACCES,
            "the token has %zu characters; off loopback (%s) it needs at "
            "least %d: one recorded handshake lets anyone try short tokens "
            "offline (use a secret file of 32 random bytes, base64; or "
            "insecure=on to accept that)",
            strlen(uri->token), uri->host, RCOLO_MIN_TOKEN);
    }
    switch (role) {
    case RCOLO_SECONDARY:
        return rcolo_set_error(
            err, -EACCES,
            "refusing to listen on %s without a token: whoever reaches the "
            "port could write into the COLO cache (give token= or secret=, "
            "or insecure=on to accept that)",
            uri->host);
    case RCOLO_PRIMARY:
        return rcolo_set_error(
            err, -EACCES,
            "refusing to connect to %s without a token: any host at that "
            "address would receive guest memory (give token= or secret=, or "
            "insecure=on to accept that)",
            uri->host);
    }
    return rcolo_set_error(err, -EACCES,
                           "refusing a session with %s without a token: the "
                           "peer could not be authenticated (give token= or "
                           "secret=, or insecure=on to accept that)",
                           uri->host);
}
