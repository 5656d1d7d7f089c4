/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* liblockbus: thin sd-bus wrappers around io.lockbus1.Manager (see
 * lockbus.h for the contract and DESIGN.md for the bus API).
 *
 * Every public function checks its arguments, forgets the handle's last
 * error, builds one method call, and records the D-Bus error of a failed
 * call in the handle. Bus errors become negative errno values through
 * lockbus_error_map (common/bus-errors.c), registered with sd-bus when a
 * handle is opened. */

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lockbus.h"

#include "bus-errors.h"
#include "lockbus-names.h"
#include "macro.h"

/* The library is built with hidden visibility; the version script
 * (lockbus.sym) lists what this marks. */
#define _public_ __attribute__((visibility("default")))

/* A waiting Acquire's bus call outlives the wait by this much, so that the
 * service's own Timeout error arrives before sd-bus gives up on the call. */
#define CALL_TIMEOUT_MARGIN_USEC (5U * 1000U * 1000U)

typedef struct AsyncCall AsyncCall;

struct lockbus {
        unsigned n_ref;
        sd_bus *bus;
        bool close_bus;                 /* our own connection: flushed and closed when the handle goes */
        char *error_name;               /* of the last failed call, NULL after a success */
        char *error_message;
        AsyncCall *async_calls;         /* lockbus_lock_async() calls not yet answered */
        sd_bus_slot *lost_slot;         /* the LockLost match, while a handler is set */
        lockbus_lost_handler_t lost_handler;
        void *lost_userdata;
};

/* One lockbus_lock_async() call, the userdata of its reply slot. It is freed
 * by the slot's destroy callback, so it lives exactly as long as the slot. */
struct AsyncCall {
        lockbus *lockbus;               /* NULL once answered or once the handle is gone */
        sd_bus_slot *slot;
        bool owns_slot;                 /* we hold the slot's reference (the caller did not ask for it) */
        bool is_fd_hold;
        lockbus_acquire_handler_t handler;
        void *userdata;
        AsyncCall *prev, *next;
};

static void *mfree(void *p) {
        free(p);
        return NULL;
}

/* --- Strings ----------------------------------------------------------- */

static const char *const mode_table[] = {
        [LOCKBUS_MODE_EXCLUSIVE] = "exclusive",
        [LOCKBUS_MODE_SHARED] = "shared",
};

static const char *const scope_table[] = {
        [LOCKBUS_SCOPE_CONNECTION] = "connection",
        [LOCKBUS_SCOPE_PERSISTENT] = "persistent",
        [LOCKBUS_SCOPE_FD] = "fd",
};

_public_ const char *lockbus_mode_to_string(lockbus_mode m) {
        if ((unsigned) m >= ELEMENTSOF(mode_table))
                return NULL;
        return mode_table[m];
}

_public_ const char *lockbus_scope_to_string(lockbus_scope s) {
        if ((unsigned) s >= ELEMENTSOF(scope_table))
                return NULL;
        return scope_table[s];
}

static int mode_from_string(const char *s, lockbus_mode *ret) {
        for (size_t i = 0; i < ELEMENTSOF(mode_table); i++)
                if (streq(s, mode_table[i])) {
                        *ret = (lockbus_mode) i;
                        return 0;
                }
        return -EBADMSG;
}

static int scope_from_string(const char *s, lockbus_scope *ret) {
        for (size_t i = 0; i < ELEMENTSOF(scope_table); i++)
                if (streq(s, scope_table[i])) {
                        *ret = (lockbus_scope) i;
                        return 0;
                }
        return -EBADMSG;
}

/* --- Last error ---------------------------------------------------------- */

static void lockbus_clear_error(lockbus *l) {
        l->error_name = mfree(l->error_name);
        l->error_message = mfree(l->error_message);
}

/* Keeps the D-Bus error of a failed call (if the call failed with one). */
static void lockbus_set_error(lockbus *l, const sd_bus_error *e) {
        lockbus_clear_error(l);
        if (!e || !e->name)
                return;
        /* Out of memory only loses the text; the errno is returned anyway. */
        l->error_name = strdup(e->name);
        if (e->message)
                l->error_message = strdup(e->message);
}

