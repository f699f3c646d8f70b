"""The measurement core: how a property is judged, counted and named.

* :mod:`.checks` -- vectorised per-root / per-point outcomes of DTD's questions;
* :mod:`.stats` -- rates with clustered confidence intervals, and the baseline comparison;
* :mod:`.keys` -- :class:`~properties.measure.keys.RateKey`, the typed name of every reported rate;
* :mod:`.thresholds` -- every threshold of what counts as "holds";
* :mod:`.gates` -- the absolute gates: must-hold properties and ``--property-require`` floors.
"""
