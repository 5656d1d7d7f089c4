/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "fdstore.h"
#include "log.h"
#include "macro.h"

#define FDNAME_PREFIX "hold-"

int fdstore_push(uint64_t token, int fd) {
        char state[64];

        snprintf(state, sizeof(state), "FDSTORE=1\nFDNAME=" FDNAME_PREFIX "%" PRIu64, token);
        return sd_pid_notify_with_fds(0, false, state, &fd, 1);
}

void fdstore_remove(uint64_t token) {
        char state[64];
        int r;

        snprintf(state, sizeof(state), "FDSTOREREMOVE=1\nFDNAME=" FDNAME_PREFIX "%" PRIu64, token);
        r = sd_notify(false, state);
        if (r < 0)
                log_warning_errno(r, "Failed to remove the fd of token %" PRIu64 " from the fd store, ignoring: %m",
                                  token);
}

static int parse_token_name(const char *name, uint64_t *ret) {
        const char *digits;
        char *end;

        if (!name || !g_str_has_prefix(name, FDNAME_PREFIX))
                return -EINVAL;
        digits = name + strlen(FDNAME_PREFIX);
        if (!g_ascii_isdigit(*digits))
                return -EINVAL;
        errno = 0;
        *ret = strtoull(digits, &end, 10);
        if (errno != 0 || *end != '\0' || *ret == 0)
                return -EINVAL;
        return 0;
}

static void close_fd_value(gpointer p) {
        close(GPOINTER_TO_INT(p));
}

GHashTable *fdstore_take(void) {
        g_autoptr(GHashTable) fds = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, close_fd_value);
        char **names = NULL;
        int n;

        n = sd_listen_fds_with_names(/* unset_environment= */ true, &names);
        if (n < 0) {
                log_warning_errno(n, "Failed to read the fds passed by systemd, ignoring: %m");
                return g_steal_pointer(&fds);
        }

        for (int i = 0; i < n; i++) {
                int fd = SD_LISTEN_FDS_START + i;
                uint64_t token;

                if (parse_token_name(names ? names[i] : NULL, &token) < 0 ||
                    g_hash_table_contains(fds, &token)) {
                        log_warning("Closing an unexpected fd passed by systemd (%s).",
                                    names && names[i] ? names[i] : "unnamed");
                        close(fd);
                        continue;
                }
                g_hash_table_insert(fds, g_memdup2(&token, sizeof(token)), GINT_TO_POINTER(fd));
        }

        g_strfreev(names);
        return g_steal_pointer(&fds);
}
