/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The shape of the service on the bus: what the running lockbusd exports
 * against dbus/io.lockbus1.Manager.xml (every member in both, with the same
 * signatures and argument names; annotations are not compared), its
 * properties, and the real bus policy dbus/io.lockbus1.conf. */

#include <gio/gio.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "bus-test.h"

static const char *const standard_interfaces[] = {
        "org.freedesktop.DBus.Peer",
        "org.freedesktop.DBus.Introspectable",
        "org.freedesktop.DBus.Properties",
        NULL,
};

static void fail(const char *format, ...) _printf_(1, 2);
static void fail(const char *format, ...) {
        g_autofree char *m = NULL;
        va_list ap;

        va_start(ap, format);
        m = g_strdup_vprintf(format, ap);
        va_end(ap);
        g_assertion_message(G_LOG_DOMAIN, __FILE__, __LINE__, G_STRFUNC, m);
}

static size_t n_args(GDBusArgInfo **args) {
        size_t n = 0;

        while (args && args[n])
                n++;
        return n;
}

static void assert_args_equal(const char *member, const char *direction, GDBusArgInfo **live,
                              GDBusArgInfo **xml) {
        size_t n_live = n_args(live), n_xml = n_args(xml);

        if (n_live != n_xml) {
                fail("%s: the daemon has %zu %s arguments, the XML %zu", member, n_live, direction, n_xml);
                return;
        }
        for (size_t i = 0; i < n_live; i++) {
                if (!g_str_equal(live[i]->signature, xml[i]->signature))
                        fail("%s: %s argument %zu has type '%s' on the bus, '%s' in the XML",
                             member, direction, i, live[i]->signature, xml[i]->signature);
                if (g_strcmp0(live[i]->name, xml[i]->name) != 0)
                        fail("%s: %s argument %zu is named '%s' on the bus, '%s' in the XML",
                             member, direction, i, strempty(live[i]->name), strempty(xml[i]->name));
        }
}

static GDBusNodeInfo *parse_node(const char *xml, const char *what) {
        g_autoptr(GError) error = NULL;
        GDBusNodeInfo *node;

        node = g_dbus_node_info_new_for_xml(xml, &error);
        if (!node)
                g_error("Failed to parse %s: %s", what, error->message);
        return node;
}

static char *introspect(sd_bus *bus) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *xml;
        int r;

        r = sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus.Introspectable",
                               "Introspect", &error, &reply, NULL);
        assert_call_ok(r, &error);
        g_assert_cmpint(sd_bus_message_read(reply, "s", &xml), >=, 0);
        return g_strdup(xml);
}

