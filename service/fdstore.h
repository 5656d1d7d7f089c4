/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* fd holds across restarts, through systemd's file descriptor store
 * (FileDescriptorStoreMax=): the read end of each fd hold's pipe is handed
 * to systemd as "hold-TOKEN" and taken back at the next start. Outside
 * systemd (no $NOTIFY_SOCKET) pushing does nothing and nothing comes back,
 * so fd holds are dropped at a restart. */

#include <stdint.h>

#include <glib.h>

/* Hands a copy of fd to systemd under the hold's name. Returns 1 if
 * stored, 0 if not running under systemd, negative errno on failure. */
int fdstore_push(uint64_t token, int fd);

/* Tells systemd to forget the hold's fd. */
void fdstore_remove(uint64_t token);

/* The fds systemd passed at start ($LISTEN_FDS with names "hold-TOKEN"),
 * as a table from token (a g_malloc'd uint64_t, g_int64_hash) to fd
 * (GINT_TO_POINTER). The table owns the fds: steal an entry to keep its fd
 * (g_hash_table_steal_extended). Other fds passed are closed. */
GHashTable *fdstore_take(void);
