/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lockbusctl-output.h"
#include "lockbusctl-util.h"
#include "macro.h"

enum {
        COLUMN_RESOURCE,
        COLUMN_MODE,
        COLUMN_USER,
        COLUMN_PID,
        COLUMN_COMM,
        COLUMN_SCOPE,
        COLUMN_TOKEN,
        COLUMN_SINCE,
        COLUMN_EXPIRES,
        COLUMN_DESCRIPTION,
        _COLUMN_MAX,
};

static const char *const column_names[_COLUMN_MAX] = {
        [COLUMN_RESOURCE]    = "RESOURCE",
        [COLUMN_MODE]        = "MODE",
        [COLUMN_USER]        = "USER",
        [COLUMN_PID]         = "PID",
        [COLUMN_COMM]        = "COMM",
        [COLUMN_SCOPE]       = "SCOPE",
        [COLUMN_TOKEN]       = "TOKEN",
        [COLUMN_SINCE]       = "SINCE",
        [COLUMN_EXPIRES]     = "EXPIRES",
        [COLUMN_DESCRIPTION] = "DESCRIPTION",
};

static void oom(void) {
        fputs("Out of memory.\n", stderr);
        exit(EXIT_FAILURE);
}

static char *xasprintf(const char *format, ...) _printf_(1, 2);
static char *xasprintf(const char *format, ...) {
        va_list ap;
        char *s;
        int r;

        va_start(ap, format);
        r = vasprintf(&s, format, ap);
        va_end(ap);
        if (r < 0)
                oom();
        return s;
}

/* The user name of uid, or NULL. */
static const char *user_name(uid_t uid, bool resolve_users) {
        struct passwd *pw;

        if (!resolve_users)
                return NULL;
        pw = getpwuid(uid);
        return pw ? pw->pw_name : NULL;
}

static char *cell(const lockbus_holder *h, int column, bool resolve_users) {
        char *s;

        switch (column) {
        case COLUMN_RESOURCE:
                s = escape_cell(h->resource);
                break;
        case COLUMN_MODE:
                s = strdup(strempty(lockbus_mode_to_string(h->mode)));
                break;
        case COLUMN_USER: {
                const char *name = user_name(h->uid, resolve_users);

                s = name ? escape_cell(name) : xasprintf(UID_FMT, (uint32_t) h->uid);
                break;
        }
        case COLUMN_PID:
                s = xasprintf(PID_FMT, (int32_t) h->pid);
                break;
        case COLUMN_COMM:
                s = escape_cell(h->comm);
                break;
        case COLUMN_SCOPE:
                s = strdup(strempty(lockbus_scope_to_string(h->scope)));
                break;
        case COLUMN_TOKEN:
                s = xasprintf("%" PRIu64, h->token);
                break;
        case COLUMN_SINCE:
                s = format_timestamp(h->since_usec);
                break;
        case COLUMN_EXPIRES:
                s = h->expires_usec == 0 ? strdup("never") : format_timestamp(h->expires_usec);
                break;
        case COLUMN_DESCRIPTION:
                s = escape_cell(h->description);
                break;
        default:
                s = strdup("");
        }
        if (!s)
                oom();
        return s;
}

void print_holders_table(FILE *f, const lockbus_holder *holders, size_t n, bool legend, bool resolve_users) {
        size_t width[_COLUMN_MAX];
        char **cells;

        cells = calloc(n * _COLUMN_MAX + 1, sizeof(char *));
        if (!cells)
                oom();

        for (int c = 0; c < _COLUMN_MAX; c++)
                width[c] = legend ? strlen(column_names[c]) : 0;
        for (size_t i = 0; i < n; i++)
                for (int c = 0; c < _COLUMN_MAX; c++) {
                        size_t w;

                        cells[i * _COLUMN_MAX + c] = cell(&holders[i], c, resolve_users);
                        w = utf8_width(cells[i * _COLUMN_MAX + c]);
                        if (w > width[c])
                                width[c] = w;
                }

        if (legend && n > 0)
                for (int c = 0; c < _COLUMN_MAX; c++) {
                        if (c == _COLUMN_MAX - 1)
                                fprintf(f, "%s\n", column_names[c]);
                        else
                                fprintf(f, "%-*s  ", (int) width[c], column_names[c]);
                }

        for (size_t i = 0; i < n; i++) {
                char **row = cells + i * _COLUMN_MAX;
                int last = _COLUMN_MAX - 1;

                /* No trailing blanks: stop after the last cell that has text. */
                while (last > 0 && !*row[last])
                        last--;
                for (int c = 0; c <= last; c++) {
                        fputs(row[c], f);
                        if (c == last)
                                break;
                        /* Pad by display width, not bytes. */
                        for (size_t k = utf8_width(row[c]); k < width[c] + 2; k++)
                                fputc(' ', f);
                }
                fputc('\n', f);
        }

        if (legend) {
                if (n > 0)
                        fputc('\n', f);
                fprintf(f, "%zu lock%s listed.\n", n, n == 1 ? "" : "s");
        }

        for (size_t i = 0; i < n * _COLUMN_MAX; i++)
                free(cells[i]);
        free(cells);
}

