"""(a) Head-wise auto aggregation: per-pixel head weights from each head's share of the layer output."""

from __future__ import annotations

import torch


def head_weights(out_bhpd: torch.Tensor, out_proj_weight: torch.Tensor) -> torch.Tensor:
    """Per-pixel weights w_h(p) = <r_h(p), o(p)> / sum_h' <r_h'(p), o(p)>; B×H×P, may be negative.

    out_bhpd: the attention output before the output projection, B×H×P×d.
    out_proj_weight: the projection's weight as torch stores it, C_out×C with C = H·d (bias ignored).
    """
    b, h, p, d = out_bhpd.shape
    weight = out_proj_weight.to(out_bhpd.dtype)
    flat = out_bhpd.transpose(1, 2).reshape(b, p, h * d)  # B×P×C
    total = flat @ weight.T  # B×P×C_out, o = sum_h r_h
    # <r_h, o> = <O_h W_h^T, o> = <O_h, o W_h>: one C_out×C product instead of H of them.
    pulled = (total @ weight).view(b, p, h, d).transpose(1, 2)  # B×H×P×d
    scores = (out_bhpd * pulled).sum(-1).float()  # B×H×P
    denom = scores.sum(1, keepdim=True)
    # Keep the sign of the denominator; only guard an exact zero (no softmax, no clamp, as the paper).
    tiny = torch.finfo(scores.dtype).tiny
    denom = torch.where(denom.abs() < tiny, torch.full_like(denom, tiny), denom)
    return scores / denom


def aggregate_heads(probs_bhpn: torch.Tensor, weights_bhp: torch.Tensor | None) -> torch.Tensor:
    """M(p, n) = sum_h w_h(p) A_h(p, n); uniform 1/H when weights is None. B×P×N."""
    if weights_bhp is None:
        return probs_bhpn.float().mean(1)
    return torch.einsum("bhpn,bhp->bpn", probs_bhpn.float(), weights_bhp.float())
