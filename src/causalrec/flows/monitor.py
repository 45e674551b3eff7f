"""Prefect monitor flow: Evidently drift report on the log; retrain when drift crosses the threshold."""
from __future__ import annotations

from prefect import flow, get_run_logger, task

from causalrec import pipeline
from causalrec.config import load_params
from causalrec.flows.retrain import retrain_flow

monitor_task = task(pipeline.monitor, name="monitor")


@flow(name="causalrec-monitor", log_prints=True)
def monitor_flow(params_path: str = "params.yaml", retrain_on_drift: bool = True) -> dict:
    logger = get_run_logger()
    params = load_params(params_path)
    report = monitor_task(params)
    logger.info("drift detected: %s (%d column(s), share %.2f)", report["drift_detected"],
                report["drifted_columns"], report["drifted_share"])
    result = {"monitor": report, "retrained": False}
    if report["drift_detected"] and retrain_on_drift:
        logger.info("drift crossed the threshold: running the retrain flow")
        retrain = retrain_flow(params_path=params_path)
        result.update(retrained=True, retrain_chosen=retrain["metrics"]["chosen"])
    return result


if __name__ == "__main__":
    monitor_flow()
