/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Bad bus input: calls with the wrong signature for every method, unknown
 * options and every option with every wrong variant type, strings at and
 * beyond every limit up to 1 MiB, and input that would corrupt a hold file
 * if it were written carelessly. Each is refused with the documented error
 * (or stored and read back exactly), nothing is held or queued, and the
 * same lockbusd (same PID: a crash would go unnoticed behind D-Bus
 * activation otherwise) keeps serving. */

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "faults-test.h"

#define MIB (1024U * 1024U)

/* ---- Messages with any signature ----------------------------------------------------- */

/* Length of the complete type at the start of s. */
static size_t complete_type_length(const char *s) {
        size_t n;
        char close;

        switch (*s) {
        case 'a':
                return 1 + complete_type_length(s + 1);
        case '(':
        case '{':
                close = *s == '(' ? ')' : '}';
                for (n = 1; s[n] && s[n] != close; )
                        n += complete_type_length(s + n);
                return n + 1;
        default:
                return 1;
        }
}

/* Appends a sample value of the complete type t (len bytes of it): "x" for
 * strings, 1 for numbers, a copy of /dev/null for fds, one element for
 * arrays and dicts, the string "x" in variants. */
static int append_sample(sd_bus_message *m, const char *t, size_t len) {
        g_autofree char *inner = NULL;
        int r;

        switch (*t) {
        case 's':
        case 'o':
        case 'g':
                return sd_bus_message_append_basic(m, *t, *t == 'o' ? "/x" : *t == 'g' ? "s" : "x");
        case 'b': {
                int v = 1;
                return sd_bus_message_append_basic(m, *t, &v);
        }
        case 'd': {
                double v = 1.0;
                return sd_bus_message_append_basic(m, *t, &v);
        }
        case 'h': {
                _cleanup_close_ int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

                if (fd < 0)
                        return -errno;
                return sd_bus_message_append_basic(m, *t, &fd);
        }
        case 'y':
        case 'n':
        case 'q':
        case 'i':
        case 'u':
        case 'x':
        case 't': {
                uint64_t v = 1;
                uint8_t y = 1;
                uint16_t q = 1;
                uint32_t u = 1;

                return sd_bus_message_append_basic(m, *t, *t == 'y' ? (void *) &y :
                                                   IN_SET(*t, 'n', 'q') ? (void *) &q :
                                                   IN_SET(*t, 'i', 'u') ? (void *) &u : (void *) &v);
        }
        case 'v':
                r = sd_bus_message_open_container(m, 'v', "s");
                if (r >= 0)
                        r = sd_bus_message_append_basic(m, 's', "x");
                return r < 0 ? r : sd_bus_message_close_container(m);
        case 'a':
                inner = g_strndup(t + 1, len - 1);
                r = sd_bus_message_open_container(m, 'a', inner);
                if (r >= 0)
                        r = append_sample(m, inner, len - 1);
                return r < 0 ? r : sd_bus_message_close_container(m);
        case '(':
        case '{':
                inner = g_strndup(t + 1, len - 2);
                r = sd_bus_message_open_container(m, *t == '(' ? 'r' : 'e', inner);
                for (const char *p = inner; r >= 0 && *p; ) {
                        size_t k = complete_type_length(p);

                        r = append_sample(m, p, k);
                        p += k;
                }
                return r < 0 ? r : sd_bus_message_close_container(m);
        default:
                return -EINVAL;
        }
}

static int append_samples(sd_bus_message *m, const char *signature) {
        for (const char *p = signature; *p; ) {
                size_t k = complete_type_length(p);
                int r = append_sample(m, p, k);

                if (r < 0)
                        return r;
                p += k;
        }
        return 0;
}

/* A call of member with sample arguments of the given signature. No
 * g_assert: client processes use it too. */
