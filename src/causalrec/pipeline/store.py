"""The project's BentoML model store: where a registered model lives, its exports versioned with the
data, what a run created and may prune, and `bentoml build`."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from causalrec.config import Params
from causalrec.io import atomic_write_json, run_child
from causalrec.pipeline.paths import StageError

MODEL_STORE_NAME = "causalrec-recommender"
ENCODER_STORE_NAME = "causalrec-encoder"


def bentoml_env(params: Params) -> None:
    """Before BentoML is used (called, never at import): the project keeps its own BentoML store
    unless the user points BENTOML_HOME elsewhere."""
    os.environ.setdefault("BENTOML_HOME", str(params.root / ".bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


def model_path(params: Params, tag: str, missing_ok: bool = False) -> Path | None:
    """Where a model of BentoML's store lives; a model missing there (a fresh machine) is imported
    from its export in paths.model_store when the data version brought one (`dvc pull`)."""
    import bentoml
    from bentoml.exceptions import NotFound

    bentoml_env(params)
    try:
        return Path(bentoml.models.get(tag).path)
    except NotFound:
        export = _existing_export(params, tag)
        if export is not None:  # the format follows the name (.tar.gz: gzip; .bentomodel: xz)
            return Path(bentoml.models.import_model(str(export)).path)
        if missing_ok:
            return None
        raise StageError(f"model {tag} is not in the BentoML store {os.environ.get('BENTOML_HOME')} "
                         f"nor exported in {params.paths.model_store} (dvc pull brings the champions' exports)") from None


# gzip, not BentoML's default xz (.bentomodel): xz took 6 of the package stage's 10 s on 2 cores for
# 8 MB less on disk; exports made before in xz are still imported.
EXPORT_SUFFIXES = (".bentomodel.tar.gz", ".bentomodel")


def _export_files(params: Params, tag: str) -> list[Path]:
    """Where `tag`'s export is written (the first) or may have been written by an earlier version."""
    return [params.paths.model_store / f"{tag.replace(':', '-')}{suffix}" for suffix in EXPORT_SUFFIXES]


def _existing_export(params: Params, tag: str) -> Path | None:
    return next((f for f in _export_files(params, tag) if f.exists()), None)


def export_models(params: Params, keep: set[str]) -> list[str]:
    """The models the registry keeps (every champion and the challenger: what a gate or a rollback
    may replay), exported from BentoML's store into paths.model_store, a directory versioned with the
    data (.ci/retrain `dvc add`s it), so a fresh runner that pulls it has them; exports of models
    no longer kept are removed. Returns the tags exported now."""
    import bentoml

    bentoml_env(params)
    root = params.paths.model_store
    root.mkdir(parents=True, exist_ok=True)
    wanted = [t for t in keep if t.split(":")[0] in (MODEL_STORE_NAME, ENCODER_STORE_NAME)]
    exported, present = [], set()
    for tag in wanted:
        export = _existing_export(params, tag)  # an earlier xz export stays (maybe its only copy)
        if export is None:
            # written beside the target under another name, then renamed: an export is whole or absent
            export = _export_files(params, tag)[0]
            written = bentoml.models.export_model(tag, str(export.with_name(f".tmp-{export.name}")))
            os.replace(written, export)
            exported.append(tag)
        present.add(export)
    for stale in {f for suffix in EXPORT_SUFFIXES for f in root.glob(f"*{suffix}")} - present:
        stale.unlink()
    return exported


def champion_bundle(params: Params) -> Path:
    """The bundle directory of the registry's champion (from the BentoML store)."""
    from causalrec.registry import Registry

    champion = Registry(params.paths.registry).champion
    if champion is None:
        raise StageError(f"no champion in {params.paths.registry} yet; run the pipeline (make run) first")
    return model_path(params, champion["model_tag"])


def record_created(path: Path, tag: str) -> None:
    """Add a store tag this project created to `path` (what prune_store may delete later)."""
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
    """`bentoml build` of bentos/bentofile.yaml with the project's src/ as build context (the package
    at the root of the bento's sources), pinning the models it serves as bento arguments (stored in the
    bento, restored when it is served)."""
    cmd = [sys.executable, "-m", "bentoml", "build", "-f", "bentos/bentofile.yaml", "--output", "tag",
           "--arg", f"recommender={model_tag}", "--arg", f"encoder={encoder_tag}", "src"]
    proc = run_child(cmd, cwd=root, capture_output=True, text=True, env={**os.environ, "BENTOML_DO_NOT_TRACK": "True"})
    if proc.returncode != 0:
        raise StageError(f"bentoml build failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    tag = proc.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    return tag
