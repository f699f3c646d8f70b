"""Root conftest: hypothesis profiles and the property-report plugin.

Profiles (choose with ``HYPOTHESIS_PROFILE``):

* ``dev`` (default) -- random exploration, a local example database;
* ``ci`` -- ``derandomize=True``, no database, no deadline: the same examples on every run;
* ``thorough`` -- derandomized like ``ci`` but many more examples, for long local sweeps.
"""

import os
import sys

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

settings.register_profile("dev", max_examples=30, **_COMMON)
settings.register_profile("ci", max_examples=30, derandomize=True, database=None, print_blob=True, **_COMMON)
settings.register_profile("thorough", max_examples=500, derandomize=True, database=None, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

if "properties.plugin" not in sys.modules:
    # not yet loaded by its entry point or -p: register it.  (Defined only then, so that a run elsewhere that
    # collects the kit from this checkout, pytest --dtd-implementation, does not meet a non-top-level pytest_plugins.)
    pytest_plugins = ["properties.plugin"]
