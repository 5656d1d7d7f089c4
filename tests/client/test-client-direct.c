/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* liblockbus and lockbusd's direct socket (the brokerless fast path):
 * lockbus_open_system() and lockbus_open_user() use the socket that
 * $LOCKBUS_DIRECT_SOCKET names ("" turns that off), else the daemon's
 * default socket, but only when the bus is the default one too; when the
 * socket cannot be used they fall back to the bus. Which path a handle
 * took shows in Owner: a direct peer's holds have the sender "direct:N",
 * the bus's a unique name ":1.N". The daemon's side of the socket is tested
 * in tests/bus/test-bus-direct.c. */

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "client-test.h"

#define CHILD_COMM "lockbus-child"

/* The daemon's limit of direct connections per uid but root
 * (DIRECT_CONNECTIONS_PER_USER_MAX in service/direct.h). */
#define DIRECT_CONNECTIONS_PER_USER 256U

/* Sets (value non-NULL) or unsets an environment variable. */
static void set_env(const char *name, const char *value) {
        if (value)
                g_assert_true(g_setenv(name, value, true));
        else
                g_unsetenv(name);
}

/* Takes a connection hold on `resource` through the handle and returns the
 * sender the daemon recorded for it (then lets it go). */
static char *hold_sender(lockbus *l, const char *resource) {
        lockbus_holder *holders = NULL;
        size_t n = 0;
        char *sender;

        assert_lockbus_ok(l, lockbus_lock(l, resource, NULL, NULL));
        assert_lockbus_ok(l, lockbus_owner(l, resource, &holders, &n));
        g_assert_cmpuint(n, ==, 1);
        g_assert_cmpuint(holders[0].uid, ==, geteuid());
        g_assert_cmpint(holders[0].pid, ==, getpid());
        sender = g_strdup(holders[0].sender);
        lockbus_holders_free(holders, n);
        assert_lockbus_ok(l, lockbus_unlock(l, resource));
        return sender;
}

/* The handle's calls went over the direct socket. */
static void assert_uses_direct(lockbus *l, const char *what) {
        g_autofree char *sender = hold_sender(l, "which-path");

        if (!g_str_has_prefix(sender, "direct:"))
                g_error("%s: expected the direct socket, the daemon saw sender '%s'", what, sender);
        g_assert_cmpint(sd_bus_is_bus_client(lockbus_get_bus(l)), ==, 0);
}

/* The handle's calls went over the bus. */
static void assert_uses_bus(lockbus *l, const char *what) {
        g_autofree char *sender = hold_sender(l, "which-path");

        if (!g_str_has_prefix(sender, ":1."))
                g_error("%s: expected the bus, the daemon saw sender '%s'", what, sender);
        g_assert_cmpint(sd_bus_is_bus_client(lockbus_get_bus(l)), >, 0);
        g_assert_cmpstr(sender, ==, test_unique_name(lockbus_get_bus(l)));
}

static lockbus *open_system_ok(void) {
        lockbus *l = NULL;
        int r;

        r = lockbus_open_system(&l);
        if (r < 0)
                g_error("lockbus_open_system() failed: %s", g_strerror(-r));
        return l;
}

static lockbus *open_user_ok(void) {
        lockbus *l = NULL;
        int r;

        r = lockbus_open_user(&l);
        if (r < 0)
                g_error("lockbus_open_user() failed: %s", g_strerror(-r));
        return l;
}

/* A Unix socket file nobody listens on, as a daemon killed with SIGKILL
 * leaves behind. */
static void make_stale_socket(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -1;

        g_assert_cmpuint(strlen(path), <, sizeof(sa.sun_path));
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        g_assert_cmpint(fd, >=, 0);
        g_assert_cmpint(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), ==, 0);
}

