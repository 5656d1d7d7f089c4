#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The bus client of tests/e2e/run-e2e.sh, run inside the booted container
# (python3-dbus, blocking calls, no main loop). Prints one line per answer,
# so the test can read it from a pipe:
#
#   hold-connection RESOURCE   Acquire (scope connection); prints
#                              "TOKEN PID UNIQUE-NAME", then stays connected
#                              until stdin ends (or it is killed)
#   hold-fd RESOURCE           AcquireFd; prints "TOKEN PID UNIQUE-NAME";
#                              on the stdin line "close" closes the fd and
#                              prints "closed"; stays connected until stdin ends
#   call METHOD RESOURCE       Break, Owner, Unlock or Lock; prints
#                              "ok" and the reply's fields, or
#                              "error NAME MESSAGE"
#   wait-exit PID SECONDS      waits for process PID to exit (pidfd);
#                              prints "exited" or "timeout"
import os
import select
import sys

import dbus

BUS_NAME = "io.lockbus1"
OBJECT = "/io/lockbus1"
INTERFACE = "io.lockbus1.Manager"


def say(*words):
    print(*words, flush=True)


def manager(bus):
    return dbus.Interface(bus.get_object(BUS_NAME, OBJECT, introspect=False), INTERFACE)


def no_options():
    return dbus.Dictionary({}, signature="sv")


def hold_connection(resource):
    bus = dbus.SystemBus()
    token = manager(bus).Acquire(resource, no_options())
    say(int(token), os.getpid(), bus.get_unique_name())
    sys.stdin.read()


def hold_fd(resource):
    bus = dbus.SystemBus()
    fd, token = manager(bus).AcquireFd(resource, no_options())
    fd = fd.take()
    say(int(token), os.getpid(), bus.get_unique_name())
    for line in sys.stdin:
        if line.strip() == "close" and fd >= 0:
            os.close(fd)
            fd = -1
            say("closed")


def flatten(value):
    if isinstance(value, (list, tuple)):
        return [w for v in value for w in flatten(v)]
    return [str(value) if str(value) else '""']


def call(method, resource):
    bus = dbus.SystemBus()
    try:
        reply = getattr(manager(bus), method)(resource)
    except dbus.exceptions.DBusException as e:
        say("error", e.get_dbus_name(), e.get_dbus_message())
        return
    say("ok", *flatten(reply if reply is not None else []))


def wait_exit(pid, seconds):
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        say("exited")
        return
    ready, _, _ = select.select([pidfd], [], [], seconds)
    say("exited" if ready else "timeout")


def main(argv):
    if len(argv) == 3 and argv[1] == "hold-connection":
        hold_connection(argv[2])
    elif len(argv) == 3 and argv[1] == "hold-fd":
        hold_fd(argv[2])
    elif len(argv) == 4 and argv[1] == "call":
        call(argv[2], argv[3])
    elif len(argv) == 4 and argv[1] == "wait-exit":
        wait_exit(int(argv[2]), float(argv[3]))
    else:
        print("usage: lockbus-e2e-client hold-connection|hold-fd RESOURCE | "
              "call METHOD RESOURCE | wait-exit PID SECONDS", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
