/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Cluster mode under load: client processes on both hosts lock and unlock
 * a few resources at once, exclusive and shared, waiting for each other,
 * for a few seconds. A checker in shared memory (as in tests/torture)
 * proves, live, what the cluster promises across hosts:
 *  - mutual exclusion: never two exclusive holders of a resource, never a
 *    shared and an exclusive one, whichever host granted them;
 *  - fencing tokens: an exclusive grant's token is above every token that
 *    entered the resource before it, a shared grant's above every
 *    exclusive one's (shared holds granted together may enter in any
 *    order);
 *  - progress: every client gets in, and every call is answered (a grant,
 *    or nothing else: waits are unbounded).
 * A second run kills host A's lockbusd twice meanwhile (the bus activates
 * the next one on the next call): a call that failed with it is followed
 * by Owner, and a client that holds the resource after all (granted just
 * before the kill, kept by the next daemon) enters with that hold. The
 * checks stand across the kills.
 * Entering publishes the occupancy and then reads the others' (sequentially
 * consistent atomics), so of two conflicting critical sections the later
 * one sees the earlier. */

#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluster-test.h"

#define N_RESOURCES 3
#define N_CLIENTS_PER_HOST 3
#define RUN_USEC (3U * G_USEC_PER_SEC)

typedef struct Shared {
        atomic_uint exclusive_inside[N_RESOURCES];
        atomic_uint shared_inside[N_RESOURCES];
        atomic_uint_fast64_t max_token[N_RESOURCES];            /* of every entry */
        atomic_uint_fast64_t max_exclusive_token[N_RESOURCES];
        atomic_uint violations;
        atomic_uint grants[2 * N_CLIENTS_PER_HOST];
} Shared;

static const char *const resources[N_RESOURCES] = { "s0", "s1", "s2" };

static void violation(Shared *s, const char *what, unsigned r, uint64_t token) {
        atomic_fetch_add(&s->violations, 1);
        g_printerr("VIOLATION: %s on '%s' (token %" PRIu64 ")\n", what, resources[r], token);
}

static void raise_to(atomic_uint_fast64_t *max, uint64_t value) {
        uint64_t seen = atomic_load(max);

        while (seen < value && !atomic_compare_exchange_weak(max, &seen, value))
                ;
}

static void enter(Shared *s, unsigned r, bool exclusive, uint64_t token) {
        if (exclusive) {
                if (atomic_fetch_add(&s->exclusive_inside[r], 1) != 0 || atomic_load(&s->shared_inside[r]) != 0)
                        violation(s, "exclusive holder next to another holder", r, token);
                if (token <= atomic_load(&s->max_token[r]))
                        violation(s, "exclusive token not above every earlier one", r, token);
                raise_to(&s->max_exclusive_token[r], token);
        } else {
                atomic_fetch_add(&s->shared_inside[r], 1);
                if (atomic_load(&s->exclusive_inside[r]) != 0)
                        violation(s, "shared holder next to an exclusive one", r, token);
                if (token <= atomic_load(&s->max_exclusive_token[r]))
                        violation(s, "shared token not above every exclusive one", r, token);
        }
        raise_to(&s->max_token[r], token);
}

static void leave(Shared *s, unsigned r, bool exclusive) {
        atomic_fetch_sub(exclusive ? &s->exclusive_inside[r] : &s->shared_inside[r], 1);
}

/* The call failed because the daemon went away (killed, the next one not
 * up yet)? Those are tried again. */
static bool daemon_gone(const sd_bus_error *error) {
        return sd_bus_error_has_names(error, SD_BUS_ERROR_NO_REPLY, SD_BUS_ERROR_SERVICE_UNKNOWN,
                                      SD_BUS_ERROR_NAME_HAS_NO_OWNER);
}

/* After an Acquire failed with the daemon: whether this connection holds
 * the resource after all, and its token. Asks until a daemon answers. */
static int find_own_hold(sd_bus *conn, const char *resource, uint64_t *ret_token) {
        for (;;) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                g_autoptr(GPtrArray) holders = NULL;

                if (test_owner(conn, resource, NULL, &holders, &error) >= 0) {
                        for (guint i = 0; i < holders->len; i++) {
                                const TestHolder *h = holders->pdata[i];

                                if (g_str_equal(h->sender, test_unique_name(conn))) {
                                        *ret_token = h->token;
                                        return 1;
                                }
                        }
                        return 0;
                }
                if (sd_bus_error_has_name(&error, LOCKBUS_ERROR_NOT_LOCKED))
                        return 0;
                if (!daemon_gone(&error)) {
                        g_printerr("Owner of '%s' failed: %s: %s\n", resource, strempty(error.name),
                                   strempty(error.message));
                        return -EIO;
                }
        }
}

/* Unlock, again while the daemon is away. When the daemon died after it
 * deleted the hold but before it answered, the Unlock sent again finds
 * the resource free (NotLocked) or someone else's by now (NotOwner). */
