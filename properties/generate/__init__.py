"""What the suite's sweeps draw: networks, inputs, and the rule settings they run.

* :mod:`.strategies` -- hypothesis strategies and i.i.d. sampling of ReLU MLPs, non-negative inputs, rules, cases;
* :mod:`.architectures` -- small original CNNs and residual nets, their populations, strategies and shrinking;
* :mod:`.variants` -- each rule's settings the sweeps run, and its zennit / captum counterparts.
"""
