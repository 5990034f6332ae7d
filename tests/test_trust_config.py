"""Trust the config: unknown ids and bad settings refused before anything runs, one clear line for every failure
the user or the machine causes (from `medadv` and `python -m monai.bundle run`), safe checkpoint messages, MONAI's
trust note, and a Grad-CAM whose hot colours mean high attribution."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from medadv_monai import bundle
from medadv_monai.bundle import load_bundle_config
from medadv_monai.cli import main
from medadv_monai.errors import MedAdvInputError, find_input_error
from tests.helpers import ATTACK_EVAL_BUNDLE, CLASSIFIER_BUNDLE, CLASSIFIER_TRAIN, REPO, bundle_cmd, bundle_copy, run

MONAI_MAIN = str(Path("/venv/lib/python3.11/site-packages/monai/bundle/__main__.py"))

def one_error_line(stderr: str, prefix: str) -> str:
    """The only line of ``stderr`` that starts with ``prefix``, with no traceback anywhere."""
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


# ------------------------------------------------------------------------------------------ 1. unknown ids
def test_unknown_override_id_names_the_nearest(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["stats", "--dataset_dir", "data", "--work_dir", "work", "--imagesize", "[32,32]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["medadv: error: unknown id 'imagesize' (not in train.yaml); did you mean 'image_size'?"]
    assert not list(tmp_path.iterdir())
    with pytest.raises(MedAdvInputError, match="did you mean 'train#trainer#max_epochs'"):
        load_bundle_config(CLASSIFIER_TRAIN, **{"train#trainer#max_epoch": 3})
    with pytest.raises(MedAdvInputError, match="unknown id 'foo#bar'"):
        load_bundle_config(CLASSIFIER_TRAIN, **{"foo#bar": 3})
    load_bundle_config(CLASSIFIER_TRAIN, **{"train#trainer#max_epochs": 3, "bundle_root": str(tmp_path)})


def test_check_run_reads_the_monai_command_line(tmp_path):
    from medadv_monai.bundle import check_run

    config = str(CLASSIFIER_TRAIN)
    base = [MONAI_MAIN, "run", "--config_file", config, "--bundle_root", str(tmp_path)]
    with pytest.raises(MedAdvInputError, match=r"unknown id 'imagesize' \(not in train.yaml\); did you mean "
                                               r"'image_size'\?"):
        check_run([*base, "--imagesize", "[32,32]"])
    with pytest.raises(MedAdvInputError, match="did you mean 'train#trainer#max_epochs'"):
        check_run([*base, "--train#trainer#max_epoch=3"])
    with pytest.raises(MedAdvInputError, match="unknown id 'resum'"):
        check_run([*base, "--resum"])  # a bare flag is an id too
    evaluate = str(CLASSIFIER_TRAIN.with_name("evaluate.yaml"))
    check_run([MONAI_MAIN, "run", "--config_file", f"['{config}','{evaluate}']", "--eval_split", "test",
               "--image_size", "[32,32]", "--train#trainer#max_epochs", "2", "--meta_file", "m.json",
               "--logging_file", "l.conf", "--tracking", "mlflow", "--experiment_name", "x", "--", "--help"])
    with pytest.raises(MedAdvInputError, match="unknown id 'eval_split'"):
        check_run([*base, "--eval_split", "test"])  # only in evaluate.yaml, which this run does not read
    args_file = tmp_path / "args.yaml"
    args_file.write_text(f"config_file: {config}\nimage_sise: [32, 32]\n")
    with pytest.raises(MedAdvInputError, match="unknown id 'image_sise'.*did you mean 'image_size'"):
        check_run([MONAI_MAIN, "run", "--args_file", str(args_file)])
    # not `python -m monai.bundle run` (pytest, a ConfigWorkflow in Python): nothing to check
    check_run(["/usr/bin/pytest", "-q", "--imagesize", "[32,32]"])
    check_run()


def test_bundle_run_refuses_an_unknown_id_in_one_line(synth_dir, tmp_path):
    b = bundle_copy(CLASSIFIER_BUNDLE, tmp_path / "b")
    proc = run(bundle_cmd(b, ["train.yaml"], dataset_dir=str(synth_dir), work_dir=str(tmp_path / "work"),
                          output_dir=str(tmp_path / "out"), imagesize="[32,32]"), tmp_path)
    assert proc.returncode != 0
    line = one_error_line(proc.stderr, "error: ")
    assert line == "error: unknown id 'imagesize' (not in train.yaml); did you mean 'image_size'?"
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


# ------------------------------------------------------------------------------------------ 2. settings
@pytest.mark.parametrize("override,message", [
    (["--image_size", "[0,0]"], "image_size must be a list of 2 integers > 0, e.g. [64, 64], got [0, 0]"),
    (["--image_size", "$[0,0]"], "image_size must be a list of 2 integers > 0"),  # an expression: after the note
    (["--batch_size", "0"], "batch_size must be an integer >= 1, got 0"),
    (["--modalities", "t2"], "modalities 't2': expected a list of names from ['t1', 't1ce', 't2', 'flair']"),
    (["--modalities", "[t2,t1c]"], "modalities ['t2', 't1c']: unknown ['t1c']"),
    (["--train#trainer#max_epochs", "0"], "train#trainer#max_epochs must be an integer >= 1, got 0"),
    (["--select_model", "final"], "select_model: expected one of ['last', 'best'], got 'final'"),
])
def test_bad_setting_is_one_line_and_exit_2(override, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["stats", "--dataset_dir", "data", "--work_dir", "work", *override]) == 2
    line = one_error_line(capsys.readouterr().err, "medadv: error: ")
    assert line.startswith("medadv: error: " + message), line
    assert not list(tmp_path.iterdir())


def test_settings_rules():
    from medadv_monai.settings import check_settings

    good = {"image_size": [32, 48], "batch_size": 1, "modalities": ["t1ce", "flair"], "split": "validation",
            "eval_split": "test", "infer_split": "training", "eps": 0.5, "train#trainer#max_epochs": 1}
    assert check_settings(good) == good
    assert check_settings({"eps": [0, 1.0]}) == {"eps": [0.0, 1.0]}
    # inside a `$` expression MONAI writes `#` as `::`, also in string keys
    with pytest.raises(MedAdvInputError, match="^train#trainer#max_epochs must be an integer >= 1, got 0"):
        check_settings({"train::trainer::max_epochs": 0})
    bad = [
        ({"split": "train"}, "split must be one of ['training', 'validation', 'test'], got 'train'; did you mean "
                             "'training'?"),
        ({"eval_split": None}, "eval_split must be one of"),
        ({"eps": "abc"}, "eps must be a number in [0, 1] (inputs live in [0, 1]), got 'abc'"),
        ({"eps": 1.5}, "eps must be a number in [0, 1]"),
        ({"eps": float("nan")}, "eps must be a number in [0, 1]"),
        ({"eps": [0.1, 2]}, "eps in the grid must be a number in [0, 1]"),
        ({"image_size": [32]}, "image_size must be a list of 2 integers > 0"),
        ({"image_size": [32.0, 32]}, "image_size must be a list of 2 integers > 0"),
        ({"image_size": (32, 32)}, "image_size must be a list of 2 integers > 0"),
        ({"batch_size": True}, "batch_size must be an integer >= 1"),
        ({"modalities": []}, "modalities []: expected a non-empty list"),
        ({"modalities": ["t1"], "all_modalities": ["t2"]}, "modalities ['t1']: unknown ['t1']"),
    ]
    for settings, message in bad:
        with pytest.raises(MedAdvInputError) as info:
            check_settings(settings)
        assert str(info.value).startswith(message), (settings, str(info.value))
    with pytest.raises(KeyError):
        check_settings({"no_such_setting": 1})  # a mistake in the calling config, not user input


def test_bundle_run_checks_settings_before_anything_runs(tmp_path):
    b = bundle_copy(ATTACK_EVAL_BUNDLE, tmp_path / "e")
    c = bundle_copy(CLASSIFIER_BUNDLE, tmp_path / "c")
    cases = [
        ({"split": "train"}, "error: split must be one of ['training', 'validation', 'test'], got 'train'; did "
                             "you mean 'training'?"),
        ({"eps": "'abc'"}, "error: eps must be a number in [0, 1] (inputs live in [0, 1]), got 'abc'"),
        ({"classifier_overrides": "{'modalities': 't2'}"}, "error: modalities 't2': expected a list of names"),
        ({"classifier_overrides": "{'imagesize': [32, 32]}"}, "error: unknown id 'imagesize' (not in "
                                                               "train.yaml); did you mean 'image_size'?"),
    ]
    for override, message in cases:
        proc = run(bundle_cmd(b, ["evaluate.yaml"], classifier_bundle=str(c), dataset_dir=str(tmp_path / "data"),
                              output_dir=str(tmp_path / "out"), **override), tmp_path)
        assert proc.returncode != 0, override
        assert one_error_line(proc.stderr, "error: ").startswith(message), (override, proc.stderr[-1500:])
    assert not (tmp_path / "out").exists()


def test_workflow_checks_settings_but_not_the_command_line(tmp_path):
    from tests.helpers import workflow

    b = bundle_copy(CLASSIFIER_BUNDLE, tmp_path / "b")
    wf = workflow(b, ["train.yaml"], "train", image_size=[0, 0], output_dir=str(tmp_path / "out"))
    with pytest.raises(Exception) as info:
        wf.initialize()
    err = find_input_error(info.value)
    assert err is not None and str(err).startswith("image_size must be a list of 2 integers > 0")
    assert not (tmp_path / "out").exists()
    # valid settings pass; `imagesize` is not checked here (no `python -m monai.bundle run` command line)
    wf = workflow(b, ["train.yaml"], "train", image_size=[32, 32], output_dir=str(tmp_path / "out"))
    wf.parser.parse(reset=True)
    assert wf.parser.get_parsed_content("initialize#1") is None
    checked = wf.parser.get_parsed_content("initialize#2")
    assert sorted(checked) == ["all_modalities", "batch_size", "image_size", "modalities", "select_model",
                               "train#trainer#max_epochs"]
    assert checked["image_size"] == [32, 32]
    assert checked["train#trainer#max_epochs"] == wf.parser["train#trainer#max_epochs"]


# ------------------------------------------------------------------------------------------ 3. one line for failures
def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("image_size: [32, 32]\nmodalities: [t2\nbatch_size: 4\n")
    assert main(["stats", "--config", str(bad)]) == 2
    line = one_error_line(capsys.readouterr().err, "medadv: error: ")
    assert line.startswith(f"medadv: error: config file '{bad}' is not valid YAML at line 3, column "), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_bundle_run_yaml_error_in_a_loaded_config_is_one_line(tmp_path):
    b = bundle_copy(ATTACK_EVAL_BUNDLE, tmp_path / "e")
    broken = tmp_path / "broken.yaml"
    broken.write_text("modalities: [t2\n")
    proc = run(bundle_cmd(b, ["evaluate.yaml"], classifier_config=str(broken), dataset_dir=str(tmp_path / "d"),
                          output_dir=str(tmp_path / "out")), tmp_path)
    assert proc.returncode != 0
    line = one_error_line(proc.stderr, "error: ")
    assert line.startswith(f"error: config file '{broken}' is not valid YAML at line 2"), line


@pytest.mark.parametrize("code,reason", [(errno.ENOSPC, "No space left on device"),
                                         (errno.EACCES, "Permission denied")])
def test_disk_full_and_permission_denied_are_one_line(code, reason, tmp_path, capsys, monkeypatch):
    import medadv_monai.data.synthetic_dataset as synthetic

    def fail(array, path, *_):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(synthetic, "_save", fail)
    out = tmp_path / "data"
    assert main(["synth", "--out", str(out), "--subjects", "2", "--shape", "[32,32,16]"]) == 2
    line = one_error_line(capsys.readouterr().err, "medadv: error: ")
    assert line.startswith(f"medadv: error: {out}/") and line.endswith(f".nii.gz: {reason}"), line
    assert not [p for p in out.rglob("*") if p.is_file()]  # nothing half-written
    with pytest.raises(OSError):
        main(["--debug", "synth", "--out", str(out), "--subjects", "2", "--shape", "[32,32,16]"])


def test_out_of_the_wrong_kind_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("keep me\n")
    assert main(["stats", "--dataset_dir", "data", "--out", "folder"]) == 2
    line = one_error_line(capsys.readouterr().err, "medadv: error: ")
    assert line == "medadv: error: --out 'folder' is a folder; expected a file name, e.g. 'folder/stats.json'"
    assert main(["datalist", "--dataset_dir", "data", "--out", "folder"]) == 2
    assert one_error_line(capsys.readouterr().err, "medadv: error: ").startswith("medadv: error: --out 'folder' is")
    assert main(["synth", "--out", "file", "--subjects", "2", "--shape", "[32,32,16]"]) == 2
    line = one_error_line(capsys.readouterr().err, "medadv: error: ")
    assert line.startswith("medadv: error: dataset folder 'file' is a file; expected a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]
    assert not list((tmp_path / "folder").iterdir()) and (tmp_path / "file").read_text() == "keep me\n"


HOOKED = """
import sys, torch
from medadv_monai.errors import install_excepthook
install_excepthook()
if sys.argv[1] == "oserror":
    raise RuntimeError("applying transform") from OSError(28, "No space left on device", "/data/work/shard.npy")
