"""Model families: each module declares its `config.model` schema (`model_config()`), its
own `config.eval` fields (`eval_config()`, where it has any) and registers one
`ModelFamily` at import time."""

from vaes.families import vqvae  # noqa: F401
from vaes.families import ladder  # noqa: F401
from vaes.families import vrae  # noqa: F401
from vaes.families import vq_prior  # noqa: F401
from vaes.families import vqvae2  # noqa: F401
