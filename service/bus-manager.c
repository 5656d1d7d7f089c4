/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdarg.h>
#include <string.h>

#include "bus-manager.h"
#include "cluster-backend.h"
#include "lockbus-names.h"
#include "log.h"
#include "manager.h"
#include "polkit.h"
#include "resource-name.h"

#include "config.h"

/* The options of Acquire/AcquireFd, as parsed from a{sv}. */
typedef struct AcquireOptions {
        LockMode mode;
        HoldScope scope;
        uint64_t timeout_usec;
        uint64_t ttl_usec;
        char *description;
} AcquireOptions;

static void acquire_options_done(AcquireOptions *o) {
        free(o->description);
}

static int bus_error_invalid_option(sd_bus_error *error, const char *name, const char *fmt_reason, const char *value) {
        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Invalid option '%s': %s%s%s", name,
                                 fmt_reason, value ? " " : "", strempty(value));
}

/* Enters the variant of option `name` if it holds `type`, else fails naming
 * the option. */
static int enter_option_variant(sd_bus_message *message, const char *name, const char *type, sd_bus_error *error) {
        const char *contents;
        int r;

        r = sd_bus_message_peek_type(message, NULL, &contents);
        if (r < 0)
                return r;
        if (!streq(contents, type))
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Invalid option '%s': expected a variant of type '%s', got '%s'",
                                         name, type, contents);
        return sd_bus_message_enter_container(message, 'v', type);
}

static int read_string_option(sd_bus_message *message, const char *name, const char **ret, sd_bus_error *error) {
        int r;

        r = enter_option_variant(message, name, "s", error);
        if (r < 0)
                return r;
        r = sd_bus_message_read_basic(message, 's', ret);
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(message);
}

static int read_u64_option(sd_bus_message *message, const char *name, uint64_t *ret, sd_bus_error *error) {
        int r;

        r = enter_option_variant(message, name, "t", error);
        if (r < 0)
                return r;
        r = sd_bus_message_read_basic(message, 't', ret);
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(message);
}

static int parse_one_option(sd_bus_message *message, const char *name, bool allow_scope,
                            AcquireOptions *o, sd_bus_error *error) {
        const char *s;
        int r;

        if (streq(name, "mode")) {
                r = read_string_option(message, name, &s, error);
                if (r < 0)
                        return r;
                o->mode = lock_mode_from_string(s);
                if (o->mode < 0)
                        return bus_error_invalid_option(error, name, "expected 'exclusive' or 'shared', got", s);

        } else if (streq(name, "scope") && allow_scope) {
                r = read_string_option(message, name, &s, error);
                if (r < 0)
                        return r;
                o->scope = hold_scope_from_string(s);
                if (!IN_SET(o->scope, HOLD_SCOPE_CONNECTION, HOLD_SCOPE_PERSISTENT))
                        return bus_error_invalid_option(error, name, "expected 'connection' or 'persistent', got", s);

        } else if (streq(name, "timeout"))
                return read_u64_option(message, name, &o->timeout_usec, error);

        else if (streq(name, "ttl"))
                return read_u64_option(message, name, &o->ttl_usec, error);

        else if (streq(name, "description")) {
                r = read_string_option(message, name, &s, error);
                if (r < 0)
                        return r;
                if (strlen(s) > LOCKBUS_DESCRIPTION_MAX)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Invalid option 'description': longer than %u bytes",
                                                 LOCKBUS_DESCRIPTION_MAX);
                free(o->description);
                o->description = strdup(s);
                if (!o->description)
                        return -ENOMEM;

        } else
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Unknown option '%s'", name);

        return 0;
}

