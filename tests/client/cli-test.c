/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli-test.h"

/* --- lockbusctl processes --------------------------------------------------- */

/* The lockbusctl to run as `uid`. Another uid may not reach the build tree
 * (a clone below /root): it runs a copy in the test bus's directory (0755),
 * beside a copy of the library (found there through its RUNPATH $ORIGIN). */
static char *ctl_path_for(TestBus *b, uid_t uid) {
        g_autofree char *dir = NULL, *library = NULL;
        char *ctl;

        if (uid == 0 || uid == geteuid())
                return g_strdup(test_getenv_required("LOCKBUS_CTL"));

        dir = g_build_filename(b->dir, "bin", NULL);
        ctl = g_build_filename(dir, "lockbusctl", NULL);
        if (g_file_test(ctl, G_FILE_TEST_EXISTS))
                return ctl;
        g_assert_cmpint(mkdir(dir, 0755), ==, 0);
        library = g_build_filename(dir, "liblockbus.so.1", NULL);
        test_copy_file(test_getenv_required("LOCKBUS_LIBRARY"), library, 0755);
        test_copy_file(test_getenv_required("LOCKBUS_CTL"), ctl, 0755);
        return ctl;
}

static char **cli_environ(TestBus *b, const CliSpawn *s) {
        char **env = g_get_environ();

        env = g_environ_setenv(env, "DBUS_SYSTEM_BUS_ADDRESS", b->address, true);
        env = g_environ_setenv(env, "TZ", "UTC", true);
        env = g_environ_unsetenv(env, "DBUS_SESSION_BUS_ADDRESS");
        env = g_environ_unsetenv(env, "SYSTEMD_PAGER");
        env = g_environ_unsetenv(env, "PAGER");
        for (const char *const *e = s ? s->env : NULL; e && *e; e++) {
                const char *eq = strchr(*e, '=');

                if (eq) {
                        g_autofree char *name = g_strndup(*e, eq - *e);

                        env = g_environ_setenv(env, name, eq + 1, true);
                } else
                        env = g_environ_unsetenv(env, *e);
        }
        return env;
}

CliProcess *cli_start(TestBus *b, const CliSpawn *s, const char *const *argv) {
        static const CliSpawn defaults = { .leak_fd = -1 };
        g_autofree char *ctl = NULL;
        g_auto(GStrv) env = NULL;
        g_autoptr(GPtrArray) args = g_ptr_array_new();
        int in[2] = { -1, -1 }, out[2], err[2];
        CliProcess *p;

        if (!s)
                s = &defaults;
        ctl = ctl_path_for(b, s->uid);
        env = cli_environ(b, s);
        g_ptr_array_add(args, ctl);
        for (const char *const *a = argv; *a; a++)
                g_ptr_array_add(args, (char *) *a);
        g_ptr_array_add(args, NULL);

        g_assert_cmpint(pipe2(out, O_CLOEXEC), ==, 0);
        g_assert_cmpint(pipe2(err, O_CLOEXEC), ==, 0);
        if (s->keep_stdin)
                g_assert_cmpint(pipe2(in, O_CLOEXEC), ==, 0);

        p = g_new0(CliProcess, 1);
        p->out = g_string_new(NULL);
        p->err = g_string_new(NULL);
        p->in_fd = -1;

        p->pid = test_fork(&(TestChild) {
                .pgid = b->bus_pid,
                .stdin_fd = in[0],
                .stdout_fd = out[1],
                .stderr_fd = err[1],
        });
        if (p->pid == 0) {
                if (s->leak_fd >= 3) {
                        int null = open("/dev/null", O_RDONLY);

                        if (null < 0 || (null != s->leak_fd && (dup2(null, s->leak_fd) < 0 || close(null) < 0)))
                                _exit(127);
                }
                if (s->uid != 0 && test_become_uid(s->uid) < 0)
                        _exit(127);
                execve(ctl, (char **) args->pdata, env);
                _exit(127);
        }
        close(out[1]);
        close(err[1]);
        p->out_fd = out[0];
        p->err_fd = err[0];
        if (s->keep_stdin) {
                close(in[0]);
                p->in_fd = in[1];
        }
        p->pidfd = test_pidfd_open(p->pid);
        g_assert_cmpint(p->pidfd, >=, 0);
        return p;
}

