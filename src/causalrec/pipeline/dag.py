"""The stage order, read from dvc.yaml: the one place that defines stages, their dependencies and
outputs. The Prefect retrain flow runs `pipeline.STAGES` in this order, so the flow and `dvc repro`
cannot disagree on it (a stage that reads another's output runs after it in both)."""
from __future__ import annotations

from pathlib import Path

import networkx as nx
import yaml


def _paths(entries) -> list[Path]:
    """dvc.yaml deps/outs/metrics: plain paths or {path: options}."""
    return [Path(next(iter(e)) if isinstance(e, dict) else e) for e in entries or []]


def stage_order(dvc_yaml: str | Path) -> list[str]:
    """The stages of dvc.yaml in dependency order (ties kept in the file's order)."""
    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages") or {}
    outs = {name: _paths(s.get("outs")) + _paths(s.get("metrics")) + _paths(s.get("plots")) for name, s in stages.items()}
    dag = nx.DiGraph()
    dag.add_nodes_from(stages)
    for name, spec in stages.items():
        for dep in _paths(spec.get("deps")):
            for producer, made in outs.items():
                # a dep on an output, on a file inside an output directory, or on a directory holding one
                if producer != name and any(dep == o or o in dep.parents or dep in o.parents for o in made):
                    dag.add_edge(producer, name)
    position = {name: i for i, name in enumerate(stages)}
    return list(nx.lexicographical_topological_sort(dag, key=position.get))
