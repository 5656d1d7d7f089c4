/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench-util.h"

uint64_t now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * NSEC_PER_SEC + (uint64_t) ts.tv_nsec;
}

/* --- Histogram ----------------------------------------------------------- */

static unsigned histogram_index(uint64_t ns) {
        unsigned e;

        if (ns < HISTOGRAM_SUB)
                return (unsigned) ns;
        e = 63U - (unsigned) __builtin_clzll(ns);      /* >= HISTOGRAM_SUB_BITS */
        return (e - HISTOGRAM_SUB_BITS + 1U) * HISTOGRAM_SUB +
               (unsigned) ((ns >> (e - HISTOGRAM_SUB_BITS)) & (HISTOGRAM_SUB - 1U));
}

/* The middle of bucket i. */
static uint64_t histogram_bucket_value(unsigned i) {
        unsigned major = i / HISTOGRAM_SUB, sub = i % HISTOGRAM_SUB, shift;

        if (major == 0)
                return sub;
        shift = major - 1U;
        return (((uint64_t) HISTOGRAM_SUB + sub) << shift) + ((1ULL << shift) >> 1);
}

void histogram_init(Histogram *h) {
        memset(h, 0, sizeof(*h));
        h->min_ns = UINT64_MAX;
}

void histogram_add(Histogram *h, uint64_t ns) {
        h->buckets[histogram_index(ns)]++;
        h->count++;
        h->sum_ns += ns;
        if (ns < h->min_ns)
                h->min_ns = ns;
        if (ns > h->max_ns)
                h->max_ns = ns;
}

void histogram_merge(Histogram *into, const Histogram *from) {
        for (unsigned i = 0; i < HISTOGRAM_BUCKETS; i++)
                into->buckets[i] += from->buckets[i];
        into->count += from->count;
        into->sum_ns += from->sum_ns;
        if (from->min_ns < into->min_ns)
                into->min_ns = from->min_ns;
        if (from->max_ns > into->max_ns)
                into->max_ns = from->max_ns;
}

uint64_t histogram_quantile(const Histogram *h, double q) {
        uint64_t rank, seen = 0;

        if (h->count == 0)
                return 0;
        rank = (uint64_t) ceil(q * (double) h->count);
        if (rank < 1)
                rank = 1;
        for (unsigned i = 0; i < HISTOGRAM_BUCKETS; i++) {
                seen += h->buckets[i];
                if (seen >= rank) {
                        uint64_t v = histogram_bucket_value(i);

                        /* Never outside what was seen. */
                        return v < h->min_ns ? h->min_ns : v > h->max_ns ? h->max_ns : v;
                }
        }
        return h->max_ns;
}

double histogram_mean_ns(const Histogram *h) {
        return h->count > 0 ? (double) h->sum_ns / (double) h->count : 0.0;
}

/* --- I/O ----------------------------------------------------------------- */

int write_full(int fd, const void *data, size_t size) {
        const char *p = data;

        while (size > 0) {
                ssize_t n = write(fd, p, size);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += n;
                size -= (size_t) n;
        }
        return 0;
}

int read_full(int fd, void *data, size_t size) {
        char *p = data;

        while (size > 0) {
                ssize_t n = read(fd, p, size);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EPIPE;
                p += n;
                size -= (size_t) n;
        }
        return 0;
}

/* --- Processes ----------------------------------------------------------- */

int drop_privileges(uid_t uid) {
        if (setgroups(0, NULL) < 0)
                return -errno;
        if (setresgid((gid_t) uid, (gid_t) uid, (gid_t) uid) < 0)
                return -errno;
        if (setresuid(uid, uid, uid) < 0)
                return -errno;
        return 0;
}

int raise_fd_limit(uint64_t n) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return -errno;
        if (rl.rlim_cur >= n)
                return 0;
        rl.rlim_cur = n;
        if (rl.rlim_max < n)
                rl.rlim_max = n;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                return -errno;
        return 0;
}

