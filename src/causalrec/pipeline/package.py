"""Stage package: the chosen model and the encoder into the BentoML model store, and the bento."""
from __future__ import annotations

import json
from pathlib import Path

from causalrec.config import Params
from causalrec.io import atomic_dir, atomic_write_json
from causalrec.pipeline.bundle import write_bundle, write_encoder_bundle
from causalrec.pipeline.paths import require, stage_paths
from causalrec.pipeline.store import (ENCODER_STORE_NAME, MODEL_STORE_NAME, bentoml_env, build_bento, export_models,
                                      model_path, prune_store, record_created)


def package(params: Params) -> dict:
    """Register the candidate chosen on validation (BentoML model store + registry), let the gate
    (pipeline.promote) decide, and on promotion build the bento that pins its models. With serve.bandit
    the candidate becomes the challenger that serves beside the champion (serving.mixture), and the gate
    decides on the challenger waiting from the previous run first, on the latest traffic it shared."""
    from causalrec.registry import Registry

    d = stage_paths(params)
    metrics = json.loads(require(d["metrics"], "package").read_text())
    primary, best = metrics["primary_metric"], metrics["chosen"]["model"]
    result = {"candidate": {"model": best, primary: metrics["models"][best][primary]}, "promoted": False,
              "champion": Registry(params.paths.registry).champion}
    if params.package.enabled:
        registry = Registry(params.paths.registry)
        waiting = registry.alias("challenger") if params.serve.bandit.enabled else None
        earlier = None
        if waiting is not None and waiting["status"] == "challenger":
            # it served its share of the latest traffic beside the champion (serve.bandit): the gate decides now
            earlier = gate(params, waiting, model_path(params, waiting["model_tag"]))
            result["challenger_decision"] = {"model_tag": waiting["model_tag"], "promoted": earlier["promote"],
                                             "reason": earlier["reason"], "ope": earlier["ope"]}
        entry, bundle = register_candidate(params, best)
        if params.serve.bandit.enabled and registry.champion is not None:
            # the gate decides once it has served its share beside the champion (the next package run)
            decision = {"promote": bool(earlier and earlier["promote"]), "ope": None,
                        "reason": "challenger: serves beside the champion with the bandit's share (serve.bandit); the "
                                  "gate decides at the next retrain, on the traffic it served"}
        else:
            decision = gate(params, entry, bundle)
        keep = registry.keep()
        result.update(promoted=decision["promote"], reason=decision["reason"], ope=decision["ope"],
                      model_tag=entry["model_tag"], champion=registry.champion,
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
    bentoml_env(params)
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
    record_created(d["store_tags"], model_tag)  # before anything can fail: a later run prunes it
    with bentoml.models.create(ENCODER_STORE_NAME, metadata={"fingerprint": (manifest["encoder"] or {}).get("fingerprint")}) as enc_model:
        write_encoder_bundle(params, Path(enc_model.path))
    record_created(d["store_tags"], str(enc_model.tag))
    entry = {"model_tag": model_tag, "encoder_tag": str(enc_model.tag), "bento_tag": None, "model": label or model_name,
             "primary_metric": primary, "score": score, "metrics": metrics["models"][model_name],
             "data_md5": manifest["data_md5"], "params_sha256": params_hash(params), "git_sha": code_version(params.root),
             "privacy": manifest.get("privacy")}
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
        bentoml_env(params)
        for tag in (entry["model_tag"], entry["encoder_tag"]):
            model_path(params, tag)  # a clear error when neither the store nor an export has it
        bento_tag = build_bento(params.root, entry["model_tag"], entry["encoder_tag"])
        record_created(stage_paths(params)["store_tags"], bento_tag)
        registry.update(model_tag, bento_tag=bento_tag)
    event = registry.promote(model_tag, reason, by)
    export_models(params, registry.keep())  # the new champion travels with the data version
    return event


