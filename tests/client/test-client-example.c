/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The example program of lockbus(3), built two ways and run against a real
 * lockbusd on a private system-like bus:
 *   - as meson builds it in the build tree (LOCKBUS_EXAMPLE);
 *   - the way a user builds a program: `meson install --destdir` into a
 *     temp tree, then `cc prog.c $(pkg-config --cflags --libs lockbus)`
 *     with PKG_CONFIG_PATH/PKG_CONFIG_SYSROOT_DIR pointing into it, and
 *     run with LD_LIBRARY_PATH pointing into it. */

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client-test.h"

typedef struct RunResult {
        int status;
        char *out;
        char *err;
} RunResult;

static void run_result_clear(RunResult *r) {
        g_clear_pointer(&r->out, g_free);
        g_clear_pointer(&r->err, g_free);
}

/* Runs argv with `env` (NULL-terminated "NAME=VALUE" pairs) added to ours. */
static void run(const char *const *argv, const char *const *env, RunResult *ret) {
        g_autoptr(GError) error = NULL;
        g_auto(GStrv) envp = g_get_environ();

        for (size_t i = 0; env && env[i]; i++) {
                g_auto(GStrv) kv = g_strsplit(env[i], "=", 2);

                envp = g_environ_setenv(envp, kv[0], kv[1], true);
        }

        *ret = (RunResult) {};
        if (!g_spawn_sync(NULL, (char **) argv, envp, G_SPAWN_DEFAULT, NULL, NULL, &ret->out, &ret->err,
                          &ret->status, &error))
                g_error("Failed to run %s: %s", argv[0], error->message);
}

static void assert_exit_status(const RunResult *r, int status, const char *what) {
        if (!WIFEXITED(r->status) || WEXITSTATUS(r->status) != status)
                g_error("%s: expected exit status %d, got wait status 0x%x\nstdout:\n%s\nstderr:\n%s", what, status,
                        (unsigned) r->status, r->out, r->err);
}

/* The example's output for `resource`, as lockbus(3) and the README show it. */
static void assert_example_output(const RunResult *r, const char *resource) {
        g_autoptr(GRegex) regex = NULL;
        g_autoptr(GMatchInfo) match = NULL;
        g_autofree char *pattern = NULL, *escaped = g_regex_escape_string(resource, -1);

        assert_exit_status(r, 0, "lockbus-example");
        pattern = g_strdup_printf(
                "^Locked '%1$s', fencing token [1-9][0-9]*\\.\n"
                "Held exclusive by uid %2$u \\(pid ([0-9]+), lockbus-example\\), scope connection: lockbus example\n"
                "Locking again fails with EBUSY: Resource '%1$s' already locked by uid %2$u \\(pid \\1, lockbus-example\\)\n"
                "Unlocked '%1$s'\\.\n$",
                escaped, (unsigned) getuid());
        regex = g_regex_new(pattern, 0, 0, NULL);
        g_assert_nonnull(regex);
        if (!g_regex_match(regex, r->out, 0, &match))
                g_error("Unexpected output of lockbus-example:\n%s\nstderr:\n%s", r->out, r->err);
        g_assert_cmpstr(r->err, ==, "");
}

static void case_example_meson(TestFixture *f, gconstpointer data) {
        g_autofree char *address = g_strconcat("DBUS_SYSTEM_BUS_ADDRESS=", f->bus->address, NULL);
        const char *const env[] = { address, NULL };
        const char *example = g_getenv("LOCKBUS_EXAMPLE");
        RunResult r;

        g_assert_nonnull(example);

        run((const char *const[]) { example, NULL }, env, &r);
        assert_example_output(&r, "example");
        run_result_clear(&r);

        run((const char *const[]) { example, "my db/..", NULL }, env, &r);
        assert_example_output(&r, "my db/..");
        run_result_clear(&r);

        /* A failure shows the service's message. */
        run((const char *const[]) { example, "", NULL }, env, &r);
        assert_exit_status(&r, 1, "lockbus-example ''");
        g_assert_cmpstr(r.out, ==, "");
        g_assert_true(g_str_has_prefix(r.err, "Lock failed: "));
        g_assert_nonnull(strstr(r.err, "esource"));
        run_result_clear(&r);

        /* Nothing is left behind. */
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, 0);
}