static int call_with_signature(sd_bus *bus, const char *member, const char *signature, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE,
                                           member);
        if (r < 0)
                return r;
        r = append_samples(m, signature);
        if (r < 0)
                return r;
        return sd_bus_call(bus, m, 0, error, NULL);
}

/* Every method with signatures it does not take: too few arguments, too
 * many, the wrong types, a{ss} for a{sv}. */
static const struct {
        const char *member;
        const char *signature;
} wrong_signatures[] = {
        { "Lock", "" }, { "Lock", "u" }, { "Lock", "ss" }, { "Lock", "as" }, { "Lock", "v" }, { "Lock", "o" },
        { "Lock", "sa{sv}" },
        { "Acquire", "" }, { "Acquire", "s" }, { "Acquire", "a{sv}" }, { "Acquire", "sa{ss}" },
        { "Acquire", "sa{su}" }, { "Acquire", "ua{sv}" }, { "Acquire", "sa{sv}s" }, { "Acquire", "sa(sv)" },
        { "Acquire", "sav" }, { "Acquire", "sv" }, { "Acquire", "(sa{sv})" }, { "Acquire", "sa{sv}h" },
        { "AcquireFd", "" }, { "AcquireFd", "s" }, { "AcquireFd", "sa{ss}" }, { "AcquireFd", "sh" },
        { "AcquireFd", "sa{sv}h" },
        { "Unlock", "" }, { "Unlock", "u" }, { "Unlock", "ss" }, { "Unlock", "h" },
        { "Refresh", "" }, { "Refresh", "t" }, { "Refresh", "st" },
        { "Owner", "" }, { "Owner", "u" }, { "Owner", "ay" },
        { "ListLocks", "s" }, { "ListLocks", "u" }, { "ListLocks", "a{sv}" },
        { "Break", "" }, { "Break", "u" }, { "Break", "sb" },
};

/* The client side of /faults/input/signatures-other-user: one line per
 * entry of wrong_signatures, the result (test_format_result()). */
static int run_wrong_signatures(sd_bus *bus, int fd, void *userdata) {
        for (size_t i = 0; i < ELEMENTSOF(wrong_signatures); i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                g_autofree char *result = NULL;
                int r;

                r = call_with_signature(bus, wrong_signatures[i].member, wrong_signatures[i].signature, &error);
                result = test_format_result(r, &error);
                test_client_send(fd, "%s", result);
        }
        return 0;
}

/* Nothing held or waiting, and still the same daemon, serving. */
static void assert_unharmed(FaultsFixture *f, pid_t pid, uint32_t n_locks) {
        g_assert_cmpint(test_bus_daemon_pid(f->bus), ==, pid);
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, n_locks);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
        (void) test_lock_ok(f->client, "still-serving");
        test_unlock_ok(f->client, "still-serving");
}

static void test_signatures(FaultsFixture *f, gconstpointer data) {
        pid_t pid = faults_start_daemon(f);

        for (size_t i = 0; i < ELEMENTSOF(wrong_signatures); i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                g_autofree char *expect = NULL;
                int r;

                r = call_with_signature(f->client, wrong_signatures[i].member, wrong_signatures[i].signature, &error);
                expect = g_strdup_printf("Invalid arguments '%s' to call " LOCKBUS_MANAGER_IFACE ".%s()",
                                         wrong_signatures[i].signature, wrong_signatures[i].member);
                faults_assert_error(r, &error, SD_BUS_ERROR_INVALID_ARGS, expect);
        }
        assert_unharmed(f, pid, 0);
}

