"""The suite's own property tests (``test_*.py``, marked ``properties``): ``pytest -m properties``.

Their rates are gated against ``properties/baseline.json``.
"""
