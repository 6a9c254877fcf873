"""Method discovery (no imports), loading, and how new or broken method files join the plan."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from benchmark.methods import MethodError, discover_methods, load_method, read_method_info
from benchmark.workflow import ConfigError, Plan, validate_config

from conftest import DEFAULT_CONFIG, REPO, SCHEMA

GOOD = textwrap.dedent(
    '''
    import torch
    from benchmark.methods import FusionMethod

    class Max(torch.nn.Module):
        def forward(self, a, b):
            return torch.maximum(a, b)

    class Method(FusionMethod):
        kind = "fusion"
        display_name = "Max"
        hyperparameters = {}
        trainable = False

        def build(self):
            return Max()
    '''
)


@pytest.fixture
def methods_dir(tmp_path: Path) -> Path:
    d = tmp_path / "methods"
    d.mkdir()
    shutil.copy(REPO / "methods" / "average.py", d / "average.py")
    shutil.copy(REPO / "methods" / "_template.py", d / "_template.py")
    return d


def default_config() -> dict:
    return validate_config(yaml.safe_load(DEFAULT_CONFIG.read_text()), SCHEMA)


def test_discovery_reads_literals_without_importing(methods_dir: Path):
    (methods_dir / "needs_missing_lib.py").write_text(
        "import a_module_that_does_not_exist\n" + GOOD.replace('"Max"', '"Needs"')
    )
    found, problems = discover_methods(methods_dir)
    assert set(found) == {"average", "needs_missing_lib"}  # _template is skipped, imports are not run
    assert problems == {}
    assert found["needs_missing_lib"].kind == "fusion"


def test_broken_files_are_reported_by_name_and_do_not_stop_others(methods_dir: Path):
    (methods_dir / "syntax.py").write_text("class Method(:\n")
    (methods_dir / "badkind.py").write_text("class Method:\n    kind = 'magic'\n")
    (methods_dir / "nonliteral.py").write_text("X = 1\nclass Method:\n    kind = 'fusion'\n    hyperparameters = {'a': X}\n")
    found, problems = discover_methods(methods_dir)
    assert set(found) == {"average"}
    assert "syntax error" in problems["syntax"] and "syntax.py" in problems["syntax"]
    assert "kind must be one of" in problems["badkind"]
    assert "must be a Python literal" in problems["nonliteral"]


def test_import_failure_is_a_method_error_naming_the_file(methods_dir: Path):
    (methods_dir / "needs_missing_lib.py").write_text("import a_module_that_does_not_exist\n" + GOOD)
    with pytest.raises(MethodError, match="needs_missing_lib.py: failed to import"):
        load_method("needs_missing_lib", dirs=methods_dir)
    assert load_method("average", dirs=methods_dir).hparams == {}


def test_unknown_hyperparameter_is_rejected():
    with pytest.raises(MethodError, match="unknown hyper-parameters"):
        load_method("fuse4seg", {"not_a_setting": 1})


def test_test_config_must_name_known_hyperparameters(tmp_path: Path):
    path = tmp_path / "m.py"
    path.write_text("class Method:\n    kind = 'fusion'\n    hyperparameters = {'a': 1}\n    test_config = {'b': 2}\n")
    with pytest.raises(MethodError, match="unknown hyper-parameters"):
        read_method_info(path)


def test_new_method_file_joins_the_plan_with_no_other_edit(methods_dir: Path):
    config = default_config()
    before = Plan(config, methods_dir)
    (methods_dir / "maxfuse.py").write_text(GOOD)
    after = Plan(config, methods_dir)
    new = {(r.dataset, r.run) for r in after.runs} - {(r.dataset, r.run) for r in before.runs}
    assert new == {(d, "maxfuse") for d in config["datasets"]}


def test_plan_of_default_config_has_ablations_only_on_brats():
    plan = Plan(default_config())
    runs = {(r.dataset, r.run) for r in plan.runs}
    for variant in ("baseline", "variant_a", "variant_b"):
        assert ("brats", f"fuse4seg-{variant}") in runs
        assert ("harvard_mri_spect", f"fuse4seg-{variant}") not in runs
    spec = plan.find("brats", "fuse4seg-variant_b", 0)
    record = plan.record(spec)
    assert record.hparams["w_grad"] == 0.0 and record.hparams["w_dec"] == 2.0
    assert record.hparams["dim"] == 8  # method_scale: test applies the tiny test_config
    assert plan.methods["fuse4seg"].label("variant_b") == ("Variant B", 2)
    assert plan.methods["average"].label(None) == (None, None)
    pipelines = {(s.dataset, s.run): s.pipeline for s in plan.runs}
    assert pipelines[("brats", "fuse4seg")] == "joint"
    assert pipelines[("brats", "fuse4seg-baseline")] == "disjoint"  # bilevel off: a disjoint pipeline
    assert pipelines[("brats", "average")] == "disjoint"
    assert pipelines[("brats", "unet_multichannel")] == "segmentation"
    assert pipelines[("gfp_pc", "fuse4seg")] == pipelines[("gfp_pc", "average")] == "fusion"


def test_config_validation_fills_defaults_and_names_bad_keys():
    config = default_config()
    assert config["datasets"]["gfp_pc"]["split_fractions"] == [0.6, 0.2, 0.2]  # the default.yaml sets none
    assert "grad_clip" not in config["training"]  # resolved per run, see the precedence test
    assert Plan(config).training("brats", "fuse4seg")["grad_clip"] == 1.0
    bad = yaml.safe_load(DEFAULT_CONFIG.read_text())
    bad["training"]["batch_size"] = 1
    bad["datasets"]["brats"]["keep"] = "everything"
    with pytest.raises(ConfigError) as err:
        validate_config(bad, SCHEMA)
    assert "training.batch_size" in str(err.value) and "datasets.brats.keep" in str(err.value)


def test_unset_environment_variable_in_a_path_is_an_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_ROOT", raising=False)
    config = default_config()
    config["datasets"]["brats"].update(source="folder", path="${NO_SUCH_ROOT}/brats")
    with pytest.raises(ConfigError, match="datasets.brats.path.*NO_SUCH_ROOT"):
        Plan(config)


def test_every_bad_value_is_caught_at_plan_time_with_its_key_path(tmp_path: Path):
    """Issue 12, defect 3: training / follower sections took any object (before c4b6fa1), and split fractions not
    summing to 1, a missing raw folder or a GFP folder configured as SPECT failed only in a job."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["datasets"]["brats"]["training"] = {"batch_sise": 4}
    raw["follower"]["width"] = 3
    raw["datasets"]["gfp_pc"]["synthetic"]["n_cases"] = 2  # an argument of the other phantom writer
    with pytest.raises(ConfigError) as err:
        validate_config(raw, SCHEMA)
    for key in ("datasets.brats.training: Additional properties", "follower: Additional properties",
                "datasets.gfp_pc.synthetic: Additional properties"):
        assert key in str(err.value)

    (tmp_path / "gfp" / "GFP").mkdir(parents=True)
    (tmp_path / "gfp" / "PCI").mkdir()
    config = default_config()
    config["datasets"]["brats"]["split_fractions"] = [0.5, 0.2, 0.2]
    config["datasets"]["harvard_mri_pet"]["split_fractions"] = [0.8, 0.2, 0.0]
    config["datasets"]["harvard_mri_spect"].update(source="folder", path=str(tmp_path / "nowhere"))
    config["datasets"]["gfp_pc"].update(source="folder", path=str(tmp_path / "gfp"), functional="SPECT")
    config["method_training"] = {"no_such_method": {"batch_size": 4}}
    with pytest.raises(ConfigError) as err:
        Plan(config)
    lines = str(err.value).splitlines()[1:]
    assert lines == [
        "  datasets.brats.split_fractions: [0.5, 0.2, 0.2] sum to 0.9, not 1",
        f"  datasets.harvard_mri_spect.path: {tmp_path / 'nowhere'}: no such folder",
        "  datasets.harvard_mri_pet.split_fractions: [0.8, 0.2, 0.0]: training and test need patients "
        "(first and last > 0)",
        f"  datasets.gfp_pc.functional: 'SPECT' (anatomical 'PC') needs PC/, SPECT/ in {tmp_path / 'gfp'}, "
        "which holds GFP/, PCI/",
        f"  method_training.no_such_method: no method of this name (found: {', '.join(sorted(discover_methods()[0]))})",
    ]
    config = default_config()
    config["datasets"]["harvard_mri_pet"]["functional"] = "SPECT"  # phantoms of PET pairs
    with pytest.raises(ConfigError, match="datasets.harvard_mri_pet.functional: 'SPECT', but the phantoms are 'PET'"):
        Plan(config)


