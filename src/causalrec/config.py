"""Typed settings: params.yaml holds every value, this module the types and bounds only.

No field here has a default: the shipped params.yaml is the one source of values, so a key missing
from a params file is an error naming it (an empty file is rejected), never a silent fallback.
Sections that configure a library type take their fields from it (`simulate` is
causalrec.data.simulate.SimulationConfig, validated by that class's own rules).

`load_params` validates the file (unknown or missing keys, wrong types, out-of-range or
non-finite numbers, malformed YAML all raise `ConfigError` naming the key), then applies
environment overrides of the form ``CAUSALREC__SECTION__KEY=value`` (value parsed as YAML), so CI
can change a knob without editing the file.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, PrivateAttr, model_validator

from causalrec.data.simulate import SimulationConfig
from causalrec.monitoring.drift import MONITORED_COLUMNS


class ConfigError(ValueError):
    """params.yaml (or an override) is malformed; the message names the key."""


class _Section(BaseModel):
    # Each section below lists its own keys with their types and bounds; some look alike in shape
    # (e.g. Uplift and Serve), but they are different keys: nothing to factor out.
    # Numbers must be finite: `.inf` or `.nan` in params.yaml is a mistake, not a setting.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Paths(_Section):
    data_dir: Path
    artifacts_dir: Path
    cache_dir: Path
    feedback_dir: Path           # served feedback as append-only partitions (DVC-tracked: feedback_data.dvc)
    registry: Path               # the model registry file (committed beside dvc.lock)
    model_store: Path            # the registry's models exported from BentoML's store (DVC-tracked)
    allow_outside_project: bool  # the paths above may resolve outside the project (written to!)
    # directories outside the project that inputs (ingest.source_path / test_path, analyze.graph / data)
    # may be read from; anything else must lie in the project (or allow_outside_project: true)
    input_dirs: list[Path]


class Ingest(_Section):
    source: Literal["simulator", "coat", "parquet"]
    source_path: Path | None
    # parquet source: randomized test pairs (user_id, item_id, outcome; uniform exposure or an A/B holdout)
    test_path: Path | None
    uniform_share: float = Field(gt=0, lt=1)  # coat source: share of the randomized ratings logged as "uniform"
    # train on the last `window` logs (the base log counts as the oldest); None: the base log and every partition
    window: int | None = Field(ge=1)
    # after the monitor's drift mark (feedback_dir/drift.json): only the partitions served since it
    after_drift: bool


def _library_section(name: str, key: str, cls: type, exclude: tuple[str, ...] = ()) -> type[_Section]:
    """A section whose keys are a library dataclass's fields, checked by that class's own validation."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: (hints[f.name], ...) for f in dataclasses.fields(cls) if f.name not in exclude}

    def check(self):
        try:
            cls(**self.model_dump())
        except ValueError as exc:  # the library names the field first: "<field> must be ..."
            raise ValueError(f"{key}.{exc}") from None
        return self

    return create_model(name, __base__=_Section, __validators__={"check": model_validator(mode="after")(check)},
                        **fields)


Simulate = _library_section("Simulate", "simulate", SimulationConfig, exclude=("seed",))  # the seed is params' own


class Validate(_Section):
    max_examples: int = Field(ge=1, le=1000)
    min_rows: int = Field(ge=1)
    duplicate_rows: Literal["reject", "allow"]


class Embed(_Section):
    model_path: Path | None  # None: the packaged all-MiniLM-L6-v2
    batch_size: int = Field(ge=1, le=100_000)
    max_length: int = Field(ge=8, le=8192)
    device: Literal["auto", "cpu", "cuda"]
    quantize_int8: bool
    finetune: bool
    finetune_epochs: int = Field(ge=1, le=1000)
    finetune_batch_size: int = Field(ge=2, le=100_000)
    finetune_lr: float = Field(gt=0, le=1)
    finetune_max_pairs: int = Field(ge=4)


class Propensity(_Section):
    method: Literal["logged", "popularity", "logistic"]
    clip_min: float = Field(gt=0, le=1)
    calibrate: bool


ExposureWeight = Annotated[float, Field(ge=0, le=100)] | Literal["auto"]