/* --- JSON ------------------------------------------------------------------- */

static void json_indent(FILE *f, JsonMode mode, unsigned depth) {
        if (mode != JSON_PRETTY)
                return;
        fputc('\n', f);
        for (unsigned i = 0; i < depth; i++)
                fputs("  ", f);
}

void json_object_begin(JsonObject *o, FILE *f, JsonMode mode, unsigned depth) {
        *o = (JsonObject) { .f = f, .mode = mode, .depth = depth, .first = true };
        fputc('{', f);
}

static void json_object_key(JsonObject *o, const char *key) {
        if (!o->first)
                fputc(',', o->f);
        o->first = false;
        json_indent(o->f, o->mode, o->depth + 1);
        json_write_string(o->f, key);
        fputs(o->mode == JSON_PRETTY ? ": " : ":", o->f);
}

void json_object_string(JsonObject *o, const char *key, const char *value) {
        json_object_key(o, key);
        if (value)
                json_write_string(o->f, value);
        else
                fputs("null", o->f);
}

void json_object_unsigned(JsonObject *o, const char *key, uint64_t value) {
        json_object_key(o, key);
        fprintf(o->f, "%" PRIu64, value);
}

void json_object_end(JsonObject *o) {
        if (!o->first)
                json_indent(o->f, o->mode, o->depth);
        fputc('}', o->f);
}

void print_holders_json(FILE *f, const lockbus_holder *holders, size_t n, JsonMode mode, bool resolve_users) {
        fputc('[', f);
        for (size_t i = 0; i < n; i++) {
                const lockbus_holder *h = &holders[i];
                JsonObject o;

                if (i > 0)
                        fputc(',', f);
                json_indent(f, mode, 1);
                json_object_begin(&o, f, mode, 1);
                json_object_string(&o, "resource", h->resource);
                json_object_string(&o, "mode", lockbus_mode_to_string(h->mode));
                json_object_unsigned(&o, "uid", (uint64_t) h->uid);
                json_object_string(&o, "user", user_name(h->uid, resolve_users));
                json_object_unsigned(&o, "pid", (uint64_t) h->pid);
                json_object_string(&o, "comm", h->comm);
                json_object_string(&o, "sender", h->sender);
                json_object_unsigned(&o, "token", h->token);
                json_object_unsigned(&o, "since", h->since_usec);
                json_object_unsigned(&o, "expires", h->expires_usec);
                json_object_string(&o, "scope", lockbus_scope_to_string(h->scope));
                json_object_string(&o, "description", h->description);
                json_object_end(&o);
        }
        if (n > 0)
                json_indent(f, mode, 0);
        fputs("]\n", f);
}

/* --- Pager ------------------------------------------------------------------ */

static pid_t pager_pid = 0;

void pager_open(bool enabled) {
        const char *pager;
        int fds[2];
        pid_t pid;

        if (!enabled || pager_pid > 0 || !isatty(STDOUT_FILENO))
                return;

        pager = getenv("SYSTEMD_PAGER");
        if (!pager)
                pager = getenv("PAGER");
        if (pager && (!*pager || streq(pager, "cat")))
                return;

        if (pipe2(fds, O_CLOEXEC) < 0)
                return;         /* no pager then */
        fflush(stdout);

        pid = fork();
        if (pid < 0) {
                close(fds[0]);
                close(fds[1]);
                return;
        }
        if (pid == 0) {
                if (dup2(fds[0], STDIN_FILENO) < 0)
                        _exit(EXIT_FAILURE);
                /* Chop long lines (S), quit if one screen (F), raw colors
                 * (R), keep the screen (X), long prompt (M), quit on ^C (K). */
                (void) setenv("LESS", "FRSXMK", 0);
                if (pager)
                        execl("/bin/sh", "sh", "-c", pager, (char *) NULL);
                else {
                        execlp("less", "less", (char *) NULL);
                        execlp("more", "more", (char *) NULL);
                }
                /* No pager after all: pass the text through. */
                execlp("cat", "cat", (char *) NULL);
                _exit(EXIT_FAILURE);
        }

        if (dup2(fds[1], STDOUT_FILENO) < 0) {
                close(fds[0]);
                close(fds[1]);
                (void) kill(pid, SIGTERM);
                (void) waitpid(pid, NULL, 0);
                return;
        }
        close(fds[0]);
        close(fds[1]);
        pager_pid = pid;
}

void pager_close(void) {
        if (pager_pid <= 0)
                return;
        fflush(stdout);
        /* EOF for the pager: stdout is the last copy of the pipe's write end. */
        (void) close(STDOUT_FILENO);
        while (waitpid(pager_pid, NULL, 0) < 0 && errno == EINTR)
                ;
        pager_pid = 0;
}
