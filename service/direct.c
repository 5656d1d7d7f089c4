/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <glib.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>
#include <systemd/sd-id128.h>

#include "bus-manager.h"
#include "direct.h"
#include "log.h"
#include "manager.h"

/* Replies a direct peer may leave unread before it is cut off. */
#define DIRECT_QUEUED_WRITES_MAX 16U

typedef struct DirectConnection {
        DirectServer *server;
        sd_bus *bus;
        uid_t uid;
} DirectConnection;

struct DirectServer {
        Manager *manager;
        char *path;
        sd_id128_t server_id;
        sd_event_source *listen_source;
        GHashTable *connections;        /* DirectConnection* set (owned) */
        GHashTable *per_uid;            /* uid → count */
};

static void direct_connection_free(DirectConnection *c) {
        if (!c)
                return;
        /* No flush: it would wait for a peer that never authenticates or
         * never reads. */
        sd_bus_close_unref(c->bus);
        g_free(c);
}

static void uid_count_add(DirectServer *s, uid_t uid, int delta) {
        unsigned n = GPOINTER_TO_UINT(g_hash_table_lookup(s->per_uid, GUINT_TO_POINTER(uid))) + delta;

        if (n == 0)
                g_hash_table_remove(s->per_uid, GUINT_TO_POINTER(uid));
        else
                g_hash_table_insert(s->per_uid, GUINT_TO_POINTER(uid), GUINT_TO_POINTER(n));
}

static void direct_connection_close(DirectConnection *c) {
        DirectServer *s = c->server;

        log_debug("Direct connection of uid " UID_FMT " closed.", c->uid);
        uid_count_add(s, c->uid, -1);
        /* Its holds and waiters go, as when a bus peer leaves. */
        peer_registry_remove_direct(s->manager->peers, c->bus);
        g_hash_table_remove(s->connections, c);
}

static int on_disconnected(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        direct_connection_close(userdata);
        return 0;
}

/* On the bus, dbus-daemon bounds what a peer leaves unread; here the
 * daemon does: a peer that sends and never reads is cut off, as if it had
 * disconnected, before its replies eat the daemon's memory. */
static int on_direct_message(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        DirectConnection *c = userdata;
        uint64_t queued = 0;

        if (sd_bus_get_n_queued_write(c->bus, &queued) < 0 || queued <= DIRECT_QUEUED_WRITES_MAX)
                return 0;

        log_notice("Closing the direct connection of uid " UID_FMT ": it does not read its replies "
                   "(%" PRIu64 " queued).", c->uid, queued);
        direct_connection_close(c);
        return 1; /* not dispatched */
}

static int direct_connection_new(DirectServer *s, int fd) {
        _cleanup_(sd_bus_unrefp) sd_bus *bus = NULL;
        _cleanup_close_ int fd_owned = fd;
        const Peer *peer = NULL;
        DirectConnection *c;
        int r;

        r = sd_bus_new(&bus);
        if (r < 0)
                return r;
        r = sd_bus_set_fd(bus, fd, fd);
        if (r < 0)
                return r;
        TAKE_FD(fd_owned);
        r = sd_bus_set_server(bus, true, s->server_id);
        if (r < 0)
                return r;
        /* AcquireFd hands out fds. */
        r = sd_bus_negotiate_fds(bus, true);
        if (r < 0)
                return r;
        r = sd_bus_start(bus);
        if (r < 0) {
                sd_bus_close(bus);
                return r;
        }

        c = g_new0(DirectConnection, 1);
        c->server = s;
        c->bus = sd_bus_ref(bus);

        r = peer_registry_add_direct(s->manager->peers, bus, &peer);
        if (r < 0) {
                direct_connection_free(c);
                return r;
        }
        c->uid = peer->uid;

        if (peer->uid != 0 &&
            GPOINTER_TO_UINT(g_hash_table_lookup(s->per_uid, GUINT_TO_POINTER(peer->uid))) >= DIRECT_CONNECTIONS_PER_USER_MAX) {
                log_notice("Refusing a direct connection of uid " UID_FMT ": it has %u already.",
                           peer->uid, DIRECT_CONNECTIONS_PER_USER_MAX);
                peer_registry_remove_direct(s->manager->peers, bus);
                sd_bus_close(c->bus);
                direct_connection_free(c);
                return 0;
        }

        r = sd_bus_match_signal(bus, NULL, "org.freedesktop.DBus.Local", "/org/freedesktop/DBus/Local",
                                "org.freedesktop.DBus.Local", "Disconnected", on_disconnected, c);
        if (r >= 0)
                r = sd_bus_add_filter(bus, NULL, on_direct_message, c);
        if (r >= 0)
                r = bus_manager_export_on(s->manager, bus);
        if (r >= 0)
                r = sd_bus_attach_event(bus, s->manager->event, SD_EVENT_PRIORITY_NORMAL);
        if (r >= 0)
                /* Nor on exit (direct_server_free() closes it). */
                r = sd_bus_set_close_on_exit(bus, false);
        if (r < 0) {
                peer_registry_remove_direct(s->manager->peers, bus);
                direct_connection_free(c);
                return r;
        }

        uid_count_add(s, c->uid, +1);
        g_hash_table_add(s->connections, c);
        log_debug("Direct connection %s of uid " UID_FMT " (pid " PID_FMT ", %s).",
                  peer->name, peer->uid, peer->pid, peer->comm);
        return 0;
}