static int parse_acquire_options(sd_bus_message *message, bool allow_scope, AcquireOptions *o, sd_bus_error *error) {
        g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        int r;

        r = sd_bus_message_enter_container(message, 'a', "{sv}");
        if (r < 0)
                return r;

        while ((r = sd_bus_message_enter_container(message, 'e', "sv")) > 0) {
                const char *name;

                r = sd_bus_message_read_basic(message, 's', &name);
                if (r < 0)
                        return r;
                if (!g_hash_table_add(seen, g_strdup(name)))
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Option '%s' given twice", name);

                r = parse_one_option(message, name, allow_scope, o, error);
                if (r < 0)
                        return r;

                r = sd_bus_message_exit_container(message);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;

        return sd_bus_message_exit_container(message);
}

static int read_resource(sd_bus_message *message, const char **ret, sd_bus_error *error) {
        const char *resource;
        int r;

        r = sd_bus_message_read(message, "s", &resource);
        if (r < 0)
                return r;
        if (!resource_name_is_valid(resource))
                return sd_bus_error_set(error, LOCKBUS_ERROR_INVALID_RESOURCE,
                                        "Invalid resource name: it must be 1-255 bytes of UTF-8 "
                                        "without control characters");
        *ret = resource;
        return 0;
}

static int get_caller(Manager *m, sd_bus_message *message, const Peer **ret, sd_bus_error *error) {
        int r;

        r = peer_registry_get_sender(m->peers, message, ret);
        if (r < 0) {
                log_warning_errno(r, "Failed to get the credentials of %s: %m",
                                  strempty(sd_bus_message_get_sender(message)));
                return sd_bus_error_set_errnof(error, r, "Failed to determine the caller's identity: %m");
        }
        return 0;
}

/* The preamble of every call on a resource: its name, then the caller. */
static int read_resource_and_caller(Manager *m, sd_bus_message *message, const char **ret_resource,
                                    const Peer **ret_caller, sd_bus_error *error) {
        int r;

        r = read_resource(message, ret_resource, error);
        if (r < 0)
                return r;
        return get_caller(m, message, ret_caller, error);
}

static const char *directory_of_scope(Manager *m, HoldScope scope) {
        return scope == HOLD_SCOPE_PERSISTENT ? store_lock_directory(m->store) : store_runtime_directory(m->store);
}

static int set_error_storage(sd_bus_error *error, const char *failed_to, const char *resource,
                             const char *directory, int r) {
        return sd_bus_error_setf(error, LOCKBUS_ERROR_STORAGE, "Failed to %s the lock on '%s' in %s: %s",
                                 failed_to, resource, directory, strerror(-r));
}

static void log_refusal(const Peer *caller, const char *method, const sd_bus_error *error) {
        log_info("Refused %s from uid " UID_FMT " (pid " PID_FMT ", %s, %s): %s",
                 method, caller->uid, caller->pid, caller->comm, caller->name, error->message);
}

static int set_error_locked_by(sd_bus_error *error, const char *resource, const Hold *holder) {
        if (!holder)
                /* Nobody holds it, but others wait for it and come first. */
                return sd_bus_error_setf(error, LOCKBUS_ERROR_ALREADY_LOCKED,
                                         "Resource '%s' already locked: other callers are queued for it", resource);
        return sd_bus_error_setf(error, LOCKBUS_ERROR_ALREADY_LOCKED,
                                 "Resource '%s' already locked by uid " UID_FMT " (pid " PID_FMT ", %s)%s%s",
                                 resource, holder->uid, holder->pid, strempty(holder->comm),
                                 holder->hostname ? " on host " : "", strempty(holder->hostname));
}

static int reply_granted(sd_bus_message *message, const AcquireRequest *req, uint64_t token, int fd) {
        if (req->scope == HOLD_SCOPE_FD)
                return sd_bus_reply_method_return(message, "ht", fd, token);
        return sd_bus_reply_method_return(message, "t", token);
}

/* Answers an Acquire, AcquireFd or Lock call, at once or after waiting. */
static void on_acquire_done(AcquireRequest *req, int result, const Hold *hold, uint64_t token, int fd) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *message = req->userdata;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        Manager *m = req->manager;
        int r;

        switch (result) {
        case 0:
                r = reply_granted(message, req, token, fd);
                if (r < 0)
                        /* The hold stays: its owner finds it with Owner, and a
                         * connection or fd hold ends with its owner anyway. */
                        log_warning_errno(r, "Failed to send the grant of '%s' to %s: %m",
                                          req->resource, req->caller.name);
                return;

        case -ECONNRESET:
                return; /* the caller is gone */

        case -EBUSY:
        case -EALREADY:
                set_error_locked_by(&error, req->resource, hold);
                break;

        case -ETIMEDOUT:
                if (hold)
                        sd_bus_error_setf(&error, LOCKBUS_ERROR_TIMEOUT,
                                          "Timed out waiting for resource '%s', locked by uid " UID_FMT
                                          " (pid " PID_FMT ", %s)%s%s",
                                          req->resource, hold->uid, hold->pid, strempty(hold->comm),
                                          hold->hostname ? " on host " : "", strempty(hold->hostname));
                else
                        sd_bus_error_setf(&error, LOCKBUS_ERROR_TIMEOUT,
                                          "Timed out waiting for resource '%s'", req->resource);
                break;

        case -EDQUOT:
                sd_bus_error_setf(&error, LOCKBUS_ERROR_QUOTA_EXCEEDED,
                                  "Resource '%s' not granted: uid " UID_FMT " is at its limit of %u locks "
                                  "and %u waiting calls",
                                  req->resource, req->caller.uid, m->max_locks_per_user, m->max_waiters_per_user);
                break;

        case -ESHUTDOWN:
                sd_bus_error_setf(&error, SD_BUS_ERROR_FAILED,
                                  "Resource '%s' not granted: lockbusd is exiting, try again", req->resource);
                break;

        case -EIO:
                if (req->storage_message)
                        sd_bus_error_setf(&error, LOCKBUS_ERROR_STORAGE, "Failed to store the lock on '%s' in %s: %s",
                                          req->resource, req->storage_where, req->storage_message);
                else
                        set_error_storage(&error, "store", req->resource, req->storage_where, req->storage_error);
                break;

        default:
                /* Not an outcome the manager gives; say so rather than guess. */
                sd_bus_error_set_errnof(&error, result, "Failed to lock '%s': %m", req->resource);
        }

        log_refusal(&req->caller, "lock", &error);
        r = sd_bus_reply_method_error(message, &error);
        if (r < 0)
                log_debug_errno(r, "Failed to send an error reply to %s: %m", req->caller.name);
}