if sys.argv[1] == "torch":
    torch.save({"w": torch.zeros(100000)}, "/dev/full")
raise KeyError("a bug keeps its traceback")
"""


def test_excepthook_turns_machine_failures_into_one_line(tmp_path):
    script = tmp_path / "hooked.py"
    script.write_text(HOOKED)
    proc = run([sys.executable, str(script), "oserror"], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: /data/work/shard.npy: No space left on device"
    if Path("/dev/full").exists():  # a full disk: torch.save's C++ writer fails with no errno and no file name
        proc = run([sys.executable, str(script), "torch"], tmp_path)
        assert proc.returncode == 1
        assert one_error_line(proc.stderr, "error: ").startswith("error: /dev/full: writing the PyTorch file "
                                                                 "failed ("), proc.stderr
    proc = run([sys.executable, str(script), "bug"], tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "KeyError" in proc.stderr
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEDADV_DEBUG": "1"}
    proc = subprocess.run([sys.executable, str(script), "oserror"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_describe_failure_leaves_bugs_alone():
    from medadv_monai.errors import describe_failure

    assert describe_failure(KeyError("x")) is None
    assert describe_failure(OSError("no errno: not from the system")) is None
    assert describe_failure(PermissionError(errno.EACCES, "Permission denied", "/a", None, "/b")) == \
        "/a -> /b: Permission denied"


# ------------------------------------------------------------------------------------------ 4. checkpoints
class Payload:
    """An arbitrary object: unpickling it would run code of the checkpoint's choosing."""


