/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include <lockbus.h>

#include "bench-scenarios.h"
#include "bench-util.h"
#include "lockbus-names.h"

#define DBUS_NAME "org.freedesktop.DBus"
#define DBUS_PATH "/org/freedesktop/DBus"

/* --- Bus helpers ------------------------------------------------------------- */

/* A connection to the system bus (DBUS_SYSTEM_BUS_ADDRESS), Hello answered. */
static int bus_open_ready(sd_bus **ret) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        const char *unique;
        int r;

        r = sd_bus_open_system(&bus);
        if (r < 0)
                return r;
        r = sd_bus_get_unique_name(bus, &unique);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(bus);
        return 0;
}

/* Where calls to lockbusd go: by name on a bus, nowhere on a direct
 * connection (the peer is lockbusd). */
static const char *destination(sd_bus *bus) {
        return sd_bus_is_bus_client(bus) > 0 ? LOCKBUS_BUS_NAME : NULL;
}

/* A connection to lockbusd as liblockbus makes it: through its direct
 * socket if one is given, else through the bus. The handle owns the
 * connection (closing it when it goes); *ret_bus is borrowed from it. */
static int open_lockbus_connection(const char *direct_socket, lockbus **ret, sd_bus **ret_bus) {
        _cleanup_(lockbus_unrefp) lockbus *l = NULL;
        sd_bus *bus;
        const char *unique;
        int r;

        if (setenv("LOCKBUS_DIRECT_SOCKET", direct_socket ?: "", 1) < 0)
                return -errno;
        r = lockbus_open_system(&l);
        if (r < 0)
                return r;
        bus = lockbus_get_bus(l);
        if ((sd_bus_is_bus_client(bus) > 0) == !!direct_socket)
                return -EPROTO;         /* not the path asked for */
        if (!direct_socket) {
                r = sd_bus_get_unique_name(bus, &unique);
                if (r < 0)
                        return r;
        }
        *ret_bus = bus;
        *ret = TAKE_PTR(l);
        return 0;
}

static int name_has_owner(sd_bus *bus) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int has = 0, r;

        r = sd_bus_call_method(bus, DBUS_NAME, DBUS_PATH, DBUS_NAME, "NameHasOwner", NULL, &reply, "s",
                               LOCKBUS_BUS_NAME);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "b", &has);
        return r < 0 ? r : has;
}

/* The pid of the owner of io.lockbus1, -ENXIO if it has none. */
static int daemon_pid(sd_bus *bus, pid_t *ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint32_t pid;
        int r;

        r = sd_bus_call_method(bus, DBUS_NAME, DBUS_PATH, DBUS_NAME, "GetConnectionUnixProcessID", &error, &reply,
                               "s", LOCKBUS_BUS_NAME);
        if (r < 0)
                return sd_bus_error_has_name(&error, "org.freedesktop.DBus.Error.NameHasNoOwner") ? -ENXIO : r;
        r = sd_bus_message_read(reply, "u", &pid);
        if (r < 0)
                return r;
        *ret = (pid_t) pid;
        return 0;
}

static void sleep_ns(uint64_t ns) {
        struct timespec ts = { .tv_sec = (time_t) (ns / NSEC_PER_SEC), .tv_nsec = (long) (ns % NSEC_PER_SEC) };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* Waits until a process (not necessarily our child) is gone. */
static int wait_for_exit(pid_t pid, uint64_t timeout_ns) {
        uint64_t deadline = now_ns() + timeout_ns;
        int fd;

        fd = (int) syscall(SYS_pidfd_open, pid, 0);
        if (fd < 0) {
                if (errno == ESRCH)
                        return 0;
                /* No pidfd: poll for it. */
                while (kill(pid, 0) == 0 || errno != ESRCH) {
                        if (now_ns() >= deadline)
                                return -ETIMEDOUT;
                        sleep_ns(200 * NSEC_PER_USEC);
                }
                return 0;
        }

        struct pollfd p = { .fd = fd, .events = POLLIN };
        int r = poll(&p, 1, (int) (timeout_ns / NSEC_PER_MSEC));
        close(fd);
        if (r < 0)
                return -errno;
        return r == 0 ? -ETIMEDOUT : 0;
}

/* Stops whoever owns io.lockbus1 with `sig` and waits until the process is
 * gone and the name has no owner. */
static int stop_daemon(sd_bus *bus, int sig) {
        uint64_t deadline;
        pid_t pid;
        int r;

        r = daemon_pid(bus, &pid);
        if (r == -ENXIO)
                return 0;
        if (r < 0)
                return r;
        if (kill(pid, sig) < 0)
                return -errno;
        r = wait_for_exit(pid, 30 * NSEC_PER_SEC);
        if (r < 0)
                return r;

        deadline = now_ns() + 10 * NSEC_PER_SEC;
        while ((r = name_has_owner(bus)) > 0) {
                if (now_ns() >= deadline)
                        return -ETIMEDOUT;
                sleep_ns(200 * NSEC_PER_USEC);
        }
        return r;
}

/* Acquire(resource, {mode, scope, timeout}). */
static int new_acquire(sd_bus *bus, const char *resource, const char *mode, const char *scope, uint64_t timeout_usec,
                       sd_bus_message **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, destination(bus), LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE,
                                           "Acquire");
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "sa{sv}", resource, 3,
                                  "mode", "s", mode,
                                  "scope", "s", scope,
                                  "timeout", "t", timeout_usec);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(m);
        return 0;
}