/* Hands a request to the manager; the answer comes through
 * on_acquire_done(), now or after waiting. */
static int submit_request(Manager *m, sd_bus_message *message, AcquireRequest *req) {
        req->done = on_acquire_done;
        req->userdata = sd_bus_message_ref(message);
        manager_submit(m, req);
        return 1;
}

static int method_lock(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        AcquireRequest *req;
        const Peer *caller;
        const char *resource;
        int r;

        r = read_resource_and_caller(m, message, &resource, &caller, error);
        if (r < 0)
                return r;

        req = acquire_request_new(caller, resource);
        req->mode = LOCK_MODE_EXCLUSIVE;
        req->scope = HOLD_SCOPE_PERSISTENT;
        return submit_request(m, message, req);
}

static int acquire_common(sd_bus_message *message, Manager *m, bool fd_hold, sd_bus_error *error) {
        _cleanup_(acquire_options_done) AcquireOptions o = {
                .mode = LOCK_MODE_EXCLUSIVE,
                .scope = fd_hold ? HOLD_SCOPE_FD : HOLD_SCOPE_CONNECTION,
        };
        AcquireRequest *req;
        const Peer *caller;
        const char *resource;
        int r;

        r = read_resource(message, &resource, error);
        if (r < 0)
                return r;
        if (fd_hold && sd_bus_can_send(sd_bus_message_get_bus(message), 'h') <= 0)
                return sd_bus_error_set(error, SD_BUS_ERROR_NOT_SUPPORTED,
                                        "AcquireFd needs a connection that passes file descriptors");
        r = parse_acquire_options(message, /* allow_scope= */ !fd_hold, &o, error);
        if (r < 0)
                return r;
        r = get_caller(m, message, &caller, error);
        if (r < 0)
                return r;

        req = acquire_request_new(caller, resource);
        req->mode = o.mode;
        req->scope = o.scope;
        req->timeout_usec = o.timeout_usec;
        req->ttl_usec = o.ttl_usec;
        if (o.description) {
                g_free(req->description);
                req->description = g_strdup(o.description);
        }
        return submit_request(m, message, req);
}

static int method_acquire(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        return acquire_common(message, userdata, /* fd_hold= */ false, error);
}

static int method_acquire_fd(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        return acquire_common(message, userdata, /* fd_hold= */ true, error);
}

/* Finds the caller's own hold on `resource` for Unlock and Refresh, or sets
 * NotLocked / NotOwner. */
static int find_callers_hold(Manager *m, const char *resource, const Peer *caller, const char *method,
                             const char *verb_participle, Hold **ret, sd_bus_error *error) {
        const GQueue *holds;
        Hold *h = NULL;

        h = lock_table_find_owned(m->table, resource, caller->uid, caller->name);
        if (h) {
                *ret = h;
                return 0;
        }

        holds = lock_table_get_holds(m->table, resource);
        if (!holds)
                sd_bus_error_setf(error, LOCKBUS_ERROR_NOT_LOCKED, "Resource '%s' not locked", resource);
        else {
                const Hold *first = holds->head->data;

                sd_bus_error_setf(error, LOCKBUS_ERROR_NOT_OWNER,
                                  "Resource '%s' locked by uid " UID_FMT " cannot be %s by uid " UID_FMT,
                                  resource, first->uid, verb_participle, caller->uid);
        }
        log_refusal(caller, method, error);
        return -sd_bus_error_get_errno(error);
}