def test_cli_help_and_methods_listing():
    out = subprocess.run([sys.executable, "-m", "benchmark", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0
    for command in ("preprocess", "train", "evaluate", "fuse", "segment", "metrics", "render", "methods"):
        assert command in out.stdout
    out = subprocess.run([sys.executable, "-m", "benchmark", "methods", "--check"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "average" in out.stdout and "fuse4seg" in out.stdout


def test_training_settings_resolve_method_then_config_then_dataset_then_method_training(methods_dir: Path):
    (methods_dir / "clipped.py").write_text(GOOD.replace('"Max"', '"Clipped"').replace(
        "trainable = False", "trainable = False\n    training = {'grad_clip': 0.01, 'batch_size': 64}"))
    config = default_config()
    config["training"] = {"batch_size": 4}
    config["datasets"]["gfp_pc"]["training"] = {"fusion_epochs": 3}
    config["method_training"] = {"clipped": {"fusion_epochs": 7}}
    plan = Plan(config, methods_dir)
    own = plan.record(plan.find("gfp_pc", "clipped", 0)).training
    assert own["grad_clip"] == 0.01  # the method's default, the config writes none
    assert own["batch_size"] == 4  # the config's training section beats the method's default
    assert own["fusion_epochs"] == 7  # method_training beats the dataset's section
    other = plan.record(plan.find("gfp_pc", "average", 0)).training
    assert (other["grad_clip"], other["fusion_epochs"]) == (1.0, 3)  # schema default, dataset section
    assert plan.training("gfp_pc")["grad_clip"] == 1.0  # the follower's settings have no method level


def test_a_method_may_not_change_the_shared_follower_recipe(tmp_path: Path):
    path = tmp_path / "m.py"
    path.write_text("class Method:\n    kind = 'fusion'\n    training = {'follower_lr': 1.0}\n")
    with pytest.raises(MethodError, match="follower_lr.*shared follower"):
        read_method_info(path)


def test_missing_requirement_skips_the_method_with_the_reason(methods_dir: Path):
    (methods_dir / "needy.py").write_text(GOOD.replace(
        "trainable = False", "trainable = False\n    requires = {'a_module_that_does_not_exist': 'nosuch>=1.0'}"))
    warnings = []
    plan = Plan(default_config(), methods_dir, warn=warnings.append)
    assert "needy" not in {s.method for s in plan.runs}
    assert plan.skipped == {"needy": "needs nosuch>=1.0 (pip install 'nosuch>=1.0')"}
    assert plan.render_context()["skipped"] == plan.skipped
    assert any("needy" in w and "nosuch>=1.0" in w for w in warnings)
    with pytest.raises(MethodError, match="needy.py: needs nosuch"):
        load_method("needy", dirs=methods_dir)


def test_declared_weights_come_from_the_config_and_must_exist(methods_dir: Path, tmp_path: Path):
    (methods_dir / "pretrained.py").write_text(GOOD.replace(
        "trainable = False", "trainable = False\n    weights = {'encoder': 'an ImageNet encoder'}"))
    config = default_config()
    plan = Plan(config, methods_dir)
    assert plan.record(plan.find("gfp_pc", "pretrained", 0)).weights == {}  # none given: from scratch
    config["weights"] = {"pretrained": {"encoder": str(tmp_path / "missing.pth")}}
    with pytest.raises(ConfigError, match="weights.pretrained.encoder: .*missing.pth: no such file"):
        Plan(config, methods_dir)
    config["weights"] = {"pretrained": {"decoder": str(tmp_path / "missing.pth")}}
    with pytest.raises(ConfigError, match="weights.pretrained.decoder: .*declares no weight 'decoder'"):
        Plan(config, methods_dir)
    (tmp_path / "enc.pth").write_bytes(b"weights")
    config["weights"] = {"pretrained": {"encoder": str(tmp_path / "enc.pth")}}
    record = Plan(config, methods_dir).record(plan.find("gfp_pc", "pretrained", 0))
    assert record.weights["encoder"]["path"] == str((tmp_path / "enc.pth").resolve())
    method = load_method("pretrained", dirs=methods_dir, record=record)
    assert method.weight_file("encoder") == (tmp_path / "enc.pth").resolve()
