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