/* ---- cluster mode: calls answered when etcd has ------------------------------------ */

/* A call on a resource waiting for etcd. */
typedef struct ClusterCall {
        sd_bus_message *message;
        char *resource;
        Peer caller;
        const char *method;             /* for the log: "unlock", … */
        const char *verb_participle;    /* "unlocked", … */
} ClusterCall;

static ClusterCall *cluster_call_new(sd_bus_message *message, const char *resource, const Peer *caller,
                                     const char *method, const char *verb_participle) {
        ClusterCall *c = g_new0(ClusterCall, 1);

        c->message = sd_bus_message_ref(message);
        c->resource = g_strdup(resource);
        c->caller = peer_copy(caller);
        c->method = method;
        c->verb_participle = verb_participle;
        return c;
}

static void cluster_call_free(ClusterCall *c) {
        sd_bus_message_unref(c->message);
        g_free(c->resource);
        peer_done(&c->caller);
        g_free(c);
}

/* Answers c with error (set) and frees it. */
static void cluster_call_fail(ClusterCall *c, sd_bus_error *error) {
        int r;

        log_refusal(&c->caller, c->method, error);
        r = sd_bus_reply_method_error(c->message, error);
        if (r < 0)
                log_debug_errno(r, "Failed to answer %s: %m", c->caller.name);
        cluster_call_free(c);
}

/* Answers c with a method return of `types` (NULL: none) and frees it. */
static void cluster_call_reply(ClusterCall *c, const char *types, ...) {
        va_list ap;
        int r;

        va_start(ap, types);
        r = sd_bus_reply_method_returnv(c->message, types, ap);
        va_end(ap);
        if (r < 0)
                log_debug_errno(r, "Failed to answer %s: %m", c->caller.name);
        cluster_call_free(c);
}

static void cluster_call_fail_etcd(Manager *m, ClusterCall *c, const char *failed_to, int error,
                                   const char *error_message) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;

        if (c->resource)
                sd_bus_error_setf(&e, LOCKBUS_ERROR_STORAGE, "Failed to %s the lock on '%s' in %s: %s", failed_to,
                                  c->resource, cluster_backend_where(m->cluster), error_message ?: strerror(-error));
        else
                sd_bus_error_setf(&e, LOCKBUS_ERROR_STORAGE, "Failed to %s the locks in %s: %s", failed_to,
                                  cluster_backend_where(m->cluster), error_message ?: strerror(-error));
        cluster_call_fail(c, &e);
}

/* NotLocked, for the call's resource. */
static void cluster_call_fail_not_locked(ClusterCall *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;

        sd_bus_error_setf(&e, LOCKBUS_ERROR_NOT_LOCKED, "Resource '%s' not locked", c->resource);
        cluster_call_fail(c, &e);
}

static void on_cluster_not_owned(Manager *m, int error, const char *error_message, GPtrArray *holds,
                                 void *userdata) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        ClusterCall *c = userdata;
        const Hold *first;

        if (error < 0)
                return cluster_call_fail_etcd(m, c, "read", error, error_message);

        if (holds->len == 0)
                return cluster_call_fail_not_locked(c);
        first = holds->pdata[0];
        sd_bus_error_setf(&e, LOCKBUS_ERROR_NOT_OWNER,
                          "Resource '%s' locked by uid " UID_FMT "%s%s cannot be %s by uid " UID_FMT,
                          c->resource, first->uid, first->hostname ? " on host " : "", strempty(first->hostname),
                          c->verb_participle, c->caller.uid);
        cluster_call_fail(c, &e);
}

/* Cluster mode: the caller's own hold is in the table; if it has none,
 * etcd tells NotLocked from NotOwner. Returns 1 with *ret set, or 0 when
 * the call is answered later. */
static int cluster_find_callers_hold(Manager *m, sd_bus_message *message, const char *resource, const Peer *caller,
                                     const char *method, const char *verb_participle, Hold **ret) {
        Hold *h = lock_table_find_owned(m->table, resource, caller->uid, caller->name);

        if (h) {
                *ret = h;
                return 1;
        }
        cluster_backend_query(m->cluster, resource, on_cluster_not_owned,
                              cluster_call_new(message, resource, caller, method, verb_participle));
        return 0;
}

