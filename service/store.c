/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>

#include "lockbus-names.h"
#include "log.h"
#include "resource-name.h"
#include "store.h"

#define HOLD_GROUP              "Hold"
#define TOKENS_FILE             "tokens"
#define QUARANTINE_DIRECTORY    ".quarantine"
#define TEMP_PREFIX             ".tmp-"

/* A hold file is a few hundred bytes (the description is at most 1 KiB):
 * anything much larger is not ours and is not read into memory. */
#define HOLD_FILE_MAX           (64U * 1024U)
/* UINT64_MAX is 20 digits; leave room for a newline and some slack. */
#define TOKENS_FILE_MAX         64U
#define BUS_ID_LENGTH           32U
/* Attempts at a unique name, for temp files and for quarantined files. */
#define UNIQUE_NAME_ATTEMPTS    1000U

struct Store {
        char *lock_directory;
        char *runtime_directory;
        int lock_fd;
        int runtime_fd;

        /* Changes to the lock directory not yet made durable by store_sync(). */
        bool lock_dirty;

        /* The token reservation file as last written, to notice it being
         * removed or replaced behind our back. */
        dev_t tokens_dev;
        ino_t tokens_ino;

        /* To recognise one directory inside the other while loading. */
        dev_t lock_dev, runtime_dev;
        ino_t lock_ino, runtime_ino;
};

static inline bool string_is_empty(const char *s) {
        return !s || !s[0];
}

static inline void closedirp(DIR **d) {
        if (*d)
                closedir(*d);
}

static int open_directory(const char *path, int *ret_fd) {
        int fd;

        /* Parents may legitimately be symlinks (/var/lib → /data/…); only
         * the directory itself is opened with O_NOFOLLOW below. */
        if (g_mkdir_with_parents(path, 0755) < 0)
                return -errno;

        fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;

        *ret_fd = fd;
        return 0;
}

int store_open(const char *lock_directory, const char *runtime_directory, Store **ret) {
        _cleanup_(store_freep) Store *s = NULL;
        struct stat lock_st, runtime_st;
        int r;

        if (string_is_empty(lock_directory) || string_is_empty(runtime_directory) || !ret)
                return -EINVAL;

        s = g_new0(Store, 1);
        s->lock_fd = s->runtime_fd = -1;
        s->lock_directory = g_strdup(lock_directory);
        s->runtime_directory = g_strdup(runtime_directory);

        r = open_directory(lock_directory, &s->lock_fd);
        if (r < 0)
                return r;
        r = open_directory(runtime_directory, &s->runtime_fd);
        if (r < 0)
                return r;

        if (fstat(s->lock_fd, &lock_st) < 0 || fstat(s->runtime_fd, &runtime_st) < 0)
                return -errno;

        /* One directory for both would make every persistent hold look like
         * a persistent hold in the runtime directory, which load quarantines. */
        if (lock_st.st_dev == runtime_st.st_dev && lock_st.st_ino == runtime_st.st_ino)
                return -EINVAL;

        s->lock_dev = lock_st.st_dev;
        s->lock_ino = lock_st.st_ino;
        s->runtime_dev = runtime_st.st_dev;
        s->runtime_ino = runtime_st.st_ino;

        /* Blocks while another daemon still uses the directory, e.g. one that
         * is finishing its idle exit while D-Bus activation starts us. */
        while (flock(s->lock_fd, LOCK_EX) < 0)
                if (errno != EINTR)
                        return -errno;

        *ret = TAKE_PTR(s);
        return 0;
}

Store *store_free(Store *s) {
        if (!s)
                return NULL;

        /* Closing the lock directory's fd releases the flock. */
        if (s->lock_fd >= 0)
                close(s->lock_fd);
        if (s->runtime_fd >= 0)
                close(s->runtime_fd);
        g_free(s->lock_directory);
        g_free(s->runtime_directory);
        g_free(s);
        return NULL;
}

