"""Ctrl-C during an entry point's start-up: one line and exit 130 at once.

Imported by train.py and eval.py before anything else (this module and `vaes/__init__.py`
import only the standard library): a KeyboardInterrupt raised inside an import, JAX's
start-up or a gc callback printed a traceback, crashed the interpreter's exit, or was
swallowed and the run went on. train.py's loop later takes SIGINT over
(vaes.train._Preemption) to save before stopping.
"""

import os
import signal
import sys


def install(message):
  """SIGINT -> flush, write `message` on its own line to stderr, exit 128 + SIGINT."""
  line = f'\n{message}\n'.encode()

  def interrupted(signum, frame):
    del frame
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except Exception:  # pylint: disable=broad-except  (a write in progress)
        pass
    os.write(2, line)
    os._exit(128 + signum)

  signal.signal(signal.SIGINT, interrupted)
