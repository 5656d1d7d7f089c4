/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* A torture client: locks and unlocks random resources, in both modes and
 * all scopes, with and without waiting, and records what it does.
 *
 * Rules that keep the live checks sound (README.md):
 *   - a hold enters its critical section (torture_enter()) only after its
 *     grant was answered, and leaves it (torture_exit()) before it is
 *     released in any way (Unlock, closing the fd, closing the bus);
 *   - several holds are acquired in increasing resource order (no
 *     deadlock with waits for ever);
 *   - an fd hold of a generation that died leaves its critical section as
 *     soon as the client sees the death (the futex on state_seq wakes it
 *     in its critical section), and the controller starts the next
 *     generation only after that;
 *   - a call that lockbusd took with it when it died (NoReply) may have
 *     been carried out: the client looks its hold up with Owner (its own
 *     unique name in `sender`) once the next generation serves.
 *
 * The log, one line per record, each written with one write(2):
 *   A SLOT INC RES MODE SCOPE TIMEOUT SEND QUEUED DONE OUTCOME TOKEN SENDER
 *     a finished Acquire (or Lock): times in CLOCK_MONOTONIC µs (QUEUED 0
 *     if the wait was not confirmed), TIMEOUT in µs or "max", OUTCOME one
 *     of granted, busy, timeout, gone, recovered, failed; SENDER the
 *     unique name that answered;
 *   E SLOT INC RES TOKEN MODE SCOPE TIME   entering a critical section;
 *   X SLOT INC RES TIME WHY                leaving it (release, fd-lost,
 *                                          disconnect, stale);
 *   S SLOT INC stopped                     the end of a clean stop.
 * The checker reads A and S; E and X are for the post-mortem. */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "torture.h"

#define TIMEOUT_MARGIN_USEC (60U * 1000000ULL)
#define TTL_USEC (3600U * 1000000ULL)

typedef struct Held {
        unsigned res;
        TortureMode mode;
        TortureScope scope;
        uint64_t token;
        uint32_t gen;           /* the generation asked (fd holds: the one that granted it) */
        int fd;                 /* fd holds */
        bool has_ttl;
} Held;

typedef struct Client {
        TortureRun *run;
        TortureShared *s;
        unsigned slot;
        unsigned incarnation;
        uid_t uid;
        int log_fd;
        GRand *rand;
        sd_bus *bus;
        const char *unique;     /* of bus */
        Held held[TORTURE_MAX_HELD];
        unsigned n_held;
} Client;

typedef enum CallKind {
        CALL_OK,
        CALL_FAILED,            /* lockbusd answered with an error */
        CALL_GONE,              /* lockbusd died with the call: it may have been carried out */
        CALL_UNDELIVERED,       /* nobody owned io.lockbus1: not carried out */
} CallKind;

static void client_set_activity(Client *c, TortureOp op, unsigned res) {
        TortureActivity *a = &c->s->activity[c->slot];

        atomic_store(&a->op, op);
        atomic_store(&a->resource, res);
        atomic_store(&a->since, test_now_monotonic());
}

static void client_log(Client *c, const char *format, ...) _printf_(2, 3);
static void client_log(Client *c, const char *format, ...) {
        char buf[1024];
        va_list ap;
        int n;

        va_start(ap, format);
        n = vsnprintf(buf, sizeof(buf) - 1, format, ap);
        va_end(ap);
        if (n < 0)
                return;
        n = MIN(n, (int) sizeof(buf) - 2);
        buf[n++] = '\n';
        /* One write: a record is whole or missing (killed before it). */
        (void) !write(c->log_fd, buf, (size_t) n);
}

static uint64_t rand_range(Client *c, uint64_t lo, uint64_t hi) {
        return lo + (uint64_t) g_rand_double_range(c->rand, 0, (double) (hi - lo + 1));
}

static bool chance(Client *c, double p) {
        return g_rand_double(c->rand) < p;
}

