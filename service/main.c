/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "bus-errors.h"
#include "log.h"
#include "manager.h"
#include "settings.h"

#include "config.h"

static bool arg_user = false;
static char *arg_config = NULL;
static Settings arg_settings;
static char *arg_etcd_password = NULL;  /* read from --etcd-password-file=, erased at exit */

static void help(void) {
        printf("%s [OPTIONS...]\n\n"
               "The lockbus lock service: grants named locks on the bus as io.lockbus1.\n\n"
               "  -h --help                   Show this help\n"
               "     --version                Show package version\n"
               "     --system                 Serve the system bus (default)\n"
               "     --user                   Serve the user (session) bus\n"
               "     --config=FILE            Read the settings from FILE and FILE.d/*.conf\n"
               "                              (default: %s;\n"
               "                              with --user ~/.config/lockbus/lockbusd.conf)\n"
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
               "     --etcd-endpoints=URL,... etcd's client URLs (http:// or https://HOST:PORT)\n"
               "     --etcd-prefix=PREFIX     Prefix of every key (default: %s)\n"
               "     --etcd-lease-ttl=SEC     TTL of this daemon's lease: how long its\n"
               "                              connection holds outlive it (default: %u)\n"
               "     --etcd-cafile=FILE       Verify etcd's https:// certificates with this CA\n"
               "                              bundle instead of the system's CA store\n"
               "     --etcd-certfile=FILE     Client certificate for etcd (--client-cert-auth)\n"
               "     --etcd-keyfile=FILE      Its private key (with --etcd-certfile=)\n"
               "     --etcd-user=NAME         Authenticate to etcd as this user\n"
               "     --etcd-password-file=FILE\n"
               "                              The file holding its password, on one line\n"
               "                              (with --etcd-user=)\n"
               "\nEvery option but --system, --user and --config= can also be set in the\n"
               "configuration file; the command line wins.\n"
               "See the lockbusd(8) man page for details.\n",
               program_invocation_short_name,
               SETTINGS_SYSTEM_CONFIG_FILE,
               LOCKBUS_DEFAULT_LOCK_DIRECTORY, LOCKBUS_DEFAULT_RUNTIME_DIRECTORY,
               DEFAULT_MAX_LOCKS_PER_USER, DEFAULT_MAX_WAITERS_PER_USER,
               DEFAULT_ETCD_PREFIX, (unsigned) (DEFAULT_ETCD_LEASE_TTL_USEC / 1000000U));
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
        if (!arg_settings.lock_directory) {
                if (arg_user)
                        arg_settings.lock_directory = g_build_filename(g_get_user_state_dir(), "lockbus", NULL);
                else {
                        arg_settings.lock_directory = first_directory_from_env("STATE_DIRECTORY");
                        if (!arg_settings.lock_directory)
                                arg_settings.lock_directory = g_strdup(LOCKBUS_DEFAULT_LOCK_DIRECTORY);
                }
        }

        if (!arg_settings.runtime_directory) {
                if (arg_user) {
                        const char *runtime = getenv("XDG_RUNTIME_DIR");

                        if (!runtime || !*runtime)
                                return log_error_errno(ENXIO, "$XDG_RUNTIME_DIR is not set; "
                                                       "use --runtime-directory= with --user.");
                        arg_settings.runtime_directory = g_build_filename(runtime, "lockbus", NULL);
                } else {
                        arg_settings.runtime_directory = first_directory_from_env("RUNTIME_DIRECTORY");
                        if (!arg_settings.runtime_directory)
                                arg_settings.runtime_directory = g_strdup(LOCKBUS_DEFAULT_RUNTIME_DIRECTORY);
                }
        }
        return 0;
}

/* Long options, e.g. --idle-timeout=, carry ARG_SETTING + their Setting. */
#define ARG_SETTING 0x200

