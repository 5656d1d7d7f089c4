/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The regression driver of a fuzz target (fuzz.h): a g_test program that
 * runs every file of the directories (or files) named on its command line
 * through LLVMFuzzerTestOneInput(), one test case per file, named after
 * the last two components of its directory and its name, e.g.
 * /fuzz/corpus/hold-file/persistent for …/corpus/hold-file/persistent (a
 * file named on the command line: /fuzz/file/NAME). Files whose
 * name starts with '.' are left out. A broken property aborts: the case
 * (and the program) fails. */

#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "fuzz.h"
#include "macro.h"

/* The paths handed to the test cases, freed after g_test_run(). */
static GPtrArray *paths;

static void run_file(gconstpointer data) {
        const char *path = data;
        g_autoptr(GError) error = NULL;
        g_autofree char *contents = NULL;
        _cleanup_free_ uint8_t *input = NULL;
        gsize size;

        if (!g_file_get_contents(path, &contents, &size, &error))
                g_error("Failed to read %s: %s", path, error->message);

        /* An exact copy, so AddressSanitizer sees a read past its end
         * (g_file_get_contents() adds a NUL the fuzzer's input lacks);
         * never NULL, as libFuzzer's input is not. */
        input = malloc(MAX(size, 1U));
        g_assert_nonnull(input);
        memcpy(input, contents, size);
        g_assert_cmpint(LLVMFuzzerTestOneInput(input, size), ==, 0);
}

static void add_file(const char *test_path, const char *path) {
        char *p = g_strdup(path);

        g_ptr_array_add(paths, p);
        g_test_add_data_func(test_path, p, run_file);
}

static gint compare_strings(gconstpointer a, gconstpointer b) {
        return strcmp(*(const char *const *) a, *(const char *const *) b);
}

static void add_directory(const char *dir) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GDir) d = NULL;
        g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
        g_autofree char *base = g_path_get_basename(dir);
        g_autofree char *parent = g_path_get_dirname(dir);
        g_autofree char *parent_base = g_path_get_basename(parent);
        const char *name;

        d = g_dir_open(dir, 0, &error);
        if (!d)
                g_error("Failed to open %s: %s", dir, error->message);

        while ((name = g_dir_read_name(d)))
                if (name[0] != '.')
                        g_ptr_array_add(names, g_strdup(name));
        g_ptr_array_sort(names, compare_strings);

        for (guint i = 0; i < names->len; i++) {
                const char *n = names->pdata[i];
                g_autofree char *test_path = g_strdup_printf("/fuzz/%s/%s/%s", parent_base, base, n);
                g_autofree char *path = g_build_filename(dir, n, NULL);

                add_file(test_path, path);
        }
}

int main(int argc, char *argv[]) {
        int r;

        g_test_init(&argc, &argv, NULL);
        /* As for the fuzzers (G_DEBUG=fatal-criticals): a critical aborts,
         * a warning is logged. GLib 2.74 itself warns on some malformed key
         * files ("GError set over the top of a previous GError", see
         * regressions/README.md), and g_test_init() made warnings fatal. */
        g_log_set_always_fatal(G_LOG_FATAL_MASK | G_LOG_LEVEL_CRITICAL);
        paths = g_ptr_array_new_with_free_func(g_free);

        if (argc < 2)
                g_error("Usage: %s DIRECTORY|FILE…", argv[0]);

        for (int i = 1; i < argc; i++) {
                if (g_file_test(argv[i], G_FILE_TEST_IS_DIR))
                        add_directory(argv[i]);
                else {
                        g_autofree char *base = g_path_get_basename(argv[i]);
                        g_autofree char *test_path = g_strdup_printf("/fuzz/file/%s", base);

                        add_file(test_path, argv[i]);
                }
        }

        r = g_test_run();
        g_ptr_array_unref(paths);
        return r;
}
