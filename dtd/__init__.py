"""Deep Taylor Decomposition for ReLU networks in PyTorch.

>>> import dtd
>>> net = dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=2)
>>> x = net.sample_inputs(100, output=0, min_output=0.1, seed=0)
>>> dec = dtd.train_free(net, x, rule="z+", output=0)
>>> dec.relevance.shape
torch.Size([100, 10])
"""

from . import (
    graph,
    graph_decompose,
    lowering,
    operators,
    progress,
    regions,
    roots,
    rootsets,
    rules,
    tolerances,
    validation,
)
from .accounting import Accounting, accounting
from .decompose import Decomposition, LayerDecomposition, train_free
from .decomposition import GraphDecomposition
from .full_backward import FullBackward, FullBackwardLayer, estimate_cost, full_backward
from .graph import GraphNetwork
from .graph_decompose import OperatorRoots
from .network import ReLUNetwork
from .roots import LinearRoots, MetropolisHastingsRoots, RegionRoots, RegionSamplingRoots, RootFinder
from .rules import Rule

__all__ = [
    "ReLUNetwork",
    "GraphNetwork",
    "GraphDecomposition",
    "OperatorRoots",
    "graph",
    "graph_decompose",
    "operators",
    "Rule",
    "rules",
    "roots",
    "lowering",
    "rootsets",
    "tolerances",
    "validation",
    "progress",
    "RootFinder",
    "LinearRoots",
    "RegionRoots",
    "RegionSamplingRoots",
    "MetropolisHastingsRoots",
    "regions",
    "train_free",
    "Decomposition",
    "LayerDecomposition",
    "full_backward",
    "FullBackward",
    "FullBackwardLayer",
    "estimate_cost",
    "accounting",
    "Accounting",
]
