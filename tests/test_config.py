"""Config loading: precedence, every error class (exit 2, one line), --print-config round trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from titanwarm.config import ConfigError, load_config, to_toml
from titanwarm.config.loader import field_docs, field_types, section_types

REPO = Path(__file__).resolve().parent.parent
DEBUG = str(REPO / "train_configs" / "debug_model.toml")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return str(path)


def test_precedence_cli_over_toml_over_defaults(tmp_path):
    path = write(tmp_path, "[training]\nsteps = 7\nseq_len = 64\n[optimizer]\nlr = 0.5\n")
    cfg, _ = load_config(["--config", path, "--training.steps", "9", "--optimizer.lr=0.25"])
    assert cfg.training.steps == 9  # CLI beats TOML
    assert cfg.optimizer.lr == 0.25  # --key=value form
    assert cfg.training.seq_len == 64  # TOML beats default
    assert cfg.optimizer.beta2 == 0.95  # default


def test_torchtitan_config_flag_lists_and_bools(tmp_path):
    path = write(tmp_path, "[job]\nseed = 3\n")
    cfg, _ = load_config(["--job.config_file", path, "--training.dataset_path", "a.txt, b/*.txt",
                          "--metrics.enable_tensorboard", "false"])
    assert cfg.job.seed == 3
    assert cfg.training.dataset_path == ["a.txt", "b/*.txt"]
    assert cfg.metrics.enable_tensorboard is False


@pytest.mark.parametrize("toml, argv, key, words", [
    ("[trainig]\nsteps = 1\n", [], "[trainig]", "did you mean 'training'"),
    ("[training]\nstep = 1\n", [], "training.step", "did you mean 'steps'"),
    ("[training]\nsteps = \"ten\"\n", [], "training.steps", "expected an integer"),
    ("[training]\nsteps = 1.5\n", [], "training.steps", "expected an integer"),
    ("[metrics]\nenable_tensorboard = 1\n", [], "metrics.enable_tensorboard", "expected true or false"),
    ("", ["--training.steps", "x"], "training.steps", "expected an integer"),
    ("", ["--optimizer.lr", "-1"], "optimizer.lr", "allowed: a number > 0"),
    ("[activation_checkpoint]\nmode = \"some\"\n", [], "activation_checkpoint.mode", "allowed: none, full"),
    ("[model]\nflavor = \"debugmodle\"\n", [], "model.flavor", "unknown flavor"),
    ("[training]\ndataset = \"shakespear_kjv\"\n", [], "training.dataset", "did you mean 'shakespeare_kjv'"),
    ("[model]\ntokenizer_path = \"nope.model\"\n", [], "model.tokenizer_path", "file not found"),
    ("[training]\ndataset = \"text\"\n", [], "training.dataset_path", "needs at least one path"),
    ("[parallelism]\nloss_parallel = true\n", [], "parallelism.loss_parallel", "tensor_parallel_degree > 1"),
    ("[job]\ncustom_import = \"no_such_module_xyz\"\n", [], "job.custom_import", "cannot import"),
])
def test_errors_name_file_and_key(tmp_path, toml, argv, key, words):
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_config(["--config", path, *argv])
    assert info.value.key == key
    assert words in info.value.why
    assert info.value.source == (path if not argv else "command line")


def test_world_size_combinations(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    path = write(tmp_path, "[parallelism]\ntensor_parallel_degree = 2\n")
    with pytest.raises(ConfigError, match="world size 3 is not divisible"):
        load_config(["--config", path])
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="must be a multiple of local_batch_size"):
        load_config(["--config", path, "--training.global_batch_size", "6",
                     "--training.local_batch_size", "4"])
    cfg, _ = load_config(["--config", path, "--training.global_batch_size", "16",
                          "--training.local_batch_size", "4"])
    assert cfg.training.global_batch_size == 16


def test_heads_must_divide_by_tp(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError) as info:
        load_config(["--model.flavor", "tinymodel", "--parallelism.tensor_parallel_degree", "3"])
    assert info.value.key == "parallelism.tensor_parallel_degree"


def test_print_config_round_trips(tmp_path):
    cfg, _ = load_config(["--config", DEBUG, "--training.steps", "11", "--training.dataset_path", "x,y"])
    text = to_toml(cfg)
    again, _ = load_config(["--config", write(tmp_path, text)])
    assert again == cfg


def test_every_key_is_documented():
    for name, cls in section_types().items():
        docs = field_docs(cls)
        missing = [k for k in field_types(cls) if not docs.get(k)]
        assert not missing, f"[{name}] keys without a docstring: {missing}"


def run_train(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_entry_point_error_is_one_line_exit_2(tmp_path):
    path = write(tmp_path, "[training]\nstepz = 3\n")
    proc = run_train("--config", path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"config error: {path}: training.stepz: unknown key; did you mean 'steps'? allowed: "
        + ", ".join(field_types(section_types()["training"]))]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_entry_point_bad_toml_and_missing_file(tmp_path):
    proc = run_train("--config", write(tmp_path, "[training\n"))
    assert proc.returncode == 2 and proc.stderr.startswith("config error:") and "not valid TOML" in proc.stderr
    proc = run_train("--config", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and proc.stderr.strip().endswith("missing.toml: file not found")


def test_entry_point_print_config():
    proc = run_train("--config", DEBUG, "--print-config", "--training.steps", "5")
    assert proc.returncode == 0, proc.stderr
    assert "[training]\n" in proc.stdout and "\nsteps = 5\n" in proc.stdout


def test_print_config_creates_nothing(tmp_path):
    """Validation only checks that the dump and checkpoint folders could be written; it creates
    neither (``--print-config`` used to leave them behind)."""
    dump = tmp_path / "not" / "yet"
    proc = run_train("--config", DEBUG, "--print-config", "--job.dump_folder", str(dump),
                     "--checkpoint.enable", "true")
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_parsing_a_config_imports_no_engine():
    """The schema is a leaf: loading and validating a TOML file imports neither the HVP engine nor
    the tracker, and the schema alone does not import torch.distributed.tensor."""
    code = ("import sys; import titanwarm.config.sections, titanwarm.config.errors; "
            "assert 'torch.distributed.tensor' not in sys.modules, 'schema'; "
            f"from titanwarm.config import load_config; load_config(['--config', {DEBUG!r}]); "
            "bad = [m for m in ('titanwarm.curvature.hvp', 'titanwarm.curvature.tracker') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
