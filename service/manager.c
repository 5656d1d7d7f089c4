/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "bus-manager.h"
#include "cluster-backend.h"
#include "direct.h"
#include "fdstore.h"
#include "lockbus-names.h"
#include "log.h"
#include "manager.h"

static uint64_t now_realtime_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000000U + (uint64_t) ts.tv_nsec / 1000U;
}

static uint64_t now_monotonic_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000U + (uint64_t) ts.tv_nsec / 1000U;
}

static uint64_t add_saturating(uint64_t a, uint64_t b) {
        return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static void log_hold(const char *what, const Hold *h) {
        log_info("%s '%s' (%s, %s, token %" PRIu64 ") for uid " UID_FMT " (pid " PID_FMT ", %s, %s).",
                 what, h->resource, lock_mode_to_string(h->mode), hold_scope_to_string(h->scope),
                 h->token, h->uid, h->pid, strempty(h->comm), strempty(h->sender));
}

AcquireRequest *acquire_request_new(const Peer *caller, const char *resource) {
        AcquireRequest *req = g_new0(AcquireRequest, 1);

        req->resource = g_strdup(resource);
        req->mode = LOCK_MODE_EXCLUSIVE;
        req->scope = HOLD_SCOPE_CONNECTION;
        req->description = g_strdup("");
        req->caller = peer_copy(caller);
        return req;
}

AcquireRequest *acquire_request_free(AcquireRequest *req) {
        if (!req)
                return NULL;
        sd_event_source_disable_unref(req->timeout_source);
        g_free(req->resource);
        g_free(req->description);
        g_free(req->storage_message);
        peer_done(&req->caller);
        g_free(req);
        return NULL;
}

/* Answers a request (the callback logs refusals, it has their words) and
 * frees it. */
static void acquire_request_complete(AcquireRequest *req, int error, const Hold *hold, int fd) {
        req->done(req, error, error < 0 ? hold : NULL, error < 0 ? 0 : req->granted_token, fd);
        acquire_request_free(req);
}

void manager_answer_request(AcquireRequest *req, int error, const Hold *hold, int fd) {
        acquire_request_complete(req, error, hold, fd);
}

/* A grant that could not be made durable: nothing is held. */
static void acquire_request_fail_storage(AcquireRequest *req, int error, const char *where) {
        req->storage_error = error;
        req->storage_where = where;
        acquire_request_complete(req, -EIO, NULL, -1);
}

typedef struct CommitCallback {
        ManagerCommitCallback callback;
        void *userdata;
} CommitCallback;

static int manager_commit(Manager *m) {
        int r;

        (void) sd_event_source_set_enabled(m->commit_source, SD_EVENT_OFF);
        (void) sd_event_source_set_enabled(m->commit_timer, SD_EVENT_OFF);

        r = store_sync(m->store);
        if (r < 0)
                log_error_errno(r, "Failed to make the lock directory %s durable; answering what waits for it "
                                "with an error and exiting, the next start reloads what reached the disk: %m",
                                store_lock_directory(m->store));

        /* Callbacks may add work; it waits for the next commit. */
        for (unsigned n = g_queue_get_length(&m->after_commit); n > 0; n--) {
                g_autofree CommitCallback *c = g_queue_pop_head(&m->after_commit);

                c->callback(m, r, c->userdata);
        }

        if (r < 0)
                (void) sd_event_exit(m->event, r);
        return r;
}

static int on_commit(sd_event_source *s, void *userdata) {
        (void) manager_commit(userdata);
        return 0;
}

static int on_commit_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        (void) manager_commit(userdata);
        return 0;
}

/* The commit runs once the bus is drained (idle priority), so that the
 * grants of all callers that asked meanwhile share one flush; the timer
 * bounds the delay when the bus never drains. */
#define COMMIT_DELAY_MAX_USEC 2000U

static void manager_arm_commit(Manager *m) {
        int source_enabled = SD_EVENT_OFF, timer_enabled = SD_EVENT_OFF;
        bool answers_wait = !g_queue_is_empty(&m->after_commit);
        int r = 0;

        if (!store_needs_sync(m->store) && !answers_wait)
                return;

        /* With answers waiting, commit as soon as the bus is drained.
         * Changes nobody waits for (an Unlock sent without expecting a
         * reply, a drop at start) wait for the timer, so that the next
         * grant's commit usually takes them along. */
        (void) sd_event_source_get_enabled(m->commit_source, &source_enabled);
        (void) sd_event_source_get_enabled(m->commit_timer, &timer_enabled);
        if (answers_wait && source_enabled == SD_EVENT_OFF)
                r = sd_event_source_set_enabled(m->commit_source, SD_EVENT_ONESHOT);
        if (r >= 0 && timer_enabled == SD_EVENT_OFF) {
                r = sd_event_source_set_time_relative(m->commit_timer, COMMIT_DELAY_MAX_USEC);
                if (r >= 0)
                        r = sd_event_source_set_enabled(m->commit_timer, SD_EVENT_ONESHOT);
        }
        if (r < 0) {
                log_warning_errno(r, "Failed to schedule the group commit, committing now: %m");
                (void) manager_commit(m);
        }
}