static int call_simple(sd_bus *bus, const char *member, const char *resource, char *error_message, size_t size) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_call_method(bus, destination(bus), LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, member, &error,
                               NULL, "s", resource);
        if (r < 0 && error_message)
                snprintf(error_message, size, "%s('%s'): %s", member, resource, error.message ?: strerror(-r));
        return r;
}

static int acquire_sync(sd_bus *bus, const char *resource, char *error_message, size_t size) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = new_acquire(bus, resource, "exclusive", "connection", 0, &m);
        if (r < 0)
                return r;
        r = sd_bus_call(bus, m, 0, &error, NULL);
        if (r < 0 && error_message)
                snprintf(error_message, size, "Acquire('%s'): %s", resource, error.message ?: strerror(-r));
        return r;
}

static int get_count_property(sd_bus *bus, const char *property, uint32_t *ret) {
        return sd_bus_get_property_trivial(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE,
                                           property, NULL, 'u', ret);
}

/* --- handoff ----------------------------------------------------------------- */

#define HANDOFF_RESOURCE "bench/handoff"

typedef struct Waiting {
        bool answered;
        uint64_t at_ns;
        char error[256];
} Waiting;

static int on_handoff_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Waiting *w = userdata;

        w->at_ns = now_ns();
        w->answered = true;
        if (sd_bus_message_is_method_error(m, NULL))
                snprintf(w->error, sizeof(w->error), "Acquire: %s", sd_bus_message_get_error(m)->message);
        return 0;
}

