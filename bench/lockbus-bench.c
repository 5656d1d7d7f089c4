/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* lockbus-bench: the benchmark harness of lockbus. bench/run.sh sets up the
 * bus, lockbusd and the peers and calls this once per case and repetition;
 * each call prints one JSON line on stdout. See bench/README.md. */

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "bench-clients.h"
#include "bench-driver.h"
#include "bench-scenarios.h"
#include "bench-util.h"

static unsigned arg_clients = 1;
static double arg_duration_s = 3.0;
static double arg_warmup_s = 0.5;
static unsigned arg_rep = 1;
static unsigned arg_iterations = 0;
static unsigned arg_count = 0;
static unsigned arg_connections = 0;
static uid_t arg_uid_base = 61000;
static unsigned arg_uids = 32;
static double arg_timeout_s = 10.0;
static BenchTargets arg_targets = {};
static WatchedProcess arg_watch[DRIVER_WATCH_MAX] = {};
static unsigned arg_n_watch = 0;
static const char *arg_pair = NULL;
static double arg_slice_s = 0.1;

static void help(void) {
        printf("%1$s [OPTIONS...] COMMAND\n\n"
               "The lockbus benchmark harness. Talks to the bus in DBUS_SYSTEM_BUS_ADDRESS;\n"
               "prints one JSON line per command. bench/run.sh runs everything.\n\n"
               "Commands:\n"
               "  run CASE        Closed loop: --clients processes, --warmup then --duration\n"
               "  handoff         Unlock by A → grant to waiting B, --iterations times\n"
               "  cold            First call with lockbusd stopped (activation), --iterations\n"
               "  scale-holds     --count connection holds from --connections connections\n"
               "  scale-waiters   --count connections waiting on one resource, then drained\n"
               "  peer-limit      --count connections (one uid each) take a lock each\n"
               "  wait-name       Wait until io.lockbus1 has an owner (--timeout)\n"
               "  daemon-pid      Print the pid of io.lockbus1's owner\n"
               "  list            List the cases of 'run'\n\n"
               "Options:\n"
               "  -h --help            Show this help\n"
               "     --clients=N       Client processes (run; default 1)\n"
               "     --duration=SEC    Measured time (run; default 3)\n"
               "     --warmup=SEC      Unmeasured time before it (run; default 0.5)\n"
               "     --pair=CASE       run: interleave CASE with the first, in slices\n"
               "     --slice=SEC       run --pair: length of one slice (default 0.1)\n"
               "     --rep=N           Repetition number, copied to the output\n"
               "     --tag=NAME        Copied to the output as \"tag\" (runs under other\n"
               "                       conditions, e.g. one-cpu: pinned to one CPU)\n"
               "     --iterations=N    handoff, cold, scale-holds probes\n"
               "     --count=N         scale-holds, scale-waiters, peer-limit\n"
               "     --connections=N   scale-holds (default 4)\n"
               "     --uid-base=UID    lockbus clients run as UID+i (default 61000; 0: as is)\n"
               "     --uids=N          peer-limit: spread over UID … UID+N-1 (default 32)\n"
               "     --timeout=SEC     wait-name (default 10)\n"
               "     --flock-dir=DIR   flock: where the lock files go\n"
               "     --redis-socket=PATH       redis: the server's Unix socket\n"
               "     --postgres=CONNINFO       postgres: libpq connection string\n"
               "     --etcd-url=URL            etcd: http://127.0.0.1:PORT\n"
               "     --direct-socket=PATH      lockbusd's direct socket (\"-direct\" cases, handoff)\n"
               "     --etcd-bus=ADDRESS        the bus of a lockbusd with --backend=etcd (\"-etcd\"\n"
               "                               cases; handoff there: \"handoff-etcd\")\n"
               "     --watch=NAME:PID          run: report PID's CPU time per operation\n",
               program_invocation_short_name);
}

static int parse_seconds(const char *name, const char *value, double *ret) {
        char *end;
        double d;

        errno = 0;
        d = strtod(value, &end);
        if (errno != 0 || end == value || *end != '\0' || !isfinite(d) || d < 0) {
                bench_log("--%s= needs seconds, got '%s'.", name, value);
                return -EINVAL;
        }
        *ret = d;
        return 0;
}

static int parse_unsigned(const char *name, const char *value, unsigned *ret) {
        unsigned long n;
        char *end;

        errno = 0;
        n = strtoul(value, &end, 10);
        if (errno != 0 || end == value || *end != '\0' || n > UINT_MAX) {
                bench_log("--%s= needs a non-negative integer, got '%s'.", name, value);
                return -EINVAL;
        }
        *ret = (unsigned) n;
        return 0;
}

