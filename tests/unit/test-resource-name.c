/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Resource-name rules and their file-name escaping: no valid name may reach
 * outside the lock directory, and distinct names get distinct stems. */

#include <errno.h>
#include <string.h>

#include <glib.h>

#include "macro.h"
#include "resource-name.h"

/* Names that must be valid and safe on disk. */
static const char *const tricky_names[] = {
        "db",
        "../x",
        "/etc/passwd",
        "..",
        ".",
        ".hidden",
        "a/b/../../c",
        "./.",
        "with space",
        " leading and trailing ",
        "ümlaut-ロック",
        "100%",
        "%2F",
        "user@host",
        "@",
        "~",
        "~root",
        "a~b",
        "tokens",
        ".quarantine",
        ".tmp-0000000000000000",
        "name@17",
        "\\back\\slash",
        "*?[]{}$`'\"!#&;|<>()",
};

static char *repeat(char c, size_t n) {
        char *s = g_malloc(n + 1);

        memset(s, c, n);
        s[n] = '\0';
        return s;
}

/* Every stem must be one harmless path component (resource-name.h). */
static void assert_stem_is_safe(const char *name, const char *stem) {
        size_t n = strlen(stem), tildes = 0;

        g_assert_cmpuint(n, >, 0);
        g_assert_cmpuint(n, <=, RESOURCE_FILE_STEM_MAX);
        g_assert_cmpint(stem[0], !=, '.');
        g_assert_null(strchr(stem, '/'));
        g_assert_null(strchr(stem, '@'));

        for (size_t i = 0; i < n; i++) {
                char c = stem[i];

                if (c == '%') {
                        /* A complete escape, never cut in half. */
                        g_assert_cmpuint(i + 2, <, n);
                        g_assert_true(g_ascii_isxdigit(stem[i + 1]) && !g_ascii_islower(stem[i + 1]));
                        g_assert_true(g_ascii_isxdigit(stem[i + 2]) && !g_ascii_islower(stem[i + 2]));
                        i += 2;
                } else if (c == '~')
                        tildes++;
                else
                        g_assert_true(g_ascii_isalnum(c) || c == '_' || c == '-' || c == '.');
        }
        g_assert_cmpuint(tildes, <=, 1);

        /* A shortened stem ends in "~" + 32 hex digits of SHA-256(name). */
        if (tildes == 1) {
                g_autofree char *sum = g_compute_checksum_for_string(G_CHECKSUM_SHA256, name, -1);
                const char *t = strchr(stem, '~');

                g_assert_cmpuint(strlen(t + 1), ==, 32);
                g_assert_true(strncmp(t + 1, sum, 32) == 0);
        }
}

static char *stem_of(const char *name) {
        char *stem = NULL;

        g_assert_cmpint(resource_name_to_file_stem(name, &stem), ==, 0);
        g_assert_nonnull(stem);
        assert_stem_is_safe(name, stem);
        return stem;
}

static void test_valid(void) {
        _cleanup_free_ char *max = repeat('a', 255);
        g_autoptr(GString) max_utf8 = g_string_new(NULL);

        for (size_t i = 0; i < ELEMENTSOF(tricky_names); i++)
                g_assert_true(resource_name_is_valid(tricky_names[i]));

        g_assert_true(resource_name_is_valid("a"));
        g_assert_true(resource_name_is_valid(max));

        /* 85 three-byte characters are exactly 255 bytes. */
        for (int i = 0; i < 85; i++)
                g_string_append(max_utf8, "ロ");
        g_assert_cmpuint(max_utf8->len, ==, 255);
        g_assert_true(resource_name_is_valid(max_utf8->str));
}