void manager_after_commit(Manager *m, ManagerCommitCallback callback, void *userdata) {
        CommitCallback *c;

        if (!store_needs_sync(m->store) && g_queue_is_empty(&m->after_commit)) {
                callback(m, 0, userdata);
                return;
        }

        c = g_new(CommitCallback, 1);
        *c = (CommitCallback) { .callback = callback, .userdata = userdata };
        g_queue_push_tail(&m->after_commit, c);
        manager_arm_commit(m);
}

static int manager_setup_commit(Manager *m) {
        int r;

        r = sd_event_add_defer(m->event, &m->commit_source, on_commit, m);
        if (r < 0)
                return r;
        r = sd_event_source_set_priority(m->commit_source, SD_EVENT_PRIORITY_IDLE);
        if (r < 0)
                return r;
        r = sd_event_source_set_enabled(m->commit_source, SD_EVENT_OFF);
        if (r < 0)
                return r;

        r = sd_event_add_time_relative(m->event, &m->commit_timer, CLOCK_MONOTONIC, COMMIT_DELAY_MAX_USEC, 0,
                                       on_commit_timer, m);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(m->commit_timer, SD_EVENT_OFF);
}

static void on_grant_committed(Manager *m, int error, void *userdata) {
        AcquireRequest *req = userdata;

        if (error < 0) {
                /* Refused: its file must not make it a hold at the next
                 * start (the daemon exits now). */
                Hold stub = {
                        .resource = req->resource,
                        .token = req->granted_token,
                        .scope = HOLD_SCOPE_PERSISTENT,
                };

                (void) store_remove_hold(m->store, &stub);
                return acquire_request_fail_storage(req, error, store_lock_directory(m->store));
        }

        acquire_request_complete(req, 0, NULL, -1);
}

/* The userdata of a hold's event sources: they need both the manager and
 * the hold. Freed with the source. */
typedef struct HoldWatch {
        Manager *manager;
        Hold *hold;
} HoldWatch;

static HoldWatch *hold_watch_new(Manager *m, Hold *h) {
        HoldWatch *w = g_new(HoldWatch, 1);

        *w = (HoldWatch) { .manager = m, .hold = h };
        return w;
}

static int hold_watch_attach(sd_event_source *s, HoldWatch *w) {
        int r = sd_event_source_set_destroy_callback(s, g_free);

        if (r < 0)
                g_free(w);
        return r;
}

static int on_hold_expired(sd_event_source *s, uint64_t usec, void *userdata) {
        HoldWatch *w = userdata;

        /* A persistent hold whose file cannot be removed stays; its timer
         * is spent, so the next start drops it. */
        manager_notify_hold_lost(w->manager, w->hold, "expired");
        (void) manager_release(w->manager, w->hold, "Released (TTL expired)", /* by_owner= */ false);
        return 0;
}

static int hold_arm_expiry(Manager *m, Hold *h) {
        HoldWatch *w;
        int r;

        if (h->expires_usec == 0) {
                h->expiry_timer = sd_event_source_disable_unref(h->expiry_timer);
                return 0;
        }

        if (h->expiry_timer) {
                r = sd_event_source_set_time(h->expiry_timer, h->expires_usec);
                if (r < 0)
                        return r;
                return sd_event_source_set_enabled(h->expiry_timer, SD_EVENT_ONESHOT);
        }

        w = hold_watch_new(m, h);
        r = sd_event_add_time(m->event, &h->expiry_timer, CLOCK_REALTIME, h->expires_usec, 1000,
                              on_hold_expired, w);
        if (r < 0) {
                g_free(w);
                return r;
        }
        return hold_watch_attach(h->expiry_timer, w);
}

static int on_hold_fd_hangup(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        HoldWatch *w = userdata;

        (void) manager_release(w->manager, w->hold, "Released (fd closed)", /* by_owner= */ false);
        return 0;
}

/* Watches the read end of an fd hold's pipe: it hangs up when the last copy
 * of the write end is closed. Takes the fd. */
static int hold_watch_fd(Manager *m, Hold *h, int read_fd) {
        HoldWatch *w = hold_watch_new(m, h);
        int r;

        r = sd_event_add_io(m->event, &h->fd_watch, read_fd, EPOLLHUP, on_hold_fd_hangup, w);
        if (r < 0) {
                g_free(w);
                close(read_fd);
                return r;
        }
        r = sd_event_source_set_io_fd_own(h->fd_watch, true);
        if (r < 0) {
                close(read_fd);
                return r;
        }
        return hold_watch_attach(h->fd_watch, w);
}

static Hold *hold_new_for_request(Manager *m, const AcquireRequest *req) {
        Hold *h = hold_new();

        h->resource = g_strdup(req->resource);
        h->mode = req->mode;
        h->scope = req->scope;
        h->uid = req->caller.uid;
        h->pid = req->caller.pid;
        h->comm = g_strdup(req->caller.comm);
        h->sender = g_strdup(req->caller.name);
        /* A direct connection is on no bus: its holds end with this daemon. */
        h->bus_id = g_strdup(req->caller.direct ? "" : m->bus_id);
        h->since_usec = now_realtime_usec();
        h->ttl_usec = req->ttl_usec;
        h->expires_usec = req->ttl_usec > 0 ? add_saturating(h->since_usec, req->ttl_usec) : 0;
        g_free(h->description);
        h->description = g_strdup(req->description);
        return h;
}

