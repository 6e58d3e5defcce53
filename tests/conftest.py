"""The entry points import the families (the registry imports none); so do the tests."""

import vaes.families  # noqa: F401