/* B: queues, says so, waits for the grant, unlocks, reports the time. */
static _Noreturn void handoff_waiter(const ScenarioConfig *config, int sock) {
        _cleanup_(lockbus_unrefp) lockbus *l = NULL;
        sd_bus *bus = NULL;
        char cmd;
        int r;

        (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (config->uid_base > 0 && drop_privileges(config->uid_base + 1) < 0)
                _exit(EXIT_FAILURE);
        if (open_lockbus_connection(config->direct_socket, &l, &bus) < 0)
                _exit(EXIT_FAILURE);
        cmd = 'r';
        if (write_full(sock, &cmd, 1) < 0)
                _exit(EXIT_FAILURE);

        while (read_full(sock, &cmd, 1) >= 0 && cmd == 'g') {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
                Waiting w = {};
                uint64_t t;

                r = new_acquire(bus, HANDOFF_RESOURCE, "exclusive", "connection", UINT64_MAX, &m);
                if (r >= 0)
                        r = sd_bus_call_async(bus, &slot, m, on_handoff_reply, &w, 60 * USEC_PER_SEC);
                /* Messages of one connection arrive in order: when the Ping
                 * is answered, the Acquire has been queued. */
                if (r >= 0)
                        r = sd_bus_call_method(bus, destination(bus), LOCKBUS_OBJECT_PATH,
                                               "org.freedesktop.DBus.Peer", "Ping", NULL, NULL, NULL);
                if (r < 0)
                        _exit(EXIT_FAILURE);
                cmd = 'q';
                if (write_full(sock, &cmd, 1) < 0)
                        _exit(EXIT_FAILURE);

                while (!w.answered) {
                        r = sd_bus_process(bus, NULL);
                        if (r < 0)
                                _exit(EXIT_FAILURE);
                        if (r == 0 && !w.answered && sd_bus_wait(bus, UINT64_MAX) < 0)
                                _exit(EXIT_FAILURE);
                }
                if (w.error[0]) {
                        bench_log("handoff waiter: %s", w.error);
                        _exit(EXIT_FAILURE);
                }
                t = w.at_ns;
                if (call_simple(bus, "Unlock", HANDOFF_RESOURCE, NULL, 0) < 0)
                        _exit(EXIT_FAILURE);
                if (write_full(sock, &t, sizeof(t)) < 0)
                        _exit(EXIT_FAILURE);
        }
        _exit(EXIT_SUCCESS);
}

int scenario_handoff(const ScenarioConfig *config, FILE *out) {
        _cleanup_(lockbus_unrefp) lockbus *l = NULL;
        sd_bus *bus = NULL;
        _cleanup_free_ Histogram *handoff = NULL, *unlock = NULL, *ping = NULL;
        char error[256] = "";
        unsigned warmup = config->iterations / 10;
        int sv[2], r;
        JsonWriter j;
        pid_t pid;
        char cmd;

        handoff = malloc(sizeof(*handoff));
        unlock = malloc(sizeof(*unlock));
        ping = malloc(sizeof(*ping));
        if (!handoff || !unlock || !ping)
                return -ENOMEM;
        histogram_init(handoff);
        histogram_init(unlock);
        histogram_init(ping);

        /* The bus of the lockbusd that decides in etcd, for both processes. */
        if (config->etcd_bus && setenv("DBUS_SYSTEM_BUS_ADDRESS", config->etcd_bus, 1) < 0)
                return -errno;

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return -errno;
        fflush(NULL);
        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                close(sv[0]);
                handoff_waiter(config, sv[1]);
        }
        close(sv[1]);

        /* A, the holder. */
        if (config->uid_base > 0) {
                r = drop_privileges(config->uid_base);
                if (r < 0)
                        goto finish;
        }
        r = open_lockbus_connection(config->direct_socket, &l, &bus);
        if (r < 0)
                goto finish;
        (void) call_simple(bus, "Unlock", HANDOFF_RESOURCE, NULL, 0);
        r = acquire_sync(bus, HANDOFF_RESOURCE, error, sizeof(error));
        if (r < 0)
                goto finish;
        r = read_full(sv[0], &cmd, 1);
        if (r < 0)
                goto finish;

        for (unsigned i = 0; i < warmup + config->iterations; i++) {
                uint64_t p0, p1, t0, t1, granted;

                cmd = 'g';
                r = write_full(sv[0], &cmd, 1);
                if (r >= 0)
                        r = read_full(sv[0], &cmd, 1);
                if (r < 0)
                        goto finish;

                /* The yardstick, at the same moment: one round trip to the
                 * daemon, with nothing else for it to do. */
                p0 = now_ns();
                r = sd_bus_call_method(bus, destination(bus), LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus.Peer",
                                       "Ping", NULL, NULL, NULL);
                p1 = now_ns();
                if (r < 0)
                        goto finish;

                t0 = now_ns();
                r = call_simple(bus, "Unlock", HANDOFF_RESOURCE, error, sizeof(error));
                t1 = now_ns();
                if (r < 0)
                        goto finish;
                r = read_full(sv[0], &granted, sizeof(granted));
                if (r < 0) {
                        snprintf(error, sizeof(error), "the waiting process failed");
                        goto finish;
                }
                if (i >= warmup) {
                        histogram_add(handoff, granted - t0);
                        histogram_add(unlock, t1 - t0);
                        histogram_add(ping, p1 - p0);
                }
                r = acquire_sync(bus, HANDOFF_RESOURCE, error, sizeof(error));
                if (r < 0)
                        goto finish;
        }
        (void) call_simple(bus, "Unlock", HANDOFF_RESOURCE, NULL, 0);

finish:
        cmd = 'x';
        (void) write_full(sv[0], &cmd, 1);
        close(sv[0]);
        (void) waitpid(pid, NULL, 0);

        json_begin(&j, out);
        json_string(&j, "case", config->direct_socket ? "handoff-direct" : config->etcd_bus ? "handoff-etcd" : "handoff");
        json_uint(&j, "iterations", handoff->count);
        json_histogram(&j, "handoff", handoff);
        json_histogram(&j, "unlock", unlock);
        json_histogram(&j, "ping", ping);
        if (r < 0)
                json_string(&j, "error", error[0] ? error : strerror(-r));
        json_end(&j);
        return r;
}

/* --- cold start -------------------------------------------------------------- */

int scenario_cold(const ScenarioConfig *config, FILE *out) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *control = NULL;
        _cleanup_free_ Histogram *cold = NULL, *warm = NULL;
        char error[256] = "";
        JsonWriter j;
        int r;

        cold = malloc(sizeof(*cold));
        warm = malloc(sizeof(*warm));
        if (!cold || !warm)
                return -ENOMEM;
        histogram_init(cold);
        histogram_init(warm);

        r = bus_open_ready(&control);
        if (r < 0)
                goto finish;

        /* One round more than asked: the first warms the page cache. */
        for (unsigned i = 0; i <= config->iterations; i++) {
                _cleanup_(sd_bus_flush_close_unrefp) sd_bus *first = NULL, *second = NULL;
                uint64_t t0, t1, t2, t3;

                r = stop_daemon(control, SIGTERM);
                if (r < 0) {
                        snprintf(error, sizeof(error), "Failed to stop lockbusd: %s", strerror(-r));
                        goto finish;
                }

                /* Connected before the clock runs: we time the service. */
                r = bus_open_ready(&first);
                if (r >= 0)
                        r = bus_open_ready(&second);
                if (r < 0)
                        goto finish;

                t0 = now_ns();
                r = acquire_sync(first, "bench/cold", error, sizeof(error));
                t1 = now_ns();
                if (r < 0)
                        goto finish;

                /* The same, but the daemon is running: the first call of a
                 * new connection (the daemon learns who it is). */
                t2 = now_ns();
                r = acquire_sync(second, "bench/cold-warm", error, sizeof(error));
                t3 = now_ns();
                if (r < 0)
                        goto finish;

                if (i > 0) {
                        histogram_add(cold, t1 - t0);
                        histogram_add(warm, t3 - t2);
                }
        }