/* Answers an Unlock or Refresh of the caller's hold that failed (failed_to:
 * "remove", "refresh"). */
static void cluster_call_fail_hold(Manager *m, ClusterCall *c, const char *failed_to, int error,
                                   const char *error_message) {
        /* It was not the caller's any more: say whose it is. */
        if (error == -ENOENT)
                return cluster_backend_query(m->cluster, c->resource, on_cluster_not_owned, c);
        /* The caller's own earlier Unlock took it away. */
        if (error == -ENOLCK)
                return cluster_call_fail_not_locked(c);
        cluster_call_fail_etcd(m, c, failed_to, error, error_message);
}

static void on_cluster_unlocked(Manager *m, int error, const char *error_message, void *userdata) {
        ClusterCall *c = userdata;

        if (error < 0)
                return cluster_call_fail_hold(m, c, "remove", error, error_message);
        cluster_call_reply(c, NULL);
}

static int cluster_unlock(Manager *m, sd_bus_message *message, const char *resource, const Peer *caller) {
        Hold *h;

        if (cluster_find_callers_hold(m, message, resource, caller, "unlock", "unlocked", &h) > 0)
                cluster_backend_unlock(m->cluster, h, caller->name, on_cluster_unlocked,
                                       cluster_call_new(message, resource, caller, "unlock", "unlocked"));
        return 1;
}

static void on_cluster_refreshed(Manager *m, int error, const char *error_message, uint64_t expires_usec,
                                 void *userdata) {
        ClusterCall *c = userdata;

        if (error < 0)
                return cluster_call_fail_hold(m, c, "refresh", error, error_message);
        cluster_call_reply(c, "t", expires_usec);
}

static int cluster_refresh(Manager *m, sd_bus_message *message, const char *resource, const Peer *caller) {
        Hold *h;

        if (cluster_find_callers_hold(m, message, resource, caller, "refresh", "refreshed", &h) > 0)
                cluster_backend_refresh(m->cluster, h, on_cluster_refreshed,
                                        cluster_call_new(message, resource, caller, "refresh", "refreshed"));
        return 1;
}

static void on_cluster_broken(Manager *m, int n_or_error, const char *error_message, void *userdata) {
        ClusterCall *c = userdata;

        if (n_or_error < 0)
                return cluster_call_fail_etcd(m, c, "break", n_or_error, error_message);
        if (n_or_error == 0)
                return cluster_call_fail_not_locked(c);
        cluster_call_reply(c, NULL);
}

static void on_change_committed(Manager *m, int error, void *userdata) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *message = userdata;
        int r;

        if (error < 0)
                r = sd_bus_reply_method_errorf(message, LOCKBUS_ERROR_STORAGE,
                                               "Failed to make the change durable in %s: %s",
                                               store_lock_directory(m->store), strerror(-error));
        else
                r = sd_bus_reply_method_return(message, NULL);
        if (r < 0)
                log_debug_errno(r, "Failed to answer %s: %m", strempty(sd_bus_message_get_sender(message)));
}

/* Answers a call that released holds once the release is durable (the
 * group commit), so that an acknowledged unlock never comes back. A call
 * that expects no answer (lockbus_unlock_nowait()) does not hurry the
 * commit: the release becomes durable with the next one. */
static int reply_after_commit(Manager *m, sd_bus_message *message) {
        if (!sd_bus_message_get_expect_reply(message))
                return 1;
        manager_after_commit(m, on_change_committed, sd_bus_message_ref(message));
        return 1;
}

static int method_unlock(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const Peer *caller;
        const char *resource;
        Hold *h = NULL;
        int r;

        r = read_resource_and_caller(m, message, &resource, &caller, error);
        if (r < 0)
                return r;
        if (m->cluster)
                return cluster_unlock(m, message, resource, caller);
        r = find_callers_hold(m, resource, caller, "unlock", "unlocked", &h, error);
        if (r < 0)
                return r;

        r = manager_release(m, h, "Released (unlocked)", /* by_owner= */ true);
        if (r < 0) {
                set_error_storage(error, "remove", resource, directory_of_scope(m, h->scope), r);
                log_refusal(caller, "unlock", error);
                return r;
        }

        return reply_after_commit(m, message);
}