static void test_introspection(TestFixture *f, gconstpointer data) {
        g_autoptr(GDBusNodeInfo) live = NULL, ref = NULL;
        g_autofree char *live_xml = NULL, *ref_xml = NULL, *ref_path = NULL;
        g_autoptr(GError) gerror = NULL;
        GDBusInterfaceInfo *li, *ri;

        ref_path = g_build_filename(g_getenv("LOCKBUS_DBUS_DIR"), "io.lockbus1.Manager.xml", NULL);
        if (!g_file_get_contents(ref_path, &ref_xml, NULL, &gerror))
                g_error("Failed to read %s: %s", ref_path, gerror->message);
        ref = parse_node(ref_xml, ref_path);

        /* The XML describes exactly the manager interface. */
        g_assert_nonnull(ref->interfaces);
        g_assert_nonnull(ref->interfaces[0]);
        g_assert_null(ref->interfaces[1]);
        ri = ref->interfaces[0];
        g_assert_cmpstr(ri->name, ==, LOCKBUS_MANAGER_IFACE);

        live_xml = introspect(f->client);
        live = parse_node(live_xml, "the introspection data of " LOCKBUS_OBJECT_PATH);

        /* No interface beyond the manager and the standard ones (the policy
         * would not let anyone call it anyway). */
        for (GDBusInterfaceInfo **i = live->interfaces; i && *i; i++)
                if (!g_str_equal((*i)->name, LOCKBUS_MANAGER_IFACE) &&
                    !g_strv_contains(standard_interfaces, (*i)->name))
                        fail("%s exports interface %s, which is not part of the contract",
                             LOCKBUS_OBJECT_PATH, (*i)->name);

        li = g_dbus_node_info_lookup_interface(live, LOCKBUS_MANAGER_IFACE);
        if (!li)
                g_error("%s does not export %s:\n%s", LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, live_xml);

        /* What the daemon exports is in the XML, identically. */
        for (GDBusMethodInfo **m = li->methods; m && *m; m++) {
                GDBusMethodInfo *rm = g_dbus_interface_info_lookup_method(ri, (*m)->name);

                if (!rm) {
                        fail("the daemon exports method %s, the XML has no such method", (*m)->name);
                        continue;
                }
                assert_args_equal((*m)->name, "in", (*m)->in_args, rm->in_args);
                assert_args_equal((*m)->name, "out", (*m)->out_args, rm->out_args);
        }
        for (GDBusSignalInfo **s = li->signals; s && *s; s++) {
                GDBusSignalInfo *rs = g_dbus_interface_info_lookup_signal(ri, (*s)->name);

                if (!rs) {
                        fail("the daemon exports signal %s, the XML has no such signal", (*s)->name);
                        continue;
                }
                assert_args_equal((*s)->name, "signal", (*s)->args, rs->args);
        }
        for (GDBusPropertyInfo **p = li->properties; p && *p; p++) {
                GDBusPropertyInfo *rp = g_dbus_interface_info_lookup_property(ri, (*p)->name);

                if (!rp) {
                        fail("the daemon exports property %s, the XML has no such property", (*p)->name);
                        continue;
                }
                if (!g_str_equal((*p)->signature, rp->signature))
                        fail("property %s has type '%s' on the bus, '%s' in the XML",
                             (*p)->name, (*p)->signature, rp->signature);
                if ((*p)->flags != rp->flags)
                        fail("property %s has access flags 0x%x on the bus, 0x%x in the XML",
                             (*p)->name, (unsigned) (*p)->flags, (unsigned) rp->flags);
        }

        /* What the XML has, the daemon exports. (AcquireFd, Refresh and
         * Break came in a later issue than the rest; now that the daemon
         * has them, a missing one is a regression, not work in progress.) */
        for (GDBusMethodInfo **m = ri->methods; m && *m; m++)
                if (!g_dbus_interface_info_lookup_method(li, (*m)->name))
                        fail("the daemon does not export method %s", (*m)->name);
        for (GDBusSignalInfo **s = ri->signals; s && *s; s++)
                if (!g_dbus_interface_info_lookup_signal(li, (*s)->name))
                        fail("the daemon does not export signal %s", (*s)->name);
        for (GDBusPropertyInfo **p = ri->properties; p && *p; p++)
                if (!g_dbus_interface_info_lookup_property(li, (*p)->name))
                        fail("the daemon does not export property %s", (*p)->name);
}