class TrainPrivacy(_Section):
    """train.privacy: user-level differential privacy of every model the train stage ships
    (causalrec.causal.privacy: DP-SGD with per-user clipping, Opacus's RDP accountant)."""
    enabled: bool
    epsilon: float = Field(gt=0, le=1000)  # the whole shipped bundle (relevance + uplift) spends at most this
    delta: float = Field(gt=0, lt=1)       # must lie below 1 / (users in the log): checked when training
    unit: Literal["user"]                  # a person's every row (the guarantee a person cares about)
    epochs: int = Field(ge=1, le=10_000)   # passes of a private fit (no early stopping: it would read private rows)
    max_grad_norm: float = Field(gt=0)
    users_per_step: int = Field(ge=1)
    rows_per_user: int = Field(ge=1)
    local_passes: int = Field(ge=0, le=100)
    user_l2: float = Field(ge=0)

    def fit_settings(self) -> dict | None:
        """The learners' `privacy` argument (UserLevelDP's fields), None when off."""
        if not self.enabled:
            return None
        return self.model_dump(exclude={"enabled", "unit", "epochs"})


class Train(_Section):
    models: list[Literal["popularity", "mf_naive", "mf_ips", "mf_snips", "mf_dr", "mf_dr_jl", "mf_mrdr_jl", "mf_sdr",
                         "tt_naive", "tt_ips", "tt_snips", "tt_dr", "tt_dr_jl", "tt_mrdr_jl", "tt_sdr",
                         "ti_naive", "ti_ips", "ti_snips", "ti_dr", "ti_dr_jl", "ti_mrdr_jl", "ti_sdr"]] = Field(min_length=1)
    dim: int = Field(ge=1, le=4096)
    epochs: int = Field(ge=1, le=10_000)
    lr: float = Field(gt=0, le=10)
    # auto: the relevance models choose it by validation loss (causal.debias.AUTO_WEIGHT_DECAYS)
    weight_decay: Annotated[float, Field(ge=0, le=10)] | Literal["auto"]
    batch_size: int = Field(ge=1, le=10_000_000)
    val_fraction: float = Field(gt=0, lt=1)
    patience: int = Field(ge=1)
    exposure_weight: ExposureWeight
    features: list[Literal["text", "attributes"]]
    # true: the chosen model is fitted again on its fit + validation rows for the epochs early stopping kept
    refit: bool
    privacy: TrainPrivacy

    @model_validator(mode="after")
    def _private(self) -> "Train":
        if not self.privacy.enabled:
            return self
        from causalrec.causal.debias import PRIVATE_METHODS

        bad = [m for m in self.models if m == "popularity" or m.split("_", 1)[1] not in PRIVATE_METHODS]
        if len(self.models) != 1 or bad:
            raise ValueError(f"train.privacy: train one model of methods {PRIVATE_METHODS} (got {self.models}): choosing "
                             "among several on validation rows reads private rows no accountant counts, and popularity "
                             "counts are not private")
        for key in ("exposure_weight", "weight_decay"):
            if getattr(self, key) == "auto":
                raise ValueError(f"train.privacy: train.{key} is auto, a search on private validation rows; give it a number")
        if self.refit:
            raise ValueError("train.privacy: train.refit reads the epochs early stopping chose on private rows; set it false")
        return self

    @model_validator(mode="after")
    def _one_search(self) -> "Train":
        if self.weight_decay == "auto" and self.exposure_weight == "auto":
            raise ValueError("train.weight_decay and train.exposure_weight are both auto: the search varies one "
                             "setting at a time; give one of them a number")
        return self


class Uplift(_Section):
    enabled: bool
    learner: Literal["auto", "t_learner", "x_learner", "dr_learner", "dlce", "shared", "shared_shift"]
    arm_method: Literal["naive", "ips"]
    n_bootstrap: int = Field(ge=1, le=50)
    exposure_features: bool
    exposure_weight: ExposureWeight
    # true: the train stage fits it in a process of its own beside the relevance models, the cores split
    own_process: bool


