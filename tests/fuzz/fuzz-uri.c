/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzz target: the URI parser (uri.c), fed arbitrary text.  An accepted URI
 * formats back to text that parses to the same fields (the token is left
 * out of the text by design); a refused one has a message, and the message
 * never contains the value of a token= option.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "rdma-colo.h"

#define TOKEN_CHARS                                                            \
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-"

/* The value of the first token= option (after '?' or '&'), if any. */
static size_t token_value(const char *text, const char **val)
{
    const char *q = strchr(text, '?');

    for (const char *p = q; p && *p; p++) {
        if ((*p == '?' || *p == '&') && !strncmp(p + 1, "token=", 6)) {
            *val = p + 7;
            return strcspn(p + 7, "&");
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    struct rcolo_uri u, v;
    struct rcolo_error err = {0};
    char buf[600];

    memcpy(text, data, size);
    text[size] = '\0';
    if (rcolo_uri_parse(text, &u, &err) == 0) {
        FUZZ_CHECK(u.channels >= 1 && u.channels <= RCOLO_MAX_CHANNELS);
        FUZZ_CHECK(u.depth >= 2 && u.depth <= RCOLO_MAX_DEPTH);
        FUZZ_CHECK(strlen(u.token) <= RCOLO_MAX_TOKEN);
        FUZZ_CHECK(!(u.token[0] && u.secret_id[0]));
        FUZZ_CHECK(rcolo_uri_format(&u, buf, sizeof(buf)) > 0);
        FUZZ_CHECK(!u.token[0] || !strstr(buf, "token="));
        FUZZ_CHECK(rcolo_uri_parse(buf, &v, &err) == 0);
        FUZZ_CHECK(!strcmp(u.host, v.host) && !strcmp(u.port, v.port));
        FUZZ_CHECK(u.channels == v.channels && u.depth == v.depth);
        FUZZ_CHECK(u.timeout_ms == v.timeout_ms && u.flags == v.flags);
        FUZZ_CHECK(!strcmp(u.secret_id, v.secret_id));
        /* The fabric path and the QP timing survive formatting too. */
        FUZZ_CHECK(!strcmp(u.source, v.source) && !strcmp(u.device, v.device));
        FUZZ_CHECK(u.ib_port == v.ib_port && u.gid_index == v.gid_index &&
                   u.tos == v.tos);
        FUZZ_CHECK(u.ack_timeout == v.ack_timeout &&
                   u.retry_count == v.retry_count);
        FUZZ_CHECK(u.ack_timeout <= RCOLO_MAX_ACK_TIMEOUT &&
                   u.retry_count <= 7);
    } else {
        const char *val = NULL;
        size_t n = token_value(text, &val);

        FUZZ_CHECK(err.code == -EINVAL && err.message[0]);
        /* The URI the message quotes never shows a token of 6+ token
         * characters, unless the same characters are elsewhere in the
         * text. */
        /* The quote is the message's last "(in '" (the reason before it
         * may quote the input too, e.g. an unknown option's name). */
        const char *quoted = NULL;
        for (const char *q = err.message; (q = strstr(q, "(in '")); q++) {
            quoted = q;
        }
        const char *end = strrchr(err.message, '\'');
        if (n >= 6 && strspn(val, TOKEN_CHARS) >= n && quoted &&
            end > quoted + 4) {
            char *t = strndup(val, n);
            char *rest = strdup(text);
            char *uri = strndup(quoted + 5, (size_t)(end - quoted - 5));
            size_t ulen = strlen(uri);

            /* A long URI is cut at 80 characters and ends in "...". */
            if (ulen > 80 && !strcmp(uri + ulen - 3, "...")) {
                uri[ulen - 3] = '\0';
            }

            memset(rest + (val - text), '*', n);
            /* Not where the message's own marks could make it up: the
             * "..." of a cut URI, or text the input repeats elsewhere. */
            if (!strstr(rest, t) && !strstr(t, "...")) {
                FUZZ_CHECK(!strstr(uri, t));
            }
            free(uri);
            free(rest);
            free(t);
        }
    }
    free(text);
    return 0;
}
