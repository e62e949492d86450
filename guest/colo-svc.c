/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * colo-svc: the service of the full-stack COLO guest (docs/testing.md,
 * "The full-stack guest").  It runs as PID 1's child in a Linux guest whose
 * disk is replicated by COLO's block replication and whose NIC is compared
 * by colo-compare, so that a client can tell whether a failover lost,
 * repeated or reordered anything.
 *
 * Protocol (TCP, one line each way per request):
 *   client: "<text>\n"                 text: 1..200 printable bytes
 *   server: "<seq> <sum>\n"            after the record is on the disk
 * For each request the server appends the record "<seq> <text>\n" to the
 * log file, fdatasync()s it, and answers; seq counts from 1, and sum is
 * FNV-1a 64 chained over every record's bytes, in hex.  A client that is
 * the only one can compute both itself: any answer it did not expect is a
 * lost, repeated or reordered request.
 *
 * The control port answers one command per connection:
 *   "freeze\n"  close the log, sync, remount the file system read-only,
 *               answer "frozen <seq> <sum>\n" (the disk image is then clean
 *               and final: the harness reads it with e2fsck and debugfs;
 *               requests after it are answered "error frozen")
 *   "state\n"   "state <seq> <sum>\n"
 *
 * At start the log is read back (a guest that booted on an existing disk
 * continues its sequence); a torn last record is an error, not a repair:
 * COLO must never produce one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_TEXT    200
#define MAX_LINE    (MAX_TEXT + 2)
#define MAX_CLIENTS 8

struct client {
    int fd;
    size_t len;
    char buf[MAX_LINE];
};

static struct {
    int debug; /* $COLO_SVC_DEBUG: each request's steps on stderr */
    const char *log_path;
    const char *mount_point;
    int log_fd;
    uint64_t seq;
    uint64_t sum;
    struct client clients[MAX_CLIENTS];
} svc;

static void die(const char *fmt, ...)
{
    va_list ap;

    fputs("colo-svc: error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static uint64_t fnv1a(uint64_t h, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

#define FNV_BASIS 0xcbf29ce484222325ULL

/* Replays the log: every record must be "<seq> <text>\n" with seq in order. */
static void recover(void)
{
    FILE *f = fdopen(dup(svc.log_fd), "r");
    char line[64 + MAX_LINE];

    if (!f) {
        die("fdopen: %s", strerror(errno));
    }
    svc.seq = 0;
    svc.sum = FNV_BASIS;
    while (fgets(line, sizeof(line), f)) {
        size_t n = strlen(line);
        char *end;
        unsigned long long seq = strtoull(line, &end, 10);

        if (n == 0 || line[n - 1] != '\n' || *end != ' ' ||
            seq != svc.seq + 1) {
            die("%s: record %llu is torn or out of order", svc.log_path,
                (unsigned long long)svc.seq + 1);
        }
        svc.seq = seq;
        svc.sum = fnv1a(svc.sum, line, n);
    }
    fclose(f);
}

static int listen_on(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_ANY)};
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
        bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 8)) {
        die("port %d: %s", port, strerror(errno));
    }
    return fd;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);

        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return; /* a client that went away; its close is seen by poll */
        }
        p += w;
        n -= (size_t)w;
    }
}

/* One request: the record on the disk, then the answer. */
static void serve(struct client *c, const char *text, size_t n)
{
    char rec[64 + MAX_LINE];
    char ans[64];
    int len;

    if (svc.log_fd < 0) {
        write_all(c->fd, "error frozen\n", 13);
        return;
    }
    len = snprintf(rec, sizeof(rec), "%llu %.*s\n",
                   (unsigned long long)svc.seq + 1, (int)n, text);
    if (svc.debug) {
        fprintf(stderr, "colo-svc: %llu: write\n",
                (unsigned long long)svc.seq + 1);
    }
    if (write(svc.log_fd, rec, (size_t)len) != len) {
        die("%s: write: %s", svc.log_path, strerror(errno));
    }
    if (svc.debug) {
        fprintf(stderr, "colo-svc: %llu: fdatasync\n",
                (unsigned long long)svc.seq + 1);
    }
    if (fdatasync(svc.log_fd)) {
        die("%s: fdatasync: %s", svc.log_path, strerror(errno));
    }
    if (svc.debug) {
        fprintf(stderr, "colo-svc: %llu: answer\n",
                (unsigned long long)svc.seq + 1);
    }
    svc.seq++;
    svc.sum = fnv1a(svc.sum, rec, (size_t)len);
    len = snprintf(ans, sizeof(ans), "%llu %016llx\n",
                   (unsigned long long)svc.seq, (unsigned long long)svc.sum);
    write_all(c->fd, ans, (size_t)len);
}

