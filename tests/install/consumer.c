// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * A program outside the project that uses an installed librdmacolo: built
 * with pkg-config only, run with the dynamic linker's ordinary search.
 */
#include <stdio.h>
#include <string.h>

#include <rdma-colo.h>

int main(void)
{
    const char *text = "rdma-colo:192.0.2.1:9998?channels=2&depth=64";
    struct rcolo_uri uri;
    struct rcolo_error err;
    char back[512];

    if (rcolo_uri_parse(text, &uri, &err) != 0) {
        fprintf(stderr, "consumer: rcolo_uri_parse failed: %s\n", err.message);
        return 1;
    }
    if (rcolo_uri_format(&uri, back, sizeof(back)) < 0 ||
        strcmp(back, text) != 0 || uri.channels != 2) {
        fprintf(stderr, "consumer: round trip gave '%s' for '%s'\n", back,
                text);
        return 1;
    }
    printf("consumer: installed librdmacolo parsed and formatted %s\n", back);
    return 0;
}