static void case_direct_library(TestFixture *f, gconstpointer data) {
        g_autofree char *direct = NULL, *missing = NULL, *stale = NULL, *plain = NULL, *version = NULL;
        g_autoptr(lockbus) l = NULL;
        lockbus_holder *holders = NULL;
        size_t n = 0;
        uint64_t token = 0;
        uint32_t count = 0;
        int fd = -1;

        (void) test_bus_activate_daemon(f->bus);
        direct = test_bus_direct_socket(f->bus);
        missing = g_build_filename(f->bus->dir, "missing.sock", NULL);
        stale = g_build_filename(f->bus->dir, "stale.sock", NULL);
        plain = g_build_filename(f->bus->dir, "bus.conf", NULL);
        make_stale_socket(stale);
        set_env("DBUS_SYSTEM_BUS_ADDRESS", f->bus->address);

        /* $LOCKBUS_DIRECT_SOCKET names the socket: used. */
        set_env("LOCKBUS_DIRECT_SOCKET", direct);
        l = open_system_ok();
        assert_uses_direct(l, "LOCKBUS_DIRECT_SOCKET=DIR/run/.direct.sock");
        /* Everything works there: an fd hold, persistent holds, properties. */
        assert_lockbus_ok(l, lockbus_acquire_fd(l, "fd", NULL, &fd, &token));
        g_assert_cmpint(fd, >=, 0);
        g_assert_cmpuint(token, >, 0);
        assert_lockbus_ok(l, lockbus_owner(l, "fd", &holders, &n));
        g_assert_cmpuint(n, ==, 1);
        g_assert_cmpint(holders[0].scope, ==, LOCKBUS_SCOPE_FD);
        g_assert_true(g_str_has_prefix(holders[0].sender, "direct:"));
        lockbus_holders_free(holders, n);
        g_assert_cmpint(close(fd), ==, 0);
        assert_lockbus_ok(l, lockbus_lock(l, "persistent", &(lockbus_options) { .scope = LOCKBUS_SCOPE_PERSISTENT },
                                          NULL));
        assert_lockbus_ok(l, lockbus_get_version(l, &version));
        g_assert_cmpstr(version, ==, g_getenv("LOCKBUS_VERSION"));
        assert_lockbus_ok(l, lockbus_get_lock_count(l, &count));
        g_assert_cmpuint(count, >=, 1);
        assert_lockbus_ok(l, lockbus_unlock(l, "persistent"));
        l = lockbus_unref(l);

        /* A path where nothing is: the bus. */
        set_env("LOCKBUS_DIRECT_SOCKET", missing);
        l = open_system_ok();
        assert_uses_bus(l, "LOCKBUS_DIRECT_SOCKET=DIR/missing.sock");
        l = lockbus_unref(l);

        /* A socket nobody listens on (a daemon's after SIGKILL), a file
         * that is no socket: the bus. */
        set_env("LOCKBUS_DIRECT_SOCKET", stale);
        l = open_system_ok();
        assert_uses_bus(l, "LOCKBUS_DIRECT_SOCKET=a stale socket");
        l = lockbus_unref(l);
        set_env("LOCKBUS_DIRECT_SOCKET", plain);
        l = open_system_ok();
        assert_uses_bus(l, "LOCKBUS_DIRECT_SOCKET=a regular file");
        l = lockbus_unref(l);

        /* "" turns the socket off. */
        set_env("LOCKBUS_DIRECT_SOCKET", "");
        l = open_system_ok();
        assert_uses_bus(l, "LOCKBUS_DIRECT_SOCKET=\"\"");
        l = lockbus_unref(l);

        /* Unset, with DBUS_SYSTEM_BUS_ADDRESS set: the bus it names, never
         * the default socket (which belongs to the system's daemon). */
        set_env("LOCKBUS_DIRECT_SOCKET", NULL);
        l = open_system_ok();
        assert_uses_bus(l, "LOCKBUS_DIRECT_SOCKET unset, DBUS_SYSTEM_BUS_ADDRESS set");
        l = lockbus_unref(l);

        set_env("DBUS_SYSTEM_BUS_ADDRESS", NULL);
}

/* The user bus: $XDG_RUNTIME_DIR/lockbus/.direct.sock when the session
 * bus is the default one ($XDG_RUNTIME_DIR/bus). XDG_RUNTIME_DIR is made
 * up here: its "bus" leads to the test bus, its lockbus/.direct.sock to the
 * test daemon's socket. */