static int text_ok(const char *p, size_t n)
{
    if (n == 0 || n > MAX_TEXT) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (p[i] < 0x20 || p[i] > 0x7e) {
            return 0;
        }
    }
    return 1;
}

/* Reads what arrived; serves every complete line.  0: the client is gone. */
static int client_input(struct client *c)
{
    ssize_t r = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
    char *nl;

    if (r <= 0) {
        return r < 0 && errno == EINTR;
    }
    c->len += (size_t)r;
    while ((nl = memchr(c->buf, '\n', c->len))) {
        size_t n = (size_t)(nl - c->buf);

        if (!text_ok(c->buf, n)) {
            write_all(c->fd, "error bad request\n", 18);
            return 0;
        }
        serve(c, c->buf, n);
        memmove(c->buf, nl + 1, c->len - n - 1);
        c->len -= n + 1;
    }
    if (c->len == sizeof(c->buf)) {
        write_all(c->fd, "error line too long\n", 20);
        return 0;
    }
    return 1;
}

static void control(int lfd)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    char cmd[16] = "";
    char ans[80];
    ssize_t r;
    int len;

    if (fd < 0) {
        return;
    }
    r = read(fd, cmd, sizeof(cmd) - 1);
    if (r > 0 && strncmp(cmd, "freeze\n", 7) == 0) {
        /* The log must be closed: a file open for writing keeps the file
         * system from going read-only (EBUSY). */
        if (svc.log_fd >= 0) {
            close(svc.log_fd);
            svc.log_fd = -1;
        }
        sync();
        if (mount(NULL, svc.mount_point, NULL, MS_REMOUNT | MS_RDONLY, NULL)) {
            len = snprintf(ans, sizeof(ans), "error remount: %s\n",
                           strerror(errno));
        } else {
            len = snprintf(ans, sizeof(ans), "frozen %llu %016llx\n",
                           (unsigned long long)svc.seq,
                           (unsigned long long)svc.sum);
        }
    } else if (r > 0 && strncmp(cmd, "state\n", 6) == 0) {
        len =
            snprintf(ans, sizeof(ans), "state %llu %016llx\n",
                     (unsigned long long)svc.seq, (unsigned long long)svc.sum);
    } else {
        len = snprintf(ans, sizeof(ans), "error unknown command\n");
    }
    write_all(fd, ans, (size_t)len);
    close(fd);
}

int main(int argc, char **argv)
{
    struct pollfd pfd[2 + MAX_CLIENTS];
    int lfd, cfd;

    if (argc != 5) {
        fprintf(stderr, "usage: colo-svc LOG MOUNT-POINT PORT CONTROL-PORT\n");
        return 2;
    }
    svc.debug = getenv("COLO_SVC_DEBUG") != NULL;
    svc.log_path = argv[1];
    svc.mount_point = argv[2];
    svc.log_fd =
        open(svc.log_path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (svc.log_fd < 0) {
        die("%s: %s", svc.log_path, strerror(errno));
    }
    recover();
    lfd = listen_on(atoi(argv[3]));
    cfd = listen_on(atoi(argv[4]));
    for (int i = 0; i < MAX_CLIENTS; i++) {
        svc.clients[i].fd = -1;
    }
    printf("colo-svc: serving on port %s (control %s), %llu records\n", argv[3],
           argv[4], (unsigned long long)svc.seq);
    fflush(stdout);

    for (;;) {
        pfd[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = cfd, .events = POLLIN};
        for (int i = 0; i < MAX_CLIENTS; i++) {
            pfd[2 + i] =
                (struct pollfd){.fd = svc.clients[i].fd, .events = POLLIN};
        }
        if (poll(pfd, 2 + MAX_CLIENTS, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("poll: %s", strerror(errno));
        }
        if (pfd[1].revents) {
            control(cfd);
        }
        for (int i = 0; i < MAX_CLIENTS; i++) {
            struct client *c = &svc.clients[i];

            if (c->fd >= 0 && pfd[2 + i].revents && !client_input(c)) {
                close(c->fd);
                c->fd = -1;
            }
        }
        if (pfd[0].revents) {
            int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            int one = 1;
            int i;

            if (fd < 0) {
                continue;
            }
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            for (i = 0; i < MAX_CLIENTS && svc.clients[i].fd >= 0; i++) {
            }
            if (i == MAX_CLIENTS) {
                write_all(fd, "error busy\n", 11);
                close(fd);
                continue;
            }
            svc.clients[i] = (struct client){.fd = fd};
        }
    }
}
