"""Layer 1, the algebra: entangled tensors (sums of tensor products of small leaves).

A vector of size ``d`` is stored as ``sum_{r<R} (x)_{n<N} leaf[r, n]`` with leaves of size
``q = leaf_size(d, N)``, flattened row-major and cut to ``d``.
"""

from tensoradapt.algebra.contraction import kron_chain, materialize, planned_expression, product_equation
from tensoradapt.algebra.entangled import EntangledTensor
from tensoradapt.algebra.init import INIT_SCHEMES, init_leaves_, leaf_std_for
from tensoradapt.algebra.interop import fit_leaves, relative_error, to_cp
from tensoradapt.algebra.leaf import integer_root_ceil, leaf_size

__all__ = [
    "EntangledTensor",
    "INIT_SCHEMES",
    "fit_leaves",
    "init_leaves_",
    "integer_root_ceil",
    "kron_chain",
    "leaf_size",
    "leaf_std_for",
    "materialize",
    "planned_expression",
    "product_equation",
    "relative_error",
    "to_cp",
]
