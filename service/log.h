/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Logging to stderr. Under systemd (JOURNAL_STREAM set) each line gets a
 * "<N>" syslog-priority prefix so the journal keeps the level.
 *
 * The *_errno variants set errno from the (negative or positive) error so
 * that "%m" prints it, and return the negative error: "return
 * log_error_errno(r, "Failed to save hold for '%s': %m", name);" */

#include <syslog.h>

#include <systemd/sd-event.h>

#include "macro.h"

void log_set_max_level(int level);

/* While serving: lines below LOG_WARNING (grants, releases, refusals) are
 * collected and written together once the loop has nothing else to do, or
 * when the buffer is full; a warning or an error writes what was collected
 * and itself at once. Under load that is one write() for dozens of lines
 * instead of one each. log_detach_event() writes the rest (call it before
 * the loop goes). */
int log_attach_event(sd_event *event);
void log_detach_event(void);
int log_internal(int level, int error, const char *format, ...) _printf_(3, 4);

#define log_full_errno(level, error, ...) log_internal((level), (error), __VA_ARGS__)

#define log_debug(...)   log_internal(LOG_DEBUG, 0, __VA_ARGS__)
#define log_info(...)    log_internal(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...)  log_internal(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) log_internal(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...)   log_internal(LOG_ERR, 0, __VA_ARGS__)

#define log_debug_errno(error, ...)   log_internal(LOG_DEBUG, (error), __VA_ARGS__)
#define log_info_errno(error, ...)    log_internal(LOG_INFO, (error), __VA_ARGS__)
#define log_warning_errno(error, ...) log_internal(LOG_WARNING, (error), __VA_ARGS__)
#define log_error_errno(error, ...)   log_internal(LOG_ERR, (error), __VA_ARGS__)

/* For allocation failures that cannot be handled otherwise. */
#define log_oom() log_internal(LOG_ERR, ENOMEM, "Out of memory.")
