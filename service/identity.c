/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <glib.h>

#include "identity.h"
#include "log.h"

typedef struct PeerEntry {
        Peer peer;
        bool has_creds;
        sd_bus *connection;     /* direct peers */
        PeerRegistry *registry;
} PeerEntry;

struct PeerRegistry {
        sd_bus *bus;
        sd_bus_slot *disconnects;       /* NameOwnerChanged(name, old, "") of every peer */
        GHashTable *peers;      /* name → PeerEntry* (owned) */
        GHashTable *direct;     /* sd_bus* → PeerEntry* (borrowed from peers) */
        uint64_t n_direct;      /* for the next direct peer's name */
        char instance[9];       /* random, so that direct names differ between daemon runs */
        PeerGoneHandler on_gone;
        void *userdata;
};

static void peer_entry_free(PeerEntry *e) {
        if (!e)
                return;
        sd_bus_unref(e->connection);
        g_free(e->peer.name);
        g_free(e->peer.comm);
        g_free(e);
}

static int on_name_owner_changed(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        PeerRegistry *r = userdata;
        const char *name, *old_owner, *new_owner;
        g_autofree char *gone = NULL;
        PeerEntry *e;

        if (sd_bus_message_read(message, "sss", &name, &old_owner, &new_owner) < 0 || new_owner[0] != '\0')
                return 0;

        e = g_hash_table_lookup(r->peers, name);
        if (!e || e->peer.direct)
                return 0;

        /* Forget it first: the handler may look peers up again. */
        gone = g_strdup(name);
        g_hash_table_remove(r->peers, gone);
        if (r->on_gone)
                r->on_gone(gone, r->userdata);
        return 0;
}

int peer_registry_new(sd_bus *bus, PeerGoneHandler on_gone, void *userdata, PeerRegistry **ret) {
        PeerRegistry *r = g_new0(PeerRegistry, 1);
        int k;

        r->bus = sd_bus_ref(bus);
        r->peers = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, (GDestroyNotify) peer_entry_free);
        r->direct = g_hash_table_new(g_direct_hash, g_direct_equal);
        /* fd holds of direct peers survive a restart in systemd's fd store:
         * a new peer must never get an old one's name. */
        g_snprintf(r->instance, sizeof(r->instance), "%08x", g_random_int());
        r->on_gone = on_gone;
        r->userdata = userdata;

        /* One match for the departure of every peer, installed (and
         * confirmed by the broker) before anyone is asked about: a peer
         * found alive later cannot leave unnoticed. One per peer would
         * cost two round trips for each new caller and run into the
         * broker's limit of match rules per connection. */
        k = sd_bus_add_match(bus, &r->disconnects,
                             "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                             "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg2=''",
                             on_name_owner_changed, r);
        if (k < 0) {
                peer_registry_free(r);
                return k;
        }

        *ret = r;
        return 0;
}

PeerRegistry *peer_registry_free(PeerRegistry *r) {
        if (!r)
                return NULL;
        sd_bus_slot_unref(r->disconnects);
        g_hash_table_destroy(r->direct);
        g_hash_table_destroy(r->peers);
        sd_bus_unref(r->bus);
        g_free(r);
        return NULL;
}

static PeerEntry *peer_entry_new(PeerRegistry *r, const char *name) {
        PeerEntry *e = g_new0(PeerEntry, 1);

        e->registry = r;
        e->peer.name = g_strdup(name);
        e->peer.comm = g_strdup("");
        g_hash_table_insert(r->peers, e->peer.name, e);
        return e;
}

static void peer_entry_drop(PeerRegistry *r, PeerEntry *e) {
        g_hash_table_remove(r->peers, e->peer.name);
}

#define PEER_CREDS_MASK (SD_BUS_CREDS_EUID|SD_BUS_CREDS_PID|SD_BUS_CREDS_COMM|SD_BUS_CREDS_AUGMENT)

static int peer_entry_set_creds(PeerEntry *e, sd_bus_creds *creds) {
        const char *comm = NULL;
        uid_t uid;
        pid_t pid;
        int k;

        /* Decisions are taken on the uid and pid only if the broker vouched
         * for them; fields filled in from /proc could belong to a recycled
         * pid. */
        if (sd_bus_creds_get_augmented_mask(creds) & (SD_BUS_CREDS_EUID|SD_BUS_CREDS_PID))
                return -EPERM;

        k = sd_bus_creds_get_euid(creds, &uid);
        if (k < 0)
                return k;
        k = sd_bus_creds_get_pid(creds, &pid);
        if (k < 0)
                return k;
        (void) sd_bus_creds_get_comm(creds, &comm);

        e->peer.uid = uid;
        e->peer.pid = pid;
        g_free(e->peer.comm);
        e->peer.comm = g_strdup(strempty(comm));
        e->has_creds = true;
        return 0;
}