static void test_signatures_other_user(FaultsFixture *f, gconstpointer data) {
        g_autofree char *out = NULL;
        g_auto(GStrv) lines = NULL;
        pid_t pid;

        if (test_skip_unless_root())
                return;
        pid = faults_start_daemon(f);

        out = test_bus_run_client(f->bus, TEST_OTHER_UID, "bad-input", run_wrong_signatures, NULL);
        lines = g_strsplit(out, "\n", -1);
        g_assert_cmpuint(g_strv_length(lines), ==, ELEMENTSOF(wrong_signatures));
        for (size_t i = 0; i < ELEMENTSOF(wrong_signatures); i++)
                if (!g_str_has_prefix(lines[i], "error " SD_BUS_ERROR_INVALID_ARGS ": "))
                        g_error("%s(%s) from uid %u: %s", wrong_signatures[i].member, wrong_signatures[i].signature,
                                (unsigned) TEST_OTHER_UID, lines[i]);
        assert_unharmed(f, pid, 0);
}

/* Members, interfaces, objects and properties that are not there. */
static void test_unknown_members(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        pid_t pid = faults_start_daemon(f);
        int r;

        r = call_with_signature(f->client, "Lock2", "s", &error);
        faults_assert_error(r, &error, SD_BUS_ERROR_UNKNOWN_METHOD, "Lock2");
        sd_bus_error_free(&error);

        r = sd_bus_call_method(f->client, LOCKBUS_BUS_NAME, "/io/lockbus1/nothing", LOCKBUS_MANAGER_IFACE, "Lock",
                               &error, NULL, "s", "x");
        faults_assert_error(r, &error, SD_BUS_ERROR_UNKNOWN_OBJECT, NULL);
        sd_bus_error_free(&error);

        r = sd_bus_call_method(f->client, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus.Properties",
                               "Set", &error, NULL, "ssv", LOCKBUS_MANAGER_IFACE, "LockCount", "u", 7);
        faults_assert_error(r, &error, SD_BUS_ERROR_PROPERTY_READ_ONLY, NULL);
        sd_bus_error_free(&error);

        r = sd_bus_call_method(f->client, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus.Properties",
                               "Get", &error, NULL, "ss", LOCKBUS_MANAGER_IFACE, "Locks");
        faults_assert_error(r, &error, SD_BUS_ERROR_UNKNOWN_PROPERTY, NULL);
        sd_bus_error_free(&error);

        r = sd_bus_call_method(f->client, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus.Properties",
                               "Get", &error, NULL, "s", LOCKBUS_MANAGER_IFACE);
        faults_assert_error(r, &error, SD_BUS_ERROR_INVALID_ARGS, NULL);
        sd_bus_error_free(&error);

        assert_unharmed(f, pid, 0);
}

/* ---- Options ------------------------------------------------------------------------------ */

/* Every D-Bus type a variant can hold, as a sample (append_sample()). */
static const char *const variant_types[] = {
        "s", "o", "g", "b", "y", "n", "q", "i", "u", "x", "t", "d", "h", "v",
        "as", "ay", "at", "a{sv}", "a{ss}", "(s)", "(t)", "(st)", "aas",
};

static const struct {
        const char *name;
        const char *type;
} known_options[] = {
        { "mode", "s" }, { "scope", "s" }, { "timeout", "t" }, { "ttl", "t" }, { "description", "s" },
};

/* member(resource, {name: <sample of type>}). */
static int acquire_with_option(sd_bus *bus, const char *member, const char *name, const char *type,
                               sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = faults_new_call(bus, member);

        g_assert_cmpint(sd_bus_message_append(m, "s", "opt"), >=, 0);
        g_assert_cmpint(sd_bus_message_open_container(m, 'a', "{sv}"), >=, 0);
        g_assert_cmpint(sd_bus_message_open_container(m, 'e', "sv"), >=, 0);
        g_assert_cmpint(sd_bus_message_append_basic(m, 's', name), >=, 0);
        g_assert_cmpint(sd_bus_message_open_container(m, 'v', type), >=, 0);
        g_assert_cmpint(append_sample(m, type, strlen(type)), >=, 0);
        g_assert_cmpint(sd_bus_message_close_container(m), >=, 0);
        g_assert_cmpint(sd_bus_message_close_container(m), >=, 0);
        g_assert_cmpint(sd_bus_message_close_container(m), >=, 0);
        return faults_call(bus, m, error, NULL);
}