/* What ends a new hold: the pipe of an fd hold (the caller's end in
 * *ret_write_fd, else -1; or, read_fd >= 0, a read end that came back from
 * systemd's fd store, taken) and its TTL timer. */
static int hold_setup_ends(Manager *m, Hold *h, int read_fd, int *ret_write_fd) {
        _cleanup_close_ int write_fd = -1;
        int r;

        if (h->scope == HOLD_SCOPE_FD && read_fd >= 0) {
                r = hold_watch_fd(m, h, read_fd);
                if (r < 0)
                        return r;
        } else if (h->scope == HOLD_SCOPE_FD) {
                int fds[2];

                if (pipe2(fds, O_CLOEXEC) < 0)
                        return -errno;
                write_fd = fds[1];
                r = hold_watch_fd(m, h, fds[0]);
                if (r < 0)
                        return r;
        }

        r = hold_arm_expiry(m, h);
        if (r < 0)
                return r;

        *ret_write_fd = TAKE_FD(write_fd);
        return 0;
}

int manager_take_hold(Manager *m, Hold *hold, int read_fd, int *ret_write_fd, const char *what) {
        _cleanup_(hold_freep) Hold *h = hold;
        _cleanup_close_ int write_fd = -1;
        int r;

        if ((read_fd >= 0 && h->scope != HOLD_SCOPE_FD) ||
            (read_fd < 0 && h->scope == HOLD_SCOPE_FD && !ret_write_fd)) {
                if (read_fd >= 0)
                        close(read_fd);
                return -EINVAL;
        }
        r = hold_setup_ends(m, h, read_fd, &write_fd);
        if (r < 0)
                return r;

        log_hold(what, h);
        lock_table_add(m->table, TAKE_PTR(h));
        if (ret_write_fd)
                *ret_write_fd = TAKE_FD(write_fd);
        return 0;
}

void manager_notify_hold_lost(Manager *m, const Hold *h, const char *reason) {
        if (m->hold_lost)
                m->hold_lost(m, h, reason);
}

void manager_drop_hold(Manager *m, Hold *h, const char *reason) {
        log_hold(reason, h);
        hold_free(lock_table_remove(m->table, h));
}

int manager_hold_set_expiry(Manager *m, Hold *h, uint64_t expires_usec) {
        h->expires_usec = expires_usec;
        return hold_arm_expiry(m, h);
}

/* After a directory was removed and created again: writes everything the
 * daemon holds into it again (tokens first), durably. */
static int manager_rewrite_store(Manager *m, bool lock_gone, bool runtime_gone) {
        g_autoptr(GPtrArray) holds = lock_table_list(m->table);
        int r;

        log_warning("A lock or runtime directory was removed and created again; writing its holds "
                    "and the token reservation again.");

        if (!lock_gone) {
                r = token_issuer_rewrite(m->tokens);
                if (r < 0)
                        return r;
        }

        for (guint i = 0; i < holds->len; i++) {
                const Hold *h = holds->pdata[i];

                if (hold_is_persistent(h) ? lock_gone : runtime_gone)
                        continue;
                r = store_save_hold(m->store, h);
                if (r < 0)
                        return r;
        }
        return store_sync(m->store);
}

/* A write for the hold found its directory removed (-ENOENT). If a new
 * one is at the same path (an administrator, systemd-tmpfiles), takes it up
 * and writes everything there again: returns 1, try once more. Else a
 * negative errno, and *ret_where names the directory that failed. Checking
 * only then, not before every grant, saves syscalls on the hot path; a
 * persistent grant after the runtime directory was re-created leaves the
 * rewrite of the connection holds to the next connection grant. */
static int manager_take_up_directories(Manager *m, const Hold *h, const char **ret_where) {
        bool lock_gone = false, runtime_gone = false;
        int r;

        /* The token reservation lives in the lock directory. */
        r = store_reopen_removed_directories(m->store, &lock_gone, &runtime_gone);
        *ret_where = hold_is_persistent(h) || lock_gone ? store_lock_directory(m->store)
                                                        : store_runtime_directory(m->store);
        if (r < 0)
                return r;
        /* Whatever was taken up is written again at once, also when the
         * other directory is still missing. */
        if (r > 0) {
                r = manager_rewrite_store(m, lock_gone, runtime_gone);
                if (r < 0)
                        return r;
                r = 1;
        }
        if (lock_gone || (runtime_gone && !hold_is_persistent(h)))
                return -ENOENT;
        /* r == 0: nothing was removed, the ENOENT has another cause. */
        return r > 0 ? 1 : -ENOENT;
}