class Evaluate(_Section):
    k: int = Field(ge=1, le=1000)
    primary_metric: str

    @model_validator(mode="after")
    def _metric_matches_k(self):
        allowed = ("auc", f"ndcg@{self.k}", f"recall@{self.k}", f"cp@{self.k}")
        if self.primary_metric not in allowed:
            raise ValueError(f"primary_metric must be one of {allowed} (k = {self.k}), got {self.primary_metric!r}")
        return self


class Package(_Section):
    enabled: bool
    build_bento: bool


class Online(_Section):
    # serving.online: each user's vector re-estimated from their recent served events between retrains
    enabled: bool
    max_events: int = Field(ge=1, le=10_000)       # per user, the most recent kept (in memory, per worker)
    max_users: int = Field(ge=1, le=100_000_000)   # users kept; the least recently active dropped first
    l2: float = Field(gt=0, le=1e6)                 # pull towards the trained vector, in units of one event
    weight_clip: float = Field(ge=1, le=1e6)        # inverse-propensity weights capped at this times the smallest
    scan_bytes: int = Field(ge=0, le=2**40)         # at start-up, the state is read from this much of the log's end


class Bandit(_Section):
    # serving.mixture: the champion and the waiting challenger share live traffic (policy.traffic)
    enabled: bool
    floor: float = Field(gt=0, le=1)       # share spread evenly over the policies whatever their rewards
    batch: int = Field(ge=1, le=10**9)     # logged events between updates of the shares


class Serve(_Section):
    policy: Literal["greedy", "epsilon_greedy", "softmax", "thompson"]
    epsilon: float = Field(ge=0, le=1)
    temperature: float = Field(gt=0, le=1000)
    rank_by: Literal["uplift", "relevance"]
    # epsilon_greedy: the model of the retrain right after a drift alarm (trained on the drifted round
    # alone, ingest.after_drift) serves with max(epsilon, this) until the next retrain: its data is
    # thin, so it explores more while the loop relearns the moved interests (<= epsilon: off)
    epsilon_after_drift: float = Field(ge=0, le=1)
    diversity: float = Field(ge=0, lt=1)  # MMR on item text embeddings (greedy / epsilon_greedy); 0: off
    k_max: int = Field(ge=1, le=10_000)
    int8_encoder: bool
    feedback_log: Path
    feedback_max_bytes: int = Field(ge=4096, le=2**40)  # rotate the feedback log past this size
    catalogue: Path  # items added at serving time (SQLite, shared by every worker)
    online: Online
    bandit: Bandit

    @model_validator(mode="after")
    def _exact_propensities(self) -> "Serve":
        if self.diversity and self.policy == "softmax":
            raise ValueError("serve.diversity (MMR) needs policy greedy or epsilon_greedy: with softmax the logged "
                             "propensities would not be exact")
        return self


class Feedback(_Section):
    # export-feedback sets aside events that break a rule (data.quarantine) and exports the rest; above
    # this share of a batch something is wrong upstream: the export stops and says so, writing nothing
    max_quarantine_share: float = Field(ge=0, le=1)


class Privacy(_Section):
    # served events older than this many days are dropped at export and at ingest (None: kept)
    retention_days: float | None = Field(gt=0)


class Monitor(_Section):
    window_fraction: float = Field(gt=0, le=0.5)
    drift_share: float = Field(gt=0, le=1)
    key_columns: list[Literal[MONITORED_COLUMNS]]  # the columns the drift report compares


