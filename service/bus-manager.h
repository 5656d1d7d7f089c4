/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* io.lockbus1.Manager on /io/lockbus1: translates method calls into Manager
 * operations and their results into replies and bus errors. Validation and
 * authorization happen here, before any state changes. */

#include <systemd/sd-bus.h>

typedef struct Manager Manager;

/* Exports the manager on the bus connection... */
int bus_manager_export(Manager *m);
/* ...and on a direct (peer-to-peer) connection. */
int bus_manager_export_on(Manager *m, sd_bus *bus);