def test_unreadable_checkpoint_is_not_called_pickled_objects(tmp_path):
    from medadv_monai.networks.io import load_checkpoint

    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(3)}, good)
    data = good.read_bytes()
    files = {"random.pt": os.urandom(4096), "truncated.pt": data[: len(data) // 2], "text.pt": b"hello world\n",
             "empty.pt": b""}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(MedAdvInputError) as info:
            load_checkpoint(tmp_path / name)
        message = str(info.value)
        assert message == f"checkpoint '{tmp_path / name}' is not a readable PyTorch checkpoint (truncated or " \
                          f"another format)", message
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(3), "extra": Payload()}, evil)
    with pytest.raises(MedAdvInputError) as info:
        load_checkpoint(evil)
    message = str(info.value)
    assert f"holds pickled Python objects ({Payload.__module__}.Payload)" in message
    assert "weights_only" not in message and "\n" not in message
    with pytest.raises(MedAdvInputError, match="is a folder; expected a checkpoint file"):
        load_checkpoint(tmp_path)


# ------------------------------------------------------------------------------------------ 5. trust note
def test_trust_note_once_per_process_in_monai_words(tmp_path, capsys, monkeypatch):
    import inspect

    from monai.bundle import scripts

    monkeypatch.setattr(bundle, "_noted", False)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["stats", "--dataset_dir", "data", "--image_size", "$[0,0]"]) == 2
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("medadv: note: parsing config_file")]
    assert len(notes) == 1 and str(CLASSIFIER_TRAIN) in notes[0], err
    assert err.index("medadv: note:") < err.index("medadv: error:")  # before any `$` expression is evaluated
    monai_text = " ".join(inspect.getsource(scripts.create_workflow).split())
    for phrase in ('is resolved to an importable', 'callable and invoked with no allow list, and any `"$"`-prefixed '
                   'value is passed to Python', "Only proceed if this config is from a source you trust",
                   "GHSA-873f-pvrv-4x83"):
        assert phrase in monai_text and phrase in notes[0].replace("\n", " ")


