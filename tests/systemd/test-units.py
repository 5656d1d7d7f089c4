#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Static checks of the systemd units, the D-Bus activation files and the
# polkit action (TESTING.md §5), as a TAP stream: one test point per check.
#
#   test-units.py --lockbusd=BUILD/service/lockbusd \
#                 --system-unit=BUILD/systemd/lockbusd.service \
#                 --user-unit=BUILD/systemd/lockbusd-user.service \
#                 --system-activation=BUILD/dbus/io.lockbus1.service \
#                 --session-activation=BUILD/dbus/io.lockbus1.session.service \
#                 --polkit-policy=SRC/dbus/io.lockbus1.policy
#
# systemd-analyze verify needs the ExecStart= binary to exist, so it checks
# a copy of each unit whose ExecStart= runs the build tree's lockbusd (the
# rest of the file unchanged). Without systemd-analyze those checks are
# skipped; the others need nothing but Python.

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
import xml.etree.ElementTree as ElementTree

UNIT_NAME = 'lockbusd.service'
BUS_NAME = 'io.lockbus1'
POLKIT_ACTION_BREAK = 'io.lockbus1.break'
# systemd-analyze security's score, 0.0 (best) … 10.0.
MAX_EXPOSURE = 1.0
# Defaults of a polkit action that never grant without authentication.
POLKIT_AUTH_OR_NO = {'no', 'auth_admin', 'auth_admin_keep'}


class Skip(Exception):
    """Raised by a check that cannot run here; the message is the reason."""


