/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* How lockbusctl shows things: the holder table of `list` and `owner`,
 * their JSON form, and the pager.
 *
 * Table: one row per hold, columns RESOURCE MODE USER PID COMM SCOPE TOKEN
 * SINCE EXPIRES DESCRIPTION, separated by two spaces and aligned to the
 * widest cell; strings have their control characters escaped so a row is
 * one line. With a legend: a header line, and after the rows an empty line
 * and "N locks listed." (only the latter when there are no rows).
 *
 * JSON: an array of objects with the members resource, mode, uid, user
 * (name, or null when unknown), pid, comm, sender, token, since, expires
 * (CLOCK_REALTIME µs, 0 = never), scope, description; short is one line,
 * pretty is indented by two spaces. Both end with a newline. */

#include <stdbool.h>
#include <stdio.h>

#include "lockbus.h"

typedef enum JsonMode {
        JSON_OFF,
        JSON_SHORT,
        JSON_PRETTY,
} JsonMode;

/* resolve_users: show user names (getpwuid) rather than bare uids; false
 * for a remote host, whose users are not ours. */
void print_holders_table(FILE *f, const lockbus_holder *holders, size_t n, bool legend, bool resolve_users);
void print_holders_json(FILE *f, const lockbus_holder *holders, size_t n, JsonMode mode, bool resolve_users);

/* A small JSON object writer for the one-object outputs (lock, refresh,
 * status): json_object_begin(), then members, then json_object_end(). */
typedef struct JsonObject {
        FILE *f;
        JsonMode mode;
        unsigned depth;
        bool first;
} JsonObject;

void json_object_begin(JsonObject *o, FILE *f, JsonMode mode, unsigned depth);
void json_object_string(JsonObject *o, const char *key, const char *value);   /* NULL: null */
void json_object_unsigned(JsonObject *o, const char *key, uint64_t value);
void json_object_end(JsonObject *o);

/* Pipes stdout into $SYSTEMD_PAGER, else $PAGER, else less, else more —
 * only if `enabled` (not --no-pager) and stdout is a terminal. An empty value or "cat" means no pager.
 * less gets LESS=FRSXMK unless $LESS is set. pager_close() flushes stdout,
 * closes the pipe and waits for the pager to exit. */
void pager_open(bool enabled);
void pager_close(void);