/* member(resource, {name: <s value>}). */
static int acquire_with_string_option(sd_bus *bus, const char *member, const char *resource, const char *name,
                                      const char *value, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = faults_new_call(bus, member);

        g_assert_cmpint(sd_bus_message_append(m, "sa{sv}", resource, 1, name, "s", value), >=, 0);
        return faults_call(bus, m, error, NULL);
}

static void test_option_types(FaultsFixture *f, gconstpointer data) {
        pid_t pid = faults_start_daemon(f);
        unsigned n = 0;

        for (size_t i = 0; i < ELEMENTSOF(known_options); i++)
                for (size_t j = 0; j < ELEMENTSOF(variant_types); j++) {
                        static const char *const members[] = { "Acquire", "AcquireFd" };

                        if (streq(variant_types[j], known_options[i].type))
                                continue;

                        for (size_t k = 0; k < ELEMENTSOF(members); k++) {
                                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                                g_autofree char *expect = NULL;
                                int r;

                                /* AcquireFd takes no scope at all. */
                                expect = g_strdup_printf("'%s'", known_options[i].name);
                                r = acquire_with_option(f->client, members[k], known_options[i].name,
                                                        variant_types[j], &error);
                                faults_assert_error(r, &error, SD_BUS_ERROR_INVALID_ARGS, expect);
                                n++;
                        }
                }
        g_assert_cmpuint(n, ==, 2 * (ELEMENTSOF(known_options) * ELEMENTSOF(variant_types) - ELEMENTSOF(known_options)));

        test_assert_not_locked(f->client, "opt");
        assert_unharmed(f, pid, 0);
}

static void test_option_names_and_values(FaultsFixture *f, gconstpointer data) {
        static const char *const unknown[] = {
                "", "Mode", "MODE", "mode ", " mode", "timeout\xc3\xa9", "modes", "fd", "uid", "pid", "token",
        };
        static const struct {
                const char *name;
                const char *value;
        } bad_values[] = {
                { "mode", "" }, { "mode", "Exclusive" }, { "mode", "write" }, { "mode", "shared " },
                { "scope", "" }, { "scope", "fd" }, { "scope", "Persistent" }, { "scope", "forever" },
        };
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        pid_t pid = faults_start_daemon(f);
        int r;

        for (size_t i = 0; i < ELEMENTSOF(unknown); i++) {
                g_autofree char *expect = g_strdup_printf("Unknown option '%s'", unknown[i]);

                r = acquire_with_option(f->client, "Acquire", unknown[i], "s", &error);
                faults_assert_error(r, &error, SD_BUS_ERROR_INVALID_ARGS, expect);
                sd_bus_error_free(&error);
        }

        for (size_t i = 0; i < ELEMENTSOF(bad_values); i++) {
                g_autofree char *expect = g_strdup_printf("'%s'", bad_values[i].name);

                r = acquire_with_string_option(f->client, "Acquire", "opt", bad_values[i].name, bad_values[i].value,
                                               &error);
                faults_assert_error(r, &error, SD_BUS_ERROR_INVALID_ARGS, expect);
                sd_bus_error_free(&error);
        }

        /* scope is not an option of AcquireFd, whatever its value. */
        r = acquire_with_string_option(f->client, "AcquireFd", "opt", "scope", "connection", &error);
        faults_assert_error(r, &error, SD_BUS_ERROR_INVALID_ARGS, "'scope'");
        sd_bus_error_free(&error);

        /* An option twice, even with the same value. */
        m = faults_new_call(f->client, "Acquire");
        g_assert_cmpint(sd_bus_message_append(m, "sa{sv}", "opt", 2, "mode", "s", "shared", "mode", "s", "shared"),
                        >=, 0);
        r = faults_call(f->client, m, &error, NULL);
        faults_assert_error(r, &error, SD_BUS_ERROR_INVALID_ARGS, "'mode'");
        sd_bus_error_free(&error);

        test_assert_not_locked(f->client, "opt");
        assert_unharmed(f, pid, 0);
}

