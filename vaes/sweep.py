"""Sweeps: one config, a list of overrides, one run each (train.py, then eval.py).

    python -m vaes.sweep --config=configs/vqvae.py --sweep=sweeps/vqvae_codebook_size.py \\
        --workdir_root=runs/vq_codebook [--config.num_train_steps=500 ...] [--print_only]

A sweep file defines `get_sweep()`: a list of dicts of dotted config fields, one dict
per run (the big_vision / ml_collections habit):

    def get_sweep():
      return [{'model.num_codes': k, 'seed': s} for k in (16, 64) for s in (0, 1)]

Each run's workdir is WORKDIR_ROOT/<name>, the name made of its overrides sorted by
field, `model.num_codes=16,seed=0` (`base` for {}), less the fields that every run of a
sweep of two or more sets to the same value (they do not tell the runs apart); a name that
would need characters other than letters, digits and `._+-=,`, that holds a tuple, or
that is longer than 120 characters is cleaned and ends in a hash of the overrides, so
names stay unique.

The runs go one after another, each as `train.py` then `eval.py` in a subprocess (the
same code path as by hand). A run is finished, and skipped, when its WORKDIR/config.json
(the config its training ran with) is the config this sweep would run (fields of the
cadence of logs, evaluations and checkpoints aside) and its WORKDIR/eval_metrics.json is
of its last step (`config.num_train_steps`) and of the same eval fields (config.eval.*,
config.data.eval_split); a run trained to the end whose evaluation had other eval fields
is only evaluated again; any other resumes from its latest checkpoint (train.py does
that) and is evaluated. A workdir that holds a finished run of other settings (e.g. the
sweep rerun with another common `--config.learning_rate`) is refused before any run
starts, with one line naming the fields, as train.py refuses it: its numbers are not
those of this sweep. The sweep ends with the table of `python -m vaes.collect` over its
finished workdirs.

Other flags are passed to every train.py and eval.py: `--config.FIELD=VALUE` (for every
run; a field may not be set both there and in the sweep), `--jax_distributed=off`, ...
`--print_only` prints, instead, one line per run, `python train.py ... && python
eval.py ...` (for a cluster scheduler; run them from the repository root).

SIGTERM or Ctrl-C: passed on once to the run in progress, which saves a checkpoint; the
sweep then stops with that run's exit status, and the same command resumes it. A run
that fails does not stop the others; the failures are listed at the end (exit status 1).
A bad sweep file or override, a run's config that train.py would refuse (the engine's
and the family's checks, e.g. `model.num_codes=0`; no data or model is built for them) or
a --workdir_root URL whose file system is missing is one `ERROR:` line (exit status 2)
before any run starts.
"""

import argparse
import difflib
import hashlib
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

from vaes import cli
from vaes import collect
from vaes import fs
from vaes.renames import upgrade_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_NAME = 120
_UNSAFE = re.compile(r'[^A-Za-z0-9._+\-=,]')


class SweepError(ValueError):
  """A sweep file or override that cannot be run; the message names the fix."""


# ---------------------------------------------------------------------------
# The sweep file.

