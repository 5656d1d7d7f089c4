/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* lockbusd's configuration file (service/settings.h): every key, the
 * mapping of keys to options, drop-ins and their order, empty values,
 * precedence of the command line, unknown keys and sections, and bad
 * values with their messages (read from our own stderr, exactly). */

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "macro.h"
#include "manager.h"
#include "settings.h"

#define USEC_PER_SEC ((uint64_t) 1000000U)

typedef struct Fixture {
        char *dir;
        char *conf;             /* DIR/lockbusd.conf, not created */
        char *drop_in_dir;      /* DIR/lockbusd.conf.d, not created */
        Settings settings;
} Fixture;

static void rm_rf(const char *path) {
        g_autoptr(GDir) d = g_dir_open(path, 0, NULL);
        const char *name;

        if (d)
                while ((name = g_dir_read_name(d))) {
                        g_autofree char *p = g_build_filename(path, name, NULL);

                        rm_rf(p);
                }
        (void) g_remove(path);
}

static void fixture_setup(Fixture *f, gconstpointer data) {
        f->dir = g_dir_make_tmp("lockbus-test-config-XXXXXX", NULL);
        g_assert_nonnull(f->dir);
        f->conf = g_build_filename(f->dir, "lockbusd.conf", NULL);
        f->drop_in_dir = g_build_filename(f->dir, "lockbusd.conf.d", NULL);
        settings_init(&f->settings);
}

static void fixture_teardown(Fixture *f, gconstpointer data) {
        settings_done(&f->settings);
        rm_rf(f->dir);
        g_free(f->dir);
        g_free(f->conf);
        g_free(f->drop_in_dir);
}

static void write_file(const char *path, const char *contents) {
        g_autoptr(GError) error = NULL;

        if (!g_file_set_contents(path, contents, -1, &error))
                g_error("Failed to write %s: %s", path, error->message);
}

static char *write_drop_in(Fixture *f, const char *name, const char *contents) {
        char *path = g_build_filename(f->drop_in_dir, name, NULL);

        g_assert_cmpint(g_mkdir_with_parents(f->drop_in_dir, 0755), ==, 0);
        write_file(path, contents);
        return path;
}

/* --- What the code logs, from our stderr ---------------------------------- */

typedef struct Capture {
        int saved_fd;
        int fd;
} Capture;

static Capture capture_start(void) {
        Capture c;

        c.fd = memfd_create("stderr", MFD_CLOEXEC);
        g_assert_cmpint(c.fd, >=, 0);
        c.saved_fd = dup(STDERR_FILENO);
        g_assert_cmpint(c.saved_fd, >=, 0);
        g_assert_cmpint(dup2(c.fd, STDERR_FILENO), ==, STDERR_FILENO);
        return c;
}

/* Everything written to stderr since capture_start(). */
static char *capture_end(Capture c) {
        GString *s = g_string_new(NULL);
        char buf[1024];
        ssize_t n;

        g_assert_cmpint(dup2(c.saved_fd, STDERR_FILENO), ==, STDERR_FILENO);
        close(c.saved_fd);
        g_assert_cmpint(lseek(c.fd, 0, SEEK_SET), ==, 0);
        while ((n = read(c.fd, buf, sizeof(buf))) > 0)
                g_string_append_len(s, buf, n);
        g_assert_cmpint(n, ==, 0);
        close(c.fd);
        return g_string_free(s, false);
}

/* settings_load_file(), returning what it logged. */
static int load(Settings *s, const char *path, bool required, char **ret_log) {
        Capture c = capture_start();
        int r = settings_load_file(s, path, required);
        g_autofree char *log = capture_end(c);

        if (ret_log)
                *ret_log = g_steal_pointer(&log);
        else if (*log)
                g_test_message("Logged: %s", log);
        return r;
}

static void load_ok(Settings *s, const char *path, bool required) {
        g_autofree char *log = NULL;

        g_assert_cmpint(load(s, path, required, &log), ==, 0);
        g_assert_cmpstr(log, ==, "");
}

