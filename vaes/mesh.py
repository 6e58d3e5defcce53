"""Where arrays live: the 1-D ('data',) device mesh, host batches placed on it, and
the matmul precision of what is traced.

Every process feeds its own slice of a global batch (`put`); parameters and model
state are replicated. Training and evaluation share these, and nothing else."""

import contextlib
import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def make_mesh(devices=None):
  """A 1-D ('data',) mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), ('data',), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


@dataclasses.dataclass(frozen=True)
class Placement:
  """The shardings of one mesh: replicated state, batches split along 'data', and
  stacked batches [steps, batch, ...] split along their second axis."""
  mesh: Any

  @property
  def replicated(self):
    return NamedSharding(self.mesh, P())

  @property
  def batch(self):
    return NamedSharding(self.mesh, P('data'))

  @property
  def stacked(self):
    return NamedSharding(self.mesh, P(None, 'data'))

  @property
  def platform(self):
    return self.mesh.devices.flat[0].platform

  def put(self, batch):
    """Host-local numpy batch -> global arrays sharded along 'data'."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch, np.asarray(x)), batch)

  def put_stacked(self, batches):
    """A list of host-local batches -> global arrays [len, batch, ...] (see
    `config.steps_per_dispatch`)."""
    return jax.tree.map(
        lambda *xs: jax.make_array_from_process_local_data(self.stacked, np.stack(xs)),
        *batches)


def matmul_precision(name):
  """Context for the precision of float32 matmuls and convolutions traced inside it:
  'default' keeps JAX's (TF32 on recent NVIDIA GPUs, one bfloat16 pass on TPUs),
  'high' (TF32 / 3 bfloat16 passes), 'highest' (full float32)."""
  return contextlib.nullcontext() if name == 'default' else jax.default_matmul_precision(name)
