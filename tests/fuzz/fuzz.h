/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What a fuzz target (fuzz-TARGET.c) and its two drivers share.
 *
 * A target defines LLVMFuzzerTestOneInput(), the libFuzzer entry point. It
 * is linked twice:
 *   - fuzz-TARGET: with libFuzzer (clang, -Dfuzzers=true), which calls it
 *     with generated inputs (run-fuzzers.sh);
 *   - test-fuzz-TARGET: with fuzz-main.c (any compiler, always built), a
 *     g_test program that calls it once per file of corpus/TARGET/ and
 *     regressions/TARGET/ (meson test suite 'fuzz').
 * A broken property must abort the process in both: fuzz_assert() does,
 * whatever NDEBUG or G_DISABLE_ASSERT say, and prints what failed. */

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define fuzz_assert(expr)                                                       \
        do {                                                                    \
                if (!(expr)) {                                                  \
                        fprintf(stderr, "%s:%d: %s: assertion failed: %s\n",    \
                                __FILE__, __LINE__, __func__, #expr);           \
                        abort();                                                \
                }                                                               \
        } while (0)

/* Must return 0 (libFuzzer reserves other values). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