static void assert_defaults(const Settings *s) {
        g_assert_null(s->lock_directory);
        g_assert_null(s->runtime_directory);
        g_assert_cmpuint(s->idle_timeout_usec, ==, DEFAULT_IDLE_TIMEOUT_USEC);
        g_assert_cmpuint(s->max_locks_per_user, ==, DEFAULT_MAX_LOCKS_PER_USER);
        g_assert_cmpuint(s->max_waiters_per_user, ==, DEFAULT_MAX_WAITERS_PER_USER);
        g_assert_false(s->backend_etcd);
        g_assert_null(s->etcd_endpoints);
        g_assert_null(s->etcd_prefix);
        g_assert_cmpuint(s->etcd_lease_ttl_usec, ==, DEFAULT_ETCD_LEASE_TTL_USEC);
        g_assert_null(s->etcd_ca_file);
        g_assert_null(s->etcd_cert_file);
        g_assert_null(s->etcd_key_file);
        g_assert_null(s->etcd_user);
        g_assert_null(s->etcd_password_file);
}

static void assert_endpoints(char **endpoints, const char *joined) {
        g_autofree char *j = NULL;

        g_assert_nonnull(endpoints);
        j = g_strjoinv(" ", endpoints);
        g_assert_cmpstr(j, ==, joined);
}

/* --- The cases -------------------------------------------------------------- */

/* The documented mapping (lockbusd(8), CONFIGURATION FILE). */
static void test_key_names(void) {
        static const char *const expected[_SETTING_MAX][2] = {
                [SETTING_LOCK_DIRECTORY] = { "lock-directory", "LockDirectory" },
                [SETTING_RUNTIME_DIRECTORY] = { "runtime-directory", "RuntimeDirectory" },
                [SETTING_IDLE_TIMEOUT] = { "idle-timeout", "IdleTimeoutSec" },
                [SETTING_MAX_LOCKS_PER_USER] = { "max-locks-per-user", "MaxLocksPerUser" },
                [SETTING_MAX_WAITERS_PER_USER] = { "max-waiters-per-user", "MaxWaitersPerUser" },
                [SETTING_BACKEND] = { "backend", "Backend" },
                [SETTING_ETCD_ENDPOINTS] = { "etcd-endpoints", "EtcdEndpoints" },
                [SETTING_ETCD_PREFIX] = { "etcd-prefix", "EtcdPrefix" },
                [SETTING_ETCD_LEASE_TTL] = { "etcd-lease-ttl", "EtcdLeaseTTLSec" },
                [SETTING_ETCD_CA_FILE] = { "etcd-cafile", "EtcdCAFile" },
                [SETTING_ETCD_CERT_FILE] = { "etcd-certfile", "EtcdCertFile" },
                [SETTING_ETCD_KEY_FILE] = { "etcd-keyfile", "EtcdKeyFile" },
                [SETTING_ETCD_USER] = { "etcd-user", "EtcdUser" },
                [SETTING_ETCD_PASSWORD_FILE] = { "etcd-password-file", "EtcdPasswordFile" },
        };

        for (Setting id = 0; id < _SETTING_MAX; id++) {
                g_assert_cmpstr(setting_option(id), ==, expected[id][0]);
                g_assert_cmpstr(setting_key(id), ==, expected[id][1]);
                g_assert_cmpint(setting_from_key(expected[id][1]), ==, id);
        }
        g_assert_null(setting_option(_SETTING_MAX));
        g_assert_null(setting_key(_SETTING_MAX));
        /* Keys are case-sensitive, as in systemd's files. */
        g_assert_cmpint(setting_from_key("maxlocksperuser"), ==, -1);
        g_assert_cmpint(setting_from_key("max-locks-per-user"), ==, -1);
        g_assert_cmpint(setting_from_key(""), ==, -1);

        g_autofree char *system_file = settings_default_config_file(false);
        g_autofree char *user_file = settings_default_config_file(true);
        g_autofree char *user_expected = g_build_filename(g_get_user_config_dir(), "lockbus", "lockbusd.conf", NULL);

        g_assert_cmpstr(system_file, ==, "/etc/lockbus/lockbusd.conf");
        g_assert_cmpstr(user_file, ==, user_expected);
}