static void test_invalid(void) {
        _cleanup_free_ char *too_long = repeat('a', 256);
        _cleanup_free_ char *cut_utf8 = repeat('a', 255);
        char with_control[] = "a_b";

        g_assert_false(resource_name_is_valid(NULL));
        g_assert_false(resource_name_is_valid(""));
        g_assert_false(resource_name_is_valid(too_long));

        /* Every ASCII control character, alone and inside a name. */
        for (int c = 0x01; c <= 0x7f; c++) {
                char alone[2] = { (char) c, 0 };
                bool is_control = c <= 0x1f || c == 0x7f;

                with_control[1] = (char) c;
                g_assert_cmpint(resource_name_is_valid(alone), ==, !is_control);
                g_assert_cmpint(resource_name_is_valid(with_control), ==, !is_control);
        }

        /* Not UTF-8: a stray byte, a truncated sequence, an overlong '/', a
         * UTF-16 surrogate, and a character cut by the length limit. */
        g_assert_false(resource_name_is_valid("\xff"));
        g_assert_false(resource_name_is_valid("a\xff"));
        g_assert_false(resource_name_is_valid("\xc3"));
        g_assert_false(resource_name_is_valid("\xc0\xaf"));
        g_assert_false(resource_name_is_valid("\xed\xa0\x80"));
        memcpy(cut_utf8 + 253, "\xc3\xbc", 2);
        g_assert_true(resource_name_is_valid(cut_utf8));
        cut_utf8[253] = 'a';
        cut_utf8[254] = '\xc3';
        g_assert_false(resource_name_is_valid(cut_utf8));
}

static void assert_stem(const char *name, const char *expected) {
        _cleanup_free_ char *stem = stem_of(name);

        g_assert_cmpstr(stem, ==, expected);
}

static void test_escape_plain(void) {
        assert_stem("db", "db");
        assert_stem("Az09_-.x", "Az09_-.x");
        assert_stem("a.b.c", "a.b.c");
        assert_stem("-", "-");
}

static void test_escape_traversal(void) {
        /* No '/', and a leading '.' is escaped: never ".", ".." or hidden. */
        assert_stem("..", "%2E.");
        assert_stem(".", "%2E");
        assert_stem(".hidden", "%2Ehidden");
        assert_stem("../x", "%2E.%2Fx");
        assert_stem("/etc/passwd", "%2Fetc%2Fpasswd");
        assert_stem("a/b/../../c", "a%2Fb%2F..%2F..%2Fc");
        assert_stem(".quarantine", "%2Equarantine");
        assert_stem(".tmp-0000000000000000", "%2Etmp-0000000000000000");
}

static void test_escape_special(void) {
        /* '%' and '~' are escaped, so escapes and the hash suffix are
         * unambiguous; '@' separates the stem from the token. */
        assert_stem("100%", "100%25");
        assert_stem("%2F", "%252F");
        assert_stem("user@host", "user%40host");
        assert_stem("~", "%7E");
        assert_stem("with space", "with%20space");
        assert_stem("\\", "%5C");
        assert_stem("ümlaut-ロック", "%C3%BCmlaut-%E3%83%AD%E3%83%83%E3%82%AF");
}

static void test_escape_long(void) {
        _cleanup_free_ char *name200 = repeat('a', 200), *name201 = repeat('a', 201);
        _cleanup_free_ char *name255 = repeat('a', 255), *slashes = repeat('/', 255);
        _cleanup_free_ char *stem200 = NULL, *stem201 = NULL, *stem255 = NULL, *stem_slashes = NULL;
        _cleanup_free_ char *a = repeat('x', 255), *b = repeat('x', 255), *stem_a = NULL, *stem_b = NULL;

        /* Exactly the limit: kept as is. */
        stem200 = stem_of(name200);
        g_assert_cmpstr(stem200, ==, name200);

        /* One byte more: cut, with the hash of the whole name. */
        stem201 = stem_of(name201);
        g_assert_cmpuint(strlen(stem201), ==, RESOURCE_FILE_STEM_MAX);
        g_assert_nonnull(strchr(stem201, '~'));
        g_assert_true(strncmp(stem201, name201, RESOURCE_FILE_STEM_MAX - 33) == 0);

        stem255 = stem_of(name255);
        g_assert_cmpuint(strlen(stem255), ==, RESOURCE_FILE_STEM_MAX);
        g_assert_cmpstr(stem201, !=, stem255);

        /* All escapes: the cut falls between two "%2F", never inside one. */
        stem_slashes = stem_of(slashes);
        g_assert_cmpuint(strlen(stem_slashes), ==, 165 + 33);
        g_assert_true(g_str_has_prefix(stem_slashes, "%2F%2F"));

        /* Names that differ only far behind the cut still differ. */
        a[230] = 'a';
        b[230] = 'b';
        stem_a = stem_of(a);
        stem_b = stem_of(b);
        g_assert_cmpstr(stem_a, !=, stem_b);
        g_assert_cmpuint(strlen(stem_a), ==, strlen(stem_b));
}

