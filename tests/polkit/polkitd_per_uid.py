# SPDX-License-Identifier: LGPL-2.1-or-later
'''polkitd mock template that answers per UID

A python-dbusmock template (TESTING.md §3) for org.freedesktop.PolicyKit1:

    DBUS_SYSTEM_BUS_ADDRESS=… /usr/bin/python3 -m dbusmock --template polkitd_per_uid.py

Unlike the stock "polkitd" template it looks at the subject: the
"system-bus-name" of CheckAuthorization is resolved to its UID with the
bus's GetConnectionUnixUser, as polkitd does, and an action is allowed only
for the UIDs given with SetAllowedUids(). Everything else is denied (with
is_challenge set when the caller did not allow interaction, as polkitd
answers for an auth_admin action). A subject of another kind, or a bus name
that is gone, is an org.freedesktop.PolicyKit1.Error.Failed error.

The org.freedesktop.DBus.Mock interface controls it:
    SetAllowedUids(s action_id, au uids)  the UIDs allowed to do action_id
    HoldAnswers(b hold)                   keep the answers back from now on
    ReleaseAnswers(u delay_msec)          answer what is held, after delay_msec
                                          (a timer of the mock; 0 = at once);
                                          returns how many calls it answers
    WaitForChecks(u n)                    returns once n checks were received
                                          since the start (held or answered)
    GetChecks() → a(susu)                 every check so far: subject bus name,
                                          its UID, action_id, flags
Nothing here blocks: the mock serves its control interface while answers
are held or delayed.
'''

import dbus
import dbus.service
from gi.repository import GLib

from dbusmock import MOCK_IFACE

BUS_NAME = 'org.freedesktop.PolicyKit1'
MAIN_OBJ = '/org/freedesktop/PolicyKit1/Authority'
MAIN_IFACE = 'org.freedesktop.PolicyKit1.Authority'
SYSTEM_BUS = True

ERROR_FAILED = 'org.freedesktop.PolicyKit1.Error.Failed'
CHECK_FLAGS_ALLOW_USER_INTERACTION = 0x1


def load(mock, _parameters):
    mock.AddProperties(MAIN_IFACE, dbus.Dictionary({
        'BackendName': 'per-uid mock',
        'BackendVersion': '0.1',
        'BackendFeatures': dbus.UInt32(0),
    }, signature='sv'))

    mock.allowed_uids = {}          # action_id → set of UIDs
    mock.hold_answers = False
    mock.held_answers = []          # callables sending one answer each
    mock.checks = []                # (bus name, uid, action_id, flags)
    mock.check_waiters = []         # (n, ok_cb) of WaitForChecks calls


def _wake_check_waiters(mock):
    waiting = []
    for n, ok_cb in mock.check_waiters:
        if len(mock.checks) >= n:
            ok_cb()
        else:
            waiting.append((n, ok_cb))
    mock.check_waiters = waiting


def _failed(message):
    return dbus.exceptions.DBusException(message, name=ERROR_FAILED)


@dbus.service.method(MAIN_IFACE,
                     in_signature='(sa{sv})sa{ss}us',
                     out_signature='(bba{ss})',
                     async_callbacks=('ok_cb', 'err_cb'),
                     connection_keyword='connection')
def CheckAuthorization(self, subject, action_id, _details, flags, _cancellation_id,
                       ok_cb, err_cb, connection):
    '''Allowed if the subject's UID is among the action's allowed UIDs'''
    kind, subject_details = subject
    if kind != 'system-bus-name' or 'name' not in subject_details:
        err_cb(_failed(f'Subject of kind "{kind}" not supported by this mock'))
        return
    name = str(subject_details['name'])
    action_id = str(action_id)
    flags = int(flags)

    def on_uid(uid):
        uid = int(uid)
        allowed = uid in self.allowed_uids.get(action_id, set())
        challenge = not allowed and not flags & CHECK_FLAGS_ALLOW_USER_INTERACTION
        answer = (dbus.Boolean(allowed), dbus.Boolean(challenge), dbus.Dictionary({}, signature='ss'))

        self.checks.append((name, uid, action_id, flags))
        if self.hold_answers:
            self.held_answers.append(lambda: ok_cb(answer))
        else:
            ok_cb(answer)
        _wake_check_waiters(self)

    def on_error(error):
        err_cb(_failed(f'Cannot determine the UID of {name}: {error.get_dbus_message()}'))

    # Asynchronously, as everything here: the mock keeps serving meanwhile.
    connection.call_async('org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus',
                          'GetConnectionUnixUser', 's', (name,), on_uid, on_error)


@dbus.service.method(MAIN_IFACE, in_signature='(sa{sv})ss', out_signature='')
def RegisterAuthenticationAgent(_self, _subject, _locale, _object_path):
    '''Accepted and ignored: no agent is ever asked'''


@dbus.service.method(MOCK_IFACE, in_signature='sau', out_signature='')
def SetAllowedUids(self, action_id, uids):
    '''Allow action_id for these UIDs only (replaces the earlier list)'''
    self.allowed_uids[str(action_id)] = {int(u) for u in uids}


@dbus.service.method(MOCK_IFACE, in_signature='b', out_signature='')
def HoldAnswers(self, hold):
    '''Keep answers of CheckAuthorization back until ReleaseAnswers()'''
    self.hold_answers = bool(hold)


@dbus.service.method(MOCK_IFACE, in_signature='u', out_signature='u')
def ReleaseAnswers(self, delay_msec):
    '''Stop holding answers; send the held ones after delay_msec'''
    held, self.held_answers = self.held_answers, []
    self.hold_answers = False

    def send():
        for answer in held:
            answer()
        return GLib.SOURCE_REMOVE

    if delay_msec > 0:
        GLib.timeout_add(int(delay_msec), send)
    else:
        send()
    return dbus.UInt32(len(held))


@dbus.service.method(MOCK_IFACE, in_signature='u', out_signature='',
                     async_callbacks=('ok_cb', '_err_cb'))
def WaitForChecks(self, n, ok_cb, _err_cb):
    '''Return once n CheckAuthorization calls were received'''
    self.check_waiters.append((int(n), ok_cb))
    _wake_check_waiters(self)


@dbus.service.method(MOCK_IFACE, in_signature='', out_signature='a(susu)')
def GetChecks(self):
    '''Every CheckAuthorization call so far: (bus name, UID, action_id, flags)'''
    return dbus.Array([dbus.Struct((n, dbus.UInt32(u), a, dbus.UInt32(f)), signature='susu')
                       for n, u, a, f in self.checks], signature='(susu)')