/* Values at the edges of their type are valid: a timeout of UINT64_MAX - 1
 * µs waits, a TTL of UINT64_MAX µs is granted (with an expiry far away). */
static void test_option_extreme_values(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *w = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestCall) c = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        pid_t pid = faults_start_daemon(f);
        uint64_t t;
        int r;

        t = test_acquire_ok(f->client, "huge-ttl", &(TestAcquireOptions) { .has_ttl = true, .ttl = UINT64_MAX });
        holders = test_owner_ok(f->client, "huge-ttl", NULL);
        g_assert_cmpuint(((TestHolder *) holders->pdata[0])->token, ==, t);
        g_assert_cmpuint(((TestHolder *) holders->pdata[0])->expires, >, test_now_realtime() + 3600ULL * 1000000ULL);
        g_assert_cmpuint(test_refresh_ok(f->client, "huge-ttl"), >, test_now_realtime());

        t = test_acquire_ok(f->client, "almost-huge-ttl", &(TestAcquireOptions) {
                                    .scope = "persistent", .has_ttl = true, .ttl = UINT64_MAX - 1 });
        g_assert_cmpuint(t, >, 0);

        /* A timeout that never strikes in practice: queued, not refused. */
        w = test_bus_connect(f->bus);
        c = test_acquire_async(w, "huge-ttl", &(TestAcquireOptions) { .has_timeout = true, .timeout = UINT64_MAX - 1 });
        g_assert_cmpuint(test_get_property_u(w, "WaiterCount"), ==, 1);
        assert_call_pending(c);
        test_unlock_ok(f->client, "huge-ttl");
        test_call_wait(c);
        r = test_call_result(c, &error);
        assert_call_ok(r, &error);

        g_assert_cmpint(test_bus_daemon_pid(f->bus), ==, pid);
}

/* ---- Sizes ----------------------------------------------------------------------------------- */

static void assert_resource_refused_everywhere(FaultsFixture *f, const char *resource) {
        static const char *const members[] = { "Lock", "Unlock", "Refresh", "Owner", "Break" };
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        for (size_t i = 0; i < ELEMENTSOF(members); i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = faults_new_call(f->client, members[i]);

                g_assert_cmpint(sd_bus_message_append(m, "s", resource), >=, 0);
                r = faults_call(f->client, m, &error, NULL);
                faults_assert_error(r, &error, LOCKBUS_ERROR_INVALID_RESOURCE, NULL);
                sd_bus_error_free(&error);
        }

        r = test_acquire(f->client, resource, &(TestAcquireOptions) { .scope = "persistent" }, NULL, &error);
        faults_assert_error(r, &error, LOCKBUS_ERROR_INVALID_RESOURCE, NULL);
        sd_bus_error_free(&error);
        r = test_acquire_fd(f->client, resource, NULL, NULL, NULL, &error);
        faults_assert_error(r, &error, LOCKBUS_ERROR_INVALID_RESOURCE, NULL);
        sd_bus_error_free(&error);
}

/* n bytes of UTF-8: two-byte characters, then one ASCII byte if n is odd. */
static char *utf8_of_length(size_t n) {
        GString *s = g_string_new(NULL);

        for (size_t i = 0; i + 2 <= n; i += 2)
                g_string_append(s, "\xc3\xa9");
        if (n % 2)
                g_string_append_c(s, 'x');
        g_assert_cmpuint(s->len, ==, n);
        return g_string_free(s, false);
}

