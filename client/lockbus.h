/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* liblockbus: the client library of lockbus (io.lockbus1 on D-Bus).
 *
 * Conventions (those of sd-bus):
 *   - Functions return 0 or a positive value on success and a negative
 *     errno-style error on failure. Errors of the service map to:
 *       io.lockbus1.Error.AlreadyLocked    -EBUSY
 *       io.lockbus1.Error.NotLocked        -ENOENT
 *       io.lockbus1.Error.NotOwner         -EPERM
 *       io.lockbus1.Error.Timeout          -ETIMEDOUT
 *       io.lockbus1.Error.InvalidResource  -EINVAL
 *       io.lockbus1.Error.QuotaExceeded    -EDQUOT
 *       io.lockbus1.Error.Storage          -EIO
 *       org.freedesktop.DBus.Error.AccessDenied  -EACCES
 *       org.freedesktop.DBus.Error.InvalidArgs   -EINVAL
 *     The service's own message (it names the resource and the holder) is
 *     kept in the handle: lockbus_last_error_message().
 *   - Out-parameters start with ret_ and may be NULL where that is noted.
 *   - A handle is reference counted (lockbus_ref/lockbus_unref) and, like
 *     an sd_bus, is not thread-safe: use one handle per thread.
 *
 * Scope: the library's default scope is "connection": a program that
 * crashes leaves nothing behind (its bus connection closes). Use
 * LOCKBUS_SCOPE_PERSISTENT for locks that outlive the caller.
 *
 * Waiting: a call with a timeout waits inside the service; the library
 * sets the bus call's own timeout from it (plus a margin), so a 60 s wait
 * is not cut off by sd-bus's 25 s default. LOCKBUS_WAIT_FOREVER waits
 * without limit. */

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lockbus lockbus;

typedef enum lockbus_mode {
        LOCKBUS_MODE_EXCLUSIVE = 0,
        LOCKBUS_MODE_SHARED = 1,
} lockbus_mode;

typedef enum lockbus_scope {
        LOCKBUS_SCOPE_CONNECTION = 0,   /* released when this bus connection closes */
        LOCKBUS_SCOPE_PERSISTENT = 1,   /* held until unlocked, broken or expired; owned by the uid */
        LOCKBUS_SCOPE_FD = 2,           /* held while a copy of the returned fd is open (lockbus_acquire_fd) */
} lockbus_scope;

#define LOCKBUS_WAIT_FOREVER UINT64_MAX

typedef struct lockbus_options {
        lockbus_mode mode;              /* default LOCKBUS_MODE_EXCLUSIVE */
        lockbus_scope scope;            /* default LOCKBUS_SCOPE_CONNECTION; ignored by lockbus_acquire_fd() */
        uint64_t timeout_usec;          /* 0: fail at once with -EBUSY; LOCKBUS_WAIT_FOREVER; else wait at most this long (-ETIMEDOUT) */
        uint64_t ttl_usec;              /* 0: none; else released this long after the grant or the last refresh */
        const char *description;        /* NULL or at most 1024 bytes: why the lock is held, shown to others */
} lockbus_options;

/* Zero-initialising a lockbus_options gives the defaults; this says so. */
#define LOCKBUS_OPTIONS_INIT { .mode = LOCKBUS_MODE_EXCLUSIVE, .scope = LOCKBUS_SCOPE_CONNECTION }

/* One hold, as Owner and ListLocks report it. Strings are never NULL. */
typedef struct lockbus_holder {
        char *resource;                 /* the resource held */
        lockbus_mode mode;
        uid_t uid;
        pid_t pid;
        char *comm;
        char *sender;                   /* unique bus name that acquired it */
        uint64_t token;                 /* fencing token */
        uint64_t since_usec;            /* CLOCK_REALTIME */
        uint64_t expires_usec;          /* CLOCK_REALTIME, 0 = never */
        lockbus_scope scope;
        char *description;
} lockbus_holder;

/* --- Handles ------------------------------------------------------------ */

/* Connects to lockbusd: lockbus_open_system() and lockbus_open_user() first
 * try the daemon's direct socket (peer to peer, no bus daemon in between:
 * $LOCKBUS_DIRECT_SOCKET, "" to turn it off; else /run/lockbus/.direct.sock,
 * or $XDG_RUNTIME_DIR/lockbus/.direct.sock for the user instance, used only
 * when the bus address is the default one) and fall back to the system bus
 * (honours DBUS_SYSTEM_BUS_ADDRESS) or the user bus. Locks behave the same
 * on both. lockbus_open_system_remote() connects to the system bus of a
 * remote host over ssh ("user@host", as sd_bus_open_system_remote()). */
int lockbus_open_system(lockbus **ret);
int lockbus_open_user(lockbus **ret);
int lockbus_open_system_remote(lockbus **ret, const char *host);
/* Uses an existing bus connection (takes a reference). */
int lockbus_open_bus(lockbus **ret, sd_bus *bus);

lockbus *lockbus_ref(lockbus *l);
lockbus *lockbus_unref(lockbus *l);         /* NULL-safe; returns NULL */
void lockbus_unrefp(lockbus **l);           /* for __attribute__((cleanup)) */

/* The connection (borrowed): a bus connection, or a direct connection to
 * lockbusd that serves nothing but io.lockbus1. */
