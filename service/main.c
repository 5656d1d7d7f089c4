/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "bus-errors.h"
#include "log.h"
#include "manager.h"

#include "config.h"

static bool arg_user = false;
static char *arg_lock_directory = NULL;
static char *arg_runtime_directory = NULL;
static uint64_t arg_idle_timeout_usec = DEFAULT_IDLE_TIMEOUT_USEC;
static unsigned arg_max_locks_per_user = DEFAULT_MAX_LOCKS_PER_USER;
static unsigned arg_max_waiters_per_user = DEFAULT_MAX_WAITERS_PER_USER;
static bool arg_backend_etcd = false;
static char **arg_etcd_endpoints = NULL;
static char *arg_etcd_prefix = NULL;
static uint64_t arg_etcd_lease_ttl_usec = DEFAULT_ETCD_LEASE_TTL_USEC;

static void help(void) {
        printf("%s [OPTIONS...]\n\n"
               "The lockbus lock service: grants named locks on the bus as io.lockbus1.\n\n"
               "  -h --help                   Show this help\n"
               "     --version                Show package version\n"
               "     --system                 Serve the system bus (default)\n"
               "     --user                   Serve the user (session) bus\n"
               "     --lock-directory=DIR     Where persistent holds and tokens live\n"
               "                              (default: $STATE_DIRECTORY, else %s;\n"
               "                              with --user $XDG_STATE_HOME/lockbus)\n"
               "     --runtime-directory=DIR  Where connection holds live\n"
               "                              (default: $RUNTIME_DIRECTORY, else %s;\n"
               "                              with --user $XDG_RUNTIME_DIR/lockbus)\n"
               "     --idle-timeout=SEC       Exit after SEC seconds without connection or\n"
               "                              fd holds and waiters (default: 30; 0: never)\n"
               "     --max-locks-per-user=N   Holds plus waits one uid but root may have\n"
               "                              (default: %u)\n"
               "     --max-waiters-per-user=N Waiting calls one uid but root may have\n"
               "                              (default: %u)\n"
               "     --backend=directory|etcd Where locks are decided and kept: the lock\n"
               "                              directory (default), or etcd (cluster mode)\n"
               "     --etcd-endpoints=URL,... etcd's client URLs (http://HOST:PORT)\n"
               "     --etcd-prefix=PREFIX     Prefix of every key (default: %s)\n"
               "     --etcd-lease-ttl=SEC     TTL of this daemon's lease: how long its\n"
               "                              connection holds outlive it (default: %u)\n"
               "\nSee the lockbusd(8) man page for details.\n",
               program_invocation_short_name,
               LOCKBUS_DEFAULT_LOCK_DIRECTORY, LOCKBUS_DEFAULT_RUNTIME_DIRECTORY,
               DEFAULT_MAX_LOCKS_PER_USER, DEFAULT_MAX_WAITERS_PER_USER,
               DEFAULT_ETCD_PREFIX, (unsigned) (DEFAULT_ETCD_LEASE_TTL_USEC / 1000000U));
}

/* --etcd-endpoints=URL[,URL...]: each http:// or https://HOST:PORT (the
 * etcd client checks them in full). */
static int parse_endpoints_argument(const char *value) {
        g_auto(GStrv) list = g_strsplit(value, ",", -1);

        if (!list[0])
                return log_error_errno(EINVAL, "--etcd-endpoints= needs at least one URL.");
        for (char **e = list; *e; e++)
                if (!g_str_has_prefix(*e, "http://") && !g_str_has_prefix(*e, "https://"))
                        return log_error_errno(EINVAL, "--etcd-endpoints= needs http:// or https:// URLs, got '%s'.",
                                               *e);
        g_strfreev(arg_etcd_endpoints);
        arg_etcd_endpoints = g_steal_pointer(&list);
        return 0;
}

/* systemd passes StateDirectory=/RuntimeDirectory= as a colon-separated
 * list; ours is the first. */
static char *first_directory_from_env(const char *variable) {
        const char *value = getenv(variable);

        if (!value || !*value)
                return NULL;
        return g_strndup(value, strcspn(value, ":"));
}

