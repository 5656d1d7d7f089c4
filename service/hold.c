/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <string.h>

#include <glib.h>

#include "hold.h"

static const char *const lock_mode_table[_LOCK_MODE_MAX] = {
        [LOCK_MODE_EXCLUSIVE] = "exclusive",
        [LOCK_MODE_SHARED] = "shared",
};

static const char *const hold_scope_table[_HOLD_SCOPE_MAX] = {
        [HOLD_SCOPE_CONNECTION] = "connection",
        [HOLD_SCOPE_PERSISTENT] = "persistent",
        [HOLD_SCOPE_FD] = "fd",
};

static int string_table_lookup(const char *const *table, int n, const char *s) {
        if (!s)
                return -EINVAL;
        for (int i = 0; i < n; i++)
                if (table[i] && strcmp(table[i], s) == 0)
                        return i;
        return -EINVAL;
}

const char *lock_mode_to_string(LockMode m) {
        return m >= 0 && m < _LOCK_MODE_MAX ? lock_mode_table[m] : NULL;
}

LockMode lock_mode_from_string(const char *s) {
        return string_table_lookup(lock_mode_table, _LOCK_MODE_MAX, s);
}

const char *hold_scope_to_string(HoldScope s) {
        return s >= 0 && s < _HOLD_SCOPE_MAX ? hold_scope_table[s] : NULL;
}

HoldScope hold_scope_from_string(const char *s) {
        return string_table_lookup(hold_scope_table, _HOLD_SCOPE_MAX, s);
}

Hold *hold_new(void) {
        Hold *h = g_new0(Hold, 1);
        h->description = g_strdup("");
        return h;
}

Hold *hold_free(Hold *h) {
        if (!h)
                return NULL;
        sd_event_source_disable_unref(h->fd_watch);
        sd_event_source_disable_unref(h->expiry_timer);
        g_free(h->resource);
        g_free(h->comm);
        g_free(h->sender);
        g_free(h->bus_id);
        g_free(h->hostname);
        g_free(h->description);
        g_free(h);
        return NULL;
}

void hold_destroy(void *h) {
        hold_free(h);
}