static void on_lost(lockbus *l, const char *resource, uint64_t token, const char *reason, void *userdata) {
        char **line = userdata;

        g_assert_null(*line);
        *line = g_strdup_printf("%s %" PRIu64 " %s", resource, token, reason);
}

/* LockLost reaches a handle on the direct socket too (its messages have no
 * sender to match). */
static void case_direct_library_lost(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        g_autofree char *direct = NULL, *line = NULL, *expected = NULL;
        g_autoptr(lockbus) l = NULL;
        uint64_t token = 0;

        (void) test_bus_activate_daemon(f->bus);
        direct = test_bus_direct_socket(f->bus);
        set_env("DBUS_SYSTEM_BUS_ADDRESS", f->bus->address);
        set_env("LOCKBUS_DIRECT_SOCKET", direct);
        l = open_system_ok();
        assert_uses_direct(l, "LOCKBUS_DIRECT_SOCKET=DIR/run/.direct.sock");

        g_assert_cmpint(sd_event_new(&e), >=, 0);
        g_assert_cmpint(lockbus_attach_event(l, e, 0), ==, 0);
        g_assert_cmpint(lockbus_set_lost_handler(l, on_lost, &line), ==, 0);
        assert_lockbus_ok(l, lockbus_lock(l, "ttl", &(lockbus_options) { .ttl_usec = 50 * USEC_PER_MSEC }, &token));
        while (!line)
                g_assert_cmpint(sd_event_run(e, TEST_TIMEOUT_USEC), >, 0);
        expected = g_strdup_printf("ttl %" PRIu64 " expired", token);
        g_assert_cmpstr(line, ==, expected);
}

static void case_direct_library_user(TestFixture *f, gconstpointer data) {
        g_autofree char *direct = NULL, *xdg = NULL, *xdg_lockbus = NULL, *xdg_bus = NULL, *xdg_socket = NULL,
                *bus_socket = NULL, *default_address = NULL;
        g_autoptr(lockbus) l = NULL;

        (void) test_bus_activate_daemon(f->bus);
        direct = test_bus_direct_socket(f->bus);
        bus_socket = g_build_filename(f->bus->dir, "bus.sock", NULL);
        xdg = g_build_filename(f->bus->dir, "xdg", NULL);
        xdg_lockbus = g_build_filename(xdg, "lockbus", NULL);
        xdg_bus = g_build_filename(xdg, "bus", NULL);
        xdg_socket = g_build_filename(xdg_lockbus, LOCKBUS_DIRECT_SOCKET_NAME, NULL);
        g_assert_cmpint(mkdir(xdg, 0700), ==, 0);
        g_assert_cmpint(mkdir(xdg_lockbus, 0755), ==, 0);
        g_assert_cmpint(symlink(bus_socket, xdg_bus), ==, 0);
        g_assert_cmpint(symlink(direct, xdg_socket), ==, 0);
        default_address = g_strconcat("unix:path=", xdg_bus, NULL);

        set_env("LOCKBUS_DIRECT_SOCKET", NULL);
        set_env("DBUS_SYSTEM_BUS_ADDRESS", NULL);
        set_env("XDG_RUNTIME_DIR", xdg);

        /* The default session bus, implied or named: the socket. */
        set_env("DBUS_SESSION_BUS_ADDRESS", NULL);
        l = open_user_ok();
        assert_uses_direct(l, "user, DBUS_SESSION_BUS_ADDRESS unset");
        l = lockbus_unref(l);
        set_env("DBUS_SESSION_BUS_ADDRESS", default_address);
        l = open_user_ok();
        assert_uses_direct(l, "user, DBUS_SESSION_BUS_ADDRESS the default");
        l = lockbus_unref(l);

        /* Another session bus: that bus, never the default socket. */
        set_env("DBUS_SESSION_BUS_ADDRESS", f->bus->address);
        l = open_user_ok();
        assert_uses_bus(l, "user, DBUS_SESSION_BUS_ADDRESS another bus");
        l = lockbus_unref(l);

        /* $LOCKBUS_DIRECT_SOCKET wins either way. */
        set_env("LOCKBUS_DIRECT_SOCKET", direct);
        l = open_user_ok();
        assert_uses_direct(l, "user, another bus, LOCKBUS_DIRECT_SOCKET set");
        l = lockbus_unref(l);
        set_env("LOCKBUS_DIRECT_SOCKET", "");
        set_env("DBUS_SESSION_BUS_ADDRESS", NULL);
        l = open_user_ok();
        assert_uses_bus(l, "user, the default bus, LOCKBUS_DIRECT_SOCKET=\"\"");
        l = lockbus_unref(l);

        /* No daemon socket in the runtime directory: the default bus. */
        set_env("LOCKBUS_DIRECT_SOCKET", NULL);
        g_assert_cmpint(unlink(xdg_socket), ==, 0);
        l = open_user_ok();
        assert_uses_bus(l, "user, no socket in XDG_RUNTIME_DIR");
        l = lockbus_unref(l);

        set_env("DBUS_SESSION_BUS_ADDRESS", NULL);
        set_env("XDG_RUNTIME_DIR", NULL);
}

