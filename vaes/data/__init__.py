"""Datasets by name: `get_datasets(config)` -> Splits(train, eval, info: DataInfo).

Builders register themselves with `@register('name')`; each module that
defines builders is imported below. A builder has the signature
`builder(config, process_index, process_count) -> Splits` and reads
`config.data.*`, `config.batch_size`, `config.eval.batch_size` and `config.seed`.
"""

import jax

from vaes.data.core import (BUILDERS as _BUILDERS, DataError, DataInfo, Splits,  # noqa: F401
                            dataset_names, limit_eval, register, validate_batch, zeros_batch)


def get_datasets(config, process_index=None, process_count=None) -> Splits:
  name = config.data.name
  if name not in _BUILDERS:
    raise DataError(f"config.data.name='{name}' is not a known dataset; choose one of "
                    f'{dataset_names()}.')
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  splits = _BUILDERS[name](config, process_index, process_count)
  return limit_eval(splits, config.data.eval_limit)


# Builders (imported for their registration side effect).
from vaes.data import images  # noqa: E402,F401
from vaes.data import music  # noqa: E402,F401
from vaes.data import tfds_data  # noqa: E402,F401
from vaes.data import codes  # noqa: E402,F401
from vaes.data import local  # noqa: E402,F401
from vaes.data import idx_images  # noqa: E402,F401
