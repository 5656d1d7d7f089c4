/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Fuzz target: the hold-file parser, store_parse_hold(). The input is the
 * contents of a hold file, parsed as if found in the lock directory and as
 * if found in the runtime directory. Checked on every input:
 *   - it is accepted in at most one of them (persistent holds in the lock
 *     directory, the others in the runtime directory), and a refusal is
 *     -EBADMSG with a reason;
 *   - an accepted hold has a valid resource name, a known mode and scope,
 *     a token > 0 and no NULL string, and no value of its file is one that
 *     GLib reads only with an error (an invalid escape);
 *   - it is accepted again under its own file name, "<stem>@<token>", and
 *     refused under another;
 *   - it round-trips through the real store: store_save_hold() into a
 *     scratch store, then store_load_holds() gives back exactly one hold,
 *     equal to it, and store_remove_hold() removes it again;
 *   - so does the same hold with the input's own bytes as comm and
 *     description (check_writer()): the writer escapes any string.
 * The scratch store lives in $TMPDIR (run-fuzzers.sh points it at its
 * work directory, in /dev/shm where it can; meson test at the build
 * directory) and is removed at exit. */

#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>

#include "fuzz.h"
#include "hold.h"
#include "macro.h"
#include "resource-name.h"
#include "store.h"

static char *scratch_dir;
static Store *scratch_store;

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

static void scratch_free(void) {
        scratch_store = store_free(scratch_store);
        if (scratch_dir)
                (void) nftw(scratch_dir, remove_entry, 16, FTW_PHYS | FTW_DEPTH);
        g_clear_pointer(&scratch_dir, g_free);
}

static Store *scratch_get(void) {
        g_autofree char *lib = NULL, *run = NULL;
        g_autoptr(GError) error = NULL;

        if (scratch_store)
                return scratch_store;

        scratch_dir = g_dir_make_tmp("lockbus-fuzz-hold-XXXXXX", &error);
        if (!scratch_dir) {
                fprintf(stderr, "Failed to make a scratch directory: %s\n", error->message);
                abort();
        }
        lib = g_build_filename(scratch_dir, "lib", NULL);
        run = g_build_filename(scratch_dir, "run", NULL);
        fuzz_assert(store_open(lib, run, &scratch_store) == 0);
        atexit(scratch_free);

        return scratch_store;
}

/* The keys of a hold file (store.h). */
static const char *const hold_keys[] = {
        "Resource", "Mode", "Scope", "Token", "UID", "PID", "Comm", "Sender", "BusID",
        "Since", "Expires", "TTL", "Description",
};

static void check_values_well_formed(const uint8_t *data, size_t size) {
        g_autoptr(GKeyFile) k = g_key_file_new();

        fuzz_assert(g_key_file_load_from_data(k, (const char *) data, size, G_KEY_FILE_NONE, NULL));
        for (size_t i = 0; i < ELEMENTSOF(hold_keys); i++) {
                g_autoptr(GError) error = NULL;
                g_autofree char *v = NULL;

                if (!g_key_file_has_key(k, "Hold", hold_keys[i], NULL))
                        continue;
                v = g_key_file_get_string(k, "Hold", hold_keys[i], &error);
                fuzz_assert(v && !error);
        }
}

static bool hold_equal(const Hold *a, const Hold *b) {
        return streq(a->resource, b->resource) &&
                a->mode == b->mode &&
                a->scope == b->scope &&
                a->token == b->token &&
                a->uid == b->uid &&
                a->pid == b->pid &&
                streq(a->comm, b->comm) &&
                streq(a->sender, b->sender) &&
                streq(a->bus_id, b->bus_id) &&
                a->since_usec == b->since_usec &&
                a->expires_usec == b->expires_usec &&
                a->ttl_usec == b->ttl_usec &&
                streq(a->description, b->description);
}

