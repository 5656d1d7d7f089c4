/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>

#include "bus-errors.h"
#include "lockbus-names.h"

const sd_bus_error_map lockbus_error_map[] = {
        SD_BUS_ERROR_MAP(LOCKBUS_ERROR_ALREADY_LOCKED,   EBUSY),
        SD_BUS_ERROR_MAP(LOCKBUS_ERROR_NOT_LOCKED,       ENOENT),
        SD_BUS_ERROR_MAP(LOCKBUS_ERROR_NOT_OWNER,        EPERM),
        SD_BUS_ERROR_MAP(LOCKBUS_ERROR_TIMEOUT,          ETIMEDOUT),
        SD_BUS_ERROR_MAP(LOCKBUS_ERROR_INVALID_RESOURCE, EINVAL),
        SD_BUS_ERROR_MAP(LOCKBUS_ERROR_QUOTA_EXCEEDED,   EDQUOT),
        SD_BUS_ERROR_MAP(LOCKBUS_ERROR_STORAGE,          EIO),
        SD_BUS_ERROR_MAP_END
};

int lockbus_error_map_register(void) {
        /* sd-bus keeps a list of registered maps and ignores a map it already has. */
        return sd_bus_error_add_map(lockbus_error_map);
}
