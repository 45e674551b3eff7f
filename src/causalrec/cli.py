"""`causalrec <stage>`: a thin shell over causalrec.pipeline (dvc.yaml calls these)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, help="Causal recommendation pipeline: stages, flows and serving.",
                  pretty_exceptions_enable=False)
PARAMS = typer.Option(Path("params.yaml"), "--params", "-p", help="params.yaml of the project")


def _run(stage: str, params_path: Path) -> None:
    from causalrec import pipeline
    from causalrec.config import ConfigError, load_params
    from causalrec.data.schema import DataError
    from causalrec.validation import ValidationFailed

    try:
        params = load_params(params_path)
        result = pipeline.STAGES[stage](params)
    except (ConfigError, DataError, ValidationFailed, pipeline.StageError, ValueError) as exc:
        typer.secho(f"causalrec {stage}: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result, indent=2, default=str))


def _stage_command(stage: str, doc: str):
    def command(params: Path = PARAMS) -> None:
        _run(stage, params)

    command.__doc__ = doc
    app.command(stage)(command)


for _name, _doc in [
    ("ingest", "Write data/ from the configured source (simulator by default); ground truth apart."),
    ("validate", "Great Expectations suites on every table; fails with table, column, rule, examples."),
    ("embed", "Embed item and user texts with the encoder (cached by text hash)."),
    ("propensity", "Propensity of exposure for every logged row, with diagnostics."),
    ("train", "Train the configured models on the exposed rows."),
    ("evaluate", "Unbiased evaluation; writes artifacts/metrics.json."),
    ("package", "Save the best model to BentoML and build the bento if it beats production."),
    ("monitor", "Evidently drift report on the interaction log."),
]:
    _stage_command(_name, _doc)


@app.command()
def simulate(out: Path = typer.Option(Path("data"), help="directory for the three tables"),
             truth: Path = typer.Option(Path("artifacts/ground_truth"), help="ground-truth directory"),
             params: Path = PARAMS) -> None:
    """Run the simulator alone (sizes and seed from params.yaml)."""
    from causalrec.config import ConfigError, load_params
    from causalrec.data.simulate import simulate as run

    try:
        p = load_params(params)
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(run(p.simulation_config(), out, truth), indent=2))


# What the flows and their stages import (validate: great_expectations, embed: transformers, train: torch;
# torch._dynamo, ~1.3 s, comes with transformers' first model load or torch.optim's first optimiser;
# monitor: evidently, package: bentoml): imported while the flow's API server starts (flows.api).
FLOW_LIBRARIES = ("prefect", "causalrec.flows.retrain", "causalrec.flows.monitor", "torch", "torch._dynamo",
                  "transformers", "great_expectations", "evidently", "bentoml")


def _import_flow_libraries() -> None:
    import importlib

    for name in FLOW_LIBRARIES:
        importlib.import_module(name)


@app.command()
def retrain(params: Path = PARAMS, version: bool = typer.Option(True, help="dvc add + push data/ first"),
            force: bool = typer.Option(False, help="rerun every stage, not only those whose inputs changed")) -> None:
    """Run the Prefect retrain flow (on a Prefect API server started for the run, which dies with it,
    unless PREFECT_API_URL is set)."""
    from causalrec.flows.api import run_api_server

    with run_api_server(meanwhile=_import_flow_libraries):
        from causalrec.flows.retrain import retrain_flow

        result = retrain_flow(params_path=str(params), version=version, force=force)
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def forget(user: str = typer.Option(..., help="the person's id: raw, or the pseudonym the service logs (anon-...)"),
           retrain_now: bool = typer.Option(False, "--retrain", help="then run the retrain flow: a champion "
                                            "trained without them replaces the one trained with them"),
           params: Path = PARAMS) -> None:
    """Erase one person from the data, every feedback partition and log, stage outputs, BentoML's store,
    Prefect's database, the DVC cache and remote; keep a keyed tombstone so nothing brings them back;
    mark every registered model as trained on erased data. Fails (exit 1) naming any place still holding them."""
    from causalrec.config import ConfigError, load_params
    from causalrec.pipeline.forget import forget as run_forget
    from causalrec.pipeline.paths import StageError

    try:
        result = run_forget(load_params(params), user)
    except (ConfigError, ValueError) as exc:
        typer.secho(f"causalrec forget: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except StageError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result, indent=2, default=str))
    if retrain_now:
        retrain(params=params, version=True, force=False)


@app.command("monitor-flow")
def monitor_flow(params: Path = PARAMS) -> None:
    """Run the Prefect monitor flow: drift report (live traffic against the training data), the
    champion against the previous one on that traffic (rollback on a drop); drift emits the event the retrain deployment's
    trigger in prefect.yaml answers (`prefect deploy --all` on a server)."""
    from causalrec.flows.api import run_api_server

    with run_api_server(meanwhile=_import_flow_libraries):
        from causalrec.flows.monitor import monitor_flow as flow

        result = flow(params_path=str(params))
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command("export-feedback")
def export_feedback_cmd(log: Path = typer.Option(..., help="feedback log (JSON lines) written by the Recommender service"),
                        catalogue: Path = typer.Option(None, help="the service's item store (serve.catalogue): items "
                                                                  "added through POST /items join the partition"),
                        params: Path = PARAMS) -> None:
    """Served feedback not exported yet becomes the next partition of paths.feedback_dir; the next ingest
    appends every partition to the data. Events that break the rule book (data.rules: the service's own
    checks, against the catalogue and the registry) are quarantined with the rule each broke (`causalrec
    quarantine`), the rest exported; above feedback.max_quarantine_share of a batch nothing is written."""
    from causalrec.config import ConfigError, load_params
    from causalrec.data.schema import DataError
    from causalrec.registry import Registry, RegistryError
    from causalrec.serving.feedback import export_feedback
    from causalrec.validation import ValidationFailed

    try:
        p = load_params(params)
        if not log.is_file():
            raise DataError(f"feedback log {log} not found")
        if catalogue is not None and not catalogue.is_file():
            raise DataError(f"catalogue store {catalogue} not found")
        registry = Registry(p.paths.registry)
        known = set(registry.state()["models"]) if registry.path.exists() else None
        result = export_feedback(log, p.paths.data_dir, p.paths.feedback_dir,
                                 p.paths.artifacts_dir / "validation_feedback", catalogue, known_versions=known,
                                 max_quarantine_share=p.feedback.max_quarantine_share,
                                 retention_days=p.privacy.retention_days)
    except (ConfigError, DataError, RegistryError, ValidationFailed, KeyError, ValueError) as exc:
        typer.secho(f"causalrec export-feedback: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result, indent=2))


quarantine_app = typer.Typer(help="Feedback events export set aside (each with the rule it broke): list, release, drop.")
app.add_typer(quarantine_app, name="quarantine")


def _quarantine(params: Path):
    from causalrec.config import ConfigError, load_params
    from causalrec.data.quarantine import Quarantine

    try:
        return Quarantine(load_params(params).paths.feedback_dir)
    except ConfigError as exc:
        typer.secho(f"causalrec quarantine: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@quarantine_app.command("list")
def quarantine_list(params: Path = PARAMS, status: str = typer.Option("held", help="held | released | dropped | all")) -> None:
    """Quarantined events: id, status, when held, the rules each broke."""
    from causalrec.data.schema import DataError

    try:
        state = _quarantine(params).state()
    except DataError as exc:
        typer.secho(f"causalrec quarantine: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    rows = state if status == "all" else state[state["status"] == status]
    for row in rows.itertuples():
        typer.echo(f"{row.event_id:<40} {row.status:<9} {row.held_at}  {row.rules}")
    typer.echo(json.dumps({s: int((state["status"] == s).sum()) for s in ("held", "released", "dropped")}))


def _decide(action: str, params: Path, event_ids: list[str], every: bool, reason: str) -> None:
    from causalrec.data.schema import DataError

    if bool(event_ids) == every:
        typer.secho(f"causalrec quarantine {action}: name event ids or --all (not both)", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    try:
        record = _quarantine(params).decide(action, None if every else event_ids, reason)
    except DataError as exc:
        typer.secho(f"causalrec quarantine {action}: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({**record, "event_ids": len(record["event_ids"])}, indent=2))


@quarantine_app.command("release")
def quarantine_release(event_ids: list[str] = typer.Argument(None, help="held event ids"), params: Path = PARAMS,
                       every: bool = typer.Option(False, "--all", help="every held event"),
                       reason: str = typer.Option(..., help="why (kept with the data), e.g. 'item added to the catalogue'")) -> None:
    """Let held events be checked again at the next export-feedback (after the cause was fixed: the
    item added, the model registered); one that still breaks a rule is held again."""
    _decide("release", params, event_ids, every, reason)


@quarantine_app.command("drop")
def quarantine_drop(event_ids: list[str] = typer.Argument(None, help="held event ids"), params: Path = PARAMS,
                    every: bool = typer.Option(False, "--all", help="every held event"),
                    reason: str = typer.Option(..., help="why (kept with the data)")) -> None:
    """Never export these held events (they stay in the quarantine's record)."""
    _decide("drop", params, event_ids, every, reason)


@app.command("rotate-feedback")
def rotate_feedback(log: Path = typer.Option(..., help="the Recommender's feedback log")) -> None:
    """Close the live feedback log now (e.g. from cron, daily): it becomes <log>.<UTC time>; running
    services reopen on their next write; export and deduplication read every segment."""
    from causalrec.serving.feedback import FeedbackLog

    if not log.is_file():
        typer.secho(f"causalrec rotate-feedback: feedback log {log} not found", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    segment = FeedbackLog(log).rotate()
    typer.echo(json.dumps({"rotated_to": str(segment) if segment else None}))


def main() -> None:
    """The console script: logging first (JSON lines on stderr), then the typer app, then the process
    ends without the interpreter's teardown (_end_process)."""
    import atexit

    from causalrec.logs import configure

    try:
        configure()
    except ValueError as exc:
        typer.secho(f"causalrec: {exc}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
    status: dict = {}
    atexit.register(_end_process, status)  # before the command: runs after every handler the command registers
    try:
        app()
    except SystemExit as exc:
        status["code"] = exc.code
        raise


def _end_process(status: dict) -> None:
    """The last exit handler: end the process with the command's status, skipping the interpreter's
    finalisation of every module it imported (torch, transformers, great_expectations, evidently: about
    2.5 s on 2 cores, after the command's work is done). By then the command has written its files whole
    (causalrec.io's atomic writes), joined its threads and stopped its children, and every other exit
    handler has run; logging's (registered before this one) and the standard streams are flushed here."""
    import logging
    import os
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to flush into
            pass
    code = status.get("code", 1)  # no SystemExit: an uncaught exception (its traceback already printed)
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


if __name__ == "__main__":  # pragma: no cover
    main()


@app.command()
def graph(spec: Path = typer.Option(..., help="graph spec (YAML): nodes with roles, edges as [cause, effect]"),
          data: Path = typer.Option(None, help="parquet/CSV whose columns are the graph's observed nodes"),
          out: Path = typer.Option(Path("artifacts/analysis/graph.png"), help="picture (.png or .svg)")) -> None:
    """Draw a causal graph and, given data, test the conditional independences it implies."""
    from causalrec.causal.graph import CausalGraph, GraphError
    from causalrec.causal.report import read_rows
    from causalrec.data.schema import DataError

    try:
        g = CausalGraph.load(spec)
        result = {"picture": str(g.draw(out)), "identification": g.identify().__dict__}
        if data is not None:
            checks = g.check(read_rows(data))
            result.update(implied_independences=checks, consistent_with_data=all(c["holds"] for c in checks))
    except (GraphError, DataError) as exc:
        typer.secho(f"causalrec graph: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result, indent=2))


@app.command()
def analyze(params: Path = PARAMS,
            spec: Path = typer.Option(None, help="graph spec (YAML); given: analyse --data with it instead of params.analyze"),
            data: Path = typer.Option(None, help="parquet/CSV with the graph's observed nodes as columns (with --spec)"),
            cluster: str = typer.Option(None, help="column of the unit rows share (e.g. item_id): cluster-robust intervals"),
            out: Path = typer.Option(Path("artifacts/analysis"), help="report directory with --spec (replaced whole)"),
            placebo_simulations: int = typer.Option(None, min=19, help="with --spec: permuted treatments for the placebo "
                                                    "refuter (default: the library's, 99)"),
            nuisance: str = typer.Option("auto", help="with --spec: nuisance models, auto | logistic | boosting")) -> None:
    """Causal analysis: model -> identify -> estimate (total, direct, indirect, per segment; 95% intervals)
    -> refute; writes report.json, report.html, graph.png, forest.png/csv. Without --spec: the pipeline
    stage on params.analyze (what dvc.yaml and the Prefect flow run)."""
    if spec is None:
        return _run("analyze", params)
    from causalrec.causal.graph import CausalGraph, GraphError
    from causalrec.causal.report import analyze_to, read_rows
    from causalrec.data.schema import DataError

    try:
        if data is None:
            raise DataError("--spec needs --data")
        from causalrec.causal.effects import NUISANCES

        if nuisance not in NUISANCES:
            raise GraphError(f"--nuisance must be one of {NUISANCES}, got {nuisance!r}")
        options = {"nuisance": nuisance, **({} if placebo_simulations is None else {"placebo_simulations": placebo_simulations})}
        report, page = analyze_to(read_rows(data), CausalGraph.load(spec), out, cluster, **options)
    except (GraphError, DataError) as exc:
        typer.secho(f"causalrec analyze: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    headline = report["estimate"]["effects"][report["estimate"]["headline"]]
    typer.echo(json.dumps({"report": str(page), "effects": headline, "refutations_passed":
                           f"{report['refutations_passed']}/{len(report['refute'])}",
                           "nuisance_models": report["estimate"]["nuisance_models"], "warnings": report["warnings"]}, indent=2))


@app.command()
def explain(user: str = typer.Option(..., help="user id"), item: str = typer.Option(..., help="item id"),
            params: Path = PARAMS,
            bundle: Path = typer.Option(None, help="bundle directory (default: the champion's, from the BentoML store)"),
            out: Path = typer.Option(Path("artifacts/explain"), help="directory for explanation.html/json (replaced whole)")) -> None:
    """Explain one recommendation as a page (what /explain answers, with the causal graph)."""
    from causalrec.config import ConfigError, load_params
    from causalrec.pipeline import StageError
    from causalrec.pipeline.store import champion_bundle
    from causalrec.serving.core import NotFound, RecommenderCore
    from causalrec.serving.explain_page import write_explanation

    try:
        bundle = bundle if bundle is not None else champion_bundle(load_params(params))
        core = RecommenderCore(bundle)
        explanation = core.explain(user, item)
    except (ConfigError, StageError, NotFound, FileNotFoundError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # no repr quotes
        typer.secho(f"causalrec explain: {message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    page = write_explanation(explanation, out, core.causal_graph)
    typer.echo(json.dumps({"page": str(page), **explanation}, indent=2))


registry_app = typer.Typer(help="The model registry (registry.json): list, show, promote, roll back.")
app.add_typer(registry_app, name="registry")


def _registry(params: Path):
    from causalrec.config import ConfigError, load_params
    from causalrec.registry import Registry

    try:
        p = load_params(params)
    except ConfigError as exc:
        typer.secho(f"causalrec registry: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    return p, Registry(p.paths.registry)


def _registry_fails(exc: Exception) -> None:
    typer.secho(f"causalrec registry: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2) from None


@registry_app.command("list")
def registry_list(params: Path = PARAMS) -> None:
    """Every registered model, newest last: status, score, data version, aliases."""
    from causalrec.registry import RegistryError

    _, registry = _registry(params)
    try:
        state = registry.state()
    except RegistryError as exc:
        _registry_fails(exc)
    aliases = {tag: name for name, tag in state["aliases"].items() if tag}
    for tag, e in state["models"].items():
        ope = (e.get("ope") or {}).get("candidate", {}).get("value")
        typer.echo(f"{tag:<42} {e['status']:<12} {aliases.get(tag, ''):<10} {e['model']:<12} "
                   f"{e['primary_metric']}={e['score']:.4f} ope={'-' if ope is None else f'{ope:.4f}'} "
                   f"data={str(e.get('data_md5'))[:8]} git={str(e.get('git_sha'))[:8]} {e['registered_at']}")


@registry_app.command("show")
def registry_show(tag: str = typer.Argument("champion", help="a model tag, or an alias: champion, challenger"),
                  params: Path = PARAMS) -> None:
    """One model's record and every decision about it."""
    from causalrec.registry import RegistryError

    _, registry = _registry(params)
    try:
        state = registry.state()
        tag = state["aliases"].get(tag) or tag
        entry = registry.get(tag)
    except RegistryError as exc:
        _registry_fails(exc)
    events = [e for e in state["events"] if tag in (e["tag"], e.get("rolled_back"))]
    typer.echo(json.dumps({**entry, "events": events}, indent=2, default=str))


@registry_app.command("promote")
def registry_promote(tag: str = typer.Argument(..., help="the model tag to serve (causalrec registry list)"),
                     reason: str = typer.Option("manual promotion", help="recorded with the decision"),
                     params: Path = PARAMS) -> None:
    """Make a registered model the champion, bypassing the gate (builds its bento if it has none)."""
    from causalrec.pipeline import StageError
    from causalrec.pipeline.package import promote_model
    from causalrec.registry import RegistryError

    p, registry = _registry(params)
    try:
        event = promote_model(p, tag, reason, by="manual")
    except (RegistryError, StageError) as exc:
        _registry_fails(exc)
    typer.echo(json.dumps({**event, "bento_tag": registry.champion["bento_tag"]}, indent=2))


@registry_app.command("rollback")
def registry_rollback(reason: str = typer.Option("manual rollback", help="recorded with the decision"),
                      params: Path = PARAMS) -> None:
    """The previous champion serves again; the current one is marked rolled back."""
    from causalrec.registry import RegistryError

    _, registry = _registry(params)
    try:
        event = registry.rollback(reason, by="manual")
    except RegistryError as exc:
        _registry_fails(exc)
    typer.echo(json.dumps({**event, "bento_tag": registry.champion["bento_tag"]}, indent=2))


@app.command()
def serve(params: Path = PARAMS, host: str = "127.0.0.1", port: int = 3000) -> None:
    """Serve the registry's champion: `bentoml serve <its bento tag>` (never `:latest`). Its workers die
    with it, `kill -9` included; its temp directory is removed at the next start."""
    import os
    import sys

    p, registry = _registry(params)
    champion = registry.champion
    if champion is None or champion.get("bento_tag") is None:
        typer.secho(f"causalrec serve: no champion with a bento in {p.paths.registry}; run `make run` first",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    os.environ.setdefault("BENTOML_HOME", str(p.root / ".bentoml"))
    from causalrec.serving.launch import serve_env

    # a temp directory of its own (removed at a later start once this server is gone), and its pid, which
    # the workers check: they die with it (io.die_with_parent); exec keeps the pid
    os.environ.update(serve_env(os.getpid(), server=os.getpid()))
    os.execv(sys.executable, [sys.executable, "-m", "bentoml", "serve", champion["bento_tag"], "--host", host,
                              "--port", str(port)])


@app.command("simulate-funnel")
def simulate_funnel_cmd(out: Path = typer.Option(Path("data/funnel"), help="directory for funnel.parquet"),
                        truth: Path = typer.Option(Path("artifacts/ground_truth/funnel"), help="true effects (kept apart)"),
                        seed: int = 0) -> None:
    """The promotion funnel with known effects (causalrec.data.funnel), for trying `causalrec analyze`."""
    from causalrec.data.funnel import FunnelConfig, simulate_funnel

    typer.echo(json.dumps(simulate_funnel(FunnelConfig(seed=seed), out, truth), indent=2))
