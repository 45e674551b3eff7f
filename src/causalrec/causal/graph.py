"""The causal graph as data: a YAML spec of nodes (columns, with roles) and edges (assumptions).

    name: promotion funnel
    nodes:
      popularity: {role: confounder}
      promoted: {role: treatment}
      clicked: {role: mediator}
      purchased: {role: outcome}
      segment: {role: effect_modifier}
      taste: {role: confounder, observed: false}    # a latent node: in the graph, not in the data
      segment: {role: effect_modifier, at_serving: known_user}  # how /explain finds a user's level
    edges: [[popularity, promoted], [promoted, clicked], ...]

`CausalGraph` checks the spec (known roles, one treatment and one outcome, edges between declared
nodes, acyclic), identifies the effect (backdoor, else frontdoor, else a clear NotIdentifiable),
lists the conditional independences the graph implies (local Markov property) and tests them on
the data, and draws itself.

`at_serving` (effect modifiers only) says how the Recommender service reads a user's level of the
modifier, so /explain can quote the effect split for that user's segment: `known_user` = 1 for a
user the model was trained on (a returning user), 0 for a cold-start (new) user.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import yaml

ROLES = {"treatment", "outcome", "mediator", "confounder", "covariate", "effect_modifier", "instrument"}
AT_SERVING = {"known_user"}  # how serving reads an effect modifier's level (see the module doc)


class GraphError(ValueError):
    """A graph spec that is malformed or does not fit the data."""


class NotIdentifiable(GraphError):
    """The graph does not identify the effect from the observed columns."""


@dataclass(frozen=True)
class Identification:
    strategy: str                 # "backdoor" or "frontdoor"
    adjustment: tuple[str, ...]   # backdoor set, or the frontdoor mediators


class CausalGraph:
    def __init__(self, nodes: dict[str, dict], edges: list[tuple[str, str]], name: str = "graph"):
        self.name, self.nodes = name, nodes
        bad = {n: spec.get("role") for n, spec in nodes.items() if spec.get("role") not in ROLES}
        if bad:
            raise GraphError(f"{name}: unknown role(s) {bad}; roles are {sorted(ROLES)}")
        for role in ("treatment", "outcome"):
            found = self.with_role(role)
            if len(found) != 1:
                raise GraphError(f"{name}: exactly one node must have role {role!r}, found {found}")
        bad = {n: spec["at_serving"] for n, spec in nodes.items()
               if "at_serving" in spec and (spec["at_serving"] not in AT_SERVING or spec["role"] != "effect_modifier")}
        if bad:
            raise GraphError(f"{name}: at_serving {bad}: only effect modifiers take it, with a value in {sorted(AT_SERVING)}")
        unknown = sorted({n for e in edges for n in e} - set(nodes))
        if unknown:
            raise GraphError(f"{name}: edges name undeclared node(s) {unknown}")
        self.dag = nx.DiGraph()
        self.dag.add_nodes_from(nodes)
        self.dag.add_edges_from(edges)
        if not nx.is_directed_acyclic_graph(self.dag):
            raise GraphError(f"{name}: the graph has a cycle: {nx.find_cycle(self.dag)}")
        self.treatment, self.outcome = self.with_role("treatment")[0], self.with_role("outcome")[0]

    @classmethod
    def load(cls, path: str | Path) -> CausalGraph:
        path = Path(path)
        if not path.exists():
            raise GraphError(f"graph spec {path} not found")
        spec = yaml.safe_load(path.read_text()) or {}
        if not isinstance(spec.get("nodes"), dict) or not isinstance(spec.get("edges"), list):
            raise GraphError(f"{path}: needs a mapping `nodes` and a list `edges`")
        edges = [tuple(e) for e in spec["edges"]]
        if any(len(e) != 2 for e in edges):
            raise GraphError(f"{path}: every edge is a pair [cause, effect]")
        return cls({n: dict(v or {}) for n, v in spec["nodes"].items()}, edges, spec.get("name", path.stem))

    def with_role(self, role: str) -> list[str]:
        return [n for n, spec in self.nodes.items() if spec.get("role") == role]

    @property
    def observed(self) -> set[str]:
        return {n for n, spec in self.nodes.items() if spec.get("observed", True)}

    def without_edge(self, cause: str, effect: str) -> CausalGraph:
        """The same graph with one assumption dropped (e.g. a wrong graph for a refutation)."""
        return CausalGraph(self.nodes, [e for e in self.dag.edges if e != (cause, effect)], f"{self.name} - {cause}->{effect}")

    # ------------------------------------------------------------------ identification
    def identify(self, treatment: str | None = None, outcome: str | None = None) -> Identification:
        t, y = treatment or self.treatment, outcome or self.outcome
        backdoor = self.dag.copy()
        backdoor.remove_edges_from(list(self.dag.out_edges(t)))
        allowed = self.observed - nx.descendants(self.dag, t) - {t, y}
        z = nx.find_minimal_d_separator(backdoor, {t}, {y}, restricted=allowed)
        if z is not None:
            # parents first: the smallest set is not always the most precise, the parents of T are valid
            # whenever observed; prefer them plus the outcome's other observed causes (precision).
            parents = set(self.dag.predecessors(t))
            if parents <= allowed:
                extra = {p for p in self.dag.predecessors(y) if p in allowed and not nx.has_path(self.dag, t, p)}
                z = parents | extra if nx.is_d_separator(backdoor, {t}, {y}, parents | extra) else parents
            return Identification("backdoor", tuple(sorted(z)))
        mediators = [m for m in self.dag.successors(t) if m in self.observed and m != y]
        if mediators and self._is_frontdoor(t, y, set(mediators)):
            return Identification("frontdoor", tuple(sorted(mediators)))
        raise NotIdentifiable(f"{self.name}: no observed backdoor set or frontdoor mediators identify the effect of "
                              f"{t} on {y}; observe a confounder or add an instrument")

    def _is_frontdoor(self, t: str, y: str, m: set[str]) -> bool:
        cut = self.dag.copy()
        cut.remove_nodes_from(m)
        if nx.has_path(cut, t, y):
            return False  # a directed path avoids the mediators
        no_out_t = self.dag.copy()
        no_out_t.remove_edges_from(list(self.dag.out_edges(t)))
        if not nx.is_d_separator(no_out_t, {t}, m, set()):
            return False
        no_out_m = self.dag.copy()
        no_out_m.remove_edges_from([e for x in m for e in self.dag.out_edges(x)])
        return nx.is_d_separator(no_out_m, m, {y}, {t})

    # -------------------------------------------------------------- testable implications
    def implied_independences(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(x, y, given): x is independent of each non-descendant non-parent y given its parents,
        for observed nodes whose parents are all observed (local Markov property)."""
        out = []
        for x in sorted(self.observed):
            parents = set(self.dag.predecessors(x))
            if not parents <= self.observed:
                continue
            others = self.observed - nx.descendants(self.dag, x) - parents - {x}
            out += [(x, y, tuple(sorted(parents))) for y in sorted(others) if (y, x, tuple(sorted(parents))) not in out]
        return out

    def check(self, data: pd.DataFrame, alpha: float = 0.01) -> list[dict]:
        """Test each implied independence with a partial correlation (Fisher z) at level alpha,
        Bonferroni-corrected over the tests. A failed test means the data contradict the graph."""
        from scipy import stats

        missing = sorted(self.observed - set(data.columns))
        if missing:
            raise GraphError(f"{self.name}: observed node(s) {missing} are not columns of the data")
        tests = self.implied_independences()
        rows = []
        for x, y, given in tests:
            r = _partial_corr(data, x, y, list(given))
            n = len(data) - len(given) - 3
            z = np.arctanh(np.clip(r, -0.999999, 0.999999)) * np.sqrt(max(n, 1))
            p = float(2 * stats.norm.sf(abs(z)))
            rows.append({"independence": f"{x} _||_ {y}" + (f" | {', '.join(given)}" if given else ""),
                         "partial_corr": round(float(r), 4), "p_value": p, "holds": p >= alpha / max(len(tests), 1)})
        return rows

    # -------------------------------------------------------------------------- drawing
    def draw(self, path: str | Path) -> Path:
        """PNG or SVG (by suffix), nodes coloured by role, latent nodes dashed."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        colours = {"treatment": "#e4572e", "outcome": "#7986cb", "mediator": "#f3a712", "confounder": "#a8c686",
                   "effect_modifier": "#669bbc", "covariate": "#cccccc", "instrument": "#b07bac"}
        pos = nx.multipartite_layout(self.dag, subset_key={
            i: sorted(layer) for i, layer in enumerate(nx.topological_generations(self.dag))})
        fig, ax = plt.subplots(figsize=(8, 5))
        for latent in (False, True):
            names = [n for n in self.dag if (n not in self.observed) == latent]
            nx.draw_networkx_nodes(self.dag, pos, nodelist=names, node_size=2600, ax=ax, linewidths=1.5,
                                   node_color=[colours[self.nodes[n]["role"]] for n in names],
                                   edgecolors="black", alpha=0.5 if latent else 1.0)
        nx.draw_networkx_labels(self.dag, pos, font_size=9, ax=ax)
        nx.draw_networkx_edges(self.dag, pos, ax=ax, arrowsize=18, node_size=2600)
        ax.set_title(f"{self.name} (colour = role; faded = not observed)")
        ax.axis("off")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight", dpi=110)
        plt.close(fig)
        return path


def _partial_corr(data: pd.DataFrame, x: str, y: str, given: list[str]) -> float:
    """Correlation of the residuals of x and y after a linear regression on `given` (with intercept)."""
    def resid(col):
        v = data[col].to_numpy(float)
        if not given:
            return v - v.mean()
        design = np.column_stack([np.ones(len(data)), data[given].to_numpy(float)])
        beta, *_ = np.linalg.lstsq(design, v, rcond=None)
        return v - design @ beta

    rx, ry = resid(x), resid(y)
    denom = np.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry / denom) if denom > 0 else 0.0