def load_sweep(path):
  """The list of override dicts of `path`'s get_sweep()."""
  if not os.path.isfile(path):
    raise SweepError(f'--sweep={path}: no such file. Give the path of a sweep file, e.g. '
                     '--sweep=sweeps/vqvae_codebook_size.py.')
  spec = importlib.util.spec_from_file_location('_sweep', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise SweepError(f'--sweep={path}: syntax error at line {e.lineno}: {e.msg}. Fix the '
                     'file.') from e
  except Exception as e:  # pylint: disable=broad-except  (sweep files run arbitrary code)
    raise SweepError(f'--sweep={path} failed to load: {type(e).__name__}: '
                     f'{_first_line(e)}.') from e
  get_sweep = getattr(module, 'get_sweep', None)
  if not callable(get_sweep):
    raise SweepError(f"--sweep={path} defines no get_sweep(); add `def get_sweep(): return "
                     "[{'seed': 0}, {'seed': 1}]` (one dict of config overrides per run).")
  try:
    runs = get_sweep()
  except Exception as e:  # pylint: disable=broad-except
    raise SweepError(f'--sweep={path}: get_sweep() raised {type(e).__name__}: '
                     f'{_first_line(e)}.') from e
  if not isinstance(runs, (list, tuple)) or not runs:
    raise SweepError(f'--sweep={path}: get_sweep() returned {type(runs).__name__} {runs!r:.60}; '
                     "return a non-empty list of dicts, e.g. [{'seed': 0}, {'seed': 1}].")
  for i, run in enumerate(runs):
    if not isinstance(run, dict) or not all(isinstance(k, str) for k in run):
      raise SweepError(f'--sweep={path}: run {i} of get_sweep() is {run!r:.80}, not a dict of '
                       "dotted config fields, e.g. {'model.num_codes': 64}.")
  return [dict(run) for run in runs]


def _first_line(e):
  text = str(e).strip()
  return text.splitlines()[0][:300] if text else type(e).__name__


# ---------------------------------------------------------------------------
# Names, flags, configs.

def _name_value(v):
  if isinstance(v, (tuple, list)):
    return '-'.join(_name_value(x) for x in v)
  return repr(v) if isinstance(v, float) else str(v)


def shared_fields(runs):
  """The fields that every run of a sweep of two or more sets to one value."""
  if len(runs) < 2:
    return set()
  return {k for k, v in runs[0].items() if all(k in run and run[k] == v for run in runs)}


def workdir_name(overrides, shared=()):
  """A readable, file-system-safe, deterministic folder name for one run, of its
  overrides less the `shared` fields."""
  overrides = {k: v for k, v in overrides.items() if k not in shared}
  if not overrides:
    return 'base'
  name = ','.join(f'{k}={_name_value(v)}' for k, v in sorted(overrides.items()))
  clean = _UNSAFE.sub('_', name)
  lossy = clean != name or any(isinstance(v, (tuple, list)) for v in overrides.values())
  if lossy or len(clean) > MAX_NAME:
    digest = hashlib.sha1(json.dumps(sorted(overrides.items()), default=repr)
                          .encode()).hexdigest()[:8]
    clean = f'{clean[:MAX_NAME]}_{digest}'
  return clean


def flag_value(v):
  """`v` as the text of a `--config.FIELD=` flag that ml_collections parses back."""
  if isinstance(v, bool):
    return 'true' if v else 'false'
  if isinstance(v, (tuple, list)):
    return repr(tuple(v))
  return repr(v) if isinstance(v, float) else str(v)


def override_flags(overrides):
  return [f'--config.{k}={flag_value(v)}' for k, v in overrides.items()]


def parse_config(config_path, config_args):
  """The config that `train.py --config=config_path *config_args` builds, read by the
  same ml_collections flag code (so a value that would not parse fails here)."""
  argv = ['vaes.sweep', f'--config={config_path}', *config_args]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  values.config.to_dict()  # a config file that failed to load raises only when used
  return values.config


def _leaves(node, prefix=''):
  for k, v in node.items():
    if hasattr(v, 'items'):
      yield f'{prefix}{k}'
      yield from _leaves(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}'


def check_fields(sweep_path, config_path, base, runs):
  """Every overridden field exists in the config (else one line with the nearest name)."""
  names = set(_leaves(base))
  groups = {n for n in names if _is_group(base, n)}
  for i, run in enumerate(runs):
    for field in run:
      if field in groups:
        raise SweepError(f'--sweep={sweep_path}: run {i} sets {field!r}, a group of fields of '
                         f'{config_path}; set its fields one by one, e.g. '
                         f'{sorted(n for n in names if n.startswith(field + "."))[0]!r}.')
      if field not in names:
        near = difflib.get_close_matches(field, sorted(names - groups), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else '.'
        raise SweepError(f'--sweep={sweep_path}: run {i} sets {field!r}, which {config_path} '
                         f'does not have{hint}')


def _is_group(config, dotted):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return hasattr(node, 'items')


class Run:
  """One run of the sweep: its overrides, workdir, config and commands."""

  def __init__(self, overrides, workdir, config, config_path, extra_args):
    self.overrides, self.workdir, self.config = overrides, workdir, config
    self.name = os.path.basename(workdir)
    common = [f'--config={config_path}', f'--workdir={workdir}', *extra_args,
              *override_flags(overrides)]
    self.train_args = [os.path.join(REPO, 'train.py'), *common]
    self.eval_args = [os.path.join(REPO, 'eval.py'), *common]

  def _json(self, name):
    try:
      with fs.open(fs.join(self.workdir, name)) as f:
        value = json.load(f)
    except (OSError, ValueError):
      return None
    return value if isinstance(value, dict) else None

  def trained_steps(self):
    """The steps trained in the workdir: its newest checkpoint's (or, without
    checkpoints, those eval_metrics.json records); None when nothing says."""
    found = []
    directory = fs.join(self.workdir, 'checkpoints')
    if fs.isdir(directory):
      found += [int(d) for d in fs.listdir(directory) if d.isdigit()]
    metrics = self._json(collect.METRICS_JSON) or {}
    found += [int(metrics[k]) for k in ('train_steps', 'step')
              if isinstance(metrics.get(k), (int, float))]
    return max(found) if found else None

  def status(self):
    """(what to do, differing fields [(field, run's value, sweep's value)]):
    'finished' (skip), 'other_run' (trained to the end with other settings: refused),
    'evaluate' (trained to the end, evaluated with other eval fields or not at all at
    that step: only eval.py), 'run' (train.py, then eval.py)."""
    record = self._json(collect.CONFIG_JSON) or {}
    if isinstance(record.get('config'), dict):   # saved before a field was renamed
      record = {**record, 'config': upgrade_config(record['config'])}
    steps = self.trained_steps()
    if not isinstance(record.get('config'), dict) or steps is None \
        or steps < self.config.num_train_steps:
      return 'run', []   # train.py resumes, or refuses by the checkpoint's config
    planned = _plain(self.config.to_dict())
    differ = _differing_fields(record['config'], planned)
    trained = [d for d in differ if not _is_eval_field(d[0])]
    if trained:
      return 'other_run', trained
    metrics = self._json(collect.METRICS_JSON) or {}
    evaluated = max([metrics[k] for k in ('step', 'train_steps')
                     if isinstance(metrics.get(k), (int, float))], default=None)
    if evaluated is None or evaluated < self.config.num_train_steps:
      return 'evaluate', []
    # The eval fields of the evaluation (recorded since eval.py writes them: config.eval as
    # 'eval_config', config.data.eval_split in 'eval_data'), else of the training's
    # config.json.
    then = record['config']
    if isinstance(metrics.get('eval_config'), dict):
      data = metrics.get('eval_data')
      then = {'eval': metrics['eval_config'],
              'data': data if isinstance(data, dict) else then.get('data', {})}
    now = {'eval': planned.get('eval', {}), 'data': planned.get('data', {})}
    differ = [d for d in _differing_fields(then, now) if _is_eval_field(d[0])]
    return ('evaluate', differ) if differ else ('finished', [])

  def finished(self):
    """Trained to config.num_train_steps with this config and evaluated there with its
    eval fields."""
    return self.status()[0] == 'finished'

  def command_line(self):
    """`python train.py ... && python eval.py ...`, paths relative to the current folder."""
    rel = lambda args: [os.path.relpath(args[0])] + args[1:]
    return (shlex.join(['python'] + rel(self.train_args)) + ' && '
            + shlex.join(['python'] + rel(self.eval_args)))


# Fields that change neither the state nor the trained function (those of
# vaes.run_config): a finished run rerun with other values of these is the same run.
_CADENCE_FIELDS = frozenset({'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
                             'max_checkpoints_to_keep', 'steps_per_dispatch', 'profile_steps'})
# Evaluation-only fields besides config.eval.* (vaes.run_config.EVAL_DATA_FIELDS): a
# finished run rerun with other values is evaluated again, not trained again.
_EVAL_DATA_FIELDS = frozenset({'data.eval_split', 'data.eval_limit'})


def _is_eval_field(name):
  return name.startswith('eval.') or name in _EVAL_DATA_FIELDS


# Fields that train.py sets itself at the start of a run (the vq_prior family's prepare
# points data.codes_path at the first stage's codes); a sweep leaves them empty.
_SET_BY_TRAINING = frozenset({'data.codes_path'})


def _plain(tree):
  """JSON values, as config.json holds them (tuples become lists)."""
  return json.loads(json.dumps(tree, default=str))


def _differing_fields(then, now):
  """Sorted [(field, recorded value, sweep's value)] of the fields of the recorded config
  `then` that differ in `now` (both nested dicts), the cadence fields, those train.py sets
  itself and the family's implementation-only fields (vaes.run_config) aside."""
  then, now = collect.flatten(_plain(then)), collect.flatten(now)
  differ = [(k, then[k], now.get(k)) for k in sorted(then)
            if k in now and then[k] != now[k] and k not in _CADENCE_FIELDS
            and not (k in _SET_BY_TRAINING and not now[k])]
  if not differ:
    return []
  # Which fields only choose how the same function is computed is the family's to say;
  # asked only here, since it imports JAX and the families.
  import vaes.families  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  from vaes import run_config  # pylint: disable=import-outside-toplevel
  ignore = run_config.implementation_fields(_unflatten(now))
  return [d for d in differ if d[0] not in ignore]


def _unflatten(flat):
  """{'a.b': 1} -> {'a': {'b': 1}}."""
  out = {}
  for key, value in flat.items():
    node = out
    *parents, leaf = key.split('.')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def _describe(differ, limit=6):
  text = ', '.join(f'{k}: run {a!r} vs sweep {b!r}' for k, a, b in differ[:limit])
  return text + (f' (and {len(differ) - limit} more)' if len(differ) > limit else '')


def check_finished_runs(runs):
  """Refuses (SweepError, one line) a sweep whose workdirs hold finished runs of other
  settings than it would run: their numbers would be reported as the new settings'."""
  other = [(run, run.status()) for run in runs]
  other = [(run, differ) for run, (what, differ) in other if what == 'other_run']
  if not other:
    return
  run, differ = other[0]
  more = (f' So do {len(other) - 1} more of its runs: '
          f'{", ".join(r.name for r, _ in other[1:])}.' if len(other) > 1 else '')
  raise SweepError(f'{run.workdir} already holds a finished run of {run.trained_steps()} steps '
                   f'with other settings ({_describe(differ)}); this sweep would report its '
                   f'numbers as those of the new ones.{more} Use a fresh --workdir_root for '
                   'the new settings (or the original flags to finish this sweep).')


def validate_runs(sweep_path, runs):
  """Refuses (SweepError, one line) a sweep with a run whose config train.py would refuse
  at its start: the engine's and the run's family's checks (vaes.train.validate_config)
  and the dataset's name, for every run before any starts. Nothing is built: no data, no
  model, and JAX's devices are not touched (each run checks the batch sizes against its
  device count)."""
  # pylint: disable=import-outside-toplevel
  import vaes.families  # noqa: F401  pylint: disable=unused-import  (they register)
  from vaes import data as data_lib
  from vaes.registry import ConfigError, get_family
  from vaes.preflight import validate_config
  for i, run in enumerate(runs):
    try:
      if run.config.data.name not in data_lib.dataset_names():
        raise data_lib.DataError(f"config.data.name='{run.config.data.name}' is not a known "
                                 f'dataset; choose one of {data_lib.dataset_names()}.')
      validate_config(run.config, get_family(run.config.model.name), num_devices=1)
    except (ConfigError, data_lib.DataError) as e:
      where = f'run {i} ({run.overrides})' if run.overrides else f'run {i}'
      raise SweepError(f'--sweep={sweep_path}: {where} would be refused by train.py: '
                       f'{str(e).rstrip(".")}. Fix the value in the sweep file or on the '
                       'command line; no run was started.') from e


def plan(config_path, sweep_path, workdir_root, extra_args):
  """The sweep's runs, every override checked against the config, and every run's config
  against the engine and its family (`validate_runs`), before any starts."""
  try:
    fs.check_url(workdir_root, '--workdir_root')
  except fs.PathError as e:
    raise SweepError(str(e)) from e
  config_args = [a for a in extra_args if a.startswith('--config.')]
  try:
    base = parse_config(config_path, config_args)
  except Exception as e:  # pylint: disable=broad-except  (config files run arbitrary code)
    argv = [f'--config={config_path}', *config_args]
    raise SweepError(cli._flag_error_message(e, argv)) from e  # pylint: disable=protected-access
  runs = load_sweep(sweep_path)
  check_fields(sweep_path, config_path, base, runs)
  common = {a.split('=', 1)[0][len('--config.'):] for a in config_args}
  shared = shared_fields(runs)
  seen = {}
  planned = []
  for i, overrides in enumerate(runs):
    both = sorted(set(overrides) & common)
    if both:
      raise SweepError(f'--sweep={sweep_path}: run {i} sets {both[0]!r}, which the command '
                       f'line sets too (--config.{both[0]}=...); set it in one place.')
    name = workdir_name(overrides, shared)
    if name in seen:
      raise SweepError(f'--sweep={sweep_path}: runs {seen[name]} and {i} are the same run '
                       f'({overrides}); remove one.')
    seen[name] = i
    try:
      config = parse_config(config_path, config_args + override_flags(overrides))
    except Exception as e:  # pylint: disable=broad-except
      raise SweepError(f'--sweep={sweep_path}: run {i} ({overrides}) does not make a config: '
                       f'{_first_line(e).rstrip(".")}. Fix the value in the sweep file.') from e
    planned.append(Run(overrides, fs.join(workdir_root, name), config, config_path,
                       extra_args))
  validate_runs(sweep_path, planned)
  return planned


# ---------------------------------------------------------------------------
# Running.

class _Children:
  """Runs one child at a time in its own session; SIGTERM / SIGINT to the sweep are
  passed on to it (a terminal's Ctrl-C reaches only the sweep, so the child gets it
  once, and a second Ctrl-C reaches it as a second one)."""

  def __init__(self):
    self.child = None
    self.signum = None

  def __enter__(self):
    self.previous = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *exc):
    for s, handler in self.previous.items():
      signal.signal(s, handler)

  def _forward(self, signum, frame):
    del frame
    self.signum = self.signum or signum
    if self.child is not None and self.child.poll() is None:
      self.child.send_signal(signum)

  def call(self, args):
    self.child = subprocess.Popen([sys.executable, *args], start_new_session=True)
    try:
      return self.child.wait()
    finally:
      self.child = None


def run_sweep(runs):
  """Runs (or skips) each run; prints the table. Returns the exit status."""
  failed = []
  n = len(runs)
  with _Children() as children:
    for i, run in enumerate(runs, 1):
      tag = f'[sweep {i}/{n}] {run.name}'
      status, differ = run.status()
      if status == 'finished':
        print(f'{tag}: finished (eval_metrics.json of step {run.config.num_train_steps}); '
              'skipped.', flush=True)
        continue
      steps = (('train.py', run.train_args), ('eval.py', run.eval_args))
      if status == 'evaluate':
        why = (f'evaluated with other eval fields ({_describe(differ)})' if differ else
               f'not evaluated at step {run.config.num_train_steps}')
        print(f'{tag}: trained, {why}; evaluating.', flush=True)
        steps = steps[1:]
      for what, args in steps:
        print(f'{tag}: {what} ...', flush=True)
        code = children.call(args)
        if children.signum is not None or code >= 128 or code < 0:
          status = 128 + children.signum if children.signum else (
              code if code > 0 else 128 - code)
          print(f'{tag}: stopped during {what} (exit status {code}); rerun the same command '
                'to resume the sweep.', file=sys.stderr, flush=True)
          return status
        if code != 0:
          failed.append(f'{run.workdir} ({what} exit status {code})')
          break
  done = [r.workdir for r in runs if r.finished()]
  if done:
    try:
      header, rows = collect.run_table(done)
    except collect.CollectError as e:
      print(f'vaes.collect: {e}', file=sys.stderr, flush=True)
      return 1
    print(f'\n{len(done)} of {n} runs finished:\n' + collect.markdown(header, rows), flush=True)
    print(f'(The same table later: python -m vaes.collect {shlex.join(done)})', flush=True)
  if failed:
    print(f'{len(failed)} of {n} runs failed: ' + '; '.join(failed) + '. Their output is above; '
          'fix and rerun the same command (finished runs are skipped).', file=sys.stderr,
          flush=True)
    return 1
  return 0


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog='python -m vaes.sweep', allow_abbrev=False, description=__doc__.split('\n\n')[0],
      epilog='Other flags go to every train.py and eval.py.')
  parser.add_argument('--config', required=True, help='config file (get_config())')
  parser.add_argument('--sweep', required=True, help='sweep file (get_sweep())')
  parser.add_argument('--workdir_root', required=True, help='one workdir per run under it')
  parser.add_argument('--print_only', action='store_true',
                      help='print one command line per run instead of running them')
  args, extra = parser.parse_known_args(argv)
  stray = [a for a in extra if not a.startswith('-')]
  if stray:
    cli.fail(f'{stray[0]!r} is not a flag; flags look like --config.seed=1.')
  if any(a.split('=', 1)[0] == '--workdir' for a in extra):
    cli.fail('--workdir: a sweep gives each run its own workdir under --workdir_root; pass '
             '--workdir_root=DIR instead.')
  try:
    runs = plan(args.config, args.sweep, args.workdir_root, extra)
    check_finished_runs(runs)
  except SweepError as e:
    cli.fail(str(e))
  if args.print_only:
    for run in runs:
      print(run.command_line())
    done = [r.name for r in runs if r.finished()]
    if done:
      print(f'# {len(done)} of {len(runs)} already finished (their train.py trains nothing): '
            f'{", ".join(done)}', file=sys.stderr)
    print(f'# then: python -m vaes.collect {shlex.join(r.workdir for r in runs)}',
          file=sys.stderr)
    return 0
  return run_sweep(runs)


if __name__ == '__main__':
  sys.exit(main())
