"""What the benchmarks share: random data of a config's shapes, the JSON output."""

import json


def synthetic_inputs(config):
  """(data_info, element_spec, make_batch) for random data of the config's shapes.

  Uses the dataset builder when its data is at hand (embedded data); for a TFDS
  dataset whose files are absent, the shapes come from the TFDS spec table."""
  import numpy as np
  from vaes import data as data_lib
  try:
    splits = data_lib.get_datasets(config)
    info, spec = splits.info, splits.train.element_spec
  except (data_lib.DataError, ImportError):  # TFDS files (or TensorFlow) not at hand
    from vaes.data import tfds_data
    if config.data.name not in tfds_data.SPECS:
      raise
    ds = tfds_data.SPECS[config.data.name]
    size = config.data.get('image_size', ds.image_size)
    shape = (size, size, 1 if ds.grey_inverted else ds.native_shape[2])
    binary = ds.binary or config.data.get('binarize', 'none') != 'none'
    info = {'kind': 'image', 'shape': shape, 'num_levels': 2 if binary else 256,
            'train_variance': 0.06, 'num_train': 50_000, 'num_eval': 10_000}
    spec = {'image': (shape, np.float32)}
  rng = np.random.default_rng(0)
  levels = info.get('num_levels', 256)

  def make_batch(batch_size):
    batch = {}
    for k, (shape, dtype) in spec.items():
      shape = (batch_size,) + tuple(shape)
      if np.issubdtype(dtype, np.floating):
        if k == 'mask':
          batch[k] = np.ones(shape, dtype)
        elif info.get('kind') == 'image' or k == 'x':
          steps = max(levels - 1, 1)
          batch[k] = (rng.integers(0, steps + 1, shape) / steps).astype(dtype)
        else:
          batch[k] = rng.normal(size=shape).astype(dtype)
      elif dtype == np.bool_:
        batch[k] = np.ones(shape, dtype)
      else:
        batch[k] = np.zeros(shape, dtype)
    return batch
  return info, spec, make_batch


def emit(result, output=''):
  """Prints `result` as one JSON line and, if `output` is set, appends it there."""
  line = json.dumps(result)
  print(line, flush=True)
  if output:
    with open(output, 'a', encoding='utf-8') as f:
      f.write(line + '\n')
