"""Invariance in training (#46): heads blind to a response's form, fitted on features with the form projected out.

A reward that pays for markdown or padding is a hole an RLHF policy finds. Decorrelation (decorrelation.py) can only
mix objectives that already exist; this removes the form from what the heads see. From pair features whose two sides
say the same thing in two forms (studies/style_swaps.py: markdown against plain prose, padded against not), the span Q
of the largest singular directions of their differences is where form lives in the backbone's features. The rating
and preference heads are fitted on x P, P = I - Q Q^T, and stored as w P: each is still one linear row of the
regression layer on raw features, so scoring, export and import need nothing new. The length and style heads are fitted
on raw features: they exist to see form.
"""
from __future__ import annotations

import torch

from .errors import ArmoError
from .features import Features


def invariant_basis(feats: list[Features], rank: int) -> tuple[torch.Tensor, dict]:
    """Q [d, rank] orthonormal (float64): the top right singular vectors of every pair's chosen - rejected feature
    difference; with the share of the differences' squared norm that Q holds."""
    for f in feats:
        if not f.pair:
            raise ArmoError(f"--invariant-to {f.path}: features without pairs (extract rows whose 'chosen' and "
                            f"'rejected' say the same thing in two forms, studies/style_swaps.py)")
    D = torch.cat([(f.tensors["response_features"][:, 0] - f.tensors["response_features"][:, 1]).double() for f in feats])
    if rank > min(D.shape):
        raise ArmoError(f"--invariant-rank {rank}: more than the {min(D.shape)} directions {D.shape[0]} swap pairs span")
    _, S, Vh = torch.linalg.svd(D, full_matrices=False)
    energy = S.pow(2)
    return Vh[:rank].T.contiguous(), {"rank": rank, "pairs": int(D.shape[0]),
                                      "explained": float(energy[:rank].sum() / energy.sum())}


def project_out(X: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """X P on X's last dimension (P = I - Q Q^T), in X's dtype."""
    Qx = Q.to(X.dtype)
    return X - (X @ Qx) @ Qx.T
