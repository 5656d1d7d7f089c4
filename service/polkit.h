/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Asks polkit whether a bus peer may do an action, without blocking the
 * event loop: CheckAuthorization with a "system-bus-name" subject, answered
 * through a callback. Fails closed: no polkit on the bus, an error or a
 * malformed answer all mean "not allowed". */

#include <stdbool.h>

#include <systemd/sd-bus.h>

#include "identity.h"

/* allowed: whether the action is authorized. error_message: why not, when
 * polkit could not be asked or answered badly (NULL for a plain "no"). */
typedef void (*PolkitCallback)(bool allowed, const char *error_message, void *userdata);

/* Starts the query for `subject` (a bus peer: its bus name; a direct
 * peer: its process) and `action`. interactive: let polkit ask
 * the user (the caller set the ALLOW_INTERACTIVE_AUTHORIZATION flag).
 * *ret_slot owns the pending call: unreferencing it cancels it (the
 * callback is then not called). */
int polkit_check_async(sd_bus *bus, const Peer *subject, const char *action, bool interactive,
                       PolkitCallback callback, void *userdata, sd_bus_slot **ret_slot);