/* Every key, with whitespace around "=" and a comment. */
static void test_every_key(Fixture *f, gconstpointer data) {
        g_autofree char *contents = NULL, *ca = g_build_filename(f->dir, "ca.pem", NULL),
                *cert = g_build_filename(f->dir, "client.pem", NULL),
                *key = g_build_filename(f->dir, "client-key.pem", NULL),
                *password = g_build_filename(f->dir, "password", NULL);

        /* settings_check() wants them readable, not valid. */
        write_file(ca, "");
        write_file(cert, "");
        write_file(key, "");
        write_file(password, "");
        contents = g_strdup_printf("# lockbusd settings\n"
                                   "[Daemon]\n"
                                   "LockDirectory=/srv/locks\n"
                                   "RuntimeDirectory = /run/locks\n"
                                   "IdleTimeoutSec=2.5\n"
                                   "MaxLocksPerUser=7\n"
                                   "MaxWaitersPerUser=0\n"
                                   "Backend=etcd\n"
                                   "EtcdEndpoints=http://10.0.0.1:2379, http://10.0.0.2:2379 https://c:2379\n"
                                   "EtcdPrefix=/locks/prod\n"
                                   "EtcdLeaseTTLSec=0.75\n"
                                   "EtcdCAFile=%s\n"
                                   "EtcdCertFile = %s\n"
                                   "EtcdKeyFile=%s\n"
                                   "EtcdUser=lockbus\n"
                                   "EtcdPasswordFile=%s\n",
                                   ca, cert, key, password);
        write_file(f->conf, contents);
        load_ok(&f->settings, f->conf, true);

        g_assert_cmpstr(f->settings.lock_directory, ==, "/srv/locks");
        g_assert_cmpstr(f->settings.runtime_directory, ==, "/run/locks");
        g_assert_cmpuint(f->settings.idle_timeout_usec, ==, 2500000U);
        g_assert_cmpuint(f->settings.max_locks_per_user, ==, 7);
        g_assert_cmpuint(f->settings.max_waiters_per_user, ==, 0);
        g_assert_true(f->settings.backend_etcd);
        assert_endpoints(f->settings.etcd_endpoints, "http://10.0.0.1:2379 http://10.0.0.2:2379 https://c:2379");
        g_assert_cmpstr(f->settings.etcd_prefix, ==, "/locks/prod");
        g_assert_cmpuint(f->settings.etcd_lease_ttl_usec, ==, 750000U);
        g_assert_cmpstr(f->settings.etcd_ca_file, ==, ca);
        g_assert_cmpstr(f->settings.etcd_cert_file, ==, cert);
        g_assert_cmpstr(f->settings.etcd_key_file, ==, key);
        g_assert_cmpstr(f->settings.etcd_user, ==, "lockbus");
        g_assert_cmpstr(f->settings.etcd_password_file, ==, password);
        g_assert_cmpint(settings_check(&f->settings), ==, 0);
}

/* No file at the default path is fine; none where --config= points is not. */
static void test_missing(Fixture *f, gconstpointer data) {
        g_autofree char *log = NULL, *expected = NULL;

        load_ok(&f->settings, f->conf, false);
        assert_defaults(&f->settings);

        g_assert_cmpint(load(&f->settings, f->conf, true, &log), ==, -ENOENT);
        expected = g_strdup_printf("Failed to read configuration file %s: %s\n", f->conf, g_strerror(ENOENT));
        g_assert_cmpstr(log, ==, expected);

        /* A directory is no file. */
        g_assert_cmpint(g_mkdir(f->conf, 0755), ==, 0);
        g_clear_pointer(&log, g_free);
        g_clear_pointer(&expected, g_free);
        g_assert_cmpint(load(&f->settings, f->conf, false, &log), ==, -EISDIR);
        expected = g_strdup_printf("Failed to read configuration file %s: %s\n", f->conf, g_strerror(EISDIR));
        g_assert_cmpstr(log, ==, expected);
}

/* Drop-ins after the file, in name order; later values win; an empty value
 * is the default again; only *.conf not starting with "." count; they are
 * read also without the main file. */