static int method_refresh(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const Peer *caller;
        const char *resource;
        uint64_t expires;
        Hold *h = NULL;
        int r;

        r = read_resource_and_caller(m, message, &resource, &caller, error);
        if (r < 0)
                return r;
        if (m->cluster)
                return cluster_refresh(m, message, resource, caller);
        r = find_callers_hold(m, resource, caller, "refresh", "refreshed", &h, error);
        if (r < 0)
                return r;

        r = manager_refresh(m, h, &expires);
        if (r < 0) {
                set_error_storage(error, "refresh", resource, directory_of_scope(m, h->scope), r);
                log_refusal(caller, "refresh", error);
                return r;
        }

        return sd_bus_reply_method_return(message, "t", expires);
}

/* Breaks `resource` for an authorized caller and answers the call. */
static int break_and_reply(Manager *m, sd_bus_message *message, const char *resource, const Peer *caller) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        if (m->cluster) {
                log_notice("Breaking '%s' for uid " UID_FMT " (pid " PID_FMT ", %s, %s).",
                           resource, caller->uid, caller->pid, caller->comm, caller->name);
                cluster_backend_break(m->cluster, resource, on_cluster_broken,
                                      cluster_call_new(message, resource, caller, "break", "broken"));
                return 1;
        }

        if (!lock_table_get_holds(m->table, resource)) {
                sd_bus_error_setf(&error, LOCKBUS_ERROR_NOT_LOCKED, "Resource '%s' not locked", resource);
                log_refusal(caller, "break", &error);
                return sd_bus_reply_method_error(message, &error);
        }

        log_notice("Breaking '%s' for uid " UID_FMT " (pid " PID_FMT ", %s, %s).",
                   resource, caller->uid, caller->pid, caller->comm, caller->name);
        r = manager_break(m, resource);
        if (r < 0) {
                set_error_storage(&error, "break", resource, store_lock_directory(m->store), r);
                log_refusal(caller, "break", &error);
                return sd_bus_reply_method_error(message, &error);
        }

        return reply_after_commit(m, message);
}

/* A Break waiting for polkit's answer. Owned by m->pending_calls. */
typedef struct PendingBreak {
        Manager *manager;
        sd_bus_message *message;
        char *resource;
        Peer caller;
        sd_bus_slot *slot;
} PendingBreak;

static void pending_break_free(void *p) {
        PendingBreak *b = p;

        if (!b)
                return;
        sd_bus_slot_unref(b->slot);
        sd_bus_message_unref(b->message);
        g_free(b->resource);
        peer_done(&b->caller);
        g_free(b);
}

static void on_break_authorized(bool allowed, const char *error_message, void *userdata) {
        PendingBreak *b = userdata;
        Manager *m = b->manager;
        int r;

        if (!peer_registry_contains(m->peers, b->caller.name)) {
                /* It left while polkit decided (its disconnect was handled
                 * before this answer): a break nobody waits for is not
                 * carried out. */
                log_info("Not breaking '%s': %s (uid " UID_FMT ") left while polkit decided.",
                         b->resource, b->caller.name, b->caller.uid);
                r = 0;
        } else if (allowed)
                r = break_and_reply(m, b->message, b->resource, &b->caller);
        else {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;

                sd_bus_error_setf(&error, SD_BUS_ERROR_ACCESS_DENIED,
                                  "Breaking the lock on resource '%s' is not allowed for uid " UID_FMT "%s%s%s",
                                  b->resource, b->caller.uid,
                                  error_message ? " (polkit: " : "", strempty(error_message),
                                  error_message ? ")" : "");
                log_refusal(&b->caller, "break", &error);
                r = sd_bus_reply_method_error(b->message, &error);
        }
        if (r < 0)
                log_debug_errno(r, "Failed to answer Break of %s: %m", b->caller.name);

        g_hash_table_remove(m->pending_calls, b);
}

static int method_break(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const Peer *caller;
        const char *resource;
        PendingBreak *b;
        int r;

        r = read_resource_and_caller(m, message, &resource, &caller, error);
        if (r < 0)
                return r;

        /* Authorization comes before anything else, also before telling
         * whether the resource is locked. Root may; others ask polkit,
         * asynchronously: the loop serves others meanwhile. */
        if (caller->uid == 0)
                return break_and_reply(m, message, resource, caller);

        r = manager_cancel_idle_exit(m);
        if (r < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_FAILED,
                                         "Resource '%s' not broken: lockbusd is exiting, try again", resource);

        b = g_new0(PendingBreak, 1);
        b->manager = m;
        b->message = sd_bus_message_ref(message);
        b->resource = g_strdup(resource);
        b->caller = peer_copy(caller);

        r = polkit_check_async(m->bus, caller, LOCKBUS_POLKIT_ACTION_BREAK,
                               sd_bus_message_get_allow_interactive_authorization(message) > 0,
                               on_break_authorized, b, &b->slot);
        if (r < 0) {
                pending_break_free(b);
                log_warning_errno(r, "Failed to ask polkit about Break by %s: %m", caller->name);
                sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                  "Breaking the lock on resource '%s' is not allowed for uid " UID_FMT
                                  " (polkit could not be asked)", resource, caller->uid);
                log_refusal(caller, "break", error);
                return -EACCES;
        }

        g_hash_table_add(m->pending_calls, b);
        return 1;
}