static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_CLIENTS = 0x100,
                ARG_DURATION,
                ARG_WARMUP,
                ARG_REP,
                ARG_ITERATIONS,
                ARG_COUNT,
                ARG_CONNECTIONS,
                ARG_UID_BASE,
                ARG_TIMEOUT,
                ARG_FLOCK_DIR,
                ARG_REDIS_SOCKET,
                ARG_POSTGRES,
                ARG_ETCD_URL,
                ARG_WATCH,
                ARG_DIRECT_SOCKET,
                ARG_UIDS,
                ARG_PAIR,
                ARG_SLICE,
                ARG_TAG,
                ARG_ETCD_BUS,
        };
        static const struct option options[] = {
                { "help",         no_argument,       NULL, 'h'              },
                { "clients",      required_argument, NULL, ARG_CLIENTS      },
                { "duration",     required_argument, NULL, ARG_DURATION     },
                { "warmup",       required_argument, NULL, ARG_WARMUP       },
                { "rep",          required_argument, NULL, ARG_REP          },
                { "iterations",   required_argument, NULL, ARG_ITERATIONS   },
                { "count",        required_argument, NULL, ARG_COUNT        },
                { "connections",  required_argument, NULL, ARG_CONNECTIONS  },
                { "uid-base",     required_argument, NULL, ARG_UID_BASE     },
                { "timeout",      required_argument, NULL, ARG_TIMEOUT      },
                { "flock-dir",    required_argument, NULL, ARG_FLOCK_DIR    },
                { "redis-socket", required_argument, NULL, ARG_REDIS_SOCKET },
                { "postgres",     required_argument, NULL, ARG_POSTGRES     },
                { "etcd-url",     required_argument, NULL, ARG_ETCD_URL     },
                { "watch",        required_argument, NULL, ARG_WATCH        },
                { "direct-socket", required_argument, NULL, ARG_DIRECT_SOCKET },
                { "uids",         required_argument, NULL, ARG_UIDS         },
                { "pair",         required_argument, NULL, ARG_PAIR         },
                { "slice",        required_argument, NULL, ARG_SLICE        },
                { "tag",          required_argument, NULL, ARG_TAG          },
                { "etcd-bus",     required_argument, NULL, ARG_ETCD_BUS     },
                {}
        };
        unsigned u;
        int c, r = 0;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_CLIENTS:
                        r = parse_unsigned("clients", optarg, &arg_clients);
                        if (r >= 0 && arg_clients == 0) {
                                bench_log("--clients= must be at least 1.");
                                r = -EINVAL;
                        }
                        break;
                case ARG_DURATION:
                        r = parse_seconds("duration", optarg, &arg_duration_s);
                        break;
                case ARG_WARMUP:
                        r = parse_seconds("warmup", optarg, &arg_warmup_s);
                        break;
                case ARG_REP:
                        r = parse_unsigned("rep", optarg, &arg_rep);
                        break;
                case ARG_ITERATIONS:
                        r = parse_unsigned("iterations", optarg, &arg_iterations);
                        break;
                case ARG_COUNT:
                        r = parse_unsigned("count", optarg, &arg_count);
                        break;
                case ARG_CONNECTIONS:
                        r = parse_unsigned("connections", optarg, &arg_connections);
                        break;
                case ARG_UID_BASE:
                        r = parse_unsigned("uid-base", optarg, &u);
                        arg_uid_base = u;
                        break;
                case ARG_TIMEOUT:
                        r = parse_seconds("timeout", optarg, &arg_timeout_s);
                        break;
                case ARG_FLOCK_DIR:
                        arg_targets.flock_directory = optarg;
                        break;
                case ARG_REDIS_SOCKET:
                        arg_targets.redis_socket = optarg;
                        break;
                case ARG_POSTGRES:
                        arg_targets.postgres_conninfo = optarg;
                        break;
                case ARG_ETCD_URL:
                        arg_targets.etcd_url = optarg;
                        break;
                case ARG_PAIR:
                        arg_pair = optarg;
                        break;
                case ARG_SLICE:
                        r = parse_seconds("slice", optarg, &arg_slice_s);
                        if (r >= 0 && arg_slice_s <= 0) {
                                bench_log("--slice= must be more than 0.");
                                r = -EINVAL;
                        }
                        break;
                case ARG_TAG:
                        /* A plain name: it is a JSON value and a report.py key. */
                        if (optarg[0] == '\0' || optarg[strspn(optarg, "abcdefghijklmnopqrstuvwxyz"
                                                                 "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")] != '\0') {
                                bench_log("--tag= needs a name of letters, digits, '.', '_' and '-', got '%s'.", optarg);
                                return -EINVAL;
                        }
                        json_tag = optarg;
                        break;
                case ARG_UIDS:
                        r = parse_unsigned("uids", optarg, &arg_uids);
                        break;
                case ARG_DIRECT_SOCKET:
                        arg_targets.direct_socket = optarg;
                        break;
                case ARG_ETCD_BUS:
                        arg_targets.etcd_bus = optarg;
                        break;
                case ARG_WATCH: {
                        char *colon = strrchr(optarg, ':');

                        if (!colon || colon == optarg || arg_n_watch >= DRIVER_WATCH_MAX) {
                                bench_log("--watch= needs NAME:PID (at most %u), got '%s'.", DRIVER_WATCH_MAX, optarg);
                                return -EINVAL;
                        }
                        *colon = '\0';
                        r = parse_unsigned("watch", colon + 1, &u);
                        arg_watch[arg_n_watch++] = (WatchedProcess) { .name = optarg, .pid = (pid_t) u };
                        break;
                }
                case '?':
                        return -EINVAL;
                default:
                        abort();
                }
                if (r < 0)
                        return r;
        }
        arg_targets.uid_base = arg_uid_base;
        if (!arg_targets.flock_directory)
                arg_targets.flock_directory = "/var/tmp";
        return 1;
}