static void test_drop_ins(Fixture *f, gconstpointer data) {
        g_autofree char *a = NULL, *b = NULL, *c = NULL, *hidden = NULL, *other = NULL;

        write_file(f->conf,
                   "[Daemon]\n"
                   "MaxLocksPerUser=1\n"
                   "MaxWaitersPerUser=2\n"
                   "IdleTimeoutSec=3\n"
                   "LockDirectory=/a\n");
        /* Written out of order: the order is the names'. */
        c = write_drop_in(f, "50-c.conf", "[Daemon]\nMaxWaitersPerUser=50\nLockDirectory=\n");
        a = write_drop_in(f, "10-a.conf", "[Daemon]\nMaxLocksPerUser=10\nMaxWaitersPerUser=10\n");
        b = write_drop_in(f, "20-b.conf", "[Daemon]\nMaxLocksPerUser=20\n");
        hidden = write_drop_in(f, ".99-hidden.conf", "[Daemon]\nMaxLocksPerUser=99\n");
        other = write_drop_in(f, "99-other.conf.bak", "[Daemon]\nMaxLocksPerUser=98\n");

        load_ok(&f->settings, f->conf, true);
        g_assert_cmpuint(f->settings.max_locks_per_user, ==, 20);
        g_assert_cmpuint(f->settings.max_waiters_per_user, ==, 50);
        g_assert_cmpuint(f->settings.idle_timeout_usec, ==, 3 * USEC_PER_SEC);
        g_assert_null(f->settings.lock_directory);

        /* Without the main file, the drop-ins alone. */
        g_assert_cmpint(g_unlink(f->conf), ==, 0);
        settings_done(&f->settings);
        load_ok(&f->settings, f->conf, false);
        g_assert_cmpuint(f->settings.max_locks_per_user, ==, 20);
        g_assert_cmpuint(f->settings.max_waiters_per_user, ==, 50);
        g_assert_cmpuint(f->settings.idle_timeout_usec, ==, DEFAULT_IDLE_TIMEOUT_USEC);
}

/* Key= restores each default, also after a value of an earlier file. */
static void test_empty_values(Fixture *f, gconstpointer data) {
        g_autofree char *reset = NULL;
        GString *s = g_string_new("[Daemon]\n");

        write_file(f->conf,
                   "[Daemon]\n"
                   "LockDirectory=/srv/locks\n"
                   "RuntimeDirectory=/run/locks\n"
                   "IdleTimeoutSec=1\n"
                   "MaxLocksPerUser=1\n"
                   "MaxWaitersPerUser=1\n"
                   "Backend=etcd\n"
                   "EtcdEndpoints=http://a:1\n"
                   "EtcdPrefix=/x\n"
                   "EtcdLeaseTTLSec=1\n"
                   "EtcdCAFile=/etc/ssl/etcd/ca.pem\n"
                   "EtcdCertFile=/etc/ssl/etcd/client.pem\n"
                   "EtcdKeyFile=/etc/ssl/etcd/client-key.pem\n"
                   "EtcdUser=lockbus\n"
                   "EtcdPasswordFile=/etc/lockbus/etcd-password\n");
        for (Setting id = 0; id < _SETTING_MAX; id++)
                g_string_append_printf(s, "%s=\n", setting_key(id));
        reset = write_drop_in(f, "reset.conf", s->str);
        g_string_free(s, true);

        load_ok(&f->settings, f->conf, true);
        assert_defaults(&f->settings);
}

/* The last assignment in a file wins, also for the list of endpoints. */
static void test_last_wins(Fixture *f, gconstpointer data) {
        write_file(f->conf,
                   "[Daemon]\n"
                   "EtcdEndpoints=http://a:1,http://b:2\n"
                   "MaxLocksPerUser=5\n"
                   "[Daemon]\n"
                   "EtcdEndpoints=http://c:3\n"
                   "MaxLocksPerUser=6\n");
        load_ok(&f->settings, f->conf, true);
        assert_endpoints(f->settings.etcd_endpoints, "http://c:3");
        g_assert_cmpuint(f->settings.max_locks_per_user, ==, 6);
}

/* The command line is applied after the file (as lockbusd does) and wins;
 * what it does not name keeps the file's value. The daemon's own order is
 * tested end to end in tests/bus/test-bus-config.c. */
