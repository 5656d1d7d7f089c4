/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>

#include "log.h"
#include "macro.h"
#include "manager.h"
#include "settings.h"

/* A parser reads a value into the field it is given and returns 0, or
 * -EINVAL without logging and without changing the field. */
typedef int (*SettingParser)(const char *value, void *field);

typedef struct SettingInfo {
        const char *option;
        const char *key;
        const char *need;       /* "--OPTION= needs <need>, got 'VALUE'." */
        size_t offset;          /* of the field in Settings */
        SettingParser parse;
} SettingInfo;

static int parse_directory(const char *value, void *field) {
        char **ret = field;

        if (value[0] != '/')
                return -EINVAL;
        g_free(*ret);
        *ret = g_strdup(value);
        return 0;
}

/* A file the daemon reads (not checked here: settings_check() does, once
 * the last source has spoken). Absolute, as the daemon's working directory
 * is nobody's business; not a directory name. */
static int parse_file(const char *value, void *field) {
        char **ret = field;

        if (value[0] != '/' || g_str_has_suffix(value, "/"))
                return -EINVAL;
        g_free(*ret);
        *ret = g_strdup(value);
        return 0;
}

/* etcd's user name: anything printable (etcd itself takes any string). */
static int parse_etcd_user(const char *value, void *field) {
        char **ret = field;

        if (!*value || !g_utf8_validate(value, -1, NULL))
                return -EINVAL;
        for (const char *p = value; *p; p++)
                if ((unsigned char) *p < 0x20 || *p == 0x7f)
                        return -EINVAL;
        g_free(*ret);
        *ret = g_strdup(value);
        return 0;
}

/* Seconds with an optional fraction, e.g. "30" or "0.25", to µs. */
static int parse_seconds(const char *value, void *field) {
        uint64_t *ret = field, usec = 0, scale = 100000;
        unsigned long long sec;
        const char *p;
        char *end;

        if (!g_ascii_isdigit(value[0]))
                return -EINVAL;

        errno = 0;
        sec = strtoull(value, &end, 10);
        if (errno != 0 || sec > UINT64_MAX / 1000000U - 1)
                return -EINVAL;

        p = end;
        if (*p == '.') {
                p++;
                if (!g_ascii_isdigit(*p))
                        return -EINVAL;
                for (; g_ascii_isdigit(*p); p++) {
                        usec += (uint64_t) (*p - '0') * scale;
                        scale /= 10;
                }
        }
        if (*p != '\0')
                return -EINVAL;

        *ret = sec * 1000000U + usec;
        return 0;
}

static int parse_positive_seconds(const char *value, void *field) {
        uint64_t usec;
        int r;

        r = parse_seconds(value, &usec);
        if (r < 0 || usec == 0)
                return -EINVAL;
        *(uint64_t *) field = usec;
        return 0;
}

static int parse_unsigned(const char *value, void *field) {
        unsigned long n;
        char *end;

        if (!g_ascii_isdigit(value[0]))
                return -EINVAL;
        errno = 0;
        n = strtoul(value, &end, 10);
        if (errno != 0 || *end != '\0' || n > UINT_MAX)
                return -EINVAL;
        *(unsigned *) field = (unsigned) n;
        return 0;
}

static int parse_backend(const char *value, void *field) {
        bool *ret_is_etcd = field;

        if (streq(value, "directory"))
                *ret_is_etcd = false;
        else if (streq(value, "etcd"))
                *ret_is_etcd = true;
        else
                return -EINVAL;
        return 0;
}

/* URL[,URL...]: each http:// or https://HOST:PORT (the etcd client checks
 * them in full), separated by commas, spaces or both. */
static int parse_endpoints(const char *value, void *field) {
        g_auto(GStrv) parts = g_strsplit_set(value, ", \t", -1);
        g_autoptr(GPtrArray) list = g_ptr_array_new_with_free_func(g_free);
        char ***ret = field;

        for (char **e = parts; *e; e++) {
                if (!**e)
                        continue;
                if (!g_str_has_prefix(*e, "http://") && !g_str_has_prefix(*e, "https://"))
                        return -EINVAL;
                g_ptr_array_add(list, g_strdup(*e));
        }
        if (list->len == 0)
                return -EINVAL;
        g_ptr_array_add(list, NULL);

        g_strfreev(*ret);
        *ret = (char **) g_ptr_array_free(g_steal_pointer(&list), false);
        return 0;
}

