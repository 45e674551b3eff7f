"""The stage order, read from dvc.yaml: the one place that defines stages, their dependencies and
outputs. The Prefect retrain flow runs `pipeline.STAGES` in this order, so the flow and `dvc repro`
cannot disagree on it: the graph is DVC's own (templated paths resolved from params.yaml, a stage
that reads another's output runs after it), the one `dvc repro` walks."""
from __future__ import annotations

from pathlib import Path

import networkx as nx


def stage_order(dvc_yaml: str | Path) -> list[str]:
    """The stages of dvc.yaml in dependency order (ties kept in the file's order)."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    # uninitialized: the order needs only dvc.yaml and params.yaml, not a DVC cache or remote
    with Repo(str(Path(dvc_yaml).parent), uninitialized=True) as repo:
        stages = [s for s in repo.index.stages if isinstance(s, PipelineStage) and Path(s.path) == Path(dvc_yaml).resolve()]
        # DVC's edges run from a stage to the stages it depends on; reversed: producer -> consumer
        graph = repo.index.graph.subgraph(stages).reverse()
        position = {stage: i for i, stage in enumerate(stages)}
        return [s.name for s in nx.lexicographical_topological_sort(graph, key=position.get)]


def _value(params: dict, dotted: str):
    for key in dotted.split("."):
        params = params.get(key) if isinstance(params, dict) else None
    return params


def stage_inputs(params, name: str) -> tuple[str, bool]:
    """(fingerprint, outputs present) of one dvc.yaml stage: what `dvc repro` compares before it reruns
    a stage, the content hash of every path the stage depends on (DVC's own hashing) and the values of
    the params it declares, here read from the params the flow loaded, so that a different params file
    or an environment override counts. The retrain flow skips a stage whose fingerprint it has run
    before and whose outputs are there (Prefect's task cache keyed by it)."""
    import hashlib
    import json

    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    values = params.model_dump(mode="json", by_alias=True)
    parts: dict = {"project": str(params.root.resolve()), "stage": name}
    with Repo(str(params.root), uninitialized=True) as repo:
        stage = next(s for s in repo.index.stages if getattr(s, "name", None) == name)
        for dep in stage.deps:
            if isinstance(dep, ParamsDependency):
                parts.update({f"params:{key}": _value(values, key) for key in dep.params})
            else:
                parts[dep.def_path] = dep.get_hash().value if dep.exists else None
        present = all(out.exists for out in stage.outs)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest(), present