finish:
        json_begin(&j, out);
        json_string(&j, "case", "cold");
        json_uint(&j, "iterations", cold->count);
        json_histogram(&j, "cold", cold);
        json_histogram(&j, "first_call_running", warm);
        if (r < 0)
                json_string(&j, "error", error[0] ? error : strerror(-r));
        json_end(&j);
        return r;
}

/* --- scale: many holds --------------------------------------------------------- */

typedef struct FillRun FillRun;

typedef struct Filler {
        FillRun *run;
        sd_bus *bus;
        unsigned next, end;             /* resource numbers still to send */
        unsigned in_flight;
} Filler;

struct FillRun {
        unsigned total, done, errors, window;
        char first_error[256];
};

static int filler_top_up(Filler *f);

static int on_fill_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Filler *f = userdata;
        FillRun *run = f->run;

        f->in_flight--;
        run->done++;
        if (sd_bus_message_is_method_error(m, NULL)) {
                if (run->errors++ == 0)
                        snprintf(run->first_error, sizeof(run->first_error), "%s",
                                 sd_bus_message_get_error(m)->message);
        }
        if (filler_top_up(f) < 0 && run->errors++ == 0)
                snprintf(run->first_error, sizeof(run->first_error), "Failed to send Acquire");
        return 0;
}

/* Keeps `window` Acquire calls in flight (dbus-daemon allows 128 pending
 * calls per connection on a stock system bus). */
static int filler_top_up(Filler *f) {
        while (f->in_flight < f->run->window && f->next < f->end) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                char resource[64];
                int r;

                snprintf(resource, sizeof(resource), "bench/scale/%07u", f->next);
                r = new_acquire(f->bus, resource, "exclusive", "connection", 0, &m);
                if (r < 0)
                        return r;
                r = sd_bus_call_async(f->bus, NULL, m, on_fill_reply, f, 120 * USEC_PER_SEC);
                if (r < 0)
                        return r;
                f->next++;
                f->in_flight++;
        }
        return 0;
}

typedef struct Probe {
        Histogram acquire;              /* Acquire alone */
        Histogram cycle;                /* Acquire + Unlock */
        Histogram owner;                /* Owner of a held resource */
        Histogram ping;                 /* Peer.Ping: the machine's speed at the same moments */
} Probe;

static void probe_init(Probe *p) {
        histogram_init(&p->acquire);
        histogram_init(&p->cycle);
        histogram_init(&p->owner);
        histogram_init(&p->ping);
}

/* Latency of Acquire, of a cycle, and of Owner, one call at a time, with a
 * Ping in between: the load of a shared machine changes between the probe
 * of the empty and of the full daemon, and hits the Ping the same way. */
static int probe_latency(sd_bus *bus, unsigned iterations, Probe *p, char *error, size_t size) {
        int r;

        probe_init(p);
        for (unsigned i = 0; i < iterations; i++) {
                uint64_t t0, t1, t2, t3, t4;

                t0 = now_ns();
                r = acquire_sync(bus, "bench/scale-probe", error, size);
                if (r < 0)
                        return r;
                t1 = now_ns();
                r = call_simple(bus, "Unlock", "bench/scale-probe", error, size);
                if (r < 0)
                        return r;
                t2 = now_ns();
                r = sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "Owner",
                                       NULL, NULL, "s", "bench/scale-held");
                if (r < 0)
                        return r;
                t3 = now_ns();
                r = sd_bus_call_method(bus, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus.Peer",
                                       "Ping", NULL, NULL, NULL);
                if (r < 0)
                        return r;
                t4 = now_ns();
                histogram_add(&p->acquire, t1 - t0);
                histogram_add(&p->cycle, t2 - t0);
                histogram_add(&p->owner, t3 - t2);
                histogram_add(&p->ping, t4 - t3);
        }
        return 0;
}