const char *store_lock_directory(const Store *s) {
        return s ? s->lock_directory : NULL;
}

const char *store_runtime_directory(const Store *s) {
        return s ? s->runtime_directory : NULL;
}

/* ---- low-level file helpers ------------------------------------------- */

static int write_all(int fd, const char *data, size_t size) {
        while (size > 0) {
                ssize_t n = write(fd, data, size);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EIO;

                data += n;
                size -= (size_t) n;
        }
        return 0;
}

/* Reads the whole file into a NUL-terminated buffer. -EFBIG if it is larger
 * than max: we never read an unbounded amount from a directory entry. */
static int read_full(int fd, size_t max, char **ret, size_t *ret_size) {
        g_autofree char *buf = g_malloc(max + 2);
        size_t size = 0;

        for (;;) {
                ssize_t n = read(fd, buf + size, max + 1 - size);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;

                size += (size_t) n;
                if (size > max)
                        return -EFBIG;
        }

        buf[size] = '\0';
        *ret = TAKE_PTR(buf);
        *ret_size = size;
        return 0;
}

static int fsync_directory(int dir_fd) {
        return fsync(dir_fd) < 0 ? -errno : 0;
}

/* Creates a new, unique temp file in the directory. Its name starts with '.',
 * so a loader never takes it for a hold. */
static int open_temp_file(int dir_fd, char **ret_name) {
        for (unsigned i = 0; i < UNIQUE_NAME_ATTEMPTS; i++) {
                g_autofree char *name = NULL;
                int fd;

                name = g_strdup_printf(TEMP_PREFIX "%08x%08x",
                                       (unsigned) g_random_int(), (unsigned) g_random_int());

                fd = openat(dir_fd, name,
                            O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY,
                            0644);
                if (fd >= 0) {
                        *ret_name = TAKE_PTR(name);
                        return fd;
                }
                if (errno != EEXIST)
                        return -errno;
        }

        return -EEXIST;
}

/* Replaces dir_fd/name atomically: readers see the old or the new contents,
 * never a partial file. With durable, the contents reach the disk before the
 * rename; the caller fsyncs the directory to make the rename itself durable.
 * On failure the temp file is removed and the old file is untouched. */
static int write_file_atomic(int dir_fd, const char *name, const char *data, size_t size, bool durable) {
        g_autofree char *temp = NULL;
        _cleanup_close_ int fd = -1;
        int r;

        fd = open_temp_file(dir_fd, &temp);
        if (fd < 0)
                return fd;

        r = write_all(fd, data, size);
        if (r >= 0 && durable && fsync(fd) < 0)
                r = -errno;
        /* close() can report a delayed write error (e.g. on NFS); EINTR
         * still closes the fd on Linux and loses nothing. */
        if (r >= 0 && close(TAKE_FD(fd)) < 0 && errno != EINTR)
                r = -errno;
        if (r >= 0 && renameat(dir_fd, temp, dir_fd, name) < 0)
                r = -errno;

        if (r < 0) {
                (void) unlinkat(dir_fd, temp, 0);
                return r;
        }

        return 0;
}

/* ---- hold files ------------------------------------------------------- */

static bool bus_id_is_valid(const char *s) {
        /* Empty: the bus ID was not known (a persistent hold does not need it). */
        if (string_is_empty(s))
                return true;

        if (strlen(s) != BUS_ID_LENGTH)
                return false;
        for (const char *p = s; *p; p++)
                if (!g_ascii_isxdigit(*p))
                        return false;
        return true;
}

static bool string_is_valid_utf8(const char *s) {
        return !s || g_utf8_validate(s, -1, NULL);
}

/* One check for what save writes and what load accepts, so a hold that was
 * saved is never quarantined on the next start. Returns NULL if the hold is
 * consistent, else the reason. */
