"""Prefect retrain flow: ingest and validate, version the data with DVC, then every stage as a task in
dvc.yaml's order, skipping a stage whose inputs (as dvc.yaml declares them) are those of a run it
already made, as `dvc repro` does.

Runs on Prefect's ephemeral API by default (nothing to start by hand); with PREFECT_API_URL set it
reports to a real `prefect server start`. All logic lives in causalrec.pipeline.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from causalrec import pipeline
from causalrec.config import load_params
from causalrec.pipeline.dag import stage_inputs, stage_order


def _stage_task(name: str, retries: int):
    fn = pipeline.STAGES[name]
    return task(fn, name=name, retries=retries, retry_delay_seconds=2)


def _run_stage(name: str, params, force: bool):
    """Run a stage, or skip it as `dvc repro` would: Prefect's task cache, keyed by the stage's inputs
    as dvc.yaml declares them (pipeline.dag.stage_inputs), returns the result of the run that had the
    same inputs; a missing output, or `force`, runs it again. Ingest always runs: it reads sources
    (ingest.source_path) that dvc.yaml cannot name."""
    if name == "ingest":
        return TASKS[name](params, return_state=True)
    key, present = stage_inputs(params, name)
    stage = TASKS[name].with_options(cache_key_fn=lambda *_: key, refresh_cache=force or not present, persist_result=True)
    return stage(params, return_state=True)


# Deterministic stages are not retried on data errors; I/O-bound ones (package: bentoml build) are.
TASKS = {name: _stage_task(name, retries=1 if name in {"package", "embed"} else 0) for name in pipeline.STAGES}
version_data = task(pipeline.version_data, name="version-data", retries=2, retry_delay_seconds=2)


def _summary_markdown(result: dict) -> str:
    lines = ["# causalrec retrain", "", f"data version (DVC md5): `{result.get('data_md5')}`", "",
             "| model | " + " | ".join(next(iter(result["metrics"]["models"].values())).keys()) + " |",
             "|---|" + "---|" * len(next(iter(result["metrics"]["models"].values())))]
    for name, row in result["metrics"]["models"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in row.values()) + " |")
    lines += ["", f"chosen (validation): **{result['metrics']['chosen']['model']}**; promoted: **{result['package']['promoted']}** "
              f"({result['package'].get('reason', 'packaging off')}); champion's bento: `{result['package'].get('bento_tag')}`", f"drift detected: **{result['monitor']['drift_detected']}**",
              "served feedback: {} partition(s) merged; quarantined events: {}".format(
                  result["ingest"]["feedback"]["partitions"],
                  ", ".join(f"{n} {s}" for s, n in result["ingest"].get("quarantine", {}).items()) or "none"),
              *([f"causal analysis: total effect **{result['analyze']['total_effect']}** (95% "
                 f"{result['analyze']['total_ci95']}), refutations passed {result['analyze']['refutations_passed']}"]
                if result["analyze"].get("report") else []),
              "", "## artifacts", *[f"- {k}: `{v}`" for k, v in result["artifacts"].items()]]
    return "\n".join(lines)


@flow(name="causalrec-retrain", log_prints=True)
def retrain_flow(params_path: str = "params.yaml", version: bool = True, force: bool = False) -> dict:
    """force: rerun every stage (as `dvc repro -f`), not only those whose inputs changed."""
    logger = get_run_logger()
    params = load_params(params_path)
    result: dict = {"skipped": []}

    def run(name: str) -> None:
        state = _run_stage(name, params, force)
        result[name] = state.result()  # raises the stage's error: nothing after it runs
        if state.name == "Cached":
            result["skipped"].append(name)
            logger.info("%s: inputs unchanged since its last run, skipped", name)

    run("ingest")
    # validate raises on bad data: the flow fails here, before anything is versioned or trained.
    run("validate")
    if version:
        result.update(version_data(params))
        logger.info("data versioned: md5 %s", result.get("data_md5"))
    # dvc.yaml defines the order (pipeline.dag); ingest and validate ran above, then the versioning
    order = stage_order(params.root / "dvc.yaml")
    missing = sorted(set(TASKS) - set(order))
    if missing:
        raise pipeline.StageError(f"{params.root / 'dvc.yaml'} lacks the stage(s) {missing}")
    for name in [n for n in order if n in TASKS and n not in ("ingest", "validate")]:
        run(name)
    result["metrics"] = result.pop("evaluate")
    a = params.paths.artifacts_dir
    result["artifacts"] = {
        "metrics": a / "metrics.json", "validation report": a / "validation/report.json",
        "data docs": a / "validation/data_docs/index.html", "embeddings": a / "embeddings",
        "propensity diagnostics": a / "propensity/diagnostics.json", "models": a / "models",
        "training curves": a / "models/training_curves.png", "bento": a / "package/bento.json",
        "drift report": a / "monitor/drift_report.html",
        **({"causal analysis": a / "analysis/report.html"} if params.analyze.enabled else {}),
    }
    logger.info("drift detected: %s (share %.2f)", result["monitor"]["drift_detected"], result["monitor"]["drifted_share"])
    create_markdown_artifact(key="causalrec-retrain", markdown=_summary_markdown(result), description="retrain summary")
    for k, v in result["artifacts"].items():
        print(f"{k:>24}: {Path(v)}")
    return result


if __name__ == "__main__":
    retrain_flow()
