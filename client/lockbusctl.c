/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* lockbusctl: the command line client of lockbus, built on liblockbus.
 *
 * Exit status (also in lockbusctl(1) and --help):
 *   0    success
 *   1    conflict: the resource is taken (AlreadyLocked), or a wait timed
 *        out (Timeout); -E/--conflict-exit-code changes it
 *   2    usage: bad options or arguments, or the service refused them
 *        (InvalidResource, InvalidArgs)
 *   3    not locked: unlock, owner, refresh or break of a free resource
 *   4    not allowed: someone else's hold (NotOwner), or AccessDenied
 *   5    any other failure: no bus, no service, Storage, QuotaExceeded, …
 *   run: the command's own status, 128+N if signal N killed it, 126 if it
 *        could not be executed, 127 if it was not found. */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <locale.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lockbus.h"
#include "lockbus-names.h"
#include "lockbusctl-output.h"
#include "lockbusctl-run.h"
#include "lockbusctl-util.h"
#include "macro.h"

#include "config.h"

enum {
        EXIT_CONFLICT_DEFAULT = 1,
        EXIT_USAGE = 2,
        EXIT_NOT_LOCKED = 3,
        EXIT_NOT_ALLOWED = 4,
        EXIT_OTHER = 5,
};

static bool arg_user = false;
static const char *arg_host = NULL;
static bool arg_quiet = false;
static bool arg_no_pager = false;
static bool arg_legend = true;
static JsonMode arg_json = JSON_OFF;
static lockbus_mode arg_mode = LOCKBUS_MODE_EXCLUSIVE;
static uint64_t arg_timeout_usec = 0;
static uint64_t arg_ttl_usec = 0;
static const char *arg_description = NULL;
static int arg_conflict_exit_code = EXIT_CONFLICT_DEFAULT;
static const char *arg_command = NULL;

static void help(void) {
        printf("%1$s [OPTIONS...] COMMAND ...\n\n"
               "Take, show and release the locks of the lockbus service (io.lockbus1).\n\n"
               "Commands:\n"
               "  lock RESOURCE             Take a lock that outlives this command and print\n"
               "                            its fencing token (persistent, exclusive unless -s)\n"
               "  unlock RESOURCE           Release our hold\n"
               "  owner RESOURCE            Show who holds a resource\n"
               "  list                      List every hold (the default command)\n"
               "  run RESOURCE [--] CMD...  Run CMD while holding RESOURCE\n"
               "  refresh RESOURCE          Restart the TTL of our hold, print the new expiry\n"
               "  break RESOURCE            Release every hold on RESOURCE (root, or polkit)\n"
               "  status                    Show the service's version, directory and counts\n\n"
               "Options:\n"
               "  -h --help                 Show this help\n"
               "     --version              Show the package version\n"
               "     --system               Talk to the system bus (default)\n"
               "     --user                 Talk to the user's session bus\n"
               "  -H --host=[USER@]HOST     Talk to the system bus of HOST over ssh\n"
               "  -q --quiet                Print nothing from lock, owner and refresh, and\n"
               "                            no message for a conflict or a free resource\n"
               "     --no-pager             Do not pipe the output into a pager\n"
               "     --no-legend            Print tables without header and footer\n"
               "     --json=MODE            Print JSON: short (one line) or pretty\n\n"
               "Lock options (lock, run):\n"
               "  -x --exclusive            An exclusive lock (default)\n"
               "  -s --shared               A shared lock\n"
               "  -n --nonblock             Fail at once when the resource is taken (default)\n"
               "  -w --wait[=SEC]           Wait at most SEC for the lock (1.5, 500ms, 30s,\n"
               "                            5min); --wait alone waits for ever\n"
               "     --ttl=SEC              Release the hold SEC after the grant or the last\n"
               "                            refresh\n"
               "     --description=TEXT     Why the lock is held, shown to others\n"
               "  -E --conflict-exit-code=N Exit status when the resource is taken or the\n"
               "                            wait timed out (default: 1)\n"
               "  -c --command=STRING       run: the command is /bin/sh -c STRING\n\n"
               "Exit status: 0 success, 1 conflict or timeout (see -E), 2 usage error,\n"
               "3 not locked, 4 not allowed, 5 other failure; run: the command's, 128+N if\n"
               "signal N killed it, 126 or 127 if it could not be executed.\n"
               "\nSee the lockbusctl(1) man page for details.\n",
               program_invocation_short_name);
}