static const char *hold_check(const Hold *h) {
        if (!resource_name_is_valid(h->resource))
                return "invalid resource name";
        if (!lock_mode_to_string(h->mode))
                return "unknown mode";
        if (!hold_scope_to_string(h->scope))
                return "unknown scope";
        if (h->token == 0)
                return "token 0 is never handed out";
        if (h->uid == (uid_t) -1)
                return "invalid UID";
        if (h->pid < 0)
                return "invalid PID";
        if (!hold_is_persistent(h) && string_is_empty(h->sender))
                return "a connection or fd hold without sender";
        if (!bus_id_is_valid(h->bus_id))
                return "bus ID is not 32 hexadecimal digits";
        if (h->description && strlen(h->description) > LOCKBUS_DESCRIPTION_MAX)
                return "description longer than 1024 bytes";
        /* GKeyFile refuses to load strings that are not UTF-8. comm is
         * repaired on save instead (see hold_to_data()). */
        if (!string_is_valid_utf8(h->sender) || !string_is_valid_utf8(h->description))
                return "sender or description is not UTF-8";
        return NULL;
}

static int hold_file_name(const Hold *h, char **ret) {
        _cleanup_free_ char *stem = NULL;
        int r;

        r = resource_name_to_file_stem(h->resource, &stem);
        if (r < 0)
                return r;

        *ret = g_strdup_printf("%s@%" PRIu64, stem, h->token);
        return 0;
}

static int hold_directory_fd(const Store *s, const Hold *h) {
        if (!hold_scope_to_string(h->scope))
                return -EINVAL;
        return hold_is_persistent(h) ? s->lock_fd : s->runtime_fd;
}

/* Appends "key=value\n" with value escaped as GKeyFile reads it back:
 * backslash, newline, carriage return and tab as \\ \n \r \t, a leading or
 * trailing space as \s (GKeyFile trims unescaped whitespace around a
 * value). Writing the format by hand rather than through GKeyFile keeps
 * every grant cheap; the loader still parses it with GKeyFile. */
static void append_string_key(GString *out, const char *key, const char *value) {
        g_string_append(out, key);
        g_string_append_c(out, '=');
        for (const char *p = value; *p; p++)
                switch (*p) {
                case '\\':
                        g_string_append(out, "\\\\");
                        break;
                case '\n':
                        g_string_append(out, "\\n");
                        break;
                case '\r':
                        g_string_append(out, "\\r");
                        break;
                case '\t':
                        g_string_append(out, "\\t");
                        break;
                case ' ':
                        if (p == value || p[1] == '\0')
                                g_string_append(out, "\\s");
                        else
                                g_string_append_c(out, ' ');
                        break;
                default:
                        g_string_append_c(out, *p);
                }
        g_string_append_c(out, '\n');
}

static void append_uint_key(GString *out, const char *key, uint64_t value) {
        g_string_append_printf(out, "%s=%" PRIu64 "\n", key, value);
}

static char *hold_to_data(const Hold *h, size_t *ret_size) {
        GString *out = g_string_sized_new(512);
        g_autofree char *comm = NULL;

        /* comm comes from the kernel and may be any bytes; it is display-only,
         * so a repaired copy is better than a grant that cannot be stored. */
        comm = g_utf8_make_valid(strempty(h->comm), -1);

        g_string_append(out, "[" HOLD_GROUP "]\n");
        append_string_key(out, "Resource", h->resource);
        append_string_key(out, "Mode", lock_mode_to_string(h->mode));
        append_string_key(out, "Scope", hold_scope_to_string(h->scope));
        append_uint_key(out, "Token", h->token);
        append_uint_key(out, "UID", (uint64_t) h->uid);
        append_uint_key(out, "PID", (uint64_t) h->pid);
        append_string_key(out, "Comm", comm);
        append_string_key(out, "Sender", strempty(h->sender));
        append_string_key(out, "BusID", strempty(h->bus_id));
        append_uint_key(out, "Since", h->since_usec);
        append_uint_key(out, "Expires", h->expires_usec);
        append_uint_key(out, "TTL", h->ttl_usec);
        append_string_key(out, "Description", strempty(h->description));

        *ret_size = out->len;
        return g_string_free(out, FALSE);
}

