"""Engine fields shared by every config. Model configs call `get_base_config()`
and fill in `model.*`, `data.*` and `eval.*`; paper configs import a model config
and override a few fields."""

import ml_collections


def get_base_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 64               # global batch, split over processes and devices
  c.num_train_steps = 1000
  c.log_every_steps = 100
  c.eval_every_steps = 500        # 0 disables evaluation during training
  c.checkpoint_every_steps = 500
  c.max_checkpoints_to_keep = 3

  # Optimiser (optax).
  c.optimizer = 'adam'            # 'adam' | 'adamw'
  c.learning_rate = 1e-3
  c.lr_schedule = 'constant'      # 'constant' | 'cosine'
  c.lr_warmup_steps = 0
  c.adam_b1 = 0.9
  c.adam_b2 = 0.999
  c.weight_decay = 0.0
  c.grad_clip_norm = 0.0          # 0 disables global-norm clipping

  # Numerical faults: non-finite updates are always skipped and counted.
  c.skip_grad_norm_above = 0.0    # >0 also skips updates with a larger gradient norm
  c.max_consecutive_skips = 100   # then the run stops with its last good checkpoint intact

  # Train steps per jitted call (a lax.scan over that many batches): fewer host
  # dispatches for small, launch-bound steps. Logging, evaluation and checkpoints
  # still happen at exactly their steps; the results are the same for any value.
  c.steps_per_dispatch = 1

  c.compute_dtype = 'float32'     # 'float32' | 'bfloat16'; params and losses stay float32
  # float32 matmuls / convolutions in the train step: 'default' (fast: TF32 on NVIDIA
  # GPUs, one bfloat16 pass on TPUs), 'high', 'highest' (full float32).
  c.matmul_precision = 'default'

  # (start_step, num_steps): a jax.profiler trace of those train steps on process 0
  # into WORKDIR/tensorboard/plugins/profile (TensorBoard / XProf); () = no profile.
  c.profile_steps = ()

  c.model = ml_collections.ConfigDict()
  c.model.name = ''

  c.data = ml_collections.ConfigDict()
  c.data.name = 'digits'
  c.data.tfds_data_dir = ''       # '' = TFDS default (~/tensorflow_datasets)

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256
  c.eval.num_images = 64          # images in each PNG grid
  # Evaluation runs its float32 matmuls at full precision: reported likelihoods do
  # not depend on the backend's fast modes. 'default' is faster on GPUs and TPUs.
  c.eval.matmul_precision = 'highest'
  return c