static int usage_error(const char *format, ...) _printf_(1, 2);
static int usage_error(const char *format, ...) {
        va_list ap;

        fprintf(stderr, "%s: ", program_invocation_short_name);
        va_start(ap, format);
        vfprintf(stderr, format, ap);
        va_end(ap);
        fprintf(stderr, "\nTry '%s --help' for more information.\n", program_invocation_short_name);
        return -EXIT_USAGE;
}

/* --- Errors ------------------------------------------------------------------ */

static bool error_is(lockbus *l, const char *name) {
        const char *n = l ? lockbus_last_error_name(l) : NULL;

        return n && streq(n, name);
}

/* The exit status for a failed library call: by the service's error name
 * where there is one, else by errno. */
static int exit_status_of(lockbus *l, int r) {
        if (error_is(l, LOCKBUS_ERROR_ALREADY_LOCKED) || error_is(l, LOCKBUS_ERROR_TIMEOUT))
                return arg_conflict_exit_code;
        if (error_is(l, LOCKBUS_ERROR_NOT_LOCKED))
                return EXIT_NOT_LOCKED;
        if (error_is(l, LOCKBUS_ERROR_NOT_OWNER) || error_is(l, SD_BUS_ERROR_ACCESS_DENIED))
                return EXIT_NOT_ALLOWED;
        if (error_is(l, LOCKBUS_ERROR_INVALID_RESOURCE) || error_is(l, SD_BUS_ERROR_INVALID_ARGS))
                return EXIT_USAGE;
        if (l && lockbus_last_error_name(l))
                return EXIT_OTHER;

        /* Not from the service: sd-bus's own call timeout counts as a
         * timeout; a bad argument the library refused as a usage error. */
        switch (-r) {
        case EBUSY:
        case ETIMEDOUT:
                return arg_conflict_exit_code;
        case EINVAL:
                return EXIT_USAGE;
        case EPERM:
        case EACCES:
                return EXIT_NOT_ALLOWED;
        default:
                return EXIT_OTHER;
        }
}

/* An error of the service's own (the bus contract's), whose message says
 * it all, as opposed to one of sd-bus or the bus daemon. */
static bool error_is_service(lockbus *l) {
        const char *n = l ? lockbus_last_error_name(l) : NULL;

        return n && (strncmp(n, "io.lockbus1.Error.", strlen("io.lockbus1.Error.")) == 0 ||
                     streq(n, SD_BUS_ERROR_ACCESS_DENIED) || streq(n, SD_BUS_ERROR_INVALID_ARGS));
}

/* Reports a failed call: the service's message as it is (it names the
 * resource and the holder), anything else as "Failed to WHAT: MESSAGE".
 * Returns the exit status. */
static int call_failed(lockbus *l, int r, const char *format, ...) _printf_(3, 4);
static int call_failed(lockbus *l, int r, const char *format, ...) {
        const char *message = l ? lockbus_last_error_message(l) : NULL;
        int status = exit_status_of(l, r);
        bool expected = error_is(l, LOCKBUS_ERROR_ALREADY_LOCKED) || error_is(l, LOCKBUS_ERROR_TIMEOUT) ||
                        error_is(l, LOCKBUS_ERROR_NOT_LOCKED);
        va_list ap;

        if (arg_quiet && expected)
                return status;

        if (error_is_service(l) && message && *message) {
                fprintf(stderr, "%s\n", message);
                return status;
        }
        fputs("Failed to ", stderr);
        va_start(ap, format);
        vfprintf(stderr, format, ap);
        va_end(ap);
        fprintf(stderr, ": %s\n", message && *message ? message : strerror(-r));
        return status;
}

