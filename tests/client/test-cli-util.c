/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The pure helpers of lockbusctl (client/lockbusctl-util.h), no bus. */

#include <errno.h>
#include <locale.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <glib.h>

#include "lockbusctl-util.h"

static void test_duration(void) {
        static const struct {
                const char *text;
                uint64_t usec;
        } good[] = {
                { "0",            0 },
                { "5",            5 * USEC_PER_SEC },
                { "1.5",          1500 * USEC_PER_MSEC },
                { ".25",          250 * USEC_PER_MSEC },
                { "2.",           2 * USEC_PER_SEC },
                { "500ms",        500 * USEC_PER_MSEC },
                { "500 ms",       500 * USEC_PER_MSEC },
                { "30s",          30 * USEC_PER_SEC },
                { "30sec",        30 * USEC_PER_SEC },
                { "1second",      USEC_PER_SEC },
                { "5min",         300 * USEC_PER_SEC },
                { "5m",           300 * USEC_PER_SEC },
                { "2minutes",     120 * USEC_PER_SEC },
                { "1h",           3600 * USEC_PER_SEC },
                { "1.5h",         5400 * USEC_PER_SEC },
                { "2hours",       7200 * USEC_PER_SEC },
                { "1d",           86400 * USEC_PER_SEC },
                { "1min 30s",     90 * USEC_PER_SEC },
                { "1min30s",      90 * USEC_PER_SEC },
                { " 10us ",       10 },
                { "7usec",        7 },
                { "7\xc2\xb5s",   7 },
                { "0.0000015s",   1 },
                { "0.001ms",      1 },
                { "0.123456789",  123456 },
                { "infinity",     USEC_INFINITY },
                { " infinity ",   USEC_INFINITY },
        };
        static const char *const bad[] = {
                "", " ", ".", "-1", "1x", "s", "5 parsecs", "1.2.3", "infinityy", "infinity 5", "1e3", "0x10",
                "5,5", "5 10",
        };
        uint64_t v;

        for (size_t i = 0; i < G_N_ELEMENTS(good); i++) {
                g_test_message("parse_duration(\"%s\")", good[i].text);
                v = 42;
                g_assert_cmpint(parse_duration(good[i].text, &v), ==, 0);
                g_assert_cmpuint(v, ==, good[i].usec);
        }
        for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
                g_test_message("parse_duration(\"%s\")", bad[i]);
                v = 42;
                g_assert_cmpint(parse_duration(bad[i], &v), ==, -EINVAL);
                g_assert_cmpuint(v, ==, 42);
        }
        g_assert_cmpint(parse_duration(NULL, &v), ==, -EINVAL);
        g_assert_cmpint(parse_duration("99999999999999999999", &v), ==, -ERANGE);
        g_assert_cmpint(parse_duration("300000000000d", &v), ==, -ERANGE);
        g_assert_cmpint(parse_duration("18446744073709551615us", &v), ==, -ERANGE);
        g_assert_cmpint(parse_duration("18446744073709551614us", &v), ==, 0);
        g_assert_cmpuint(v, ==, UINT64_MAX - 1);
}

static void test_exit_code(void) {
        int v = -1;

        g_assert_cmpint(parse_exit_code("0", &v), ==, 0);
        g_assert_cmpint(v, ==, 0);
        g_assert_cmpint(parse_exit_code("75", &v), ==, 0);
        g_assert_cmpint(v, ==, 75);
        g_assert_cmpint(parse_exit_code("255", &v), ==, 0);
        g_assert_cmpint(v, ==, 255);
        g_assert_cmpint(parse_exit_code("256", &v), ==, -ERANGE);
        g_assert_cmpint(parse_exit_code("-1", &v), ==, -EINVAL);
        g_assert_cmpint(parse_exit_code("", &v), ==, -EINVAL);
        g_assert_cmpint(parse_exit_code("1x", &v), ==, -EINVAL);
        g_assert_cmpint(parse_exit_code(" 1", &v), ==, -EINVAL);
        g_assert_cmpint(v, ==, 255);
}

static void test_timestamp(void) {
        g_autofree char *a = NULL, *b = NULL, *c = NULL;

        g_setenv("TZ", "UTC", true);
        tzset();
        /* 2026-11-22 12:00:00 UTC was a Sunday. */
        a = format_timestamp(UINT64_C(1795348800) * USEC_PER_SEC + 999999);
        g_assert_cmpstr(a, ==, "Sun 2026-11-22 12:00:00 UTC");
        b = format_timestamp(0);
        g_assert_cmpstr(b, ==, "Thu 1970-01-01 00:00:00 UTC");

        g_setenv("TZ", "CET-1", true);
        tzset();
        c = format_timestamp(UINT64_C(1795348800) * USEC_PER_SEC);
        g_assert_cmpstr(c, ==, "Sun 2026-11-22 13:00:00 CET");
}

static void test_escape_cell(void) {
        static const struct {
                const char *in, *out;
        } cases[] = {
                { "",                   "" },
                { "db",                 "db" },
                { "a b/\xc3\xbc",       "a b/\xc3\xbc" },
                { "1\n2\t3\r4",         "1\\n2\\t3\\r4" },
                { "\x01\x1b[31m\x7f",   "\\x01\\x1b[31m\\x7f" },
                { "back\\slash",        "back\\slash" },
        };

        for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
                g_autofree char *s = escape_cell(cases[i].in);

                g_assert_cmpstr(s, ==, cases[i].out);
        }
}

static void test_width(void) {
        g_assert_cmpuint(utf8_width(""), ==, 0);
        g_assert_cmpuint(utf8_width("abc"), ==, 3);
        /* Two code points, two columns, whatever the locale. */
        g_assert_cmpuint(utf8_width("\xc3\xbc\xe2\x82\xac"), ==, 2);
        /* An invalid byte counts as one. */
        g_assert_cmpuint(utf8_width("a\xff"), ==, 2);
        if (setlocale(LC_CTYPE, "C.UTF-8")) {
                /* A wide character takes two columns, a combining one none. */
                g_assert_cmpuint(utf8_width("\xe6\x97\xa5"), ==, 2);
                g_assert_cmpuint(utf8_width("e\xcc\x81"), ==, 1);
                setlocale(LC_CTYPE, "C");
        }
}

static void test_json_string(void) {
        static const struct {
                const char *in, *out;
        } cases[] = {
                { "",                           "\"\"" },
                { "db",                         "\"db\"" },
                { "\"q\" \\ /",                 "\"\\\"q\\\" \\\\ /\"" },
                { "\b\f\n\r\t",                 "\"\\b\\f\\n\\r\\t\"" },
                { "\x01\x1f\x7f",               "\"\\u0001\\u001f\\u007f\"" },
                { "\xc3\xbc\xf0\x9f\x94\x92",   "\"\xc3\xbc\xf0\x9f\x94\x92\"" },
        };

        for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
                char *buf = NULL;
                size_t size = 0;
                FILE *f = open_memstream(&buf, &size);

                g_assert_nonnull(f);
                json_write_string(f, cases[i].in);
                g_assert_cmpint(fclose(f), ==, 0);
                g_assert_cmpstr(buf, ==, cases[i].out);
                free(buf);
        }
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/cli-util/duration", test_duration);
        g_test_add_func("/cli-util/exit-code", test_exit_code);
        g_test_add_func("/cli-util/timestamp", test_timestamp);
        g_test_add_func("/cli-util/escape-cell", test_escape_cell);
        g_test_add_func("/cli-util/width", test_width);
        g_test_add_func("/cli-util/json-string", test_json_string);

        return g_test_run();
}
