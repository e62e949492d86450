/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The libFuzzer entry point every target defines.  Built with clang and
 * -fsanitize=fuzzer (meson -Dfuzz=enabled) it fuzzes; built otherwise it is
 * linked with replay.c and runs each file given (the seed corpus) once, so
 * the unit suite checks the corpus with any compiler.
 */
#ifndef RCOLO_FUZZ_H
#define RCOLO_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property every input must keep; evaluated in every build type. */
#define FUZZ_CHECK(cond)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: property violated: %s\n", __FILE__,        \
                    __LINE__, #cond);                                          \
            abort();                                                           \
        }                                                                      \
    } while (0)

#endif /* RCOLO_FUZZ_H */