static int open_lockbus(lockbus **ret) {
        int r;

        if (arg_host)
                r = lockbus_open_system_remote(ret, arg_host);
        else if (arg_user)
                r = lockbus_open_user(ret);
        else
                r = lockbus_open_system(ret);
        if (r < 0) {
                if (arg_host)
                        fprintf(stderr, "Failed to connect to the system bus of %s: %s\n", arg_host, strerror(-r));
                else
                        fprintf(stderr, "Failed to connect to the %s bus: %s\n",
                                arg_user ? "user" : "system", strerror(-r));
                return EXIT_OTHER;
        }
        return 0;
}

static lockbus_options lock_options(lockbus_scope scope) {
        return (lockbus_options) {
                .mode = arg_mode,
                .scope = scope,
                .timeout_usec = arg_timeout_usec,
                .ttl_usec = arg_ttl_usec,
                .description = arg_description,
        };
}

/* --- Verbs ------------------------------------------------------------------- */

static int verb_lock(int argc, char *argv[]) {
        _cleanup_(lockbus_unrefp) lockbus *l = NULL;
        lockbus_options o = lock_options(LOCKBUS_SCOPE_PERSISTENT);
        uint64_t token = 0;
        int r;

        r = open_lockbus(&l);
        if (r > 0)
                return r;

        r = lockbus_lock(l, argv[1], &o, &token);
        if (r < 0)
                return call_failed(l, r, "lock '%s'", argv[1]);

        if (arg_quiet)
                return 0;
        if (arg_json != JSON_OFF) {
                JsonObject j;

                json_object_begin(&j, stdout, arg_json, 0);
                json_object_string(&j, "resource", argv[1]);
                json_object_unsigned(&j, "token", token);
                json_object_end(&j);
                fputc('\n', stdout);
        } else
                printf("%" PRIu64 "\n", token);
        return 0;
}

/* A call on one resource that answers nothing but success; `what` says
 * what it does, before the resource's name ("unlock"). */
static int call_on_resource(int (*call)(lockbus *l, const char *resource), const char *resource,
                            const char *what) {
        _cleanup_(lockbus_unrefp) lockbus *l = NULL;
        int r;

        r = open_lockbus(&l);
        if (r > 0)
                return r;

        r = call(l, resource);
        if (r < 0)
                return call_failed(l, r, "%s '%s'", what, resource);
        return 0;
}

static int verb_unlock(int argc, char *argv[]) {
        return call_on_resource(lockbus_unlock, argv[1], "unlock");
}

static int verb_break(int argc, char *argv[]) {
        return call_on_resource(lockbus_break, argv[1], "break the lock on");
}

static void print_holders(const lockbus_holder *holders, size_t n) {
        /* Users of a remote host are not ours to name. */
        bool resolve_users = !arg_host;

        pager_open(!arg_no_pager);
        if (arg_json != JSON_OFF)
                print_holders_json(stdout, holders, n, arg_json, resolve_users);
        else
                print_holders_table(stdout, holders, n, arg_legend, resolve_users);
}

static int verb_owner(int argc, char *argv[]) {
        _cleanup_(lockbus_unrefp) lockbus *l = NULL;
        lockbus_holder *holders = NULL;
        size_t n = 0;
        int r;

        r = open_lockbus(&l);
        if (r > 0)
                return r;

        r = lockbus_owner(l, argv[1], &holders, &n);
        if (r < 0)
                return call_failed(l, r, "look up the owner of '%s'", argv[1]);

        if (!arg_quiet)
                print_holders(holders, n);
        lockbus_holders_free(holders, n);
        return 0;
}

static int verb_list(int argc, char *argv[]) {
        _cleanup_(lockbus_unrefp) lockbus *l = NULL;
        lockbus_holder *holders = NULL;
        size_t n = 0;
        int r;

        r = open_lockbus(&l);
        if (r > 0)
                return r;

        r = lockbus_list(l, &holders, &n);
        if (r < 0)
                return call_failed(l, r, "list the locks");

        print_holders(holders, n);
        lockbus_holders_free(holders, n);
        return 0;
}