/* One round: waits (until deadline) for output, reads what is there. */
static void cli_process_pump(CliProcess *p, uint64_t deadline, const char *what) {
        struct pollfd fds[2];
        int *which[2];
        GString *into[2];
        int n = 0, r;

        if (p->out_fd >= 0) {
                fds[n] = (struct pollfd) { .fd = p->out_fd, .events = POLLIN };
                which[n] = &p->out_fd;
                into[n++] = p->out;
        }
        if (p->err_fd >= 0) {
                fds[n] = (struct pollfd) { .fd = p->err_fd, .events = POLLIN };
                which[n] = &p->err_fd;
                into[n++] = p->err;
        }
        if (n == 0)
                return;

        r = poll(fds, n, test_remaining_msec(deadline, what));
        if (r < 0 && errno == EINTR)
                return;
        g_assert_cmpint(r, >=, 0);
        for (int i = 0; i < n; i++) {
                char buf[4096];
                ssize_t k;

                if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                        continue;
                k = read(*which[i], buf, sizeof(buf));
                if (k < 0 && errno == EINTR)
                        continue;
                g_assert_cmpint(k, >=, 0);
                if (k == 0) {
                        close(*which[i]);
                        *which[i] = -1;
                        continue;
                }
                g_string_append_len(into[i], buf, k);
        }
}

char *cli_process_read_line(CliProcess *p) {
        uint64_t deadline = test_now_monotonic() + TEST_TIMEOUT_USEC;

        for (;;) {
                const char *start = p->out->str + p->out_read;
                const char *nl = strchr(start, '\n');

                if (nl) {
                        char *line = g_strndup(start, nl - start);

                        p->out_read = (size_t) (nl - p->out->str) + 1;
                        return line;
                }
                if (p->out_fd < 0)
                        g_error("lockbusctl (pid %d) closed stdout before a line; stdout: \"%s\", stderr: \"%s\"",
                                (int) p->pid, p->out->str, p->err->str);
                cli_process_pump(p, deadline, "a line from lockbusctl");
        }
}

void cli_process_wait_stderr(CliProcess *p, const char *needle) {
        uint64_t deadline = test_now_monotonic() + TEST_TIMEOUT_USEC;
        g_autofree char *what = g_strdup_printf("\"%s\" on the stderr of lockbusctl", needle);

        while (!strstr(p->err->str, needle)) {
                if (p->err_fd < 0)
                        g_error("lockbusctl (pid %d) closed stderr without \"%s\"; stderr: \"%s\"",
                                (int) p->pid, needle, p->err->str);
                cli_process_pump(p, deadline, what);
        }
}

void cli_process_close_stdin(CliProcess *p) {
        g_assert_cmpint(p->in_fd, >=, 0);
        close(p->in_fd);
        p->in_fd = -1;
}

int cli_process_wait_status(CliProcess *p) {
        uint64_t deadline = test_now_monotonic() + TEST_TIMEOUT_USEC;

        g_assert_cmpint(p->pid, >, 0);
        while (p->out_fd >= 0 || p->err_fd >= 0)
                cli_process_pump(p, deadline, "lockbusctl to close its output");
        test_pidfd_wait_exit(p->pidfd, "lockbusctl to exit");
        p->status = test_waitpid(p->pid, 0);
        p->pid = 0;
        return p->status;
}

int cli_process_wait(CliProcess *p) {
        int status = cli_process_wait_status(p);

        if (!WIFEXITED(status))
                g_error("lockbusctl was killed by signal %d; stdout: \"%s\", stderr: \"%s\"",
                        WTERMSIG(status), p->out->str, p->err->str);
        return WEXITSTATUS(status);
}

void cli_process_free(CliProcess *p) {
        if (!p)
                return;
        if (p->pid > 0)
                test_kill_wait(p->pid);
        if (p->pidfd >= 0)
                close(p->pidfd);
        if (p->in_fd >= 0)
                close(p->in_fd);
        if (p->out_fd >= 0)
                close(p->out_fd);
        if (p->err_fd >= 0)
                close(p->err_fd);
        g_string_free(p->out, true);
        g_string_free(p->err, true);
        g_free(p);
}