static CallKind classify(Client *c, int r, const sd_bus_error *e) {
        if (r >= 0)
                return CALL_OK;
        if (sd_bus_error_has_name(e, SD_BUS_ERROR_SERVICE_UNKNOWN) ||
            sd_bus_error_has_name(e, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                return CALL_UNDELIVERED;
        if (sd_bus_error_has_name(e, SD_BUS_ERROR_NO_REPLY) ||
            sd_bus_error_has_name(e, SD_BUS_ERROR_DISCONNECTED))
                return CALL_GONE;
        return CALL_FAILED;
}

/* Connecting, and publishing the unique name before any call on it. */
static void client_connect(Client *c) {
        TortureShared *s = c->s;
        uint32_t next;
        int r;

        c->bus = torture_bus_connect(c->run->address);
        r = sd_bus_get_unique_name(c->bus, &c->unique);
        if (r < 0)
                g_error("slot %u: no unique name: %s", c->slot, g_strerror(-r));
        next = 1U - atomic_load(&s->unique_index[c->slot]);
        g_strlcpy(s->unique_name[c->slot][next], c->unique, sizeof(s->unique_name[c->slot][next]));
        atomic_store(&s->unique_index[c->slot], next);
}

static Held *client_find(Client *c, unsigned res) {
        for (unsigned i = 0; i < c->n_held; i++)
                if (c->held[i].res == res)
                        return &c->held[i];
        return NULL;
}

static void client_forget(Client *c, Held *h) {
        unsigned i = (unsigned) (h - c->held);

        if (h->fd >= 0)
                close(h->fd);
        memmove(&c->held[i], &c->held[i + 1], (c->n_held - i - 1) * sizeof(Held));
        c->n_held--;
}

static bool held_is_dead_fd(Client *c, const Held *h) {
        return h->scope == TORTURE_FD && atomic_load(&c->s->dead_gen) >= h->gen;
}

/* Leaving a critical section: the occupancy goes first, then the record. */
static void client_exit_cs(Client *c, unsigned res, const char *why) {
        torture_exit(c->run, c->slot, res);
        client_log(c, "X %u %u %u %" PRIu64 " %s", c->slot, c->incarnation, res, test_now_monotonic(), why);
}

/* fd holds of a generation that died are gone (no fd store here): leave
 * their critical sections, so the controller may start the next one. */
static void client_drop_dead_fd_holds(Client *c) {
        for (unsigned i = 0; i < c->n_held;) {
                Held *h = &c->held[i];

                if (!held_is_dead_fd(c, h)) {
                        i++;
                        continue;
                }
                client_exit_cs(c, h->res, "fd-lost");
                torture_count(c->s, CNT_FD_LOST);
                client_forget(c, h);
        }
}

/* Gives up the fd holds of dead generations, then waits until a
 * generation newer than every killed one serves. */
static void client_wait_up(Client *c) {
        TortureShared *s = c->s;

        client_set_activity(c, OP_WAIT_DAEMON, 0);
        for (;;) {
                uint32_t seq = atomic_load(&s->state_seq);

                client_drop_dead_fd_holds(c);
                if (atomic_load(&s->up_gen) > atomic_load(&s->dead_gen))
                        return;
                torture_futex_wait(&s->state_seq, seq, 1000000U);
        }
}

/* After a call failed because no lockbusd answered: gen_asked is the
 * generation read before the call; a failure although nobody killed it is
 * a violation (lockbusd died by itself, or dropped a call). */
static void client_wait_daemon(Client *c, uint32_t gen_asked, const char *what, const sd_bus_error *e) {
        torture_count(c->s, CNT_GONE);
        if (atomic_load(&c->s->dead_gen) < gen_asked)
                torture_violation(c->s, "slot %u: %s failed although lockbusd generation %u was not killed: %s: %s",
                                  c->slot, what, gen_asked, strempty(e->name), strempty(e->message));
        client_wait_up(c);
}

/* --- Calls ------------------------------------------------------------------ */

typedef struct PendingReply {
        sd_bus_message *reply;
} PendingReply;

static int on_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        PendingReply *p = userdata;

        p->reply = sd_bus_message_ref(m);
        return 0;
}

static void client_dispatch(Client *c) {
        int r;

        do
                r = sd_bus_process(c->bus, NULL);
        while (r > 0);
        if (r < 0)
                g_error("slot %u: failed to process the bus: %s", c->slot, g_strerror(-r));
}

/* Acquire or AcquireFd with options; or Lock (persistent, exclusive, no
 * wait, no description). */
static int new_acquire_message(Client *c, unsigned res, TortureMode mode, TortureScope scope, uint64_t timeout,
                               bool ttl, bool use_lock, sd_bus_message **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        g_autofree char *description = g_strdup_printf("torture slot=%u inc=%u", c->slot, c->incarnation);
        int r;

        if (use_lock) {
                r = sd_bus_message_new_method_call(c->bus, &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                                   LOCKBUS_MANAGER_IFACE, "Lock");
                if (r < 0)
                        return r;
                r = sd_bus_message_append(m, "s", c->run->resources[res]);
                if (r < 0)
                        return r;
                *ret = TAKE_PTR(m);
                return 0;
        }

        r = sd_bus_message_new_method_call(c->bus, &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE,
                                           scope == TORTURE_FD ? "AcquireFd" : "Acquire");
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "s", c->run->resources[res]);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "{sv}{sv}{sv}", "mode", "s", torture_mode_to_string(mode),
                                  "timeout", "t", timeout, "description", "s", description);
        if (r >= 0 && scope != TORTURE_FD)
                r = sd_bus_message_append(m, "{sv}", "scope", "s", torture_scope_to_string(scope));
        if (r >= 0 && ttl)
                r = sd_bus_message_append(m, "{sv}", "ttl", "t", TTL_USEC);
        if (r < 0)
                return r;
        r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(m);
        return 0;
}