static void test_precedence(Fixture *f, gconstpointer data) {
        write_file(f->conf, "[Daemon]\nMaxLocksPerUser=1\nMaxWaitersPerUser=2\nLockDirectory=/from/file\n");
        load_ok(&f->settings, f->conf, true);

        g_assert_cmpint(settings_set_option(&f->settings, SETTING_MAX_LOCKS_PER_USER, "9"), ==, 0);
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_LOCK_DIRECTORY, "/from/cmdline"), ==, 0);
        g_assert_cmpuint(f->settings.max_locks_per_user, ==, 9);
        g_assert_cmpuint(f->settings.max_waiters_per_user, ==, 2);
        g_assert_cmpstr(f->settings.lock_directory, ==, "/from/cmdline");
}

/* Unknown keys and sections: one warning each, naming the file and the
 * key, and the rest is read. */
static void test_unknown(Fixture *f, gconstpointer data) {
        g_autofree char *log = NULL, *expected = NULL, *drop_in = NULL;

        write_file(f->conf,
                   "[Daemon]\n"
                   "MaxLocksPerUser=3\n"
                   "FutureKnob=yes\n"
                   "maxlocksperuser=4\n"
                   "[Network]\n"
                   "MaxLocksPerUser=5\n");
        drop_in = write_drop_in(f, "10-x.conf", "[Daemon]\nMaxWaitersPerUser=4\nmax-waiters-per-user=5\n");

        g_assert_cmpint(load(&f->settings, f->conf, true, &log), ==, 0);
        expected = g_strdup_printf("%1$s: Unknown key FutureKnob= in section [Daemon], ignoring.\n"
                                   "%1$s: Unknown key maxlocksperuser= in section [Daemon], ignoring.\n"
                                   "%1$s: Unknown section [Network], ignoring.\n"
                                   "%2$s: Unknown key max-waiters-per-user= in section [Daemon], ignoring.\n",
                                   f->conf, drop_in);
        g_assert_cmpstr(log, ==, expected);
        g_assert_cmpuint(f->settings.max_locks_per_user, ==, 3);
        g_assert_cmpuint(f->settings.max_waiters_per_user, ==, 4);
}

/* A bad value of each key: an error naming the file, the key and the
 * value, in the words the option uses for the same value. */