static int verb_refresh(int argc, char *argv[]) {
        _cleanup_(lockbus_unrefp) lockbus *l = NULL;
        _cleanup_free_ char *when = NULL;
        uint64_t expires = 0;
        int r;

        r = open_lockbus(&l);
        if (r > 0)
                return r;

        r = lockbus_refresh(l, argv[1], &expires);
        if (r < 0)
                return call_failed(l, r, "refresh the lock on '%s'", argv[1]);

        if (arg_quiet)
                return 0;
        if (arg_json != JSON_OFF) {
                JsonObject j;

                json_object_begin(&j, stdout, arg_json, 0);
                json_object_string(&j, "resource", argv[1]);
                json_object_unsigned(&j, "expires", expires);
                json_object_end(&j);
                fputc('\n', stdout);
                return 0;
        }
        when = expires == 0 ? strdup("never") : format_timestamp(expires);
        printf("%s\n", strempty(when));
        return 0;
}

static int verb_status(int argc, char *argv[]) {
        _cleanup_(lockbus_unrefp) lockbus *l = NULL;
        _cleanup_free_ char *version = NULL, *directory = NULL, *bus = NULL;
        uint32_t locks = 0, waiters = 0;
        int r;

        r = open_lockbus(&l);
        if (r > 0)
                return r;

        r = lockbus_get_version(l, &version);
        if (r < 0)
                return call_failed(l, r, "get the service's version");
        r = lockbus_get_lock_directory(l, &directory);
        if (r < 0)
                return call_failed(l, r, "get the lock directory");
        r = lockbus_get_lock_count(l, &locks);
        if (r < 0)
                return call_failed(l, r, "get the lock count");
        r = lockbus_get_waiter_count(l, &waiters);
        if (r < 0)
                return call_failed(l, r, "get the waiter count");

        if (arg_host)
                r = asprintf(&bus, "system (%s)", arg_host);
        else
                r = asprintf(&bus, "%s", arg_user ? "user" : "system");
        if (r < 0)
                return call_failed(NULL, -ENOMEM, "show the status");

        pager_open(!arg_no_pager);
        if (arg_json != JSON_OFF) {
                JsonObject j;

                json_object_begin(&j, stdout, arg_json, 0);
                json_object_string(&j, "version", version);
                json_object_string(&j, "bus", bus);
                json_object_string(&j, "lock_directory", directory);
                json_object_unsigned(&j, "lock_count", locks);
                json_object_unsigned(&j, "waiter_count", waiters);
                json_object_end(&j);
                fputc('\n', stdout);
                return 0;
        }
        printf("       Version: %s\n"
               "           Bus: %s\n"
               "Lock directory: %s\n"
               "         Locks: %" PRIu32 "\n"
               "       Waiters: %" PRIu32 "\n",
               version, bus, directory, locks, waiters);
        return 0;
}

static int verb_run(int argc, char *argv[]) {
        _cleanup_(lockbus_unrefp) lockbus *l = NULL;
        _cleanup_close_ int fd = -1;
        lockbus_options o = lock_options(LOCKBUS_SCOPE_FD);
        char *shell_argv[] = { (char *) "/bin/sh", (char *) "-c", (char *) arg_command, NULL };
        char *const *command = arg_command ? shell_argv : argv + 2;
        uint64_t token = 0;
        int r;

        r = open_lockbus(&l);
        if (r > 0)
                return r;

        r = lockbus_acquire_fd(l, argv[1], &o, &fd, &token);
        if (r < 0)
                return call_failed(l, r, "lock '%s'", argv[1]);

        r = run_command(command, argv[1], token, fd);

        /* Closing the fd releases the hold, but the service learns of it
         * only when it next looks at the pipe: release it with a call, so
         * that it is free when we exit ("run db a && run db b" must not
         * conflict). Failing is fine: the fd goes anyway. */
        (void) lockbus_unlock(l, argv[1]);

        if (r < 0) {
                fprintf(stderr, "Failed to run the command: %s\n", strerror(-r));
                return EXIT_OTHER;
        }
        return r;
}

/* --- Arguments ----------------------------------------------------------------- */

