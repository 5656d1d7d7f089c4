/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <signal.h>
#include <time.h>

#include "bus-manager.h"
#include "lockbus-names.h"
#include "log.h"
#include "manager.h"
#include "resource-name.h"

static uint64_t now_realtime_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000000U + (uint64_t) ts.tv_nsec / 1000U;
}

static void log_hold(const char *what, const Hold *h) {
        log_info("%s '%s' (%s, %s, token %" PRIu64 ") for uid " UID_FMT " (pid " PID_FMT ", %s, %s).",
                 what, h->resource, lock_mode_to_string(h->mode), hold_scope_to_string(h->scope),
                 h->token, h->uid, h->pid, strempty(h->comm), strempty(h->sender));
}

int manager_acquire(Manager *m, const Peer *caller, const LockRequest *req, const Hold **ret_hold) {
        _cleanup_(hold_freep) Hold *h = NULL;
        const Hold *blocker = NULL;
        int r;

        switch (lock_table_check(m->table, req->resource, req->mode, caller->uid, caller->name, &blocker)) {
        case LOCK_VERDICT_GRANT:
                break;
        case LOCK_VERDICT_CONFLICT:
                *ret_hold = blocker;
                return -EBUSY;
        case LOCK_VERDICT_HELD_BY_CALLER:
                *ret_hold = blocker;
                return -EALREADY;
        }

        h = hold_new();
        h->resource = g_strdup(req->resource);
        h->mode = req->mode;
        h->scope = req->scope;
        h->uid = caller->uid;
        h->pid = caller->pid;
        h->comm = g_strdup(caller->comm);
        h->sender = g_strdup(caller->name);
        h->bus_id = g_strdup(m->bus_id);
        h->since_usec = now_realtime_usec();
        g_free(h->description);
        h->description = g_strdup(strempty(req->description));

        r = token_issuer_next(m->tokens, &h->token);
        if (r < 0)
                return log_error_errno(r, "Failed to reserve fencing tokens in %s: %m",
                                       store_lock_directory(m->store));

        /* Durable before it is answered: all or nothing. */
        r = store_save_hold(m->store, h);
        if (r < 0)
                return log_error_errno(r, "Failed to save hold for '%s': %m", h->resource);

        log_hold("Granted", h);
        *ret_hold = h;
        lock_table_add(m->table, TAKE_PTR(h));
        return 0;
}

int manager_release(Manager *m, Hold *h, const char *reason) {
        int r;

        r = store_remove_hold(m->store, h);
        if (r < 0 && r != -ENOENT) {
                if (hold_is_persistent(h))
                        return log_error_errno(r, "Failed to remove hold file for '%s', keeping the hold: %m",
                                               h->resource);
                log_warning_errno(r, "Failed to remove hold file for '%s', ignoring: %m", h->resource);
        }

        log_hold(reason, h);
        hold_free(lock_table_remove(m->table, h));
        return 0;
}

static void on_peer_gone(const char *name, void *userdata) {
        Manager *m = userdata;
        g_autoptr(GPtrArray) holds = lock_table_holds_of_sender(m->table, name);

        for (guint i = 0; i < holds->len; i++)
                (void) manager_release(m, holds->pdata[i], "Released (connection closed)");
}

/* Puts a hold read from disk back into the table, or drops it. Takes
 * ownership. */
static void manager_restore_hold(Manager *m, Hold *hold, uint64_t now) {
        _cleanup_(hold_freep) Hold *h = hold;
        const Hold *blocker = NULL;
        const char *drop = NULL;
        int r;

        if (h->expires_usec > 0 && h->expires_usec <= now)
                drop = "its TTL expired";
        else if (h->scope == HOLD_SCOPE_FD)
                drop = "its fd did not survive the restart";
        else if (h->scope == HOLD_SCOPE_CONNECTION) {
                if (!h->bus_id || strcmp(h->bus_id, m->bus_id) != 0)
                        drop = "it was acquired on another bus instance";
                else {
                        r = peer_registry_watch(m->peers, h->sender);
                        if (r < 0) {
                                log_warning_errno(r, "Failed to check whether %s is still connected, dropping its hold on '%s': %m",
                                                  h->sender, h->resource);
                                drop = "its connection could not be checked";
                        } else if (r == 0)
                                drop = "its connection is gone";
                }
        }

        /* Files edited by hand could disagree with each other; the earliest
         * grant wins. */
        if (!drop && lock_table_check(m->table, h->resource, h->mode, h->uid, h->sender, &blocker) != LOCK_VERDICT_GRANT)
                drop = "it conflicts with an earlier hold";

        if (drop) {
                log_notice("Dropping hold on '%s' (token %" PRIu64 ", uid " UID_FMT ", %s): %s.",
                           h->resource, h->token, h->uid, strempty(h->sender), drop);
                r = store_remove_hold(m->store, h);
                if (r < 0 && r != -ENOENT)
                        log_warning_errno(r, "Failed to remove hold file for '%s', ignoring: %m", h->resource);
                return;
        }

        log_hold("Restored", h);
        lock_table_add(m->table, TAKE_PTR(h));
}

