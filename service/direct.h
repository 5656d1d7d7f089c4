/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The brokerless fast path: lockbusd also listens on a Unix socket in its
 * runtime directory (DIRECT_SOCKET_NAME) and speaks the same D-Bus protocol
 * there, peer to peer, with the same object and vtable. A call saves the
 * two hops through the bus daemon. The socket is LOCKBUS_DIRECT_SOCKET_NAME
 * in the runtime directory.
 *
 * The caller's identity comes from the socket's peer credentials. The bus
 * policy has nothing to enforce here beyond what the daemon itself does:
 * only io.lockbus1.Manager and the standard Introspectable, Properties and
 * Peer interfaces of /io/lockbus1 exist on such a connection. Each uid but
 * root may have at most DIRECT_CONNECTIONS_PER_USER_MAX of them; one that
 * leaves more than 16 replies unread is closed. When a
 * connection closes, its connection holds and waiters go, as when a bus
 * peer leaves. */

#include <stdbool.h>

#include "macro.h"

#define DIRECT_CONNECTIONS_PER_USER_MAX 256U

typedef struct Manager Manager;
typedef struct DirectServer DirectServer;

/* Listens on `path` (replacing a stale socket there) and serves connections
 * on the manager's event loop. */
int direct_server_new(Manager *m, const char *path, DirectServer **ret);
/* Stops listening (removing the socket) and closes every connection. An
 * open connection keeps the daemon from exiting on idle, and one accepted
 * during an idle exit cancels it. */
DirectServer *direct_server_free(DirectServer *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(DirectServer *, direct_server_free);

unsigned direct_server_connection_count(const DirectServer *s);
