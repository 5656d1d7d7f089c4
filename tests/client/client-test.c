/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <string.h>

#include "client-test.h"

lockbus *client_test_open(TestFixture *f) {
        lockbus *l = NULL;
        int r;

        g_assert_true(g_setenv("DBUS_SYSTEM_BUS_ADDRESS", f->bus->address, true));
        r = lockbus_open_system(&l);
        if (r < 0)
                g_error("lockbus_open_system() on %s failed: %s", f->bus->address, g_strerror(-r));
        return l;
}

lockbus *client_test_open_with_call_timeout(TestFixture *f, uint64_t call_timeout_usec) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = test_bus_connect(f->bus);
        lockbus *l = NULL;

        if (call_timeout_usec > 0)
                g_assert_cmpint(sd_bus_set_method_call_timeout(bus, call_timeout_usec), >=, 0);
        g_assert_cmpint(lockbus_open_bus(&l, bus), ==, 0);
        /* The handle keeps its own reference; ours goes without closing. */
        sd_bus_unref(TAKE_PTR(bus));
        return l;
}

void client_test_assert_error(lockbus *l, int r, int expected, const char *name, const char *message,
                              const char *file, int line, const char *func) {
        if (r != expected || g_strcmp0(lockbus_last_error_name(l), name) != 0 ||
            !lockbus_last_error_message(l) ||
            (message && !g_str_equal(lockbus_last_error_message(l), message))) {
                g_autofree char *m = g_strdup_printf(
                        "expected %d (%s) %s: %s, got %d (%s) %s: %s",
                        expected, g_strerror(-expected), name, message ?: "(any message)",
                        r, r < 0 ? g_strerror(-r) : "success", lockbus_last_error_name(l) ?: "(no name)",
                        lockbus_last_error_message(l) ?: "(no message)");
                g_assertion_message(G_LOG_DOMAIN, file, line, func, m);
        }
}

void client_test_assert_ok(lockbus *l, int r, const char *expr, const char *file, int line, const char *func) {
        if (r < 0 || lockbus_last_error_name(l) || lockbus_last_error_message(l)) {
                g_autofree char *m = g_strdup_printf(
                        "%s: %d (%s) %s: %s", expr, r, r < 0 ? g_strerror(-r) : "success",
                        lockbus_last_error_name(l) ?: "(no name)", lockbus_last_error_message(l) ?: "(no message)");
                g_assertion_message(G_LOG_DOMAIN, file, line, func, m);
        }
}

void client_test_run_until(sd_event *event, const unsigned *counter, unsigned target, const char *what) {
        uint64_t deadline = test_now_monotonic() + TEST_TIMEOUT_USEC;

        while (*counter < target) {
                uint64_t n = test_now_monotonic();
                int r;

                if (n >= deadline)
                        g_error("Timed out waiting for %s", what);
                r = sd_event_run(event, deadline - n);
                if (r < 0)
                        g_error("sd_event_run() failed while waiting for %s: %s", what, g_strerror(-r));
        }
}

void client_test_run_idle(sd_event *event) {
        int r;

        while ((r = sd_event_run(event, 0)) > 0)
                ;
        g_assert_cmpint(r, >=, 0);
}

char *client_test_format_result(lockbus *l, int r) {
        if (r >= 0)
                return g_strdup("ok");
        return g_strdup_printf("%d %s: %s", r, lockbus_last_error_name(l) ?: "(no name)",
                               lockbus_last_error_message(l) ?: "(no message)");
}
