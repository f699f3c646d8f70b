"""The field's other findings about LRP / DTD, measured with intervals, and their rows for a user's subject.

* :mod:`.insensitivity` -- class insensitivity with depth (Sixt, Granz & Landgraf 2020);
* :mod:`.invariance` -- input invariance (Kindermans et al. 2019);
* :mod:`.randomisation` -- cascading parameter randomisation (Adebayo et al. 2018);
* :mod:`.similarity` -- how alike two explanations are (cosine, Spearman, SSIM) and a clustered median interval;
* :mod:`.common` -- what the families share: :func:`relevance_from_top` (DTD from any top-layer relevance),
  :func:`rule_list` and :class:`Findings` (the rates, counts and plots a family measured);
* :func:`evaluate_findings` (here): the three families on a user's :class:`properties.Subject`
  (switched off by ``Subject(..., findings=False)`` or ``dtd-properties check --no-findings``).

The papers' claims the report opens each family's section with are the
report's (:mod:`properties.report.papers`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dtd

from ..measure.stats import DEFAULT_CONFIDENCE
from . import insensitivity, invariance, randomisation
from .common import Findings, relevance_from_top, rule_list

if TYPE_CHECKING:
    from ..subjects.subject import Subject

__all__ = ["relevance_from_top", "rule_list", "Findings", "evaluate_findings"]


def evaluate_findings(subject: Subject, *, seed: int = 0, confidence: float = DEFAULT_CONFIDENCE) -> Findings:
    """The ``insensitivity``, ``invariance`` and ``randomisation`` rows of a :class:`properties.Subject`.

    Rows ``insensitivity.{name}.{rule}.{outputs|random}.insensitive``,
    ``invariance.{name}.{rule}.unchanged`` and
    ``randomisation.{name}.{rule}.top{n}.{rank_similar|ssim_similar}``, for
    the subject's rules and the families' contrast rows (``x`` = LRP-0,
    ``w2_first``, ``grad_x_input``).  The subject's model is never touched
    (the randomisation works on a deep copy).
    """
    result = Findings()
    if isinstance(subject.network, dtd.GraphNetwork):
        result.counts[f"subject {subject.name}: insensitivity, invariance and randomisation not measured (they run "
                      "on the dense layers of from_sequential; this model was lowered by the graph engine)"] = 0
        return result
    result.extend(insensitivity.subject_insensitivity(subject, seed=seed, confidence=confidence))
    result.extend(invariance.subject_invariance(subject, confidence=confidence))
    result.extend(randomisation.subject_randomisation(subject, seed=seed, confidence=confidence))
    return result
