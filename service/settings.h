/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* lockbusd's settings (all but --system/--user and --config=, which stay on
 * the command line) and their two sources: the configuration file and the
 * command line.
 *
 * One table names every setting twice, as a long option and as a key of
 * the file's [Daemon] group (the mapping is setting_option() ↔
 * setting_key(); lockbusd(8), CONFIGURATION FILE), and holds its one parse
 * function, so both sources accept exactly the same values and reject the
 * same ones with the same words:
 *   --idle-timeout= needs seconds (e.g. 30 or 0.5), got 'soon'.
 *   /etc/lockbus/lockbusd.conf: IdleTimeoutSec= needs seconds (e.g. 30 or 0.5), got 'soon'.
 *
 * The order, each later source winning per setting: built-in defaults,
 * the file, its drop-ins (FILE.d/ *.conf, in strcmp() order of their names),
 * the command line. In a file:
 *   - blanks around a value are dropped;
 *   - an empty value (Key=) restores the built-in default (systemd's habit:
 *     a drop-in can undo the main file);
 *   - the last assignment of a key wins, also for EtcdEndpoints= (lists
 *     are replaced, not appended to);
 *   - an unknown key or section is a warning naming the file and the key
 *     (or section), and is ignored, so that an older lockbusd starts with a
 *     newer file;
 *   - a bad value, a syntax error or a file that cannot be read is an
 *     error naming the file (and the key and value): the caller starts
 *     nothing.
 * Directories left NULL are filled in later by the caller (they depend on
 * --user and the environment). Nothing here knows of the bus. */

#include <stdbool.h>
#include <stdint.h>

/* The default configuration file of the system daemon; with --user it is
 * $XDG_CONFIG_HOME/lockbus/lockbusd.conf (settings_default_config_file()). */
#define SETTINGS_SYSTEM_CONFIG_FILE "/etc/lockbus/lockbusd.conf"
/* The group of the file that holds the keys. */
#define SETTINGS_GROUP "Daemon"

typedef enum Setting {
        SETTING_LOCK_DIRECTORY,         /* --lock-directory=      LockDirectory= */
        SETTING_RUNTIME_DIRECTORY,      /* --runtime-directory=   RuntimeDirectory= */
        SETTING_IDLE_TIMEOUT,           /* --idle-timeout=        IdleTimeoutSec= */
        SETTING_MAX_LOCKS_PER_USER,     /* --max-locks-per-user=  MaxLocksPerUser= */
        SETTING_MAX_WAITERS_PER_USER,   /* --max-waiters-per-user= MaxWaitersPerUser= */
        SETTING_BACKEND,                /* --backend=             Backend= */
        SETTING_ETCD_ENDPOINTS,         /* --etcd-endpoints=      EtcdEndpoints= */
        SETTING_ETCD_PREFIX,            /* --etcd-prefix=         EtcdPrefix= */
        SETTING_ETCD_LEASE_TTL,         /* --etcd-lease-ttl=      EtcdLeaseTTLSec= */
        SETTING_ETCD_CA_FILE,           /* --etcd-cafile=         EtcdCAFile= */
        SETTING_ETCD_CERT_FILE,         /* --etcd-certfile=       EtcdCertFile= */
        SETTING_ETCD_KEY_FILE,          /* --etcd-keyfile=        EtcdKeyFile= */
        SETTING_ETCD_USER,              /* --etcd-user=           EtcdUser= */
        SETTING_ETCD_PASSWORD_FILE,     /* --etcd-password-file=  EtcdPasswordFile= */
        _SETTING_MAX,
} Setting;

typedef struct Settings {
        char *lock_directory;           /* NULL: the default of the bus type */
        char *runtime_directory;        /* NULL: the default of the bus type */
        uint64_t idle_timeout_usec;     /* 0: never */
        unsigned max_locks_per_user;
        unsigned max_waiters_per_user;
        bool backend_etcd;
        char **etcd_endpoints;          /* NULL: none */
        char *etcd_prefix;              /* NULL: DEFAULT_ETCD_PREFIX */
        uint64_t etcd_lease_ttl_usec;
        char *etcd_ca_file;             /* NULL: the system's CA store */
        char *etcd_cert_file;           /* NULL: no client certificate */
        char *etcd_key_file;            /* NULL: none (with etcd_cert_file) */
        char *etcd_user;                /* NULL: no authentication */
        char *etcd_password_file;       /* NULL: none (with etcd_user); never the password itself */
} Settings;

/* The built-in defaults. */
void settings_init(Settings *s);
void settings_done(Settings *s);

/* "idle-timeout" and "IdleTimeoutSec"; NULL for an id out of range. */
const char *setting_option(Setting id);
const char *setting_key(Setting id);
/* The setting of a key, -1 if there is none. */
int setting_from_key(const char *key);

/* A value of the command line (--OPTION=value). On a bad value logs
 * "--OPTION= needs …, got 'value'." and returns -EINVAL, leaving s as it
 * was. */
int settings_set_option(Settings *s, Setting id, const char *value);

/* Reads the file at `path`, then the drop-ins in `path`.d/, into s (see
 * above). A missing file is no error unless `required` (--config=); a
 * missing drop-in directory never is. Returns 0, or a negative errno after
 * logging the error; s may then have taken some values. */
int settings_load_file(Settings *s, const char *path, bool required);

/* SETTINGS_SYSTEM_CONFIG_FILE, or for the user daemon
 * $XDG_CONFIG_HOME/lockbus/lockbusd.conf. */
char *settings_default_config_file(bool user);

/* The rules across settings, once every source is read: the etcd backend
 * needs endpoints, and endpoints and the TLS files need the etcd backend;
 * the client certificate and its key go together; the TLS files need an
 * https:// endpoint and must be readable files now; the etcd user and its
 * password file go together, need the etcd backend, and the file must be
 * readable now. Logs and returns a negative errno (-EINVAL, or why a file
 * cannot be read) when one is broken. */
int settings_check(const Settings *s);

/* The password in the password file (NULL if none is set): its one line,
 * without the trailing newline. Logs naming the file (never what it holds)
 * and returns a negative errno if it cannot be read or is empty. The caller
 * erases it (explicit_bzero()) before freeing it. */
int settings_read_etcd_password(const Settings *s, char **ret);