int store_save_hold(Store *s, const Hold *h) {
        g_autofree char *name = NULL, *data = NULL;
        struct stat st;
        size_t size;
        bool persistent, existed;
        int dir_fd, r;

        if (!s || !h || hold_check(h))
                return -EINVAL;

        r = hold_file_name(h, &name);
        if (r < 0)
                return r;

        dir_fd = hold_directory_fd(s, h);
        if (dir_fd < 0)
                return dir_fd;
        persistent = hold_is_persistent(h);

        data = hold_to_data(h, &size);

        /* Rewriting a persistent hold (e.g. a new expiry) replaces a file
         * that was answered for. Only there does it matter, and asking
         * costs a syscall on every connection grant. */
        existed = persistent && fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) >= 0;

        /* A new file may wait for the group commit: until store_sync() the
         * grant is not answered, and a file a crash left half-written is
         * quarantined at start. Old contents were answered for, so a
         * rewrite is durable before the rename. */
        /* In a directory that was removed while open, creating the temp
         * file fails with ENOENT: nothing is written where it would be
         * lost, and no stat is needed on every grant to find out. */
        r = write_file_atomic(dir_fd, name, data, size, persistent && existed);
        if (r < 0)
                return r;

        if (persistent && existed) {
                r = fsync_directory(dir_fd);
                if (r < 0)
                        return r; /* the rewritten file stays: that hold is still granted */
        } else if (persistent)
                s->lock_dirty = true;

        return 0;
}

int store_remove_hold(Store *s, const Hold *h) {
        g_autofree char *name = NULL;
        int dir_fd, r;

        if (!s || !h || h->token == 0)
                return -EINVAL;

        r = hold_file_name(h, &name);
        if (r < 0)
                return r;

        dir_fd = hold_directory_fd(s, h);
        if (dir_fd < 0)
                return dir_fd;

        if (unlinkat(dir_fd, name, 0) < 0)
                return -errno;

        if (hold_is_persistent(h))
                s->lock_dirty = true;
        return 0;
}

/* Takes up the directory at `path` again if the one we have open was
 * removed and another is there now. */
static int reopen_directory(const char *path, int *fd, bool lock) {
        _cleanup_close_ int new_fd = -1;
        struct stat st;

        if (fstat(*fd, &st) < 0)
                return -errno;
        if (st.st_nlink > 0)
                return 0;

        new_fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (new_fd < 0)
                return errno == ENOENT ? -ENOENT : -errno;
        /* One daemon per lock directory, also for its new incarnation. */
        if (lock && flock(new_fd, LOCK_EX | LOCK_NB) < 0)
                return -errno;

        close(*fd);
        *fd = TAKE_FD(new_fd);
        return 1;
}

int store_reopen_removed_directories(Store *s, bool *ret_lock_gone, bool *ret_runtime_gone) {
        int r, k;

        r = reopen_directory(s->lock_directory, &s->lock_fd, true);
        k = reopen_directory(s->runtime_directory, &s->runtime_fd, false);
        if (r < 0 && r != -ENOENT)
                return r;
        if (k < 0 && k != -ENOENT)
                return k;

        if (r > 0) {
                /* Nothing of the old reservation is in the new directory. */
                s->tokens_dev = 0;
                s->tokens_ino = 0;
        }
        *ret_lock_gone = r == -ENOENT;
        *ret_runtime_gone = k == -ENOENT;
        return r > 0 || k > 0;
}

bool store_needs_sync(const Store *s) {
        return s->lock_dirty;
}

int store_sync(Store *s) {
        if (!s->lock_dirty)
                return 0;

        /* One flush for every file written and removed since the last one:
         * with many concurrent grants this is what makes them cheap. */
        if (syncfs(s->lock_fd) < 0)
                return -errno;

        s->lock_dirty = false;
        return 0;
}

/* ---- loading ---------------------------------------------------------- */

