"""Stages ingest (raw tables into data/, ground truth apart) and validate (Great Expectations)."""
from __future__ import annotations

import shutil

from causalrec.config import Params
from causalrec.io import atomic_write_json
from causalrec.pipeline.paths import StageError, stage_paths

def ingest(params: Params) -> dict:
    """Write the raw tables to data/ (simulator, Coat or a parquet directory), then append the served
    feedback partitions (paths.feedback_dir; the last ingest.window logs, the base log counting as the
    oldest); ground truth goes apart."""
    d = stage_paths(params)
    src = params.ingest
    if src.source == "simulator":
        from causalrec.data.simulate import simulate

        summary = simulate(params.simulation_config(), d["data"], d["truth"])
    elif src.source == "coat":
        from causalrec.data.sources import ingest_ratings

        if src.source_path is None:
            raise StageError("ingest.source is 'coat' but ingest.source_path is not set")
        summary = ingest_ratings(src.source_path, d["data"], d["truth"], seed=params.seed, uniform_share=src.uniform_share)
    else:
        from causalrec.data.sources import ingest_parquet, ingest_test_pairs

        if src.source_path is None:
            raise StageError("ingest.source is 'parquet' but ingest.source_path is not set")
        shutil.rmtree(d["truth"], ignore_errors=True)
        summary = ingest_parquet(src.source_path, d["data"])
        if src.test_path is not None:
            summary["test_pairs"] = ingest_test_pairs(src.test_path, d["truth"])
    # Served feedback is data: every partition is appended to the base tables (never the reverse).
    from causalrec.data.feedback import drift_mark, merge_into

    # the gate's evaluation set (the uniform slates of the latest traffic) is never trained on
    holdout = params.promote.partitions if params.promote.traffic == "uniform" else 0
    mark = drift_mark(params.paths.feedback_dir) if src.after_drift else None
    from causalrec.data.quarantine import Quarantine

    summary = {"source": src.source, **summary,
               # served events export set aside (the rule each broke: `causalrec quarantine list`)
               "quarantine": Quarantine(params.paths.feedback_dir).counts(),
               "feedback": merge_into(d["data"], params.paths.feedback_dir, window=src.window, holdout=holdout,
                                      holdout_slates=params.promote.max_slates,
                                      holdout_share=params.promote.max_share, since=mark and mark["since_partition"],
                                      retention_days=params.privacy.retention_days)}
    summary["erased"] = drop_erased(params)
    d["truth"].mkdir(parents=True, exist_ok=True)
    atomic_write_json(d["truth"] / "ingest.json", summary)
    return summary


def drop_erased(params: Params) -> dict:
    """Rows of people erased by `causalrec forget` (keyed tombstones in paths.feedback_dir) leave the
    ingested tables, whatever the source still holds (the simulator's seed regenerates them)."""
    from pathlib import Path

    from causalrec.data.schema import INTERACTIONS, USERS
    from causalrec.serving.erasure import Tombstones, drop_rows
    from causalrec.serving.privacy import existing_pseudonym_key

    stones = Tombstones(params.paths.feedback_dir)
    if not stones.load():
        return {}
    key = existing_pseudonym_key(Path(params.serve.feedback_log).parent)
    return {spec.name: drop_rows(params.paths.data_dir / spec.file, lambda ids: stones.erased(ids, key))
            for spec in (INTERACTIONS, USERS)}


# ------------------------------------------------------------------------------------- validate
def validate(params: Params) -> dict:
    """Run the Great Expectations suites; raises ValidationFailed (nothing downstream runs)."""
    from causalrec.validation import validate_data

    return validate_data(params.paths.data_dir, stage_paths(params)["validation"],
                         max_examples=params.validate_.max_examples, min_rows=params.validate_.min_rows,
                         duplicate_rows=params.validate_.duplicate_rows)