static int client_owner(Client *c, unsigned res, sd_bus_error *error, sd_bus_message **ret) {
        torture_count(c->s, CNT_CALLS);
        return sd_bus_call_method(c->bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "Owner",
                                  error, ret, "s", c->run->resources[res]);
}

/* Finds a holder in an Owner reply: by token (token != 0), else by sender. */
static bool owner_reply_find(sd_bus_message *reply, uint64_t token, const char *sender, uint64_t *ret_token,
                             const char **ret_mode, const char **ret_scope) {
        const char *mode;

        if (sd_bus_message_read(reply, "s", &mode) < 0 ||
            sd_bus_message_enter_container(reply, 'a', "(uusstttss)") < 0)
                return false;
        for (;;) {
                const char *comm, *s, *scope, *description;
                uint64_t t, since, expires;
                uint32_t uid, pid;
                int r;

                r = sd_bus_message_read(reply, "(uusstttss)", &uid, &pid, &comm, &s, &t, &since, &expires,
                                        &scope, &description);
                if (r <= 0)
                        return false;
                if (token != 0 ? t == token : streq(s, sender)) {
                        if (ret_token)
                                *ret_token = t;
                        if (ret_mode)
                                *ret_mode = mode;
                        if (ret_scope)
                                *ret_scope = scope;
                        return true;
                }
        }
}

/* --- Holding and releasing ------------------------------------------------------ */

static Held *client_add_held(Client *c, unsigned res, TortureMode mode, TortureScope scope, uint64_t token,
                             uint32_t gen, int fd, bool ttl) {
        Held *h;

        g_assert(c->n_held < TORTURE_MAX_HELD);
        h = &c->held[c->n_held++];
        *h = (Held) {
                .res = res,
                .mode = mode,
                .scope = scope,
                .token = token,
                .gen = gen,
                .fd = fd,
                .has_ttl = ttl,
        };
        return h;
}

/* Enters the critical section with a new hold; false if it was an fd grant
 * of a dead generation (then it is forgotten, its fd closed). */
static bool client_enter(Client *c, unsigned res, TortureMode mode, TortureScope scope, uint64_t token,
                         uint32_t gen, int fd, bool ttl, bool check_token) {
        if (torture_enter(c->run, c->slot, res, token, gen, scope, mode, check_token) == ENTER_LOST) {
                if (fd >= 0)
                        close(fd);
                torture_count(c->s, CNT_FD_LOST);
                return false;
        }
        (void) client_add_held(c, res, mode, scope, token, gen, fd, ttl);
        client_log(c, "E %u %u %u %" PRIu64 " %s %s %" PRIu64, c->slot, c->incarnation, res, token,
                   torture_mode_to_string(mode), torture_scope_to_string(scope), test_now_monotonic());
        return true;
}

/* Is the hold with `token` on `res` still there (after a lost Unlock
 * reply)? Waits for lockbusd as needed. */
static bool client_hold_still_there(Client *c, unsigned res, uint64_t token) {
        for (;;) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                uint32_t gen = atomic_load(&c->s->up_gen);
                int r;

                r = client_owner(c, res, &error, &reply);
                switch (classify(c, r, &error)) {
                case CALL_OK:
                        return owner_reply_find(reply, token, NULL, NULL, NULL, NULL);
                case CALL_FAILED:
                        if (!sd_bus_error_has_name(&error, LOCKBUS_ERROR_NOT_LOCKED))
                                torture_violation(c->s, "slot %u: Owner('%s') failed: %s: %s", c->slot,
                                                  c->run->resources[res], error.name, error.message);
                        return false;
                default:
                        client_wait_daemon(c, gen, "Owner", &error);
                }
        }
}

static void client_forget_res(Client *c, unsigned res) {
        Held *h = client_find(c, res);

        if (h)
                client_forget(c, h);
}

/* Leaves the critical section of h and releases it with Unlock (or, for
 * an fd hold and close_fd, by closing the fd). h is forgotten. */
