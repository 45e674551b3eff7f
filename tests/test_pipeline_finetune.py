"""embed with finetune: true fine-tunes on mined pairs, embeds with the checkpoint, and the
encoder bundle for serving carries that checkpoint."""
import json

from causalrec import pipeline
from causalrec.config import load_params
from causalrec.text import TextEncoder
from conftest import make_project


def test_embed_stage_finetunes_and_packages_the_checkpoint(tmp_path, tiny_encoder):
    root = make_project(tmp_path / "p", tiny_encoder, git=False,
                        embed={"finetune": True, "finetune_epochs": 1, "finetune_batch_size": 16, "finetune_max_pairs": 200})
    params = load_params(root / "params.yaml")
    pipeline.ingest(params)
    first = pipeline.embed(params)
    assert first["finetuned_checkpoint"] and first["finetune"]["pairs"] == 200
    assert first["fingerprint"] != TextEncoder(tiny_encoder, progress=False).load().fingerprint
    again = pipeline.embed(params)  # same data and settings: the checkpoint is reused, nothing re-embedded
    assert again["finetuned_checkpoint"] == first["finetuned_checkpoint"] and again["newly_embedded"] == 0
    out = tmp_path / "encoder-bundle"
    out.mkdir()
    spec = pipeline.write_encoder_bundle(params, out)
    assert spec["finetuned"] and spec["source"] == "bundled"
    bundled = TextEncoder(out / "model", progress=False).load()
    assert bundled.fingerprint == first["fingerprint"]
    assert json.loads((out / "encoder.json").read_text())["finetuned"] is True