/* A key prefix, as etcdctl shows it: "/lockbus". */
static int parse_etcd_prefix(const char *value, void *field) {
        size_t n = strlen(value);
        char **ret = field;

        if (value[0] != '/' || n < 2 || value[n - 1] == '/')
                return -EINVAL;
        g_free(*ret);
        *ret = g_strdup(value);
        return 0;
}

static const SettingInfo setting_table[_SETTING_MAX] = {
        [SETTING_LOCK_DIRECTORY] = {
                "lock-directory", "LockDirectory", "an absolute path",
                offsetof(Settings, lock_directory), parse_directory,
        },
        [SETTING_RUNTIME_DIRECTORY] = {
                "runtime-directory", "RuntimeDirectory", "an absolute path",
                offsetof(Settings, runtime_directory), parse_directory,
        },
        [SETTING_IDLE_TIMEOUT] = {
                "idle-timeout", "IdleTimeoutSec", "seconds (e.g. 30 or 0.5)",
                offsetof(Settings, idle_timeout_usec), parse_seconds,
        },
        [SETTING_MAX_LOCKS_PER_USER] = {
                "max-locks-per-user", "MaxLocksPerUser", "a non-negative integer",
                offsetof(Settings, max_locks_per_user), parse_unsigned,
        },
        [SETTING_MAX_WAITERS_PER_USER] = {
                "max-waiters-per-user", "MaxWaitersPerUser", "a non-negative integer",
                offsetof(Settings, max_waiters_per_user), parse_unsigned,
        },
        [SETTING_BACKEND] = {
                "backend", "Backend", "'directory' or 'etcd'",
                offsetof(Settings, backend_etcd), parse_backend,
        },
        [SETTING_ETCD_ENDPOINTS] = {
                "etcd-endpoints", "EtcdEndpoints", "http:// or https:// URLs, separated by commas or spaces",
                offsetof(Settings, etcd_endpoints), parse_endpoints,
        },
        [SETTING_ETCD_PREFIX] = {
                "etcd-prefix", "EtcdPrefix", "a path like /lockbus (no trailing /)",
                offsetof(Settings, etcd_prefix), parse_etcd_prefix,
        },
        [SETTING_ETCD_LEASE_TTL] = {
                "etcd-lease-ttl", "EtcdLeaseTTLSec", "seconds above 0 (e.g. 10 or 2.5)",
                offsetof(Settings, etcd_lease_ttl_usec), parse_positive_seconds,
        },
        [SETTING_ETCD_CA_FILE] = {
                "etcd-cafile", "EtcdCAFile", "an absolute file name",
                offsetof(Settings, etcd_ca_file), parse_file,
        },
        [SETTING_ETCD_CERT_FILE] = {
                "etcd-certfile", "EtcdCertFile", "an absolute file name",
                offsetof(Settings, etcd_cert_file), parse_file,
        },
        [SETTING_ETCD_KEY_FILE] = {
                "etcd-keyfile", "EtcdKeyFile", "an absolute file name",
                offsetof(Settings, etcd_key_file), parse_file,
        },
        [SETTING_ETCD_USER] = {
                "etcd-user", "EtcdUser", "a user name without control characters",
                offsetof(Settings, etcd_user), parse_etcd_user,
        },
        [SETTING_ETCD_PASSWORD_FILE] = {
                "etcd-password-file", "EtcdPasswordFile", "an absolute file name",
                offsetof(Settings, etcd_password_file), parse_file,
        },
};

void settings_init(Settings *s) {
        *s = (Settings) {
                .idle_timeout_usec = DEFAULT_IDLE_TIMEOUT_USEC,
                .max_locks_per_user = DEFAULT_MAX_LOCKS_PER_USER,
                .max_waiters_per_user = DEFAULT_MAX_WAITERS_PER_USER,
                .etcd_lease_ttl_usec = DEFAULT_ETCD_LEASE_TTL_USEC,
        };
}

void settings_done(Settings *s) {
        g_free(s->lock_directory);
        g_free(s->runtime_directory);
        g_strfreev(s->etcd_endpoints);
        g_free(s->etcd_prefix);
        g_free(s->etcd_ca_file);
        g_free(s->etcd_cert_file);
        g_free(s->etcd_key_file);
        g_free(s->etcd_user);
        g_free(s->etcd_password_file);
        settings_init(s);
}

