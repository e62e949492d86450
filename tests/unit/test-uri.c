/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * URI parsing: every accepted form yields the right fields; every bad form
 * is refused with a message that names the problem.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "rdma-colo.h"

static void good(const char *text, const char *host, const char *port,
                 unsigned channels, unsigned depth, const char *token)
{
    struct rcolo_uri u;
    struct rcolo_error err = {0};

    assert_int_equal(rcolo_uri_parse(text, &u, &err), 0);
    assert_string_equal(u.host, host);
    assert_string_equal(u.port, port);
    assert_int_equal(u.channels, channels);
    assert_int_equal(u.depth, depth);
    assert_string_equal(u.token, token);
}

static void bad(const char *text, const char *needle)
{
    struct rcolo_uri u;
    struct rcolo_error err = {0};

    assert_int_equal(rcolo_uri_parse(text, &u, &err), -EINVAL);
    assert_int_equal(err.code, -EINVAL);
    if (!strstr(err.message, needle)) {
        fail_msg("'%s': message '%s' lacks '%s'", text, err.message, needle);
    }
}

static void test_ipv4_and_defaults(void **state)
{
    good("rdma-colo:192.0.2.1:4444", "192.0.2.1", "4444", 4, 64, "");
}

static void test_hostname(void **state)
{
    good("rdma-colo:node-2.cluster.example:1", "node-2.cluster.example", "1", 4,
         64, "");
}

static void test_ipv6(void **state)
{
    good("rdma-colo:[fe80::1%ib0]:4444", "fe80::1%ib0", "4444", 4, 64, "");
    good("rdma-colo:[::1]:7", "::1", "7", 4, 64, "");
}

static void test_options(void **state)
{
    good("rdma-colo:h:1?channels=8&depth=128&token=abc.DEF_1~-", "h", "1", 8,
         128, "abc.DEF_1~-");
    good("rdma-colo:h:0?token=x", "h", "0", 4, 64, "x");
    good("rdma-colo:h:65535?channels=64&depth=1024", "h", "65535", 64, 1024,
         "");
}

static void test_bad_scheme_and_shape(void **state)
{
    bad(NULL, "NULL");
    bad("rdma:h:1", "must start with 'rdma-colo:'");
    bad("rdma-colo:", "expected HOST:PORT");
    bad("rdma-colo:h", "expected HOST:PORT");
    bad("rdma-colo::1", "empty host");
    bad("rdma-colo:fe80::1:4444",
        "an IPv6 address goes in brackets: rdma-colo:[ADDRESS]:PORT");
    bad("rdma-colo:fe80::1:4444?token=t", "goes in brackets");
    bad("rdma-colo://127.0.0.1:9998",
        "HOST:PORT follows 'rdma-colo:' directly, without '//'");
    bad("rdma-colo:h/x:1", "bad character '/' in host");
    bad("rdma-colo:[fe80::1:4444", "lacks ']'");
    bad("rdma-colo:[]:1", "empty IPv6");
    bad("rdma-colo:[host]:1", "brackets are for IPv6");
    bad("rdma-colo:[::1]4444", "expected ':PORT'");
    bad("rdma-colo:h o:1", "bad character ' ' in host");
}

static void test_bad_port(void **state)
{
    bad("rdma-colo:h:", "port must be");
    bad("rdma-colo:h:65536", "port must be");
    bad("rdma-colo:h:-1", "port must be");
    bad("rdma-colo:h:12a", "port must be");
    bad("rdma-colo:h:99999999999", "port must be");
}

static void test_bad_options(void **state)
{
    bad("rdma-colo:h:1?", "empty option list");
    bad("rdma-colo:h:1?channels", "has no value");
    bad("rdma-colo:h:1?channels=0", "channels must be");
    bad("rdma-colo:h:1?channels=65", "channels must be");
    bad("rdma-colo:h:1?channels=2&channels=2", "channels must be");
    bad("rdma-colo:h:1?depth=1", "depth must be");
    bad("rdma-colo:h:1?depth=1025", "depth must be");
    bad("rdma-colo:h:1?token=", "token must be");
    bad("rdma-colo:h:1?token=a b", "token may only");
    bad("rdma-colo:h:1?token=a/b", "token may only");
    bad("rdma-colo:h:1?colour=blue", "unknown option 'colour'");
    bad("rdma-colo:h:1?channels=2&", "trailing '&'");
    bad("rdma-colo:h:1?timeout=99", "timeout must be");
    bad("rdma-colo:h:1?timeout=3600001", "timeout must be");
    bad("rdma-colo:h:1?timeout=1000&timeout=1000", "timeout must be");
    bad("rdma-colo:h:1?timeout=1s", "timeout must be");
}