static int unlock_surely(sd_bus *conn, const char *resource, bool daemon_may_die) {
        for (;;) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;

                if (test_unlock(conn, resource, &error) >= 0)
                        return 0;
                if (daemon_may_die && daemon_gone(&error))
                        continue;
                if (daemon_may_die && sd_bus_error_has_names(&error, LOCKBUS_ERROR_NOT_LOCKED,
                                                             LOCKBUS_ERROR_NOT_OWNER))
                        return 0;
                g_printerr("Unlock of '%s' failed: %s: %s\n", resource, strempty(error.name),
                           strempty(error.message));
                return -EIO;
        }
}

/* One client process: returns its exit status. */
static int client_run(TestBus *bus, Shared *s, unsigned slot, uint64_t deadline, bool daemon_may_die) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *conn = test_bus_connect(bus);
        GRand *rand = g_rand_new_with_seed(slot);

        while (test_now_monotonic() < deadline) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                unsigned r = (unsigned) g_rand_int_range(rand, 0, N_RESOURCES);
                bool exclusive = g_rand_int_range(rand, 0, 3) != 0;
                uint64_t token = 0;

                if (test_acquire(conn, resources[r],
                                 &(TestAcquireOptions) { .mode = exclusive ? "exclusive" : "shared",
                                                         .has_timeout = true, .timeout = UINT64_MAX },
                                 &token, &error) < 0) {
                        int k;

                        if (!daemon_may_die || !daemon_gone(&error)) {
                                g_printerr("client %u: Acquire of '%s' failed: %s: %s\n", slot, resources[r],
                                           strempty(error.name), strempty(error.message));
                                return 1;
                        }
                        k = find_own_hold(conn, resources[r], &token);
                        if (k < 0)
                                return 1;
                        if (k == 0)
                                continue;
                }
                enter(s, r, exclusive, token);
                atomic_fetch_add(&s->grants[slot], 1);
                g_usleep((gulong) g_rand_int_range(rand, 0, 2000));
                leave(s, r, exclusive);
                if (unlock_surely(conn, resources[r], daemon_may_die) < 0)
                        return 1;
        }
        g_rand_free(rand);
        return 0;
}

static void run_stress(ClusterFixture *f, unsigned n_kills) {
        Shared *s;
        pid_t pids[2 * N_CLIENTS_PER_HOST];
        uint64_t start, deadline;
        unsigned total = 0;


        s = mmap(NULL, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        g_assert_true(s != MAP_FAILED);
        memset(s, 0, sizeof(*s));

        start = test_now_monotonic();
        deadline = start + RUN_USEC;
        for (unsigned i = 0; i < G_N_ELEMENTS(pids); i++) {
                ClusterHost *host = i % 2 == 0 ? &f->a : &f->b;

                pids[i] = test_fork(&(TestChild) { .die_with_parent = true });
                if (pids[i] == 0)
                        _exit(client_run(host->bus, s, i, deadline, n_kills > 0));
        }

        /* The kills, evenly spread over the run (the workload's schedule,
         * not a wait for anything). */
        for (unsigned k = 1; k <= n_kills; k++) {
                uint64_t at = start + RUN_USEC * k / (n_kills + 1), now = test_now_monotonic();

                if (at > now)
                        g_usleep((gulong) (at - now));
                test_bus_kill_daemon(f->a.bus);
                g_test_message("killed host A's lockbusd (%u of %u)", k, n_kills);
        }

        for (unsigned i = 0; i < G_N_ELEMENTS(pids); i++) {
                int status = test_waitpid(pids[i], 0);
                g_autofree char *st = test_format_wait_status(status);

                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                        g_error("client %u %s", i, st);
        }

        for (unsigned i = 0; i < G_N_ELEMENTS(pids); i++) {
                g_test_message("client %u (host %s): %u grants", i, i % 2 == 0 ? "A" : "B",
                               atomic_load(&s->grants[i]));
                g_assert_cmpuint(atomic_load(&s->grants[i]), >, 0);
                total += atomic_load(&s->grants[i]);
        }
        g_test_message("%u grants in %u s", total, RUN_USEC / (unsigned) G_USEC_PER_SEC);
        g_assert_cmpuint(atomic_load(&s->violations), ==, 0);

        /* Nothing is left behind. */
        for (unsigned r = 0; r < N_RESOURCES; r++)
                cluster_wait_keys(f, resources[r], 0);
        g_assert_cmpint(munmap(s, sizeof(*s)), ==, 0);
}

static void test_stress(ClusterFixture *f, gconstpointer data) {
        CLUSTER_SKIP_WITHOUT_ETCD();
        run_stress(f, 0);
}

static void test_stress_with_kills(ClusterFixture *f, gconstpointer data) {
        CLUSTER_SKIP_WITHOUT_ETCD();
        run_stress(f, 2);
}

/* Longer than any restart takes: the holds of the killed daemon must be
 * moved, never expire. */
static const char *const long_lease[] = { "--etcd-lease-ttl=60", NULL };

int main(int argc, char *argv[]) {
        cluster_test_init(&argc, &argv);

        cluster_test_add("/cluster/stress/exclusion-and-tokens", test_stress);
        cluster_test_add_with_args("/cluster/stress/with-daemon-kills", long_lease, test_stress_with_kills);

        return cluster_test_run();
}