static void case_example_pkg_config(TestFixture *f, gconstpointer data) {
        const char *meson = g_getenv("MESON"), *build_root = g_getenv("MESON_BUILD_ROOT"),
                *source = g_getenv("LOCKBUS_EXAMPLE_SOURCE"), *cc = g_getenv("CC"),
                *libdir = g_getenv("LOCKBUS_LIBDIR"), *includedir = g_getenv("LOCKBUS_INCLUDEDIR");
        g_autofree char *destdir = NULL, *dest_libdir = NULL, *pcdir = NULL, *header = NULL, *so = NULL,
                *prog = NULL, *e_pcpath = NULL, *e_sysroot = NULL, *e_ldpath = NULL, *e_address = NULL,
                *e_src = NULL, *e_prog = NULL, *e_cc = NULL, *expected_lib = NULL;
        RunResult r;

        if (!meson || !build_root || !source || !cc || !libdir || !includedir) {
                g_test_skip("meson, the build root, the compiler or the install paths are not known");
                return;
        }
        if (g_getenv("LOCKBUS_SANITIZE")) {
                g_test_skip("a program built with plain cc cannot load the sanitized library of this build");
                return;
        }

        /* Inside the bus's temp dir, which is removed also when we fail. */
        destdir = g_build_filename(f->bus->dir, "destdir", NULL);
        run((const char *const[]) { meson, "install", "-C", build_root, "--destdir", destdir, "--no-rebuild",
                                    "--quiet", NULL }, NULL, &r);
        assert_exit_status(&r, 0, "meson install");
        run_result_clear(&r);

        dest_libdir = g_build_filename(destdir, libdir, NULL);
        pcdir = g_build_filename(dest_libdir, "pkgconfig", NULL);
        header = g_build_filename(destdir, includedir, "lockbus.h", NULL);
        so = g_build_filename(dest_libdir, "liblockbus.so.1", NULL);
        g_assert_true(g_file_test(header, G_FILE_TEST_IS_REGULAR));
        g_assert_true(g_file_test(so, G_FILE_TEST_EXISTS));

        /* Exactly the command of lockbus(3) and the README. */
        prog = g_build_filename(f->bus->dir, "lockbus-example", NULL);
        e_pcpath = g_strconcat("PKG_CONFIG_PATH=", pcdir, NULL);
        e_sysroot = g_strconcat("PKG_CONFIG_SYSROOT_DIR=", destdir, NULL);
        e_src = g_strconcat("SRC=", source, NULL);
        e_prog = g_strconcat("PROG=", prog, NULL);
        e_cc = g_strconcat("CC=", cc, NULL);
        run((const char *const[]) { "/bin/sh", "-c", "$CC \"$SRC\" -o \"$PROG\" $(pkg-config --cflags --libs lockbus)",
                                    NULL },
            (const char *const[]) { e_pcpath, e_sysroot, e_src, e_prog, e_cc, NULL }, &r);
        assert_exit_status(&r, 0, "cc prog.c $(pkg-config --cflags --libs lockbus)");
        run_result_clear(&r);

        /* It loads the installed library, not the build tree's. */
        e_ldpath = g_strconcat("LD_LIBRARY_PATH=", dest_libdir, NULL);
        run((const char *const[]) { prog, NULL }, (const char *const[]) { e_ldpath, "LD_TRACE_LOADED_OBJECTS=1", NULL },
            &r);
        assert_exit_status(&r, 0, "ld.so --list");
        expected_lib = g_strdup_printf("liblockbus.so.1 => %s ", so);
        if (!strstr(r.out, expected_lib))
                g_error("The example does not load %s:\n%s", so, r.out);
        run_result_clear(&r);

        e_address = g_strconcat("DBUS_SYSTEM_BUS_ADDRESS=", f->bus->address, NULL);
        run((const char *const[]) { prog, NULL }, (const char *const[]) { e_ldpath, e_address, NULL }, &r);
        assert_example_output(&r, "example");
        run_result_clear(&r);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        test_add("/example/meson", case_example_meson);
        test_add("/example/pkg-config", case_example_pkg_config);

        return g_test_run();
}
