/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* lockbusd's configuration file, end to end: a real lockbusd started with
 * --config=FILE on a private system-like bus, its settings seen through the
 * bus API (the quotas, which name their limits in QuotaExceeded), the
 * command line winning over the file, drop-ins, an unknown key that only
 * warns, and a bad value or a missing file that stop the daemon with exit
 * status 2 before it touches anything; so do broken TLS settings of cluster
 * mode (a certificate without its key, a CA file that is not there, a
 * relative file name) and broken credentials (a user without its password
 * file, a password file that is not there or empty, a user without the
 * etcd backend).
 *
 * The file lives in the bus's DIR, so the harness removes it with the bus,
 * also when a test fails; DIR is known only once the bus exists, so
 * --config= is appended to the daemon's arguments afterwards and the daemon
 * is started directly (the activation file, written with the bus, has no
 * --config=; nothing here activates). Nothing sleeps: every wait is for a
 * reply, the daemon taking its name, or its exit. */

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bus-test.h"

#define CHILD_COMM "lockbus-child"

/* The uid of the limited caller: another user when we are root, else
 * ourselves (root is never limited). */
static uid_t limited_uid(void) {
        return geteuid() == 0 ? TEST_OTHER_UID : geteuid();
}

static char *quota_result(const char *resource, uid_t uid, unsigned locks, unsigned waiters) {
        return g_strdup_printf("error %s: Resource '%s' not granted: uid %u is at its limit of %u locks "
                               "and %u waiting calls",
                               LOCKBUS_ERROR_QUOTA_EXCEEDED, resource, (unsigned) uid, locks, waiters);
}

static void write_file(const char *path, const char *contents) {
        g_autoptr(GError) error = NULL;

        if (!g_file_set_contents(path, contents, -1, &error))
                g_error("Failed to write %s: %s", path, error->message);
}

/* A bus whose daemon gets --config=DIR/lockbusd.conf (written with
 * `contents`, unless NULL) and then `args`. */
static TestBus *bus_with_config(const char *contents, const char *const *args, char **ret_path) {
        TestBus *b = test_bus_new();
        GPtrArray *extra = g_ptr_array_new();
        g_autofree char *path = g_build_filename(b->dir, "lockbusd.conf", NULL);
        g_autofree char *option = g_strconcat("--config=", path, NULL);

        if (contents)
                write_file(path, contents);

        g_ptr_array_add(extra, g_steal_pointer(&option));
        for (const char *const *a = args; a && *a; a++)
                g_ptr_array_add(extra, g_strdup(*a));
        g_ptr_array_add(extra, NULL);
        g_strfreev(b->extra_args);
        b->extra_args = (char **) g_ptr_array_free(extra, false);

        if (ret_path)
                *ret_path = g_steal_pointer(&path);
        return b;
}

/* Starts the daemon with its output in DIR/lockbusd.log; returns whether
 * it took its name, and its output so far. */
static bool start_daemon_logged(TestBus *b, int *ret_status, char **ret_log) {
        g_autofree char *log_path = g_build_filename(b->dir, "lockbusd.log", NULL);
        _cleanup_close_ int fd = -1;
        bool started;

        fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOCTTY, 0644);
        g_assert_cmpint(fd, >=, 0);
        started = test_bus_try_start_daemon(b, NULL, fd, ret_status);
        *ret_log = test_read_file(log_path);
        g_assert_nonnull(*ret_log);
        return started;
}

/* A client of the limited uid under remote control. */
static TestClient *start_limited_client(TestBus *b) {
        TestClient *c = test_client_start(b, limited_uid(), CHILD_COMM, test_client_serve, NULL);
        g_autofree char *unique = test_client_command(c, "Unique");

        if (!g_str_has_prefix(unique, "ok :"))
                g_error("Client process as uid %u: Unique: %s", (unsigned) limited_uid(), unique);
        return c;
}

/* MaxLocksPerUser= and MaxWaitersPerUser= of the file are the daemon's
 * quotas. */