static void check_file_name(const uint8_t *data, size_t size, bool in_runtime_directory, const Hold *h) {
        _cleanup_(hold_freep) Hold *again = NULL, *wrong = NULL;
        _cleanup_free_ char *stem = NULL;
        g_autofree char *name = NULL, *other = NULL, *reason = NULL;

        /* The documented name of a hold file (store.h). */
        fuzz_assert(resource_name_to_file_stem(h->resource, &stem) == 0);
        name = g_strdup_printf("%s@%" PRIu64, stem, h->token);

        fuzz_assert(store_parse_hold((const char *) data, size, name, in_runtime_directory, &again, NULL) == 0);
        fuzz_assert(hold_equal(h, again));

        /* Any other name, e.g. that of the next token, is refused. */
        other = g_strdup_printf("%s@%" PRIu64 "0", stem, h->token);
        fuzz_assert(store_parse_hold((const char *) data, size, other, in_runtime_directory, &wrong, &reason) == -EBADMSG);
        fuzz_assert(!wrong);
        fuzz_assert(reason && reason[0]);
}

/* Saves `saved` into the scratch store, loads it back and compares with
 * `expected`. */
static void check_round_trip(const Hold *saved, const Hold *expected) {
        g_autoptr(GPtrArray) holds = NULL;
        Store *s = scratch_get();

        fuzz_assert(store_save_hold(s, saved) == 0);
        fuzz_assert(store_load_holds(s, &holds) == 0);
        fuzz_assert(holds->len == 1);
        fuzz_assert(hold_equal(expected, holds->pdata[0]));
        fuzz_assert(store_remove_hold(s, saved) == 0);
}

/* The writer must escape any string, not only what the parser can produce:
 * the same hold with up to 300 bytes of the input as comm (any bytes: the
 * store repairs comm to UTF-8) and, made UTF-8, as description round-trips
 * too. They start at the offset the last byte picks, so the fuzzer chooses
 * the first character as well. */
static void check_writer(const uint8_t *data, size_t size, bool in_runtime_directory) {
        _cleanup_(hold_freep) Hold *saved = NULL, *expected = NULL;
        size_t offset = data[size - 1] % size, n = MIN(size - offset, 300U);
        const char *p = (const char *) data + offset;

        fuzz_assert(store_parse_hold((const char *) data, size, NULL, in_runtime_directory, &saved, NULL) == 0);
        fuzz_assert(store_parse_hold((const char *) data, size, NULL, in_runtime_directory, &expected, NULL) == 0);

        g_free(saved->comm);
        saved->comm = g_strndup(p, n);
        g_free(expected->comm);
        expected->comm = g_utf8_make_valid(saved->comm, -1);
        g_free(saved->description);
        saved->description = g_utf8_make_valid(p, (gssize) n);
        g_free(expected->description);
        expected->description = g_strdup(saved->description);

        /* Known, reported: a value that starts with a form feed cannot be
         * written in a key file (GKeyFile drops leading whitespace and has
         * no escape for '\f'), so it comes back without it. */
        if (expected->comm[0] == '\f' || expected->description[0] == '\f')
                return;

        check_round_trip(saved, expected);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        unsigned accepted = 0;

        for (int i = 0; i < 2; i++) {
                bool in_runtime_directory = i == 1;
                _cleanup_(hold_freep) Hold *h = NULL;
                g_autofree char *reason = NULL;
                int r;

                r = store_parse_hold((const char *) data, size, NULL, in_runtime_directory, &h, &reason);
                if (r < 0) {
                        fuzz_assert(r == -EBADMSG);
                        fuzz_assert(!h);
                        fuzz_assert(reason && reason[0]);
                        continue;
                }
                fuzz_assert(r == 0);
                fuzz_assert(h);
                accepted++;

                fuzz_assert(resource_name_is_valid(h->resource));
                fuzz_assert(lock_mode_to_string(h->mode));
                fuzz_assert(hold_scope_to_string(h->scope));
                fuzz_assert(hold_is_persistent(h) == !in_runtime_directory);
                fuzz_assert(h->token > 0);
                fuzz_assert(h->comm && h->sender && h->bus_id && h->description);
                check_values_well_formed(data, size);

                check_file_name(data, size, in_runtime_directory, h);
                check_round_trip(h, h);
                check_writer(data, size, in_runtime_directory);
        }
        fuzz_assert(accepted <= 1);

        return 0;
}