typedef struct Verb {
        const char *name;
        int min_args, max_args;         /* including the verb; -1: no limit */
        int (*run)(int argc, char *argv[]);
} Verb;

static const Verb verbs[] = {
        { "lock",    2, 2,  verb_lock    },
        { "unlock",  2, 2,  verb_unlock  },
        { "owner",   2, 2,  verb_owner   },
        { "list",    1, 1,  verb_list    },
        { "run",     2, -1, verb_run     },
        { "refresh", 2, 2,  verb_refresh },
        { "break",   2, 2,  verb_break   },
        { "status",  1, 1,  verb_status  },
};

static const Verb *find_verb(const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (streq(verbs[i].name, name))
                        return &verbs[i];
        return NULL;
}

static int parse_wait(const char *value) {
        int r = parse_duration(value, &arg_timeout_usec);

        if (r < 0)
                return usage_error("Invalid wait time '%s': expected seconds (1.5), a duration "
                                   "(500ms, 30s, 5min) or 'infinity'", value);
        return 0;
}

/* Options are taken anywhere on the command line, before and after the
 * verb; for `run`, the first argument that is no option after RESOURCE
 * starts the command, whose own options are left alone (so `run db ls -l`
 * works). "--" ends the options. Collects the other arguments (verb first)
 * in *ret_args. Returns 0 to go on, 1 to exit successfully (--help), or
 * -EXIT_USAGE. */
static int parse_argv(int argc, char *argv[], char ***ret_args, int *ret_n_args) {
        enum {
                ARG_VERSION = 0x100,
                ARG_SYSTEM,
                ARG_USER,
                ARG_NO_PAGER,
                ARG_NO_LEGEND,
                ARG_JSON,
                ARG_TTL,
                ARG_DESCRIPTION,
        };
        static const struct option options[] = {
                { "help",               no_argument,       NULL, 'h'             },
                { "version",            no_argument,       NULL, ARG_VERSION     },
                { "system",             no_argument,       NULL, ARG_SYSTEM      },
                { "user",               no_argument,       NULL, ARG_USER        },
                { "host",               required_argument, NULL, 'H'             },
                { "quiet",              no_argument,       NULL, 'q'             },
                { "no-pager",           no_argument,       NULL, ARG_NO_PAGER    },
                { "no-legend",          no_argument,       NULL, ARG_NO_LEGEND   },
                { "json",               required_argument, NULL, ARG_JSON        },
                { "exclusive",          no_argument,       NULL, 'x'             },
                { "shared",             no_argument,       NULL, 's'             },
                { "nonblock",           no_argument,       NULL, 'n'             },
                { "wait",               optional_argument, NULL, 'w'             },
                { "ttl",                required_argument, NULL, ARG_TTL         },
                { "description",        required_argument, NULL, ARG_DESCRIPTION },
                { "conflict-exit-code", required_argument, NULL, 'E'             },
                { "command",            required_argument, NULL, 'c'             },
                {}
        };
        char **args;
        int n_args = 0, r;

        args = calloc((size_t) argc + 1, sizeof(char *));
        if (!args) {
                fputs("Out of memory.\n", stderr);
                return -EXIT_OTHER;
        }
        *ret_args = args;

        /* "+": stop at the first argument that is no option; the loop
         * below collects it and goes on, so that we know where a run
         * command begins. */
        optind = 0;
        for (;;) {
                int before = optind == 0 ? 1 : optind;
                int c = getopt_long(argc, argv, "+hH:qxsnw:E:c:", options, NULL);

                if (c == -1) {
                        bool dashdash = optind == before + 1 && streq(argv[before], "--");

                        if (optind >= argc)
                                break;
                        if (dashdash || (n_args >= 2 && streq(args[0], "run"))) {
                                /* Everything from here on is arguments. */
                                while (optind < argc)
                                        args[n_args++] = argv[optind++];
                                break;
                        }
                        args[n_args++] = argv[optind++];
                        continue;
                }

                switch (c) {
                case 'h':
                        help();
                        return 1;
                case ARG_VERSION:
                        printf("lockbusctl %s\n", PACKAGE_VERSION);
                        return 1;
                case ARG_SYSTEM:
                        arg_user = false;
                        break;
                case ARG_USER:
                        arg_user = true;
                        break;
                case 'H':
                        arg_host = optarg;
                        break;
                case 'q':
                        arg_quiet = true;
                        break;
                case ARG_NO_PAGER:
                        arg_no_pager = true;
                        break;
                case ARG_NO_LEGEND:
                        arg_legend = false;
                        break;
                case ARG_JSON:
                        if (streq(optarg, "short"))
                                arg_json = JSON_SHORT;
                        else if (streq(optarg, "pretty"))
                                arg_json = JSON_PRETTY;
                        else if (streq(optarg, "off"))
                                arg_json = JSON_OFF;
                        else
                                return usage_error("Invalid --json= mode '%s': expected short, pretty or off", optarg);
                        break;
                case 'x':
                        arg_mode = LOCKBUS_MODE_EXCLUSIVE;
                        break;
                case 's':
                        arg_mode = LOCKBUS_MODE_SHARED;
                        break;
                case 'n':
                        arg_timeout_usec = 0;
                        break;
                case 'w':
                        if (optarg) {
                                r = parse_wait(optarg);
                                if (r < 0)
                                        return r;
                        } else if (optind < argc && parse_duration(argv[optind], &arg_timeout_usec) >= 0)
                                /* flock(1) habit: "--wait 5". */
                                optind++;
                        else
                                arg_timeout_usec = USEC_INFINITY;
                        break;
                case ARG_TTL:
                        r = parse_duration(optarg, &arg_ttl_usec);
                        if (r < 0 || arg_ttl_usec == USEC_INFINITY)
                                return usage_error("Invalid TTL '%s': expected seconds or a duration (30s, 5min)", optarg);
                        break;
                case ARG_DESCRIPTION:
                        arg_description = optarg;
                        break;
                case 'E':
                        r = parse_exit_code(optarg, &arg_conflict_exit_code);
                        if (r < 0)
                                return usage_error("Invalid exit code '%s': expected 0-255", optarg);
                        break;
                case 'c':
                        arg_command = optarg;
                        break;
                case '?':
                        /* getopt_long() printed what was wrong. */
                        fprintf(stderr, "Try '%s --help' for more information.\n", program_invocation_short_name);
                        return -EXIT_USAGE;
                default:
                        return usage_error("Unhandled option");
                }
        }

        if (arg_user && arg_host)
                return usage_error("--host= talks to a system bus; it cannot be combined with --user");

        *ret_n_args = n_args;
        return 0;
}

