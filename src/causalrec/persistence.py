"""Saving and loading every model: a kind, the model's config and its weights as a state dict.

Files are read with `torch.load(weights_only=True)`: plain types and tensors only, so loading a
model file never runs code from it. Each model class owns its `to_state()` / `from_state()`; this
module (above models/ and causal/) owns the kind -> class table. A new model kind is one entry.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from causalrec.causal.debias import DebiasedRecommender
from causalrec.causal.uplift import UpliftLearner
from causalrec.io import atomic_write_bytes
from causalrec.models.mf import Popularity

KINDS = {"popularity": Popularity, "debiased": DebiasedRecommender, "uplift": UpliftLearner}


def save_model(model, path: str | Path) -> None:
    kind = next((k for k, cls in KINDS.items() if type(model) is cls), None)
    if kind is None:
        raise TypeError(f"cannot save a {type(model).__name__}; known kinds: {sorted(KINDS)}")
    buf = io.BytesIO()
    torch.save({"kind": kind, "state": _stored_once(model.to_state())}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _stored_once(tree):
    """`tree` with equal tensors replaced by one of them: torch.save writes a storage once, however many
    entries hold it. An uplift learner's bootstrap members and parts each carry the same feature tables
    (six copies of 3 MB in the default flow's); loaded, they share one read-only buffer."""
    seen: dict[tuple, torch.Tensor] = {}

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(walk(v) for v in node)
        if not isinstance(node, torch.Tensor) or node.numel() < 4096:
            return node
        # flattened: a contiguous (n, 1) column may keep the stride of the row it was transposed from,
        # and viewing it as bytes needs a unit stride
        data = node.detach().contiguous().reshape(-1)
        key = (data.dtype, tuple(node.shape), hashlib.blake2b(data.view(torch.uint8).numpy(), digest_size=16).digest())
        first = seen.setdefault(key, node)
        return first if torch.equal(first, node) else node

    return walk(tree)


def load_model(path: str | Path):
    try:
        blob = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # a file from elsewhere, truncated, or holding pickled code
        raise ValueError(f"{path}: not a causalrec model file ({exc.__class__.__name__}: {str(exc)[:200]})") from exc
    if not isinstance(blob, dict) or blob.get("kind") not in KINDS:
        raise ValueError(f"{path}: unknown model kind {blob.get('kind') if isinstance(blob, dict) else None!r}; "
                         f"known: {sorted(KINDS)}")
    return KINDS[blob["kind"]].from_state(blob["state"])
