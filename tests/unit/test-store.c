/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The store against a real directory: round trips, file names that cannot
 * escape, corrupt and hostile entries, token reservations, and full or
 * read-only file systems. */

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "lockbus-names.h"
#include "resource-name.h"
#include "store.h"

#define BUS_ID "0123456789abcdef0123456789abcdef"

/* Every test works below this directory. */
static char *test_root;

typedef struct Fixture {
        char *dir;              /* this test's own directory */
        char *lock_dir;         /* dir/state/lockbus: parents do not exist yet */
        char *runtime_dir;      /* dir/run/lockbus */
        char *mount_point;      /* a tmpfs the test mounted, or NULL */
        Store *store;
} Fixture;

/* ---- removing directories, also when a test aborts --------------------- */

static int make_writable(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        if (type == FTW_D)
                (void) chmod(path, 0700);
        return 0;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

static void rm_rf(const char *path) {
        /* A test may have made directories read-only (as non-root). */
        (void) nftw(path, make_writable, 16, FTW_PHYS);
        (void) nftw(path, remove_entry, 16, FTW_PHYS | FTW_DEPTH);
}

/* A failed g_assert aborts the process: no teardown runs then. A child that
 * waits for this process to end, whichever way, removes the test root. */
static void start_reaper(const char *root) {
        int pipe_fds[2];
        pid_t pid;

        if (pipe(pipe_fds) < 0)
                g_error("pipe: %s", g_strerror(errno));

        pid = fork();
        if (pid < 0)
                g_error("fork: %s", g_strerror(errno));
        if (pid == 0) {
                int null_fd;
                char c;

                close(pipe_fds[1]);
                /* Never write into the TAP stream. */
                null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
                if (null_fd >= 0) {
                        dup2(null_fd, STDOUT_FILENO);
                        dup2(null_fd, STDERR_FILENO);
                }

                /* EOF: the test process is gone. */
                while (read(pipe_fds[0], &c, 1) < 0 && errno == EINTR)
                        ;
                rm_rf(root);
                _exit(EXIT_SUCCESS);
        }

        /* The write end stays open for as long as this process lives. */
        close(pipe_fds[0]);
}

static void fixture_setup(Fixture *f, gconstpointer data) {
        f->dir = g_build_filename(test_root, "XXXXXX", NULL);
        g_assert_nonnull(g_mkdtemp(f->dir));
        f->lock_dir = g_build_filename(f->dir, "state", "lockbus", NULL);
        f->runtime_dir = g_build_filename(f->dir, "run", "lockbus", NULL);
}

static void fixture_teardown(Fixture *f, gconstpointer data) {
        f->store = store_free(f->store);
        if (f->mount_point)
                (void) umount2(f->mount_point, MNT_DETACH);
        rm_rf(f->dir);

        g_free(f->dir);
        g_free(f->lock_dir);
        g_free(f->runtime_dir);
        g_free(f->mount_point);
}

static void fixture_open(Fixture *f) {
        g_assert_cmpint(store_open(f->lock_dir, f->runtime_dir, &f->store), ==, 0);
        g_assert_nonnull(f->store);
}

/* ---- helpers ---------------------------------------------------------- */

static Hold *make_hold(const char *resource, LockMode mode, HoldScope scope, uint64_t token) {
        Hold *h = hold_new();

        h->resource = g_strdup(resource);
        h->mode = mode;
        h->scope = scope;
        h->token = token;
        h->uid = (uid_t) (1000 + token);
        h->pid = (pid_t) (4000 + token);
        h->comm = g_strdup("psql");
        h->sender = g_strdup_printf(":1.%" PRIu64, token);
        h->bus_id = g_strdup(BUS_ID);
        h->since_usec = 1763812345000000ULL + token;
        h->expires_usec = token % 2 ? 0 : 1763812399000000ULL + token;
        h->ttl_usec = token % 2 ? 0 : 54000000ULL;
        g_free(h->description);
        h->description = g_strdup_printf("nightly backup #%" PRIu64, token);
        return h;
}

static void assert_holds_equal(const Hold *a, const Hold *b) {
        g_assert_cmpstr(a->resource, ==, b->resource);
        g_assert_cmpint(a->mode, ==, b->mode);
        g_assert_cmpint(a->scope, ==, b->scope);
        g_assert_cmpuint(a->token, ==, b->token);
        g_assert_cmpuint(a->uid, ==, b->uid);
        g_assert_cmpint(a->pid, ==, b->pid);
        g_assert_cmpstr(strempty(a->comm), ==, strempty(b->comm));
        g_assert_cmpstr(strempty(a->sender), ==, strempty(b->sender));
        g_assert_cmpstr(strempty(a->bus_id), ==, strempty(b->bus_id));
        g_assert_cmpuint(a->since_usec, ==, b->since_usec);
        g_assert_cmpuint(a->expires_usec, ==, b->expires_usec);
        g_assert_cmpuint(a->ttl_usec, ==, b->ttl_usec);
        g_assert_cmpstr(a->description, ==, b->description);
}

static char *expected_file_name(const Hold *h) {
        _cleanup_free_ char *stem = NULL;

        g_assert_cmpint(resource_name_to_file_stem(h->resource, &stem), ==, 0);
        return g_strdup_printf("%s@%" PRIu64, stem, h->token);
}

static gint compare_strings(gconstpointer a, gconstpointer b) {
        return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/* Every entry of a directory, hidden ones included, sorted. */
static GPtrArray *list_directory(const char *path) {
        GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(GError) error = NULL;
        g_autoptr(GDir) d = g_dir_open(path, 0, &error);
        const char *name;

        g_assert_no_error(error);
        while ((name = g_dir_read_name(d)))
                g_ptr_array_add(names, g_strdup(name));
        g_ptr_array_sort(names, compare_strings);
        return names;
}

static bool directory_has(const char *path, const char *name) {
        g_autoptr(GPtrArray) names = list_directory(path);

        for (guint i = 0; i < names->len; i++)
                if (streq(names->pdata[i], name))
                        return true;
        return false;
}

static void assert_directory_is(const char *path, GPtrArray *expected) {
        g_autoptr(GPtrArray) names = list_directory(path);

        g_ptr_array_sort(expected, compare_strings);
        g_assert_cmpuint(names->len, ==, expected->len);
        for (guint i = 0; i < names->len; i++)
                g_assert_cmpstr(names->pdata[i], ==, expected->pdata[i]);
}

static void write_file(const char *dir, const char *name, const char *contents, gssize size) {
        g_autofree char *path = g_build_filename(dir, name, NULL);
        g_autoptr(GError) error = NULL;

        g_file_set_contents(path, contents, size, &error);
        g_assert_no_error(error);
}

static char *read_file(const char *dir, const char *name) {
        g_autofree char *path = g_build_filename(dir, name, NULL);
        g_autoptr(GError) error = NULL;
        char *contents = NULL;

        g_file_get_contents(path, &contents, NULL, &error);
        g_assert_no_error(error);
        return contents;
}

static GPtrArray *load(Fixture *f) {
        GPtrArray *holds = NULL;

        g_assert_cmpint(store_load_holds(f->store, &holds), ==, 0);
        g_assert_nonnull(holds);
        for (guint i = 1; i < holds->len; i++)
                g_assert_cmpuint(((Hold *) holds->pdata[i - 1])->token, <, ((Hold *) holds->pdata[i])->token);
        return holds;
}

/* Files may only appear directly inside the two store directories (or in
 * a .quarantine below them). */
static const Fixture *walk_fixture;
static bool walk_failed;

static int check_entry_inside(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        const Fixture *f = walk_fixture;
        g_autofree char *parent = g_path_get_dirname(path);
        g_autofree char *grandparent = g_path_get_dirname(parent);
        g_autofree char *base = g_path_get_basename(parent);

        if (type == FTW_D || type == FTW_DP)
                return 0;
        if (streq(parent, f->lock_dir) || streq(parent, f->runtime_dir))
                return 0;
        if (streq(base, ".quarantine") && (streq(grandparent, f->lock_dir) || streq(grandparent, f->runtime_dir)))
                return 0;

        g_test_message("unexpected file outside the store: %s", path);
        walk_failed = true;
        return 0;
}

static void assert_nothing_outside_store(const Fixture *f) {
        walk_fixture = f;
        walk_failed = false;
        g_assert_cmpint(nftw(f->dir, check_entry_inside, 16, FTW_PHYS), ==, 0);
        g_assert_false(walk_failed);
}

/* ---- mounting a small tmpfs (root only) -------------------------------- */

/* Returns false after g_test_skip() when mounting is not possible. The
 * mount happens in a private mount namespace: it disappears with this
 * process even if the test aborts. */
static bool mount_tmpfs(Fixture *f, const char *options) {
        static int namespace_state = 0; /* 0: not tried, 1: ready, -1: failed */
        g_autofree char *mount_point = NULL;

        if (geteuid() != 0) {
                g_test_skip("needs root to mount a small tmpfs");
                return false;
        }

        if (namespace_state == 0) {
                namespace_state = -1;
                if (unshare(CLONE_NEWNS) < 0)
                        g_test_message("unshare(CLONE_NEWNS): %s", g_strerror(errno));
                else if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
                        g_test_message("making / private: %s", g_strerror(errno));
                else
                        namespace_state = 1;
        }
        if (namespace_state < 0) {
                g_test_skip("cannot create a private mount namespace");
                return false;
        }

        mount_point = g_build_filename(f->dir, "mnt", NULL);
        g_assert_cmpint(g_mkdir(mount_point, 0755), ==, 0);
        if (mount("tmpfs", mount_point, "tmpfs", MS_NOSUID | MS_NODEV, options) < 0) {
                g_autofree char *why = g_strdup_printf("cannot mount tmpfs: %s", g_strerror(errno));
                g_test_skip(why);
                return false;
        }
        f->mount_point = TAKE_PTR(mount_point);

        g_free(f->lock_dir);
        g_free(f->runtime_dir);
        f->lock_dir = g_build_filename(f->mount_point, "lock", NULL);
        f->runtime_dir = g_build_filename(f->mount_point, "run", NULL);
        return true;
}

/* ---- names ------------------------------------------------------------ */

static GPtrArray *tricky_names(void) {
        static const char *const names[] = {
                "db", "../x", "/etc/passwd", "..", ".", ".hidden", "a/b/../../c",
                "./.", "with space", " leading and trailing ", "ümlaut-ロック",
                "100%", "%2F", "user@host", "@", "~", "a~b", "tokens",
                ".quarantine", ".tmp-0000000000000000", "name@17", "\\",
        };
        GPtrArray *a = g_ptr_array_new_with_free_func(g_free);
        char *s;

        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                g_ptr_array_add(a, g_strdup(names[i]));

        /* 255 bytes, and two names that differ only after byte 200. */
        g_ptr_array_add(a, g_strnfill(255, 'a'));
        s = g_strnfill(255, 'x');
        s[230] = 'a';
        g_ptr_array_add(a, s);
        s = g_strnfill(255, 'x');
        s[230] = 'b';
        g_ptr_array_add(a, s);
        g_ptr_array_add(a, g_strnfill(255 / 3 * 3, '/'));
        return a;
}

/* ---- tests ------------------------------------------------------------ */

static void test_open(Fixture *f, gconstpointer data) {
        _cleanup_close_ int fd = -1;
        struct stat st;

        /* Missing parents are created too. */
        fixture_open(f);
        g_assert_cmpstr(store_lock_directory(f->store), ==, f->lock_dir);
        g_assert_cmpstr(store_runtime_directory(f->store), ==, f->runtime_dir);
        g_assert_cmpint(stat(f->lock_dir, &st), ==, 0);
        g_assert_true(S_ISDIR(st.st_mode));
        g_assert_cmpint(st.st_mode & 07777, ==, 0755);
        g_assert_cmpint(stat(f->runtime_dir, &st), ==, 0);
        g_assert_true(S_ISDIR(st.st_mode));
        g_assert_cmpint(st.st_mode & 07777, ==, 0755);

        /* The lock directory is locked: another daemon would wait. */
        fd = open(f->lock_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        g_assert_cmpint(fd, >=, 0);
        g_assert_cmpint(flock(fd, LOCK_EX | LOCK_NB), ==, -1);
        g_assert_cmpint(errno, ==, EWOULDBLOCK);

        /* Freeing the store releases it; opening existing directories works. */
        f->store = store_free(f->store);
        g_assert_cmpint(flock(fd, LOCK_EX | LOCK_NB), ==, 0);
        g_assert_cmpint(flock(fd, LOCK_UN), ==, 0);
        fixture_open(f);
}

static void test_open_refuses(Fixture *f, gconstpointer data) {
        g_autofree char *real = g_build_filename(f->dir, "real", NULL);
        g_autofree char *link = g_build_filename(f->dir, "link", NULL);
        g_autofree char *file = g_build_filename(f->dir, "file", NULL);
        Store *s = NULL;

        g_assert_cmpint(g_mkdir(real, 0755), ==, 0);
        g_assert_cmpint(symlink(real, link), ==, 0);
        write_file(f->dir, "file", "", 0);

        /* One directory for both would mix persistent and runtime holds. */
        g_assert_cmpint(store_open(real, real, &s), ==, -EINVAL);
        /* The directory itself is never a symlink, nor a file. */
        g_assert_cmpint(store_open(link, f->runtime_dir, &s), <, 0);
        g_assert_cmpint(store_open(f->lock_dir, link, &s), <, 0);
        g_assert_cmpint(store_open(file, f->runtime_dir, &s), <, 0);
        g_assert_cmpint(store_open("", f->runtime_dir, &s), ==, -EINVAL);
        g_assert_null(s);
}

static void test_save_load(Fixture *f, gconstpointer data) {
        g_autoptr(GPtrArray) names = tricky_names();
        g_autoptr(GPtrArray) saved = g_ptr_array_new_with_free_func(hold_destroy);
        g_autoptr(GPtrArray) lock_files = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(GPtrArray) runtime_files = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(GPtrArray) loaded = NULL;
        uint64_t token = 0;

        fixture_open(f);

        /* Every name in every scope; tokens grow in save order. */
        for (guint i = 0; i < names->len; i++)
                for (HoldScope scope = 0; scope < _HOLD_SCOPE_MAX; scope++) {
                        Hold *h = make_hold(names->pdata[i], (i + scope) % 2 ? LOCK_MODE_SHARED : LOCK_MODE_EXCLUSIVE,
                                            scope, ++token);

                        g_assert_cmpint(store_save_hold(f->store, h), ==, 0);
                        g_ptr_array_add(hold_is_persistent(h) ? lock_files : runtime_files, expected_file_name(h));
                        g_ptr_array_add(saved, h);
                }

        /* Exactly one file per hold, named "<stem>@<token>", in its own
         * directory; no temp file left, nothing anywhere else. */
        assert_directory_is(f->lock_dir, lock_files);
        assert_directory_is(f->runtime_dir, runtime_files);
        assert_nothing_outside_store(f);

        loaded = load(f);
        g_assert_cmpuint(loaded->len, ==, saved->len);
        for (guint i = 0; i < saved->len; i++)
                assert_holds_equal(loaded->pdata[i], saved->pdata[i]);

        /* Loading does not move anything. */
        assert_directory_is(f->lock_dir, lock_files);
        assert_directory_is(f->runtime_dir, runtime_files);
}

static void test_save_load_fields(Fixture *f, gconstpointer data) {
        static const char *const descriptions[] = {
                "",
                "two\nlines",
                "tab\there, cr\rthere",
                "back\\slash \\n not a newline",
                "  leading and trailing spaces  ",
                "# not a comment",
                "[Hold]",
                "Key=Value",
                "; semicolon",
                "ümlaut ロック 🔒",
                "\x01 raw control \x7f",
        };
        g_autoptr(GPtrArray) loaded = NULL;
        _cleanup_(hold_freep) Hold *max = NULL, *bare = NULL, *bad_comm = NULL;
        uint64_t token = 1;

        fixture_open(f);

        for (size_t i = 0; i < ELEMENTSOF(descriptions); i++) {
                _cleanup_(hold_freep) Hold *h = make_hold("desc", LOCK_MODE_SHARED, HOLD_SCOPE_PERSISTENT, token++);
                g_autoptr(GPtrArray) holds = NULL;

                g_free(h->description);
                h->description = g_strdup(descriptions[i]);
                g_assert_cmpint(store_save_hold(f->store, h), ==, 0);

                holds = load(f);
                g_assert_cmpuint(holds->len, ==, 1);
                assert_holds_equal(holds->pdata[0], h);
                g_assert_cmpint(store_remove_hold(f->store, h), ==, 0);
        }

        /* The largest values of every field. */
        max = make_hold("max", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_CONNECTION, UINT64_MAX);
        max->uid = (uid_t) UINT32_MAX - 1;
        max->pid = INT32_MAX;
        max->since_usec = max->expires_usec = max->ttl_usec = UINT64_MAX;
        g_free(max->description);
        max->description = g_strnfill(LOCKBUS_DESCRIPTION_MAX, 'd');
        g_assert_cmpint(store_save_hold(f->store, max), ==, 0);

        /* A persistent hold needs neither sender nor bus ID; uid 0 is root. */
        bare = make_hold("bare", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_PERSISTENT, 7);
        bare->uid = 0;
        bare->pid = 0;
        g_clear_pointer(&bare->comm, g_free);
        g_clear_pointer(&bare->sender, g_free);
        g_clear_pointer(&bare->bus_id, g_free);
        g_assert_cmpint(store_save_hold(f->store, bare), ==, 0);

        /* comm is whatever the kernel reports; it is stored repaired. */
        bad_comm = make_hold("comm", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_FD, 8);
        g_free(bad_comm->comm);
        bad_comm->comm = g_strdup("ab\xff");
        g_assert_cmpint(store_save_hold(f->store, bad_comm), ==, 0);

        loaded = load(f);
        g_assert_cmpuint(loaded->len, ==, 3);
        assert_holds_equal(loaded->pdata[0], bare);
        g_assert_cmpstr(((Hold *) loaded->pdata[1])->resource, ==, "comm");
        g_assert_true(g_str_has_prefix(((Hold *) loaded->pdata[1])->comm, "ab"));
        g_assert_true(g_utf8_validate(((Hold *) loaded->pdata[1])->comm, -1, NULL));
        assert_holds_equal(loaded->pdata[2], max);
        /* Loaded strings are never NULL. */
        g_assert_cmpstr(((Hold *) loaded->pdata[0])->sender, ==, "");
        g_assert_cmpstr(((Hold *) loaded->pdata[0])->bus_id, ==, "");
}

static void test_save_replace(Fixture *f, gconstpointer data) {
        _cleanup_(hold_freep) Hold *h = make_hold("db", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_PERSISTENT, 5);
        g_autoptr(GPtrArray) files = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(GPtrArray) loaded = NULL;

        fixture_open(f);
        g_assert_cmpint(store_save_hold(f->store, h), ==, 0);

        /* A refresh rewrites the same file. */
        h->expires_usec = 1763899999000000ULL;
        g_assert_cmpint(store_save_hold(f->store, h), ==, 0);

        g_ptr_array_add(files, expected_file_name(h));
        assert_directory_is(f->lock_dir, files);

        loaded = load(f);
        g_assert_cmpuint(loaded->len, ==, 1);
        assert_holds_equal(loaded->pdata[0], h);
}

static void test_save_invalid(Fixture *f, gconstpointer data) {
        g_autoptr(GPtrArray) none = g_ptr_array_new();
        Hold *h;

        fixture_open(f);

#define ASSERT_REFUSED(modify)                                                          \
        do {                                                                            \
                h = make_hold("db", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_CONNECTION, 3);     \
                modify;                                                                 \
                g_assert_cmpint(store_save_hold(f->store, h), ==, -EINVAL);             \
                hold_free(h);                                                           \
        } while (false)

        ASSERT_REFUSED(g_clear_pointer(&h->resource, g_free));
        ASSERT_REFUSED(h->resource[0] = '\0');
        ASSERT_REFUSED(h->resource[1] = '\n');
        ASSERT_REFUSED(g_free(h->resource); h->resource = g_strnfill(256, 'a'));
        ASSERT_REFUSED(g_free(h->resource); h->resource = g_strdup("\xff"));
        ASSERT_REFUSED(h->token = 0);
        ASSERT_REFUSED(h->mode = _LOCK_MODE_MAX);
        ASSERT_REFUSED(h->scope = _HOLD_SCOPE_MAX);
        ASSERT_REFUSED(h->scope = _HOLD_SCOPE_INVALID);
        ASSERT_REFUSED(g_clear_pointer(&h->sender, g_free));
        ASSERT_REFUSED(h->sender[0] = '\0');
        ASSERT_REFUSED(h->bus_id[5] = 'x');
        ASSERT_REFUSED(h->bus_id[31] = '\0');
        ASSERT_REFUSED(h->uid = (uid_t) -1);
        ASSERT_REFUSED(h->pid = -1);
        ASSERT_REFUSED(g_free(h->description); h->description = g_strnfill(LOCKBUS_DESCRIPTION_MAX + 1, 'd'));
        ASSERT_REFUSED(g_free(h->description); h->description = g_strdup("\xff"));
#undef ASSERT_REFUSED

        g_assert_cmpint(store_save_hold(f->store, NULL), ==, -EINVAL);

        /* Nothing was written. */
        assert_directory_is(f->lock_dir, none);
        assert_directory_is(f->runtime_dir, none);
}

static void test_remove(Fixture *f, gconstpointer data) {
        _cleanup_(hold_freep) Hold *p = make_hold("../p", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_PERSISTENT, 1);
        _cleanup_(hold_freep) Hold *c = make_hold("../c", LOCK_MODE_SHARED, HOLD_SCOPE_CONNECTION, 2);
        g_autoptr(GPtrArray) none = g_ptr_array_new();
        g_autoptr(GPtrArray) loaded = NULL;

        fixture_open(f);
        g_assert_cmpint(store_save_hold(f->store, p), ==, 0);
        g_assert_cmpint(store_save_hold(f->store, c), ==, 0);

        g_assert_cmpint(store_remove_hold(f->store, p), ==, 0);
        g_assert_cmpint(store_remove_hold(f->store, c), ==, 0);
        assert_directory_is(f->lock_dir, none);
        assert_directory_is(f->runtime_dir, none);

        g_assert_cmpint(store_remove_hold(f->store, p), ==, -ENOENT);
        g_assert_cmpint(store_remove_hold(f->store, c), ==, -ENOENT);

        loaded = load(f);
        g_assert_cmpuint(loaded->len, ==, 0);
}

/* A hold file as a human might have edited it; OMIT leaves a key out. */
static const char OMIT[] = "";
typedef struct HoldText {
        const char *resource, *mode, *scope, *token, *uid, *sender, *bus_id, *description;
} HoldText;

static char *hold_text(const HoldText *t) {
        GString *s = g_string_new("[Hold]\n");

#define KEY(key, value, fallback)                                               \
        do {                                                                    \
                const char *_v_ = (value) ?: (fallback);                        \
                if (_v_ != OMIT)                                                \
                        g_string_append_printf(s, key "=%s\n", _v_);            \
        } while (false)

        KEY("Resource", t->resource, "db");
        KEY("Mode", t->mode, "exclusive");
        KEY("Scope", t->scope, "persistent");
        KEY("Token", t->token, "1");
        KEY("UID", t->uid, "1000");
        s = g_string_append(s, "PID=4242\nComm=psql\n");
        KEY("Sender", t->sender, ":1.42");
        KEY("BusID", t->bus_id, BUS_ID);
        s = g_string_append(s, "Since=1763812345000000\nExpires=0\nTTL=0\n");
        KEY("Description", t->description, "nightly backup");
#undef KEY

        return g_string_free(s, false);
}

typedef struct CorruptCase {
        const char *file_name;
        bool in_runtime_directory;
        HoldText text;
        const char *raw;        /* instead of text */
} CorruptCase;

static const CorruptCase corrupt_cases[] = {
        { "garbage@1", .raw = "this is not a key file\n\x01\x02\x03" },
        { "empty@2", .raw = "" },
        { "nogroup@3", .raw = "[Other]\nResource=nogroup\n" },
        { "binary@4", .raw = "[Hold]\nResource=binary\n\xff\xfe\n" },
        { "badmode@5", .text = { .resource = "badmode", .token = "5", .mode = "sideways" } },
        { "nomode@6", .text = { .resource = "nomode", .token = "6", .mode = OMIT } },
        { "badscope@7", .text = { .resource = "badscope", .token = "7", .scope = "forever" } },
        { "zero@0", .text = { .resource = "zero", .token = "0" } },
        { "notoken@", .text = { .resource = "notoken", .token = OMIT } },
        { "numbers@9", .text = { .resource = "numbers", .token = "9x" } },
        { "negative@10", .text = { .resource = "negative", .token = "10", .uid = "-1" } },
        { "uidmax@11", .text = { .resource = "uidmax", .token = "11", .uid = "4294967295" } },
        { "other@12", .text = { .resource = "wrongname", .token = "12" } },
        { "wrongtoken@13", .text = { .resource = "wrongtoken", .token = "14" } },
        { "padded@015", .text = { .resource = "padded", .token = "015" } },
        { "%2E.%2Fx@16", .text = { .resource = "../y", .token = "16" } },
        { "ctl@17", .text = { .resource = "c\x01tl", .token = "17" } },
        { "conn@18", .text = { .resource = "conn", .token = "18", .scope = "connection" } },
        { "pers@19", true, .text = { .resource = "pers", .token = "19", .scope = "persistent" } },
        { "nosender@20", true, .text = { .resource = "nosender", .token = "20", .scope = "fd", .sender = "" } },
        { "busid@21", .text = { .resource = "busid", .token = "21", .bus_id = "not-a-bus-id" } },
        { "notutf8@22", .text = { .resource = "notutf8", .token = "22", .description = "\xff" } },
        { "tokens", true, .text = { .resource = "tokens", .token = "23" } },
};

/* The hand-written file format reads back, through GKeyFile, exactly. */
static void test_save_load_escaping(Fixture *f, gconstpointer data) {
        static const char *const strings[] = {
                " leading", "trailing ", "  both  ", "in  side", "\ttab\t", "back\\slash", "\\s literal",
                "new\nline", "carriage\rreturn", "= equals = ", "[Hold]", "#not a comment", ";", " ", "\t",
                "ümlaut ロック", "",
        };
        g_autoptr(GPtrArray) loaded = NULL;
        uint64_t token = 1;

        fixture_open(f);
        for (size_t i = 0; i < G_N_ELEMENTS(strings); i++) {
                g_autofree char *other = g_strdup_printf("r%zu", i);
                _cleanup_(hold_freep) Hold *h = make_hold(resource_name_is_valid(strings[i]) ? strings[i] : other,
                                                          LOCK_MODE_SHARED, HOLD_SCOPE_PERSISTENT, token++);

                g_free(h->description);
                h->description = g_strdup(strings[i]);
                g_free(h->comm);
                h->comm = g_strdup(strings[i]);
                g_assert_cmpint(store_save_hold(f->store, h), ==, 0);
        }

        loaded = load(f);
        g_assert_cmpuint(loaded->len, ==, G_N_ELEMENTS(strings));
        for (guint i = 0; i < loaded->len; i++) {
                const Hold *h = loaded->pdata[i];
                const char *expected = strings[h->token - 1];
                g_autofree char *other = g_strdup_printf("r%" PRIu64, h->token - 1);

                g_assert_cmpstr(h->resource, ==, resource_name_is_valid(expected) ? expected : other);
                g_assert_cmpstr(h->description, ==, expected);
                g_assert_cmpstr(h->comm, ==, expected);
        }
}

/* New persistent files and removals wait for store_sync() (the group
 * commit); a rewrite and connection holds do not. */
static void test_sync(Fixture *f, gconstpointer data) {
        _cleanup_(hold_freep) Hold *p = make_hold("p", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_PERSISTENT, 1);
        _cleanup_(hold_freep) Hold *c = make_hold("c", LOCK_MODE_SHARED, HOLD_SCOPE_CONNECTION, 2);

        fixture_open(f);
        g_assert_false(store_needs_sync(f->store));

        g_assert_cmpint(store_save_hold(f->store, c), ==, 0);
        g_assert_false(store_needs_sync(f->store));

        g_assert_cmpint(store_save_hold(f->store, p), ==, 0);
        g_assert_true(store_needs_sync(f->store));
        g_assert_cmpint(store_sync(f->store), ==, 0);
        g_assert_false(store_needs_sync(f->store));

        /* A rewrite (new expiry) is durable on return. */
        p->expires_usec = 42;
        g_assert_cmpint(store_save_hold(f->store, p), ==, 0);
        g_assert_false(store_needs_sync(f->store));

        g_assert_cmpint(store_remove_hold(f->store, p), ==, 0);
        g_assert_true(store_needs_sync(f->store));
        g_assert_cmpint(store_sync(f->store), ==, 0);
        g_assert_false(store_needs_sync(f->store));
        g_assert_cmpint(store_sync(f->store), ==, 0);
}

/* A lock directory removed while the store has it open would swallow new
 * holds: they must be refused, not acknowledged and lost. */
static void test_removed_directory(Fixture *f, gconstpointer data) {
        _cleanup_(hold_freep) Hold *p = make_hold("p", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_PERSISTENT, 1);
        _cleanup_(hold_freep) Hold *c = make_hold("c", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_CONNECTION, 2);

        fixture_open(f);
        g_assert_cmpint(rmdir(f->lock_dir), ==, 0);
        g_assert_cmpint(store_save_hold(f->store, p), ==, -ENOENT);
        g_assert_false(store_needs_sync(f->store));

        /* The runtime directory is unaffected. */
        g_assert_cmpint(store_save_hold(f->store, c), ==, 0);
}

static void test_corrupt_file(Fixture *f, gconstpointer data) {
        g_autofree char *lock_quarantine = NULL, *runtime_quarantine = NULL, *huge = NULL, *again = NULL;
        g_autoptr(GPtrArray) good_files = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(GPtrArray) loaded = NULL, loaded_again = NULL;
        _cleanup_(hold_freep) Hold *good = make_hold("good", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_PERSISTENT, 100);
        char *description;
        struct stat st;

        fixture_open(f);
        lock_quarantine = g_build_filename(f->lock_dir, ".quarantine", NULL);
        runtime_quarantine = g_build_filename(f->runtime_dir, ".quarantine", NULL);

        for (size_t i = 0; i < ELEMENTSOF(corrupt_cases); i++) {
                const CorruptCase *c = &corrupt_cases[i];
                g_autofree char *text = c->raw ? g_strdup(c->raw) : hold_text(&c->text);

                write_file(c->in_runtime_directory ? f->runtime_dir : f->lock_dir, c->file_name, text, -1);
        }

        /* One byte of description too many, and a file too large to be ours. */
        description = g_strnfill(LOCKBUS_DESCRIPTION_MAX + 1, 'd');
        huge = hold_text(&(HoldText) { .resource = "longdesc", .token = "30", .description = description });
        g_free(description);
        write_file(f->lock_dir, "longdesc@30", huge, -1);
        g_free(huge);
        description = g_strnfill(70 * 1024, 'd');
        huge = hold_text(&(HoldText) { .resource = "huge", .token = "31", .description = description });
        g_free(description);
        write_file(f->lock_dir, "huge@31", huge, -1);

        /* A valid hold among them still loads. */
        g_assert_cmpint(store_save_hold(f->store, good), ==, 0);

        loaded = load(f);
        g_assert_cmpuint(loaded->len, ==, 1);
        assert_holds_equal(loaded->pdata[0], good);

        /* Every bad file is in the quarantine of its directory, by its name;
         * only the good one and the token file's place are left. */
        g_ptr_array_add(good_files, g_strdup(".quarantine"));
        assert_directory_is(f->runtime_dir, good_files);
        g_ptr_array_add(good_files, expected_file_name(good));
        assert_directory_is(f->lock_dir, good_files);

        for (size_t i = 0; i < ELEMENTSOF(corrupt_cases); i++) {
                const CorruptCase *c = &corrupt_cases[i];

                g_assert_true(directory_has(c->in_runtime_directory ? runtime_quarantine : lock_quarantine,
                                            c->file_name));
        }
        g_assert_true(directory_has(lock_quarantine, "longdesc@30"));
        g_assert_true(directory_has(lock_quarantine, "huge@31"));
        g_assert_cmpint(stat(lock_quarantine, &st), ==, 0);
        g_assert_cmpint(st.st_mode & 07777, ==, 0700);

        /* A second bad file of the same name does not replace the first. */
        write_file(f->lock_dir, "garbage@1", "more garbage", -1);
        loaded_again = load(f);
        g_assert_cmpuint(loaded_again->len, ==, 1);
        g_assert_true(directory_has(lock_quarantine, "garbage@1"));
        g_assert_true(directory_has(lock_quarantine, "garbage@1.1"));
        again = read_file(lock_quarantine, "garbage@1.1");
        g_assert_cmpstr(again, ==, "more garbage");

        assert_nothing_outside_store(f);
}

static void test_symlink_entry(Fixture *f, gconstpointer data) {
        _cleanup_(hold_freep) Hold *victim = make_hold("victim", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_PERSISTENT, 5);
        _cleanup_(hold_freep) Hold *conn = make_hold("conn", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_CONNECTION, 6);
        g_autofree char *outside = g_build_filename(f->dir, "outside", NULL);
        g_autofree char *victim_name = expected_file_name(victim), *conn_name = expected_file_name(conn);
        g_autofree char *target = NULL, *path = NULL, *quarantine = NULL, *before = NULL, *after = NULL;
        g_autofree char *runtime_quarantine = NULL;
        g_autoptr(GPtrArray) loaded = NULL, outside_files = NULL;
        g_autoptr(GPtrArray) expected_outside = g_ptr_array_new_with_free_func(g_free);
        Store *other = NULL;

        /* A perfectly valid hold file, but outside the store. */
        g_assert_cmpint(store_open(outside, f->runtime_dir, &other), ==, 0);
        g_assert_cmpint(store_save_hold(other, victim), ==, 0);
        other = store_free(other);
        before = read_file(outside, victim_name);
        g_ptr_array_add(expected_outside, g_strdup(victim_name));

        fixture_open(f);

        /* Links to it, dangling links, a FIFO (must not block the load) and
         * a directory, each with a name that matches a hold. */
        target = g_build_filename(outside, victim_name, NULL);
        path = g_build_filename(f->lock_dir, victim_name, NULL);
        g_assert_cmpint(symlink(target, path), ==, 0);
        g_free(path);
        path = g_build_filename(f->runtime_dir, conn_name, NULL);
        g_assert_cmpint(symlink("/nonexistent/conn@6", path), ==, 0);
        g_free(path);
        path = g_build_filename(f->lock_dir, "fifo@7", NULL);
        g_assert_cmpint(mkfifo(path, 0644), ==, 0);
        g_free(path);
        path = g_build_filename(f->lock_dir, "dir@8", NULL);
        g_assert_cmpint(g_mkdir(path, 0755), ==, 0);
        write_file(path, "inner@9", "x", -1);

        loaded = load(f);
        g_assert_cmpuint(loaded->len, ==, 0);

        quarantine = g_build_filename(f->lock_dir, ".quarantine", NULL);
        runtime_quarantine = g_build_filename(f->runtime_dir, ".quarantine", NULL);
        g_assert_true(directory_has(quarantine, victim_name));
        g_assert_true(directory_has(quarantine, "fifo@7"));
        g_assert_true(directory_has(quarantine, "dir@8"));
        g_assert_true(directory_has(runtime_quarantine, conn_name));

        /* The link was moved, not its target. */
        g_free(path);
        path = g_build_filename(quarantine, victim_name, NULL);
        g_assert_true(g_file_test(path, G_FILE_TEST_IS_SYMLINK));
        outside_files = list_directory(outside);
        g_assert_cmpuint(outside_files->len, ==, 1);
        g_assert_cmpstr(outside_files->pdata[0], ==, victim_name);
        after = read_file(outside, victim_name);
        g_assert_cmpstr(after, ==, before);
}

static void test_quarantine_symlink(Fixture *f, gconstpointer data) {
        g_autofree char *outside = g_build_filename(f->dir, "outside", NULL);
        g_autofree char *link = NULL;
        g_autoptr(GPtrArray) loaded = NULL, outside_files = NULL;

        fixture_open(f);
        g_assert_cmpint(g_mkdir(outside, 0755), ==, 0);

        /* A ".quarantine" that points elsewhere must not receive anything:
         * the bad file stays where it is, and the load goes on. */
        link = g_build_filename(f->lock_dir, ".quarantine", NULL);
        g_assert_cmpint(symlink(outside, link), ==, 0);
        write_file(f->lock_dir, "garbage@1", "garbage", -1);

        loaded = load(f);
        g_assert_cmpuint(loaded->len, ==, 0);
        outside_files = list_directory(outside);
        g_assert_cmpuint(outside_files->len, ==, 0);
        g_assert_true(directory_has(f->lock_dir, "garbage@1"));
}

static void test_hidden_files(Fixture *f, gconstpointer data) {
        g_autoptr(GPtrArray) loaded = NULL;
        g_autofree char *text = hold_text(&(HoldText) { .resource = "hidden", .token = "3" });

        fixture_open(f);

        /* Dot files are the store's own or a human's: never holds, never
         * quarantined. Temp files are left-overs of an interrupted write. */
        write_file(f->lock_dir, ".hidden@3", text, -1);
        write_file(f->lock_dir, ".tmp-0123456789abcdef", text, -1);
        write_file(f->runtime_dir, ".tmp-0123456789abcdef", text, -1);
        write_file(f->lock_dir, "tokens", "12\n", -1);

        loaded = load(f);
        g_assert_cmpuint(loaded->len, ==, 0);
        g_assert_true(directory_has(f->lock_dir, ".hidden@3"));
        g_assert_true(directory_has(f->lock_dir, "tokens"));
        g_assert_false(directory_has(f->lock_dir, ".tmp-0123456789abcdef"));
        g_assert_false(directory_has(f->runtime_dir, ".tmp-0123456789abcdef"));
        g_assert_false(directory_has(f->lock_dir, ".quarantine"));
}

static void test_nested_directories(Fixture *f, gconstpointer data) {
        _cleanup_(hold_freep) Hold *p = make_hold("p", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_PERSISTENT, 1);
        _cleanup_(hold_freep) Hold *c = make_hold("c", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_CONNECTION, 2);
        g_autoptr(GPtrArray) loaded = NULL;

        /* The runtime directory configured inside the lock directory is not
         * an entry to quarantine. */
        g_free(f->runtime_dir);
        f->runtime_dir = g_build_filename(f->lock_dir, "run", NULL);
        fixture_open(f);

        g_assert_cmpint(store_save_hold(f->store, p), ==, 0);
        g_assert_cmpint(store_save_hold(f->store, c), ==, 0);

        loaded = load(f);
        g_assert_cmpuint(loaded->len, ==, 2);
        assert_holds_equal(loaded->pdata[0], p);
        assert_holds_equal(loaded->pdata[1], c);
        g_assert_true(directory_has(f->lock_dir, "run"));
        g_assert_false(directory_has(f->lock_dir, ".quarantine"));
}

static void test_tokens(Fixture *f, gconstpointer data) {
        static const char *const bad[] = {
                "", "\n", "abc\n", "12abc\n", "-1\n", "+1\n", " 5\n", "5 \n", "5\n\n", "0x10\n",
                "18446744073709551616\n",
        };
        g_autofree char *contents = NULL, *path = NULL, *elsewhere = NULL;
        g_autoptr(GPtrArray) loaded = NULL;
        uint64_t v = 42;

        fixture_open(f);

        /* A fresh directory has handed out nothing. */
        g_assert_cmpint(store_read_token_reservation(f->store, &v), ==, 0);
        g_assert_cmpuint(v, ==, 0);

        g_assert_cmpint(store_write_token_reservation(f->store, 1024), ==, 0);
        g_assert_cmpint(store_read_token_reservation(f->store, &v), ==, 0);
        g_assert_cmpuint(v, ==, 1024);
        contents = read_file(f->lock_dir, "tokens");
        g_assert_cmpstr(contents, ==, "1024\n");

        g_assert_cmpint(store_write_token_reservation(f->store, UINT64_MAX), ==, 0);
        g_assert_cmpint(store_read_token_reservation(f->store, &v), ==, 0);
        g_assert_cmpuint(v, ==, UINT64_MAX);

        /* No line ending is fine (hand-written); the file is not a hold. */
        write_file(f->lock_dir, "tokens", "77", -1);
        g_assert_cmpint(store_read_token_reservation(f->store, &v), ==, 0);
        g_assert_cmpuint(v, ==, 77);
        loaded = load(f);
        g_assert_cmpuint(loaded->len, ==, 0);
        g_assert_false(directory_has(f->lock_dir, ".quarantine"));

        /* Anything else is refused: guessing could make tokens go back. */
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                write_file(f->lock_dir, "tokens", bad[i], -1);
                v = 42;
                g_assert_cmpint(store_read_token_reservation(f->store, &v), ==, -EBADMSG);
                g_assert_cmpuint(v, ==, 42);
        }
        /* A NUL byte must not cut the number short. */
        write_file(f->lock_dir, "tokens", "1\0002\n", 4);
        g_assert_cmpint(store_read_token_reservation(f->store, &v), ==, -EBADMSG);

        /* So is a symlink to a good value, and a directory. */
        path = g_build_filename(f->lock_dir, "tokens", NULL);
        elsewhere = g_build_filename(f->dir, "elsewhere", NULL);
        write_file(f->dir, "elsewhere", "5\n", -1);
        g_assert_cmpint(g_unlink(path), ==, 0);
        g_assert_cmpint(symlink(elsewhere, path), ==, 0);
        g_assert_cmpint(store_read_token_reservation(f->store, &v), ==, -EBADMSG);
        g_assert_cmpint(g_unlink(path), ==, 0);
        g_assert_cmpint(g_unlink(elsewhere), ==, 0);
        g_assert_cmpint(g_mkdir(path, 0755), ==, 0);
        g_assert_cmpint(store_read_token_reservation(f->store, &v), <, 0);
        g_assert_cmpint(g_rmdir(path), ==, 0);

        /* Writing replaces a bad file. */
        write_file(f->lock_dir, "tokens", "garbage", -1);
        g_assert_cmpint(store_write_token_reservation(f->store, 2048), ==, 0);
        g_assert_cmpint(store_read_token_reservation(f->store, &v), ==, 0);
        g_assert_cmpuint(v, ==, 2048);
        assert_nothing_outside_store(f);
}

static void assert_no_temp_files(const char *dir) {
        g_autoptr(GPtrArray) names = list_directory(dir);

        for (guint i = 0; i < names->len; i++)
                g_assert_false(g_str_has_prefix(names->pdata[i], ".tmp-"));
}

static void test_enospc(Fixture *f, gconstpointer data) {
        _cleanup_(hold_freep) Hold *old = make_hold("old", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_PERSISTENT, 1);
        _cleanup_(hold_freep) Hold *p = make_hold("p", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_PERSISTENT, 2);
        _cleanup_(hold_freep) Hold *c = make_hold("c", LOCK_MODE_SHARED, HOLD_SCOPE_CONNECTION, 3);
        g_autofree char *fill = NULL;
        g_autoptr(GPtrArray) loaded = NULL;
        _cleanup_close_ int fd = -1;
        char block[4096] = {};
        uint64_t v = 0;

        if (!mount_tmpfs(f, "size=64k,mode=0755"))
                return;
        fixture_open(f);
        g_assert_cmpint(store_save_hold(f->store, old), ==, 0);
        g_assert_cmpint(store_write_token_reservation(f->store, 1024), ==, 0);

        /* Fill the file system. */
        fill = g_build_filename(f->mount_point, "fill", NULL);
        fd = open(fill, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        g_assert_cmpint(fd, >=, 0);
        for (;;) {
                ssize_t n = write(fd, block, sizeof(block));

                if (n < 0) {
                        g_assert_cmpint(errno, ==, ENOSPC);
                        break;
                }
        }

        /* Each write fails with the file system's error and leaves nothing. */
        g_assert_cmpint(store_save_hold(f->store, p), ==, -ENOSPC);
        g_assert_cmpint(store_save_hold(f->store, c), ==, -ENOSPC);
        g_assert_cmpint(store_write_token_reservation(f->store, 2048), ==, -ENOSPC);

        /* A failed rewrite keeps the old file. */
        g_free(old->description);
        old->description = g_strdup("changed");
        g_assert_cmpint(store_save_hold(f->store, old), ==, -ENOSPC);

        assert_no_temp_files(f->lock_dir);
        assert_no_temp_files(f->runtime_dir);
        g_assert_cmpint(store_read_token_reservation(f->store, &v), ==, 0);
        g_assert_cmpuint(v, ==, 1024);
        loaded = load(f);
        g_assert_cmpuint(loaded->len, ==, 1);
        g_assert_cmpstr(((Hold *) loaded->pdata[0])->description, ==, "nightly backup #1");
}

static void test_read_only(Fixture *f, gconstpointer data) {
        _cleanup_(hold_freep) Hold *p = make_hold("p", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_PERSISTENT, 1);
        _cleanup_(hold_freep) Hold *c = make_hold("c", LOCK_MODE_SHARED, HOLD_SCOPE_CONNECTION, 2);
        _cleanup_(hold_freep) Hold *n = make_hold("n", LOCK_MODE_SHARED, HOLD_SCOPE_PERSISTENT, 3);
        g_autoptr(GPtrArray) loaded = NULL;
        int expected;

        if (geteuid() == 0) {
                /* Root ignores permissions: a read-only tmpfs it is. */
                if (!mount_tmpfs(f, "size=1m,mode=0755"))
                        return;
                expected = -EROFS;
        } else
                expected = -EACCES;

        fixture_open(f);
        g_assert_cmpint(store_save_hold(f->store, p), ==, 0);
        g_assert_cmpint(store_save_hold(f->store, c), ==, 0);
        write_file(f->lock_dir, "garbage@9", "garbage", -1);

        if (f->mount_point)
                g_assert_cmpint(mount(NULL, f->mount_point, NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL), ==, 0);
        else {
                g_assert_cmpint(chmod(f->lock_dir, 0555), ==, 0);
                g_assert_cmpint(chmod(f->runtime_dir, 0555), ==, 0);
        }

        g_assert_cmpint(store_save_hold(f->store, n), ==, expected);
        g_assert_cmpint(store_save_hold(f->store, c), ==, expected);
        g_assert_cmpint(store_remove_hold(f->store, p), ==, expected);
        g_assert_cmpint(store_write_token_reservation(f->store, 1024), ==, expected);

        /* Loading still works; what cannot be moved aside is skipped. */
        loaded = load(f);
        g_assert_cmpuint(loaded->len, ==, 2);
        assert_holds_equal(loaded->pdata[0], p);
        assert_holds_equal(loaded->pdata[1], c);
        g_assert_true(directory_has(f->lock_dir, "garbage@9"));
        assert_no_temp_files(f->lock_dir);
        assert_no_temp_files(f->runtime_dir);
}

int main(int argc, char *argv[]) {
        int r;

        g_test_init(&argc, &argv, NULL);

        /* Modes asserted by the tests do not depend on the caller's umask. */
        umask(0022);

        test_root = g_dir_make_tmp("lockbus-test-store-XXXXXX", NULL);
        g_assert_nonnull(test_root);
        start_reaper(test_root);

#define ADD(path, func) g_test_add(path, Fixture, NULL, fixture_setup, func, fixture_teardown)

        ADD("/store/open", test_open);
        ADD("/store/open/refuses", test_open_refuses);
        ADD("/store/save-load", test_save_load);
        ADD("/store/save-load/fields", test_save_load_fields);
        ADD("/store/save-load/escaping", test_save_load_escaping);
        ADD("/store/save/replace", test_save_replace);
        ADD("/store/save/invalid", test_save_invalid);
        ADD("/store/remove", test_remove);
        ADD("/store/sync", test_sync);
        ADD("/store/removed-directory", test_removed_directory);
        ADD("/store/corrupt-file", test_corrupt_file);
        ADD("/store/symlink-entry", test_symlink_entry);
        ADD("/store/quarantine-symlink", test_quarantine_symlink);
        ADD("/store/hidden-files", test_hidden_files);
        ADD("/store/nested-directories", test_nested_directories);
        ADD("/store/tokens", test_tokens);
        ADD("/store/enospc", test_enospc);
        ADD("/store/read-only", test_read_only);
#undef ADD

        r = g_test_run();
        rm_rf(test_root);
        g_free(test_root);
        return r;
}