static void test_bad_values(Fixture *f, gconstpointer data) {
        static const struct {
                Setting id;
                const char *value;
                const char *need;
                const char *shown;      /* the value as read from the file, if not `value` */
        } cases[] = {
                { SETTING_LOCK_DIRECTORY, "var/lib/x", "an absolute path" },
                { SETTING_RUNTIME_DIRECTORY, "./run", "an absolute path" },
                { SETTING_IDLE_TIMEOUT, "30s", "seconds (e.g. 30 or 0.5)" },
                { SETTING_IDLE_TIMEOUT, "-1", "seconds (e.g. 30 or 0.5)" },
                { SETTING_IDLE_TIMEOUT, "1.", "seconds (e.g. 30 or 0.5)" },
                { SETTING_MAX_LOCKS_PER_USER, "-1", "a non-negative integer" },
                { SETTING_MAX_LOCKS_PER_USER, "99999999999", "a non-negative integer" },
                { SETTING_MAX_WAITERS_PER_USER, "many", "a non-negative integer" },
                { SETTING_BACKEND, "Etcd", "'directory' or 'etcd'" },
                { SETTING_ETCD_ENDPOINTS, "10.0.0.1:2379", "http:// or https:// URLs, separated by commas or spaces" },
                /* Blanks around a value are dropped. */
                { SETTING_ETCD_ENDPOINTS, " , ", "http:// or https:// URLs, separated by commas or spaces", "," },
                { SETTING_ETCD_PREFIX, "/lockbus/", "a path like /lockbus (no trailing /)" },
                { SETTING_ETCD_LEASE_TTL, "0", "seconds above 0 (e.g. 10 or 2.5)" },
                { SETTING_ETCD_CA_FILE, "ca.pem", "an absolute file name" },
                { SETTING_ETCD_CERT_FILE, "/etc/ssl/etcd/", "an absolute file name" },
                { SETTING_ETCD_KEY_FILE, "~/key.pem", "an absolute file name" },
                { SETTING_ETCD_USER, "a\tb", "a user name without control characters" },
                { SETTING_ETCD_PASSWORD_FILE, "password", "an absolute file name" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                g_autofree char *contents = NULL, *log = NULL, *expected = NULL, *option_log = NULL,
                        *option_expected = NULL;
                Settings s;
                Capture c;

                contents = g_strdup_printf("[Daemon]\nMaxLocksPerUser=3\n%s=%s\n", setting_key(cases[i].id),
                                           cases[i].value);
                write_file(f->conf, contents);

                settings_init(&s);
                g_assert_cmpint(load(&s, f->conf, false, &log), ==, -EINVAL);
                expected = g_strdup_printf("%s: %s= needs %s, got '%s'.\n", f->conf, setting_key(cases[i].id),
                                           cases[i].need, cases[i].shown ?: cases[i].value);
                g_assert_cmpstr(log, ==, expected);
                settings_done(&s);

                /* The option: the same words, and the settings unchanged. */
                settings_init(&s);
                c = capture_start();
                g_assert_cmpint(settings_set_option(&s, cases[i].id, cases[i].value), ==, -EINVAL);
                option_log = capture_end(c);
                option_expected = g_strdup_printf("--%s= needs %s, got '%s'.\n", setting_option(cases[i].id),
                                                  cases[i].need, cases[i].value);
                g_assert_cmpstr(option_log, ==, option_expected);
                assert_defaults(&s);
                settings_done(&s);
        }
}

/* A file GKeyFile cannot parse is an error naming it; so is a bad escape. */
static void test_syntax_errors(Fixture *f, gconstpointer data) {
        g_autofree char *log = NULL, *prefix = NULL, *log2 = NULL, *prefix2 = NULL;

        write_file(f->conf, "MaxLocksPerUser=3\n");
        g_assert_cmpint(load(&f->settings, f->conf, true, &log), ==, -EINVAL);
        prefix = g_strdup_printf("Failed to parse configuration file %s: ", f->conf);
        g_assert_true(g_str_has_prefix(log, prefix));

        write_file(f->conf, "[Daemon]\nLockDirectory=/a\\qb\n");
        g_assert_cmpint(load(&f->settings, f->conf, true, &log2), ==, -EINVAL);
        prefix2 = g_strdup_printf("%s: LockDirectory= needs UTF-8 text with valid \\ escapes, got '/a\\qb'.\n", f->conf);
        g_assert_cmpstr(log2, ==, prefix2);
}

/* A bad drop-in stops the load as the main file does, naming the drop-in. */
static void test_bad_drop_in(Fixture *f, gconstpointer data) {
        g_autofree char *log = NULL, *expected = NULL, *drop_in = NULL;

        write_file(f->conf, "[Daemon]\nMaxLocksPerUser=3\n");
        drop_in = write_drop_in(f, "10-bad.conf", "[Daemon]\nBackend=zookeeper\n");
        g_assert_cmpint(load(&f->settings, f->conf, true, &log), ==, -EINVAL);
        expected = g_strdup_printf("%s: Backend= needs 'directory' or 'etcd', got 'zookeeper'.\n", drop_in);
        g_assert_cmpstr(log, ==, expected);
}

/* The rules across settings hold whichever source set them. */
static void test_check(Fixture *f, gconstpointer data) {
        g_autofree char *log = NULL;
        Capture c;

        write_file(f->conf, "[Daemon]\nBackend=etcd\n");
        load_ok(&f->settings, f->conf, true);
        c = capture_start();
        g_assert_cmpint(settings_check(&f->settings), ==, -EINVAL);
        log = capture_end(c);
        g_assert_cmpstr(log, ==, "--backend=etcd (Backend=etcd) needs --etcd-endpoints= (EtcdEndpoints=).\n");

        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_ENDPOINTS, "http://a:1,,http://b:2"), ==, 0);
        assert_endpoints(f->settings.etcd_endpoints, "http://a:1 http://b:2");
        g_assert_cmpint(settings_check(&f->settings), ==, 0);

        g_assert_cmpint(settings_set_option(&f->settings, SETTING_BACKEND, "directory"), ==, 0);
        g_clear_pointer(&log, g_free);
        c = capture_start();
        g_assert_cmpint(settings_check(&f->settings), ==, -EINVAL);
        log = capture_end(c);
        g_assert_cmpstr(log, ==, "--etcd-endpoints= (EtcdEndpoints=) is for --backend=etcd (Backend=etcd).\n");
}

static char *check_log(const Settings *s, int expected_r) {
        Capture c = capture_start();
        int r = settings_check(s);
        char *log = capture_end(c);

        g_assert_cmpint(r, ==, expected_r);
        return log;
}