static void client_release(Client *c, Held *h, bool close_fd) {
        unsigned res = h->res;
        uint64_t token = h->token;
        TortureScope scope = h->scope;
        TortureMode mode = h->mode;
        bool maybe_done = false;

        client_set_activity(c, OP_UNLOCK, res);
        client_exit_cs(c, res, "release");

        if (held_is_dead_fd(c, h)) {
                torture_count(c->s, CNT_FD_LOST);
                return client_forget(c, h);
        }
        if (scope == TORTURE_FD && close_fd) {
                torture_count(c->s, CNT_FD_CLOSES);
                return client_forget(c, h);
        }

        for (;;) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                uint32_t gen = atomic_load(&c->s->up_gen);
                int r;

                torture_count(c->s, CNT_CALLS);
                r = sd_bus_call_method(c->bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE,
                                       "Unlock", &error, NULL, "s", c->run->resources[res]);
                switch (classify(c, r, &error)) {
                case CALL_OK:
                        torture_count(c->s, CNT_UNLOCKS);
                        return client_forget_res(c, res);

                case CALL_FAILED:
                        /* After a lost reply the first Unlock may have done it. */
                        if (!maybe_done)
                                torture_violation(c->s, "slot %u: Unlock('%s') of its %s %s hold (token %" PRIu64
                                                  ") failed: %s: %s", c->slot, c->run->resources[res],
                                                  torture_scope_to_string(scope), torture_mode_to_string(mode),
                                                  token, error.name, error.message);
                        return client_forget_res(c, res);

                case CALL_UNDELIVERED:
                        client_wait_daemon(c, gen, "Unlock", &error);
                        break;

                case CALL_GONE:
                        client_wait_daemon(c, gen, "Unlock", &error);
                        if (scope == TORTURE_FD) {
                                /* Its generation is dead: the hold went with it. */
                                torture_count(c->s, CNT_FD_LOST);
                                return client_forget_res(c, res);
                        }
                        /* Done or not? Only if it is still there do we ask
                         * again: an Unlock too many could release another
                         * hold of our uid. */
                        if (!client_hold_still_there(c, res, token))
                                return client_forget_res(c, res);
                        maybe_done = true;
                        break;
                }
                /* Waiting dropped it if it was an fd hold of a dead generation. */
                if (!client_find(c, res))
                        return;
        }
}

/* Closes the bus connection with holds: its connection and fd holds end
 * (the fd holds because we close their fds too), persistent ones stay.
 * Waits until the bus has dropped the old name, so that no release of
 * ours is still in flight when we go on. */
static void client_disconnect(Client *c) {
        g_autoptr(NameWatch) w = NULL;
        g_autofree char *old_name = NULL;
        sd_bus *old_bus;

        client_set_activity(c, OP_OTHER, 0);
        for (unsigned i = 0; i < c->n_held;) {
                Held *h = &c->held[i];

                if (h->scope == TORTURE_PERSISTENT) {
                        i++;
                        continue;
                }
                client_exit_cs(c, h->res, "disconnect");
                client_forget(c, h);
        }
        torture_count(c->s, CNT_DISCONNECTS);

        old_bus = TAKE_PTR(c->bus);
        old_name = g_strdup(c->unique);
        client_connect(c);
        w = name_watch_new(c->bus, old_name);
        sd_bus_flush_close_unref(old_bus);
        if (!name_watch_wait_unowned(w))
                g_error("slot %u: the bus did not drop %s", c->slot, old_name);
}

/* --- Acquiring ---------------------------------------------------------------- */

typedef enum Outcome {
        OUTCOME_GRANTED,
        OUTCOME_BUSY,
        OUTCOME_TIMEOUT,
        OUTCOME_GONE,
        OUTCOME_RECOVERED,
        OUTCOME_FAILED,
} Outcome;

static const char *const outcome_names[] = {
        [OUTCOME_GRANTED] = "granted",
        [OUTCOME_BUSY] = "busy",
        [OUTCOME_TIMEOUT] = "timeout",
        [OUTCOME_GONE] = "gone",
        [OUTCOME_RECOVERED] = "recovered",
        [OUTCOME_FAILED] = "failed",
};

static void count_grant(Client *c, TortureScope scope, TortureMode mode) {
        static const TortureCounter by_scope[_TORTURE_SCOPE_MAX] = {
                [TORTURE_PERSISTENT] = CNT_GRANTS_PERSISTENT,
                [TORTURE_CONNECTION] = CNT_GRANTS_CONNECTION,
                [TORTURE_FD] = CNT_GRANTS_FD,
        };

        torture_count(c->s, CNT_GRANTS);
        torture_count(c->s, by_scope[scope]);
        if (mode == TORTURE_SHARED)
                torture_count(c->s, CNT_GRANTS_SHARED);
}

/* After a lost reply: our hold, if lockbusd granted and stored it before
 * it died. The next generation serves when this is called. */
static bool client_find_lost_hold(Client *c, unsigned res, TortureMode mode, TortureScope scope,
                                  uint64_t *ret_token, char **ret_sender) {
        for (;;) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                uint32_t gen = atomic_load(&c->s->up_gen);
                const char *found_mode = NULL, *found_scope = NULL;
                int r;

                client_set_activity(c, OP_RECOVER, res);
                r = client_owner(c, res, &error, &reply);
                switch (classify(c, r, &error)) {
                case CALL_OK:
                        if (!owner_reply_find(reply, 0, c->unique, ret_token, &found_mode, &found_scope))
                                return false;
                        if (!streq(found_mode, torture_mode_to_string(mode)) ||
                            !streq(found_scope, torture_scope_to_string(scope)))
                                torture_violation(c->s, "slot %u: its hold on '%s' found after a lost reply is %s %s, "
                                                  "asked for %s %s", c->slot, c->run->resources[res], found_mode,
                                                  found_scope, torture_mode_to_string(mode),
                                                  torture_scope_to_string(scope));
                        *ret_sender = g_strdup(sd_bus_message_get_sender(reply));
                        return true;
                case CALL_FAILED:
                        if (!sd_bus_error_has_name(&error, LOCKBUS_ERROR_NOT_LOCKED))
                                torture_violation(c->s, "slot %u: Owner('%s') failed: %s: %s", c->slot,
                                                  c->run->resources[res], error.name, error.message);
                        return false;
                default:
                        client_wait_daemon(c, gen, "Owner", &error);
                }
        }
}