_public_ const char *lockbus_last_error_message(lockbus *l) {
        return l ? l->error_message : NULL;
}

_public_ const char *lockbus_last_error_name(lockbus *l) {
        return l ? l->error_name : NULL;
}

/* --- Asynchronous calls: bookkeeping ------------------------------------ */

static void async_call_unlink(AsyncCall *c) {
        lockbus *l = c->lockbus;

        if (!l)
                return;
        if (c->prev)
                c->prev->next = c->next;
        else
                l->async_calls = c->next;
        if (c->next)
                c->next->prev = c->prev;
        c->prev = c->next = NULL;
        c->lockbus = NULL;
}

static void async_call_destroy(void *userdata) {
        AsyncCall *c = userdata;

        async_call_unlink(c);
        free(c);
}

/* --- Handles ------------------------------------------------------------ */

static int lockbus_new(lockbus **ret, sd_bus *bus, bool close_bus) {
        lockbus *l;

        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        l->n_ref = 1;
        l->bus = bus;
        l->close_bus = close_bus;
        *ret = l;
        return 0;
}

typedef int (*bus_open_func_t)(sd_bus **ret, const char *description);

/* lockbusd's direct socket (the brokerless fast path), if this handle
 * should try it: $LOCKBUS_DIRECT_SOCKET ("" turns it off), else the
 * daemon's default, but only when the bus is the default one too (a
 * private bus has a daemon of its own). */
static char *direct_socket_path(bool user) {
        const char *e, *runtime;

        e = getenv("LOCKBUS_DIRECT_SOCKET");
        if (e)
                return *e ? strdup(e) : NULL;

        if (!user)
                return getenv("DBUS_SYSTEM_BUS_ADDRESS") ? NULL : strdup("/run/lockbus/" LOCKBUS_DIRECT_SOCKET_NAME);

        runtime = getenv("XDG_RUNTIME_DIR");
        if (!runtime || runtime[0] != '/')
                return NULL;
        e = getenv("DBUS_SESSION_BUS_ADDRESS");
        if (e) {
                char *default_address = NULL;
                bool is_default;

                if (asprintf(&default_address, "unix:path=%s/bus", runtime) < 0)
                        return NULL;
                is_default = strcmp(e, default_address) == 0;
                free(default_address);
                if (!is_default)
                        return NULL;
        }

        char *path = NULL;
        if (asprintf(&path, "%s/lockbus/" LOCKBUS_DIRECT_SOCKET_NAME, runtime) < 0)
                return NULL;
        return path;
}

/* A peer-to-peer connection to lockbusd, or a negative errno if it does
 * not listen there (then the bus is used). */
static int open_direct(const char *path, sd_bus **ret) {
        _cleanup_(sd_bus_unrefp) sd_bus *bus = NULL;
        char *address = NULL;
        int r;

        if (access(path, F_OK) < 0)
                return -errno;

        if (asprintf(&address, "unix:path=%s", path) < 0)
                return -ENOMEM;

        r = sd_bus_new(&bus);
        if (r >= 0)
                r = sd_bus_set_address(bus, address);
        free(address);
        if (r >= 0)
                r = sd_bus_set_description(bus, "lockbus-direct");
        if (r >= 0)
                r = sd_bus_negotiate_fds(bus, true);
        if (r >= 0)
                r = sd_bus_start(bus);
        /* sd_bus_start() only connects: the daemon may still turn the
         * connection away (a uid over its limit, an idle exit), which a
         * first call would meet. Make that call here, while the bus is
         * still the fallback. */
        if (r >= 0)
                r = sd_bus_call_method(bus, NULL, LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus.Peer", "Ping",
                                       NULL, NULL, NULL);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(bus);
        return 0;
}

static int lockbus_open_with(lockbus **ret, bus_open_func_t open_func, bool user) {
        _cleanup_(sd_bus_unrefp) sd_bus *bus = NULL;
        char *direct = NULL;
        int r;

        if (!ret)
                return -EINVAL;

        r = lockbus_error_map_register();
        if (r < 0)
                return r;

        direct = direct_socket_path(user);
        if (direct) {
                r = open_direct(direct, &bus);
                free(direct);
        }
        if (!bus) {
                r = open_func(&bus, "lockbus");
                if (r < 0)
                        return r;
        }

        r = lockbus_new(ret, bus, true);
        if (r < 0)
                return r;
        TAKE_PTR(bus);
        return 0;
}

