/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "test-bus.h"
#include "test-fdstore.h"

struct TestFdStore {
        char *path;
        int socket_fd;
        GHashTable *fds;                /* name → fd (GINT_TO_POINTER) */
        GPtrArray *lines;               /* every line of every message, in order */
};

static void close_fd_value(gpointer p) {
        close(GPOINTER_TO_INT(p));
}

TestFdStore *test_fdstore_new(const char *dir) {
        TestFdStore *s = g_new0(TestFdStore, 1);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        s->path = g_build_filename(dir, "notify.sock", NULL);
        g_assert_cmpuint(strlen(s->path), <, sizeof(sa.sun_path));
        strcpy(sa.sun_path, s->path);
        s->socket_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        g_assert_cmpint(s->socket_fd, >=, 0);
        g_assert_cmpint(bind(s->socket_fd, (struct sockaddr *) &sa, sizeof(sa)), ==, 0);
        /* The daemon may run as another user. */
        g_assert_cmpint(chmod(s->path, 0666), ==, 0);
        s->fds = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, close_fd_value);
        s->lines = g_ptr_array_new_with_free_func(g_free);
        return s;
}

void test_fdstore_free(TestFdStore *s) {
        if (!s)
                return;
        g_hash_table_destroy(s->fds);
        g_ptr_array_unref(s->lines);
        close(s->socket_fd);
        (void) unlink(s->path);
        g_free(s->path);
        g_free(s);
}

/* One message's "KEY=value" lines: the value of key, or NULL. */
static char *message_value(char **lines, const char *key) {
        size_t n = strlen(key);

        for (char **l = lines; *l; l++)
                if (strncmp(*l, key, n) == 0 && (*l)[n] == '=')
                        return *l + n + 1;
        return NULL;
}

/* Handles one datagram; false when none is queued. */
static bool read_one(TestFdStore *s) {
        char buf[4096];
        union {
                struct cmsghdr header;
                char space[CMSG_SPACE(sizeof(int) * 16)];
        } control = {};
        struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) - 1 };
        struct msghdr msg = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = &control,
                .msg_controllen = sizeof(control),
        };
        g_autoptr(GArray) fds = g_array_new(false, false, sizeof(int));
        g_auto(GStrv) lines = NULL;
        const char *name;
        ssize_t n;

        n = recvmsg(s->socket_fd, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EAGAIN)
                return false;
        if (n < 0)
                g_error("recvmsg on %s: %s", s->path, g_strerror(errno));
        g_assert_false(msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC));
        buf[n] = '\0';

        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
                        g_array_append_vals(fds, CMSG_DATA(c), (c->cmsg_len - CMSG_LEN(0)) / sizeof(int));

        lines = g_strsplit(buf, "\n", -1);
        for (char **l = lines; *l; l++)
                g_ptr_array_add(s->lines, g_strdup(*l));
        name = message_value(lines, "FDNAME");
        if (message_value(lines, "FDSTORE") && name && fds->len == 1) {
                g_hash_table_replace(s->fds, g_strdup(name), GINT_TO_POINTER(g_array_index(fds, int, 0)));
                return true;
        }
        if (message_value(lines, "FDSTOREREMOVE") && name)
                g_hash_table_remove(s->fds, name);
        for (guint i = 0; i < fds->len; i++)
                close(g_array_index(fds, int, i));
        return true;
}

void test_fdstore_sync(TestFdStore *s) {
        while (read_one(s))
                ;
}

void test_fdstore_wait_count(TestFdStore *s, unsigned n, uint64_t timeout_usec) {
        uint64_t deadline = test_now_monotonic() + timeout_usec;

        for (;;) {
                test_fdstore_sync(s);
                if (test_fdstore_count(s) == n)
                        return;
                if (!test_wait_readable(s->socket_fd, deadline))
                        g_error("The fd store holds %u fds, not %u", test_fdstore_count(s), n);
        }
}

void test_fdstore_wait_line(TestFdStore *s, const char *line, uint64_t timeout_usec) {
        uint64_t deadline = test_now_monotonic() + timeout_usec;

        for (;;) {
                test_fdstore_sync(s);
                for (guint i = 0; i < s->lines->len; i++)
                        if (g_str_equal(s->lines->pdata[i], line))
                                return;
                if (!test_wait_readable(s->socket_fd, deadline))
                        g_error("No message with the line '%s' came to %s", line, s->path);
        }
}

unsigned test_fdstore_count(const TestFdStore *s) {
        return g_hash_table_size(s->fds);
}

bool test_fdstore_has(const TestFdStore *s, const char *name) {
        return g_hash_table_contains(s->fds, name);
}

char **test_fdstore_wrapper(const TestFdStore *s, int ret_fds[2]) {
        g_autoptr(GStrvBuilder) builder = g_strv_builder_new();
        g_autoptr(GString) names = g_string_new(NULL);
        g_autofree char *notify = NULL, *listen_fds = NULL, *listen_names = NULL;
        GHashTableIter iter;
        gpointer name, fd;
        unsigned n = 0;

        ret_fds[0] = ret_fds[1] = -1;
        g_hash_table_iter_init(&iter, s->fds);
        while (g_hash_table_iter_next(&iter, &name, &fd)) {
                g_assert_cmpuint(n, <, 2);
                ret_fds[n++] = GPOINTER_TO_INT(fd);
                g_string_append_printf(names, "%s%s", names->len > 0 ? ":" : "", (const char *) name);
        }

        /* LISTEN_PID is the PID the daemon will have: the shell's, as it
         * execs the rest. */
        notify = g_strconcat("NOTIFY_SOCKET=", s->path, NULL);
        g_strv_builder_add_many(builder, "/bin/sh", "-c", "export LISTEN_PID=$$; exec \"$@\"", "sh", "env", notify,
                                NULL);
        if (n > 0) {
                listen_fds = g_strdup_printf("LISTEN_FDS=%u", n);
                listen_names = g_strconcat("LISTEN_FDNAMES=", names->str, NULL);
                g_strv_builder_add_many(builder, listen_fds, listen_names, NULL);
        }
        return g_strv_builder_end(builder);
}
