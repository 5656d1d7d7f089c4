/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Helpers of the liblockbus tests, on top of the private bus of
 * tests/bus/bus-test.h. Like those, they assert instead of returning
 * errors, except where noted. */

#include <glib.h>
#include <systemd/sd-event.h>

#include "bus-test.h"
#include "lockbus.h"

G_DEFINE_AUTOPTR_CLEANUP_FUNC(lockbus, lockbus_unref)

#define USEC_PER_MSEC 1000U
#define USEC_PER_SEC (1000U * USEC_PER_MSEC)

/* lockbus_open_system() on the fixture's bus (it sets
 * DBUS_SYSTEM_BUS_ADDRESS to the bus's address). */
lockbus *client_test_open(TestFixture *f);

/* A handle on a new connection (lockbus_open_bus()) whose default method
 * call timeout is call_timeout_usec (0: TEST_TIMEOUT_USEC). */
lockbus *client_test_open_with_call_timeout(TestFixture *f, uint64_t call_timeout_usec);

/* Fails unless r is `expected` (a negative errno) and the handle's last
 * error is `name` with `message` (message NULL: any non-NULL message). */
#define assert_lockbus_error(l, r, expected, name, message)                             \
        client_test_assert_error((l), (r), (expected), (name), (message), __FILE__, __LINE__, G_STRFUNC)
void client_test_assert_error(lockbus *l, int r, int expected, const char *name, const char *message,
                              const char *file, int line, const char *func);

/* Fails with the handle's last error unless r >= 0; a success leaves no
 * last error behind. */
#define assert_lockbus_ok(l, r) client_test_assert_ok((l), (r), #r, __FILE__, __LINE__, G_STRFUNC)
void client_test_assert_ok(lockbus *l, int r, const char *expr, const char *file, int line, const char *func);

/* Runs `event` until *counter reaches `target`, at most TEST_TIMEOUT_USEC. */
void client_test_run_until(sd_event *event, const unsigned *counter, unsigned target, const char *what);
/* Runs `event` until it has nothing left to do right now. */
void client_test_run_idle(sd_event *event);

/* "ok" or "ERRNO NAME: MESSAGE" (ERRNO the negative number), the way child
 * processes report a call of the library. */
char *client_test_format_result(lockbus *l, int r);