class CheckFailed(Exception):
    """Raised by a check that found a problem; the message says which."""


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def parse_ini(path):
    """Parses a systemd unit or D-Bus service file: {section: {key: [values]}}.

    Comments (# and ;) and blank lines are ignored, a trailing backslash
    continues a line, a key may appear more than once (values in order).
    """
    sections = {}
    current = None
    with open(path, encoding='utf-8') as f:
        lines = f.read().splitlines()

    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line[0] in '#;':
            continue
        while line.endswith('\\') and i < len(lines):
            line = line[:-1] + ' ' + lines[i].strip()
            i += 1
        if line.startswith('[') and line.endswith(']'):
            current = sections.setdefault(line[1:-1], {})
            continue
        check(current is not None, f'{path}: "{line}" before any [section]')
        check('=' in line, f'{path}: "{line}" is no assignment')
        key, value = line.split('=', 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def get_one(sections, section, key, path):
    """The value of a key set exactly once."""
    values = sections.get(section, {}).get(key, [])
    check(len(values) == 1, f'{path}: [{section}] {key}= is set {len(values)} times, expected once: {values}')
    return values[0]


def exec_binary(command_line):
    """The program of an ExecStart=/Exec= line, without systemd's prefixes."""
    words = command_line.split()
    check(words, f'empty command line "{command_line}"')
    return words[0].lstrip('-@:+!')


class UnitChecks:
    def __init__(self, args):
        self.args = args
        self.tmpdir = tempfile.mkdtemp(prefix='lockbus-units-')
        self.analyze = shutil.which('systemd-analyze')

    def cleanup(self):
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def need_analyze(self):
        if not self.analyze:
            raise Skip('systemd-analyze not found (Debian package "systemd")')

    def copy_with_build_exec(self, unit, subdir):
        """A copy of `unit`, named lockbusd.service, whose ExecStart= runs
        the build tree's lockbusd with the same arguments."""
        check(os.access(self.args.lockbusd, os.X_OK), f'{self.args.lockbusd} is not an executable')
        out_dir = os.path.join(self.tmpdir, subdir)
        os.makedirs(out_dir, exist_ok=True)
        replaced = 0
        lines = []
        with open(unit, encoding='utf-8') as f:
            for line in f.read().splitlines():
                m = re.match(r'^(\s*ExecStart\s*=\s*[-@:+!]*)(\S+)(.*)$', line)
                if m:
                    line = m.group(1) + self.args.lockbusd + m.group(3)
                    replaced += 1
                lines.append(line)
        check(replaced == 1, f'{unit}: {replaced} ExecStart= lines, expected 1')
        path = os.path.join(out_dir, UNIT_NAME)
        with open(path, 'w', encoding='utf-8') as f:
            f.write('\n'.join(lines) + '\n')
        return path

    def run(self, argv, env=None):
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=env, check=False)

    def verify(self, unit, user):
        self.need_analyze()
        copy = self.copy_with_build_exec(unit, 'user' if user else 'system')
        argv = [self.analyze, 'verify', '--man=no']
        env = dict(os.environ)
        if user:
            # The user manager wants a runtime directory of its own.
            runtime = os.path.join(self.tmpdir, 'xdg-runtime')
            os.makedirs(runtime, mode=0o700, exist_ok=True)
            env['XDG_RUNTIME_DIR'] = runtime
            argv.append('--user')
        argv.append(copy)
        p = self.run(argv, env)
        output = (p.stdout + p.stderr).strip()
        check(p.returncode == 0 and not output,
              f'{" ".join(argv)} exited with {p.returncode} and printed:\n{output}')
        return f'verify{" --user" if user else ""} {unit}: exit 0, no output'

    def test_verify_system(self):
        return self.verify(self.args.system_unit, user=False)

    def test_verify_user(self):
        return self.verify(self.args.user_unit, user=True)

    def test_security_system(self):
        self.need_analyze()
        copy = self.copy_with_build_exec(self.args.system_unit, 'system')
        argv = [self.analyze, 'security', '--offline=yes', '--no-pager', copy]
        p = self.run(argv)
        check(p.returncode == 0, f'{" ".join(argv)} exited with {p.returncode}:\n{p.stdout}{p.stderr}')
        m = re.search(r'Overall exposure level for (\S+): (\d+\.\d)\b', p.stdout)
        check(m, f'no "Overall exposure level" line in the output of {" ".join(argv)}:\n{p.stdout}{p.stderr}')
        check(m.group(1) == UNIT_NAME, f'exposure reported for {m.group(1)}, not {UNIT_NAME}')
        exposure = float(m.group(2))
        check(exposure <= MAX_EXPOSURE,
              f'exposure of {UNIT_NAME} is {exposure}, more than {MAX_EXPOSURE}:\n{p.stdout}')

        # --threshold is in tenths; the score's own tenths pass, one less fails.
        tenths = round(exposure * 10)
        p = self.run(argv[:2] + [f'--threshold={round(MAX_EXPOSURE * 10)}'] + argv[2:])
        check(p.returncode == 0, f'security --threshold={round(MAX_EXPOSURE * 10)} exited with {p.returncode}')
        if tenths > 0:
            p = self.run(argv[:2] + [f'--threshold={tenths - 1}'] + argv[2:])
            check(p.returncode != 0,
                  f'security --threshold={tenths - 1} passed for a score of {exposure}: the parsed score is wrong')
        return f'exposure {exposure} <= {MAX_EXPOSURE}'

    def activation_matches_unit(self, activation, unit):
        a = parse_ini(activation)
        u = parse_ini(unit)
        check('D-BUS Service' in a, f'{activation}: no [D-BUS Service] section')
        name = get_one(a, 'D-BUS Service', 'Name', activation)
        bus_name = get_one(u, 'Service', 'BusName', unit)
        check(name == bus_name, f'{activation}: Name={name}, but {unit} has BusName={bus_name}')
        check(name == BUS_NAME, f'{activation}: Name={name}, expected {BUS_NAME}')
        check(get_one(u, 'Service', 'Type', unit) == 'dbus', f'{unit}: Type= is not dbus')
        service = get_one(a, 'D-BUS Service', 'SystemdService', activation)
        check(service == UNIT_NAME, f'{activation}: SystemdService={service}, expected {UNIT_NAME}')
        # Without systemd the bus runs Exec= itself: the same program.
        exec_a = exec_binary(get_one(a, 'D-BUS Service', 'Exec', activation))
        exec_u = exec_binary(get_one(u, 'Service', 'ExecStart', unit))
        check(exec_a == exec_u, f'{activation} runs {exec_a}, but {unit} runs {exec_u}')
        return f'Name={name} = BusName=, SystemdService={service}, Exec={exec_a}'

    def test_activation_system(self):
        return self.activation_matches_unit(self.args.system_activation, self.args.system_unit)

    def test_activation_session(self):
        return self.activation_matches_unit(self.args.session_activation, self.args.user_unit)

    def test_system_unit_settings(self):
        path = self.args.system_unit
        u = parse_ini(path)
        check('Install' not in u, f'{path} has an [Install] section: it is started by D-Bus activation only')
        user = get_one(u, 'Service', 'User', path)
        check(user == 'lockbus', f'{path}: User={user}, expected lockbus')
        preserve = get_one(u, 'Service', 'RuntimeDirectoryPreserve', path)
        check(preserve == 'yes',
              f'{path}: RuntimeDirectoryPreserve={preserve}, expected yes (connection holds outlive the idle exit)')
        fdstore = get_one(u, 'Service', 'FileDescriptorStoreMax', path)
        check(fdstore.isdigit() and int(fdstore) > 0,
              f'{path}: FileDescriptorStoreMax={fdstore}, expected > 0 (fd holds outlive a restart)')
        return f'no [Install], User={user}, RuntimeDirectoryPreserve={preserve}, FileDescriptorStoreMax={fdstore}'

    def test_polkit_policy(self):
        path = self.args.polkit_policy
        try:
            root = ElementTree.parse(path).getroot()
        except ElementTree.ParseError as e:
            raise CheckFailed(f'{path} does not parse: {e}') from e
        check(root.tag == 'policyconfig', f'{path}: root element <{root.tag}>, expected <policyconfig>')
        actions = [a for a in root.findall('action') if a.get('id') == POLKIT_ACTION_BREAK]
        check(len(actions) == 1, f'{path}: {len(actions)} actions "{POLKIT_ACTION_BREAK}", expected 1')
        defaults = actions[0].find('defaults')
        check(defaults is not None, f'{path}: action {POLKIT_ACTION_BREAK} has no <defaults>')
        values = {e.tag: (e.text or '').strip() for e in defaults}
        active = values.get('allow_active')
        check(active == 'auth_admin_keep',
              f'{path}: {POLKIT_ACTION_BREAK} allow_active is {active}, expected auth_admin_keep')
        for key in ('allow_any', 'allow_inactive'):
            check(values.get(key, 'no') in POLKIT_AUTH_OR_NO,
                  f'{path}: {POLKIT_ACTION_BREAK} {key} is {values.get(key)}: it must not grant without admin auth')
        return f'{POLKIT_ACTION_BREAK}: ' + ', '.join(f'{k}={v}' for k, v in sorted(values.items()))