static void replace_string(char **p, char *v) {
        g_free(*p);
        *p = v;
}

/* The parse helpers return -EBADMSG and set *reason (if not yet set). A
 * missing optional key gives the default; a present but empty or malformed
 * one is an error. */
static int key_get_string(GKeyFile *k, const char *key, bool required, char **ret, char **reason) {
        g_autoptr(GError) error = NULL;
        char *v;

        if (!required && !g_key_file_has_key(k, HOLD_GROUP, key, NULL)) {
                *ret = g_strdup("");
                return 0;
        }

        /* For an invalid escape (\q, or a \ ending the line) GLib returns
         * what it could read and an error: that value is malformed too. */
        v = g_key_file_get_string(k, HOLD_GROUP, key, &error);
        if (!v || error) {
                g_free(v);
                if (!*reason)
                        *reason = g_strdup(error->message);
                return -EBADMSG;
        }

        *ret = v;
        return 0;
}

static int key_get_unsigned(GKeyFile *k, const char *key, bool required, uint64_t max, uint64_t *ret, char **reason) {
        g_autofree char *v = NULL;
        guint64 u;
        int r;

        if (!required && !g_key_file_has_key(k, HOLD_GROUP, key, NULL)) {
                *ret = 0;
                return 0;
        }

        r = key_get_string(k, key, true, &v, reason);
        if (r < 0)
                return r;

        /* Strict: decimal digits only, no sign, no spaces, within range. */
        if (!g_ascii_string_to_unsigned(v, 10, 0, max, &u, NULL)) {
                if (!*reason)
                        *reason = g_strdup_printf("%s=%s is not a number from 0 to %" PRIu64, key, v, max);
                return -EBADMSG;
        }

        *ret = u;
        return 0;
}

static Hold *hold_from_data(const char *data, size_t size, char **ret_reason) {
        g_autoptr(GKeyFile) k = g_key_file_new();
        g_autoptr(GError) error = NULL;
        _cleanup_(hold_freep) Hold *h = NULL;
        g_autofree char *mode = NULL, *scope = NULL, *reason = NULL;
        uint64_t uid = 0, pid = 0;
        const char *problem;

        if (!g_key_file_load_from_data(k, data, size, G_KEY_FILE_NONE, &error)) {
                *ret_reason = g_strdup_printf("not a key file: %s", error->message);
                return NULL;
        }
        if (!g_key_file_has_group(k, HOLD_GROUP)) {
                *ret_reason = g_strdup("no [" HOLD_GROUP "] group");
                return NULL;
        }

        h = hold_new();
        /* Replaced by the parsed value below. */
        g_clear_pointer(&h->description, g_free);

        if (key_get_string(k, "Resource", true, &h->resource, &reason) < 0 ||
            key_get_string(k, "Mode", true, &mode, &reason) < 0 ||
            key_get_string(k, "Scope", true, &scope, &reason) < 0 ||
            key_get_unsigned(k, "Token", true, UINT64_MAX, &h->token, &reason) < 0 ||
            key_get_unsigned(k, "UID", true, (uint64_t) UINT32_MAX - 1, &uid, &reason) < 0 ||
            key_get_unsigned(k, "PID", false, INT32_MAX, &pid, &reason) < 0 ||
            key_get_string(k, "Comm", false, &h->comm, &reason) < 0 ||
            key_get_string(k, "Sender", false, &h->sender, &reason) < 0 ||
            key_get_string(k, "BusID", false, &h->bus_id, &reason) < 0 ||
            key_get_unsigned(k, "Since", false, UINT64_MAX, &h->since_usec, &reason) < 0 ||
            key_get_unsigned(k, "Expires", false, UINT64_MAX, &h->expires_usec, &reason) < 0 ||
            key_get_unsigned(k, "TTL", false, UINT64_MAX, &h->ttl_usec, &reason) < 0 ||
            key_get_string(k, "Description", false, &h->description, &reason) < 0) {
                *ret_reason = TAKE_PTR(reason);
                return NULL;
        }

        h->uid = (uid_t) uid;
        h->pid = (pid_t) pid;

        h->mode = lock_mode_from_string(mode);
        if (h->mode < 0) {
                *ret_reason = g_strdup_printf("unknown Mode=%s", mode);
                return NULL;
        }
        h->scope = hold_scope_from_string(scope);
        if (h->scope < 0) {
                *ret_reason = g_strdup_printf("unknown Scope=%s", scope);
                return NULL;
        }

        problem = hold_check(h);
        if (problem) {
                *ret_reason = g_strdup(problem);
                return NULL;
        }

        return TAKE_PTR(h);
}

