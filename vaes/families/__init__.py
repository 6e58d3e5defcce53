"""Model families: each module registers one `ModelFamily` at import time."""

from vaes.families import vqvae  # noqa: F401
from vaes.families import ladder  # noqa: F401
from vaes.families import vrae  # noqa: F401
