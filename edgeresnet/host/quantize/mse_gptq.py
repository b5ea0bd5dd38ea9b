"""``mse+gptq``: ``mse+bias`` with GPTQ rounding of the weights.

Each rounding error is pushed onto the weights not yet rounded, weighted by
the layer's input correlations (Hessian), measured on ``gptq_samples``
calibration samples and ``gptq_rows`` patch rows per sample and layer
(:func:`~edgeresnet.host.quantize.stats.sample_patches`): :func:`gptq`.
"""

from __future__ import annotations

import numpy as np

from edgeresnet.host.quantize.graph import Graph, Layer
from edgeresnet.host.quantize.mse_bias import MseBias, quantize_layer_weights, round_to_nearest
from edgeresnet.host.quantize.registry import register_method


@register_method
class MseGptq(MseBias):
    name = "mse+gptq"
    description = "mse+bias with GPTQ rounding (errors pushed onto the weights not yet rounded)"
    max_choice_macs = 1e9

    def subsets(self, n, cfg):
        from edgeresnet.host.quantize.engine import spread

        return super().subsets(n, cfg) | {"gptq": spread(n, cfg.gptq_samples)}

    def set_weights(self, graph, layers, stats) -> None:
        for layer in layers:
            gptq_layer_weights(graph, layer, stats.mean_inputs.get(layer.x), stats.hessians.get(layer.w))


def gptq_layer_weights(graph: Graph, layer: Layer, x_mean, hessian) -> None:
    """``layer``'s weights as ``mse+gptq`` writes them: GPTQ-rounded with the input correlations ``hessian``
    (to nearest when None: no patch rows were measured), then bias-corrected with the mean input ``x_mean``."""
    if hessian is None:
        quantize_layer_weights(graph, layer, x_mean, round_to_nearest)
    else:
        quantize_layer_weights(graph, layer, x_mean, lambda w, s: gptq(w.reshape(len(w), -1), hessian, s).reshape(w.shape))


def gptq(w: np.ndarray, hessian: np.ndarray, scale: np.ndarray, damp: float = 0.01, block: int = 128):
    """Integer weights (O, d) on the grid ``scale`` chosen by GPTQ (Frantar et al., 2022).

    Columns are rounded in order of decreasing input energy; each rounding
    error is spread over the columns not rounded yet via the inverse Hessian.
    Each row's largest-magnitude weight is held fixed (it is exactly +-127
    steps), so the quantizer recomputes the same scale. A row holding weights
    that are exactly zero (a pruned layer's) is rounded to nearest instead,
    which keeps them zero: GPTQ would push other weights' errors onto them and
    undo the sparsity (holding them fixed instead measured worse than rounding
    to nearest at 50 % sparsity).
    """
    sc = scale.astype(np.float64)
    out = np.clip(np.round(w / sc[:, None]), -127, 127)  # to nearest: what a row with zeros keeps
    dense = ~np.any(w == 0, axis=1)
    if not dense.any():
        return out
    W, sc = w[dense].astype(np.float64), sc[dense]  # GPTQ's rows are independent: only these need it
    rows, d = W.shape
    H = hessian.astype(np.float64).copy()
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    H += damp * float(np.mean(np.diag(H))) * np.eye(d)
    order = np.argsort(-np.diag(H), kind="stable")
    W, H = W[:, order], H[order][:, order]
    fixed = np.zeros_like(W, dtype=bool)
    fixed[np.arange(rows), np.abs(W).argmax(1)] = True
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper Cholesky factor of H^-1
    Q = np.zeros_like(W)
    for i1 in range(0, d, block):
        i2 = min(i1 + block, d)
        Wb = W[:, i1:i2].copy()
        Err = np.zeros_like(Wb)
        Ub = U[i1:i2, i1:i2]
        for j in range(i2 - i1):
            col = Wb[:, j]
            q = np.clip(np.round(col / sc), -127, 127)
            Q[:, i1 + j] = q
            e = (col - q * sc) / Ub[j, j]
            upd = np.outer(e, Ub[j, j + 1 :])
            upd[fixed[:, i1 + j + 1 : i2]] = 0.0
            Wb[:, j + 1 :] -= upd
            Err[:, j] = e
        if i2 < d:
            upd = Err @ U[i1:i2, i2:]
            upd[fixed[:, i2:]] = 0.0
            W[:, i2:] -= upd
    unordered = np.empty_like(Q)
    unordered[:, order] = Q
    out[dense] = unordered
    return out