/* One Acquire or AcquireFd. With a timeout, a WaiterCount call on the same
 * connection follows it: lockbusd handles a connection's calls in order,
 * so when its answer arrives without the Acquire's, the Acquire is queued
 * (the QUEUED time of the log). Returns true if the hold is now held and
 * in its critical section. */
static bool client_acquire(Client *c, unsigned res, TortureMode mode, TortureScope scope, uint64_t timeout,
                           bool ttl) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        g_autofree char *sender = NULL;
        g_autofree char *timeout_str = timeout == UINT64_MAX ? g_strdup("max") : g_strdup_printf("%" PRIu64, timeout);
        uint32_t gen = atomic_load(&c->s->up_gen);
        uint64_t t_send, t_queued = 0, t_done, token = 0;
        PendingReply pending = {};
        Outcome outcome = OUTCOME_FAILED;
        bool held = false, use_lock;
        int r, fd = -1;

        /* Lock is Acquire(mode=exclusive, scope=persistent, timeout=0). */
        use_lock = scope == TORTURE_PERSISTENT && mode == TORTURE_EXCLUSIVE && timeout == 0 && !ttl && chance(c, 0.5);

        client_set_activity(c, OP_ACQUIRE, res);
        torture_count(c->s, CNT_ACQUIRES);
        torture_count(c->s, CNT_CALLS);

        if (use_lock)
                torture_count(c->s, CNT_LOCKS);
        r = new_acquire_message(c, res, mode, scope, timeout, ttl, use_lock, &m);
        if (r < 0)
                g_error("slot %u: failed to build an Acquire: %s", c->slot, g_strerror(-r));
        t_send = test_now_monotonic();
        r = sd_bus_call_async(c->bus, &slot, m, on_reply, &pending,
                              timeout == UINT64_MAX ? UINT64_MAX : timeout + TIMEOUT_MARGIN_USEC);
        if (r < 0)
                g_error("slot %u: failed to send an Acquire: %s", c->slot, g_strerror(-r));

        if (timeout > 0) {
                _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
                uint32_t n;

                torture_count(c->s, CNT_CALLS);
                r = torture_get_waiter_count(c->bus, &n, &e);
                client_dispatch(c);
                if (r >= 0 && !pending.reply) {
                        t_queued = test_now_monotonic();
                        torture_count(c->s, CNT_QUEUED);
                }
        }

        while (!pending.reply) {
                client_dispatch(c);
                if (pending.reply)
                        break;
                r = sd_bus_wait(c->bus, UINT64_MAX);
                if (r < 0 && r != -EINTR)
                        g_error("slot %u: failed to wait for the bus: %s", c->slot, g_strerror(-r));
        }
        reply = TAKE_PTR(pending.reply);
        t_done = test_now_monotonic();
        sender = g_strdup(sd_bus_message_get_sender(reply) ?: "-");

        if (!sd_bus_message_is_method_error(reply, NULL)) {
                int borrowed = -1;

                r = scope == TORTURE_FD ? sd_bus_message_read(reply, "ht", &borrowed, &token)
                                        : sd_bus_message_read(reply, "t", &token);
                if (r < 0)
                        g_error("slot %u: bad Acquire reply: %s", c->slot, g_strerror(-r));
                if (scope == TORTURE_FD) {
                        fd = fcntl(borrowed, F_DUPFD_CLOEXEC, 3);
                        if (fd < 0)
                                g_error("slot %u: dup: %s", c->slot, g_strerror(errno));
                }
                outcome = OUTCOME_GRANTED;
                held = true;
        } else {
                r = sd_bus_error_copy(&error, sd_bus_message_get_error(reply));
                switch (classify(c, r, &error)) {
                case CALL_OK:
                        g_assert_not_reached();
                case CALL_FAILED:
                        if (sd_bus_error_has_name(&error, LOCKBUS_ERROR_ALREADY_LOCKED)) {
                                outcome = OUTCOME_BUSY;
                                torture_count(c->s, CNT_BUSY);
                        } else if (sd_bus_error_has_name(&error, LOCKBUS_ERROR_TIMEOUT) && timeout > 0) {
                                outcome = OUTCOME_TIMEOUT;
                                torture_count(c->s, CNT_TIMEOUTS);
                        } else {
                                outcome = OUTCOME_FAILED;
                                torture_violation(c->s, "slot %u: %s('%s', %s, %s, timeout %s) failed: %s: %s",
                                                  c->slot, use_lock ? "Lock" : "Acquire",
                                                  c->run->resources[res], torture_mode_to_string(mode),
                                                  torture_scope_to_string(scope), timeout_str, error.name,
                                                  error.message);
                        }
                        break;
                case CALL_UNDELIVERED:
                        outcome = OUTCOME_GONE;
                        client_wait_daemon(c, gen, "Acquire", &error);
                        break;
                case CALL_GONE:
                        outcome = OUTCOME_GONE;
                        client_wait_daemon(c, gen, "Acquire", &error);
                        g_clear_pointer(&sender, g_free);
                        if (client_find_lost_hold(c, res, mode, scope, &token, &sender)) {
                                outcome = OUTCOME_RECOVERED;
                                torture_count(c->s, CNT_RECOVERED);
                                if (scope == TORTURE_FD) {
                                        /* Without systemd's fd store an fd hold
                                         * does not survive a restart. */
                                        torture_violation(c->s, "slot %u: fd hold on '%s' (token %" PRIu64
                                                          ") survived a lockbusd restart", c->slot,
                                                          c->run->resources[res], token);
                                        (void) client_add_held(c, res, mode, TORTURE_CONNECTION, token,
                                                               atomic_load(&c->s->up_gen), -1, false);
                                        client_release(c, client_find(c, res), false);
                                } else {
                                        gen = atomic_load(&c->s->up_gen);
                                        held = true;
                                }
                        } else
                                sender = g_strdup("-");
                        break;
                }
        }

        client_log(c, "A %u %u %u %s %s %s %" PRIu64 " %" PRIu64 " %" PRIu64 " %s %" PRIu64 " %s",
                   c->slot, c->incarnation, res, torture_mode_to_string(mode), torture_scope_to_string(scope),
                   timeout_str, t_send, t_queued, t_done, outcome_names[outcome], token, sender);

        if (!held)
                return false;
        if (outcome == OUTCOME_GRANTED) {
                count_grant(c, scope, mode);
                if (t_queued > 0)
                        torture_count(c->s, CNT_GRANTS_AFTER_WAIT);
                torture_atomic_max(&c->s->max_token_seen, token);
        }
        if (token == 0)
                torture_violation(c->s, "slot %u: granted '%s' with token 0", c->slot, c->run->resources[res]);

        client_set_activity(c, OP_IN_CS, res);
        return client_enter(c, res, mode, scope, token, gen, fd, ttl, /* check_token= */ true);
}

