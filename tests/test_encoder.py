import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from causalrec.text import EncoderError, TextEncoder

TEXTS = ["a tent for the summit trail", "espresso grinder", "", "a much longer description " * 20, "espresso grinder"]


def _reference(path, texts):
    """Plain one-text-at-a-time mean pooling + L2 norm: what the model expects."""
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            enc = tok([t], return_tensors="pt", truncation=True, max_length=128)
            h = model(**enc).last_hidden_state[0]
            v = h.mean(0)
            out.append((v / v.norm()).numpy())
    return np.stack(out)


def test_matches_reference_and_is_normalised(tiny_encoder):
    enc = TextEncoder(tiny_encoder, batch_size=2, progress=False).load()
    vec = enc.embed(TEXTS)
    assert vec.shape == (len(TEXTS), 32) and vec.dtype == np.float32
    assert np.allclose(np.linalg.norm(vec, axis=1), 1, atol=1e-5)
    cos = (vec * _reference(tiny_encoder, TEXTS)).sum(1)
    assert cos.min() >= 0.999


def test_cache_skips_unchanged_texts(tiny_encoder, tmp_path):
    enc = TextEncoder(tiny_encoder, cache_dir=tmp_path, progress=False).load()
    first = enc.embed(TEXTS)
    assert enc.last_embedded == 4  # the duplicate text is embedded once
    again = TextEncoder(tiny_encoder, cache_dir=tmp_path, progress=False).load()
    second = again.embed(TEXTS + ["something new"])
    assert again.last_embedded == 1
    assert np.array_equal(first, second[: len(TEXTS)])


def test_int8_agrees(tiny_encoder):
    fp32 = TextEncoder(tiny_encoder, progress=False).load().embed(TEXTS)
    int8 = TextEncoder(tiny_encoder, quantize_int8=True, progress=False).load()
    assert int8.fingerprint.endswith("-int8")
    assert (int8.embed(TEXTS) * fp32).sum(1).mean() > 0.9


def test_packaged_minilm_loads_offline():
    enc = TextEncoder(progress=False).load()
    vec = enc.embed(["waterproof hiking boots", "hiking shoes for trails", "espresso machine"])
    assert vec.shape == (3, 384)
    assert vec[0] @ vec[1] > vec[0] @ vec[2]  # real semantics, not random weights


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p / "missing", "not a directory"),
    (lambda p: p, "no config.json"),
])
def test_bad_model_path(tmp_path, make, fragment):
    with pytest.raises(EncoderError, match=fragment):
        TextEncoder(make(tmp_path)).load()