static void test_properties(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *c1 = test_bus_connect(f->bus),
                *c2 = test_bus_connect(f->bus);
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        g_autofree char *version = NULL, *lock_directory = NULL;
        g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
        const char *expected_version = g_getenv("LOCKBUS_VERSION");
        const char *name;
        int r;

        version = test_get_property_s(f->client, "Version");
        g_assert_cmpstr(version, !=, "");
        if (expected_version)
                g_assert_cmpstr(version, ==, expected_version);

        lock_directory = test_get_property_s(f->client, "LockDirectory");
        g_assert_cmpstr(lock_directory, ==, f->bus->lock_dir);

        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 0);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);

        /* LockCount counts resources, not holds. */
        r = test_lock(f->client, "a", NULL, &error);
        assert_call_ok(r, &error);
        r = test_lock(f->client, "b", NULL, &error);
        assert_call_ok(r, &error);
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 2);
        r = test_acquire(c1, "c", &(TestAcquireOptions) { .mode = "shared" }, NULL, &error);
        assert_call_ok(r, &error);
        r = test_acquire(c2, "c", &(TestAcquireOptions) { .mode = "shared" }, NULL, &error);
        assert_call_ok(r, &error);
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 3);
        r = test_unlock(f->client, "a", &error);
        assert_call_ok(r, &error);
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 2);
        r = test_unlock(c1, "c", &error);
        assert_call_ok(r, &error);
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 2);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);

        /* GetAll has the four of them. */
        r = sd_bus_call_method(f->client, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus.Properties",
                               "GetAll", &error, &reply, "s", LOCKBUS_MANAGER_IFACE);
        assert_call_ok(r, &error);
        g_assert_cmpint(sd_bus_message_enter_container(reply, 'a', "{sv}"), >, 0);
        while ((r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
                g_assert_cmpint(sd_bus_message_read(reply, "s", &name), >, 0);
                g_ptr_array_add(names, g_strdup(name));
                g_assert_cmpint(sd_bus_message_skip(reply, "v"), >=, 0);
                g_assert_cmpint(sd_bus_message_exit_container(reply), >=, 0);
        }
        g_assert_cmpint(r, ==, 0);
        g_ptr_array_sort(names, test_compare_strings);
        g_assert_cmpuint(names->len, ==, 4);
        g_assert_cmpstr(names->pdata[0], ==, "LockCount");
        g_assert_cmpstr(names->pdata[1], ==, "LockDirectory");
        g_assert_cmpstr(names->pdata[2], ==, "Version");
        g_assert_cmpstr(names->pdata[3], ==, "WaiterCount");

        /* Read-only. */
        r = sd_bus_call_method(f->client, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus.Properties",
                               "Set", &error, NULL, "ssv", LOCKBUS_MANAGER_IFACE, "LockCount", "u", 7U);
        assert_call_error(r, &error, SD_BUS_ERROR_PROPERTY_READ_ONLY, NULL);
}

static void test_policy(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        static const char *const ops[] = {
                "RequestName " LOCKBUS_BUS_NAME,
                "ListLocks",
                "Ping",
                "Introspect",
                "GetVersion",
                "GetManagedObjects",
                "RequestName " LOCKBUS_BUS_NAME,
                NULL,
        };
        g_autofree char *out = NULL;
        g_auto(GStrv) lines = NULL;
        uint32_t ret;
        int r;

        if (test_skip_unless_root())
                return;

        /* Root may own the name (while no daemon runs)... */
        g_assert_cmpint(test_bus_daemon_pid(f->bus), ==, 0);
        r = sd_bus_call_method(f->client, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "RequestName", &error, &reply, "su", LOCKBUS_BUS_NAME, 0U);
        assert_call_ok(r, &error);
        g_assert_cmpint(sd_bus_message_read(reply, "u", &ret), >, 0);
        g_assert_cmpuint(ret, ==, 1); /* DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER */
        reply = sd_bus_message_unref(reply);
        r = sd_bus_call_method(f->client, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "ReleaseName", &error, NULL, "s", LOCKBUS_BUS_NAME);
        assert_call_ok(r, &error);

        /* ...another user may not, neither before nor after the daemon
         * runs, but may call the manager and the standard interfaces, and
         * nothing else. */
        out = test_bus_run_client(f->bus, TEST_OTHER_UID, "lockbus-child", test_client_run_ops, (void *) ops);
        lines = g_strsplit(out, "\n", -1);
        g_assert_cmpuint(g_strv_length(lines), ==, 7);
        for (size_t i = 0; ops[i]; i++) {
                bool denied = g_str_has_prefix(ops[i], "RequestName") ||
                              g_str_equal(ops[i], "GetManagedObjects");

                if (denied && !g_str_has_prefix(lines[i], "error " SD_BUS_ERROR_ACCESS_DENIED ":"))
                        fail("%s as uid %u: expected AccessDenied from the bus, got: %s",
                             ops[i], (unsigned) TEST_OTHER_UID, lines[i]);
                if (!denied && !g_str_equal(lines[i], "ok"))
                        fail("%s as uid %u: expected it to be allowed, got: %s",
                             ops[i], (unsigned) TEST_OTHER_UID, lines[i]);
        }
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        test_add("/bus/introspection", test_introspection);
        test_add("/bus/properties", test_properties);
        test_add("/bus/policy", test_policy);

        return g_test_run();
}
