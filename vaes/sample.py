"""sample.py's job: draw from a trained model into WORKDIR/samples/.

The weights are those eval.py evaluates (`load_variables`, through
vaes.evaluate.load_trained: the checkpoint config.eval.checkpoint names, its moving
average of the parameters when the run kept one, or an export file), and the family's
`sample` hook (vaes/registry.py) draws with them:

  ladder / hierarchical VAEs  a grid of prior samples, every prior's standard deviation
                      times --temperature; --from_layer=K: the top K layers from the
                      posterior of evaluation images, the rest sampled (one column per
                      image: the image, then draws);
  vq_prior            codes from the prior at softmax temperature --temperature, decoded
                      by its first stage (config.data.vqvae_workdir). A VQ-VAE workdir
                      (vqvae, vqvae2) has no prior: the command names the one to train;
  vrae                --num sequences from the prior (z's standard deviation times T), or
                      with --impute the middle third of evaluation sequences filled in;
                      per sequence a piano-roll PNG (line plots for real-valued frames)
                      and, for 88-key rolls, a MIDI file (vaes/midi.py).

Files: WORKDIR/samples/<stem>.png (or the folder <stem>/ for sequences) and the sidecar
<stem>.json (checkpoint and step, weights, seed, temperature, num, from_layer, impute,
the files, the config), with stem '<what>_n<num>_t<T>_s<seed>', <what> 'samples',
'from_layer<K>' or 'imputation'. The samples depend only on the checkpoint and the flags
(the key is PRNGKey(--seed)); no time is recorded, so the same checkpoint and seed write
the same bytes. Only process 0 draws and writes.

Bad flags are one line (ConfigError) before any data, model or checkpoint is read.
"""

import dataclasses
import json
import math

import jax

from vaes import evaluate
from vaes import fs
from vaes.errors import ConfigError
from vaes.registry import SampleContext, SampleOptions, family_names, get_family
from vaes.run_config import weights_note

SAMPLES_DIR = 'samples'

# What each family option is for, in the one line that refuses it elsewhere.
_OPTION_USE = {'from_layer': 'keeps the top layers of a ladder or hierarchical VAE',
               'impute': 'fills hidden frames of sequences'}


def stem(options):
  """The files' common name: '<what>_n<num>_t<T>_s<seed>' (draws of another --num are
  other draws, so they get other files and never mix with these)."""
  what = ('imputation' if options.impute else
          f'from_layer{options.from_layer}' if options.from_layer else 'samples')
  return f'{what}_n{options.num}_t{options.temperature:g}_s{options.seed}'


def check_options(config, family, options, workdir='WORKDIR'):
  """Refuses (ConfigError, one line naming the flag and the fix) options that no family or
  not this one takes; returns the family's sampler (its hook checks the rest)."""
  name = config.model.name
  if isinstance(options.num, bool) or not isinstance(options.num, int) or options.num < 1:
    raise ConfigError(f'--num={options.num}: give the number of samples, an integer >= 1.')
  t = options.temperature
  if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
    raise ConfigError(f'--temperature={t}: must be a finite number > 0 (1 = the model as '
                      'trained; below 1 the prior is narrowed, e.g. 0.8).')
  if options.seed < 0:
    raise ConfigError(f'--seed={options.seed}: must be >= 0.')
  if family.sample is None:
    if family.prior_interface is not None:   # a VQ model: its samples come from a prior
      raise ConfigError(
          f"config.model.name='{name}' samples through a prior over its codes, and a VQ-VAE "
          'workdir holds none: train one, e.g. python train.py --config=configs/'
          f'{"vqvae2" if name == "vqvae2" else "vqvae"}_prior.py --workdir=PRIOR '
          f'--config.data.vqvae_workdir={workdir}, then sample it: python sample.py '
          '--config=<that prior config> --workdir=PRIOR --config.data.vqvae_workdir='
          f'{workdir}. (Its reconstructions are eval.py\'s eval_*.png.)')
    raise ConfigError(f"config.model.name='{name}' has no sampler; sample.py draws from "
                      f'{sorted(n for n in family_names() if get_family(n).sample)}.')
  if options.from_layer < 0:
    raise ConfigError(f'--from_layer={options.from_layer}: must be >= 0 (0 = a prior sample).')
  for option in options.family_options():
    if option not in family.sample_options:
      takers = sorted(n for n in family_names() if option in get_family(n).sample_options)
      raise ConfigError(f"--{option} {_OPTION_USE.get(option, '')} ({', '.join(takers)}); "
                        f"config.model.name='{name}' does not take it: drop the flag.")
  return family.sample(config, options)


def load_variables(config, workdir, export_path=None):
  """The one place sample.py obtains the variables it draws with -> (Trained, variables
  on this process, record). `vaes.evaluate.load_trained`, shared with eval.py: the
  checkpoint eval.py evaluates (config.eval.checkpoint; refused in one line when missing,
  or a best checkpoint of another run), its weights the moving average of the parameters
  when the run kept one; or, with `export_path`, the variables of an export file. record:
  {'checkpoint': 'best' | 'latest' | 'export', 'step', 'weights': 'ema' | 'params'
  [, 'weights_ema_decay'][, 'export']}, written to the sidecar."""
  trained = evaluate.load_trained(config, workdir, export_path)
  info = trained.info
  note = weights_note(info, config)
  if note and jax.process_index() == 0:
    print(note, flush=True)
  # A local copy of the (replicated) variables: sampling runs on process 0 alone.
  local = jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a,
                       trained.variables)
  record = {'checkpoint': trained.kind, 'step': int(trained.step), 'weights': info['weights']}
  if info['weights'] == 'ema':
    record['weights_ema_decay'] = info['ema_decay']
  if trained.export:
    record['export'] = trained.export
  return trained, local, record


def sample(config, workdir, options: SampleOptions, export_path=None):
  """Draws from the trained model in `workdir` (or the export file `export_path`) as
  `options` say (module docstring); writes WORKDIR/samples/<stem>* and returns the
  sidecar's content."""
  fs.check_url(workdir)
  sampler = check_options(config, get_family(config.model.name), options, workdir)
  trained, variables, record = load_variables(config, workdir, export_path)
  record.update({'model': config.model.name, **dataclasses.asdict(options)})
  if jax.process_index() != 0:
    return record
  out_dir = fs.join(workdir, SAMPLES_DIR)
  name = stem(options)
  ctx = SampleContext(config=config, model=trained.model, variables=variables,
                      data_info=trained.splits.info, eval_source=trained.splits.eval,
                      rng=jax.random.PRNGKey(options.seed), options=options, out_dir=out_dir,
                      stem=name)
  sidecar = fs.join(out_dir, name + '.json')
  try:
    record.update(sampler(ctx))
    record['config'] = json.loads(config.to_json_best_effort())
    fs.write_atomic(sidecar, json.dumps(record, indent=2, sort_keys=True) + '\n')
  except OSError as e:
    raise fs.PathError(f'--workdir={workdir}: writing the samples into {out_dir} failed ({e}). '
                       'Make it writable (or free disk space) and rerun the same '
                       'command.') from e
  what = (f"the export {record['export']}" if trained.export else
          f"the {record['checkpoint']} checkpoint")
  print(f'Samples of {what} (step {record["step"]}, weights {record["weights"]}) -> '
        f'{fs.join(out_dir, name)}* ({len(record["files"])} files; {sidecar})', flush=True)
  return record