/* ListLocks, with auto-start (activation) as usual; the number of rows. */
static int list_locks(sd_bus *bus, unsigned *ret_rows, char *error_message, size_t size) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        unsigned rows = 0;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE,
                                           "ListLocks");
        if (r < 0)
                return r;
        r = sd_bus_call(bus, m, 300 * USEC_PER_SEC, &error, &reply);
        if (r < 0) {
                snprintf(error_message, size, "ListLocks: %s", error.message ?: strerror(-r));
                return r;
        }
        r = sd_bus_message_enter_container(reply, 'a', "(ssuusstttss)");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_at_end(reply, false)) == 0) {
                r = sd_bus_message_skip(reply, "(ssuusstttss)");
                if (r < 0)
                        return r;
                rows++;
        }
        if (r < 0)
                return r;
        *ret_rows = rows;
        return 0;
}

static void json_probe(JsonWriter *j, const char *suffix, const Probe *p) {
        char key[64];

        snprintf(key, sizeof(key), "acquire_%s", suffix);
        json_histogram(j, key, &p->acquire);
        snprintf(key, sizeof(key), "cycle_%s", suffix);
        json_histogram(j, key, &p->cycle);
        snprintf(key, sizeof(key), "owner_%s", suffix);
        json_histogram(j, key, &p->owner);
        snprintf(key, sizeof(key), "ping_%s", suffix);
        json_histogram(j, key, &p->ping);
}

int scenario_scale_holds(const ScenarioConfig *config, FILE *out) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *control = NULL;
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        _cleanup_free_ Filler *fillers = NULL;
        _cleanup_free_ Probe *empty = NULL, *full = NULL, *after = NULL;
        unsigned n = config->count, k = config->connections ?: 4, probes = config->iterations ?: 2000;
        unsigned rows_full = 0, rows_recovered = 0;
        uint64_t t_fill = 0, t_list = 0, t_recover = 0, t_release = 0, t_start;
        int64_t rss_empty = -1, rss_full = -1, rss_recovered = -1;
        FillRun run = { .total = n, .window = 64 };
        uint32_t count_before = 0;
        char error[512] = "";
        JsonWriter j;
        pid_t pid;
        int r;

        fillers = calloc(k, sizeof(Filler));
        empty = malloc(sizeof(Probe));
        full = malloc(sizeof(Probe));
        after = malloc(sizeof(Probe));
        if (!fillers || !empty || !full || !after)
                return -ENOMEM;
        probe_init(empty);
        probe_init(full);
        probe_init(after);

        r = bus_open_ready(&control);
        if (r < 0)
                goto finish;

        /* A fresh daemon (the next call activates it): the heap of one that
         * ran other cases already would hide what the holds take. */
        r = stop_daemon(control, SIGTERM);
        if (r < 0) {
                snprintf(error, sizeof(error), "Failed to stop lockbusd: %s", strerror(-r));
                goto finish;
        }

        /* Empty: only the resource Owner asks about. */
        r = acquire_sync(control, "bench/scale-held", error, sizeof(error));
        if (r < 0)
                goto finish;
        r = daemon_pid(control, &pid);
        if (r < 0) {
                snprintf(error, sizeof(error), "lockbusd is not running");
                goto finish;
        }
        r = probe_latency(control, probes, empty, error, sizeof(error));
        if (r < 0)
                goto finish;
        rss_empty = process_rss_kib(pid);
        r = get_count_property(control, "LockCount", &count_before);
        if (r < 0)
                goto finish;

        /* Fill: n connection holds from k connections, pipelined. */
        r = sd_event_new(&event);
        if (r < 0)
                goto finish;
        for (unsigned i = 0; i < k; i++) {
                fillers[i] = (Filler) {
                        .run = &run,
                        .next = (unsigned) ((uint64_t) n * i / k),
                        .end = (unsigned) ((uint64_t) n * (i + 1) / k),
                };
                r = bus_open_ready(&fillers[i].bus);
                if (r >= 0)
                        r = sd_bus_attach_event(fillers[i].bus, event, 0);
                if (r < 0)
                        goto finish;
        }
        t_start = now_ns();
        for (unsigned i = 0; i < k; i++) {
                r = filler_top_up(&fillers[i]);
                if (r < 0)
                        goto finish;
        }
        /* Not sd_event_exit(): a bus attached to the loop closes when the
         * loop exits, and with it its holds. */
        while (run.done < run.total && run.errors == 0) {
                r = sd_event_run(event, UINT64_MAX);
                if (r < 0)
                        goto finish;
        }
        t_fill = now_ns() - t_start;
        if (run.errors > 0) {
                snprintf(error, sizeof(error), "%u of %u Acquire calls failed, first: %s", run.errors, n,
                         run.first_error);
                r = -EIO;
                goto finish;
        }
        rss_full = process_rss_kib(pid);

        r = probe_latency(control, probes, full, error, sizeof(error));
        if (r < 0)
                goto finish;

        t_start = now_ns();
        r = list_locks(control, &rows_full, error, sizeof(error));
        t_list = now_ns() - t_start;
        if (r < 0)
                goto finish;

        /* Crash and recover: kill -9, then the next call activates it. */
        r = stop_daemon(control, SIGKILL);
        if (r < 0) {
                snprintf(error, sizeof(error), "Failed to kill lockbusd: %s", strerror(-r));
                goto finish;
        }
        t_start = now_ns();
        r = list_locks(control, &rows_recovered, error, sizeof(error));
        t_recover = now_ns() - t_start;
        if (r < 0)
                goto finish;
        if (daemon_pid(control, &pid) >= 0)
                rss_recovered = process_rss_kib(pid);

        r = probe_latency(control, probes / 2, after, error, sizeof(error));
        if (r < 0)
                goto finish;

        /* Release on disconnect: the holders go away. */
        t_start = now_ns();
        for (unsigned i = 0; i < k; i++) {
                (void) sd_bus_detach_event(fillers[i].bus);
                fillers[i].bus = sd_bus_flush_close_unref(fillers[i].bus);
        }
        for (;;) {
                uint32_t count = 0;

                r = get_count_property(control, "LockCount", &count);
                if (r < 0)
                        goto finish;
                if (count <= count_before)
                        break;
                if (now_ns() - t_start > 120 * NSEC_PER_SEC) {
                        snprintf(error, sizeof(error), "%u resources still held 120 s after their holders left",
                                 count - count_before);
                        r = -ETIMEDOUT;
                        goto finish;
                }
                sleep_ns(2 * NSEC_PER_MSEC);
        }
        t_release = now_ns() - t_start;
        (void) call_simple(control, "Unlock", "bench/scale-held", NULL, 0);