class Promote(_Section):
    # The gate: a candidate replaces the champion only when its off-policy value on the latest served
    # traffic beats the champion's on the same rows, by the lower bound of the paired interval.
    estimator: Literal["snipw", "ipw"]   # declared before any traffic is read (evaluation/ope.py names)
    traffic: Literal["uniform", "all"]   # uniform: the slates drawn at random (exploration); all: every served slate
    margin: float = Field(ge=0)          # the difference's lower bound must exceed this
    alpha: float = Field(gt=0, lt=0.5)   # the interval is 1 - alpha (percentile bootstrap over slates)
    n_bootstrap: int = Field(ge=100, le=100_000)
    partitions: int = Field(ge=1)        # the latest n feedback partitions are "the latest served traffic"
    min_slates: int = Field(ge=1)        # fewer served slates there: no off-policy decision is possible
    # at most this many of them are the gate's evaluation set (the same ones each time: by request id);
    # ingest trains on the rest (more than an ordinary round's share after an exploration boost)
    max_slates: int = Field(ge=1)
    # and at most this share of them: the rest train and validate the candidate. After a drift mark the
    # latest partition's uniform slates are the only unbiased rows since the interests moved; with all of
    # them held out the candidate is early-stopped and chosen on the old champion's own slates.
    max_share: float = Field(gt=0, le=1)
    # After a promotion: roll back when the new champion's live outcome rate is below the previous
    # champion's by a one-sided Welch test at this level, once it has this many served events.
    rollback_alpha: float = Field(gt=0, lt=0.5)
    rollback_min_events: int = Field(ge=1)

    @model_validator(mode="after")
    def _enough_slates(self) -> "Promote":
        if self.max_slates < self.min_slates:
            raise ValueError(f"promote.max_slates ({self.max_slates}) must be at least promote.min_slates ({self.min_slates})")
        return self


class Analyze(_Section):
    enabled: bool
    graph: Path                    # graph spec (YAML), relative to the project
    data: Path | None              # parquet/CSV with the graph's columns; None: the simulated promotion funnel
    treatment: str                 # must be the graph's treatment node
    outcome: str                   # must be the graph's outcome node
    cluster: str | None            # unit shared by rows (cluster-robust intervals); None: rows independent
    placebo_simulations: int = Field(ge=19, le=10_000)  # permuted treatments the placebo refuter compares with
    # the headline's nuisance models, cross-fitted: auto (per model, logistic or boosted trees by held-out
    # log loss) | logistic | boosting (causal.effects.NUISANCES)
    nuisance: Literal["auto", "logistic", "boosting"]


