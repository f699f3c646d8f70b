"""Models judged as subjects: a user's model and data, and the suite's trained digits networks.

* :mod:`.subject` -- :class:`~properties.subjects.subject.Subject` (``properties.Subject``) and ``evaluate``;
* :mod:`.digits` -- an MLP, CNNs and a ResNet trained on scikit-learn's 8x8 digits.
"""