static int default_directories(void) {
        if (!arg_lock_directory) {
                if (arg_user)
                        arg_lock_directory = g_build_filename(g_get_user_state_dir(), "lockbus", NULL);
                else {
                        arg_lock_directory = first_directory_from_env("STATE_DIRECTORY");
                        if (!arg_lock_directory)
                                arg_lock_directory = g_strdup(LOCKBUS_DEFAULT_LOCK_DIRECTORY);
                }
        }

        if (!arg_runtime_directory) {
                if (arg_user) {
                        const char *runtime = getenv("XDG_RUNTIME_DIR");

                        if (!runtime || !*runtime)
                                return log_error_errno(ENXIO, "$XDG_RUNTIME_DIR is not set; "
                                                       "use --runtime-directory= with --user.");
                        arg_runtime_directory = g_build_filename(runtime, "lockbus", NULL);
                } else {
                        arg_runtime_directory = first_directory_from_env("RUNTIME_DIRECTORY");
                        if (!arg_runtime_directory)
                                arg_runtime_directory = g_strdup(LOCKBUS_DEFAULT_RUNTIME_DIRECTORY);
                }
        }
        return 0;
}

static int parse_directory_argument(const char *name, const char *value, char **ret) {
        if (!value || value[0] != '/')
                return log_error_errno(EINVAL, "--%s= needs an absolute path, got '%s'.", name, strempty(value));
        g_free(*ret);
        *ret = g_strdup(value);
        return 0;
}

/* Seconds with an optional fraction, e.g. "30" or "0.25", to µs. */
static int parse_seconds_argument(const char *name, const char *value, uint64_t *ret) {
        const char *fraction;
        uint64_t usec = 0;
        char *end;

        if (!value || !g_ascii_isdigit(value[0]))
                goto invalid;

        errno = 0;
        unsigned long long sec = strtoull(value, &end, 10);
        if (errno != 0 || sec > UINT64_MAX / 1000000U)
                goto invalid;

        if (*end == '.') {
                uint64_t scale = 100000;

                fraction = end + 1;
                if (!g_ascii_isdigit(*fraction))
                        goto invalid;
                for (; g_ascii_isdigit(*fraction); fraction++) {
                        usec += (uint64_t) (*fraction - '0') * scale;
                        scale /= 10;
                }
                end = (char *) fraction;
        }
        if (*end != '\0')
                goto invalid;

        *ret = sec * 1000000U + usec;
        return 0;

invalid:
        return log_error_errno(EINVAL, "--%s= needs seconds (e.g. 30 or 0.5), got '%s'.", name, strempty(value));
}

static int parse_unsigned_argument(const char *name, const char *value, unsigned *ret) {
        char *end;

        errno = 0;
        unsigned long n = value && g_ascii_isdigit(value[0]) ? strtoul(value, &end, 10) : 0;
        if (!value || !g_ascii_isdigit(value[0]) || errno != 0 || *end != '\0' || n > UINT_MAX)
                return log_error_errno(EINVAL, "--%s= needs a non-negative integer, got '%s'.", name, strempty(value));
        *ret = (unsigned) n;
        return 0;
}