static int run_case(const char *name) {
        const BenchCase *bc = bench_case_find(name);
        DriverConfig config = {
                .n_clients = arg_clients,
                .warmup_ns = (uint64_t) (arg_warmup_s * NSEC_PER_SEC),
                .duration_ns = (uint64_t) (arg_duration_s * NSEC_PER_SEC),
                .rep = arg_rep,
                .n_watch = arg_n_watch,
        };

        memcpy(config.watch, arg_watch, sizeof(arg_watch));
        if (arg_pair) {
                config.pair = bench_case_find(arg_pair);
                if (!config.pair) {
                        bench_log("Unknown case '%s' for --pair=.", arg_pair);
                        return -EINVAL;
                }
                config.slice_ns = (uint64_t) (arg_slice_s * NSEC_PER_SEC);
        }

        if (!bc) {
                bench_log("Unknown case '%s'; these exist:", name);
                bench_cases_list(stderr);
                return -EINVAL;
        }
        if (config.duration_ns == 0) {
                bench_log("--duration= must be more than 0.");
                return -EINVAL;
        }
        return driver_run(bc, &arg_targets, &config, stdout);
}

int main(int argc, char *argv[]) {
        static const struct {
                const char *name;
                int (*func)(const ScenarioConfig *config, FILE *out);
                unsigned default_iterations;
                bool reports_errors;    /* its JSON line says what failed */
        } scenarios[] = {
                { "handoff",       scenario_handoff,       1000, true  },
                { "cold",          scenario_cold,          20,   true  },
                { "scale-holds",   scenario_scale_holds,   0,    true  },
                { "scale-waiters", scenario_scale_waiters, 0,    true  },
                { "peer-limit",    scenario_peer_limit,    0,    true  },
                { "wait-name",     scenario_wait_name,     0,    false },
                { "daemon-pid",    scenario_daemon_pid,    0,    false },
        };
        const char *command;
        int r;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? 2 : EXIT_SUCCESS;

        if (optind >= argc) {
                bench_log("A command is needed; see --help.");
                return 2;
        }
        command = argv[optind];

        /* Before any client process exists (libcurl wants it once). */
        curl_global_init(CURL_GLOBAL_DEFAULT);

        if (streq(command, "list")) {
                bench_cases_list(stdout);
                r = 0;
        } else if (streq(command, "run")) {
                if (optind + 2 != argc) {
                        bench_log("'run' takes one case name; see 'list'.");
                        return 2;
                }
                r = run_case(argv[optind + 1]);
        } else {
                ScenarioConfig config = {
                        .iterations = arg_iterations,
                        .count = arg_count,
                        .connections = arg_connections,
                        .uid_base = arg_uid_base,
                        .n_uids = arg_uids,
                        .timeout_s = arg_timeout_s,
                        .direct_socket = arg_targets.direct_socket,
                        .etcd_bus = arg_targets.etcd_bus,
                };
                size_t i;

                for (i = 0; i < ELEMENTSOF(scenarios); i++)
                        if (streq(scenarios[i].name, command))
                                break;
                if (i >= ELEMENTSOF(scenarios) || optind + 1 != argc) {
                        bench_log("Unknown command '%s'; see --help.", command);
                        return 2;
                }
                if (config.iterations == 0)
                        config.iterations = scenarios[i].default_iterations;
                r = scenarios[i].func(&config, stdout);
                if (r < 0 && !scenarios[i].reports_errors)
                        bench_log("%s failed: %s", command, strerror(-r));
        }

        curl_global_cleanup();
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
