/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wchar.h>

#include "lockbusctl-util.h"
#include "macro.h"

static const struct {
        const char *name;
        uint64_t usec;
} duration_units[] = {
        { "us",      1                      },
        { "usec",    1                      },
        { "\xc2\xb5s", 1                    },      /* µs, MICRO SIGN */
        { "\xce\xbcs", 1                    },      /* μs, GREEK SMALL LETTER MU */
        { "ms",      USEC_PER_MSEC          },
        { "msec",    USEC_PER_MSEC          },
        { "s",       USEC_PER_SEC           },
        { "sec",     USEC_PER_SEC           },
        { "second",  USEC_PER_SEC           },
        { "seconds", USEC_PER_SEC           },
        { "m",       60 * USEC_PER_SEC      },
        { "min",     60 * USEC_PER_SEC      },
        { "minute",  60 * USEC_PER_SEC      },
        { "minutes", 60 * USEC_PER_SEC      },
        { "h",       3600 * USEC_PER_SEC    },
        { "hr",      3600 * USEC_PER_SEC    },
        { "hour",    3600 * USEC_PER_SEC    },
        { "hours",   3600 * USEC_PER_SEC    },
        { "d",       86400 * USEC_PER_SEC   },
        { "day",     86400 * USEC_PER_SEC   },
        { "days",    86400 * USEC_PER_SEC   },
};

static bool is_unit_char(char c) {
        return isalpha((unsigned char) c) || (unsigned char) c >= 0x80;
}

static int add_usec(uint64_t *sum, uint64_t v) {
        if (v > UINT64_MAX - 1 - *sum)     /* UINT64_MAX means "forever" */
                return -ERANGE;
        *sum += v;
        return 0;
}

int parse_duration(const char *s, uint64_t *ret_usec) {
        uint64_t total = 0;
        bool any = false;

        if (!s)
                return -EINVAL;

        while (isspace((unsigned char) *s))
                s++;
        if (strncmp(s, "infinity", 8) == 0) {
                const char *p = s + 8;

                while (isspace((unsigned char) *p))
                        p++;
                if (*p)
                        return -EINVAL;
                *ret_usec = USEC_INFINITY;
                return 0;
        }

        for (;;) {
                const char *digits, *frac = NULL, *unit;
                uint64_t whole = 0, unit_usec = USEC_PER_SEC, frac_usec = 0, div;
                size_t n_frac = 0, n_unit;
                bool found = false;
                int r;

                while (isspace((unsigned char) *s))
                        s++;
                if (!*s)
                        break;

                /* The number: digits, optionally a fraction. */
                digits = s;
                while (isdigit((unsigned char) *s)) {
                        uint64_t d = (uint64_t) (*s - '0');

                        if (whole > (UINT64_MAX - d) / 10)
                                return -ERANGE;
                        whole = whole * 10 + d;
                        s++;
                }
                if (*s == '.') {
                        s++;
                        frac = s;
                        while (isdigit((unsigned char) *s))
                                s++;
                        n_frac = (size_t) (s - frac);
                }
                if (s == digits || (s - digits == 1 && *digits == '.'))
                        return -EINVAL;         /* no digits at all */

                /* The unit, if any (a number without one is seconds). */
                while (isspace((unsigned char) *s))
                        s++;
                unit = s;
                while (is_unit_char(*s))
                        s++;
                n_unit = (size_t) (s - unit);
                if (n_unit > 0) {
                        for (size_t i = 0; i < ELEMENTSOF(duration_units); i++)
                                if (strlen(duration_units[i].name) == n_unit &&
                                    memcmp(duration_units[i].name, unit, n_unit) == 0) {
                                        unit_usec = duration_units[i].usec;
                                        found = true;
                                        break;
                                }
                        if (!found)
                                return -EINVAL;
                } else if (*s)
                        return -EINVAL;         /* "1.2.3", "5 10" */

                if (whole > 0 && unit_usec > UINT64_MAX / whole)
                        return -ERANGE;
                r = add_usec(&total, whole * unit_usec);
                if (r < 0)
                        return r;

                /* Fraction digits, as far as they matter (µs resolution). */
                div = 10;
                for (size_t i = 0; i < n_frac && div <= UINT64_C(1000000000000000000); i++, div *= 10)
                        frac_usec += (uint64_t) (frac[i] - '0') * (unit_usec / div) +
                                     (uint64_t) (frac[i] - '0') * (unit_usec % div) / div;
                r = add_usec(&total, frac_usec);
                if (r < 0)
                        return r;

                any = true;
        }

        if (!any)
                return -EINVAL;
        *ret_usec = total;
        return 0;
}

