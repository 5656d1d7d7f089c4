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

/* One client process: returns its exit status. */
static int client_run(TestBus *bus, Shared *s, unsigned slot, uint64_t deadline) {
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
                        g_printerr("client %u: Acquire of '%s' failed: %s: %s\n", slot, resources[r],
                                   strempty(error.name), strempty(error.message));
                        return 1;
                }
                enter(s, r, exclusive, token);
                atomic_fetch_add(&s->grants[slot], 1);
                g_usleep((gulong) g_rand_int_range(rand, 0, 2000));
                leave(s, r, exclusive);
                if (test_unlock(conn, resources[r], &error) < 0) {
                        g_printerr("client %u: Unlock of '%s' failed: %s: %s\n", slot, resources[r],
                                   strempty(error.name), strempty(error.message));
                        return 1;
                }
        }
        g_rand_free(rand);
        return 0;
}

static void test_stress(ClusterFixture *f, gconstpointer data) {
        Shared *s;
        pid_t pids[2 * N_CLIENTS_PER_HOST];
        uint64_t deadline;
        unsigned total = 0;

        CLUSTER_SKIP_WITHOUT_ETCD();

        s = mmap(NULL, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        g_assert_true(s != MAP_FAILED);
        memset(s, 0, sizeof(*s));

        deadline = test_now_monotonic() + RUN_USEC;
        for (unsigned i = 0; i < G_N_ELEMENTS(pids); i++) {
                ClusterHost *host = i % 2 == 0 ? &f->a : &f->b;

                pids[i] = test_fork(&(TestChild) { .die_with_parent = true });
                if (pids[i] == 0)
                        _exit(client_run(host->bus, s, i, deadline));
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

int main(int argc, char *argv[]) {
        cluster_test_init(&argc, &argv);

        cluster_test_add("/cluster/stress/exclusion-and-tokens", test_stress);

        return cluster_test_run();
}