/* Grants a request that fits: token, fd, store, table, answer. */
static void manager_grant(Manager *m, AcquireRequest *req) {
        _cleanup_(hold_freep) Hold *h = NULL;
        _cleanup_close_ int write_fd = -1;
        const char *where;
        Hold *granted;
        int r;

        h = hold_new_for_request(m, req);

        r = token_issuer_next(m->tokens, &h->token);
        if (r == -ENOENT) {
                r = manager_take_up_directories(m, h, &where);
                if (r < 0) {
                        log_error_errno(r, "Failed to store the hold on '%s': %m", h->resource);
                        return acquire_request_fail_storage(req, r, where);
                }
                r = token_issuer_next(m->tokens, &h->token);
        }
        if (r < 0) {
                log_error_errno(r, "Failed to reserve fencing tokens in %s: %m", store_lock_directory(m->store));
                return acquire_request_fail_storage(req, r, store_lock_directory(m->store));
        }

        r = hold_setup_ends(m, h, -1, &write_fd);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the fd pipe or TTL timer of the hold on '%s': %m", h->resource);
                return acquire_request_fail_storage(req, r, store_runtime_directory(m->store));
        }

        /* Durable before it is answered: all or nothing. */
        where = hold_is_persistent(h) ? store_lock_directory(m->store) : store_runtime_directory(m->store);
        r = store_save_hold(m->store, h);
        if (r == -ENOENT) {
                r = manager_take_up_directories(m, h, &where);
                if (r > 0)
                        r = store_save_hold(m->store, h);
        }
        if (r < 0) {
                log_error_errno(r, "Failed to save hold for '%s': %m", h->resource);
                return acquire_request_fail_storage(req, r, where);
        }

        if (h->fd_watch) {
                r = fdstore_push(h->token, sd_event_source_get_io_fd(h->fd_watch));
                if (r < 0)
                        log_warning_errno(r, "Failed to keep the fd hold on '%s' in systemd's fd store, "
                                          "it will not survive a restart: %m", h->resource);
        }

        granted = TAKE_PTR(h);
        lock_table_add(m->table, granted);
        log_hold("Granted", granted);
        req->granted_token = granted->token;

        /* Answered once durable: with the next group commit. */
        if (hold_is_persistent(granted))
                return manager_after_commit(m, on_grant_committed, req);

        acquire_request_complete(req, 0, NULL, write_fd);
}

/* Grants waiters at the head of the queue while they fit; adjacent shared
 * waiters go together. */
static void manager_serve_waiters(Manager *m, const char *resource) {
        g_autofree char *name = g_strdup(resource); /* the caller's copy may go with a hold */
        Waiter *w;

        while ((w = lock_table_peek_waiter(m->table, name))) {
                AcquireRequest *req = container_of(w, AcquireRequest, waiter);
                const Hold *blocker = NULL;
                LockVerdict v;

                v = lock_table_check_waiter(m->table, w, &blocker);
                if (v == LOCK_VERDICT_CONFLICT)
                        break;

                lock_table_dequeue(m->table, w);
                req->timeout_source = sd_event_source_disable_unref(req->timeout_source);
                if (v == LOCK_VERDICT_HELD_BY_CALLER)
                        acquire_request_complete(req, -EALREADY, blocker, -1);
                else
                        manager_grant(m, req);
        }
}

/* Takes a waiting request out of its queue and answers it. Those behind it
 * may fit now (e.g. shared waiters behind an exclusive one). */
static void manager_cancel_waiter(Manager *m, AcquireRequest *req, int error) {
        g_autofree char *resource = g_strdup(req->resource);
        const GQueue *holds;

        lock_table_dequeue(m->table, &req->waiter);
        holds = lock_table_get_holds(m->table, resource);
        acquire_request_complete(req, error, holds ? holds->head->data : NULL, -1);
        manager_serve_waiters(m, resource);
}

static int on_waiter_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        AcquireRequest *req = userdata;

        manager_cancel_waiter(req->manager, req, -ETIMEDOUT);
        return 0;
}

int manager_cancel_idle_exit(Manager *m) {
        int r;

        if (!m->exiting)
                return 0;

        r = sd_bus_request_name(m->bus, LOCKBUS_BUS_NAME, 0);
        if (r < 0)
                return log_error_errno(r, "Failed to take back the bus name %s: %m", LOCKBUS_BUS_NAME);
        (void) sd_notify(false, "READY=1\nSTATUS=Serving " LOCKBUS_BUS_NAME);

        m->release_name_slot = sd_bus_slot_unref(m->release_name_slot);
        m->exiting = false;
        log_info("Request arrived during idle exit; serving on.");
        return 0;
}

static bool manager_over_quota(Manager *m, const AcquireRequest *req, bool waiting) {
        UidUsage u;

        if (req->caller.uid == 0)
                return false;

        /* Waiters count against the hold quota too: each may become a hold.
         * In cluster mode they wait in etcd: the requests under way count. */
        u = lock_table_uid_usage(m->table, req->caller.uid);
        if (m->cluster)
                u.n_waiters += cluster_backend_pending_count_of_uid(m->cluster, req->caller.uid);
        if (u.n_holds + u.n_waiters >= m->max_locks_per_user)
                return true;
        return waiting && u.n_waiters >= m->max_waiters_per_user;
}

/* Cluster mode: etcd decides, and a request waits there. The quotas count
 * this daemon's holds and requests under way. */
