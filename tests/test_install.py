"""Where the bundles are found, and a non-editable ``pip install .`` that must bring them along.

The slow test builds a wheel from a copy of the source (the files git tracks plus new ones it does not ignore,
so no local ``models/``, ``work/`` or ``.venv``), installs it with ``--no-deps`` into a fresh venv of the base
interpreter and runs the installed ``medadv`` from outside the repository. Nothing is downloaded: the wheel is
built with ``--no-build-isolation`` by this interpreter's setuptools, and the new venv sees this environment's
dependencies (torch, monai, ...) through a ``.pth`` file of plain directory lines. Plain lines add a directory to
``sys.path`` without running the ``.pth`` files in it, so an editable install of medadv-monai here (its
``__editable__*.pth`` finder) cannot leak into the new venv; the test checks that the package and the bundles
are imported from the venv, not from this checkout.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from medadv_monai import bundle
from medadv_monai.bundle import BUNDLES_ENV, bundle_path, bundles_dir
from medadv_monai.errors import MedAdvInputError

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("brats_slice_classifier", "brats_advgan", "brats_attack_eval", "brats_tumour_segmentation",
           "brats_adv_detection")
SHARE = Path("share") / "medadv-monai" / "bundles"
# bundle outputs: must never be installed
OUTPUT_DIRS = ("models", "work", "eval", "runs")
# the installed medadv-monai's dependencies, whose folders the new venv borrows from this environment
DEPENDENCIES = ("torch", "monai", "ignite", "nibabel", "itk", "fire", "numpy", "scipy", "skimage", "tensorboard",
                "yaml", "tqdm", "matplotlib", "markdown", "nilearn", "sklearn")


def _fake_bundles(root: Path) -> Path:
    """A folder that passes as a bundles folder (holds the marker config)."""
    config = root / "brats_slice_classifier" / "configs" / "train.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("image_size: [32, 32]\n")
    return root


# --- bundles_dir(): the search order -----------------------------------------------------------------------------


def test_bundles_env_wins(tmp_path, monkeypatch):
    chosen = _fake_bundles(tmp_path / "mine")
    monkeypatch.setenv(BUNDLES_ENV, str(chosen))
    assert bundles_dir() == chosen
    assert bundle_path("brats_slice_classifier", "configs", "train.yaml") == chosen / bundle._MARKER


def test_bundles_env_without_bundles_is_an_error(tmp_path, monkeypatch):
    empty = tmp_path / "no_bundles_here"
    empty.mkdir()
    monkeypatch.setenv(BUNDLES_ENV, str(empty))
    with pytest.raises(MedAdvInputError) as info:
        bundles_dir()  # not silently replaced by the checkout's bundles
    assert BUNDLES_ENV in str(info.value) and str(empty) in str(info.value)


def test_bundles_checkout_then_prefix(tmp_path, monkeypatch):
    monkeypatch.delenv(BUNDLES_ENV, raising=False)
    if Path(bundle.__file__).resolve().parents[1] == REPO:  # imported from this checkout (clone / editable)
        assert bundles_dir() == REPO / "bundles"

    # installed: no bundles/ next to the package, so <sys.prefix>/share/medadv-monai/bundles
    installed = tmp_path / "venv" / "lib" / "site-packages" / "medadv_monai" / "bundle.py"
    monkeypatch.setattr(bundle, "__file__", str(installed))
    prefix = tmp_path / "venv"
    monkeypatch.setattr(sys, "prefix", str(prefix))
    with pytest.raises(MedAdvInputError) as info:
        bundles_dir()
    assert str(prefix / SHARE) in str(info.value) and BUNDLES_ENV in str(info.value)
    _fake_bundles(prefix / SHARE)
    assert bundles_dir() == prefix / SHARE

    # a checkout's bundles/ wins over the prefix
    _fake_bundles(tmp_path / "venv" / "lib" / "site-packages" / "bundles")
    assert bundles_dir() == tmp_path / "venv" / "lib" / "site-packages" / "bundles"


# --- pip install . (non-editable) --------------------------------------------------------------------------------


def _run(cmd: list, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} exited {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return res


def _source_copy(dest: Path) -> Path:
    """Copy the source tree as git sees it (tracked files plus new files that are not ignored)."""
    try:
        listing = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                                  "--exclude-standard"], capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("needs git and a git checkout of the repository")
    for name in filter(None, listing.decode().split("\0")):
        src = REPO / name
        if src.is_file():  # skips files deleted but not yet committed
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _dependency_dirs() -> list[str]:
    """The folders this interpreter imports medadv-monai's dependencies from (site-packages, usually one)."""
    dirs = []
    for name in DEPENDENCIES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            pytest.skip(f"dependency {name} is not installed here")
        dirs.append(str(Path(list(spec.submodule_search_locations)[0]).parent))
    dirs += site.getsitepackages()
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir()))


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="venv layout (bin/) and console scripts as on POSIX")
def test_pip_install_non_editable(tmp_path):
    for dist, needed, why in (("setuptools", (64, 0), "to build the wheel without isolation"),
                              ("pip", (22, 3), "for pip install --python")):
        try:  # by metadata: importing setuptools here would fight over distutils
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"needs {dist} {why}")
        if tuple(int(p) for p in version.split(".")[:2]) < needed:
            pytest.skip(f"needs {dist}>={'.'.join(map(str, needed))} {why}, found {version}")

    env = {k: v for k, v in os.environ.items()
           if k not in (BUNDLES_ENV, "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
           and not k.startswith("PIP_")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1", PAGER="cat",
               OMP_NUM_THREADS="2")

    # 1. a wheel from a copy of the sources, with bundle outputs lying around that must not be packaged
    src = _source_copy(tmp_path / "src")
    expected = sorted(str(p.relative_to(src / "bundles")) for p in (src / "bundles").rglob("*") if p.is_file())
    for name in BUNDLES:
        for out in OUTPUT_DIRS:
            (src / "bundles" / name / out).mkdir(exist_ok=True)
            (src / "bundles" / name / out / "decoy.json").write_text("{}")
    (src / "bundles" / "brats_slice_classifier" / "models" / "model.pt").write_bytes(b"not a model")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", dist, src], cwd=tmp_path, env=env, timeout=180)
    (wheel,) = dist.glob("medadv_monai-*.whl")
    data = Path(f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.data") / "data" / SHARE
    with zipfile.ZipFile(wheel) as zf:
        packaged = sorted(str(Path(n).relative_to(data)) for n in zf.namelist() if Path(n).is_relative_to(data))
    assert packaged == expected, "bundle files in the wheel differ from the source (see [tool.setuptools.data-files])"
    assert {p.split(os.sep)[0] for p in packaged} == set(BUNDLES)

    # 2. a fresh venv of the base interpreter (which has no medadv-monai), the wheel installed without deps
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    _run([base_python, "-m", "venv", "--without-pip", venv], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=tmp_path, env=env, timeout=180)
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=tmp_path, env=env).stdout.strip())
    (purelib / "_medadv_test_deps.pth").write_text("\n".join(_dependency_dirs()) + "\n")  # after install: pip
    # would otherwise see this environment's medadv-monai 0.1.0 and refuse to install the same version

    # 3. the installed package and bundles are used, from a folder outside the repository
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    share = (venv / SHARE).resolve()
    where = json.loads(_run([python, "-c", "import json, medadv_monai, medadv_monai.bundle as b; "
                             "print(json.dumps([medadv_monai.__file__, str(b.bundles_dir())]))"],
                            cwd=run_dir, env=env).stdout)
    package_file, found = Path(where[0]).resolve(), Path(where[1]).resolve()
    assert package_file.is_relative_to(venv.resolve()) and not package_file.is_relative_to(REPO), package_file
    assert found == share, found
    installed = sorted(str(p.relative_to(share)) for p in share.rglob("*") if p.is_file())
    assert installed == expected

    medadv = venv / "bin" / "medadv"
    _run([medadv, "synth", "--out", "data", "--subjects", 4, "--shape", "[32,32,16]"], cwd=run_dir, env=env)
    _run([medadv, "stats", "--dataset_dir", "data", "--work_dir", "work", "--image_size", "[32,32]",
          "--out", "stats.json"], cwd=run_dir, env=env, timeout=180)
    rows = json.loads((run_dir / "stats.json").read_text())
    assert rows["total"]["subjects"] == 4 and rows["total"]["slices"] > 0, rows
    assert sorted(str(p.relative_to(share)) for p in share.rglob("*") if p.is_file()) == expected  # untouched
    shown = _run([medadv, "stats", "--help"], cwd=run_dir, env=env)  # fire shows help on stderr
    assert "--config" in shown.stdout + shown.stderr