/* An empty value in a file: the built-in default again. */
static void settings_reset(Settings *s, Setting id) {
        Settings defaults;

        settings_init(&defaults);
        switch (id) {
        case SETTING_LOCK_DIRECTORY:
                g_clear_pointer(&s->lock_directory, g_free);
                break;
        case SETTING_RUNTIME_DIRECTORY:
                g_clear_pointer(&s->runtime_directory, g_free);
                break;
        case SETTING_IDLE_TIMEOUT:
                s->idle_timeout_usec = defaults.idle_timeout_usec;
                break;
        case SETTING_MAX_LOCKS_PER_USER:
                s->max_locks_per_user = defaults.max_locks_per_user;
                break;
        case SETTING_MAX_WAITERS_PER_USER:
                s->max_waiters_per_user = defaults.max_waiters_per_user;
                break;
        case SETTING_BACKEND:
                s->backend_etcd = defaults.backend_etcd;
                break;
        case SETTING_ETCD_ENDPOINTS:
                g_clear_pointer(&s->etcd_endpoints, g_strfreev);
                break;
        case SETTING_ETCD_PREFIX:
                g_clear_pointer(&s->etcd_prefix, g_free);
                break;
        case SETTING_ETCD_LEASE_TTL:
                s->etcd_lease_ttl_usec = defaults.etcd_lease_ttl_usec;
                break;
        case SETTING_ETCD_CA_FILE:
                g_clear_pointer(&s->etcd_ca_file, g_free);
                break;
        case SETTING_ETCD_CERT_FILE:
                g_clear_pointer(&s->etcd_cert_file, g_free);
                break;
        case SETTING_ETCD_KEY_FILE:
                g_clear_pointer(&s->etcd_key_file, g_free);
                break;
        case SETTING_ETCD_USER:
                g_clear_pointer(&s->etcd_user, g_free);
                break;
        case SETTING_ETCD_PASSWORD_FILE:
                g_clear_pointer(&s->etcd_password_file, g_free);
                break;
        default:
                g_assert_not_reached();
        }
}

const char *setting_option(Setting id) {
        return id >= 0 && id < _SETTING_MAX ? setting_table[id].option : NULL;
}

const char *setting_key(Setting id) {
        return id >= 0 && id < _SETTING_MAX ? setting_table[id].key : NULL;
}

int setting_from_key(const char *key) {
        for (Setting id = 0; id < _SETTING_MAX; id++)
                if (streq(setting_table[id].key, key))
                        return id;
        return -1;
}

static int setting_parse(Settings *s, Setting id, const char *value) {
        g_assert(id >= 0 && id < _SETTING_MAX);
        return setting_table[id].parse(value, (char *) s + setting_table[id].offset);
}

int settings_set_option(Settings *s, Setting id, const char *value) {
        if (setting_parse(s, id, strempty(value)) < 0)
                return log_error_errno(EINVAL, "--%s= needs %s, got '%s'.",
                                       setting_table[id].option, setting_table[id].need, strempty(value));
        return 0;
}

/* The whole file, or a negative errno: -ENOENT when it does not exist. */
static int read_config_file(const char *path, char **ret, size_t *ret_size) {
        g_autoptr(GString) data = g_string_new(NULL);
        _cleanup_close_ int fd = -1;
        struct stat st;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (S_ISDIR(st.st_mode))
                return -EISDIR;

        for (;;) {
                char buf[4096];
                ssize_t n = read(fd, buf, sizeof(buf));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        break;
                g_string_append_len(data, buf, n);
        }
        *ret_size = data->len;
        *ret = g_string_free(g_steal_pointer(&data), false);
        return 0;
}

/* One file: 0, or -ENOENT (not logged) when it does not exist, or another
 * negative errno after logging. */