static void manager_submit_to_cluster(Manager *m, AcquireRequest *req) {
        if (manager_over_quota(m, req, req->timeout_usec > 0))
                return acquire_request_complete(req, -EDQUOT, NULL, -1);
        if ((req->scope == HOLD_SCOPE_FD || req->timeout_usec > 0) && manager_cancel_idle_exit(m) < 0)
                return acquire_request_complete(req, -ESHUTDOWN, NULL, -1);

        cluster_backend_submit(m->cluster, req);
}

void manager_submit(Manager *m, AcquireRequest *req) {
        const Hold *blocker = NULL;
        int r;

        req->manager = m;
        if (m->cluster)
                return manager_submit_to_cluster(m, req);
        switch (lock_table_check(m->table, req->resource, req->mode, req->caller.uid, req->caller.name, &blocker)) {

        case LOCK_VERDICT_HELD_BY_CALLER:
                return acquire_request_complete(req, -EALREADY, blocker, -1);

        case LOCK_VERDICT_GRANT:
                if (manager_over_quota(m, req, false))
                        return acquire_request_complete(req, -EDQUOT, NULL, -1);
                if (req->scope == HOLD_SCOPE_FD && manager_cancel_idle_exit(m) < 0)
                        return acquire_request_complete(req, -ESHUTDOWN, NULL, -1);
                return manager_grant(m, req);

        case LOCK_VERDICT_CONFLICT:
                if (req->timeout_usec == 0)
                        return acquire_request_complete(req, -EBUSY, blocker, -1);
                if (manager_over_quota(m, req, true))
                        return acquire_request_complete(req, -EDQUOT, NULL, -1);
                if (manager_cancel_idle_exit(m) < 0)
                        return acquire_request_complete(req, -ESHUTDOWN, NULL, -1);
                break;
        }

        /* A timeout beyond the clock's range is no timeout. */
        uint64_t now_mono = 0;
        (void) sd_event_now(m->event, CLOCK_MONOTONIC, &now_mono);
        if (req->timeout_usec >= UINT64_MAX - now_mono)
                req->timeout_usec = UINT64_MAX;

        if (req->timeout_usec != UINT64_MAX) {
                r = sd_event_add_time_relative(m->event, &req->timeout_source, CLOCK_MONOTONIC, req->timeout_usec,
                                               1000, on_waiter_timeout, req);
                if (r < 0) {
                        log_error_errno(r, "Failed to arm the wait timer for '%s': %m", req->resource);
                        return acquire_request_fail_storage(req, r, store_runtime_directory(m->store));
                }
        }

        req->waiter = (Waiter) {
                .resource = req->resource,
                .mode = req->mode,
                .scope = req->scope,
                .uid = req->caller.uid,
                .sender = req->caller.name,
        };
        lock_table_enqueue(m->table, &req->waiter);
        log_info("Queued '%s' (%s, %s) for uid " UID_FMT " (pid " PID_FMT ", %s, %s), %u waiting.",
                 req->resource, lock_mode_to_string(req->mode), hold_scope_to_string(req->scope),
                 req->caller.uid, req->caller.pid, req->caller.comm, req->caller.name,
                 lock_table_waiter_count(m->table));
}

/* Takes a hold out without serving waiters; see manager_release(). */
static int manager_remove_hold(Manager *m, Hold *h, const char *reason, bool by_owner) {
        int r;

        if (m->cluster) {
                /* Its key goes in the background (and with the lease). */
                cluster_backend_forget(m->cluster, h);
                manager_drop_hold(m, h, reason);
                return 0;
        }

        r = store_remove_hold(m->store, h);
        if (r < 0 && r != -ENOENT) {
                if (hold_is_persistent(h) || by_owner)
                        return log_error_errno(r, "Failed to remove hold file for '%s', keeping the hold: %m",
                                               h->resource);
                log_warning_errno(r, "Failed to remove hold file for '%s', ignoring: %m", h->resource);
        }

        if (h->scope == HOLD_SCOPE_FD)
                fdstore_remove(h->token);

        log_hold(reason, h);
        hold_free(lock_table_remove(m->table, h));
        return 0;
}

int manager_release(Manager *m, Hold *h, const char *reason, bool by_owner) {
        g_autofree char *resource = g_strdup(h->resource);
        int r;

        r = manager_remove_hold(m, h, reason, by_owner);
        if (r < 0)
                return r;
        manager_serve_waiters(m, resource);
        return 0;
}

int manager_break(Manager *m, const char *resource) {
        g_autoptr(GPtrArray) holds = g_ptr_array_new();
        const GQueue *q;
        int n = 0, error = 0;

        q = lock_table_get_holds(m->table, resource);
        if (q)
                for (GList *l = q->head; l; l = l->next)
                        g_ptr_array_add(holds, l->data);

        for (guint i = 0; i < holds->len; i++) {
                int r;

                manager_notify_hold_lost(m, holds->pdata[i], "broken");
                r = manager_remove_hold(m, holds->pdata[i], "Released (broken)", /* by_owner= */ true);

                if (r < 0 && error == 0)
                        error = r;
                else if (r >= 0)
                        n++;
        }
        manager_serve_waiters(m, resource);
        return error < 0 ? error : n;
}