static void test_config_quota(void) {
        g_autoptr(TestBus) b = bus_with_config("# a test\n"
                                               "[Daemon]\n"
                                               "MaxLocksPerUser=2\n"
                                               "MaxWaitersPerUser=1\n",
                                               NULL, NULL);
        g_autoptr(TestClient) c = NULL;
        g_autofree char *e_a3 = quota_result("a3", limited_uid(), 2, 1);

        test_bus_start_daemon(b);
        c = start_limited_client(b);
        (void) test_client_command_ok(c, "Lock a1");
        (void) test_client_command_ok(c, "Acquire a2");
        assert_client_command(c, e_a3, "Lock a3");
        assert_client_command(c, e_a3, "Acquire a3 timeout=max");
        assert_client_command(c, "ok", "Unlock a1");
        (void) test_client_command_ok(c, "Lock a3");
}

/* The file, then its drop-ins in name order, then the command line. */
static void test_config_precedence(void) {
        static const char *const args[] = { "--max-locks-per-user=3", NULL };
        g_autofree char *path = NULL, *drop_ins = NULL, *d10 = NULL, *d20 = NULL;
        g_autoptr(TestBus) b = bus_with_config("[Daemon]\n"
                                               "MaxLocksPerUser=1\n"
                                               "MaxWaitersPerUser=1\n",
                                               args, &path);
        g_autoptr(TestClient) c = NULL;
        g_autofree char *e_a4 = quota_result("a4", limited_uid(), 3, 4);

        drop_ins = g_strconcat(path, ".d", NULL);
        g_assert_cmpint(g_mkdir_with_parents(drop_ins, 0755), ==, 0);
        d20 = g_build_filename(drop_ins, "20-more.conf", NULL);
        write_file(d20, "[Daemon]\nMaxWaitersPerUser=4\n");
        /* Read before 20-more.conf, so its waiters are overridden; its
         * locks are overridden by the command line. */
        d10 = g_build_filename(drop_ins, "10-base.conf", NULL);
        write_file(d10, "[Daemon]\nMaxWaitersPerUser=2\nMaxLocksPerUser=2\n");

        test_bus_start_daemon(b);
        c = start_limited_client(b);
        (void) test_client_command_ok(c, "Lock a1");
        (void) test_client_command_ok(c, "Lock a2");
        (void) test_client_command_ok(c, "Lock a3");
        assert_client_command(c, e_a4, "Lock a4");
}

/* An unknown key or section is a warning naming the file, and the daemon
 * serves with the rest of the file. */
static void test_config_unknown_key(void) {
        g_autofree char *path = NULL, *log = NULL, *expected = NULL;
        g_autoptr(TestBus) b = bus_with_config("[Daemon]\n"
                                               "MaxLocksPerUser=1\n"
                                               "FutureKnob=on\n"
                                               "[Cluster]\n"
                                               "Peers=a b\n",
                                               NULL, &path);
        g_autoptr(TestClient) c = NULL;
        /* 128: the default of --max-waiters-per-user. */
        g_autofree char *e_a2 = quota_result("a2", limited_uid(), 1, 128);
        int status = 0;

        if (!start_daemon_logged(b, &status, &log))
                g_error("lockbusd exited (wait status 0x%x) before taking " LOCKBUS_BUS_NAME "; its log:\n%s",
                        (unsigned) status, log);
        /* Written at once (a warning), before the name was taken. */
        expected = g_strdup_printf("%1$s: Unknown key FutureKnob= in section [Daemon], ignoring.\n"
                                   "%1$s: Unknown section [Cluster], ignoring.\n", path);
        g_assert_true(g_str_has_prefix(log, expected));

        c = start_limited_client(b);
        (void) test_client_command_ok(c, "Lock a1");
        assert_client_command(c, e_a2, "Lock a2");
}

/* A daemon that must not start: exit status 2, this one log line, no name
 * taken and nothing created. */
