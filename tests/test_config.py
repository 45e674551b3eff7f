import pytest

from causalrec.config import ConfigError, load_params
from conftest import REPO


def test_default_params_load_and_anchor_paths():
    params = load_params(REPO / "params.yaml", environ={})
    assert params.simulate.n_interactions == 100_000
    assert params.paths.data_dir == REPO / "data"
    assert params.validate_.max_examples >= 1


@pytest.mark.parametrize("text, fragment", [
    ("seed: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("train:\n  epochs: many\n", "train.epochs"),
    ("train:\n  dimension: 3\n", "train.dimension"),
    ("simulate:\n  exposure_rate: 1.5\n", "simulate.exposure_rate"),
    ("propensity:\n  method: magic\n", "propensity.method"),
    ("uplift:\n  exposure_weight: -1\n", "uplift.exposure_weight"),
    ("uplift:\n  exposure_weight: often\n", "uplift.exposure_weight"),
])
def test_malformed_params_name_the_key(tmp_path, text, fragment):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("[", r"\[")):
        load_params(path, environ={})


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_env_override(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 3\n")
    params = load_params(tmp_path / "params.yaml", environ={"CAUSALREC__TRAIN__EPOCHS": "9"})
    assert params.train.epochs == 9
    with pytest.raises(ConfigError, match="train.epochs"):
        load_params(tmp_path / "params.yaml", environ={"CAUSALREC__TRAIN__EPOCHS": "nine"})