/* Appends one holder as (uusstttss). */
static int append_holder(sd_bus_message *reply, const Hold *h) {
        return sd_bus_message_append(reply, "uusstttss",
                                     (uint32_t) h->uid, (uint32_t) h->pid, strempty(h->comm), strempty(h->sender),
                                     h->token, h->since_usec, h->expires_usec,
                                     hold_scope_to_string(h->scope), strempty(h->description));
}

/* Answers Owner with the holds of one resource (Hold *, in grant order). */
static int reply_owner(sd_bus_message *message, const char *resource, GPtrArray *holds) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        if (holds->len == 0)
                return sd_bus_reply_method_errorf(message, LOCKBUS_ERROR_NOT_LOCKED, "Resource '%s' not locked",
                                                  resource);

        r = sd_bus_message_new_method_return(message, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_append(reply, "s", lock_mode_to_string(((const Hold *) holds->pdata[0])->mode));
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "(uusstttss)");
        if (r < 0)
                return r;
        for (guint i = 0; i < holds->len; i++) {
                r = sd_bus_message_open_container(reply, 'r', "uusstttss");
                if (r < 0)
                        return r;
                r = append_holder(reply, holds->pdata[i]);
                if (r < 0)
                        return r;
                r = sd_bus_message_close_container(reply);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;

        return sd_bus_send(NULL, reply, NULL);
}

/* Answers ListLocks with every hold (sorted by resource, then grant order). */
static int reply_list(sd_bus_message *message, GPtrArray *holds) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = sd_bus_message_new_method_return(message, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "(ssuusstttss)");
        if (r < 0)
                return r;
        for (guint i = 0; i < holds->len; i++) {
                const Hold *h = holds->pdata[i];

                r = sd_bus_message_open_container(reply, 'r', "ssuusstttss");
                if (r < 0)
                        return r;
                r = sd_bus_message_append(reply, "ss", h->resource, lock_mode_to_string(h->mode));
                if (r < 0)
                        return r;
                r = append_holder(reply, h);
                if (r < 0)
                        return r;
                r = sd_bus_message_close_container(reply);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;

        return sd_bus_send(NULL, reply, NULL);
}

static void on_cluster_queried(Manager *m, int error, const char *error_message, GPtrArray *holds, void *userdata) {
        ClusterCall *c = userdata;
        int r;

        if (error < 0)
                return cluster_call_fail_etcd(m, c, "read", error, error_message);

        /* Owner has the resource, ListLocks none. */
        r = c->resource ? reply_owner(c->message, c->resource, holds) : reply_list(c->message, holds);
        if (r < 0)
                log_debug_errno(r, "Failed to answer %s: %m", c->caller.name);
        cluster_call_free(c);
}

/* Owner and ListLocks read etcd in cluster mode; anyone may ask. */
static int cluster_query(Manager *m, sd_bus_message *message, const char *resource, const char *method,
                         sd_bus_error *error) {
        const Peer *caller;
        ClusterCall *c;
        int r;

        r = get_caller(m, message, &caller, error);
        if (r < 0)
                return r;
        c = cluster_call_new(message, resource ?: "", caller, method, NULL);
        if (!resource)
                g_clear_pointer(&c->resource, g_free);
        cluster_backend_query(m->cluster, resource, on_cluster_queried, c);
        return 1;
}

static int method_owner(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        g_autoptr(GPtrArray) holds = g_ptr_array_new();
        Manager *m = userdata;
        const GQueue *q;
        const char *resource;
        int r;

        r = read_resource(message, &resource, error);
        if (r < 0)
                return r;
        if (m->cluster)
                return cluster_query(m, message, resource, "owner", error);

        q = lock_table_get_holds(m->table, resource);
        if (q)
                for (GList *l = q->head; l; l = l->next)
                        g_ptr_array_add(holds, l->data);
        return reply_owner(message, resource, holds);
}