CliResult *cli_run(TestBus *b, const CliSpawn *s, const char *const *argv) {
        g_autoptr(CliProcess) p = cli_start(b, s, argv);
        CliResult *r = g_new0(CliResult, 1);

        r->status = cli_process_wait(p);
        r->out = g_strdup(p->out->str);
        r->err = g_strdup(p->err->str);
        return r;
}

void cli_result_free(CliResult *r) {
        if (!r)
                return;
        g_free(r->out);
        g_free(r->err);
        g_free(r);
}

void test_assert_cli_status(const CliResult *r, int status, const char *expr, const char *file, int line,
                            const char *func) {
        g_autofree char *msg = NULL;

        if (r->status == status)
                return;
        msg = g_strdup_printf("%s: lockbusctl exited with %d, expected %d; stdout: \"%s\", stderr: \"%s\"",
                              expr, r->status, status, r->out, r->err);
        g_assertion_message(G_LOG_DOMAIN, file, line, func, msg);
}

/* --- Calls reaching the service --------------------------------------------------- */

struct CliCallWatch {
        sd_bus *monitor;
};

CliCallWatch *cli_call_watch_new(TestBus *b) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *path = g_build_filename(b->dir, "system.d", "zz-test-monitor.conf", NULL);
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *c = NULL;
        CliCallWatch *w;
        int r;

        /* Only root may call the Monitoring interface by the base policy;
         * the bus daemon itself lets its own uid become a monitor. */
        test_bus_write_user_policy(path, "lets the test watch the calls to io.lockbus1.",
                                   "<allow send_destination=\"org.freedesktop.DBus\" "
                                   "send_interface=\"org.freedesktop.DBus.Monitoring\"/>");
        c = test_bus_connect(b);
        test_bus_reload_config(c);

        w = g_new0(CliCallWatch, 1);
        g_assert_cmpint(sd_bus_new(&w->monitor), >=, 0);
        g_assert_cmpint(sd_bus_set_address(w->monitor, b->address), >=, 0);
        g_assert_cmpint(sd_bus_set_bus_client(w->monitor, true), >=, 0);
        g_assert_cmpint(sd_bus_set_monitor(w->monitor, true), >=, 0);
        g_assert_cmpint(sd_bus_set_method_call_timeout(w->monitor, TEST_TIMEOUT_USEC), >=, 0);
        g_assert_cmpint(sd_bus_start(w->monitor), >=, 0);

        r = sd_bus_call_method(w->monitor, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus.Monitoring", "BecomeMonitor", &error, NULL, "asu",
                               1, "type='method_call',destination='" LOCKBUS_BUS_NAME "'", 0);
        assert_call_ok(r, &error);
        return w;
}

void cli_call_watch_wait(CliCallWatch *w, const char *member, const char *resource, sd_bus *client) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uint64_t deadline = test_now_monotonic() + TEST_TIMEOUT_USEC;
        g_autofree char *what = g_strdup_printf("a call of %s('%s')", member, resource);
        int r;

        for (;;) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                struct pollfd p;

                r = sd_bus_process(w->monitor, &m);
                g_assert_cmpint(r, >=, 0);
                if (m && sd_bus_message_is_method_call(m, NULL, member) > 0) {
                        const char *arg = NULL;

                        if (sd_bus_message_read(m, "s", &arg) > 0 && g_str_equal(arg, resource))
                                break;
                }
                if (r > 0)
                        continue;

                p = (struct pollfd) { .fd = sd_bus_get_fd(w->monitor), .events = POLLIN };
                r = poll(&p, 1, test_remaining_msec(deadline, what));
                if (r < 0 && errno == EINTR)
                        continue;
                g_assert_cmpint(r, >=, 0);
        }

        r = sd_bus_call_method(client, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus.Peer", "Ping",
                               &error, NULL, NULL);
        assert_call_ok(r, &error);
}

void cli_call_watch_free(CliCallWatch *w) {
        if (!w)
                return;
        sd_bus_flush_close_unref(w->monitor);
        g_free(w);
}

/* --- A private session bus ------------------------------------------------------- */