TESTS = [
    ('systemd-analyze verify of the system unit', 'test_verify_system'),
    ('systemd-analyze verify --user of the user unit', 'test_verify_user'),
    ('systemd-analyze security of the system unit', 'test_security_system'),
    ('system activation file matches the system unit', 'test_activation_system'),
    ('session activation file matches the user unit', 'test_activation_session'),
    ('system unit: no [Install], User=lockbus, runtime dir preserved, fd store', 'test_system_unit_settings'),
    ('polkit action io.lockbus1.break', 'test_polkit_policy'),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    for option in ('lockbusd', 'system-unit', 'user-unit', 'system-activation', 'session-activation',
                   'polkit-policy'):
        parser.add_argument('--' + option, required=True, metavar='PATH')
    args = parser.parse_args()

    checks = UnitChecks(args)
    failed = 0
    print(f'1..{len(TESTS)}', flush=True)
    try:
        for number, (description, method) in enumerate(TESTS, 1):
            try:
                detail = getattr(checks, method)()
            except Skip as e:
                print(f'ok {number} - {description} # SKIP {e}', flush=True)
                continue
            except CheckFailed as e:
                failed += 1
                print(f'not ok {number} - {description}')
                for line in str(e).splitlines():
                    print(f'# {line}')
                sys.stdout.flush()
                continue
            except Exception:  # pylint: disable=broad-except
                failed += 1
                print(f'not ok {number} - {description}')
                for line in traceback.format_exc().splitlines():
                    print(f'# {line}')
                sys.stdout.flush()
                continue
            print(f'ok {number} - {description}')
            print(f'# {detail}', flush=True)
    finally:
        checks.cleanup()
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