finish:
        for (unsigned i = 0; i < k; i++) {
                if (!fillers[i].bus)
                        continue;
                (void) sd_bus_detach_event(fillers[i].bus);
                sd_bus_flush_close_unref(fillers[i].bus);
        }

        json_begin(&j, out);
        json_string(&j, "case", "scale-holds");
        json_uint(&j, "holds", n);
        json_uint(&j, "connections", k);
        json_double(&j, "fill_s", (double) t_fill / NSEC_PER_SEC);
        json_double(&j, "fill_per_sec", t_fill > 0 ? (double) n / ((double) t_fill / NSEC_PER_SEC) : 0);
        json_int(&j, "rss_empty_kib", rss_empty);
        json_int(&j, "rss_full_kib", rss_full);
        json_int(&j, "rss_recovered_kib", rss_recovered);
        json_double(&j, "rss_per_hold_bytes",
                    rss_empty >= 0 && rss_full >= 0 && n > 0 ? (double) (rss_full - rss_empty) * 1024.0 / n : NAN);
        json_double(&j, "rss_per_hold_recovered_bytes",
                    rss_empty >= 0 && rss_recovered >= 0 && n > 0 ?
                    (double) (rss_recovered - rss_empty) * 1024.0 / n : NAN);
        json_probe(&j, "empty", empty);
        json_probe(&j, "full", full);
        json_probe(&j, "recovered", after);
        json_uint(&j, "list_rows", rows_full);
        json_double(&j, "list_ms", (double) t_list / NSEC_PER_MSEC);
        json_uint(&j, "recovered_rows", rows_recovered);
        json_double(&j, "recovery_ms", (double) t_recover / NSEC_PER_MSEC);
        json_double(&j, "release_ms", (double) t_release / NSEC_PER_MSEC);
        if (r < 0)
                json_string(&j, "error", error[0] ? error : strerror(-r));
        json_end(&j);
        return r;
}

/* --- scale: many waiters ------------------------------------------------------- */

#define QUEUE_RESOURCE "bench/queue"

typedef struct DrainRun {
        unsigned total, granted, unlocked, errors;
        uint64_t last_grant_ns;
        char first_error[256];
} DrainRun;

typedef struct Waiter {
        DrainRun *run;
        sd_bus *bus;
} Waiter;

static int on_drain_unlocked(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Waiter *w = userdata;
        DrainRun *run = w->run;

        if (sd_bus_message_is_method_error(m, NULL)) {
                if (run->errors++ == 0)
                        snprintf(run->first_error, sizeof(run->first_error), "Unlock: %s",
                                 sd_bus_message_get_error(m)->message);
        } else
                run->unlocked++;
        return 0;
}

static int on_drain_granted(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Waiter *w = userdata;
        DrainRun *run = w->run;
        int r;

        if (sd_bus_message_is_method_error(m, NULL)) {
                if (run->errors++ == 0)
                        snprintf(run->first_error, sizeof(run->first_error), "Acquire: %s",
                                 sd_bus_message_get_error(m)->message);
                return 0;
        }
        run->granted++;
        run->last_grant_ns = now_ns();
        r = sd_bus_call_method_async(w->bus, NULL, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE,
                                     "Unlock", on_drain_unlocked, w, "s", QUEUE_RESOURCE);
        if (r >= 0)
                r = sd_bus_flush(w->bus);
        if (r < 0 && run->errors++ == 0)
                snprintf(run->first_error, sizeof(run->first_error), "Unlock: %s", strerror(-r));
        return 0;
}

