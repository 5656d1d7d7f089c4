/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Caller identity from the bus, cached per unique name.
 *
 * On dbus-daemon a credentials query is a synchronous round trip to the
 * broker. Unique names are never reused on a bus, so the answer is cached per
 * name and dropped when the name leaves the bus: a known caller costs no
 * round trip. One match on NameOwnerChanged watches every peer's
 * departure; when a peer goes, the registry calls the gone-handler (the
 * manager releases that peer's connection holds and waiters) and forgets
 * the peer.
 *
 * uid and pid come from the broker (kernel-checked SO_PEERCRED), never from
 * /proc; comm is read from /proc and is for display only. */

#include <stdbool.h>
#include <sys/types.h>

#include <systemd/sd-bus.h>

#include "macro.h"

typedef struct PeerRegistry PeerRegistry;

typedef struct Peer {
        char *name;             /* unique bus name, or "direct:RUN.N" for a direct connection */
        bool direct;            /* a peer-to-peer connection to the daemon, not through the bus */
        uid_t uid;
        pid_t pid;
        char *comm;             /* may be "" */
} Peer;

/* A copy of a peer that outlives the registry's entry (for calls answered
 * later); peer_done() frees its strings. */
Peer peer_copy(const Peer *p);
void peer_done(Peer *p);

typedef void (*PeerGoneHandler)(const char *name, void *userdata);

int peer_registry_new(sd_bus *bus, PeerGoneHandler on_gone, void *userdata, PeerRegistry **ret);
PeerRegistry *peer_registry_free(PeerRegistry *r);
DEFINE_TRIVIAL_CLEANUP_FUNC(PeerRegistry *, peer_registry_free);

/* The identity of the sender of `m`, from the cache or asked of the broker
 * (and then watched). Borrowed, valid until the peer leaves the bus. Returns
 * a negative errno (e.g. -ENXIO when the sender is already gone, -EPERM if
 * the broker gave no trustworthy uid). */
int peer_registry_get_sender(PeerRegistry *r, sd_bus_message *m, const Peer **ret);

/* Registers a direct (peer-to-peer) connection to the daemon: its identity
 * comes from the socket's peer credentials (SO_PEERCRED), its name is
 * "direct:RUN.N" (never a bus name; RUN differs between daemon runs). Calls
 * on it are looked up by their
 * connection. peer_registry_remove_direct() is called when it closes and
 * runs the gone-handler. */
int peer_registry_add_direct(PeerRegistry *r, sd_bus *connection, const Peer **ret);
void peer_registry_remove_direct(PeerRegistry *r, sd_bus *connection);

/* Starts watching `name` (for a connection hold reloaded at start) and tells
 * whether it is still on the bus: 1 if it is (the gone-handler will fire
 * when it leaves), 0 if not (nothing is kept), negative errno on failure. */
int peer_registry_watch(PeerRegistry *r, const char *name);

/* True while `name` is known and on the bus (it made a call, or is
 * watched). */
bool peer_registry_contains(const PeerRegistry *r, const char *name);

/* The connection a direct peer ("direct:RUN.N") is on (borrowed), NULL for
 * a bus peer or one that is gone. */
sd_bus *peer_registry_get_direct_connection(const PeerRegistry *r, const char *name);

/* Number of peers known. */
unsigned peer_registry_size(const PeerRegistry *r);