_public_ int lockbus_open_system(lockbus **ret) {
        return lockbus_open_with(ret, sd_bus_open_system_with_description, /* user= */ false);
}

_public_ int lockbus_open_user(lockbus **ret) {
        return lockbus_open_with(ret, sd_bus_open_user_with_description, /* user= */ true);
}

_public_ int lockbus_open_system_remote(lockbus **ret, const char *host) {
        _cleanup_(sd_bus_unrefp) sd_bus *bus = NULL;
        int r;

        if (!ret || !host)
                return -EINVAL;

        r = lockbus_error_map_register();
        if (r < 0)
                return r;

        r = sd_bus_open_system_remote(&bus, host);
        if (r < 0)
                return r;

        r = lockbus_new(ret, bus, true);
        if (r < 0)
                return r;
        TAKE_PTR(bus);
        return 0;
}

_public_ int lockbus_open_bus(lockbus **ret, sd_bus *bus) {
        int r;

        if (!ret || !bus)
                return -EINVAL;

        r = lockbus_error_map_register();
        if (r < 0)
                return r;

        r = lockbus_new(ret, bus, false);
        if (r < 0)
                return r;
        sd_bus_ref(bus);
        return 0;
}

static lockbus *lockbus_free(lockbus *l) {
        /* Cancel what is still pending: a handler never sees a freed handle.
         * A slot we own goes now (its destroy callback frees the call); a
         * slot the caller holds stays theirs, its call simply calls nobody. */
        while (l->async_calls) {
                AsyncCall *c = l->async_calls;

                async_call_unlink(c);
                if (c->owns_slot) {
                        c->owns_slot = false;
                        sd_bus_slot_unref(c->slot);
                }
        }

        l->lost_slot = sd_bus_slot_unref(l->lost_slot);
        if (l->close_bus)
                sd_bus_flush_close_unref(l->bus);
        else
                sd_bus_unref(l->bus);

        lockbus_clear_error(l);
        free(l);
        return NULL;
}

_public_ lockbus *lockbus_ref(lockbus *l) {
        if (!l)
                return NULL;
        l->n_ref++;
        return l;
}

_public_ lockbus *lockbus_unref(lockbus *l) {
        if (!l)
                return NULL;
        if (--l->n_ref > 0)
                return NULL;
        return lockbus_free(l);
}

_public_ void lockbus_unrefp(lockbus **l) {
        if (l)
                *l = lockbus_unref(*l);
}

_public_ sd_bus *lockbus_get_bus(lockbus *l) {
        return l ? l->bus : NULL;
}

/* --- Calls --------------------------------------------------------------- */

static int new_method_call(lockbus *l, const char *member, sd_bus_message **ret) {
        return sd_bus_message_new_method_call(l->bus, ret, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                              LOCKBUS_MANAGER_IFACE, member);
}

/* Sends m and waits for the reply at most usec (0: the connection's default
 * method call timeout). */
static int lockbus_call(lockbus *l, sd_bus_message *m, uint64_t usec, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_call(l->bus, m, usec, &error, ret_reply);
        if (r < 0) {
                lockbus_set_error(l, &error);
                return r;
        }
        return 0;
}