/* --- Child processes ------------------------------------------------------- */

/* Child side: which path a new system handle takes, as a result line:
 * "direct", "bus", or "error …". No g_assert here (see bus-test.h). */
static char *child_which_path(const char *resource) {
        _cleanup_(lockbus_unrefp) lockbus *l = NULL;
        lockbus_holder *holders = NULL;
        size_t n = 0;
        char *result;
        int r;

        r = lockbus_open_system(&l);
        if (r < 0)
                return g_strdup_printf("error open: %s", g_strerror(-r));
        r = lockbus_lock(l, resource, NULL, NULL);
        if (r >= 0)
                r = lockbus_owner(l, resource, &holders, &n);
        if (r < 0)
                return client_test_format_result(l, r);
        if (n != 1)
                result = g_strdup_printf("error test: %zu holders", n);
        else if (g_str_has_prefix(holders[0].sender, "direct:"))
                result = g_strdup("direct");
        else if (g_str_has_prefix(holders[0].sender, ":"))
                result = g_strdup("bus");
        else
                result = g_strdup_printf("error test: sender '%s'", holders[0].sender);
        lockbus_holders_free(holders, n);
        (void) lockbus_unlock(l, resource);
        return result;
}

typedef struct DefaultsChild {
        const char *bus_socket;         /* DIR/bus.sock */
        const char *direct_socket;      /* DIR/run/.direct.sock */
        const char *bus_address;
} DefaultsChild;

/* In a mount namespace of its own with a tmpfs on /run, where
 * /run/dbus/system_bus_socket leads to the test bus and
 * /run/lockbus/.direct.sock to the test daemon's socket: the system's
 * defaults, seen by the library alone. Sends one line per case, or
 * "skip REASON". */
static int defaults_child(sd_bus *bus, int fd, void *userdata) {
        const DefaultsChild *d = userdata;
        g_autofree char *r1 = NULL, *r2 = NULL, *r3 = NULL;

        if (unshare(CLONE_NEWNS) < 0 ||
            mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
            mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") < 0) {
                test_client_send(fd, "skip no private mount namespace: %s", g_strerror(errno));
                return 0;
        }
        if (mkdir("/run/dbus", 0755) < 0 || mkdir("/run/lockbus", 0755) < 0 ||
            symlink(d->bus_socket, "/run/dbus/system_bus_socket") < 0 ||
            symlink(d->direct_socket, "/run/lockbus/" LOCKBUS_DIRECT_SOCKET_NAME) < 0) {
                test_client_send(fd, "error setup: %s", g_strerror(errno));
                return 2;
        }

        /* Nothing set: the default socket. */
        (void) unsetenv("LOCKBUS_DIRECT_SOCKET");
        (void) unsetenv("DBUS_SYSTEM_BUS_ADDRESS");
        r1 = child_which_path("defaults");
        test_client_send(fd, "%s", r1);

        /* DBUS_SYSTEM_BUS_ADDRESS set: its bus, although the default
         * socket is there. */
        (void) setenv("DBUS_SYSTEM_BUS_ADDRESS", d->bus_address, true);
        r2 = child_which_path("bus-address-set");
        test_client_send(fd, "%s", r2);

        /* "" turns the default socket off. */
        (void) unsetenv("DBUS_SYSTEM_BUS_ADDRESS");
        (void) setenv("LOCKBUS_DIRECT_SOCKET", "", true);
        r3 = child_which_path("direct-off");
        test_client_send(fd, "%s", r3);
        return 0;
}

