/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdlib.h>

#include "macro.h"
#include "polkit.h"

#define POLKIT_CHECK_AUTHORIZATION_FLAGS_ALLOW_USER_INTERACTION 1U

typedef struct PolkitQuery {
        PolkitCallback callback;
        void *userdata;
} PolkitQuery;

static int on_check_authorization_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        PolkitQuery *q = userdata;
        const sd_bus_error *e;
        int authorized = false, challenge = false, r;

        e = sd_bus_message_get_error(reply);
        if (e) {
                q->callback(false, e->message ?: e->name, q->userdata);
                return 0;
        }

        r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
        if (r >= 0)
                r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
        if (r < 0) {
                q->callback(false, "malformed reply from polkit", q->userdata);
                return 0;
        }

        q->callback(authorized, NULL, q->userdata);
        return 0;
}

int polkit_check_async(sd_bus *bus, const Peer *subject, const char *action, bool interactive,
                       PolkitCallback callback, void *userdata, sd_bus_slot **ret_slot) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = NULL;
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        PolkitQuery *q;
        int r;

        r = sd_bus_message_new_method_call(bus, &call, "org.freedesktop.PolicyKit1",
                                           "/org/freedesktop/PolicyKit1/Authority",
                                           "org.freedesktop.PolicyKit1.Authority", "CheckAuthorization");
        if (r < 0)
                return r;

        /* A direct peer has no bus name; polkit finds the process's start
         * time itself (start-time 0), as pkcheck does. */
        if (subject->direct)
                r = sd_bus_message_append(call, "(sa{sv})", "unix-process", 3,
                                          "pid", "u", (uint32_t) subject->pid,
                                          "start-time", "t", UINT64_C(0),
                                          "uid", "i", (int32_t) subject->uid);
        else
                r = sd_bus_message_append(call, "(sa{sv})", "system-bus-name", 1, "name", "s", subject->name);
        if (r < 0)
                return r;

        r = sd_bus_message_append(call, "sa{ss}us",
                                  action,
                                  0,
                                  interactive ? POLKIT_CHECK_AUTHORIZATION_FLAGS_ALLOW_USER_INTERACTION : 0U,
                                  "");
        if (r < 0)
                return r;

        q = malloc(sizeof(PolkitQuery));
        if (!q)
                return -ENOMEM;
        *q = (PolkitQuery) { .callback = callback, .userdata = userdata };

        /* An interactive check waits for a human: no call timeout then. */
        r = sd_bus_call_async(bus, &slot, call, on_check_authorization_reply, q, interactive ? UINT64_MAX : 0);
        if (r < 0) {
                free(q);
                return r;
        }
        r = sd_bus_slot_set_destroy_callback(slot, free);
        if (r < 0) {
                free(q);
                return r;
        }

        *ret_slot = TAKE_PTR(slot);
        return 0;
}