int manager_refresh(Manager *m, Hold *h, uint64_t *ret_expires_usec) {
        uint64_t old_expires = h->expires_usec;
        int r;

        if (h->ttl_usec == 0) {
                *ret_expires_usec = 0;
                return 0;
        }

        h->expires_usec = add_saturating(now_realtime_usec(), h->ttl_usec);
        r = store_save_hold(m->store, h);
        if (r < 0) {
                h->expires_usec = old_expires;
                return log_error_errno(r, "Failed to save the refreshed hold on '%s': %m", h->resource);
        }

        r = hold_arm_expiry(m, h);
        if (r < 0)
                log_warning_errno(r, "Failed to re-arm the TTL timer for '%s', ignoring: %m", h->resource);

        log_hold("Refreshed", h);
        *ret_expires_usec = h->expires_usec;
        return 0;
}

bool manager_is_idle(const Manager *m) {
        return lock_table_volatile_hold_count(m->table) == 0 &&
                lock_table_waiter_count(m->table) == 0 &&
                (!m->pending_calls || g_hash_table_size(m->pending_calls) == 0) &&
                direct_server_connection_count(m->direct) == 0 &&
                m->after_commit.length == 0 && !store_needs_sync(m->store) &&
                (!m->cluster || cluster_backend_pending_count(m->cluster) == 0);
}

static void on_peer_gone(const char *name, void *userdata) {
        Manager *m = userdata;
        g_autoptr(GPtrArray) waiters = lock_table_waiters_of_sender(m->table, name);
        g_autoptr(GPtrArray) holds = lock_table_holds_of_sender(m->table, name);
        g_autoptr(GPtrArray) resources = g_ptr_array_new_with_free_func(g_free);

        if (m->cluster)
                cluster_backend_peer_gone(m->cluster, name);

        /* Everything of the peer goes before any waiter is served, so that
         * nothing is granted to its own waiters, which are gone too. */
        for (guint i = 0; i < waiters->len; i++) {
                AcquireRequest *req = container_of(waiters->pdata[i], AcquireRequest, waiter);

                g_ptr_array_add(resources, g_strdup(req->resource));
                lock_table_dequeue(m->table, &req->waiter);
                acquire_request_complete(req, -ECONNRESET, NULL, -1);
        }

        /* fd holds live on while their fd is open, wherever it went. */
        for (guint i = 0; i < holds->len; i++) {
                Hold *h = holds->pdata[i];

                if (h->scope != HOLD_SCOPE_CONNECTION)
                        continue;
                g_ptr_array_add(resources, g_strdup(h->resource));
                (void) manager_remove_hold(m, h, "Released (connection closed)", /* by_owner= */ false);
        }

        for (guint i = 0; i < resources->len; i++)
                manager_serve_waiters(m, resources->pdata[i]);
}

/* Puts a hold read from disk back into the table, or drops it. Takes
 * ownership. */
static void manager_restore_hold(Manager *m, Hold *hold, uint64_t now, GHashTable *stored_fds) {
        _cleanup_(hold_freep) Hold *h = hold;
        const Hold *blocker = NULL;
        const char *drop = NULL;
        int r;

        if (h->expires_usec > 0 && h->expires_usec <= now)
                drop = "its TTL expired";
        else if (h->scope == HOLD_SCOPE_FD) {
                g_autofree gpointer key = NULL;
                gpointer fd;

                if (!g_hash_table_steal_extended(stored_fds, &h->token, &key, &fd))
                        drop = "its fd did not survive the restart (no systemd fd store)";
                else {
                        r = hold_watch_fd(m, h, GPOINTER_TO_INT(fd));
                        if (r < 0) {
                                log_warning_errno(r, "Failed to watch the fd of the hold on '%s': %m", h->resource);
                                drop = "its fd could not be watched";
                        }
                }
        }
        else if (h->scope == HOLD_SCOPE_CONNECTION) {
                if (!h->bus_id || strcmp(h->bus_id, m->bus_id) != 0)
                        drop = "its connection is not on this bus (another bus instance, or a direct connection)";
                else {
                        r = peer_registry_watch(m->peers, h->sender);
                        if (r < 0) {
                                log_warning_errno(r, "Failed to check whether %s is still connected: %m", h->sender);
                                drop = "its connection could not be checked";
                        } else if (r == 0)
                                drop = "its connection is gone";
                }
        }

        /* Files edited by hand could disagree with each other; the earliest
         * grant wins. */
        if (!drop && lock_table_check(m->table, h->resource, h->mode, h->uid, h->sender, &blocker) != LOCK_VERDICT_GRANT)
                drop = "it conflicts with an earlier hold";

        if (!drop) {
                r = hold_arm_expiry(m, h);
                if (r < 0) {
                        log_warning_errno(r, "Failed to arm the TTL timer for '%s': %m", h->resource);
                        drop = "its TTL could not be enforced";
                }
        }

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
        g_autoptr(GHashTable) stored_fds = fdstore_take();
        g_autoptr(GPtrArray) holds = NULL;
        GHashTableIter iter;
        gpointer token;
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
                manager_restore_hold(m, g_steal_pointer(&holds->pdata[i]), now, stored_fds);

        /* fds whose hold is gone: systemd forgets them, the table closes them. */
        g_hash_table_iter_init(&iter, stored_fds);
        while (g_hash_table_iter_next(&iter, &token, NULL))
                fdstore_remove(*(uint64_t *) token);

        log_info("Loaded %u locked resources; next fencing token above %" PRIu64 ".",
                 lock_table_resource_count(m->table), token_issuer_last(m->tokens));
        return 0;
}