/* A call with one string argument and the reply. */
static int lockbus_call_s(lockbus *l, const char *member, const char *arg, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = new_method_call(l, member, &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append_basic(m, 's', arg);
        if (r < 0)
                return r;
        return lockbus_call(l, m, 0, ret_reply);
}

/* The timeout of the bus call of an Acquire that waits wait_usec in the
 * service: the connection's default when it does not wait; when it does,
 * the wait plus a margin (never below the default); no limit for ever. */
static uint64_t acquire_call_timeout(lockbus *l, uint64_t wait_usec) {
        uint64_t def;

        if (wait_usec == 0)
                return 0;
        if (wait_usec >= UINT64_MAX - CALL_TIMEOUT_MARGIN_USEC)
                return UINT64_MAX;      /* sd-bus: no timeout */
        if (sd_bus_get_method_call_timeout(l->bus, &def) < 0)
                def = 0;
        return wait_usec + CALL_TIMEOUT_MARGIN_USEC > def ? wait_usec + CALL_TIMEOUT_MARGIN_USEC : def;
}

static int append_option_s(sd_bus_message *m, const char *name, const char *value) {
        return sd_bus_message_append(m, "{sv}", name, "s", value);
}

static int append_option_t(sd_bus_message *m, const char *name, uint64_t value) {
        return sd_bus_message_append(m, "{sv}", name, "t", value);
}

/* Builds Acquire(s, a{sv}) or AcquireFd(s, a{sv}) and its call timeout.
 * Options equal to the service's defaults are left out, except mode and
 * (for Acquire) scope, which are always passed. */
static int new_acquire_call(lockbus *l, const char *resource, const lockbus_options *options, bool fd_hold,
                            sd_bus_message **ret, uint64_t *ret_usec) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        static const lockbus_options defaults = LOCKBUS_OPTIONS_INIT;
        const lockbus_options *o = options ?: &defaults;
        int r;

        if (!resource)
                return -EINVAL;
        if (!lockbus_mode_to_string(o->mode))
                return -EINVAL;
        if (!fd_hold && o->scope != LOCKBUS_SCOPE_CONNECTION && o->scope != LOCKBUS_SCOPE_PERSISTENT)
                return -EINVAL;

        r = new_method_call(l, fd_hold ? "AcquireFd" : "Acquire", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append_basic(m, 's', resource);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        r = append_option_s(m, "mode", lockbus_mode_to_string(o->mode));
        if (r < 0)
                return r;
        if (!fd_hold) {
                r = append_option_s(m, "scope", lockbus_scope_to_string(o->scope));
                if (r < 0)
                        return r;
        }
        if (o->timeout_usec > 0) {
                r = append_option_t(m, "timeout", o->timeout_usec);
                if (r < 0)
                        return r;
        }
        if (o->ttl_usec > 0) {
                r = append_option_t(m, "ttl", o->ttl_usec);
                if (r < 0)
                        return r;
        }
        if (o->description) {
                r = append_option_s(m, "description", o->description);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(m);
        *ret_usec = acquire_call_timeout(l, o->timeout_usec);
        return 0;
}

/* Reads the (t token) or (h fd, t token) of an Acquire reply; the fd is a
 * new O_CLOEXEC copy. */
static int read_acquire_reply(sd_bus_message *reply, bool fd_hold, int *ret_fd, uint64_t *ret_token) {
        uint64_t token;
        int fd = -1, r;

        if (fd_hold)
                r = sd_bus_message_read(reply, "ht", &fd, &token);
        else
                r = sd_bus_message_read(reply, "t", &token);
        if (r < 0)
                return r;

        if (fd_hold) {
                fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
                if (fd < 0)
                        return -errno;
        }
        if (ret_fd)
                *ret_fd = fd;
        else if (fd >= 0)
                close(fd);
        if (ret_token)
                *ret_token = token;
        return 0;
}

static int lockbus_acquire(lockbus *l, const char *resource, const lockbus_options *options, bool fd_hold,
                           int *ret_fd, uint64_t *ret_token) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        uint64_t usec;
        int r;

        r = new_acquire_call(l, resource, options, fd_hold, &m, &usec);
        if (r < 0)
                return r;
        r = lockbus_call(l, m, usec, &reply);
        if (r < 0)
                return r;
        return read_acquire_reply(reply, fd_hold, ret_fd, ret_token);
}

_public_ int lockbus_lock(lockbus *l, const char *resource, const lockbus_options *options, uint64_t *ret_token) {
        if (!l)
                return -EINVAL;
        lockbus_clear_error(l);
        return lockbus_acquire(l, resource, options, false, NULL, ret_token);
}

_public_ int lockbus_acquire_fd(lockbus *l, const char *resource, const lockbus_options *options,
                                int *ret_fd, uint64_t *ret_token) {
        if (!l || !ret_fd)
                return -EINVAL;
        lockbus_clear_error(l);
        return lockbus_acquire(l, resource, options, true, ret_fd, ret_token);
}

_public_ int lockbus_unlock(lockbus *l, const char *resource) {
        if (!l || !resource)
                return -EINVAL;
        lockbus_clear_error(l);
        return lockbus_call_s(l, "Unlock", resource, NULL);
}

_public_ int lockbus_unlock_nowait(lockbus *l, const char *resource) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        if (!l || !resource)
                return -EINVAL;
        lockbus_clear_error(l);

        r = new_method_call(l, "Unlock", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append_basic(m, 's', resource);
        if (r < 0)
                return r;
        /* The service sends no reply then, so none piles up unread. */
        r = sd_bus_message_set_expect_reply(m, false);
        if (r < 0)
                return r;
        return sd_bus_send(l->bus, m, NULL);
}

_public_ int lockbus_refresh(lockbus *l, const char *resource, uint64_t *ret_expires_usec) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint64_t expires;
        int r;

        if (!l || !resource)
                return -EINVAL;
        lockbus_clear_error(l);

        r = lockbus_call_s(l, "Refresh", resource, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "t", &expires);
        if (r < 0)
                return r;
        if (ret_expires_usec)
                *ret_expires_usec = expires;
        return 0;
}