static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_VERSION = 0x100,
                ARG_SYSTEM,
                ARG_USER,
                ARG_LOCK_DIRECTORY,
                ARG_RUNTIME_DIRECTORY,
                ARG_IDLE_TIMEOUT,
                ARG_MAX_LOCKS_PER_USER,
                ARG_MAX_WAITERS_PER_USER,
                ARG_BACKEND,
                ARG_ETCD_ENDPOINTS,
                ARG_ETCD_PREFIX,
                ARG_ETCD_LEASE_TTL,
        };
        static const struct option options[] = {
                { "help",              no_argument,       NULL, 'h'                   },
                { "version",           no_argument,       NULL, ARG_VERSION           },
                { "system",            no_argument,       NULL, ARG_SYSTEM            },
                { "user",              no_argument,       NULL, ARG_USER              },
                { "lock-directory",    required_argument, NULL, ARG_LOCK_DIRECTORY    },
                { "runtime-directory", required_argument, NULL, ARG_RUNTIME_DIRECTORY },
                { "idle-timeout",         required_argument, NULL, ARG_IDLE_TIMEOUT         },
                { "max-locks-per-user",   required_argument, NULL, ARG_MAX_LOCKS_PER_USER   },
                { "max-waiters-per-user", required_argument, NULL, ARG_MAX_WAITERS_PER_USER },
                { "backend",              required_argument, NULL, ARG_BACKEND              },
                { "etcd-endpoints",       required_argument, NULL, ARG_ETCD_ENDPOINTS       },
                { "etcd-prefix",          required_argument, NULL, ARG_ETCD_PREFIX          },
                { "etcd-lease-ttl",       required_argument, NULL, ARG_ETCD_LEASE_TTL       },
                {}
        };
        int c, r;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("lockbusd %s\n", PACKAGE_VERSION);
                        return 0;
                case ARG_SYSTEM:
                        arg_user = false;
                        break;
                case ARG_USER:
                        arg_user = true;
                        break;
                case ARG_LOCK_DIRECTORY:
                        r = parse_directory_argument("lock-directory", optarg, &arg_lock_directory);
                        if (r < 0)
                                return r;
                        break;
                case ARG_RUNTIME_DIRECTORY:
                        r = parse_directory_argument("runtime-directory", optarg, &arg_runtime_directory);
                        if (r < 0)
                                return r;
                        break;
                case ARG_IDLE_TIMEOUT:
                        r = parse_seconds_argument("idle-timeout", optarg, &arg_idle_timeout_usec);
                        if (r < 0)
                                return r;
                        break;
                case ARG_MAX_LOCKS_PER_USER:
                        r = parse_unsigned_argument("max-locks-per-user", optarg, &arg_max_locks_per_user);
                        if (r < 0)
                                return r;
                        break;
                case ARG_MAX_WAITERS_PER_USER:
                        r = parse_unsigned_argument("max-waiters-per-user", optarg, &arg_max_waiters_per_user);
                        if (r < 0)
                                return r;
                        break;
                case ARG_BACKEND:
                        if (streq(optarg, "directory"))
                                arg_backend_etcd = false;
                        else if (streq(optarg, "etcd"))
                                arg_backend_etcd = true;
                        else
                                return log_error_errno(EINVAL, "--backend= needs 'directory' or 'etcd', got '%s'.",
                                                       optarg);
                        break;
                case ARG_ETCD_ENDPOINTS:
                        r = parse_endpoints_argument(optarg);
                        if (r < 0)
                                return r;
                        break;
                case ARG_ETCD_PREFIX:
                        /* A key prefix, as etcdctl shows it: "/lockbus". */
                        if (optarg[0] != '/' || strlen(optarg) < 2 || optarg[strlen(optarg) - 1] == '/')
                                return log_error_errno(EINVAL, "--etcd-prefix= needs a path like /lockbus "
                                                       "(no trailing /), got '%s'.", optarg);
                        g_free(arg_etcd_prefix);
                        arg_etcd_prefix = g_strdup(optarg);
                        break;
                case ARG_ETCD_LEASE_TTL:
                        r = parse_seconds_argument("etcd-lease-ttl", optarg, &arg_etcd_lease_ttl_usec);
                        if (r < 0)
                                return r;
                        if (arg_etcd_lease_ttl_usec == 0)
                                return log_error_errno(EINVAL, "--etcd-lease-ttl= must be above 0.");
                        break;
                case '?':
                        return -EINVAL;
                default:
                        g_assert_not_reached();
                }

        if (optind < argc)
                return log_error_errno(EINVAL, "%s takes no positional arguments.", program_invocation_short_name);
        if (arg_backend_etcd && !arg_etcd_endpoints)
                return log_error_errno(EINVAL, "--backend=etcd needs --etcd-endpoints=.");
        if (!arg_backend_etcd && arg_etcd_endpoints)
                return log_error_errno(EINVAL, "--etcd-endpoints= is for --backend=etcd.");

        r = default_directories();
        if (r < 0)
                return r;
        return 1;
}

int main(int argc, char *argv[]) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        r = parse_argv(argc, argv);
        if (r <= 0)
                goto finish;

        r = lockbus_error_map_register();
        if (r < 0) {
                log_error_errno(r, "Failed to register the lockbus error map: %m");
                r = EXIT_FAILURE;
                goto finish;
        }

        ManagerConfig config = {
                .user_bus = arg_user,
                .lock_directory = arg_lock_directory,
                .runtime_directory = arg_runtime_directory,
                .max_locks_per_user = arg_max_locks_per_user,
                .max_waiters_per_user = arg_max_waiters_per_user,
                .idle_timeout_usec = arg_idle_timeout_usec,
                .etcd_endpoints = arg_backend_etcd ? arg_etcd_endpoints : NULL,
                .etcd_prefix = arg_etcd_prefix ?: DEFAULT_ETCD_PREFIX,
                .etcd_lease_ttl_usec = arg_etcd_lease_ttl_usec,
        };
        r = manager_new(&config, &m);
        if (r >= 0)
                r = manager_run(m);
        if (r < 0)
                r = EXIT_FAILURE;

finish:
        g_free(arg_lock_directory);
        g_free(arg_runtime_directory);
        g_strfreev(arg_etcd_endpoints);
        g_free(arg_etcd_prefix);
        /* Usage errors exit with 2, other failures with 1. */
        return r < 0 ? 2 : r > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