int store_parse_hold(const char *data, size_t size, const char *file_name, bool in_runtime_directory,
                     Hold **ret, char **ret_reason) {
        _cleanup_(hold_freep) Hold *h = NULL;
        g_autofree char *reason = NULL, *expected = NULL;
        int r;

        if ((!data && size > 0) || !ret)
                return -EINVAL;

        h = hold_from_data(strempty(data), size, &reason);
        if (!h)
                goto bad;

        /* A persistent hold in the runtime directory would be lost on reboot
         * although it promised not to be, and a connection hold in the lock
         * directory would survive one although it must not. */
        if (hold_is_persistent(h) == in_runtime_directory) {
                reason = g_strdup(in_runtime_directory ? "a persistent hold in the runtime directory"
                                                       : "a connection or fd hold in the lock directory");
                goto bad;
        }

        /* A file whose name does not match its contents would be missed by
         * store_remove_hold() and live forever. */
        if (file_name) {
                r = hold_file_name(h, &expected);
                if (r < 0)
                        return r;
                if (!streq(file_name, expected)) {
                        reason = g_strdup_printf("file name does not match its contents, expected '%s'", expected);
                        goto bad;
                }
        }

        *ret = TAKE_PTR(h);
        return 0;

bad:
        if (ret_reason)
                *ret_reason = TAKE_PTR(reason);
        return -EBADMSG;
}

/* Moves an invalid entry aside, keeping its name so a human can find it;
 * never fails the load. Renaming within the directory's fd never follows a
 * symlink: a symlink entry is moved as the link itself. */