_public_ int lockbus_break(lockbus *l, const char *resource) {
        if (!l || !resource)
                return -EINVAL;
        lockbus_clear_error(l);
        return lockbus_call_s(l, "Break", resource, NULL);
}

/* --- Holders --------------------------------------------------------------- */

static void holder_done(lockbus_holder *h) {
        free(h->resource);
        free(h->comm);
        free(h->sender);
        free(h->description);
}

_public_ void lockbus_holders_free(lockbus_holder *holders, size_t n) {
        if (!holders)
                return;
        for (size_t i = 0; i < n; i++)
                holder_done(&holders[i]);
        free(holders);
}

typedef struct HolderArray {
        lockbus_holder *items;
        size_t n, allocated;
} HolderArray;

static void holder_array_done(HolderArray *a) {
        lockbus_holders_free(a->items, a->n);
        *a = (HolderArray) {};
}

/* A zeroed slot at the end of the array. */
static lockbus_holder *holder_array_add(HolderArray *a) {
        if (a->n == a->allocated) {
                size_t k = a->allocated ? a->allocated * 2 : 8;
                lockbus_holder *p;

                if (k > SIZE_MAX / sizeof(lockbus_holder))
                        return NULL;
                p = realloc(a->items, k * sizeof(lockbus_holder));
                if (!p)
                        return NULL;
                a->items = p;
                a->allocated = k;
        }
        a->items[a->n] = (lockbus_holder) {};
        return &a->items[a->n++];
}

static int strdup_to(char **ret, const char *s) {
        *ret = strdup(s);
        return *ret ? 0 : -ENOMEM;
}

/* Reads one array of holders, each "(uusstttss)", or "(ssuusstttss)" when
 * with_resource. Without resource every holder gets `resource` and `mode`. */
static int read_holder_items(sd_bus_message *reply, bool with_resource, const char *resource, lockbus_mode mode,
                             HolderArray *a) {
        for (;;) {
                const char *res = resource, *mode_str = NULL, *comm, *sender, *scope, *description;
                uint32_t uid, pid;
                uint64_t token, since, expires;
                lockbus_holder *h;
                int r;

                if (with_resource)
                        r = sd_bus_message_read(reply, "(ssuusstttss)", &res, &mode_str, &uid, &pid, &comm,
                                                &sender, &token, &since, &expires, &scope, &description);
                else
                        r = sd_bus_message_read(reply, "(uusstttss)", &uid, &pid, &comm, &sender, &token,
                                                &since, &expires, &scope, &description);
                if (r < 0)
                        return r;
                if (r == 0)
                        return 0;

                h = holder_array_add(a);
                if (!h)
                        return -ENOMEM;
                h->mode = mode;
                if (mode_str) {
                        r = mode_from_string(mode_str, &h->mode);
                        if (r < 0)
                                return r;
                }
                r = scope_from_string(scope, &h->scope);
                if (r < 0)
                        return r;
                h->uid = (uid_t) uid;
                h->pid = (pid_t) pid;
                h->token = token;
                h->since_usec = since;
                h->expires_usec = expires;
                if ((r = strdup_to(&h->resource, res)) < 0 ||
                    (r = strdup_to(&h->comm, comm)) < 0 ||
                    (r = strdup_to(&h->sender, sender)) < 0 ||
                    (r = strdup_to(&h->description, description)) < 0)
                        return r;
        }
}