static void assert_refused(TestBus *b, const char *expected_log) {
        g_autofree char *log = NULL;
        int status = 0;

        g_assert_false(start_daemon_logged(b, &status, &log));
        g_assert_true(WIFEXITED(status));
        g_assert_cmpint(WEXITSTATUS(status), ==, 2);
        g_assert_cmpstr(log, ==, expected_log);
        g_assert_cmpint(test_bus_daemon_pid(b), ==, 0);
        g_assert_false(g_file_test(b->lock_dir, G_FILE_TEST_EXISTS));
        g_assert_false(g_file_test(b->runtime_dir, G_FILE_TEST_EXISTS));
}

/* A bad value: an error naming the file, the key and the value, also when
 * the command line sets the same setting (the file is wrong either way). */
static void test_config_bad_value(void) {
        static const char *const args[] = { "--idle-timeout=5", NULL };
        g_autofree char *path = NULL, *expected = NULL;
        g_autoptr(TestBus) b = bus_with_config("[Daemon]\nIdleTimeoutSec=soon\n", args, &path);

        expected = g_strdup_printf("%s: IdleTimeoutSec= needs seconds (e.g. 30 or 0.5), got 'soon'.\n", path);
        assert_refused(b, expected);
}

/* A file named by --config= must exist. */
static void test_config_missing(void) {
        g_autofree char *path = NULL, *expected = NULL;
        g_autoptr(TestBus) b = bus_with_config(NULL, NULL, &path);

        expected = g_strdup_printf("Failed to read configuration file %s: %s\n", path, g_strerror(ENOENT));
        assert_refused(b, expected);
}

/* The rules across settings see the file too. */
static void test_config_etcd_without_endpoints(void) {
        g_autoptr(TestBus) b = bus_with_config("[Daemon]\nBackend=etcd\n", NULL, NULL);

        assert_refused(b, "--backend=etcd (Backend=etcd) needs --etcd-endpoints= (EtcdEndpoints=).\n");
}

/* The TLS files of cluster mode: a certificate needs its key. Nothing is
 * read from etcd (the endpoint is never reached): the settings are
 * refused first. */
static void test_config_etcd_cert_without_key(void) {
        g_autofree char *path = NULL, *cert = NULL, *contents = NULL;
        g_autoptr(TestBus) b = bus_with_config(NULL, NULL, &path);

        /* The file goes where only the bus's DIR is known. */
        cert = g_build_filename(b->dir, "client.pem", NULL);
        write_file(cert, "");
        contents = g_strdup_printf("[Daemon]\n"
                                   "Backend=etcd\n"
                                   "EtcdEndpoints=https://127.0.0.1:1\n"
                                   "EtcdCertFile=%s\n", cert);
        write_file(path, contents);

        assert_refused(b, "--etcd-certfile= (EtcdCertFile=) needs its key, --etcd-keyfile= (EtcdKeyFile=).\n");
}

/* A CA file (here from the command line) that is not there: named, before
 * anything starts. */
static void test_config_etcd_missing_ca_file(void) {
        g_autofree char *missing = g_build_filename(g_get_tmp_dir(), "lockbus-no-such-dir", "ca.pem", NULL);
        g_autofree char *option = g_strconcat("--etcd-cafile=", missing, NULL), *expected = NULL;
        const char *const args[] = { option, NULL };
        g_autoptr(TestBus) b = bus_with_config("[Daemon]\n"
                                               "Backend=etcd\n"
                                               "EtcdEndpoints=https://127.0.0.1:1\n",
                                               args, NULL);

        expected = g_strdup_printf("--etcd-cafile= (EtcdCAFile=): cannot read %s: %s\n", missing, g_strerror(ENOENT));
        assert_refused(b, expected);
}

/* A file name in the file must be absolute, as on the command line. */
static void test_config_etcd_relative_file(void) {
        g_autofree char *path = NULL, *expected = NULL;
        g_autoptr(TestBus) b = bus_with_config("[Daemon]\nEtcdCAFile=ca.pem\n", NULL, &path);

        expected = g_strdup_printf("%s: EtcdCAFile= needs an absolute file name, got 'ca.pem'.\n", path);
        assert_refused(b, expected);
}

/* etcd's user needs its password file (and there is no option taking the
 * password itself). */
