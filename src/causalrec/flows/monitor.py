"""Prefect monitor flow: the drift report (live traffic against the training log) and the champion's
live outcome rate; drift emits the Prefect event DRIFT_EVENT, on which the retrain deployment's
trigger (prefect.yaml) starts a retrain. The flow never calls the retrain itself."""
from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.events import emit_event

from causalrec import pipeline
from causalrec.config import load_params

DRIFT_EVENT = "causalrec.drift.detected"
monitor_task = task(pipeline.monitor, name="monitor")


def project_resource(params) -> dict:
    """The Prefect resource a project's events are about (what a trigger matches)."""
    return {"prefect.resource.id": f"causalrec.project.{params.root.name}", "prefect.resource.name": str(params.root)}


@flow(name="causalrec-monitor", log_prints=True)
def monitor_flow(params_path: str = "params.yaml") -> dict:
    logger = get_run_logger()
    params = load_params(params_path)
    report = monitor_task(params)
    logger.info("drift detected: %s (%s; %d column(s), share %.2f)", report["drift_detected"], report["compared"],
                report["drifted_columns"], report["drifted_share"])
    result = {"monitor": report, "event": None}
    if report["drift_detected"]:
        event = emit_drift(params, report)
        result["event"] = None if event is None else {"event": event.event, "id": str(event.id)}
        logger.info("emitted %s: the retrain deployment's trigger starts a retrain", DRIFT_EVENT)
    return result


def emit_drift(params, report: dict):
    """DRIFT_EVENT about the project, with the monitor report's decision as payload (the Event, or None
    where Prefect has no API to send it to)."""
    return emit_event(event=DRIFT_EVENT, resource=project_resource(params),
                      payload={k: report[k] for k in ("compared", "failed_tests", "drifted_share", "key_columns_drifted")})


if __name__ == "__main__":
    monitor_flow()
