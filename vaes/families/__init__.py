"""Model families: each module registers one `ModelFamily` at import time."""

from vaes.families import vqvae  # noqa: F401