/* --- In the critical section ------------------------------------------------------ */

/* Owner must list our hold with its token, mode and scope (or Refresh
 * must find it), as long as we are in its critical section. */
static void client_check_held(Client *c, Held *h) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        unsigned res = h->res;
        uint64_t token = h->token;
        TortureMode mode = h->mode;
        TortureScope scope = h->scope;
        bool refresh = h->has_ttl && chance(c, 0.2);
        uint32_t gen = atomic_load(&c->s->up_gen);
        const char *found_mode = NULL, *found_scope = NULL;
        bool ok;
        int r;

        if (refresh) {
                torture_count(c->s, CNT_REFRESHES);
                torture_count(c->s, CNT_CALLS);
                r = sd_bus_call_method(c->bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE,
                                       "Refresh", &error, &reply, "s", c->run->resources[res]);
        } else {
                torture_count(c->s, CNT_OWNER_CHECKS);
                r = client_owner(c, res, &error, &reply);
        }

        switch (classify(c, r, &error)) {
        case CALL_OK:
                if (refresh) {
                        uint64_t expires = 0;

                        ok = sd_bus_message_read(reply, "t", &expires) >= 0 && expires > test_now_realtime();
                        break;
                }
                ok = owner_reply_find(reply, token, NULL, NULL, &found_mode, &found_scope) &&
                        streq(found_mode, torture_mode_to_string(mode)) &&
                        streq(found_scope, torture_scope_to_string(scope));
                break;
        case CALL_FAILED:
                ok = false;
                break;
        default:
                client_wait_daemon(c, gen, refresh ? "Refresh" : "Owner", &error);
                return;
        }

        /* An fd hold whose generation died meanwhile is not ours to
         * check any more. */
        h = client_find(c, res);
        if (!ok && h && !held_is_dead_fd(c, h))
                torture_violation(c->s, "slot %u: in its critical section with %s %s hold on '%s' (token %" PRIu64
                                  "), but %s %s: %s%s%s", c->slot, torture_mode_to_string(mode),
                                  torture_scope_to_string(scope), c->run->resources[res], token,
                                  refresh ? "Refresh" : "Owner",
                                  r < 0 ? "failed" : "does not list it as such",
                                  strempty(error.name), error.name ? ": " : "", strempty(error.message));
}

/* Sleeps up to usec as part of the workload, waking early when the run
 * stops or a generation dies (then fd holds of it leave at once). */