static int manager_load(Manager *m) {
        g_autoptr(GPtrArray) holds = NULL;
        uint64_t floor = 0, now = now_realtime_usec();
        int r;

        r = store_load_holds(m->store, &holds);
        if (r < 0)
                return log_error_errno(r, "Failed to read holds: %m");

        for (guint i = 0; i < holds->len; i++)
                floor = MAX(floor, ((Hold *) holds->pdata[i])->token);

        r = token_issuer_new(m->store, floor, &m->tokens);
        if (r == -EBADMSG)
                return log_error_errno(r, "The token reservation in %s/tokens is corrupt; refusing to start, "
                                       "fencing tokens could go backwards. Set it to a value above every token "
                                       "ever issued to recover.", store_lock_directory(m->store));
        if (r < 0)
                return log_error_errno(r, "Failed to read the token reservation: %m");

        /* Holds come sorted by token, i.e. in grant order. The array frees
         * what it still has; restore takes each one out of it. */
        for (guint i = 0; i < holds->len; i++)
                manager_restore_hold(m, g_steal_pointer(&holds->pdata[i]), now);

        log_info("Loaded %u locked resources; next fencing token above %" PRIu64 ".",
                 lock_table_resource_count(m->table), token_issuer_last(m->tokens));
        return 0;
}

static int manager_connect_bus(Manager *m, bool user_bus) {
        sd_id128_t id;
        int r;

        /* Honours DBUS_SYSTEM_BUS_ADDRESS / DBUS_SESSION_BUS_ADDRESS. */
        r = user_bus ? sd_bus_open_user(&m->bus) : sd_bus_open_system(&m->bus);
        if (r < 0)
                return log_error_errno(r, "Failed to connect to the %s bus: %m", user_bus ? "user" : "system");

        r = sd_bus_attach_event(m->bus, m->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, "Failed to attach the bus to the event loop: %m");

        r = sd_bus_get_bus_id(m->bus, &id);
        if (r < 0)
                return log_error_errno(r, "Failed to get the bus ID: %m");
        sd_id128_to_string(id, m->bus_id);

        return peer_registry_new(m->bus, on_peer_gone, m, &m->peers);
}

int manager_new(const ManagerConfig *config, Manager **ret) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        m = g_new0(Manager, 1);
        m->table = lock_table_new();

        r = sd_event_default(&m->event);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate the event loop: %m");

        r = manager_connect_bus(m, config->user_bus);
        if (r < 0)
                return r;

        r = store_open(config->lock_directory, config->runtime_directory, &m->store);
        if (r < 0)
                return log_error_errno(r, "Failed to open lock directory %s and runtime directory %s: %m",
                                       config->lock_directory, config->runtime_directory);

        r = manager_load(m);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(m);
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;

        /* Holds are dropped from memory only: their files stay for the next
         * start. */
        m->table = lock_table_free(m->table);
        m->peers = peer_registry_free(m->peers);
        m->tokens = token_issuer_free(m->tokens);
        m->store = store_free(m->store);
        sd_bus_flush_close_unref(m->bus);
        sd_event_unref(m->event);
        g_free(m);
        return NULL;
}

int manager_run(Manager *m) {
        sigset_t mask;
        int r;

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return log_error_errno(errno, "Failed to block signals: %m");

        /* A NULL handler makes the loop exit on the signal. */
        r = sd_event_add_signal(m->event, NULL, SIGTERM, NULL, NULL);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGINT, NULL, NULL);
        if (r < 0)
                return log_error_errno(r, "Failed to watch SIGTERM/SIGINT: %m");

        /* Objects first: a caller activated by the name must find them. */
        r = bus_manager_export(m);
        if (r < 0)
                return r;

        r = sd_bus_request_name(m->bus, LOCKBUS_BUS_NAME, 0);
        if (r < 0)
                return log_error_errno(r, "Failed to acquire the bus name %s: %m", LOCKBUS_BUS_NAME);

        log_info("lockbusd ready on %s; lock directory %s, runtime directory %s.",
                 LOCKBUS_BUS_NAME, store_lock_directory(m->store), store_runtime_directory(m->store));

        r = sd_event_loop(m->event);
        if (r < 0)
                return log_error_errno(r, "Event loop failed: %m");

        log_info("Exiting.");
        return 0;
}
