import pytest

from causalrec.config import ConfigError, load_params
from conftest import REPO


def test_default_params_load_and_anchor_paths():
    params = load_params(REPO / "params.yaml", environ={})
    assert params.simulate.n_interactions == 100_000
    assert params.paths.data_dir == REPO / "data"
    # the service's log and catalogue are the project's, whatever directory `bentoml serve` runs in
    assert params.serve.feedback_log == REPO / "feedback" / "feedback.jsonl"
    assert params.serve.catalogue == REPO / "feedback" / "catalogue.sqlite"
    assert params.validate_.max_examples >= 1


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*/params.yaml")), ids=lambda p: p.parent.name)
def test_every_example_params_file_loads(path):
    """The examples are run by hand (README): a key added to the shipped params.yaml must reach them too."""
    params = load_params(path, environ={})
    assert params.paths.data_dir == path.parent / "data"


@pytest.mark.parametrize("text, fragment", [
    ("seed: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("train:\n  epochs: many\n", "train.epochs"),
    ("train:\n  dimension: 3\n", "train.dimension"),
    ("simulate:\n  exposure_rate: 1.5\n", "simulate.exposure_rate"),
    ("propensity:\n  method: magic\n", "propensity.method"),
    ("uplift:\n  exposure_weight: -1\n", "uplift.exposure_weight"),
    ("uplift:\n  exposure_weight: often\n", "uplift.exposure_weight"),
    ("paths:\n  artifacts_dir: ../elsewhere\n", "paths.artifacts_dir = ../elsewhere resolves to"),
    ("paths:\n  data_dir: /tmp/causalrec-data\n", "outside the project"),
    ("serve:\n  feedback_log: /etc/passwd\n", "serve.feedback_log = /etc/passwd resolves to"),
])
def test_malformed_params_name_the_key(tmp_path, text, fragment):
    import yaml

    path = tmp_path / "params.yaml"
    try:  # a malformed section over the shipped params, so only that key is wrong
        edit = yaml.safe_load(text)
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        for section, values in edit.items():
            raw[section].update(values)
        text = yaml.safe_dump(raw)
    except (yaml.YAMLError, AttributeError, TypeError):
        pass
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("[", r"\[")):
        load_params(path, environ={})


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_env_override(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    params = load_params(tmp_path / "params.yaml", environ={"CAUSALREC__TRAIN__EPOCHS": "9"})
    assert params.train.epochs == 9
    with pytest.raises(ConfigError, match="train.epochs"):
        load_params(tmp_path / "params.yaml", environ={"CAUSALREC__TRAIN__EPOCHS": "nine"})


def test_params_yaml_is_the_one_source_of_values():
    """config.py holds types and bounds, no default a params file could silently fall back on."""
    from causalrec.config import Params

    def defaults(model):
        out = [f"{model.__name__}.{n}" for n, f in model.model_fields.items() if not f.is_required()]
        for f in model.model_fields.values():
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
                out += defaults(f.annotation)
        return out

    from pydantic import BaseModel

    assert defaults(Params) == []


@pytest.mark.parametrize("edit, fragment", [
    ({}, "params file is empty"),
    ({"train": {"lr": float("inf")}}, "train.lr"),
    ({"serve": {"temperature": float("nan")}}, "serve.temperature"),
    ({"evaluate": {"k": 5}}, "primary_metric must be one of"),
    ({"simulate": {"n_users": 10**10}}, "n_users must be an integer"),
    ({"simulate": {"n_topics": 99}}, "n_topics"),
    ({"train": {"dim": 10**8}}, "train.dim"),
    ({"drop": "monitor"}, "missing key(s) monitor"),
    ({"train": {"weight_decay": "auto", "exposure_weight": "auto"}}, "both auto"),
    ({"train": {"weight_decay": "auto", "exposure_weight": 0.0}}, "uplift.enabled: false"),
    ({"train": {"weight_decay": "sometimes"}}, "train.weight_decay"),
    # inputs are read from the project or a declared directory (paths.input_dirs), not from anywhere
    ({"analyze": {"graph": "/etc/passwd"}}, "analyze.graph resolves to /etc/passwd, outside the project"),
    ({"analyze": {"data": "/usr/share/x.parquet"}}, "analyze.data resolves to /usr/share/x.parquet, outside"),
    ({"ingest": {"source": "parquet", "source_path": "/etc"}}, "ingest.source_path resolves to /etc, outside"),
    ({"ingest": {"test_path": "../../../../../../etc/hosts"}}, "ingest.test_path resolves to /etc/hosts, outside"),
    ({"feedback": {"max_quarantine_share": 1.5}}, "feedback.max_quarantine_share"),
])
def test_values_that_make_no_sense_are_rejected(tmp_path, edit, fragment):
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    if not edit:
        raw = {}
    elif "drop" in edit:
        raw.pop(edit["drop"])
    else:
        for section, values in edit.items():
            raw[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw) if raw else "")
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        load_params(path, environ={})


def test_paths_outside_the_project_need_the_explicit_switch(tmp_path):
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"].update(data_dir=str(tmp_path / "shared-data"), allow_outside_project=True)
    (tmp_path / "project").mkdir()
    path = tmp_path / "project" / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_params(path, environ={}).paths.data_dir == tmp_path / "shared-data"


def test_inputs_outside_the_project_need_a_declared_directory(tmp_path):
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["ingest"].update(source="coat", source_path=str(tmp_path / "shared" / "coat"))
    (tmp_path / "project").mkdir()
    path = tmp_path / "project" / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="add its directory to paths.input_dirs"):
        load_params(path, environ={})
    raw["paths"]["input_dirs"] = ["../shared"]  # relative to the project, like every path here
    path.write_text(yaml.safe_dump(raw))
    assert load_params(path, environ={}).ingest.source_path == tmp_path / "shared" / "coat"


def test_the_flow_takes_its_stage_order_from_dvc_yaml(tmp_path):
    """dvc.yaml is the one place that orders the stages: its dependencies decide, whatever order the
    file lists them in (package reads the analysis, so analyze runs first)."""
    import yaml

    from causalrec import pipeline
    from causalrec.pipeline.dag import stage_order
    from conftest import REPO

    order = stage_order(REPO / "dvc.yaml")
    assert order == ["ingest", "validate", "embed", "propensity", "train", "evaluate", "analyze", "package", "monitor"]
    assert set(order) == set(pipeline.STAGES)
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    spec["stages"] = dict(reversed(list(spec["stages"].items())))  # listed backwards
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())  # dvc.yaml's ${paths.*}
    backwards = stage_order(tmp_path / "dvc.yaml")
    for before, after in (("propensity", "train"), ("train", "evaluate"), ("analyze", "package"), ("evaluate", "package"),
                          ("embed", "propensity")):
        assert backwards.index(before) < backwards.index(after), (before, after, backwards)
