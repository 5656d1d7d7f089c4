/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The io.lockbus1.Error.* names mapped to errno values, so that a client's
 * sd-bus call returns e.g. -EBUSY for AlreadyLocked.
 *
 *   AlreadyLocked   EBUSY          NotLocked       ENOENT
 *   NotOwner        EPERM          Timeout         ETIMEDOUT
 *   InvalidResource EINVAL         QuotaExceeded   EDQUOT
 *   Storage         EIO
 */

#include <systemd/sd-bus.h>

extern const sd_bus_error_map lockbus_error_map[];

/* Registers lockbus_error_map with sd-bus (idempotent). */
int lockbus_error_map_register(void);
