/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "torture.h"

#define DBUS_SERVICE "org.freedesktop.DBus"
#define DBUS_PATH "/org/freedesktop/DBus"
#define DBUS_INTERFACE "org.freedesktop.DBus"

static void write_file(const char *path, const char *contents) {
        g_autoptr(GError) error = NULL;

        if (!g_file_set_contents(path, contents, -1, &error))
                g_error("Failed to write %s: %s", path, error->message);
        if (chmod(path, 0644) < 0)
                g_error("Failed to chmod %s: %s", path, g_strerror(errno));
}

/* Like Debian's system.conf (TESTING.md §1), with the project's policy
 * included and no <servicedir>: nothing is activated, so while lockbusd is
 * down a call fails at once with ServiceUnknown, and only the controller
 * starts the next generation. */
static void write_bus_config(const char *dir, const char *dbus_dir) {
        g_autofree char *system_d = g_build_filename(dir, "system.d", NULL);
        g_autofree char *policy_src = g_build_filename(dbus_dir, "io.lockbus1.conf", NULL);
        g_autofree char *policy_dst = g_build_filename(system_d, "io.lockbus1.conf", NULL);
        g_autofree char *conf_path = g_build_filename(dir, "bus.conf", NULL);
        g_autofree char *policy = NULL, *conf = NULL;
        g_autoptr(GError) error = NULL;

        if (mkdir(system_d, 0755) < 0)
                g_error("Failed to create %s: %s", system_d, g_strerror(errno));
        if (!g_file_get_contents(policy_src, &policy, NULL, &error))
                g_error("Failed to read %s: %s", policy_src, error->message);
        write_file(policy_dst, policy);

        conf = g_strdup_printf(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
                " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                "<busconfig>\n"
                "  <type>system</type>\n"
                "  <listen>unix:path=%s/bus.sock</listen>\n"
                "  <auth>EXTERNAL</auth>\n"
                "  <policy context=\"default\">\n"
                "    <allow user=\"*\"/>\n"
                "    <deny own=\"*\"/>\n"
                "    <deny send_type=\"method_call\"/>\n"
                "    <allow send_type=\"signal\"/>\n"
                "    <allow send_requested_reply=\"true\" send_type=\"method_return\"/>\n"
                "    <allow send_requested_reply=\"true\" send_type=\"error\"/>\n"
                "    <allow receive_type=\"method_call\"/>\n"
                "    <allow receive_type=\"method_return\"/>\n"
                "    <allow receive_type=\"error\"/>\n"
                "    <allow receive_type=\"signal\"/>\n"
                "    <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus\"/>\n"
                "    <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus.Introspectable\"/>\n"
                "    <allow send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus.Properties\"/>\n"
                "    <deny send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus\" send_member=\"UpdateActivationEnvironment\"/>\n"
                "    <deny send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.DBus.Debug.Stats\"/>\n"
                "    <deny send_destination=\"org.freedesktop.DBus\" send_interface=\"org.freedesktop.systemd1.Activator\"/>\n"
                "  </policy>\n"
                /* Many clients of a few uids, reconnecting often. */
                "  <limit name=\"max_connections_per_user\">4096</limit>\n"
                "  <limit name=\"max_replies_per_connection\">4096</limit>\n"
                "  <includedir>%s</includedir>\n"
                "</busconfig>\n",
                dir, system_d);
        write_file(conf_path, conf);
}

static char *read_address(int fd, pid_t pid) {
        uint64_t deadline = torture_now() + TORTURE_WAIT_USEC;
        GString *s = g_string_new(NULL);

        while (!strchr(s->str, '\n')) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                char buf[256];
                ssize_t n;
                int r;

                if (torture_now() >= deadline)
                        g_error("dbus-daemon (pid %d) printed no address in time", (int) pid);
                r = poll(&p, 1, 1000);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0)
                        g_error("poll: %s", g_strerror(errno));
                if (r == 0)
                        continue;
                n = read(fd, buf, sizeof(buf));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        g_error("dbus-daemon (pid %d) exited before printing its address", (int) pid);
                g_string_append_len(s, buf, n);
        }
        g_strchomp(s->str);
        return g_string_free(s, false);
}