static void client_pause(Client *c, uint64_t usec) {
        uint64_t deadline = test_now_monotonic() + usec;

        for (;;) {
                uint32_t seq = atomic_load(&c->s->state_seq);
                uint64_t n;

                client_drop_dead_fd_holds(c);
                n = test_now_monotonic();
                if (atomic_load(&c->s->stop) || n >= deadline)
                        return;
                torture_futex_wait(&c->s->state_seq, seq, deadline - n);
        }
}

static void client_critical_section(Client *c) {
        unsigned n_checks = (unsigned) rand_range(c, 0, 2);
        uint32_t dead_before = atomic_load(&c->s->dead_gen);
        unsigned res[TORTURE_MAX_HELD], n = 0;

        for (unsigned i = 0; i < n_checks && c->n_held > 0; i++)
                client_check_held(c, &c->held[rand_range(c, 0, c->n_held - 1)]);
        client_pause(c, rand_range(c, 0, 4000));

        if (atomic_load(&c->s->dead_gen) == dead_before || c->n_held == 0)
                return;

        /* lockbusd was killed while we were inside. The fd holds have left
         * (client_pause()); with persistent and connection holds we stay
         * inside until the next generation serves, and see that it has
         * them: a grant answered is stored, and a connection hold of a
         * live connection is taken back at start. */
        client_wait_up(c);
        for (unsigned i = 0; i < c->n_held; i++)
                res[n++] = c->held[i].res;
        for (unsigned i = 0; i < n; i++) {
                Held *h = client_find(c, res[i]);

                if (!h)
                        continue;
                torture_count(c->s, CNT_SURVIVED);
                client_check_held(c, h);
        }
}

static void client_release_all(Client *c, bool allow_close) {
        while (c->n_held > 0) {
                Held *h = &c->held[c->n_held - 1];

                client_release(c, h, allow_close && h->scope == TORTURE_FD && chance(c, 0.5));
        }
}

/* --- The workload ----------------------------------------------------------------- */

static uint64_t pick_timeout(Client *c) {
        double p = g_rand_double(c->rand);

        if (p < 0.25)
                return 0;                               /* fail at once */
        if (p < 0.50)
                return rand_range(c, 1000, 20000);      /* short */
        if (p < 0.85)
                return rand_range(c, 100000, 2000000);  /* long */
        return UINT64_MAX;                              /* for ever */
}

static TortureScope pick_scope(Client *c) {
        double p = g_rand_double(c->rand);

        return p < 0.25 ? TORTURE_PERSISTENT : p < 0.65 ? TORTURE_CONNECTION : TORTURE_FD;
}

static void client_iteration(Client *c) {
        unsigned n_res = c->run->options->n_resources;
        unsigned want[2], n = (n_res > 1 && chance(c, 0.3)) ? 2 : 1;

        want[0] = (unsigned) rand_range(c, 0, n_res - 1);
        if (n == 2) {
                want[1] = (unsigned) rand_range(c, 0, n_res - 2);
                if (want[1] >= want[0])
                        want[1]++;
                /* Increasing resource order: no deadlock with waits for ever. */
                if (want[1] < want[0]) {
                        unsigned t = want[0];

                        want[0] = want[1];
                        want[1] = t;
                }
        }

        for (unsigned k = 0; k < n && !atomic_load(&c->s->stop); k++)
                if (!client_acquire(c, want[k], chance(c, 0.4) ? TORTURE_SHARED : TORTURE_EXCLUSIVE,
                                    pick_scope(c), pick_timeout(c), chance(c, 0.1)))
                        break;

        if (c->n_held > 0)
                client_critical_section(c);

        if (c->n_held > 0 && chance(c, 0.05))
                client_disconnect(c);
        client_release_all(c, true);

        client_set_activity(c, OP_IDLE, 0);
        client_pause(c, rand_range(c, 0, 2000));
}

/* Between iterations, holding nothing: if the controller wants a quiet
 * moment, wait until it is over. */
static void client_maybe_pause(Client *c) {
        TortureShared *s = c->s;

        if (!atomic_load(&s->pause))
                return;
        g_assert(c->n_held == 0);
        client_set_activity(c, OP_IDLE, 0);
        atomic_fetch_add(&s->n_paused, 1);
        torture_bump(&s->cs_seq);
        for (;;) {
                uint32_t seq = atomic_load(&s->state_seq);

                if (!atomic_load(&s->pause) || atomic_load(&s->stop))
                        break;
                torture_futex_wait(&s->state_seq, seq, UINT64_MAX);
        }
        atomic_fetch_sub(&s->n_paused, 1);
}

/* A new incarnation takes over what a killed one left: its persistent
 * holds still in their critical sections (the controller cleared the
 * others when it killed it), and persistent holds granted to it whose
 * reply it never saw (found by their description, or for Lock by the
 * unique name of its last connection: a call is only ever pending on the
 * current one), then releases them. */
