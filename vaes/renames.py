"""Config fields renamed since runs were saved, and how saved configs are read.

Saved configs (checkpoint meta items, WORKDIR/config.json) are read through
`upgrade_config`, so that runs saved before a rename resume, compare, sweep and collect
as they did; an override with an old name on the command line is one line naming the
new one. Imports nothing (vaes/collect.py runs without JAX)."""


# The decay of the moving average of the weights (evaluated when > 0). Named
# config.ema_decay until 2026-12, beside config.model.ema_decay (the codebook's).
WEIGHTS_EMA = 'weights_ema_decay'
# Top-level config fields renamed since runs were saved: old name -> new name. Saved
# configs (checkpoint meta items, config.json) are read through `upgrade_config`.
RENAMED_FIELDS = {'ema_decay': WEIGHTS_EMA}


def upgrade_config(saved):
  """A saved config dict (nested, as config_dict makes) with renamed fields under their
  current names, so that runs saved before a rename resume, compare and collect as
  they did. A copy; `saved` itself is not changed."""
  if not isinstance(saved, dict):
    return saved
  out = dict(saved)
  for old, new in RENAMED_FIELDS.items():
    if old in out and new not in out:
      out[new] = out.pop(old)
  return out


def renamed_field_message(name):
  """One line for an override of a renamed field (`name`: 'ema_decay'), else None."""
  new = RENAMED_FIELDS.get(name)
  if new is None:
    return None
  return (f'--config.{name} was renamed --config.{new} (the moving average of the weights; '
          'config.model.ema_decay is the codebook\'s): use the new name. Saved runs that '
          'have the old one still resume and evaluate.')