CliSessionBus *cli_session_bus_new(TestBus *b, bool with_service) {
        g_autofree char *services = NULL, *conf = NULL, *path = NULL, *runtime_dir = NULL;
        CliSessionBus *s;

        s = g_new0(CliSessionBus, 1);
        s->dir = g_build_filename(b->dir, "session", NULL);
        s->lock_dir = g_build_filename(s->dir, "lib", NULL);
        runtime_dir = g_build_filename(s->dir, "run", NULL);
        services = g_build_filename(s->dir, "services", NULL);
        g_assert_cmpint(mkdir(s->dir, 0755), ==, 0);
        g_assert_cmpint(mkdir(services, 0755), ==, 0);

        if (with_service) {
                g_auto(GStrv) argv = test_lockbusd_argv(NULL, test_getenv_required("LOCKBUS_DAEMON"), s->lock_dir,
                                                        runtime_dir, (const char *const[]) { "--user", NULL });

                test_bus_write_activation_file(services, LOCKBUS_BUS_NAME, (const char *const *) argv);
        }

        /* Like a session bus: anyone (that is, we) may do anything. */
        conf = g_strdup_printf(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
                " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                "<busconfig>\n"
                "  <type>session</type>\n"
                "  <listen>unix:path=%s/bus.sock</listen>\n"
                "  <auth>EXTERNAL</auth>\n"
                "  <servicedir>%s</servicedir>\n"
                "  <policy context=\"default\">\n"
                "    <allow send_destination=\"*\" eavesdrop=\"true\"/>\n"
                "    <allow eavesdrop=\"true\"/>\n"
                "    <allow own=\"*\"/>\n"
                "  </policy>\n"
                "  <limit name=\"service_start_timeout\">%u</limit>\n"
                "</busconfig>\n",
                s->dir, services, TEST_TIMEOUT_USEC / 1000U);
        path = g_build_filename(s->dir, "bus.conf", NULL);
        test_write_file(path, conf);

        /* The test bus's group: killed with it, also if we crash. */
        s->pid = test_dbus_daemon_start(path, b->bus_pid, /* die_with_parent= */ false, TEST_TIMEOUT_USEC,
                                        &s->address);
        return s;
}

void cli_session_bus_free(CliSessionBus *s) {
        if (!s)
                return;
        /* lockbusd --user exits when its bus goes away; the test bus's
         * teardown reaps it (same process group). */
        if (s->pid > 0)
                test_kill_wait(s->pid);
        g_free(s->dir);
        g_free(s->lock_dir);
        g_free(s->address);
        g_free(s);
}

/* --- JSON -------------------------------------------------------------------------- */

typedef struct JsonParser {
        const char *p;
        const char *start;
        unsigned depth;
        GError **error;
} JsonParser;

static TestJson *json_parse_value(JsonParser *ps);

static void json_fail(JsonParser *ps, const char *what) {
        if (ps->error && !*ps->error)
                g_set_error(ps->error, g_quark_from_static_string("test-json"), 1, "JSON: %s at offset %ld: \"%.20s\"",
                            what, (long) (ps->p - ps->start), ps->p);
}

static void json_skip_ws(JsonParser *ps) {
        while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')
                ps->p++;
}

static TestJson *json_new(TestJsonType type) {
        TestJson *j = g_new0(TestJson, 1);

        j->type = type;
        return j;
}

void test_json_free(TestJson *j) {
        if (!j)
                return;
        g_free(j->text);
        if (j->items)
                g_ptr_array_unref(j->items);
        if (j->keys)
                g_ptr_array_unref(j->keys);
        g_free(j);
}

static int json_hex4(const char *s) {
        int v = 0;

        for (int i = 0; i < 4; i++) {
                int d = g_ascii_xdigit_value(s[i]);

                if (d < 0)
                        return -1;
                v = v * 16 + d;
        }
        return v;
}

