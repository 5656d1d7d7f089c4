/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench-driver.h"
#include "bench-util.h"

/* Written by the parent before it lets the clients go. */
typedef struct SharedTimes {
        uint64_t start_ns;              /* counting starts here (after the warmup) */
        uint64_t end_ns;
} SharedTimes;

/* What a client sends back. */
typedef struct ClientResult {
        int error;                      /* 0 or a negative errno */
        char message[256];
        uint64_t ops;                   /* counted operations */
        Histogram latency;
        uint64_t pair_ops;              /* the same for the paired case */
        Histogram pair_latency;
} ClientResult;

/* Extra time a client may take past the end before it is killed: one
 * operation stuck for this long is a hang, not a result. */
#define CLIENT_GRACE_SEC 60U

static void sleep_until(uint64_t t_ns) {
        struct timespec ts = {
                .tv_sec = (time_t) (t_ns / NSEC_PER_SEC),
                .tv_nsec = (long) (t_ns % NSEC_PER_SEC),
        };

        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                ;
}

static _Noreturn void client_main(const BenchCase *bc, const BenchTargets *targets, unsigned index, unsigned n,
                                  const DriverConfig *config, const SharedTimes *times,
                                  int ready_fd, int go_fd, int result_fd) {
        BenchClient c = {
                .bench_case = bc,
                .targets = targets,
                .index = index,
                .n_clients = n,
        }, pc = {
                .bench_case = config->pair,
                .targets = targets,
                .index = index,
                .n_clients = n,
        };
        ClientResult *res;
        char byte = 'r';
        int r;

        (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
        alarm((unsigned) ((config->warmup_ns + config->duration_ns) / NSEC_PER_SEC) + 10U + CLIENT_GRACE_SEC);

        res = calloc(1, sizeof(*res));
        if (!res)
                _exit(EXIT_FAILURE);
        histogram_init(&res->latency);
        histogram_init(&res->pair_latency);

        /* Each case gets its own state and connection (the paired one too,
         * which may be of another system: a lockbus case against a peer).
         * The peers' clients connect as invoked (root: the Redis socket is
         * root's alone), before the lockbus clients drop to their uid. */
        r = 0;
        if (!bc->is_lockbus)
                r = bc->setup(&c);
        if (r >= 0 && config->pair && !config->pair->is_lockbus) {
                r = config->pair->setup(&pc);
                if (r < 0)
                        memcpy(c.error, pc.error, sizeof(c.error));
        }
        if (r >= 0 && (bc->is_lockbus || (config->pair && config->pair->is_lockbus)) && targets->uid_base > 0) {
                r = drop_privileges(targets->uid_base + index);
                if (r < 0)
                        bench_client_fail(&c, r, "Failed to become uid %u: %s", targets->uid_base + index,
                                          strerror(-r));
        }
        if (r >= 0 && bc->is_lockbus)
                r = bc->setup(&c);
        if (r >= 0 && config->pair && config->pair->is_lockbus) {
                r = config->pair->setup(&pc);
                if (r < 0)
                        memcpy(c.error, pc.error, sizeof(c.error));
        }
        (void) write_full(ready_fd, &byte, 1);
        close(ready_fd);

        /* The parent closes its end of the go pipe to start everyone. */
        (void) read(go_fd, &byte, 1);
        close(go_fd);

        if (r >= 0)
                for (;;) {
                        uint64_t t0 = now_ns(), t1;
                        bool paired;

                        if (t0 >= times->end_ns)
                                break;
                        /* Paired: every client switches case at the same
                         * slice boundaries (the main case in even slices
                         * counted from the start of the window). */
                        paired = false;
                        if (config->pair) {
                                int64_t d = (int64_t) (t0 - times->start_ns), k;

                                k = d >= 0 ? d / (int64_t) config->slice_ns
                                           : -((-d + (int64_t) config->slice_ns - 1) / (int64_t) config->slice_ns);
                                paired = (k & 1) != 0;
                        }
                        r = paired ? config->pair->op(&pc) : bc->op(&c);
                        if (r < 0) {
                                if (paired)
                                        memcpy(c.error, pc.error, sizeof(c.error));
                                break;
                        }
                        t1 = now_ns();
                        if (t0 >= times->start_ns) {
                                histogram_add(paired ? &res->pair_latency : &res->latency, t1 - t0);
                                if (paired)
                                        res->pair_ops++;
                                else
                                        res->ops++;
                        }
                }

        if (r < 0) {
                res->error = r;
                snprintf(res->message, sizeof(res->message), "%s", c.error[0] ? c.error : strerror(-r));
        }
        if (bc->teardown)
                bc->teardown(&c);
        if (config->pair && config->pair->teardown)
                config->pair->teardown(&pc);

        (void) write_full(result_fd, res, sizeof(*res));
        _exit(r < 0 ? EXIT_FAILURE : EXIT_SUCCESS);
}

int driver_run(const BenchCase *bc, const BenchTargets *targets, const DriverConfig *config, FILE *out) {
        _cleanup_free_ pid_t *pids = NULL;
        _cleanup_free_ int *result_fds = NULL;
        _cleanup_free_ ClientResult *res = NULL;
        _cleanup_free_ Histogram *all = NULL, *pair_all = NULL;
        _cleanup_free_ char *first_error = NULL;
        int ready[2] = { -1, -1 }, go[2] = { -1, -1 };
        unsigned n = config->n_clients, n_errors = 0, n_started = 0;
        uint64_t total = 0, pair_total = 0, min_ops = UINT64_MAX, max_ops = 0;
        int64_t cpu_start[DRIVER_WATCH_MAX] = {}, cpu_end[DRIVER_WATCH_MAX] = {};
        SharedTimes *times;
        double window_s;
        JsonWriter j;
        int r = 0;

        pids = calloc(n, sizeof(pid_t));
        result_fds = calloc(n, sizeof(int));
        res = malloc(sizeof(*res));
        all = malloc(sizeof(*all));
        pair_all = malloc(sizeof(*pair_all));
        if (!pids || !result_fds || !res || !all || !pair_all)
                return -ENOMEM;
        histogram_init(pair_all);
        for (unsigned i = 0; i < n; i++)
                result_fds[i] = -1;
        histogram_init(all);

        times = mmap(NULL, sizeof(SharedTimes), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (times == MAP_FAILED)
                return -errno;
        times->start_ns = times->end_ns = UINT64_MAX;

        if (pipe2(ready, O_CLOEXEC) < 0 || pipe2(go, O_CLOEXEC) < 0) {
                r = -errno;
                goto finish;
        }

        fflush(NULL);
        for (unsigned i = 0; i < n; i++) {
                int rp[2];

                if (pipe2(rp, O_CLOEXEC) < 0) {
                        r = -errno;
                        goto finish;
                }
                pids[i] = fork();
                if (pids[i] < 0) {
                        r = -errno;
                        close(rp[0]);
                        close(rp[1]);
                        goto finish;
                }
                if (pids[i] == 0) {
                        close(rp[0]);
                        close(ready[0]);
                        close(go[1]);
                        client_main(bc, targets, i, n, config, times, ready[1], go[0], rp[1]);
                }
                close(rp[1]);
                result_fds[i] = rp[0];
                n_started++;
        }
        close(ready[1]);
        ready[1] = -1;
        close(go[0]);
        go[0] = -1;

        /* Everyone connected (or failed trying)? */
        for (unsigned i = 0; i < n; i++) {
                char byte;

                r = read_full(ready[0], &byte, 1);
                if (r < 0)
                        goto finish;
        }

        /* Go: a common start in 20 ms (time to wake up), then the warmup. */
        times->start_ns = now_ns() + 20 * NSEC_PER_MSEC + config->warmup_ns;
        times->end_ns = times->start_ns + config->duration_ns;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        close(go[1]);
        go[1] = -1;

        /* Meanwhile: the CPU time of the watched processes over the window. */
        sleep_until(times->start_ns);
        for (unsigned w = 0; w < config->n_watch; w++)
                cpu_start[w] = process_cpu_ns(config->watch[w].pid);
        sleep_until(times->end_ns);
        for (unsigned w = 0; w < config->n_watch; w++)
                cpu_end[w] = process_cpu_ns(config->watch[w].pid);

        for (unsigned i = 0; i < n; i++) {
                int k = read_full(result_fds[i], res, sizeof(*res));

                if (k < 0) {
                        n_errors++;
                        if (!first_error)
                                first_error = strdup("a client died without a result (killed or crashed)");
                        min_ops = 0;
                        continue;
                }
                if (res->error < 0) {
                        n_errors++;
                        if (!first_error)
                                first_error = strdup(res->message);
                }
                histogram_merge(all, &res->latency);
                histogram_merge(pair_all, &res->pair_latency);
                total += res->ops;
                pair_total += res->pair_ops;
                if (res->ops < min_ops)
                        min_ops = res->ops;
                if (res->ops > max_ops)
                        max_ops = res->ops;
        }

finish:
        for (unsigned i = 0; i < n_started; i++) {
                if (r < 0)
                        kill(pids[i], SIGTERM);
                (void) waitpid(pids[i], NULL, 0);
                if (result_fds[i] >= 0)
                        close(result_fds[i]);
        }
        for (unsigned k = 0; k < 2; k++) {
                if (ready[k] >= 0)
                        close(ready[k]);
                if (go[k] >= 0)
                        close(go[k]);
        }
        munmap(times, sizeof(SharedTimes));
        if (r < 0)
                return r;

        /* Paired, each case had half of the window. */
        window_s = (double) config->duration_ns / NSEC_PER_SEC / (config->pair ? 2.0 : 1.0);
        json_begin(&j, out);
        json_string(&j, "case", bc->name);
        json_uint(&j, "clients", n);
        json_uint(&j, "rep", config->rep);
        json_double(&j, "duration_s", window_s);
        json_uint(&j, "ops", total);
        json_double(&j, "ops_per_sec", (double) total / window_s);
        json_histogram(&j, "lat", all);
        if (config->pair) {
                json_string(&j, "pair", config->pair->name);
                json_double(&j, "slice_s", (double) config->slice_ns / NSEC_PER_SEC);
                json_uint(&j, "pair_ops", pair_total);
                json_double(&j, "pair_ops_per_sec", (double) pair_total / window_s);
                json_histogram(&j, "pair_lat", pair_all);
        }
        json_uint(&j, "client_ops_min", min_ops == UINT64_MAX ? 0 : min_ops);
        json_uint(&j, "client_ops_max", max_ops);
        json_double(&j, "fairness_max_min", min_ops > 0 && min_ops != UINT64_MAX ? (double) max_ops / (double) min_ops : NAN);
        for (unsigned w = 0; w < config->n_watch; w++) {
                char key[128];

                snprintf(key, sizeof(key), "%s_cpu_us_per_op", config->watch[w].name);
                json_double(&j, key, cpu_start[w] >= 0 && cpu_end[w] >= cpu_start[w] && total > 0 ?
                            (double) (cpu_end[w] - cpu_start[w]) / NSEC_PER_USEC / (double) total : NAN);
                snprintf(key, sizeof(key), "%s_cpu_percent", config->watch[w].name);
                json_double(&j, key, cpu_start[w] >= 0 && cpu_end[w] >= cpu_start[w] ?
                            100.0 * (double) (cpu_end[w] - cpu_start[w]) / (double) config->duration_ns : NAN);
        }
        json_uint(&j, "errors", n_errors);
        if (first_error)
                json_string(&j, "error", first_error);
        json_end(&j);

        fprintf(stderr, "  %-23s %2u clients: %10.0f ops/s  p50 %8.1f µs  p99 %8.1f µs%s%s\n",
                bc->name, n, (double) total / window_s,
                (double) histogram_quantile(all, 0.50) / NSEC_PER_USEC,
                (double) histogram_quantile(all, 0.99) / NSEC_PER_USEC,
                first_error ? "  error: " : "", strempty(first_error));
        if (config->pair)
                fprintf(stderr, "    paired with %-21s %10.0f ops/s  p50 %8.1f µs  (interleaved in %.0f ms slices)\n",
                        config->pair->name, (double) pair_total / window_s,
                        (double) histogram_quantile(pair_all, 0.50) / NSEC_PER_USEC,
                        (double) config->slice_ns / NSEC_PER_MSEC);
        return n_errors > 0 ? -EIO : 0;
}
