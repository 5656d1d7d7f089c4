/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The fixed names of the bus contract (see DESIGN.md). The daemon, the
 * library and the tests all take them from here. */

#define LOCKBUS_BUS_NAME        "io.lockbus1"
#define LOCKBUS_OBJECT_PATH     "/io/lockbus1"
#define LOCKBUS_MANAGER_IFACE   "io.lockbus1.Manager"

#define LOCKBUS_ERROR_ALREADY_LOCKED    "io.lockbus1.Error.AlreadyLocked"
#define LOCKBUS_ERROR_NOT_LOCKED        "io.lockbus1.Error.NotLocked"
#define LOCKBUS_ERROR_NOT_OWNER         "io.lockbus1.Error.NotOwner"
#define LOCKBUS_ERROR_TIMEOUT           "io.lockbus1.Error.Timeout"
#define LOCKBUS_ERROR_INVALID_RESOURCE  "io.lockbus1.Error.InvalidResource"
#define LOCKBUS_ERROR_QUOTA_EXCEEDED    "io.lockbus1.Error.QuotaExceeded"
#define LOCKBUS_ERROR_STORAGE           "io.lockbus1.Error.Storage"

#define LOCKBUS_POLKIT_ACTION_BREAK     "io.lockbus1.break"

/* The daemon's direct (peer-to-peer) socket in its runtime directory. It
 * starts with '.', so the store never takes it for a hold file. */
#define LOCKBUS_DIRECT_SOCKET_NAME      ".direct.sock"

/* Limits of the contract. */
#define LOCKBUS_RESOURCE_MAX            255U    /* bytes */
#define LOCKBUS_DESCRIPTION_MAX         1024U   /* bytes */