/* The TLS files: for the etcd backend over https://, certificate and key
 * together, each readable now; the messages name the option, the key and
 * the file. */
static void test_check_tls(Fixture *f, gconstpointer data) {
        g_autofree char *ca = g_build_filename(f->dir, "ca.pem", NULL),
                *cert = g_build_filename(f->dir, "client.pem", NULL),
                *key = g_build_filename(f->dir, "client-key.pem", NULL),
                *missing = g_build_filename(f->dir, "missing.pem", NULL), *log = NULL, *expected = NULL;

        write_file(ca, "");
        write_file(cert, "");
        write_file(key, "");
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_BACKEND, "etcd"), ==, 0);
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_ENDPOINTS, "http://a:1,https://b:2"), ==, 0);
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_CA_FILE, ca), ==, 0);
        g_assert_cmpint(settings_check(&f->settings), ==, 0);

        /* One without the other. */
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_CERT_FILE, cert), ==, 0);
        log = check_log(&f->settings, -EINVAL);
        g_assert_cmpstr(log, ==, "--etcd-certfile= (EtcdCertFile=) needs its key, --etcd-keyfile= (EtcdKeyFile=).\n");
        g_clear_pointer(&f->settings.etcd_cert_file, g_free);
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_KEY_FILE, key), ==, 0);
        g_free(log);
        log = check_log(&f->settings, -EINVAL);
        g_assert_cmpstr(log, ==, "--etcd-keyfile= (EtcdKeyFile=) needs its certificate, "
                        "--etcd-certfile= (EtcdCertFile=).\n");
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_CERT_FILE, cert), ==, 0);
        g_assert_cmpint(settings_check(&f->settings), ==, 0);

        /* A file that cannot be read, or a directory. */
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_KEY_FILE, missing), ==, 0);
        g_free(log);
        log = check_log(&f->settings, -ENOENT);
        expected = g_strdup_printf("--etcd-keyfile= (EtcdKeyFile=): cannot read %s: %s\n", missing, g_strerror(ENOENT));
        g_assert_cmpstr(log, ==, expected);
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_KEY_FILE, key), ==, 0);
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_CA_FILE, f->dir), ==, 0);
        g_free(log);
        g_free(expected);
        log = check_log(&f->settings, -EISDIR);
        expected = g_strdup_printf("--etcd-cafile= (EtcdCAFile=): cannot read %s: %s\n", f->dir, g_strerror(EISDIR));
        g_assert_cmpstr(log, ==, expected);
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_CA_FILE, ca), ==, 0);

        /* No https:// endpoint: nothing would be encrypted. */
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_ENDPOINTS, "http://a:1"), ==, 0);
        g_free(log);
        log = check_log(&f->settings, -EINVAL);
        g_assert_cmpstr(log, ==, "--etcd-cafile= (EtcdCAFile=) is for https:// endpoints; "
                        "--etcd-endpoints= (EtcdEndpoints=) has none.\n");

        /* Not the directory backend. */
        g_clear_pointer(&f->settings.etcd_endpoints, g_strfreev);
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_BACKEND, "directory"), ==, 0);
        g_free(log);
        log = check_log(&f->settings, -EINVAL);
        g_assert_cmpstr(log, ==, "--etcd-cafile= (EtcdCAFile=) is for --backend=etcd (Backend=etcd).\n");
}

static char *read_password_log(const Settings *s, int expected_r, char **ret_password) {
        Capture c = capture_start();
        int r = settings_read_etcd_password(s, ret_password);
        char *log = capture_end(c);

        g_assert_cmpint(r, ==, expected_r);
        return log;
}

/* The user and its password file: together, for the etcd backend, the
 * file readable now; the password is its one line without the newline,
 * and no message shows it. */