static void client_recover(Client *c, const char *predecessor) {
        g_autofree char *prefix = g_strdup_printf("torture slot=%u ", c->slot);
        g_autoptr(GPtrArray) locks = NULL;
        TortureShared *s = c->s;

        client_set_activity(c, OP_RECOVER, 0);
        for (unsigned res = 0; res < c->run->options->n_resources; res++) {
                OccWord w = atomic_load(&s->occ[res][c->slot]);

                if (w == 0)
                        continue;
                if (occ_scope(w) != TORTURE_PERSISTENT) {
                        torture_violation(s, "slot %u: a killed incarnation left a %s occupancy on '%s'",
                                          c->slot, torture_scope_to_string(occ_scope(w)), c->run->resources[res]);
                        client_exit_cs(c, res, "stale");
                        continue;
                }
                (void) client_add_held(c, res, occ_mode(w), TORTURE_PERSISTENT, occ_token(w), occ_gen(w), -1, false);
                torture_count(s, CNT_ADOPTED);
        }

        for (;;) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                uint32_t gen = atomic_load(&s->up_gen);
                int r;

                torture_count(s, CNT_CALLS);
                r = torture_list_locks(c->bus, &locks, &error);
                if (r >= 0)
                        break;
                if (classify(c, r, &error) == CALL_FAILED)
                        g_error("slot %u: ListLocks failed: %s", c->slot, error.message ?: g_strerror(-r));
                client_wait_daemon(c, gen, "ListLocks", &error);
        }

        for (unsigned i = 0; i < c->n_held; i++) {
                bool listed = false;

                for (guint j = 0; j < locks->len && !listed; j++)
                        listed = ((ListedHold *) locks->pdata[j])->token == c->held[i].token;
                if (!listed)
                        torture_violation(s, "slot %u: persistent hold on '%s' (token %" PRIu64 ") of a killed "
                                          "incarnation, still in its critical section, is not listed",
                                          c->slot, c->run->resources[c->held[i].res], c->held[i].token);
        }

        for (guint j = 0; j < locks->len; j++) {
                ListedHold *l = locks->pdata[j];
                int scope = torture_scope_from_string(l->scope);
                unsigned res;

                /* Ours by description, or a Lock (no description) of our
                 * predecessor's last connection. */
                if (!g_str_has_prefix(l->description, prefix) &&
                    !(predecessor && streq(l->sender, predecessor) && scope == TORTURE_PERSISTENT))
                        continue;
                for (res = 0; res < c->run->options->n_resources; res++)
                        if (streq(c->run->resources[res], l->resource))
                                break;
                g_assert(res < c->run->options->n_resources);

                if (scope == TORTURE_CONNECTION && predecessor && streq(l->sender, predecessor))
                        torture_violation(s, "slot %u: connection hold on '%s' (token %" PRIu64 ") of %s outlived "
                                          "its connection", c->slot, l->resource, l->token, predecessor);
                if (scope != TORTURE_PERSISTENT || client_find(c, res))
                        continue;
                /* Granted, but the reply went to a killed incarnation. */
                torture_count(s, CNT_RECOVERED);
                (void) client_enter(c, res, streq(l->mode, "shared") ? TORTURE_SHARED : TORTURE_EXCLUSIVE,
                                    TORTURE_PERSISTENT, l->token, atomic_load(&s->up_gen), -1, false,
                                    /* check_token= */ false);
        }

        client_release_all(c, false);
}

int torture_client_main(TortureRun *run, unsigned slot, unsigned incarnation, uid_t uid, int log_fd) {
        g_autofree char *predecessor = NULL;
        Client c = {
                .run = run,
                .s = run->shared,
                .slot = slot,
                .incarnation = incarnation,
                .uid = uid,
                .log_fd = log_fd,
        };
        char comm[16];
        int r;

        r = test_become_uid(uid);
        if (r < 0)
                g_error("slot %u: failed to become uid %u: %s", slot, (unsigned) uid, g_strerror(-r));
        /* After the uid change, which clears it: never outlive the harness. */
        (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() == 1)
                return 1;
        (void) snprintf(comm, sizeof(comm), "torture-%u", slot);
        (void) prctl(PR_SET_NAME, comm);

        c.rand = g_rand_new_with_seed((guint32) (run->options->seed * 1000003U + slot * 7919U + incarnation * 104729U));
        if (incarnation > 0) {
                uint32_t i = atomic_load(&c.s->unique_index[slot]);

                predecessor = g_strdup(c.s->unique_name[slot][i]);
        }

        client_connect(&c);
        client_recover(&c, predecessor);

        while (!atomic_load(&c.s->stop)) {
                client_maybe_pause(&c);
                client_iteration(&c);
        }

        client_set_activity(&c, OP_STOPPING, 0);
        client_release_all(&c, false);
        client_log(&c, "S %u %u stopped", slot, incarnation);
        sd_bus_flush_close_unref(c.bus);
        g_rand_free(c.rand);
        return 0;
}
