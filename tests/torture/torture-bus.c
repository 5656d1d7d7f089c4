/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <poll.h>

#include "torture.h"

/* Like Debian's system.conf (TESTING.md §1, tests/common/test-bus.h), with
 * the project's policy included and no <servicedir>: nothing is activated,
 * so while lockbusd is down a call fails at once with ServiceUnknown, and
 * only the controller starts the next generation. */
pid_t torture_bus_start(const char *dir, const char *dbus_dir, char **ret_address) {
        /* Many clients of a few uids, reconnecting often. */
        static const TestBusLimit limits[] = {
                { "max_connections_per_user", 4096 },
                { "max_replies_per_connection", 4096 },
                {}
        };
        g_autofree char *conf = test_bus_write_config(&(TestBusConfig) {
                .dir = dir,
                .dbus_dir = dbus_dir,
                .limits = limits,
        });

        /* In our process group; never outlives the harness, also when it
         * crashes. */
        return test_dbus_daemon_start(conf, 0, /* die_with_parent= */ true, TORTURE_WAIT_USEC, ret_address);
}

sd_bus *torture_bus_connect(const char *address) {
        sd_bus *bus = NULL;
        int r;

        r = test_bus_open(address, /* is_bus= */ true, TORTURE_WAIT_USEC, &bus);
        if (r < 0)
                g_error("Failed to connect to %s: %s", address, g_strerror(-r));
        return bus;
}

struct NameWatch {
        sd_bus *bus;
        sd_bus_slot *slot;
        char *name;
        char *owner;            /* last reported owner, "" for none */
};

static int name_watch_handler(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        NameWatch *w = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0 || !streq(name, w->name))
                return 0;
        g_free(w->owner);
        w->owner = g_strdup(new_owner);
        return 0;
}

NameWatch *name_watch_new(sd_bus *bus, const char *name) {
        NameWatch *w = g_new0(NameWatch, 1);

        w->bus = sd_bus_ref(bus);
        w->name = g_strdup(name);
        /* Synchronous: the bus has the rule when this returns, so the owner
         * read next and the signals after it tell every change. */
        w->slot = test_bus_match_name_owner_changed(bus, name, name_watch_handler, w);
        w->owner = test_bus_get_name_owner(bus, name) ?: g_strdup("");
        return w;
}

void name_watch_free(NameWatch *w) {
        if (!w)
                return;
        sd_bus_slot_unref(w->slot);
        sd_bus_unref(w->bus);
        g_free(w->name);
        g_free(w->owner);
        g_free(w);
}

static void bus_dispatch(sd_bus *bus) {
        int r;

        do
                r = sd_bus_process(bus, NULL);
        while (r > 0);
        if (r < 0)
                g_error("Failed to process the controller's bus: %s", g_strerror(-r));
}

const char *name_watch_owner(NameWatch *w) {
        bus_dispatch(w->bus);
        return w->owner;
}

/* Dispatches until done(w) or the pidfd is readable or the bound passes. */
static bool name_watch_wait(NameWatch *w, bool want_owner, int pidfd) {
        uint64_t deadline = test_now_monotonic() + TORTURE_WAIT_USEC;

        for (;;) {
                struct pollfd p[2];
                int n = 1, r;

                bus_dispatch(w->bus);
                if ((w->owner[0] != 0) == want_owner)
                        return true;
                if (test_now_monotonic() >= deadline)
                        return false;

                p[0] = (struct pollfd) { .fd = sd_bus_get_fd(w->bus), .events = (short) sd_bus_get_events(w->bus) };
                if (pidfd >= 0)
                        p[n++] = (struct pollfd) { .fd = pidfd, .events = POLLIN };
                r = poll(p, n, 1000);
                if (r < 0 && errno != EINTR)
                        g_error("poll: %s", g_strerror(errno));
                if (r > 0 && pidfd >= 0 && (p[1].revents & POLLIN)) {
                        bus_dispatch(w->bus);
                        return (w->owner[0] != 0) == want_owner;
                }
        }
}

bool name_watch_wait_owned(NameWatch *w, int pidfd) {
        return name_watch_wait(w, true, pidfd);
}

bool name_watch_wait_unowned(NameWatch *w) {
        return name_watch_wait(w, false, -1);
}

void listed_hold_free(ListedHold *h) {
        if (!h)
                return;
        g_free(h->resource);
        g_free(h->mode);
        g_free(h->sender);
        g_free(h->scope);
        g_free(h->description);
        g_free(h);
}

int torture_list_locks(sd_bus *bus, GPtrArray **ret, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        g_autoptr(GPtrArray) a = g_ptr_array_new_with_free_func((GDestroyNotify) listed_hold_free);
        int r;

        r = sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "ListLocks",
                               error, &reply, NULL);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'a', "(ssuusstttss)");
        if (r < 0)
                return r;
        for (;;) {
                const char *resource, *mode, *comm, *sender, *scope, *description;
                uint64_t token, since, expires;
                uint32_t uid, pid;
                ListedHold *h;

                r = sd_bus_message_read(reply, "(ssuusstttss)", &resource, &mode, &uid, &pid, &comm, &sender,
                                        &token, &since, &expires, &scope, &description);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                h = g_new0(ListedHold, 1);
                *h = (ListedHold) {
                        .resource = g_strdup(resource),
                        .mode = g_strdup(mode),
                        .uid = uid,
                        .pid = pid,
                        .sender = g_strdup(sender),
                        .token = token,
                        .scope = g_strdup(scope),
                        .description = g_strdup(description),
                };
                g_ptr_array_add(a, h);
        }
        *ret = TAKE_PTR(a);
        return 0;
}

int torture_get_waiter_count(sd_bus *bus, uint32_t *ret, sd_bus_error *error) {
        return sd_bus_get_property_trivial(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE,
                                           "WaiterCount", error, 'u', ret);
}