static int settings_load_one(Settings *s, const char *path) {
        g_autoptr(GKeyFile) file = g_key_file_new();
        g_autoptr(GError) error = NULL;
        g_auto(GStrv) groups = NULL;
        g_autofree char *data = NULL;
        size_t size;
        int r;

        r = read_config_file(path, &data, &size);
        if (r == -ENOENT)
                return r;
        if (r < 0)
                return log_error_errno(r, "Failed to read configuration file %s: %m", path);
        if (!g_key_file_load_from_data(file, data, size, G_KEY_FILE_NONE, &error))
                return log_error_errno(EINVAL, "Failed to parse configuration file %s: %s", path, error->message);

        groups = g_key_file_get_groups(file, NULL);
        for (char **g = groups; *g; g++) {
                g_auto(GStrv) keys = NULL;

                if (!streq(*g, SETTINGS_GROUP)) {
                        log_warning("%s: Unknown section [%s], ignoring.", path, *g);
                        continue;
                }

                keys = g_key_file_get_keys(file, *g, NULL, NULL);
                for (char **k = keys; k && *k; k++) {
                        g_autoptr(GError) value_error = NULL;
                        g_autofree char *value = NULL;
                        int id = setting_from_key(*k);

                        if (id < 0) {
                                log_warning("%s: Unknown key %s= in section [%s], ignoring.", path, *k, *g);
                                continue;
                        }

                        /* GKeyFile's escapes (\s, \n, \t, \r, \\) are
                         * processed; a bad one sets the error but still
                         * returns a value. */
                        value = g_key_file_get_string(file, *g, *k, &value_error);
                        if (!value || value_error) {
                                g_autofree char *raw = g_key_file_get_value(file, *g, *k, NULL);

                                return log_error_errno(EINVAL, "%s: %s= needs UTF-8 text with valid \\ escapes, "
                                                       "got '%s'.", path, *k, strempty(raw));
                        }
                        /* GKeyFile drops the blanks before a value, not
                         * those after it; systemd drops both. */
                        g_strchomp(value);
                        if (!*value) {
                                settings_reset(s, id);
                                continue;
                        }
                        if (setting_parse(s, id, value) < 0)
                                return log_error_errno(EINVAL, "%s: %s= needs %s, got '%s'.", path, *k,
                                                       setting_table[id].need, value);
                }
        }
        return 0;
}

static gint compare_names(gconstpointer a, gconstpointer b) {
        return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/* The names of the drop-ins in dir, sorted: files ending in ".conf" whose
 * names do not start with ".". NULL with -ENOENT when dir does not exist. */
static int list_drop_ins(const char *dir, GPtrArray **ret) {
        g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(GError) error = NULL;
        g_autoptr(GDir) d = NULL;
        const char *name;

        d = g_dir_open(dir, 0, &error);
        if (!d) {
                if (g_error_matches(error, G_FILE_ERROR, G_FILE_ERROR_NOENT))
                        return -ENOENT;
                return log_error_errno(EIO, "Failed to open configuration directory %s: %s", dir, error->message);
        }

        while ((name = g_dir_read_name(d)))
                if (name[0] != '.' && g_str_has_suffix(name, ".conf"))
                        g_ptr_array_add(names, g_strdup(name));
        g_ptr_array_sort(names, compare_names);
        *ret = g_steal_pointer(&names);
        return 0;
}

int settings_load_file(Settings *s, const char *path, bool required) {
        g_autoptr(GPtrArray) drop_ins = NULL;
        g_autofree char *dir = NULL;
        int r;

        r = settings_load_one(s, path);
        if (r == -ENOENT) {
                if (required)
                        return log_error_errno(r, "Failed to read configuration file %s: %m", path);
                log_debug("No configuration file %s, using the defaults.", path);
        } else if (r < 0)
                return r;

        dir = g_strconcat(path, ".d", NULL);
        r = list_drop_ins(dir, &drop_ins);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return r;

        for (unsigned i = 0; i < drop_ins->len; i++) {
                g_autofree char *p = g_build_filename(dir, drop_ins->pdata[i], NULL);

                r = settings_load_one(s, p);
                if (r == -ENOENT)
                        continue;       /* removed meanwhile */
                if (r < 0)
                        return r;
        }
        return 0;
}

char *settings_default_config_file(bool user) {
        if (user)
                return g_build_filename(g_get_user_config_dir(), "lockbus", "lockbusd.conf", NULL);
        return g_strdup(SETTINGS_SYSTEM_CONFIG_FILE);
}

/* The value of a file setting, NULL if unset. */
static const char *settings_file(const Settings *s, Setting id) {
        return *(char *const *) ((const char *) s + setting_table[id].offset);
}

/* Read now, to say which file is wrong before anything starts, not at the
 * first connection to etcd. */
static int check_file_readable(Setting id, const char *path) {
        _cleanup_close_ int fd = -1;
        struct stat st;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0 || fstat(fd, &st) < 0)
                return log_error_errno(errno, "--%s= (%s=): cannot read %s: %m",
                                       setting_table[id].option, setting_table[id].key, path);
        if (S_ISDIR(st.st_mode))
                return log_error_errno(EISDIR, "--%s= (%s=): cannot read %s: %m",
                                       setting_table[id].option, setting_table[id].key, path);
        return 0;
}

static bool endpoints_have_https(char *const *endpoints) {
        for (char *const *e = endpoints; e && *e; e++)
                if (g_str_has_prefix(*e, "https://"))
                        return true;
        return false;
}