/* The array of holders of an Owner or ListLocks reply, handed to the
 * caller (lockbus_holders_free()) only when all of it was read. */
static int read_holders(sd_bus_message *reply, bool with_resource, const char *resource, lockbus_mode mode,
                        lockbus_holder **ret_holders, size_t *ret_n) {
        _cleanup_(holder_array_done) HolderArray a = {};
        int r;

        r = sd_bus_message_enter_container(reply, 'a', with_resource ? "(ssuusstttss)" : "(uusstttss)");
        if (r < 0)
                return r;
        r = read_holder_items(reply, with_resource, resource, mode, &a);
        if (r < 0)
                return r;
        r = sd_bus_message_exit_container(reply);
        if (r < 0)
                return r;

        *ret_n = a.n;
        *ret_holders = TAKE_PTR(a.items);
        a = (HolderArray) {};
        return 0;
}

_public_ int lockbus_owner(lockbus *l, const char *resource, lockbus_holder **ret_holders, size_t *ret_n) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *mode_str;
        lockbus_mode mode;
        int r;

        if (!l || !resource || !ret_holders || !ret_n)
                return -EINVAL;
        lockbus_clear_error(l);

        r = lockbus_call_s(l, "Owner", resource, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "s", &mode_str);
        if (r < 0)
                return r;
        r = mode_from_string(mode_str, &mode);
        if (r < 0)
                return r;
        return read_holders(reply, false, resource, mode, ret_holders, ret_n);
}

_public_ int lockbus_list(lockbus *l, lockbus_holder **ret_holders, size_t *ret_n) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        int r;

        if (!l || !ret_holders || !ret_n)
                return -EINVAL;
        lockbus_clear_error(l);

        r = new_method_call(l, "ListLocks", &m);
        if (r < 0)
                return r;
        r = lockbus_call(l, m, 0, &reply);
        if (r < 0)
                return r;
        return read_holders(reply, true, NULL, LOCKBUS_MODE_EXCLUSIVE, ret_holders, ret_n);
}

/* --- Properties ------------------------------------------------------------ */

static int get_property_string(lockbus *l, const char *name, char **ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        char *s = NULL;
        int r;

        if (!l || !ret)
                return -EINVAL;
        lockbus_clear_error(l);

        r = sd_bus_get_property_string(l->bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE,
                                       name, &error, &s);
        if (r < 0) {
                lockbus_set_error(l, &error);
                return r;
        }
        *ret = s;
        return 0;
}

static int get_property_u32(lockbus *l, const char *name, uint32_t *ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uint32_t u = 0;
        int r;

        if (!l || !ret)
                return -EINVAL;
        lockbus_clear_error(l);

        r = sd_bus_get_property_trivial(l->bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE,
                                        name, &error, 'u', &u);
        if (r < 0) {
                lockbus_set_error(l, &error);
                return r;
        }
        *ret = u;
        return 0;
}

_public_ int lockbus_get_version(lockbus *l, char **ret) {
        return get_property_string(l, "Version", ret);
}

_public_ int lockbus_get_lock_directory(lockbus *l, char **ret) {
        return get_property_string(l, "LockDirectory", ret);
}

_public_ int lockbus_get_lock_count(lockbus *l, uint32_t *ret) {
        return get_property_u32(l, "LockCount", ret);
}

_public_ int lockbus_get_waiter_count(lockbus *l, uint32_t *ret) {
        return get_property_u32(l, "WaiterCount", ret);
}

/* --- Holds that end without the handle asking ------------------------------- */

static int on_lock_lost(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        lockbus *l = userdata;
        const char *resource, *reason;
        uint64_t token;

        /* A malformed signal is not lockbusd's: nothing to report. */
        if (sd_bus_message_read(m, "sts", &resource, &token, &reason) < 0)
                return 0;
        if (l->lost_handler)
                l->lost_handler(l, resource, token, reason, l->lost_userdata);
        return 0;
}

