"""The one file-system layer for what a run reads or writes in its workdir.

A path is a local path (`runs/x`, `/tmp/x`), a `file://` URL or any URL that fsspec
knows (`gs://bucket/run` with `pip install gcsfs`, `s3://` with s3fs, `memory://`
in tests). Paths keep the spelling they were given: `join` adds to a URL with '/',
so messages name the workdir as the user wrote it. Only `resolve` turns a path into
what tools that bypass this layer take (Orbax, the profiler, tensorboardX): an
absolute local path for local paths and `file://` URLs, the URL itself otherwise.

  open(path, mode)      a file object (text modes in UTF-8); writing creates the folder
  write_atomic(path, data)  the whole file at once, never seen half-written
  makedirs(path), exists(path), isdir(path), listdir(path) -> sorted names
  replace(src, dst)     move a file or folder
  join(path, *parts), is_local(path), resolve(path)
  check_url(path, flag)  a URL whose file system is missing or unknown -> PathError

On object stores a file appears when it is closed, folders are implicit and a
move is a copy.
"""

import os

import fsspec
from fsspec.registry import known_implementations as _KNOWN_URLS
from fsspec.registry import registry as _REGISTERED_URLS

FILE_URL = 'file://'

# URL schemes a workdir may have besides local paths and file:// URLs, and the package
# each needs: Orbax writes checkpoints there (through etils.epath and tensorstore).
WORKDIR_URLS = {'gs': 'gcsfs', 's3': 's3fs'}
_WORKDIR_HINT = ('give a local path, a file:// URL, gs://bucket/dir (pip install gcsfs) or '
                 's3://bucket/dir (pip install s3fs)')


class PathError(ValueError):
  """A path or URL that cannot be used; the message names the flag, the value and the fix."""


def check_url(path, flag='--workdir', read_only=False):
  """Refuses (PathError: one line naming `flag`=`path`, or `path` for flag=None) a URL
  that cannot be a workdir, before anything is built: a scheme without its package
  installed (gs:// needs gcsfs, s3:// s3fs), an unknown scheme, memory:// (it lives in
  one process: nothing would outlive the command) and, unless `read_only` (files that
  are only read, as by vaes.collect, may be on any file system fsspec has), schemes Orbax
  cannot write checkpoints to."""
  path = str(path)
  if is_local(path):
    return
  scheme = path.split('://', 1)[0]
  named = f'{flag}={path}' if flag else path
  if scheme == 'memory':
    why = ('a new command finds nothing there' if read_only else
           'nothing would outlive this command (nor can Orbax write checkpoints there)')
    raise PathError(f'{named}: memory:// keeps files inside one Python process, so '
                    f'{why}; {_WORKDIR_HINT}.')
  if scheme not in _KNOWN_URLS and scheme not in _REGISTERED_URLS:
    raise PathError(f"{named}: unknown URL scheme '{scheme}://'; {_WORKDIR_HINT}.")
  if not read_only and scheme not in WORKDIR_URLS:
    raise PathError(f'{named}: {scheme}:// is not supported for a workdir (Orbax '
                    f'writes checkpoints to local paths, gs:// and s3:// only); '
                    f'{_WORKDIR_HINT}.')
  try:
    fsspec.get_filesystem_class(scheme)
  except ImportError as e:
    package = WORKDIR_URLS.get(scheme)
    if package is None:   # fsspec's own words name the packages
      why = _KNOWN_URLS.get(scheme, {}).get('err') or str(e)
      raise PathError(f'{named}: {scheme}:// URLs need a package that is not '
                      f'installed ({str(why).rstrip(".")}).') from e
    raise PathError(f'{named}: {scheme}:// URLs need the {package} package, which is '
                    f'not installed: pip install {package} (or give a local path).') from e


def is_local(path):
  """A local path or a file:// URL."""
  path = str(path)
  return '://' not in path or path.startswith(FILE_URL)


def resolve(path):
  """The absolute local path of a local path or file:// URL; any other URL unchanged.
  What Orbax, jax.profiler and tensorboardX are given."""
  path = str(path)
  if not is_local(path):
    return path
  if path.startswith(FILE_URL):
    path = path[len(FILE_URL):]
  return os.path.abspath(os.path.expanduser(path))


def join(path, *parts):
  path = str(path)
  if '://' not in path:
    return os.path.join(path, *parts)
  for part in parts:
    path = path.rstrip('/') + '/' + str(part).lstrip('/')
  return path


def _fs(path):
  """(fsspec file system, path within it)."""
  if is_local(path):
    return fsspec.filesystem('file'), resolve(path)
  return fsspec.core.url_to_fs(str(path))


def open(path, mode='r'):  # pylint: disable=redefined-builtin
  fs, p = _fs(path)
  if any(m in mode for m in 'wax'):
    fs.makedirs(fs._parent(p), exist_ok=True)  # pylint: disable=protected-access
  return fs.open(p, mode, **({} if 'b' in mode else {'encoding': 'utf-8'}))


def write_atomic(path, data):
  """Writes `data` (str or bytes) to `path`: locally through a temporary file renamed
  over it; on object stores an upload is already all or nothing."""
  mode = 'wb' if isinstance(data, bytes) else 'w'
  if not is_local(path):
    with open(path, mode) as f:
      f.write(data)
    return
  local = resolve(path)
  tmp = f'{local}.tmp{os.getpid()}'
  with open(tmp, mode) as f:
    f.write(data)
  os.replace(tmp, local)


def makedirs(path):
  fs, p = _fs(path)
  fs.makedirs(p, exist_ok=True)


def exists(path):
  fs, p = _fs(path)
  return fs.exists(p)


def isdir(path):
  fs, p = _fs(path)
  return fs.isdir(p)


def listdir(path):
  """The sorted names (not paths) in the folder `path`; FileNotFoundError without it."""
  fs, p = _fs(path)
  return sorted(os.path.basename(q.rstrip('/')) for q in fs.ls(p, detail=False)
                if q.rstrip('/') != p.rstrip('/'))


def replace(src, dst):
  """Moves the file or folder `src` to `dst` (a rename locally)."""
  if is_local(src) and is_local(dst):
    os.replace(resolve(src), resolve(dst))
    return
  fs, p = _fs(src)
  fs.mv(p, _fs(dst)[1], recursive=True)