int parse_exit_code(const char *s, int *ret) {
        char *end = NULL;
        long v;

        if (!s || !isdigit((unsigned char) *s))
                return -EINVAL;
        errno = 0;
        v = strtol(s, &end, 10);
        if (errno != 0 || !end || *end)
                return -EINVAL;
        if (v < 0 || v > 255)
                return -ERANGE;
        *ret = (int) v;
        return 0;
}

char *format_timestamp(uint64_t usec) {
        /* Fixed English day names, as systemd: the output does not change
         * with the locale, only the time zone does. */
        static const char *const weekdays[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
        time_t t = (time_t) (usec / USEC_PER_SEC);
        char buf[128];
        struct tm tm;
        char *s = NULL;

        if (!localtime_r(&t, &tm) || tm.tm_wday < 0 || tm.tm_wday > 6)
                return strdup("n/a");
        if (strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S %Z", &tm) == 0)
                return strdup("n/a");
        if (asprintf(&s, "%s %s", weekdays[tm.tm_wday], buf) < 0)
                return NULL;
        return s;
}

char *escape_cell(const char *s) {
        size_t n = strlen(s);
        char *out, *p;

        out = malloc(n * 4 + 1);
        if (!out)
                return NULL;
        p = out;
        for (const char *c = s; *c; c++) {
                unsigned char u = (unsigned char) *c;

                switch (u) {
                case '\n':
                        *p++ = '\\';
                        *p++ = 'n';
                        break;
                case '\t':
                        *p++ = '\\';
                        *p++ = 't';
                        break;
                case '\r':
                        *p++ = '\\';
                        *p++ = 'r';
                        break;
                default:
                        if (u < 0x20 || u == 0x7f)
                                p += sprintf(p, "\\x%02x", u);
                        else
                                *p++ = (char) u;
                }
        }
        *p = '\0';
        return out;
}

/* One code point from UTF-8 at s; *len its length. Invalid bytes count as
 * one code point of their own (U+FFFD). */
static uint32_t utf8_next(const unsigned char *s, size_t *len) {
        uint32_t cp;
        size_t n;

        if (s[0] < 0x80) {
                *len = 1;
                return s[0];
        }
        if ((s[0] & 0xe0) == 0xc0) {
                cp = s[0] & 0x1f;
                n = 2;
        } else if ((s[0] & 0xf0) == 0xe0) {
                cp = s[0] & 0x0f;
                n = 3;
        } else if ((s[0] & 0xf8) == 0xf0) {
                cp = s[0] & 0x07;
                n = 4;
        } else {
                *len = 1;
                return 0xfffd;
        }
        for (size_t i = 1; i < n; i++) {
                if ((s[i] & 0xc0) != 0x80) {
                        *len = 1;
                        return 0xfffd;
                }
                cp = (cp << 6) | (s[i] & 0x3f);
        }
        *len = n;
        return cp;
}

size_t utf8_width(const char *s) {
        const unsigned char *p = (const unsigned char *) s;
        size_t width = 0;

        while (*p) {
                size_t len;
                uint32_t cp = utf8_next(p, &len);
                int w = cp < 0x80 ? 1 : wcwidth((wchar_t) cp);

                width += w < 0 ? 1 : (size_t) w;
                p += len;
        }
        return width;
}

void json_write_string(FILE *f, const char *s) {
        fputc('"', f);
        for (const char *c = s; *c; c++) {
                unsigned char u = (unsigned char) *c;

                switch (u) {
                case '"':
                        fputs("\\\"", f);
                        break;
                case '\\':
                        fputs("\\\\", f);
                        break;
                case '\b':
                        fputs("\\b", f);
                        break;
                case '\f':
                        fputs("\\f", f);
                        break;
                case '\n':
                        fputs("\\n", f);
                        break;
                case '\r':
                        fputs("\\r", f);
                        break;
                case '\t':
                        fputs("\\t", f);
                        break;
                default:
                        if (u < 0x20 || u == 0x7f)
                                fprintf(f, "\\u%04x", u);
                        else
                                fputc(u, f);
                }
        }
        fputc('"', f);
}
