"""Engine fields shared by every config. Model configs call `get_base_config()`
and fill in `model.*`, `data.*` and `eval.*`; paper configs import a model config
and override a few fields."""

import ml_collections

from vaes.data.core import data_config


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
  c.lr_warmup_fraction = 0.0      # > 0: warm-up over this fraction of num_train_steps (wins)
  c.adam_b1 = 0.9
  c.adam_b2 = 0.999
  c.adam_eps = 1e-8               # epsilon of Adam's denominator (optax's default)
  c.weight_decay = 0.0
  c.grad_clip_norm = 0.0          # 0 disables global-norm clipping
  # Exponential moving average of the weights, updated every step (kept on a skipped
  # update): ema <- decay * ema + (1 - decay) * params. 0 = off; when on, evaluation,
  # samples and checkpoint selection use it; it is checkpointed with the train state.
  # (A VQ codebook's own moving average is config.model.ema_decay. Named ema_decay before
  # 2026-12: runs saved with that name resume and evaluate, see vaes/renames.py.)
  c.weights_ema_decay = 0.0

  # Fine-tuning: a fresh run (no checkpoint in its workdir yet) starts from another run's
  # weights instead of an initialisation. '' = off, else that run's workdir; which of its
  # checkpoints: init_from_checkpoint 'best' (WORKDIR/best), 'latest', or 'auto' (best
  # when it kept one). The weights eval.py would evaluate there (the moving average when
  # kept) and the model state (batch statistics, codebooks) are copied; the optimiser,
  # the step and the data position start fresh. A resume of this workdir ignores both.
  c.init_from = ''
  c.init_from_checkpoint = 'auto'

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
  # Convolutions compiled for the CPU: 'xla' (XLA's own kernels; faster for the VQ-VAE
  # train step on the CPUs measured) or 'ynnpack' (jaxlib's default). Matmuls keep
  # YNNPACK either way; no effect on GPUs and TPUs (vaes/xla_options.py).
  c.cpu_convolutions = 'xla'

  # (start_step, num_steps): a jax.profiler trace of those train steps on process 0
  # into WORKDIR/tensorboard/plugins/profile (TensorBoard / XProf); () = no profile.
  c.profile_steps = ()

  c.model = ml_collections.ConfigDict()
  c.model.name = ''

  c.data = data_config()          # every data field, with its default and meaning

  c.eval = _eval_config()
  return c


def _eval_config():
  """config.eval: the engine's evaluation fields (a family adds its own)."""
  e = ml_collections.ConfigDict()
  e.batch_size = 256
  e.num_images = 64               # images in each PNG grid
  # Evaluation runs its float32 matmuls at full precision: reported likelihoods do
  # not depend on the backend's fast modes. 'default' is faster on GPUs and TPUs.
  e.matmul_precision = 'highest'
  # Checkpoint selection (tune on 'valid', report 'test'): with a metric name, the
  # evaluations during training run on the split select_split (given to the data
  # builder as data.eval_split) and the checkpoint of the best value is kept in
  # WORKDIR/best; eval.py evaluates that one on data.eval_split.
  e.select_metric = ''            # '' = off; e.g. 'nll', 'nll_per_frame' (a metric of the eval)
  e.select_mode = 'min'           # 'min' | 'max': which value is best
  e.select_split = 'valid'        # TFDS datasets: their split name, e.g. 'validation'
  # Importance samples of the selection evaluations; 0 = eval.num_importance_samples.
  e.select_num_importance_samples = 0
  e.checkpoint = 'auto'           # eval.py: 'best' | 'latest' | 'auto' (best iff select_metric)
  return e