static void test_check_auth(Fixture *f, gconstpointer data) {
        g_autofree char *file = g_build_filename(f->dir, "password", NULL),
                *missing = g_build_filename(f->dir, "missing", NULL), *log = NULL, *expected = NULL,
                *password = NULL;

        write_file(file, "s3cret\n");
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_BACKEND, "etcd"), ==, 0);
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_ENDPOINTS, "http://a:1"), ==, 0);

        /* Neither: no password either. */
        g_assert_cmpint(settings_check(&f->settings), ==, 0);
        log = read_password_log(&f->settings, 0, &password);
        g_assert_cmpstr(log, ==, "");
        g_assert_null(password);

        /* One without the other. */
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_USER, "root"), ==, 0);
        g_free(log);
        log = check_log(&f->settings, -EINVAL);
        g_assert_cmpstr(log, ==, "--etcd-user= (EtcdUser=) needs its password, "
                        "--etcd-password-file= (EtcdPasswordFile=).\n");
        g_clear_pointer(&f->settings.etcd_user, g_free);
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_PASSWORD_FILE, file), ==, 0);
        g_free(log);
        log = check_log(&f->settings, -EINVAL);
        g_assert_cmpstr(log, ==, "--etcd-password-file= (EtcdPasswordFile=) needs its user, "
                        "--etcd-user= (EtcdUser=).\n");

        /* Both: the password without its newline. */
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_USER, "root"), ==, 0);
        g_assert_cmpint(settings_check(&f->settings), ==, 0);
        g_free(log);
        log = read_password_log(&f->settings, 0, &password);
        g_assert_cmpstr(log, ==, "");
        g_assert_cmpstr(password, ==, "s3cret");
        g_clear_pointer(&password, g_free);

        /* Without a newline it is the same. */
        write_file(file, "s3cret");
        g_free(log);
        log = read_password_log(&f->settings, 0, &password);
        g_assert_cmpstr(password, ==, "s3cret");
        g_clear_pointer(&password, g_free);

        /* Two lines, or none: refused, naming the file, not showing it. */
        write_file(file, "s3cret\nmore\n");
        g_free(log);
        log = read_password_log(&f->settings, -EINVAL, &password);
        expected = g_strdup_printf("--etcd-password-file= (EtcdPasswordFile=): %s must hold the password on "
                                   "one line of at most 4095 bytes, and it does not.\n", file);
        g_assert_cmpstr(log, ==, expected);
        write_file(file, "");
        g_free(log);
        g_free(expected);
        log = read_password_log(&f->settings, -EINVAL, &password);
        expected = g_strdup_printf("--etcd-password-file= (EtcdPasswordFile=): %s must hold the password on "
                                   "one line of at most 4095 bytes, and it is empty.\n", file);
        g_assert_cmpstr(log, ==, expected);

        /* A file that cannot be read. */
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_PASSWORD_FILE, missing), ==, 0);
        g_free(log);
        g_free(expected);
        log = check_log(&f->settings, -ENOENT);
        expected = g_strdup_printf("--etcd-password-file= (EtcdPasswordFile=): cannot read %s: %s\n", missing,
                                   g_strerror(ENOENT));
        g_assert_cmpstr(log, ==, expected);

        /* Not the directory backend. */
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_ETCD_PASSWORD_FILE, file), ==, 0);
        g_clear_pointer(&f->settings.etcd_endpoints, g_strfreev);
        g_assert_cmpint(settings_set_option(&f->settings, SETTING_BACKEND, "directory"), ==, 0);
        g_free(log);
        log = check_log(&f->settings, -EINVAL);
        g_assert_cmpstr(log, ==, "--etcd-user= (EtcdUser=) is for --backend=etcd (Backend=etcd).\n");
}

#define add(path, func) g_test_add((path), Fixture, NULL, fixture_setup, (func), fixture_teardown)

int main(int argc, char *argv[]) {
        /* Log lines without the journal's "<N>" prefix. */
        unsetenv("JOURNAL_STREAM");
        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/config/key-names", test_key_names);
        add("/config/every-key", test_every_key);
        add("/config/missing", test_missing);
        add("/config/drop-ins", test_drop_ins);
        add("/config/empty-values", test_empty_values);
        add("/config/last-wins", test_last_wins);
        add("/config/precedence", test_precedence);
        add("/config/unknown", test_unknown);
        add("/config/bad-values", test_bad_values);
        add("/config/syntax-errors", test_syntax_errors);
        add("/config/bad-drop-in", test_bad_drop_in);
        add("/config/check", test_check);
        add("/config/check-tls", test_check_tls);
        add("/config/check-auth", test_check_auth);

        return g_test_run();
}