static void quarantine(const char *dir_path, int dir_fd, const char *name, const char *reason) {
        g_autofree char *shown = g_strescape(name, NULL);
        g_autofree char *target = NULL, *shown_target = NULL;
        _cleanup_close_ int q_fd = -1;
        int r;

        if (mkdirat(dir_fd, QUARANTINE_DIRECTORY, 0700) < 0 && errno != EEXIST) {
                r = -errno;
                goto fail;
        }

        /* If ".quarantine" is not our directory (e.g. a symlink), nothing is
         * moved: a rename must never take a file out of the directory. */
        q_fd = openat(dir_fd, QUARANTINE_DIRECTORY, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (q_fd < 0) {
                r = -errno;
                goto fail;
        }

        r = -EEXIST;
        for (unsigned i = 0; i < UNIQUE_NAME_ATTEMPTS; i++) {
                struct stat st;

                replace_string(&target, i == 0 ? g_strdup(name) : g_strdup_printf("%s.%u", name, i));

                if (fstatat(q_fd, target, &st, AT_SYMLINK_NOFOLLOW) >= 0)
                        continue;
                if (errno != ENOENT) {
                        r = -errno;
                        goto fail;
                }

                /* Only this daemon (holding the flock) writes here, so the
                 * name is still free. */
                r = renameat(dir_fd, name, q_fd, target) < 0 ? -errno : 0;
                break;
        }
        if (r < 0)
                goto fail;

        shown_target = g_strescape(target, NULL);
        log_warning("Hold file '%s/%s' is invalid (%s), moved to '%s/" QUARANTINE_DIRECTORY "/%s'.",
                    dir_path, shown, reason, dir_path, shown_target);
        return;

fail:
        log_warning_errno(r, "Hold file '%s/%s' is invalid (%s) and could not be moved to '%s/" QUARANTINE_DIRECTORY "/': %m, ignoring it.",
                          dir_path, shown, reason, dir_path);
}

static bool stat_is_store_directory(const Store *s, const struct stat *st) {
        return S_ISDIR(st->st_mode) &&
                ((st->st_dev == s->lock_dev && st->st_ino == s->lock_ino) ||
                 (st->st_dev == s->runtime_dev && st->st_ino == s->runtime_ino));
}

/* Reads one directory entry. Returns NULL when it was loaded or is gone,
 * or the reason to quarantine it. An entry that exists but cannot be read
 * (permissions, I/O) sets *ret_error: skipping it could grant its lock a
 * second time, so the load fails instead. */
static char *load_entry(const Store *s, int dir_fd, const char *dir_path, bool is_lock_directory,
                        const char *name, GPtrArray *holds, int *ret_error) {
        _cleanup_(hold_freep) Hold *h = NULL;
        _cleanup_close_ int fd = -1;
        g_autofree char *data = NULL, *reason = NULL;
        struct stat st;
        size_t size;
        int r;

        if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                if (errno != ENOENT)
                        *ret_error = log_error_errno(errno, "Failed to stat '%s/%s': %m", dir_path, name);
                return NULL;
        }

        /* The other directory may be configured inside this one. */
        if (stat_is_store_directory(s, &st))
                return NULL;

        if (!S_ISREG(st.st_mode))
                return g_strdup("not a regular file");

        /* O_NONBLOCK: should it have been swapped for a FIFO since the stat,
         * open must not hang; O_NOFOLLOW: nor follow a symlink. */
        fd = openat(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                if (errno == ELOOP)
                        return g_strdup("not a regular file");
                if (errno != ENOENT)
                        *ret_error = log_error_errno(errno, "Failed to open '%s/%s': %m", dir_path, name);
                return NULL;
        }
        if (fstat(fd, &st) < 0) {
                *ret_error = log_error_errno(errno, "Failed to stat '%s/%s': %m", dir_path, name);
                return NULL;
        }
        if (!S_ISREG(st.st_mode))
                return g_strdup("not a regular file");

        r = read_full(fd, HOLD_FILE_MAX, &data, &size);
        if (r == -EFBIG)
                return g_strdup("larger than 64 KiB");
        if (r < 0) {
                /* An I/O error says nothing about the contents: keep the
                 * file, and do not pretend it is not there. */
                *ret_error = log_error_errno(r, "Failed to read '%s/%s': %m", dir_path, name);
                return NULL;
        }

        r = store_parse_hold(data, size, name, !is_lock_directory, &h, &reason);
        if (r == -EBADMSG)
                return TAKE_PTR(reason);
        if (r < 0) {
                log_warning_errno(r, "Failed to parse '%s/%s': %m, ignoring.", dir_path, name);
                return NULL;
        }

        g_ptr_array_add(holds, TAKE_PTR(h));
        return NULL;
}

static int load_directory(const Store *s, int dir_fd, const char *dir_path, bool is_lock_directory, GPtrArray *holds) {
        g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
        _cleanup_(closedirp) DIR *d = NULL;
        int fd;

        /* A fresh open file description: readdir() on a dup() would share
         * (and move) the offset of the store's own fd. */
        fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        d = fdopendir(fd);
        if (!d) {
                int r = -errno;
                close(fd);
                return r;
        }

        /* Collect first: quarantining renames entries while we iterate. */
        for (;;) {
                struct dirent *de;

                errno = 0;
                de = readdir(d);
                if (!de) {
                        if (errno != 0)
                                return -errno;
                        break;
                }

                if (g_str_has_prefix(de->d_name, TEMP_PREFIX)) {
                        /* Left by a write interrupted by a crash; only the
                         * daemon holding the flock writes here, and it is
                         * us. */
                        if (unlinkat(dir_fd, de->d_name, 0) >= 0)
                                log_debug("Removed stale temporary file '%s/%s'.", dir_path, de->d_name);
                        continue;
                }
                if (de->d_name[0] == '.')
                        continue;
                if (is_lock_directory && streq(de->d_name, TOKENS_FILE))
                        continue;

                g_ptr_array_add(names, g_strdup(de->d_name));
        }

        for (guint i = 0; i < names->len; i++) {
                const char *name = names->pdata[i];
                g_autofree char *reason = NULL;
                int error = 0;

                reason = load_entry(s, dir_fd, dir_path, is_lock_directory, name, holds, &error);
                if (error < 0)
                        return error;
                if (reason)
                        quarantine(dir_path, dir_fd, name, reason);
        }

        return 0;
}