# ------------------------------------------------------------------------------------------ 6. Grad-CAM
class RegionMean(nn.Module):
    """logit = mean of ReLU(x) over the top-left 8x8 region: Grad-CAM weights are positive, so the map is ReLU(x)
    up to a factor: highest where the input is brightest."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))[:, :, :8, :8].mean(dim=(1, 2, 3)).unsqueeze(1)


def test_gradcam_high_attribution_is_hot_with_a_colour_bar(tmp_path):
    import matplotlib.pyplot as plt

    from medadv_monai.visualize.figures import gradcam_figure, gradcam_maps, gradcam_plot

    x = torch.zeros(2, 1, 16, 16)
    x[:, :, 2:6, 2:6] = 1.0  # the "tumour": where the logit's attribution is
    x_adv = x * 0.5
    clean, adv = gradcam_maps(RegionMean(), "act", x, x_adv)
    assert clean.shape == x.shape
    assert torch.allclose(clean[:, :, 2:6, 2:6], torch.ones(1)) and clean[:, :, 8:, 8:].abs().max() == 0
    assert torch.allclose(adv[:, :, 2:6, 2:6], torch.full((1,), 0.5))  # one scale per column
    fig = gradcam_plot(RegionMean(), "act", x, x_adv, titles=["a", "b"])
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "Grad-CAM" in bars[0].get_ylabel()
    overlays = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name != "gray"]
    assert len(overlays) == 4 and all(im.get_clim() == (0.0, 1.0) for im in overlays)
    plt.close(fig)
    path = gradcam_figure(RegionMean(), "act", x, x_adv, tmp_path / "cam.png")
    assert path.stat().st_size > 0 and [p.name for p in tmp_path.iterdir()] == ["cam.png"]


def test_error_line_is_not_printed_on_a_progress_bar(tmp_path, capsys, monkeypatch):
    from tqdm import tqdm

    monkeypatch.chdir(tmp_path)
    bar = tqdm(total=10, desc="subjects", file=sys.stderr)
    bar.update(3)
    assert main(["stats", "--imagesize", "[32,32]"]) == 2
    err = capsys.readouterr().err
    assert bar.disable  # closed before the error line
    assert "\nmedadv: error: unknown id 'imagesize'" in err, repr(err)


def test_inference_with_a_checkpoint_of_another_channel_count_is_one_line(trained_classifier, synth_dir, tmp_path):
    """Stage-1 evaluation and inference load the model through load_weights: a mismatch names the checkpoint."""
    b = bundle_copy(CLASSIFIER_BUNDLE, tmp_path / "b")
    proc = run(bundle_cmd(b, ["inference.yaml"], dataset_dir=str(synth_dir), work_dir=str(tmp_path / "work"),
                          output_dir=str(trained_classifier / "models"),
                          train_overrides={"image_size": [32, 32], "modalities": ["t1ce", "flair"]}), tmp_path)
    assert proc.returncode != 0
    line = one_error_line(proc.stderr, "error: ")
    assert "model.pt" in line and "does not fit SliceClassifier" in line, line