static char *json_parse_string(JsonParser *ps) {
        g_autoptr(GString) s = g_string_new(NULL);

        g_assert(*ps->p == '"');
        ps->p++;
        for (;;) {
                unsigned char c = (unsigned char) *ps->p;

                if (c == '"') {
                        ps->p++;
                        break;
                }
                if (c == '\0') {
                        json_fail(ps, "unterminated string");
                        return NULL;
                }
                if (c < 0x20) {
                        json_fail(ps, "control character in a string");
                        return NULL;
                }
                if (c != '\\') {
                        g_string_append_c(s, (char) c);
                        ps->p++;
                        continue;
                }
                ps->p++;
                switch (*ps->p) {
                case '"':  g_string_append_c(s, '"');  break;
                case '\\': g_string_append_c(s, '\\'); break;
                case '/':  g_string_append_c(s, '/');  break;
                case 'b':  g_string_append_c(s, '\b'); break;
                case 'f':  g_string_append_c(s, '\f'); break;
                case 'n':  g_string_append_c(s, '\n'); break;
                case 'r':  g_string_append_c(s, '\r'); break;
                case 't':  g_string_append_c(s, '\t'); break;
                case 'u': {
                        int u = json_hex4(ps->p + 1);
                        gunichar cp;

                        if (u < 0) {
                                json_fail(ps, "bad \\u escape");
                                return NULL;
                        }
                        ps->p += 4;
                        cp = (gunichar) u;
                        if (u >= 0xd800 && u < 0xdc00) {
                                int lo = ps->p[1] == '\\' && ps->p[2] == 'u' ? json_hex4(ps->p + 3) : -1;

                                if (lo < 0xdc00 || lo >= 0xe000) {
                                        json_fail(ps, "lone surrogate");
                                        return NULL;
                                }
                                ps->p += 6;
                                cp = 0x10000 + (((gunichar) u - 0xd800) << 10) + ((gunichar) lo - 0xdc00);
                        } else if (u >= 0xdc00 && u < 0xe000) {
                                json_fail(ps, "lone surrogate");
                                return NULL;
                        }
                        if (cp == 0) {
                                json_fail(ps, "NUL in a string");
                                return NULL;
                        }
                        g_string_append_unichar(s, cp);
                        break;
                }
                default:
                        json_fail(ps, "bad escape");
                        return NULL;
                }
                ps->p++;
        }
        if (!g_utf8_validate(s->str, (gssize) s->len, NULL)) {
                json_fail(ps, "string is not UTF-8");
                return NULL;
        }
        return g_strdup(s->str);
}

static TestJson *json_parse_number(JsonParser *ps) {
        const char *start = ps->p;
        TestJson *j;

        if (*ps->p == '-')
                ps->p++;
        if (*ps->p == '0')
                ps->p++;
        else if (g_ascii_isdigit(*ps->p))
                while (g_ascii_isdigit(*ps->p))
                        ps->p++;
        else {
                json_fail(ps, "bad number");
                return NULL;
        }
        if (*ps->p == '.') {
                ps->p++;
                if (!g_ascii_isdigit(*ps->p)) {
                        json_fail(ps, "bad fraction");
                        return NULL;
                }
                while (g_ascii_isdigit(*ps->p))
                        ps->p++;
        }
        if (*ps->p == 'e' || *ps->p == 'E') {
                ps->p++;
                if (*ps->p == '+' || *ps->p == '-')
                        ps->p++;
                if (!g_ascii_isdigit(*ps->p)) {
                        json_fail(ps, "bad exponent");
                        return NULL;
                }
                while (g_ascii_isdigit(*ps->p))
                        ps->p++;
        }
        j = json_new(TEST_JSON_NUMBER);
        j->text = g_strndup(start, ps->p - start);
        return j;
}

static TestJson *json_parse_container(JsonParser *ps, bool object) {
        g_autoptr(TestJson) j = json_new(object ? TEST_JSON_OBJECT : TEST_JSON_ARRAY);
        char close = object ? '}' : ']';

        j->items = g_ptr_array_new_with_free_func((GDestroyNotify) test_json_free);
        if (object)
                j->keys = g_ptr_array_new_with_free_func(g_free);

        ps->p++;
        json_skip_ws(ps);
        if (*ps->p == close) {
                ps->p++;
                return g_steal_pointer(&j);
        }
        for (;;) {
                TestJson *v;

                json_skip_ws(ps);
                if (object) {
                        char *key;

                        if (*ps->p != '"') {
                                json_fail(ps, "expected a key");
                                return NULL;
                        }
                        key = json_parse_string(ps);
                        if (!key)
                                return NULL;
                        for (guint i = 0; i < j->keys->len; i++)
                                if (g_str_equal(j->keys->pdata[i], key)) {
                                        g_free(key);
                                        json_fail(ps, "duplicate key");
                                        return NULL;
                                }
                        g_ptr_array_add(j->keys, key);
                        json_skip_ws(ps);
                        if (*ps->p != ':') {
                                json_fail(ps, "expected ':'");
                                return NULL;
                        }
                        ps->p++;
                }
                v = json_parse_value(ps);
                if (!v)
                        return NULL;
                g_ptr_array_add(j->items, v);
                json_skip_ws(ps);
                if (*ps->p == ',') {
                        ps->p++;
                        continue;
                }
                if (*ps->p == close) {
                        ps->p++;
                        return g_steal_pointer(&j);
                }
                json_fail(ps, object ? "expected ',' or '}'" : "expected ',' or ']'");
                return NULL;
        }
}