static int on_listen(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        DirectServer *s = userdata;
        int cfd, r;

        cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK|SOCK_CLOEXEC);
        if (cfd < 0) {
                if (!IN_SET(errno, EAGAIN, EINTR, ECONNABORTED))
                        log_warning_errno(errno, "Failed to accept a direct connection, ignoring: %m");
                return 0;
        }

        /* A connection keeps the daemon busy: during an idle exit it takes
         * the bus name back, or is turned away (the client uses the bus). */
        if (manager_cancel_idle_exit(s->manager) < 0) {
                close(cfd);
                return 0;
        }

        r = direct_connection_new(s, cfd);
        if (r < 0)
                log_warning_errno(r, "Failed to set up a direct connection, ignoring: %m");
        return 0;
}

int direct_server_new(Manager *m, const char *path, DirectServer **ret) {
        _cleanup_(direct_server_freep) DirectServer *s = NULL;
        _cleanup_close_ int fd = -1;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int r;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);

        s = g_new0(DirectServer, 1);
        s->manager = m;
        s->connections = g_hash_table_new_full(g_direct_hash, g_direct_equal,
                                               (GDestroyNotify) direct_connection_free, NULL);
        s->per_uid = g_hash_table_new(g_direct_hash, g_direct_equal);

        r = sd_id128_randomize(&s->server_id);
        if (r < 0)
                return r;

        fd = socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;

        /* A socket left by a daemon that crashed; we own the directory
         * (its flock), so nobody else listens there. */
        (void) unlink(path);
        if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return -errno;
        s->path = g_strdup(path);
        /* Anyone may connect, as anyone may call on the bus. */
        if (chmod(path, 0666) < 0)
                return -errno;
        if (listen(fd, SOMAXCONN) < 0)
                return -errno;

        r = sd_event_add_io(m->event, &s->listen_source, fd, EPOLLIN, on_listen, s);
        if (r < 0)
                return r;
        r = sd_event_source_set_io_fd_own(s->listen_source, true);
        if (r < 0)
                return r;
        TAKE_FD(fd);

        *ret = TAKE_PTR(s);
        return 0;
}

DirectServer *direct_server_free(DirectServer *s) {
        if (!s)
                return NULL;
        s->listen_source = sd_event_source_disable_unref(s->listen_source);
        if (s->path)
                (void) unlink(s->path);
        g_free(s->path);
        g_hash_table_destroy(s->connections);
        g_hash_table_destroy(s->per_uid);
        g_free(s);
        return NULL;
}

unsigned direct_server_connection_count(const DirectServer *s) {
        return s ? g_hash_table_size(s->connections) : 0;
}