static void test_sizes(FaultsFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autofree char *r255 = g_strnfill(LOCKBUS_RESOURCE_MAX, 'r'), *r256 = g_strnfill(LOCKBUS_RESOURCE_MAX + 1, 'r');
        g_autofree char *u255 = utf8_of_length(LOCKBUS_RESOURCE_MAX), *u256 = utf8_of_length(LOCKBUS_RESOURCE_MAX + 1);
        g_autofree char *d1024 = utf8_of_length(LOCKBUS_DESCRIPTION_MAX),
                *d1025 = g_strnfill(LOCKBUS_DESCRIPTION_MAX + 1, 'd'), *huge = g_strnfill(MIB, 'h');
        g_autoptr(GPtrArray) holders = NULL;
        pid_t pid = faults_start_daemon(f);
        uint64_t t255, tu255;
        int r;

        /* At the limits: held, shown as given, and back after a crash. */
        t255 = test_lock_ok(f->client, r255);
        tu255 = test_acquire_ok(f->client, u255, &(TestAcquireOptions) {
                                        .scope = "persistent", .description = d1024 });
        holders = test_owner_ok(f->client, u255, NULL);
        g_assert_cmpstr(((TestHolder *) holders->pdata[0])->description, ==, d1024);
        g_clear_pointer(&holders, g_ptr_array_unref);

        /* One byte over, and 1 MiB over. */
        assert_resource_refused_everywhere(f, r256);
        assert_resource_refused_everywhere(f, u256);
        assert_resource_refused_everywhere(f, huge);

        r = test_acquire(f->client, "d", &(TestAcquireOptions) { .description = d1025 }, NULL, &error);
        faults_assert_error(r, &error, SD_BUS_ERROR_INVALID_ARGS, "'description'");
        sd_bus_error_free(&error);
        r = test_acquire(f->client, "d", &(TestAcquireOptions) { .description = huge }, NULL, &error);
        faults_assert_error(r, &error, SD_BUS_ERROR_INVALID_ARGS, "'description'");
        sd_bus_error_free(&error);
        r = acquire_with_string_option(f->client, "Acquire", "d", "mode", huge, &error);
        faults_assert_error(r, &error, SD_BUS_ERROR_INVALID_ARGS, "'mode'");
        sd_bus_error_free(&error);
        r = acquire_with_option(f->client, "Acquire", huge, "s", &error);
        faults_assert_error(r, &error, SD_BUS_ERROR_INVALID_ARGS, "Unknown option");
        sd_bus_error_free(&error);
        test_assert_not_locked(f->client, "d");

        assert_unharmed(f, pid, 2);

        (void) faults_restart_daemon(f);
        g_assert_cmpuint(faults_owner_token(f->client, r255), ==, t255);
        g_assert_cmpuint(faults_owner_token(f->client, u255), ==, tu255);
        holders = test_owner_ok(f->client, u255, NULL);
        g_assert_cmpstr(((TestHolder *) holders->pdata[0])->description, ==, d1024);
}

/* ---- Input that must not reach a hold file as syntax ------------------------------------------- */

/* Descriptions, comms and resource names that look like key-file syntax or
 * like the daemon's own files are stored and read back exactly, and
 * nothing else changes. */
