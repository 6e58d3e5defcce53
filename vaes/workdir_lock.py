"""One live training run per workdir: WORKDIR/train.lock.

`acquire(workdir)` takes an exclusive `fcntl.flock` on WORKDIR/train.lock and writes
the holder (pid, host, start time, command) into it. The operating system releases the
lock when the holding process ends, however it ends (SIGKILL, a crash, a reboot), so a
killed run never leaves the workdir locked; the file itself stays, and only says who
held it last. A second run on the same workdir gets `WorkdirBusy`, whose message names
the holder, before it reads or writes anything there.

`flock` works on local file systems and on NFS (Linux emulates it with POSIX locks).
Object stores (gs://, s3://) have no locks: `acquire` returns a lock that holds nothing
for them; a store-specific lock (e.g. a generation-conditional write of the lock
object) would go in `_acquire_remote`.
"""

import datetime
import errno
import fcntl
import json
import os
import socket
import sys

from vaes import fs

LOCK_NAME = 'train.lock'


class LockError(RuntimeError):
  """The workdir cannot be locked; the message names the fix."""


class WorkdirBusy(LockError):
  """Another live process holds the workdir's lock."""


class WorkdirLock:
  """A held lock; `release()` (or leaving the `with` block) gives it back."""

  def __init__(self, path=None, handle=None):
    self.path, self._handle = path, handle

  def release(self):
    if self._handle is not None:
      try:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
      finally:
        self._handle.close()
        self._handle = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def _holder(text):
  """'pid 123 on host h, started T: command' from the lock file's content."""
  try:
    info = json.loads(text)
    return (f'pid {info["pid"]} on host {info["host"]}, started {info["started"]}: '
            f'{str(info.get("command", ""))[:200]}').rstrip(': ')
  except (ValueError, KeyError, TypeError):
    return 'holder unknown'


def _acquire_remote(workdir):
  del workdir
  return WorkdirLock()


def acquire(workdir):
  """Locks `workdir` for this process (creating the folder); raises `WorkdirBusy`
  naming the holder if another live process has it, `LockError` if the folder cannot
  be written."""
  if not fs.is_local(workdir):
    return _acquire_remote(workdir)
  directory = fs.resolve(workdir)
  path = os.path.join(directory, LOCK_NAME)
  try:
    os.makedirs(directory, exist_ok=True)
    # A local file of the OS (flock needs its descriptor), so the builtin open: not truncated,
    # the holder's note stays.
    handle = open(path, 'a+', encoding='utf-8')
  except OSError as e:
    raise LockError(f'Cannot create the lock file {path}: {e.strerror or e}. Choose a '
                    'writable --workdir.') from e
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    handle.seek(0)
    holder = _holder(handle.read())
    handle.close()
    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise
    raise WorkdirBusy(
        f'The workdir {workdir} is in use by another training run ({holder}). Wait for it to '
        'end or stop it, or choose another --workdir; the lock is released when that '
        f'process exits (nothing to delete).') from None
  handle.seek(0)
  handle.truncate()
  handle.write(json.dumps({
      'pid': os.getpid(), 'host': socket.gethostname(),
      'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
      'command': ' '.join(sys.argv)}) + '\n')
  handle.flush()
  return WorkdirLock(path, handle)