static TestJson *json_parse_value(JsonParser *ps) {
        TestJson *j = NULL;

        if (++ps->depth > 64) {
                json_fail(ps, "nested too deeply");
                return NULL;
        }
        json_skip_ws(ps);
        switch (*ps->p) {
        case '{':
        case '[':
                j = json_parse_container(ps, *ps->p == '{');
                break;
        case '"': {
                char *s = json_parse_string(ps);

                if (s) {
                        j = json_new(TEST_JSON_STRING);
                        j->text = s;
                }
                break;
        }
        case 't':
        case 'f':
        case 'n': {
                static const struct {
                        const char *word;
                        TestJsonType type;
                        bool value;
                } words[] = {
                        { "true", TEST_JSON_BOOL, true },
                        { "false", TEST_JSON_BOOL, false },
                        { "null", TEST_JSON_NULL, false },
                };

                for (size_t i = 0; i < G_N_ELEMENTS(words); i++)
                        if (g_str_has_prefix(ps->p, words[i].word)) {
                                ps->p += strlen(words[i].word);
                                j = json_new(words[i].type);
                                j->boolean = words[i].value;
                                break;
                        }
                if (!j)
                        json_fail(ps, "bad literal");
                break;
        }
        default:
                j = json_parse_number(ps);
        }
        ps->depth--;
        return j;
}

TestJson *test_json_parse(const char *text, GError **error) {
        JsonParser ps = { .p = text, .start = text, .error = error };
        g_autoptr(TestJson) j = json_parse_value(&ps);

        if (!j)
                return NULL;
        json_skip_ws(&ps);
        if (*ps.p) {
                json_fail(&ps, "trailing data");
                return NULL;
        }
        return g_steal_pointer(&j);
}

TestJson *test_json_parse_ok(const char *text) {
        g_autoptr(GError) error = NULL;
        TestJson *j = test_json_parse(text, &error);

        if (!j)
                g_error("%s; the text: \"%s\"", error->message, text);
        return j;
}

const TestJson *test_json_member(const TestJson *o, const char *key) {
        g_assert_nonnull(o);
        g_assert_cmpint(o->type, ==, TEST_JSON_OBJECT);
        for (guint i = 0; i < o->keys->len; i++)
                if (g_str_equal(o->keys->pdata[i], key))
                        return o->items->pdata[i];
        g_error("JSON object has no member \"%s\"", key);
}

const char *test_json_get_string(const TestJson *o, const char *key) {
        const TestJson *v = test_json_member(o, key);

        if (v->type != TEST_JSON_STRING)
                g_error("JSON member \"%s\" is no string", key);
        return v->text;
}

uint64_t test_json_get_uint(const TestJson *o, const char *key) {
        const TestJson *v = test_json_member(o, key);
        g_autoptr(GError) error = NULL;
        guint64 n = 0;

        if (v->type != TEST_JSON_NUMBER)
                g_error("JSON member \"%s\" is no number", key);
        if (!g_ascii_string_to_unsigned(v->text, 10, 0, G_MAXUINT64, &n, &error))
                g_error("JSON member \"%s\" is no unsigned integer: %s", key, v->text);
        return n;
}

bool test_json_is_null(const TestJson *o, const char *key) {
        return test_json_member(o, key)->type == TEST_JSON_NULL;
}

void test_json_assert_keys(const TestJson *o, const char *const *keys) {
        g_autoptr(GString) got = g_string_new(NULL), want = g_string_new(NULL);

        g_assert_cmpint(o->type, ==, TEST_JSON_OBJECT);
        for (guint i = 0; i < o->keys->len; i++)
                g_string_append_printf(got, "%s%s", i > 0 ? "," : "", (const char *) o->keys->pdata[i]);
        for (size_t i = 0; keys[i]; i++)
                g_string_append_printf(want, "%s%s", i > 0 ? "," : "", keys[i]);
        g_assert_cmpstr(got->str, ==, want->str);
}