static int settings_check_tls(const Settings *s) {
        static const Setting files[] = { SETTING_ETCD_CA_FILE, SETTING_ETCD_CERT_FILE, SETTING_ETCD_KEY_FILE };
        int r;

        if (s->etcd_cert_file && !s->etcd_key_file)
                return log_error_errno(EINVAL, "--etcd-certfile= (EtcdCertFile=) needs its key, "
                                       "--etcd-keyfile= (EtcdKeyFile=).");
        if (!s->etcd_cert_file && s->etcd_key_file)
                return log_error_errno(EINVAL, "--etcd-keyfile= (EtcdKeyFile=) needs its certificate, "
                                       "--etcd-certfile= (EtcdCertFile=).");

        for (size_t i = 0; i < G_N_ELEMENTS(files); i++) {
                const char *path = settings_file(s, files[i]);

                if (!path)
                        continue;
                if (!s->backend_etcd)
                        return log_error_errno(EINVAL, "--%s= (%s=) is for --backend=etcd (Backend=etcd).",
                                               setting_table[files[i]].option, setting_table[files[i]].key);
                /* Over http:// it would all go unencrypted: say so. */
                if (!endpoints_have_https(s->etcd_endpoints))
                        return log_error_errno(EINVAL, "--%s= (%s=) is for https:// endpoints; "
                                               "--etcd-endpoints= (EtcdEndpoints=) has none.",
                                               setting_table[files[i]].option, setting_table[files[i]].key);
                r = check_file_readable(files[i], path);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int settings_check_auth(const Settings *s) {
        if (s->etcd_user && !s->etcd_password_file)
                return log_error_errno(EINVAL, "--etcd-user= (EtcdUser=) needs its password, "
                                       "--etcd-password-file= (EtcdPasswordFile=).");
        if (!s->etcd_user && s->etcd_password_file)
                return log_error_errno(EINVAL, "--etcd-password-file= (EtcdPasswordFile=) needs its user, "
                                       "--etcd-user= (EtcdUser=).");
        if (!s->etcd_user)
                return 0;
        if (!s->backend_etcd)
                return log_error_errno(EINVAL, "--etcd-user= (EtcdUser=) is for --backend=etcd (Backend=etcd).");
        return check_file_readable(SETTING_ETCD_PASSWORD_FILE, s->etcd_password_file);
}

int settings_check(const Settings *s) {
        int r;

        if (s->backend_etcd && !s->etcd_endpoints)
                return log_error_errno(EINVAL, "--backend=etcd (Backend=etcd) needs --etcd-endpoints= (EtcdEndpoints=).");
        if (!s->backend_etcd && s->etcd_endpoints)
                return log_error_errno(EINVAL, "--etcd-endpoints= (EtcdEndpoints=) is for --backend=etcd (Backend=etcd).");
        r = settings_check_tls(s);
        if (r < 0)
                return r;
        return settings_check_auth(s);
}

int settings_read_etcd_password(const Settings *s, char **ret) {
        const char *path = s->etcd_password_file;
        _cleanup_close_ int fd = -1;
        char buf[4096 + 1];
        size_t size = 0;
        ssize_t n;

        if (!path) {
                *ret = NULL;
                return 0;
        }

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return log_error_errno(errno, "--etcd-password-file= (EtcdPasswordFile=): cannot read %s: %m", path);
        /* A password is short: more than buf holds is not one. */
        while (size < sizeof(buf) && (n = read(fd, buf + size, sizeof(buf) - size)) != 0) {
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        explicit_bzero(buf, sizeof(buf));
                        return log_error_errno(errno, "--etcd-password-file= (EtcdPasswordFile=): "
                                               "cannot read %s: %m", path);
                }
                size += (size_t) n;
        }

        /* One line, as `echo secret > FILE` writes it. */
        if (size > 0 && size < sizeof(buf) && buf[size - 1] == '\n')
                size--;
        if (size == 0 || size >= sizeof(buf) || memchr(buf, '\0', size) || memchr(buf, '\n', size)) {
                explicit_bzero(buf, sizeof(buf));
                return log_error_errno(EINVAL, "--etcd-password-file= (EtcdPasswordFile=): %s must hold the "
                                       "password on one line of at most %zu bytes, and it %s.", path,
                                       sizeof(buf) - 2, size == 0 ? "is empty" : "does not");
        }

        *ret = g_strndup(buf, size);
        explicit_bzero(buf, sizeof(buf));
        return 0;
}