static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_VERSION = 0x100,
                ARG_SYSTEM,
                ARG_USER,
                ARG_CONFIG,
        };
        struct option options[5 + _SETTING_MAX + 1] = {
                { "help",    no_argument,       NULL, 'h'         },
                { "version", no_argument,       NULL, ARG_VERSION },
                { "system",  no_argument,       NULL, ARG_SYSTEM  },
                { "user",    no_argument,       NULL, ARG_USER    },
                { "config",  required_argument, NULL, ARG_CONFIG  },
        };
        /* The value of each setting on the command line (the last one
         * given), applied after the configuration file. */
        const char *values[_SETTING_MAX] = {};
        g_autofree char *config = NULL;
        _cleanup_(settings_done) Settings checked = {};
        int c, r;

        for (Setting id = 0; id < _SETTING_MAX; id++)
                options[5 + id] = (struct option) { setting_option(id), required_argument, NULL, ARG_SETTING + id };

        /* Each value is checked where it is given, so a bad one is
         * reported before anything else is read. */
        settings_init(&checked);
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
                case ARG_CONFIG:
                        if (!*optarg)
                                return log_error_errno(EINVAL, "--config= needs a file name.");
                        g_free(arg_config);
                        arg_config = g_strdup(optarg);
                        break;
                case '?':
                        return -EINVAL;
                default:
                        g_assert(c >= ARG_SETTING && c < ARG_SETTING + _SETTING_MAX);
                        r = settings_set_option(&checked, c - ARG_SETTING, optarg);
                        if (r < 0)
                                return r;
                        values[c - ARG_SETTING] = optarg;
                }

        if (optind < argc)
                return log_error_errno(EINVAL, "%s takes no positional arguments.", program_invocation_short_name);

        /* Defaults, then the file and its drop-ins, then the command line. */
        config = arg_config ? g_strdup(arg_config) : settings_default_config_file(arg_user);
        r = settings_load_file(&arg_settings, config, /* required= */ arg_config);
        if (r < 0)
                return r;
        for (Setting id = 0; id < _SETTING_MAX; id++)
                if (values[id]) {
                        r = settings_set_option(&arg_settings, id, values[id]);
                        g_assert(r >= 0);
                }

        r = settings_check(&arg_settings);
        if (r < 0)
                return r;
        r = settings_read_etcd_password(&arg_settings, &arg_etcd_password);
        if (r < 0)
                return r;
        r = default_directories();
        if (r < 0)
                return r;
        return 1;
}

int main(int argc, char *argv[]) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        settings_init(&arg_settings);
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
                .lock_directory = arg_settings.lock_directory,
                .runtime_directory = arg_settings.runtime_directory,
                .max_locks_per_user = arg_settings.max_locks_per_user,
                .max_waiters_per_user = arg_settings.max_waiters_per_user,
                .idle_timeout_usec = arg_settings.idle_timeout_usec,
                .etcd_endpoints = arg_settings.backend_etcd ? arg_settings.etcd_endpoints : NULL,
                .etcd_prefix = arg_settings.etcd_prefix ?: DEFAULT_ETCD_PREFIX,
                .etcd_lease_ttl_usec = arg_settings.etcd_lease_ttl_usec,
                .etcd_ca_file = arg_settings.etcd_ca_file,
                .etcd_cert_file = arg_settings.etcd_cert_file,
                .etcd_key_file = arg_settings.etcd_key_file,
                .etcd_user = arg_settings.etcd_user,
                .etcd_password = arg_etcd_password,
        };
        r = manager_new(&config, &m);
        if (r >= 0)
                r = manager_run(m);
        if (r < 0)
                r = EXIT_FAILURE;

finish:
        settings_done(&arg_settings);
        g_free(arg_config);
        if (arg_etcd_password)
                explicit_bzero(arg_etcd_password, strlen(arg_etcd_password));
        g_free(arg_etcd_password);
        /* Usage errors exit with 2, other failures with 1. */
        return r < 0 ? 2 : r > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
