"""Typed settings: params.yaml is the one place where every tunable lives.

`load_params` validates the file (unknown keys, wrong types, malformed YAML all raise
`ConfigError` naming the key), then applies environment overrides of the form
``CAUSALREC__SECTION__KEY=value`` (value parsed as YAML), so CI can change a knob without
editing the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """params.yaml (or an override) is malformed; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Paths(_Section):
    data_dir: Path = Path("data")
    artifacts_dir: Path = Path("artifacts")
    cache_dir: Path = Path(".cache/causalrec")


class Ingest(_Section):
    source: Literal["simulator", "coat", "parquet"] = "simulator"
    source_path: Path | None = None
    # parquet source: randomized test pairs (user_id, item_id, outcome; uniform exposure or an A/B holdout)
    test_path: Path | None = None
    uniform_share: float = Field(0.1, gt=0, lt=1)  # coat source: share of the randomized ratings logged as "uniform"


class Simulate(_Section):
    n_users: int = Field(2000, ge=2)
    n_items: int = Field(1000, ge=2)
    n_interactions: int = Field(100_000, ge=10)
    n_topics: int = Field(12, ge=2, le=24)
    exposure_rate: float = Field(0.3, gt=0, lt=1)
    popularity_bias: float = 1.2
    affinity_bias: float = 2.0
    drift: float = Field(0.0, ge=0, le=1)
    days: int = Field(90, ge=1)
    n_test_pairs_per_user: int = Field(20, ge=1)
    chunk_rows: int = Field(1_000_000, ge=1000)
    policy_view: Literal["exact", "noisy", "low_rank", "nonlinear"] = "exact"
    selection_on_outcome: float = Field(0.0, ge=0, le=10)
    confounding: float = Field(0.0, ge=0, le=10)
    uplift_shape: Literal["organic_share", "interaction", "negative"] = "organic_share"


class Validate(_Section):
    max_examples: int = Field(5, ge=1)
    min_rows: int = Field(1, ge=1)


class Embed(_Section):
    model_path: Path | None = None
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(128, ge=8)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quantize_int8: bool = False
    finetune: bool = False
    finetune_epochs: int = Field(2, ge=1)
    finetune_batch_size: int = Field(64, ge=2)
    finetune_lr: float = Field(3e-5, gt=0)
    finetune_max_pairs: int = Field(20_000, ge=4)


class Propensity(_Section):
    method: Literal["logged", "popularity", "logistic"] = "logged"
    clip_min: float = Field(0.01, gt=0, le=1)
    calibrate: bool = False


class Train(_Section):
    models: list[Literal["popularity", "mf_naive", "mf_ips", "mf_snips", "mf_dr", "mf_dr_jl", "mf_mrdr_jl", "mf_sdr",
                         "tt_naive", "tt_ips", "tt_snips", "tt_dr", "tt_dr_jl", "tt_mrdr_jl", "tt_sdr"]] = Field(
        default_factory=lambda: ["popularity", "mf_naive", "mf_ips"], min_length=1
    )
    dim: int = Field(32, ge=1)
    epochs: int = Field(30, ge=1)
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(4096, ge=1)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(4, ge=1)
    exposure_weight: Annotated[float, Field(ge=0, le=100)] | Literal["auto"] = 0.0
    features: list[Literal["text", "attributes"]] = Field(default_factory=lambda: ["text", "attributes"])


class Uplift(_Section):
    enabled: bool = True
    learner: Literal["t_learner", "x_learner", "dr_learner", "dlce", "shared"] = "shared"
    arm_method: Literal["naive", "ips"] = "naive"
    n_bootstrap: int = Field(1, ge=1, le=50)
    exposure_features: bool = True
    exposure_weight: Annotated[float, Field(ge=0, le=100)] | Literal["auto"] = "auto"


class Evaluate(_Section):
    k: int = Field(10, ge=1)
    primary_metric: Literal["auc", "ndcg@10", "recall@10", "cp@10"] = "ndcg@10"


class Package(_Section):
    enabled: bool = True
    build_bento: bool = True


class Serve(_Section):
    policy: Literal["greedy", "epsilon_greedy", "softmax"] = "epsilon_greedy"
    epsilon: float = Field(0.1, ge=0, le=1)
    temperature: float = Field(0.05, gt=0)
    rank_by: Literal["uplift", "relevance"] = "uplift"
    k_max: int = Field(100, ge=1, le=10_000)
    int8_encoder: bool = False
    feedback_log: Path = Path("feedback/feedback.jsonl")


class Monitor(_Section):
    window_fraction: float = Field(0.3, gt=0, le=0.5)
    drift_share: float = Field(0.5, gt=0, le=1)


class Params(_Section):
    seed: int = 7
    paths: Paths = Field(default_factory=Paths)
    ingest: Ingest = Field(default_factory=Ingest)
    simulate: Simulate = Field(default_factory=Simulate)
    validate_: Validate = Field(default_factory=Validate, alias="validate")
    embed: Embed = Field(default_factory=Embed)
    propensity: Propensity = Field(default_factory=Propensity)
    train: Train = Field(default_factory=Train)
    uplift: Uplift = Field(default_factory=Uplift)
    evaluate: Evaluate = Field(default_factory=Evaluate)
    package: Package = Field(default_factory=Package)
    serve: Serve = Field(default_factory=Serve)
    monitor: Monitor = Field(default_factory=Monitor)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def resolve(self, root: Path) -> "Params":
        """Return a copy whose relative paths are anchored at `root` (the project directory)."""
        paths = Paths(**{k: (v if Path(v).is_absolute() else root / v) for k, v in self.paths.model_dump().items()})
        return self.model_copy(update={"paths": paths})


ENV_PREFIX = "CAUSALREC__"


def _apply_env_overrides(raw: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = name[len(ENV_PREFIX):].lower().split("__")
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment override {name}: '{key}' is not a section")
        try:
            node[keys[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment override {name}: value is not valid YAML ({exc})") from exc
    return raw


def load_params(path: str | Path = "params.yaml", environ: dict[str, str] | None = None) -> Params:
    """Load, override from the environment, validate, and anchor paths at the file's directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    raw = _apply_env_overrides(raw, dict(os.environ if environ is None else environ))
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
    return params.resolve(path.resolve().parent)
