/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <glib.h>

#include "log.h"

static int max_level = LOG_INFO;

void log_set_max_level(int level) {
        max_level = level;
}

static bool log_to_journal_stream(void) {
        static int cached = -1;

        if (cached < 0)
                cached = getenv("JOURNAL_STREAM") != NULL;
        return cached;
}

int log_internal(int level, int error, const char *format, ...) {
        int saved_errno = errno;
        char line[LINE_MAX];
        size_t n = 0;
        va_list ap;
        int k;

        if (error < 0)
                error = -error;

        if (level <= max_level) {
                if (log_to_journal_stream())
                        n = (size_t) snprintf(line, sizeof(line), "<%i>", level);

                /* Make %m print the error we were given. */
                errno = error;
                va_start(ap, format);
                k = vsnprintf(line + n, sizeof(line) - n - 1, format, ap);
                va_end(ap);
                if (k > 0)
                        n += MIN((size_t) k, sizeof(line) - n - 2);
                line[n++] = '\n';

                /* One write per line: stderr is unbuffered, and a grant or
                 * release logs on the hot path. */
                (void) !write(STDERR_FILENO, line, n);
        }

        errno = saved_errno;
        return -error;
}
