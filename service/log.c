/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>

#include "log.h"

static int max_level = LOG_INFO;

/* What log_attach_event() collects: whole lines, in order. */
#define LOG_BUFFER_SIZE (16U * 1024U)
static char buffer[LOG_BUFFER_SIZE];
static size_t buffered;
static sd_event_source *flush_source;

void log_set_max_level(int level) {
        max_level = level;
}

static bool log_to_journal_stream(void) {
        static int cached = -1;

        if (cached < 0)
                cached = getenv("JOURNAL_STREAM") != NULL;
        return cached;
}

static void log_flush(void) {
        if (buffered > 0)
                (void) !write(STDERR_FILENO, buffer, buffered);
        buffered = 0;
}

static int on_flush(sd_event_source *s, void *userdata) {
        log_flush();
        return 0;
}

int log_attach_event(sd_event *event) {
        int r;

        if (flush_source)
                return 0;

        /* Idle priority: after every message that is waiting has been
         * handled. */
        r = sd_event_add_defer(event, &flush_source, on_flush, NULL);
        if (r < 0)
                return r;
        r = sd_event_source_set_priority(flush_source, SD_EVENT_PRIORITY_IDLE);
        if (r >= 0)
                r = sd_event_source_set_enabled(flush_source, SD_EVENT_OFF);
        if (r < 0) {
                flush_source = sd_event_source_disable_unref(flush_source);
                return r;
        }
        return 0;
}

void log_detach_event(void) {
        log_flush();
        flush_source = sd_event_source_disable_unref(flush_source);
}

/* One write per line, or into the buffer (see log_attach_event()). */
static void log_write(int level, const char *line, size_t n) {
        if (flush_source && level > LOG_WARNING) {
                if (buffered + n > sizeof(buffer))
                        log_flush();
                memcpy(buffer + buffered, line, n);
                buffered += n;
                if (sd_event_source_set_enabled(flush_source, SD_EVENT_ONESHOT) < 0)
                        log_flush();
                return;
        }

        log_flush();
        (void) !write(STDERR_FILENO, line, n);
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

                log_write(level, line, n);
        }

        errno = saved_errno;
        return -error;
}