sd_bus *lockbus_get_bus(lockbus *l);

/* The message of the service's last error on this handle, e.g.
 * "Resource 'db' already locked by uid 1000 (pid 4242, psql)", or NULL
 * after a success or an error that did not come with a D-Bus error (an
 * invalid argument, -ENOMEM). A failure inside sd-bus (e.g. a lost
 * connection) has sd-bus's error name and message. Valid until the next
 * call on the handle. */
const char *lockbus_last_error_message(lockbus *l);
/* The D-Bus name of that error (e.g. "io.lockbus1.Error.AlreadyLocked"), or NULL. */
const char *lockbus_last_error_name(lockbus *l);

/* --- Calls (synchronous) ------------------------------------------------ */

/* Acquires `resource` (Acquire). options may be NULL (defaults).
 * ret_token may be NULL. */
int lockbus_lock(lockbus *l, const char *resource, const lockbus_options *options, uint64_t *ret_token);

/* Acquires an fd hold (AcquireFd): held while any copy of *ret_fd is open;
 * the fd is O_CLOEXEC, the caller owns it. options->scope is ignored. */
int lockbus_acquire_fd(lockbus *l, const char *resource, const lockbus_options *options,
                       int *ret_fd, uint64_t *ret_token);

int lockbus_unlock(lockbus *l, const char *resource);

/* Unlock without waiting for the answer: returns once the call is queued
 * on the connection (the service sends no reply). The calls of one handle
 * are served in order, so a later call on it (a lock of the same resource,
 * say) sees the hold released. A refusal (not the caller's hold, a storage
 * error) is not reported: the hold then stays, and a later lock of the same
 * resource fails with -EBUSY naming the caller. For a hot lock/unlock loop,
 * where waiting for the answer doubles the round trips of a cycle. */
int lockbus_unlock_nowait(lockbus *l, const char *resource);

/* Restarts the TTL; *ret_expires_usec (may be NULL) is the new expiry, 0
 * for a hold without TTL. */
int lockbus_refresh(lockbus *l, const char *resource, uint64_t *ret_expires_usec);

/* Releases every hold on `resource` (root, or polkit io.lockbus1.break). */
int lockbus_break(lockbus *l, const char *resource);

/* Who holds `resource` (-ENOENT if nobody): an array of *ret_n holders in
 * grant order (their resource and mode filled in), freed with
 * lockbus_holders_free(). */
int lockbus_owner(lockbus *l, const char *resource, lockbus_holder **ret_holders, size_t *ret_n);

/* Every hold, sorted by resource, then grant order. */
int lockbus_list(lockbus *l, lockbus_holder **ret_holders, size_t *ret_n);

void lockbus_holders_free(lockbus_holder *holders, size_t n);

/* Properties of the service. Strings are newly allocated (free()). */
int lockbus_get_version(lockbus *l, char **ret);
int lockbus_get_lock_directory(lockbus *l, char **ret);
int lockbus_get_lock_count(lockbus *l, uint32_t *ret);
int lockbus_get_waiter_count(lockbus *l, uint32_t *ret);

/* --- Holds that end without the handle asking --------------------------- */

/* Called when a hold acquired through this handle ends without an unlock
 * of its own (lockbusd's LockLost signal): reason "expired" (its TTL ran
 * out), "broken" (someone's Break), or "lost" (cluster mode: with the etcd
 * lease of the daemon that granted it). Other ends (an
 * unlock, a closed fd or connection) are not reported. It runs when the
 * handle's bus is processed: from the event loop after
 * lockbus_attach_event(), or from sd_bus_process() on lockbus_get_bus();
 * not from inside the synchronous calls. One handler per handle: setting
 * one replaces the last, NULL removes it. */
typedef void (*lockbus_lost_handler_t)(lockbus *l, const char *resource, uint64_t token, const char *reason,
                                       void *userdata);
int lockbus_set_lost_handler(lockbus *l, lockbus_lost_handler_t handler, void *userdata);

/* --- Asynchronous acquisition ------------------------------------------- */

/* Called once: error 0 and token (and fd for an fd hold, else -1; the
 * callback owns it) on grant; or a negative error with error_message the
 * service's message (or NULL). */
typedef void (*lockbus_acquire_handler_t)(lockbus *l, int error, const char *error_message,
                                          uint64_t token, int fd, void *userdata);

/* Attaches the handle's bus to an event loop (NULL: the default one). */
int lockbus_attach_event(lockbus *l, sd_event *event, int64_t priority);

/* Starts an acquisition and returns at once; `handler` runs from the event
 * loop on grant, error or timeout. With `fd_hold` true it is AcquireFd.
 * Unreferencing *ret_slot (if not NULL) cancels the call: the handler is
 * not called then (a grant that arrives later is released with the
 * connection for connection and fd holds). Freeing the handle cancels all
 * its pending calls the same way. */
int lockbus_lock_async(lockbus *l, const char *resource, const lockbus_options *options, int fd_hold,
                       lockbus_acquire_handler_t handler, void *userdata, sd_bus_slot **ret_slot);

/* --- Strings ------------------------------------------------------------ */

const char *lockbus_mode_to_string(lockbus_mode m);         /* "exclusive", "shared" */
const char *lockbus_scope_to_string(lockbus_scope s);       /* "connection", "persistent", "fd" */

#ifdef __cplusplus
}
#endif