static void test_injection(FaultsFixture *f, gconstpointer data) {
        static const char *const descriptions[] = {
                "line\n[Hold]\nResource=evil\nUID=1000\nScope=connection\nToken=1",
                "\\n\\t\\\\ = ; # [Hold]",
                "# a comment\n",
                "trailing space ",
                " leading space",
                "\t",
        };
        static const char *const resources[] = {
                "tokens", ".quarantine", ".tmp-0000000000000000", ".", "..", "x@5", "tokens@1", "a/../../b",
                "[Hold]", "Resource=evil", "%41", "~", "-", "@",
        };
        /* At most 15 bytes, the kernel's limit for comm. (A newline would
         * not get through: sd-bus reads comm up to the first one.) */
        static const char evil_comm[] = "\\n[Hold]=UID#7";
        g_autoptr(TestClient) other = NULL;
        g_autofree uint64_t *t_desc = g_new0(uint64_t, ELEMENTSOF(descriptions));
        g_autofree uint64_t *t_res = g_new0(uint64_t, ELEMENTSOF(resources));
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *shown_comm = NULL;
        uint64_t t_comm = 0, top = 0;

        (void) faults_start_daemon(f);

        for (size_t i = 0; i < ELEMENTSOF(descriptions); i++) {
                g_autofree char *resource = g_strdup_printf("desc-%zu", i);

                t_desc[i] = test_acquire_ok(f->client, resource, &(TestAcquireOptions) {
                                                    .scope = "persistent", .description = descriptions[i] });
                top = MAX(top, t_desc[i]);
        }
        for (size_t i = 0; i < ELEMENTSOF(resources); i++) {
                t_res[i] = test_lock_ok(f->client, resources[i]);
                top = MAX(top, t_res[i]);
        }
        if (geteuid() == 0) {
                other = test_client_start(f->bus, TEST_OTHER_UID, evil_comm, test_client_serve, NULL);
                t_comm = test_client_command_ok(other, "Lock comm");
                top = MAX(top, t_comm);
                /* As sd-bus shows it (escaped, see below). */
                holders = test_owner_ok(f->client, "comm", NULL);
                shown_comm = g_strdup(((TestHolder *) holders->pdata[0])->comm);
                g_clear_pointer(&holders, g_ptr_array_unref);
        }

        (void) faults_restart_daemon(f);

        for (size_t i = 0; i < ELEMENTSOF(descriptions); i++) {
                g_autofree char *resource = g_strdup_printf("desc-%zu", i);
                const TestHolder *h;

                holders = test_owner_ok(f->client, resource, NULL);
                g_assert_cmpuint(holders->len, ==, 1);
                h = holders->pdata[0];
                g_assert_cmpstr(h->description, ==, descriptions[i]);
                g_assert_cmpuint(h->token, ==, t_desc[i]);
                g_assert_cmpuint(h->uid, ==, geteuid());
                g_assert_cmpstr(h->scope, ==, "persistent");
                g_clear_pointer(&holders, g_ptr_array_unref);
        }
        for (size_t i = 0; i < ELEMENTSOF(resources); i++)
                g_assert_cmpuint(faults_owner_token(f->client, resources[i]), ==, t_res[i]);
        if (other) {
                const TestHolder *h;

                /* The daemon gets comm from sd-bus, which escapes it
                 * ("\\" for a backslash): read back as it was shown. */
                holders = test_owner_ok(f->client, "comm", NULL);
                h = holders->pdata[0];
                g_assert_true(g_str_has_suffix(shown_comm, "[Hold]=UID#7"));
                g_assert_cmpstr(h->comm, ==, shown_comm);
                g_assert_cmpuint(h->uid, ==, TEST_OTHER_UID);
                g_assert_cmpuint(h->token, ==, t_comm);
        }
        test_assert_not_locked(f->client, "evil");
        g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==,
                         ELEMENTSOF(descriptions) + ELEMENTSOF(resources) + (other ? 1 : 0));

        /* The reservation was not touched by any of them. */
        g_assert_cmpuint(test_lock_ok(f->client, "after"), >, top);
        {
                g_autofree char *q = g_build_filename(f->bus->lock_dir, ".quarantine", NULL);

                g_assert_false(g_file_test(q, G_FILE_TEST_EXISTS));
        }
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        faults_add("/faults/input/signatures", NULL, test_signatures);
        faults_add("/faults/input/signatures-other-user", NULL, test_signatures_other_user);
        faults_add("/faults/input/unknown-members", NULL, test_unknown_members);
        faults_add("/faults/input/option-types", NULL, test_option_types);
        faults_add("/faults/input/option-names-and-values", NULL, test_option_names_and_values);
        faults_add("/faults/input/option-extreme-values", NULL, test_option_extreme_values);
        faults_add("/faults/input/sizes", NULL, test_sizes);
        faults_add("/faults/input/injection", NULL, test_injection);

        return g_test_run();
}