static void case_direct_library_defaults(TestFixture *f, gconstpointer data) {
        g_autofree char *bus_socket = NULL, *direct_socket = NULL, *out = NULL;
        DefaultsChild d;

        if (test_skip_unless_root())
                return;

        (void) test_bus_activate_daemon(f->bus);
        bus_socket = g_build_filename(f->bus->dir, "bus.sock", NULL);
        direct_socket = test_bus_direct_socket(f->bus);
        d = (DefaultsChild) {
                .bus_socket = bus_socket,
                .direct_socket = direct_socket,
                .bus_address = f->bus->address,
        };
        out = test_bus_run_client(f->bus, geteuid(), CHILD_COMM, defaults_child, &d);
        if (g_str_has_prefix(out, "skip ")) {
                g_test_skip(out + strlen("skip "));
                return;
        }
        g_assert_cmpstr(out, ==, "direct\nbus\nbus");
}

/* Child side of /direct/library/refused, as another uid: fills its quota
 * of direct connections (each proven by a Ping), then opens a handle on
 * the socket. The daemon turns that connection away: the library must
 * use the bus. */
static int refused_child(sd_bus *bus, int fd, void *userdata) {
        const DefaultsChild *d = userdata;
        g_autoptr(GPtrArray) conns = g_ptr_array_new();
        g_autofree char *result = NULL;

        for (unsigned i = 0; i < DIRECT_CONNECTIONS_PER_USER; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                sd_bus *c = NULL;
                int r;

                r = test_direct_connect(d->direct_socket, &c);
                if (r >= 0)
                        r = sd_bus_call_method(c, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus.Peer",
                                               "Ping", &error, NULL, NULL);
                if (r < 0) {
                        g_autofree char *e = test_format_result(r, &error);

                        test_client_send(fd, "error setup: direct connection %u: %s", i, e);
                        return 2;
                }
                g_ptr_array_add(conns, c);
        }

        (void) setenv("DBUS_SYSTEM_BUS_ADDRESS", d->bus_address, true);
        (void) setenv("LOCKBUS_DIRECT_SOCKET", d->direct_socket, true);
        result = child_which_path("refused");
        test_client_send(fd, "%s", result);

        for (guint i = 0; i < conns->len; i++)
                sd_bus_flush_close_unref(conns->pdata[i]);
        return 0;
}

static void case_direct_library_refused(TestFixture *f, gconstpointer data) {
        g_autofree char *direct_socket = NULL, *out = NULL;
        DefaultsChild d;

        if (test_skip_unless_root())
                return;

        (void) test_bus_activate_daemon(f->bus);
        direct_socket = test_bus_direct_socket(f->bus);
        d = (DefaultsChild) {
                .direct_socket = direct_socket,
                .bus_address = f->bus->address,
        };
        out = test_bus_run_client(f->bus, TEST_OTHER_UID, CHILD_COMM, refused_child, &d);
        if (!g_str_equal(out, "bus"))
                g_error("liblockbus as uid %u at its limit of direct connections: expected it to use the bus, "
                        "got \"%s\"", (unsigned) TEST_OTHER_UID, out);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        /* Cases set these; none inherits them. */
        g_unsetenv("LOCKBUS_DIRECT_SOCKET");
        g_unsetenv("DBUS_SESSION_BUS_ADDRESS");

        test_add("/direct/library", case_direct_library);
        test_add("/direct/library/lost", case_direct_library_lost);
        test_add("/direct/library/user", case_direct_library_user);
        test_add("/direct/library/defaults", case_direct_library_defaults);
        test_add("/direct/library/refused", case_direct_library_refused);

        return g_test_run();
}