class Params(_Section):
    seed: int = Field(ge=0, le=2**32 - 1)
    paths: Paths
    ingest: Ingest
    simulate: Simulate
    validate_: Validate = Field(alias="validate")
    embed: Embed
    propensity: Propensity
    train: Train
    uplift: Uplift
    evaluate: Evaluate
    package: Package
    promote: Promote
    serve: Serve
    feedback: Feedback
    privacy: Privacy
    monitor: Monitor
    analyze: Analyze

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)
    _root: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _private_uplift(self) -> "Params":
        if self.train.privacy.enabled and self.uplift.enabled:
            from causalrec.causal.uplift import PRIVATE_LEARNERS

            if self.uplift.learner not in PRIVATE_LEARNERS:
                raise ValueError(f"train.privacy: uplift.learner {self.uplift.learner!r} has no private fit; choose from "
                                 f"{PRIVATE_LEARNERS}, or set uplift.enabled: false")
            if self.uplift.exposure_features:
                raise ValueError("train.privacy: uplift.exposure_features are statistics over every user's rows (each "
                                 "item's mean propensity, standardised over users): one person's rows would move every "
                                 "user's features; set it false")
        if self.train.privacy.enabled and self.propensity.method != "logged":
            raise ValueError(f"train.privacy: propensity.method {self.propensity.method!r} is fitted on every user's rows, "
                             "and IPS/DR weights would carry one person into everyone's gradient; use the logged "
                             "propensities (method: logged)")
        return self

    @model_validator(mode="after")
    def _thompson_members(self) -> "Params":
        if self.serve.policy == "thompson" and not (self.uplift.enabled and self.serve.rank_by == "uplift"
                                                    and self.uplift.n_bootstrap >= 2):
            raise ValueError("serve.policy thompson draws one of the uplift learner's bootstrap members per request: it "
                             "needs uplift.enabled, serve.rank_by: uplift and uplift.n_bootstrap >= 2")
        return self

    @model_validator(mode="after")
    def _uplift_weight_decay(self) -> "Params":
        if self.train.weight_decay == "auto" and self.uplift.enabled:
            raise ValueError("train.weight_decay: auto is searched for the relevance models only; the uplift "
                             "learner trains with train.weight_decay too: give it a number, or set uplift.enabled: false")
        return self

    def resolve(self, root: Path) -> "Params":
        """Return a copy whose relative paths are anchored at `root` (the project directory: where dvc
        and bentoml run, whatever the data directory is)."""
        dirs = {k: (v if Path(v).is_absolute() else root / v) for k, v in self.paths.model_dump().items()
                if k not in ("allow_outside_project", "input_dirs")}
        if not self.paths.allow_outside_project:  # stages write there: stay inside the project
            for key, path in dirs.items():
                if not Path(path).resolve().is_relative_to(Path(root).resolve()):
                    raise ConfigError(f"paths.{key} = {self.paths.model_dump()[key]} resolves to {Path(path).resolve()}, "
                                      f"outside the project {Path(root).resolve()}; set paths.allow_outside_project: "
                                      "true to write there")
        input_dirs = [d if Path(d).is_absolute() else root / d for d in self.paths.input_dirs]
        paths = Paths(**dirs, allow_outside_project=self.paths.allow_outside_project, input_dirs=input_dirs)
        # The service's durable state (feedback log, catalogue store) is anchored at the project too, so
        # every bento version and worker shares one log whatever directory `bentoml serve` runs in.
        stores = {k: (v if Path(v).is_absolute() else root / v) for k, v in
                  (("feedback_log", self.serve.feedback_log), ("catalogue", self.serve.catalogue))}
        if not self.paths.allow_outside_project:
            for key, path in stores.items():
                if not Path(path).resolve().is_relative_to(Path(root).resolve()):
                    raise ConfigError(f"serve.{key} = {getattr(self.serve, key)} resolves to {Path(path).resolve()}, "
                                      f"outside the project {Path(root).resolve()}; set paths.allow_outside_project: "
                                      "true, or CAUSALREC_FEEDBACK_LOG / CAUSALREC_CATALOGUE at serving time")
        inputs = {k: (v if v is None or Path(v).is_absolute() else root / v) for k, v in
                  (("graph", self.analyze.graph), ("data", self.analyze.data))}
        sources = {k: (v if v is None or Path(v).is_absolute() else root / v) for k, v in
                   (("source_path", self.ingest.source_path), ("test_path", self.ingest.test_path))}
        if not self.paths.allow_outside_project:  # inputs are read: from the project or a declared directory
            allowed = [Path(root).resolve(), *(Path(d).resolve() for d in input_dirs)]
            for key, path in [*(("analyze." + k, v) for k, v in inputs.items()),
                              *(("ingest." + k, v) for k, v in sources.items())]:
                if path is not None and not any(Path(path).resolve().is_relative_to(a) for a in allowed):
                    raise ConfigError(f"{key} resolves to {Path(path).resolve()}, outside the project "
                                      f"{Path(root).resolve()}; add its directory to paths.input_dirs to read from there")
        resolved = self.model_copy(update={"paths": paths, "serve": self.serve.model_copy(update=stores),
                                           "analyze": self.analyze.model_copy(update=inputs),
                                           "ingest": self.ingest.model_copy(update=sources)})
        resolved._root = root
        return resolved

    @property
    def root(self) -> Path:
        """The project directory (the params file's); set by load_params / resolve."""
        if self._root is None:
            raise ConfigError("params were not resolved against a project directory (use load_params)")
        return self._root

    def simulation_config(self):
        """The simulator's own config for this project (the `simulate` section plus the seed)."""
        return SimulationConfig(**self.simulate.model_dump(), seed=self.seed)


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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
    if not raw:
        raise ConfigError(f"{path}: params file is empty; start from the shipped params.yaml (it lists every key)")
    raw = _apply_env_overrides(raw, dict(os.environ if environ is None else environ))
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        missing = [".".join(str(p) for p in err["loc"]) for err in exc.errors() if err["type"] == "missing"]
        problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {_short(err.get('input'))})"
                    for err in exc.errors() if err["type"] != "missing"]
        if missing:
            problems.append(f"missing key(s) {', '.join(missing)} (the shipped params.yaml lists every key)")
        raise ConfigError(f"{path}: {'; '.join(problems)}") from None
    return params.resolve(path.resolve().parent)