/* Exit on idle counts from the last method call, or from the moment the
 * daemon stopped holding anything volatile: its own timers (the etcd
 * lease's renewals, a TTL) and other peers' NameOwnerChanged signals are
 * not activity. */
static int on_bus_message(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;

        if (sd_bus_message_is_method_call(message, NULL, NULL) > 0)
                m->last_activity_usec = now_monotonic_usec();
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

        /* Without its bus the daemon serves nobody; the holds are on disk. */
        r = sd_bus_set_exit_on_disconnect(m->bus, true);
        if (r < 0)
                return log_error_errno(r, "Failed to set exit on disconnect: %m");

        r = sd_bus_add_filter(m->bus, NULL, on_bus_message, m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch the bus for calls: %m");

        r = sd_bus_get_bus_id(m->bus, &id);
        if (r < 0)
                return log_error_errno(r, "Failed to get the bus ID: %m");
        sd_id128_to_string(id, m->bus_id);

        return peer_registry_new(m->bus, on_peer_gone, m, &m->peers);
}

/* Cluster mode: the machine's identity (overridable for tests that run
 * two "hosts" on one machine), then etcd. */
static int manager_start_cluster(Manager *m, const ManagerConfig *config) {
        char machine_id[SD_ID128_STRING_MAX], hostname[HOST_NAME_MAX + 1] = "";
        const char *e;
        sd_id128_t id;
        int r;

        e = getenv("LOCKBUS_MACHINE_ID");
        if (e) {
                r = sd_id128_from_string(e, &id);
                if (r < 0)
                        return log_error_errno(r, "$LOCKBUS_MACHINE_ID is not a machine ID: '%s'.", e);
        } else {
                r = sd_id128_get_machine(&id);
                if (r < 0)
                        return log_error_errno(r, "Failed to read the machine ID (/etc/machine-id): %m");
        }
        sd_id128_to_string(id, machine_id);

        e = getenv("LOCKBUS_HOSTNAME");
        if (e)
                g_strlcpy(hostname, e, sizeof(hostname));
        else if (gethostname(hostname, sizeof(hostname) - 1) < 0)
                return log_error_errno(errno, "Failed to get the host name: %m");

        return cluster_backend_new(m, &(ClusterBackendConfig) {
                        .endpoints = config->etcd_endpoints,
                        .prefix = config->etcd_prefix,
                        .lease_ttl_usec = config->etcd_lease_ttl_usec,
                        .ca_file = config->etcd_ca_file,
                        .cert_file = config->etcd_cert_file,
                        .key_file = config->etcd_key_file,
                        .user = config->etcd_user,
                        .password = config->etcd_password,
                        .machine_id = machine_id,
                        .hostname = hostname,
                }, &m->cluster);
}

int manager_new(const ManagerConfig *config, Manager **ret) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        m = g_new0(Manager, 1);
        m->table = lock_table_new();
        m->max_locks_per_user = config->max_locks_per_user;
        m->max_waiters_per_user = config->max_waiters_per_user;
        m->idle_timeout_usec = config->idle_timeout_usec;

        r = sd_event_default(&m->event);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate the event loop: %m");

        r = manager_setup_commit(m);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the group commit: %m");

        /* Pings systemd's watchdog when WatchdogSec= is set. */
        r = sd_event_set_watchdog(m->event, true);
        if (r < 0)
                log_warning_errno(r, "Failed to enable the watchdog, ignoring: %m");

        r = manager_connect_bus(m, config->user_bus);
        if (r < 0)
                return r;

        r = store_open(config->lock_directory, config->runtime_directory, &m->store);
        if (r < 0)
                return log_error_errno(r, "Failed to open lock directory %s and runtime directory %s: %m",
                                       config->lock_directory, config->runtime_directory);

        r = config->etcd_endpoints ? manager_start_cluster(m, config) : manager_load(m);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(m);
        return 0;
}

/* At exit: the calls still waiting get no answer from us (the bus tells
 * their callers we left); their requests go. */
static void manager_drop_waiters(Manager *m) {
        g_autoptr(GPtrArray) waiters = lock_table_list_waiters(m->table);

        for (guint i = 0; i < waiters->len; i++) {
                AcquireRequest *req = container_of(waiters->pdata[i], AcquireRequest, waiter);

                lock_table_dequeue(m->table, &req->waiter);
                acquire_request_complete(req, -ECONNRESET, NULL, -1);
        }
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;

        /* Holds are dropped from memory only: their files stay for the next
         * start. Waiting calls are not answered (manager_drop_waiters()). */
        m->release_name_slot = sd_bus_slot_unref(m->release_name_slot);
        /* Direct connections first: closing them releases holds. */
        m->direct = direct_server_free(m->direct);
        /* manager_run() committed; what is left had no reply to wait for. */
        g_queue_clear_full(&m->after_commit, g_free);
        m->cluster = cluster_backend_free(m->cluster);
        m->commit_source = sd_event_source_disable_unref(m->commit_source);
        m->commit_timer = sd_event_source_disable_unref(m->commit_timer);
        if (m->pending_calls)
                g_hash_table_destroy(m->pending_calls);
        if (m->table)
                manager_drop_waiters(m);
        m->table = lock_table_free(m->table);
        m->peers = peer_registry_free(m->peers);
        m->tokens = token_issuer_free(m->tokens);
        m->store = store_free(m->store);
        sd_bus_flush_close_unref(m->bus);
        sd_event_unref(m->event);
        g_free(m);
        return NULL;
}