/* Dispatches what arrived on the waiters' connections, for at most
 * timeout_ms. An sd-event loop would prepare every one of the n
 * connections on each iteration; epoll wakes only the ones with input. */
static int waiters_dispatch(int epoll_fd, int timeout_ms) {
        struct epoll_event events[256];
        int n;

        n = epoll_wait(epoll_fd, events, (int) ELEMENTSOF(events), timeout_ms);
        if (n < 0)
                return errno == EINTR ? 0 : -errno;
        for (int i = 0; i < n; i++) {
                Waiter *w = events[i].data.ptr;
                int r;

                while ((r = sd_bus_process(w->bus, NULL)) > 0)
                        ;
                if (r < 0)
                        return r;
        }
        return 0;
}

int scenario_scale_waiters(const ScenarioConfig *config, FILE *out) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *control = NULL, *holder = NULL;
        _cleanup_free_ Waiter *waiters = NULL;
        _cleanup_close_ int epoll_fd = -1;
        unsigned n = config->count, opened = 0;
        uint64_t t_connect = 0, t_queue = 0, t_drain = 0, t_start;
        DrainRun run = { .total = n };
        char error[512] = "";
        uint32_t count = 0;
        JsonWriter j;
        int r;

        waiters = calloc(n, sizeof(Waiter));
        if (!waiters)
                return -ENOMEM;
        r = raise_fd_limit((uint64_t) n + 1024);
        if (r < 0) {
                snprintf(error, sizeof(error), "Failed to raise the fd limit to %u: %s", n + 1024, strerror(-r));
                goto finish;
        }
        epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        if (epoll_fd < 0) {
                r = -errno;
                goto finish;
        }

        r = bus_open_ready(&control);
        if (r >= 0)
                r = bus_open_ready(&holder);
        if (r < 0)
                goto finish;
        (void) call_simple(holder, "Unlock", QUEUE_RESOURCE, NULL, 0);
        r = acquire_sync(holder, QUEUE_RESOURCE, error, sizeof(error));
        if (r < 0)
                goto finish;

        t_start = now_ns();
        for (; opened < n; opened++) {
                Waiter *w = &waiters[opened];
                struct epoll_event ev = { .events = EPOLLIN, .data.ptr = w };

                w->run = &run;
                r = bus_open_ready(&w->bus);
                if (r < 0) {
                        snprintf(error, sizeof(error), "Failed to open connection %u: %s", opened, strerror(-r));
                        goto finish;
                }
                while ((r = sd_bus_process(w->bus, NULL)) > 0)      /* NameAcquired & co. */
                        ;
                if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, sd_bus_get_fd(w->bus), &ev) < 0) {
                        r = -errno;
                        goto finish;
                }
        }
        t_connect = now_ns() - t_start;

        /* Queue: every connection asks, waiting for ever. */
        t_start = now_ns();
        for (unsigned i = 0; i < n; i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;

                r = new_acquire(waiters[i].bus, QUEUE_RESOURCE, "exclusive", "connection", UINT64_MAX, &m);
                if (r >= 0)
                        r = sd_bus_call_async(waiters[i].bus, NULL, m, on_drain_granted, &waiters[i],
                                              600 * USEC_PER_SEC);
                if (r >= 0)
                        r = sd_bus_flush(waiters[i].bus);
                if (r < 0)
                        goto finish;
        }
        for (;;) {
                r = get_count_property(control, "WaiterCount", &count);
                if (r < 0)
                        goto finish;
                if (count >= n)
                        break;
                if (now_ns() - t_start > 300 * NSEC_PER_SEC) {
                        snprintf(error, sizeof(error), "Only %u of %u calls queued after 300 s", count, n);
                        r = -ETIMEDOUT;
                        goto finish;
                }
                /* Calls refused at once (limits) are answered already. */
                r = waiters_dispatch(epoll_fd, 1);
                if (r < 0)
                        goto finish;
                if (run.errors > 0) {
                        snprintf(error, sizeof(error), "%u calls failed, first: %s", run.errors, run.first_error);
                        r = -EIO;
                        goto finish;
                }
        }
        t_queue = now_ns() - t_start;

        /* Drain: the holder lets go; each waiter unlocks as soon as it is
         * granted, which grants the next. */
        t_start = now_ns();
        r = call_simple(holder, "Unlock", QUEUE_RESOURCE, error, sizeof(error));
        if (r < 0)
                goto finish;
        while (run.unlocked + run.errors < n) {
                if (now_ns() - t_start > 600 * NSEC_PER_SEC) {
                        snprintf(error, sizeof(error), "Only %u of %u granted after 600 s", run.granted, n);
                        r = -ETIMEDOUT;
                        goto finish;
                }
                r = waiters_dispatch(epoll_fd, 1000);
                if (r < 0)
                        goto finish;
        }
        t_drain = run.last_grant_ns > t_start ? run.last_grant_ns - t_start : 0;
        if (run.errors > 0) {
                snprintf(error, sizeof(error), "%u calls failed, first: %s", run.errors, run.first_error);
                r = -EIO;
        }

