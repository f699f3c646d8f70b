"""Root conftest: hypothesis profiles and the property-report plugin.

Profiles (choose with ``HYPOTHESIS_PROFILE``):

* ``dev`` (default) -- random exploration, a local example database;
* ``ci`` -- ``derandomize=True``, no database, no deadline: the same examples on every run;
* ``thorough`` -- derandomized like ``ci`` but many more examples, for long local sweeps.
"""

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

from dtd.threads import one_thread

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

settings.register_profile("dev", max_examples=30, **_COMMON)
settings.register_profile("ci", max_examples=30, derandomize=True, database=None, print_blob=True, **_COMMON)
settings.register_profile("thorough", max_examples=500, derandomize=True, database=None, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

if "properties.plugin" not in sys.modules:
    # not yet loaded by its entry point or -p: register it.  (Defined only then, so that a run elsewhere that
    # collects the kit from this checkout, pytest --dtd-implementation, does not meet a non-top-level pytest_plugins.)
    pytest_plugins = ["properties.plugin"]


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """This checkout's own tests run torch on one intra-op thread, the caller's count restored after each test.

    Their tensors are tiny: synchronising intra-op threads costs more than it gives (the generated in-region
    sweep took 34 s on two threads and 13 s on one on a busy 2-core machine), and one thread makes every float
    independent of the machine's core count.  Only this checkout's runs: the installed plugin sets nothing.
    """
    with one_thread():
        yield