_public_ int lockbus_set_lost_handler(lockbus *l, lockbus_lost_handler_t handler, void *userdata) {
        int r;

        if (!l)
                return -EINVAL;

        if (!handler) {
                l->lost_slot = sd_bus_slot_unref(l->lost_slot);
                l->lost_handler = NULL;
                l->lost_userdata = NULL;
                return 0;
        }

        if (!l->lost_slot) {
                /* LockLost is addressed to us: the bus needs no match rule
                 * for it, and the async AddMatch never blocks. On a direct
                 * connection messages carry no sender. */
                r = sd_bus_match_signal_async(l->bus, &l->lost_slot,
                                              sd_bus_is_bus_client(l->bus) > 0 ? LOCKBUS_BUS_NAME : NULL,
                                              LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "LockLost",
                                              on_lock_lost, NULL, l);
                if (r < 0)
                        return r;
        }
        l->lost_handler = handler;
        l->lost_userdata = userdata;
        return 0;
}

/* --- Asynchronous acquisition ---------------------------------------------- */

_public_ int lockbus_attach_event(lockbus *l, sd_event *event, int64_t priority) {
        sd_event *current, *def = NULL;
        int r;

        if (!l)
                return -EINVAL;

        current = sd_bus_get_event(l->bus);
        if (current) {
                /* Attaching again to the same loop is fine; to another is not. */
                if (!event) {
                        r = sd_event_default(&def);
                        if (r < 0)
                                return r;
                        event = def;
                }
                r = current == event ? 0 : -EBUSY;
                sd_event_unref(def);
                return r;
        }

        return sd_bus_attach_event(l->bus, event, priority);
}

static int async_call_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *owned_slot = NULL;
        AsyncCall *c = userdata;
        lockbus *l = c->lockbus;
        const sd_bus_error *e;
        uint64_t token = 0;
        int fd = -1, r;

        if (!l)
                return 0;       /* the handle is gone */

        /* No longer pending. sd-bus holds a reference on the slot while we
         * run, so dropping ours (at return) frees the call only after the
         * handler, which may unref the handle. */
        async_call_unlink(c);
        if (c->owns_slot) {
                owned_slot = c->slot;
                c->owns_slot = false;
        }

        e = sd_bus_message_get_error(m);
        if (e) {
                r = -sd_bus_error_get_errno(e);
                lockbus_set_error(l, e);
                c->handler(l, r < 0 ? r : -EIO, e->message, 0, -1, c->userdata);
                return 0;
        }

        lockbus_clear_error(l);
        r = read_acquire_reply(m, c->is_fd_hold, &fd, &token);
        if (r < 0)
                c->handler(l, r, NULL, 0, -1, c->userdata);
        else
                c->handler(l, 0, NULL, token, fd, c->userdata);
        return 0;
}

_public_ int lockbus_lock_async(lockbus *l, const char *resource, const lockbus_options *options, int fd_hold,
                                lockbus_acquire_handler_t handler, void *userdata, sd_bus_slot **ret_slot) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        AsyncCall *c;
        uint64_t usec;
        int r;

        if (!l || !handler)
                return -EINVAL;
        lockbus_clear_error(l);

        r = new_acquire_call(l, resource, options, fd_hold, &m, &usec);
        if (r < 0)
                return r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->is_fd_hold = fd_hold;
        c->handler = handler;
        c->userdata = userdata;

        r = sd_bus_call_async(l->bus, &slot, m, async_call_reply, c, usec);
        if (r < 0) {
                free(c);
                return r;
        }
        /* From now on the slot owns c: its destroy callback frees it. */
        r = sd_bus_slot_set_destroy_callback(slot, async_call_destroy);
        if (r < 0) {
                free(c);
                return r;
        }

        c->slot = slot;
        c->lockbus = l;
        c->next = l->async_calls;
        if (c->next)
                c->next->prev = c;
        l->async_calls = c;

        if (ret_slot)
                *ret_slot = TAKE_PTR(slot);
        else {
                c->owns_slot = true;
                TAKE_PTR(slot);
        }
        return 0;
}