static int on_name_released(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        Manager *m = userdata;

        /* Everything routed to us before the release came in before this
         * reply and has been answered. */
        m->release_name_slot = sd_bus_slot_unref(m->release_name_slot);
        log_info("Idle: released %s, exiting.", LOCKBUS_BUS_NAME);
        m->stop_requested = true;
        return 0;
}

static int manager_start_idle_exit(Manager *m) {
        int r;

        /* systemd queues start requests from now on instead of assuming we
         * still serve them. */
        (void) sd_notify(false, "STOPPING=1");

        r = sd_bus_release_name_async(m->bus, &m->release_name_slot, LOCKBUS_BUS_NAME, on_name_released, m);
        if (r < 0)
                return log_error_errno(r, "Failed to release the bus name %s: %m", LOCKBUS_BUS_NAME);
        m->exiting = true;
        return 0;
}

/* The event loop, with exit on idle: when a whole idle period passes with
 * no event and nothing but durable state held, release the name, answer
 * what is queued, then exit. D-Bus activation starts the next instance. */
/* The time left before an idle exit (0: now), or UINT64_MAX if none. */
static uint64_t manager_idle_time_left(Manager *m) {
        uint64_t now, deadline;

        if (m->idle_timeout_usec == 0 || m->exiting)
                return UINT64_MAX;

        now = now_monotonic_usec();
        if (m->last_activity_usec == 0 || !manager_is_idle(m))
                m->last_activity_usec = now;
        deadline = add_saturating(m->last_activity_usec, m->idle_timeout_usec);
        return deadline > now ? deadline - now : 0;
}

static int manager_loop(Manager *m) {
        int r;

        for (;;) {
                uint64_t timeout;

                r = sd_event_get_state(m->event);
                if (r < 0)
                        return r;
                if (r == SD_EVENT_FINISHED || m->stop_requested)
                        break;

                /* Anything left dirty (a release, a drop at start) is
                 * flushed soon even when nobody waits for it. */
                manager_arm_commit(m);

                timeout = manager_idle_time_left(m);
                if (timeout == 0) {
                        r = manager_start_idle_exit(m);
                        if (r < 0)
                                return r;
                        continue;
                }

                r = sd_event_run(m->event, timeout);
                if (r < 0)
                        return r;
        }

        r = 0;
        (void) sd_event_get_exit_code(m->event, &r);
        return r;
}

static int on_stop_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        m->stop_requested = true;
        return 0;
}

int manager_run(Manager *m) {
        g_autofree char *direct_path = NULL;
        sigset_t mask;
        int r;

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return log_error_errno(errno, "Failed to block signals: %m");

        r = sd_event_add_signal(m->event, NULL, SIGTERM, on_stop_signal, m);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGINT, on_stop_signal, m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch SIGTERM/SIGINT: %m");

        /* Objects first: a caller activated by the name must find them. */
        r = bus_manager_export(m);
        if (r < 0)
                return r;

        direct_path = g_build_filename(store_runtime_directory(m->store), LOCKBUS_DIRECT_SOCKET_NAME, NULL);
        r = direct_server_new(m, direct_path, &m->direct);
        if (r < 0)
                log_warning_errno(r, "Failed to listen on %s, serving the bus only: %m", direct_path);

        r = sd_bus_request_name(m->bus, LOCKBUS_BUS_NAME, 0);
        if (r == -EEXIST) {
                /* An instance that took its name back during an idle exit
                 * serves on; we waited for its lock directory in vain. */
                log_info("%s is owned by another instance, exiting.", LOCKBUS_BUS_NAME);
                return 0;
        }
        if (r < 0)
                return log_error_errno(r, "Failed to acquire the bus name %s: %m", LOCKBUS_BUS_NAME);

        (void) sd_notify(false, "READY=1\nSTATUS=Serving " LOCKBUS_BUS_NAME);
        log_info("lockbusd ready on %s; lock directory %s, runtime directory %s.",
                 LOCKBUS_BUS_NAME, store_lock_directory(m->store), store_runtime_directory(m->store));

        r = log_attach_event(m->event);
        if (r < 0)
                log_warning_errno(r, "Failed to batch log lines, writing each at once: %m");

        r = manager_loop(m);
        log_detach_event();
        (void) sd_notify(false, "STOPPING=1");

        /* This daemon's connection and fd holds end now, not after the TTL. */
        cluster_backend_stop(m->cluster);

        /* What was answered is durable already; make the rest so and answer it. */
        if (!g_queue_is_empty(&m->after_commit) || store_needs_sync(m->store))
                (void) manager_commit(m);
        if (r < 0)
                return log_error_errno(r, "Event loop failed: %m");

        log_info("Exiting.");
        return 0;
}