/* The fabric path options: parsed, formatted back, and each bad value
 * refused with a message naming it. */
static void test_fabric_path(void **state)
{
    struct rcolo_uri u, v;
    char buf[300];

    assert_int_equal(rcolo_uri_parse("rdma-colo:h:1", &u, NULL), 0);
    assert_string_equal(u.source, "");
    assert_string_equal(u.device, "");
    assert_int_equal(u.ib_port, 0);
    assert_int_equal(u.flags & (RCOLO_URI_GID_INDEX | RCOLO_URI_TOS), 0);
    assert_int_equal(
        rcolo_uri_parse("rdma-colo:h:1?source=10.0.0.2&device=mlx5_1&"
                        "ib-port=2&tos=106",
                        &u, NULL),
        0);
    assert_string_equal(u.source, "10.0.0.2");
    assert_string_equal(u.device, "mlx5_1");
    assert_int_equal(u.ib_port, 2);
    assert_true(u.flags & RCOLO_URI_TOS);
    assert_int_equal(u.tos, 106);
    assert_true(rcolo_uri_format(&u, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "rdma-colo:h:1?channels=4&depth=64&"
                             "source=10.0.0.2&device=mlx5_1&ib-port=2&"
                             "tos=106");
    assert_int_equal(rcolo_uri_parse(buf, &v, NULL), 0);
    assert_memory_equal(&u, &v, sizeof(u));
    assert_int_equal(
        rcolo_uri_parse("rdma-colo:[fe80::1]:1?source=fe80::2", &u, NULL), 0);
    assert_string_equal(u.source, "fe80::2");
    /* gid-index=0 is a choice, not the default. */
    assert_int_equal(
        rcolo_uri_parse("rdma-colo:h:1?gid-index=0&tos=0", &u, NULL), 0);
    assert_true(u.flags & RCOLO_URI_GID_INDEX);
    assert_int_equal(u.gid_index, 0);
    assert_true(u.flags & RCOLO_URI_TOS);
    assert_true(rcolo_uri_format(&u, buf, sizeof(buf)) > 0);
    assert_string_equal(buf,
                        "rdma-colo:h:1?channels=4&depth=64&gid-index=0&tos=0");

    bad("rdma-colo:h:1?source=host.example", "source must be a numeric");
    bad("rdma-colo:h:1?source=[::1]", "source must be a numeric");
    bad("rdma-colo:h:1?source=10.0.0.256", "source must be a numeric");
    bad("rdma-colo:h:1?source=", "source must be given once");
    bad("rdma-colo:h:1?source=10.0.0.1&source=10.0.0.1",
        "source must be given once");
    bad("rdma-colo:h:1?device=", "device must be given once");
    bad("rdma-colo:h:1?device=mlx5/0", "device may only contain");
    bad("rdma-colo:h:1?device="
        "a123456789b123456789c123456789d123456789e123456789f123456789abcd",
        "device must be given once");
    bad("rdma-colo:h:1?ib-port=0", "ib-port must be given once, 1..255");
    bad("rdma-colo:h:1?ib-port=256", "ib-port must be");
    bad("rdma-colo:h:1?gid-index=256", "gid-index must be given once, 0..255");
    bad("rdma-colo:h:1?gid-index=-1", "gid-index must be");
    bad("rdma-colo:h:1?gid-index=1&gid-index=1", "gid-index must be");
    bad("rdma-colo:h:1?tos=256", "tos must be given once, 0..255");
    bad("rdma-colo:h:1?tos=0x68", "tos must be");
    bad("rdma-colo:h:1?source=10.0.0.1&gid-index=3",
        "give source= or gid-index=, not both");
    bad("rdma-colo:h:1?port=2", "unknown option 'port' (known: ack-timeout, "
                                "channels, depth, device, gid-index, ib-port");
}

/* QP timing: the ACK timeout exponent and the retry count, with bounds,
 * defaults (0: the library's) and a round trip. */
static void test_qp_timing(void **state)
{
    struct rcolo_uri u;
    char text[512];

    assert_int_equal(rcolo_uri_parse("rdma-colo:h:1", &u, NULL), 0);
    assert_int_equal(u.ack_timeout, 0);
    assert_int_equal(u.retry_count, 0);
    assert_int_equal(
        rcolo_uri_parse("rdma-colo:h:1?ack-timeout=18&retry-count=3", &u, NULL),
        0);
    assert_int_equal(u.ack_timeout, 18);
    assert_int_equal(u.retry_count, 3);
    assert_true(rcolo_uri_format(&u, text, sizeof(text)) > 0);
    assert_non_null(strstr(text, "&ack-timeout=18&retry-count=3"));
    bad("rdma-colo:h:1?ack-timeout=0", "ack-timeout must be given once, 1..31");
    bad("rdma-colo:h:1?ack-timeout=32",
        "ack-timeout must be given once, 1..31");
    bad("rdma-colo:h:1?ack-timeout=14&ack-timeout=14", "ack-timeout must be");
    bad("rdma-colo:h:1?retry-count=0", "retry-count must be given once, 1..7");
    bad("rdma-colo:h:1?retry-count=8", "retry-count must be given once, 1..7");
    printf("QP timing: ack-timeout 1..31 and retry-count 1..7 parsed, "
           "defaulted, formatted back; out of range refused\n");
}

static void test_timeout(void **state)
{
    struct rcolo_uri u;

    assert_int_equal(rcolo_uri_parse("rdma-colo:h:1", &u, NULL), 0);
    assert_int_equal(u.timeout_ms, RCOLO_DEFAULT_TIMEOUT_MS);
    assert_int_equal(rcolo_uri_parse("rdma-colo:h:1?timeout=100", &u, NULL), 0);
    assert_int_equal(u.timeout_ms, 100);
    assert_int_equal(
        rcolo_uri_parse("rdma-colo:h:1?depth=8&timeout=3600000", &u, NULL), 0);
    assert_int_equal(u.timeout_ms, RCOLO_MAX_TIMEOUT_MS);
}

static void test_long_token(void **state)
{
    char text[600] = "rdma-colo:h:1?token=";
    size_t base = strlen(text);
    memset(text + base, 'a', RCOLO_MAX_TOKEN);
    text[base + RCOLO_MAX_TOKEN] = '\0';
    struct rcolo_uri u;
    assert_int_equal(rcolo_uri_parse(text, &u, NULL), 0);
    assert_int_equal(strlen(u.token), RCOLO_MAX_TOKEN);
    strcat(text, "a");
    bad(text, "token must be");
}

static void test_format_roundtrip(void **state)
{
    struct rcolo_uri u, v;
    char buf[300];

    assert_int_equal(
        rcolo_uri_parse("rdma-colo:[::1]:9?channels=3&depth=8&timeout=500", &u,
                        NULL),
        0);
    assert_true(rcolo_uri_format(&u, buf, sizeof(buf)) > 0);
    assert_string_equal(buf,
                        "rdma-colo:[::1]:9?channels=3&depth=8&timeout=500");
    assert_int_equal(rcolo_uri_parse(buf, &v, NULL), 0);
    assert_string_equal(v.host, "::1");
    assert_int_equal(v.timeout_ms, 500);
    /* The default is left out: an address without it formats to itself. */
    assert_int_equal(
        rcolo_uri_parse("rdma-colo:h:1?channels=2&depth=8", &u, NULL), 0);
    assert_true(rcolo_uri_format(&u, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "rdma-colo:h:1?channels=2&depth=8");
    assert_int_equal(rcolo_uri_format(&u, buf, 10), -ENOSPC);
}

static void test_secret_and_insecure(void **state)
{
    struct rcolo_uri u;
    char buf[300];

    assert_int_equal(
        rcolo_uri_parse("rdma-colo:h:1?secret=sec0&insecure=off", &u, NULL), 0);
    assert_string_equal(u.secret_id, "sec0");
    assert_string_equal(u.token, "");
    assert_int_equal(u.flags, 0);
    assert_true(rcolo_uri_format(&u, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "rdma-colo:h:1?channels=4&depth=64&secret=sec0");
    assert_int_equal(rcolo_uri_parse("rdma-colo:h:1?insecure=on", &u, NULL), 0);
    assert_int_equal(u.flags, RCOLO_URI_INSECURE);
    assert_true(rcolo_uri_format(&u, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "rdma-colo:h:1?channels=4&depth=64&insecure=on");

    bad("rdma-colo:h:1?secret=a&token=b", "not both");
    bad("rdma-colo:h:1?token=b&secret=a", "not both");
    bad("rdma-colo:h:1?secret=1abc", "starting with a letter");
    bad("rdma-colo:h:1?secret=", "starting with a letter");
    bad("rdma-colo:h:1?secret=a~b", "secret may only");
    bad("rdma-colo:h:1?secret=a&secret=a", "given once");
    bad("rdma-colo:h:1?secret=a234567890123456789012345678901234567890",
        "1..39");
    bad("rdma-colo:h:1?insecure=yes", "on or off");
    bad("rdma-colo:h:1?insecure=on&insecure=on", "given once");
}

/* The library refuses a session nobody authenticates, before it touches a
 * device (so this runs without RDMA). */
static void test_refuses_no_token(void **state)
{
    struct rcolo_uri u;
    struct rcolo_session *s = (void *)1;
    struct rcolo_error err = {0};

    assert_int_equal(rcolo_uri_parse("rdma-colo:192.0.2.1:9", &u, NULL), 0);
    assert_int_equal(rcolo_listen(&u, &s, &err), -EACCES);
    assert_null(s);
    assert_non_null(strstr(err.message, "refusing to listen on 192.0.2.1"));
    assert_int_equal(rcolo_connect(&u, 0, &s, &err), -EACCES);
    assert_non_null(strstr(err.message, "refusing to connect to 192.0.2.1"));
    printf("refused without a token: %s\n", err.message);
    assert_int_equal(rcolo_uri_check_auth(&u, 0, &err), -EACCES);
    assert_non_null(strstr(err.message, "refusing a session with"));
    u.flags = RCOLO_URI_INSECURE;
    assert_int_equal(rcolo_uri_check_auth(&u, RCOLO_PRIMARY, &err), 0);
    u.flags = 0;
    strcpy(u.token, "0123456789abcdef");
    assert_int_equal(rcolo_uri_check_auth(&u, RCOLO_SECONDARY, &err), 0);

    /* Off loopback a token needs RCOLO_MIN_TOKEN characters; the message
     * gives its length, never the token. */
    strcpy(u.token, "0123456789abcde");
    assert_int_equal(rcolo_uri_check_auth(&u, RCOLO_SECONDARY, &err), -EACCES);
    assert_non_null(strstr(err.message, "has 15 characters"));
    assert_null(strstr(err.message, "0123456789abcde"));
    printf("a short token off loopback: %s\n", err.message);
    u.flags = RCOLO_URI_INSECURE;
    assert_int_equal(rcolo_uri_check_auth(&u, RCOLO_PRIMARY, &err), 0);
    u.flags = 0;

    /* Loopback is judged on the address, not on how the name starts. */
    static const struct {
        const char *host;
        bool loopback;
    } hosts[] = {
        {"127.0.0.1", true},
        {"127.255.3.4", true},
        {"::1", true},
        {"::ffff:127.0.0.2", true},
        {"localhost", true},
        {"127.x.example", false},
        {"127.0.0.1.nip.io", false},
        {"1127.0.0.1", false},
        {"::2", false},
        {"::ffff:10.0.0.1", false},
        {"128.0.0.1", false},
        {"localhost.example", false},
    };
    for (unsigned i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++) {
        struct rcolo_uri h = {0};

        snprintf(h.host, sizeof(h.host), "%s", hosts[i].host);
        assert_int_equal(rcolo_uri_check_auth(&h, RCOLO_PRIMARY, &err),
                         hosts[i].loopback ? 0 : -EACCES);
        strcpy(h.token, "short");
        assert_int_equal(rcolo_uri_check_auth(&h, RCOLO_PRIMARY, &err),
                         hosts[i].loopback ? 0 : -EACCES);
    }
    printf("loopback judged on %zu host names and addresses (127.x.example "
           "is not loopback)\n",
           sizeof(hosts) / sizeof(hosts[0]));

    /* secret= must be resolved by the application first */
    assert_int_equal(
        rcolo_uri_parse("rdma-colo:192.0.2.1:9?secret=s1", &u, NULL), 0);
    assert_int_equal(rcolo_listen(&u, &s, &err), -EINVAL);
    assert_non_null(strstr(err.message, "must resolve"));

    /* loopback and insecure=on pass this check (and fail later, here
     * where there is no device, for another reason) */
    assert_int_equal(rcolo_uri_parse("rdma-colo:127.0.0.1:9", &u, NULL), 0);
    assert_int_not_equal(rcolo_listen(&u, &s, &err), -EACCES);
    rcolo_session_destroy(s);
    assert_int_equal(
        rcolo_uri_parse("rdma-colo:192.0.2.1:9?insecure=on", &u, NULL), 0);
    assert_int_not_equal(rcolo_connect(&u, 0, &s, &err), -EACCES);
    rcolo_session_destroy(s);
}

/* No error message ever contains the token. */
static void test_token_redacted(void **state)
{
    static const char *texts[] = {
        "rdma-colo:h:1?token=Sup3rS3cret&depth=1",
        "rdma-colo:h:1?depth=8&token=Sup3rS3cret&bogus=1",
        "rdma-colo:h:1?token=Sup3rS3cret&token=Sup3rS3cret",
        "rdma-colo:h:1?token=Sup3rS3cret&secret=x",
        "rdma-colo:h:x?token=Sup3rS3cret",
        "rdma-colo:h:1?token=Sup3rS3cret&",
    };

    for (unsigned i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct rcolo_uri u;
        struct rcolo_error err = {0};

        assert_int_equal(rcolo_uri_parse(texts[i], &u, &err), -EINVAL);
        if (strstr(err.message, "Sup3r") || !strstr(err.message, "token=***")) {
            fail_msg("'%s' gave '%s'", texts[i], err.message);
        }
    }
    printf("token redacted in %zu error messages\n",
           sizeof(texts) / sizeof(texts[0]));
}

/* The option table an application shares (rcolo_uri_option*): every name
 * it lists parses as that option, and the unknown-option error lists the
 * same names. */
static void test_option_table(void **state)
{
    char all[256], some[256], text[300];
    struct rcolo_uri u;
    struct rcolo_error err;
    unsigned n = 0, seen = 0;

    assert_true(rcolo_uri_option_names(0, all, sizeof(all)) > 0);
    assert_string_equal(all, "ack-timeout, channels, depth, device, gid-index, "
                             "ib-port, insecure, retry-count, secret, source, "
                             "timeout, token, tos");
    for (char *name = strtok(strcpy(some, all), ", "); name;
         name = strtok(NULL, ", ")) {
        unsigned bit = rcolo_uri_option(name, strlen(name));
        assert_true(bit && !(bit & (bit - 1)) && !(seen & bit));
        seen |= bit;
        n++;
    }
    assert_int_equal(n, 13);
    assert_int_equal(rcolo_uri_option("chan", 4), 0);
    assert_int_equal(rcolo_uri_option("channelsx", 9), 0);
    assert_int_equal(rcolo_uri_option("token=abc", 5), RCOLO_URI_OPT_TOKEN);
    assert_true(
        rcolo_uri_option_names(RCOLO_URI_OPT_CHANNELS | RCOLO_URI_OPT_INSECURE,
                               some, sizeof(some)) > 0);
    assert_string_equal(some, "ack-timeout, depth, device, gid-index, ib-port, "
                              "retry-count, secret, source, timeout, token, "
                              "tos");
    assert_int_equal(rcolo_uri_option_names(0, some, 10), -ENOSPC);
    snprintf(text, sizeof(text), "rdma-colo:10.0.0.1:1?bogus=1");
    assert_int_equal(rcolo_uri_parse(text, &u, &err), -EINVAL);
    assert_non_null(strstr(err.message, all));
    printf("option table: %u options, each its own bit; the unknown-option "
           "error lists the same names\n",
           n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv4_and_defaults),
        cmocka_unit_test(test_hostname),
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_bad_scheme_and_shape),
        cmocka_unit_test(test_bad_port),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_long_token),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_fabric_path),
        cmocka_unit_test(test_format_roundtrip),
        cmocka_unit_test(test_secret_and_insecure),
        cmocka_unit_test(test_refuses_no_token),
        cmocka_unit_test(test_token_redacted),
        cmocka_unit_test(test_option_table),
        cmocka_unit_test(test_qp_timing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