static int peer_entry_query_creds(PeerEntry *e, sd_bus_message *m) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        int k;

        k = sd_bus_query_sender_creds(m, PEER_CREDS_MASK, &creds);
        if (k < 0)
                return k;
        return peer_entry_set_creds(e, creds);
}

int peer_registry_get_sender(PeerRegistry *r, sd_bus_message *m, const Peer **ret) {
        const char *sender;
        PeerEntry *e;
        int k;

        sender = sd_bus_message_get_sender(m);
        if (sd_bus_message_get_bus(m) != r->bus) {
                /* No broker in between: a direct connection, known since it
                 * was accepted. */
                e = g_hash_table_lookup(r->direct, sd_bus_message_get_bus(m));
                if (!e)
                        return -EPERM;
                *ret = &e->peer;
                return 0;
        }

        e = g_hash_table_lookup(r->peers, sender);
        if (e && e->has_creds) {
                *ret = &e->peer;
                return 0;
        }

        if (!e)
                e = peer_entry_new(r, sender);

        /* A synchronous round trip, once per peer. It fails if the peer is
         * gone already; if it answers, the peer's departure is still to
         * come and will be seen. */
        k = peer_entry_query_creds(e, m);
        if (k < 0) {
                peer_entry_drop(r, e);
                return k;
        }

        *ret = &e->peer;
        return 0;
}

int peer_registry_watch(PeerRegistry *r, const char *name) {
        PeerEntry *e;
        int k;

        if (g_hash_table_contains(r->peers, name))
                return 1;

        /* A synchronous round trip, only at start for reloaded holds. */
        e = peer_entry_new(r, name);
        k = sd_bus_get_name_creds(r->bus, name, 0, NULL);
        if (k < 0) {
                peer_entry_drop(r, e);
                return IN_SET(k, -ENXIO, -ESRCH) ? 0 : k; /* no owner any more */
        }
        return 1;
}

int peer_registry_add_direct(PeerRegistry *r, sd_bus *connection, const Peer **ret) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        PeerEntry *e;
        int k;

        k = sd_bus_get_owner_creds(connection, PEER_CREDS_MASK, &creds);
        if (k < 0)
                return k;

        e = g_new0(PeerEntry, 1);
        e->registry = r;
        e->peer.name = g_strdup_printf("direct:%s.%" PRIu64, r->instance, ++r->n_direct);
        e->peer.direct = true;
        e->peer.comm = g_strdup("");
        e->connection = sd_bus_ref(connection);

        k = peer_entry_set_creds(e, creds);
        if (k < 0) {
                peer_entry_free(e);
                return k;
        }

        /* The socket tells uid and pid only; comm, for display, from /proc. */
        if (e->peer.comm[0] == '\0') {
                _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *proc = NULL;
                const char *comm;

                if (sd_bus_creds_new_from_pid(&proc, e->peer.pid, SD_BUS_CREDS_COMM) >= 0 &&
                    sd_bus_creds_get_comm(proc, &comm) >= 0) {
                        g_free(e->peer.comm);
                        e->peer.comm = g_strdup(comm);
                }
        }

        g_hash_table_insert(r->peers, e->peer.name, e);
        g_hash_table_insert(r->direct, connection, e);
        *ret = &e->peer;
        return 0;
}

void peer_registry_remove_direct(PeerRegistry *r, sd_bus *connection) {
        PeerEntry *e = g_hash_table_lookup(r->direct, connection);
        g_autofree char *name = NULL;

        if (!e)
                return;

        name = g_strdup(e->peer.name);
        g_hash_table_remove(r->direct, connection);
        g_hash_table_remove(r->peers, name);
        if (r->on_gone)
                r->on_gone(name, r->userdata);
}

Peer peer_copy(const Peer *p) {
        return (Peer) {
                .name = g_strdup(p->name),
                .direct = p->direct,
                .uid = p->uid,
                .pid = p->pid,
                .comm = g_strdup(p->comm),
        };
}

void peer_done(Peer *p) {
        g_clear_pointer(&p->name, g_free);
        g_clear_pointer(&p->comm, g_free);
}

sd_bus *peer_registry_get_direct_connection(const PeerRegistry *r, const char *name) {
        const PeerEntry *e;

        if (!r || !name)
                return NULL;
        e = g_hash_table_lookup(r->peers, name);
        return e ? e->connection : NULL;
}

bool peer_registry_contains(const PeerRegistry *r, const char *name) {
        return g_hash_table_contains(r->peers, name);
}

unsigned peer_registry_size(const PeerRegistry *r) {
        return g_hash_table_size(r->peers);
}