static gint hold_compare_token(gconstpointer a, gconstpointer b) {
        const Hold *x = *(Hold *const *) a, *y = *(Hold *const *) b;

        return x->token < y->token ? -1 : x->token > y->token;
}

int store_load_holds(Store *s, GPtrArray **ret) {
        g_autoptr(GPtrArray) holds = NULL;
        int r;

        if (!s || !ret)
                return -EINVAL;

        holds = g_ptr_array_new_with_free_func(hold_destroy);

        r = load_directory(s, s->lock_fd, s->lock_directory, true, holds);
        if (r < 0)
                return r;
        r = load_directory(s, s->runtime_fd, s->runtime_directory, false, holds);
        if (r < 0)
                return r;

        g_ptr_array_sort(holds, hold_compare_token);

        *ret = TAKE_PTR(holds);
        return 0;
}

/* ---- token reservation ------------------------------------------------ */

int store_read_token_reservation(Store *s, uint64_t *ret) {
        g_autofree char *data = NULL;
        _cleanup_close_ int fd = -1;
        struct stat st;
        guint64 u;
        size_t size;
        int r;

        if (!s || !ret)
                return -EINVAL;

        fd = openat(s->lock_fd, TOKENS_FILE, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                if (errno == ENOENT) {
                        *ret = 0;
                        return 0;
                }
                /* A symlink is not a reservation we wrote. */
                return errno == ELOOP ? -EBADMSG : -errno;
        }
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADMSG;

        r = read_full(fd, TOKENS_FILE_MAX, &data, &size);
        if (r == -EFBIG)
                return -EBADMSG;
        if (r < 0)
                return r;

        /* Exactly what we write: digits and one newline. */
        if (size > 0 && data[size - 1] == '\n')
                data[--size] = '\0';
        if (strlen(data) != size)
                return -EBADMSG;
        if (!g_ascii_string_to_unsigned(data, 10, 0, UINT64_MAX, &u, NULL))
                return -EBADMSG;

        *ret = u;
        return 0;
}

int store_write_token_reservation(Store *s, uint64_t upto) {
        char data[TOKENS_FILE_MAX];
        int n, r;

        if (!s)
                return -EINVAL;

        n = snprintf(data, sizeof(data), "%" PRIu64 "\n", upto);
        if (n < 0 || (size_t) n >= sizeof(data))
                return -EINVAL;

        r = write_file_atomic(s->lock_fd, TOKENS_FILE, data, (size_t) n, true);
        if (r < 0)
                return r;

        r = fsync_directory(s->lock_fd);
        if (r < 0)
                return r;

        struct stat st;
        if (fstatat(s->lock_fd, TOKENS_FILE, &st, AT_SYMLINK_NOFOLLOW) >= 0) {
                s->tokens_dev = st.st_dev;
                s->tokens_ino = st.st_ino;
        }
        return 0;
}

bool store_token_reservation_intact(Store *s) {
        struct stat st;

        return fstatat(s->lock_fd, TOKENS_FILE, &st, AT_SYMLINK_NOFOLLOW) >= 0 &&
                st.st_dev == s->tokens_dev && st.st_ino == s->tokens_ino;
}