int64_t process_cpu_ns(pid_t pid) {
        char path[64];
        int64_t total = 0;
        struct dirent *de;
        DIR *d;

        snprintf(path, sizeof(path), "/proc/%d/task", (int) pid);
        d = opendir(path);
        if (!d)
                return -errno;
        while ((de = readdir(d))) {
                unsigned long long ns;
                char file[300];
                FILE *f;

                if (de->d_name[0] == '.')
                        continue;
                snprintf(file, sizeof(file), "/proc/%d/task/%s/schedstat", (int) pid, de->d_name);
                f = fopen(file, "re");
                if (!f)
                        continue;       /* the thread just left */
                if (fscanf(f, "%llu", &ns) == 1)
                        total += (int64_t) ns;
                fclose(f);
        }
        closedir(d);
        return total;
}

int64_t process_rss_kib(pid_t pid) {
        _cleanup_free_ char *line = NULL;
        char path[64];
        size_t size = 0;
        int64_t kib = -ENODATA;
        FILE *f;

        snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        f = fopen(path, "re");
        if (!f)
                return -errno;
        while (getline(&line, &size, f) > 0)
                if (strncmp(line, "VmRSS:", 6) == 0) {
                        kib = strtoll(line + 6, NULL, 10);
                        break;
                }
        fclose(f);
        return kib;
}

void bench_log(const char *format, ...) {
        va_list ap;

        fprintf(stderr, "%s: ", program_invocation_short_name);
        va_start(ap, format);
        vfprintf(stderr, format, ap);
        va_end(ap);
        fputc('\n', stderr);
}

/* --- JSON ---------------------------------------------------------------- */

static void json_key(JsonWriter *j, const char *key) {
        fputs(j->first ? "\"" : ", \"", j->f);
        j->first = false;
        fputs(key, j->f);       /* keys are ours: plain ASCII */
        fputs("\": ", j->f);
}

const char *json_tag = NULL;

void json_begin(JsonWriter *j, FILE *f) {
        *j = (JsonWriter) { .f = f, .first = true };
        fputc('{', f);
}

void json_string(JsonWriter *j, const char *key, const char *value) {
        json_key(j, key);
        if (!value) {
                fputs("null", j->f);
                return;
        }
        fputc('"', j->f);
        for (const unsigned char *p = (const unsigned char *) value; *p; p++)
                if (*p == '"' || *p == '\\')
                        fprintf(j->f, "\\%c", *p);
                else if (*p < 0x20)
                        fprintf(j->f, "\\u%04x", *p);
                else
                        fputc(*p, j->f);
        fputc('"', j->f);
}

void json_uint(JsonWriter *j, const char *key, uint64_t value) {
        json_key(j, key);
        fprintf(j->f, "%" PRIu64, value);
}

void json_int(JsonWriter *j, const char *key, int64_t value) {
        json_key(j, key);
        fprintf(j->f, "%" PRIi64, value);
}

void json_double(JsonWriter *j, const char *key, double value) {
        json_key(j, key);
        if (isfinite(value))
                fprintf(j->f, "%.6g", value);
        else
                fputs("null", j->f);
}

void json_bool(JsonWriter *j, const char *key, bool value) {
        json_key(j, key);
        fputs(value ? "true" : "false", j->f);
}

void json_histogram(JsonWriter *j, const char *prefix, const Histogram *h) {
        char key[128];

#define FIELD(suffix) (snprintf(key, sizeof(key), "%s_%s", prefix, suffix), key)
        json_uint(j, FIELD("samples"), h->count);
        json_double(j, FIELD("mean_us"), histogram_mean_ns(h) / NSEC_PER_USEC);
        json_double(j, FIELD("p50_us"), (double) histogram_quantile(h, 0.50) / NSEC_PER_USEC);
        json_double(j, FIELD("p90_us"), (double) histogram_quantile(h, 0.90) / NSEC_PER_USEC);
        json_double(j, FIELD("p99_us"), (double) histogram_quantile(h, 0.99) / NSEC_PER_USEC);
        json_double(j, FIELD("max_us"), (double) (h->count > 0 ? h->max_ns : 0) / NSEC_PER_USEC);
#undef FIELD
}

void json_end(JsonWriter *j) {
        if (json_tag)
                json_string(j, "tag", json_tag);
        fputs("}\n", j->f);
        fflush(j->f);
}