finish:
        for (unsigned i = 0; i < opened && i < n; i++)
                sd_bus_flush_close_unref(waiters[i].bus);

        json_begin(&j, out);
        json_string(&j, "case", "scale-waiters");
        json_uint(&j, "waiters", n);
        json_uint(&j, "connections_opened", opened);
        json_double(&j, "connect_s", (double) t_connect / NSEC_PER_SEC);
        json_double(&j, "queue_s", (double) t_queue / NSEC_PER_SEC);
        json_double(&j, "queue_per_sec", t_queue > 0 ? (double) n / ((double) t_queue / NSEC_PER_SEC) : 0);
        json_double(&j, "drain_s", (double) t_drain / NSEC_PER_SEC);
        json_double(&j, "drain_per_sec", t_drain > 0 ? (double) run.granted / ((double) t_drain / NSEC_PER_SEC) : 0);
        json_uint(&j, "granted", run.granted);
        if (r < 0)
                json_string(&j, "error", error[0] ? error : strerror(-r));
        json_end(&j);
        return r;
}

/* --- peer limit ------------------------------------------------------------------ */

int scenario_peer_limit(const ScenarioConfig *config, FILE *out) {
        _cleanup_free_ sd_bus **buses = NULL;
        unsigned n = config->count, opened = 0, granted = 0, failed = 0, first_failure = 0;
        char error[256] = "", first_error[256] = "";
        JsonWriter j;
        int r = 0;

        buses = calloc(n, sizeof(sd_bus *));
        if (!buses)
                return -ENOMEM;
        (void) raise_fd_limit((uint64_t) n + 1024);

        /* Spread over n_uids users (the bus allows 256 connections per uid):
         * connect with that effective uid, which the bus reads from the
         * socket and sd-bus sends in its EXTERNAL authentication, then come
         * back to root. */
        for (; opened < n; opened++) {
                uid_t uid = config->uid_base + opened % (config->n_uids ?: 1);

                if (seteuid(uid) < 0) {
                        r = -errno;
                        snprintf(error, sizeof(error), "seteuid(%u): %m", uid);
                        goto finish;
                }
                r = sd_bus_open_system(&buses[opened]);
                if (seteuid(0) < 0)
                        abort();
                if (r >= 0) {
                        const char *unique;

                        r = sd_bus_get_unique_name(buses[opened], &unique);
                }
                if (r < 0) {
                        snprintf(error, sizeof(error), "Failed to open connection %u (uid %u): %s", opened, uid,
                                 strerror(-r));
                        goto finish;
                }
        }

        for (unsigned i = 0; i < n; i++) {
                char resource[64], message[256];

                snprintf(resource, sizeof(resource), "bench/peer/%u", i);
                if (acquire_sync(buses[i], resource, message, sizeof(message)) >= 0)
                        granted++;
                else if (failed++ == 0) {
                        first_failure = i;
                        snprintf(first_error, sizeof(first_error), "%s", message);
                }
        }
        r = 0;

finish:
        for (unsigned i = 0; i < opened && i < n; i++)
                sd_bus_flush_close_unref(buses[i]);

        json_begin(&j, out);
        json_string(&j, "case", "peer-limit");
        json_uint(&j, "connections", opened);
        json_uint(&j, "granted", granted);
        json_uint(&j, "failed", failed);
        if (failed > 0) {
                json_uint(&j, "first_failure_index", first_failure);
                json_string(&j, "first_failure", first_error);
        }
        if (r < 0)
                json_string(&j, "error", error);
        json_end(&j);
        return r;
}

/* --- helpers for run.sh ---------------------------------------------------------- */

int scenario_wait_name(const ScenarioConfig *config, FILE *out) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        uint64_t deadline = now_ns() + (uint64_t) (config->timeout_s * NSEC_PER_SEC);
        int r;

        r = bus_open_ready(&bus);
        if (r < 0)
                return r;
        while ((r = name_has_owner(bus)) == 0) {
                if (now_ns() >= deadline)
                        return -ETIMEDOUT;
                sleep_ns(5 * NSEC_PER_MSEC);
        }
        return r < 0 ? r : 0;
}

int scenario_daemon_pid(const ScenarioConfig *config, FILE *out) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        pid_t pid;
        int r;

        r = bus_open_ready(&bus);
        if (r < 0)
                return r;
        r = daemon_pid(bus, &pid);
        if (r < 0)
                return r;
        fprintf(out, "%d\n", (int) pid);
        return 0;
}
