/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* io.lockbus1.Manager on /io/lockbus1: translates method calls into Manager
 * operations and their results into replies and bus errors. Validation and
 * authorization happen here, before any state changes. */

typedef struct Manager Manager;

int bus_manager_export(Manager *m);