static int method_list_locks(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        g_autoptr(GPtrArray) holds = NULL;
        Manager *m = userdata;

        if (m->cluster)
                return cluster_query(m, message, NULL, "list", error);

        holds = lock_table_list(m->table);
        return reply_list(message, holds);
}

static int property_get_version(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", PACKAGE_VERSION);
}

static int property_get_lock_directory(sd_bus *bus, const char *path, const char *interface, const char *property,
                                       sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;

        return sd_bus_message_append(reply, "s", store_lock_directory(m->store));
}

static int property_get_lock_count(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;

        return sd_bus_message_append(reply, "u", (uint32_t) lock_table_resource_count(m->table));
}

static int property_get_waiter_count(sd_bus *bus, const char *path, const char *interface, const char *property,
                                     sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;

        return sd_bus_message_append(reply, "u", (uint32_t) (m->cluster ? cluster_backend_pending_count(m->cluster)
                                                                         : lock_table_waiter_count(m->table)));
}

/* LockLost, to the connection that acquired the hold: on the bus by its
 * unique name, or on its direct connection. A persistent hold's sender
 * may be gone; then nobody gets it. */
static void emit_lock_lost(Manager *m, const Hold *h, const char *reason) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *signal = NULL;
        sd_bus *bus;
        int r;

        if (!h->sender || h->hostname)
                return;
        if (g_str_has_prefix(h->sender, "direct:")) {
                bus = peer_registry_get_direct_connection(m->peers, h->sender);
                if (!bus)
                        return;
        } else
                bus = m->bus;

        r = sd_bus_message_new_signal(bus, &signal, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "LockLost");
        if (r >= 0 && !g_str_has_prefix(h->sender, "direct:"))
                r = sd_bus_message_set_destination(signal, h->sender);
        if (r >= 0)
                r = sd_bus_message_append(signal, "sts", h->resource, h->token, reason);
        if (r >= 0)
                r = sd_bus_send(bus, signal, NULL);
        if (r < 0)
                log_debug_errno(r, "Failed to send LockLost for '%s' to %s: %m", h->resource, h->sender);
}

static const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),

        SD_BUS_PROPERTY("Version", "s", property_get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("LockDirectory", "s", property_get_lock_directory, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("LockCount", "u", property_get_lock_count, 0, 0),
        SD_BUS_PROPERTY("WaiterCount", "u", property_get_waiter_count, 0, 0),

        SD_BUS_METHOD_WITH_ARGS("Lock",
                                SD_BUS_ARGS("s", resource),
                                SD_BUS_RESULT("t", token),
                                method_lock,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Acquire",
                                SD_BUS_ARGS("s", resource, "a{sv}", options),
                                SD_BUS_RESULT("t", token),
                                method_acquire,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("AcquireFd",
                                SD_BUS_ARGS("s", resource, "a{sv}", options),
                                SD_BUS_RESULT("h", fd, "t", token),
                                method_acquire_fd,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Unlock",
                                SD_BUS_ARGS("s", resource),
                                SD_BUS_NO_RESULT,
                                method_unlock,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Refresh",
                                SD_BUS_ARGS("s", resource),
                                SD_BUS_RESULT("t", expires_usec),
                                method_refresh,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Owner",
                                SD_BUS_ARGS("s", resource),
                                SD_BUS_RESULT("s", mode, "a(uusstttss)", holders),
                                method_owner,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListLocks",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a(ssuusstttss)", locks),
                                method_list_locks,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Break",
                                SD_BUS_ARGS("s", resource),
                                SD_BUS_NO_RESULT,
                                method_break,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL_WITH_ARGS("LockLost",
                                SD_BUS_ARGS("s", resource, "t", token, "s", reason),
                                0),

        SD_BUS_VTABLE_END
};

int bus_manager_export_on(Manager *m, sd_bus *bus) {
        return sd_bus_add_object_vtable(bus, NULL, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, manager_vtable, m);
}

int bus_manager_export(Manager *m) {
        int r;

        m->pending_calls = g_hash_table_new_full(g_direct_hash, g_direct_equal, pending_break_free, NULL);
        m->hold_lost = emit_lock_lost;

        r = bus_manager_export_on(m, m->bus);
        if (r < 0)
                return log_error_errno(r, "Failed to export %s: %m", LOCKBUS_OBJECT_PATH);
        return 0;
}