static int dispatch(int n_args, char **args) {
        const char *name = n_args > 0 ? args[0] : "list";
        char *default_args[] = { (char *) "list", NULL };
        const Verb *verb;

        if (n_args == 0) {
                args = default_args;
                n_args = 1;
        }

        verb = find_verb(name);
        if (!verb)
                return -usage_error("Unknown command '%s'", name);
        if (n_args < verb->min_args)
                return -usage_error("Too few arguments for '%s'", name);
        if (verb->max_args >= 0 && n_args > verb->max_args)
                return -usage_error("Too many arguments for '%s'", name);

        if (streq(name, "run")) {
                if (arg_command && n_args > 2)
                        return -usage_error("run: give the command either with -c/--command or as arguments, not both");
                if (!arg_command && n_args < 3)
                        return -usage_error("run: no command given");
        } else if (arg_command)
                return -usage_error("-c/--command is an option of run only");

        return verb->run(n_args, args);
}

int main(int argc, char *argv[]) {
        _cleanup_free_ char **args = NULL;
        int n_args = 0, r;

        setlocale(LC_ALL, "");

        r = parse_argv(argc, argv, &args, &n_args);
        if (r < 0)
                return -r;
        if (r > 0)
                return EXIT_SUCCESS;

        r = dispatch(n_args, args);

        pager_close();
        if (fflush(stdout) != 0 && r == 0) {
                fprintf(stderr, "Failed to write the output: %m\n");
                r = EXIT_OTHER;
        }
        return r;
}
