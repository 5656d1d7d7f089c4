/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Pure helpers of lockbusctl: parsing its arguments (durations, exit codes)
 * and formatting its output (timestamps, table cells, JSON strings). No bus,
 * no global state; unit-tested by tests/client/test-cli-util.c.
 *
 * Functions return 0 on success and a negative errno on failure, as
 * elsewhere; formatting functions return a new string (NULL only when out
 * of memory). */

#include <stdint.h>
#include <stdio.h>

#define USEC_PER_SEC  UINT64_C(1000000)
#define USEC_PER_MSEC UINT64_C(1000)
#define USEC_INFINITY UINT64_MAX

/* A duration: a number of seconds ("1.5"), or numbers with units, also
 * several added up ("500ms", "30s", "5min", "1h 30min"). Units: us usec µs,
 * ms msec, s sec second(s), m min minute(s), h hr hour(s), d day(s).
 * "infinity" gives USEC_INFINITY. -EINVAL for anything else, -ERANGE on
 * overflow. */
int parse_duration(const char *s, uint64_t *ret_usec);

/* An exit status, 0-255. */
int parse_exit_code(const char *s, int *ret);

/* CLOCK_REALTIME µs as local time, systemd's way:
 * "Sun 2026-11-22 12:00:00 UTC". */
char *format_timestamp(uint64_t usec);

/* A string for one table cell: ASCII control characters become C escapes
 * ("\n", "\t", "\x1b"), so that a row stays one line. */
char *escape_cell(const char *s);

/* The width of a UTF-8 string on a terminal, counting each code point as
 * wcwidth() says (1 where it has no answer, e.g. in the C locale). */
size_t utf8_width(const char *s);

/* Writes s as a JSON string, quotes included: '"', '\' and control
 * characters escaped, UTF-8 passed through. */
void json_write_string(FILE *f, const char *s);