pid_t torture_bus_start(const char *dir, const char *dbus_dir, char **ret_address) {
        g_autofree char *dbus_daemon = g_find_program_in_path("dbus-daemon");
        g_autofree char *config_arg = NULL;
        pid_t pid;
        int p[2];

        if (!dbus_daemon)
                g_error("dbus-daemon not found in $PATH");
        write_bus_config(dir, dbus_dir);
        config_arg = g_strdup_printf("--config-file=%s/bus.conf", dir);

        if (pipe2(p, O_CLOEXEC) < 0)
                g_error("pipe2: %s", g_strerror(errno));
        fflush(stdout);
        fflush(stderr);
        pid = fork();
        if (pid < 0)
                g_error("fork: %s", g_strerror(errno));
        if (pid == 0) {
                int null = open("/dev/null", O_RDWR | O_CLOEXEC);

                /* Never outlive the harness, also when it crashes. */
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (null < 0 || dup2(null, STDIN_FILENO) < 0 || dup2(STDERR_FILENO, STDOUT_FILENO) < 0 ||
                    dup2(p[1], 3) < 0)
                        _exit(127);
                (void) close_range(4, ~0U, 0);
                execl(dbus_daemon, "dbus-daemon", config_arg, "--nofork", "--print-address=3", (char *) NULL);
                _exit(127);
        }
        close(p[1]);
        *ret_address = read_address(p[0], pid);
        close(p[0]);
        return pid;
}

sd_bus *torture_bus_connect(const char *address) {
        sd_bus *bus = NULL;
        int r;

        if (sd_bus_new(&bus) < 0 || sd_bus_set_address(bus, address) < 0 ||
            sd_bus_set_bus_client(bus, true) < 0 ||
            sd_bus_set_method_call_timeout(bus, TORTURE_WAIT_USEC) < 0)
                g_error("Failed to allocate a bus connection");
        r = sd_bus_start(bus);
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

char *torture_bus_get_name_owner(sd_bus *bus, const char *name) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *owner;
        int r;

        r = sd_bus_call_method(bus, DBUS_SERVICE, DBUS_PATH, DBUS_INTERFACE, "GetNameOwner", &error, &reply,
                               "s", name);
        if (r < 0) {
                if (!sd_bus_error_has_name(&error, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                        g_error("GetNameOwner(%s) failed: %s", name, error.message ?: g_strerror(-r));
                return NULL;
        }
        if (sd_bus_message_read(reply, "s", &owner) < 0)
                g_error("Bad GetNameOwner reply");
        return g_strdup(owner);
}

NameWatch *name_watch_new(sd_bus *bus, const char *name) {
        g_autofree char *rule = NULL;
        NameWatch *w = g_new0(NameWatch, 1);
        int r;

        w->bus = sd_bus_ref(bus);
        w->name = g_strdup(name);
        rule = g_strdup_printf("type='signal',sender='" DBUS_SERVICE "',path='" DBUS_PATH "',"
                               "interface='" DBUS_INTERFACE "',member='NameOwnerChanged',arg0='%s'", name);
        /* Synchronous: the bus has the rule when this returns, so the owner
         * read next and the signals after it tell every change. */
        r = sd_bus_add_match(bus, &w->slot, rule, name_watch_handler, w);
        if (r < 0)
                g_error("Failed to add match %s: %s", rule, g_strerror(-r));
        w->owner = torture_bus_get_name_owner(bus, name) ?: g_strdup("");
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
        uint64_t deadline = torture_now() + TORTURE_WAIT_USEC;

        for (;;) {
                struct pollfd p[2];
                int n = 1, r;

                bus_dispatch(w->bus);
                if ((w->owner[0] != 0) == want_owner)
                        return true;
                if (torture_now() >= deadline)
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