static void test_escape_invalid(void) {
        _cleanup_free_ char *too_long = repeat('a', 256);
        char *stem = NULL;

        g_assert_cmpint(resource_name_to_file_stem(NULL, &stem), ==, -EINVAL);
        g_assert_cmpint(resource_name_to_file_stem("", &stem), ==, -EINVAL);
        g_assert_cmpint(resource_name_to_file_stem(too_long, &stem), ==, -EINVAL);
        g_assert_cmpint(resource_name_to_file_stem("a\nb", &stem), ==, -EINVAL);
        g_assert_cmpint(resource_name_to_file_stem("\x7f", &stem), ==, -EINVAL);
        g_assert_cmpint(resource_name_to_file_stem("\xff", &stem), ==, -EINVAL);
        g_assert_null(stem);
}

/* Random valid names of every length, from an alphabet heavy in the
 * characters that matter; the seed is printed by g_test (--seed). */
static char *random_name(void) {
        static const char *const pieces[] = {
                "a", "Z", "0", "_", "-", ".", "/", "%", "@", "~", " ", "..", "ü", "ロ", "\xf0\x9f\x94\x92",
        };
        GString *s = g_string_new(NULL);
        size_t target = (size_t) g_test_rand_int_range(1, 256);

        while (s->len < target) {
                const char *p = pieces[g_test_rand_int_range(0, (gint32) ELEMENTSOF(pieces))];

                if (s->len + strlen(p) > 255)
                        break;
                g_string_append(s, p);
        }
        if (s->len == 0)
                g_string_append_c(s, 'x');

        return g_string_free(s, false);
}

static void test_escape_properties(void) {
        g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);

        /* Each name maps to one stem, and no two names share one. */
        for (int i = 0; i < 20000; i++) {
                g_autofree char *name = NULL;
                char *stem, *other;

                if (i < (int) ELEMENTSOF(tricky_names))
                        name = g_strdup(tricky_names[i]);
                else if (i < (int) ELEMENTSOF(tricky_names) + 0x5f)
                        name = g_strdup_printf("%c", 0x20 + i - (int) ELEMENTSOF(tricky_names));
                else
                        name = random_name();

                g_assert_true(resource_name_is_valid(name));
                stem = stem_of(name);

                other = g_hash_table_lookup(seen, stem);
                if (other) {
                        /* Only the same name may give the same stem. */
                        g_assert_cmpstr(other, ==, name);
                        free(stem);
                        continue;
                }
                g_hash_table_insert(seen, g_strdup(stem), g_strdup(name));
                free(stem);
        }
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/resource-name/valid", test_valid);
        g_test_add_func("/resource-name/invalid", test_invalid);
        g_test_add_func("/resource-name/escape/plain", test_escape_plain);
        g_test_add_func("/resource-name/escape/traversal", test_escape_traversal);
        g_test_add_func("/resource-name/escape/special", test_escape_special);
        g_test_add_func("/resource-name/escape/long", test_escape_long);
        g_test_add_func("/resource-name/escape/invalid", test_escape_invalid);
        g_test_add_func("/resource-name/escape/properties", test_escape_properties);

        return g_test_run();
}