static void test_config_etcd_user_without_password(void) {
        static const char *const args[] = { "--etcd-user=root", NULL };
        g_autoptr(TestBus) b = bus_with_config("[Daemon]\n"
                                               "Backend=etcd\n"
                                               "EtcdEndpoints=http://127.0.0.1:1\n",
                                               args, NULL);

        assert_refused(b, "--etcd-user= (EtcdUser=) needs its password, "
                          "--etcd-password-file= (EtcdPasswordFile=).\n");
}

/* A password file that is not there: named, before anything starts. */
static void test_config_etcd_missing_password_file(void) {
        g_autofree char *missing = g_build_filename(g_get_tmp_dir(), "lockbus-no-such-dir", "password", NULL);
        g_autofree char *contents = NULL, *expected = NULL;
        g_autoptr(TestBus) b = NULL;

        contents = g_strdup_printf("[Daemon]\n"
                                   "Backend=etcd\n"
                                   "EtcdEndpoints=http://127.0.0.1:1\n"
                                   "EtcdUser=root\n"
                                   "EtcdPasswordFile=%s\n", missing);
        b = bus_with_config(contents, NULL, NULL);

        expected = g_strdup_printf("--etcd-password-file= (EtcdPasswordFile=): cannot read %s: %s\n", missing,
                                   g_strerror(ENOENT));
        assert_refused(b, expected);
}

/* A password file with nothing in it but the newline. */
static void test_config_etcd_empty_password_file(void) {
        g_autofree char *path = NULL, *password = NULL, *contents = NULL, *expected = NULL;
        g_autoptr(TestBus) b = bus_with_config(NULL, NULL, &path);

        password = g_build_filename(b->dir, "password", NULL);
        write_file(password, "\n");
        contents = g_strdup_printf("[Daemon]\n"
                                   "Backend=etcd\n"
                                   "EtcdEndpoints=http://127.0.0.1:1\n"
                                   "EtcdUser=root\n"
                                   "EtcdPasswordFile=%s\n", password);
        write_file(path, contents);

        expected = g_strdup_printf("--etcd-password-file= (EtcdPasswordFile=): %s must hold the password on "
                                   "one line of at most 4095 bytes, and it is empty.\n", password);
        assert_refused(b, expected);
}

/* Credentials are for cluster mode only. */
static void test_config_etcd_user_without_backend(void) {
        g_autofree char *path = NULL, *password = NULL, *contents = NULL;
        g_autoptr(TestBus) b = bus_with_config(NULL, NULL, &path);

        password = g_build_filename(b->dir, "password", NULL);
        write_file(password, "secret\n");
        contents = g_strdup_printf("[Daemon]\nEtcdUser=root\nEtcdPasswordFile=%s\n", password);
        write_file(path, contents);

        assert_refused(b, "--etcd-user= (EtcdUser=) is for --backend=etcd (Backend=etcd).\n");
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/bus/config/quota", test_config_quota);
        g_test_add_func("/bus/config/precedence", test_config_precedence);
        g_test_add_func("/bus/config/unknown-key", test_config_unknown_key);
        g_test_add_func("/bus/config/bad-value", test_config_bad_value);
        g_test_add_func("/bus/config/missing", test_config_missing);
        g_test_add_func("/bus/config/etcd-without-endpoints", test_config_etcd_without_endpoints);
        g_test_add_func("/bus/config/etcd-cert-without-key", test_config_etcd_cert_without_key);
        g_test_add_func("/bus/config/etcd-missing-ca-file", test_config_etcd_missing_ca_file);
        g_test_add_func("/bus/config/etcd-relative-file", test_config_etcd_relative_file);
        g_test_add_func("/bus/config/etcd-user-without-password", test_config_etcd_user_without_password);
        g_test_add_func("/bus/config/etcd-missing-password-file", test_config_etcd_missing_password_file);
        g_test_add_func("/bus/config/etcd-empty-password-file", test_config_etcd_empty_password_file);
        g_test_add_func("/bus/config/etcd-user-without-backend", test_config_etcd_user_without_backend);

        return g_test_run();
}
