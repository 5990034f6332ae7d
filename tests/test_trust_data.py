"""Trust the data layer: nothing stale reused, nothing wrong cached, and one clear line for every bad input.

Each test is a case that went wrong before (a stale datalist, a 4D modality cached as extra channels, a flipped
modality cached mirrored, a same-size replacement or a damaged shard reused, a progress bar drawn over the error
line, build workers outliving a killed `medadv cache`, a subject folder read as a glob, an absolute alias pattern,
empty splits, disk full): exit status or exception, one line naming the problem, nothing half-written.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medadv_monai.cli import main
from medadv_monai.data import build_datalist, ensure_datalist, find_subjects, make_synthetic_brats
from medadv_monai.errors import MedAdvInputError
from tests.helpers import CLASSIFIER_TRAIN, REPO, build_cache, classifier_config, copy_subjects

MODS = ("t1", "t1ce", "t2", "flair")
KEYS = (*MODS, "seg")


def _nothing_half_written(work: Path, subject: str | None = None) -> None:
    assert not [p for p in work.rglob("*") if p.name.endswith(".tmp")]
    if subject is not None:
        assert not [p for p in work.glob("slice_cache/*/*") if p.is_dir() and p.name.startswith(subject + "-")]


def _one_line(capsys, *parts: str) -> str:
    """The one line of a failed `medadv` command (MONAI's trust note, printed once per process, aside)."""
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("medadv: note: ")]
    assert len(err) == 1 and err[0].startswith("medadv: error: "), err
    assert all(p in err[0] for p in parts), err[0]
    return err[0]


def _last_line(capsys, *parts: str) -> str:
    """The error after a progress bar: the last line, on a line of its own, and no traceback."""
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("medadv: error: ") and "\r" not in last and "Traceback" not in err, repr(err[-2000:])
    assert all(p in last for p in parts), last
    return last


def _resave(path: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(arr, affine), path)


def _volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


# ------------------------------------------------------------------------------------------ 1: stale datalists
def test_datalist_is_rebuilt_when_what_made_it_changes(synth_dir, tmp_path):
    data = copy_subjects(synth_dir, tmp_path / "data", n=4)
    path = tmp_path / "work" / "datalist.json"
    first = ensure_datalist(data, path)
    stamp_time = path.stat().st_mtime_ns
    assert ensure_datalist(data, path) == first and path.stat().st_mtime_ns == stamp_time  # reused as it is
    with pytest.raises(MedAdvInputError, match="does not exist"):  # never the old list for another folder
        ensure_datalist(tmp_path / "nope", path)
    for settings in ({"seed": 3}, {"fractions": [0.25, 0.5, 0.25]}):
        rebuilt = ensure_datalist(data, path, **settings)
        assert rebuilt == build_datalist(data, **settings) != first, settings
    with pytest.raises(MedAdvInputError, match="no file for 't1'"):  # other aliases: matched again
        ensure_datalist(data, path, layout="brats2023")
    other = copy_subjects(data, tmp_path / "other")  # the same subjects in another folder
    assert all(e["t1"].startswith(str(other.resolve())) for e in ensure_datalist(other, path)["training"])
    extra = sorted(synth_dir.iterdir())[5]
    shutil.copytree(extra, data / extra.name)  # a subject added
    assert sum(len(v) for v in ensure_datalist(data, path).values()) == 5
    path.write_text("{")  # the file itself damaged
    assert ensure_datalist(data, path) == build_datalist(data)


def test_stats_with_a_missing_dataset_dir_is_an_error_not_the_old_table(synth_dir, tmp_path, capsys):
    data = copy_subjects(synth_dir, tmp_path / "data", n=3)
    common = ["--work_dir", str(tmp_path / "work"), "--image_size", "[32,32]"]
    assert main(["stats", "--dataset_dir", str(data), *common]) == 0
    capsys.readouterr()
    assert main(["stats", "--dataset_dir", "/does/not/exist", *common]) == 2
    _one_line(capsys, "dataset_dir '/does/not/exist' does not exist")


# ------------------------------------------------------------------------------------------ 10: empty splits
def test_empty_split_is_refused_unless_its_fraction_is_zero(synth_dir, tmp_path, capsys):
    data = copy_subjects(synth_dir, tmp_path / "data", n=2)
    with pytest.raises(MedAdvInputError, match=r"2 subject\(s\) split by split_fractions \[0.7, 0.15, 0.15\] give "
                                               r"training 2, validation 0, test 0 subject\(s\)"):
        ensure_datalist(data, tmp_path / "work" / "datalist.json")
    assert not (tmp_path / "work").exists()
    training_only = ensure_datalist(data, tmp_path / "w2" / "datalist.json", fractions=[1.0, 0.0, 0.0])
    assert [len(v) for v in training_only.values()] == [2, 0, 0]
    assert main(["stats", "--dataset_dir", str(data), "--work_dir", str(tmp_path / "w3")]) == 2
    _one_line(capsys, "validation and test split would be empty", "split_fractions")
    assert not (tmp_path / "w3" / "datalist.json").exists()


# ------------------------------------------------------------------------------------------ 2, 3: volumes
def test_4d_modality_is_refused_naming_the_file_and_its_shape(synth_dir, tmp_path):
    data = copy_subjects(synth_dir, tmp_path / "data", n=3)
    subject = sorted(data.iterdir())[1]
    victim = subject / f"{subject.name}_t2.nii.gz"
    arr, affine = _volume(victim)
    _resave(victim, np.stack([arr, arr], axis=-1), affine)  # would become two channels and shift flair
    work = tmp_path / "work"
    with pytest.raises(MedAdvInputError, match=r"'t2' has shape \(40, 40, 20, 2\) \(4D\); expected one 3D volume"
                       ) as err:
        build_cache(classifier_config(data, work, split_fractions=[1.0, 0.0, 0.0]))
    assert str(victim) in str(err.value) and "\n" not in str(err.value)
    _nothing_half_written(work, subject.name)


def test_4d_file_with_a_singleton_4th_dim_reads_as_its_3d_volume(synth_config, tmp_path):
    cache, datalist = synth_config.get_parsed_content("slice_cache"), synth_config.get_parsed_content("datalist")
    entry = datalist["validation"][0]
    arr, affine = _volume(Path(entry["t2"]))
    single = tmp_path / "t2_4d.nii.gz"
    _resave(single, arr[..., None], affine)
    assert nib.load(single).shape == (*arr.shape, 1)
    np.testing.assert_array_equal(cache.run_chain({**entry, "t2": str(single)})["images"],
                                  cache.run_chain(entry)["images"])


@pytest.mark.parametrize("what,change", [("origin", (0, 3, 2.0)), ("voxel spacing", (2, 2, 1.5))])
def test_modalities_on_another_grid_are_refused_naming_both_files(what, change, synth_dir, tmp_path):
    data = copy_subjects(synth_dir, tmp_path / "data", n=3)
    subject = sorted(data.iterdir())[0]
    victim, ref = (subject / f"{subject.name}_{k}.nii.gz" for k in ("t1ce", "t1"))
    arr, affine = _volume(victim)
    affine = affine.copy()
    affine[change[0], change[1]] += change[2]
    _resave(victim, arr, affine)
    work = tmp_path / "work"
    with pytest.raises(MedAdvInputError, match=f"'t1ce' and 't1' .* differ in {what}") as err:
        build_cache(classifier_config(data, work, split_fractions=[1.0, 0.0, 0.0]))
    assert str(victim) in str(err.value) and str(ref) in str(err.value)
    _nothing_half_written(work, subject.name)


def test_flipped_modality_is_refused_or_reoriented_with_the_option(synth_dir, synth_config, tmp_path):
    data = copy_subjects(synth_dir, tmp_path / "data", n=3)
    subject = sorted(data.iterdir())[0]
    victim = subject / f"{subject.name}_t2.nii.gz"
    arr, affine = _volume(victim)
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, arr.shape[0] - 1
    _resave(victim, np.ascontiguousarray(arr[::-1]), affine @ flip)  # stored mirrored, header says so
    work = tmp_path / "work"
    with pytest.raises(MedAdvInputError, match=r"'t2' and 't1' .* differ in orientation: LAS vs RAS; .*"
                                               r"--orientation RAS") as err:
        build_cache(classifier_config(data, work, split_fractions=[1.0, 0.0, 0.0]))
    assert str(victim) in str(err.value)
    _nothing_half_written(work, subject.name)
    # with the option every volume is reoriented on load: exactly the slices of the file as it was
    parser = classifier_config(data, work, split_fractions=[1.0, 0.0, 0.0])
    parser["slice_transforms#transforms#0#orientation"] = "RAS"
    cache = parser.get_parsed_content("slice_cache")
    assert cache.path != synth_config.get_parsed_content("slice_cache").path  # the option shapes the cache
    entry = next(e for e in parser.get_parsed_content("datalist")["training"] if e["subject"] == subject.name)
    original = next(e for e in find_subjects(synth_dir) if e["subject"] == subject.name)
    expected = synth_config.get_parsed_content("slice_cache").run_chain(original)
    got = cache.run_chain(entry)
    np.testing.assert_array_equal(got["images"], expected["images"])
    np.testing.assert_array_equal(got["mask"], expected["mask"])


def test_unknown_orientation_is_an_error():
    from medadv_monai.data import LoadVolumesd

    with pytest.raises(MedAdvInputError, match="orientation 'RAR': expected three axis codes"):
        LoadVolumesd(["t1"], orientation="RAR")


# ------------------------------------------------------------------------------------------ 4, 5: the cache
def test_same_size_same_time_replacement_is_rebuilt(synth_dir, tmp_path):
    data = tmp_path / "data"
    for src in sorted(synth_dir.iterdir())[:2]:  # uncompressed, so other content keeps the size
        (data / src.name).mkdir(parents=True)
        for key in KEYS:
            arr, affine = _volume(src / f"{src.name}_{key}.nii.gz")
            _resave(data / src.name / f"{src.name}_{key}.nii", arr, affine)
    parser = classifier_config(data, tmp_path / "work", split_fractions=[1.0, 0.0, 0.0])
    cache, items = parser.get_parsed_content("slice_cache"), parser.get_parsed_content("datalist")["training"]
    assert cache.build(items)["subjects_built"] == 2
    victim = Path(items[0]["t2"])
    before = victim.stat()
    arr, affine = _volume(victim)
    _resave(victim, np.ascontiguousarray(arr[:, ::-1]), affine)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (victim.stat().st_size, victim.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert cache.missing(items) == [items[0]]
    assert cache.build(items)["subjects_built"] == 1
    ds = cache.dataset([items[0]], modalities=list(MODS), build=False)
    np.testing.assert_array_equal(ds[0]["image"].numpy(), cache.run_chain(items[0])["images"][0])


def test_each_file_is_digested_once_per_call(synth_config, monkeypatch):
    import medadv_monai.data.cache as cache_module

    calls: collections.Counter = collections.Counter()
    real = cache_module.file_digest

    def counting(path):
        calls[str(path)] += 1
        return real(path)

    monkeypatch.setattr(cache_module, "file_digest", counting)
    cache, datalist = synth_config.get_parsed_content("slice_cache"), synth_config.get_parsed_content("datalist")
    cache.datasets(datalist, modalities=["t2"])  # one build and three datasets
    inputs = {str(e[k]) for items in datalist.values() for e in items for k in KEYS}
    assert inputs <= set(calls) and set(calls.values()) == {1}


def test_damaged_shard_is_rebuilt_by_stats_or_named_where_building_is_off(synth_dir, tmp_path, capsys):
    data = copy_subjects(synth_dir, tmp_path / "data", n=3)
    work = tmp_path / "work"
    common = ["--dataset_dir", str(data), "--work_dir", str(work), "--image_size", "[32,32]"]
    assert main(["cache", *common]) == 0
    parser = classifier_config(data, work)
    cache, datalist = parser.get_parsed_content("slice_cache"), parser.get_parsed_content("datalist")
    items = [i for v in datalist.values() for i in v]
    shard = cache.shard_dir(items[0])
    images = shard / "images.npy"
    good = images.read_bytes()
    images.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(MedAdvInputError, match=r"shard '.*' is damaged \(images.npy has \d+ bytes where slices.json "
                                               r"records \d+\); run `medadv cache`"):
        cache.slices(items, build=False)
    capsys.readouterr()
    assert main(["stats", *common]) == 0
    assert images.read_bytes() == good  # rebuilt, and nothing else
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF  # same size, other content
    images.write_bytes(bytes(flipped))
    assert cache.missing(items) == [items[0]]
    (shard / "slices.json").write_text("{")
    with pytest.raises(MedAdvInputError, match="slices.json is unreadable"):
        cache.dataset(items, build=False)
    assert len(cache.dataset(items)) > 0 and images.read_bytes() == good


# ------------------------------------------------------------------------------------------ 6, 7: medadv cache
def test_cache_error_line_is_not_drawn_over_by_the_progress_bar(synth_dir, tmp_path, capsys):
    data = copy_subjects(synth_dir, tmp_path / "data", n=3)
    subject = sorted(data.iterdir())[1]
    victim = subject / f"{subject.name}_flair.nii.gz"
    arr, affine = _volume(victim)
    _resave(victim, np.zeros_like(arr), affine)
    parser = classifier_config(data, tmp_path / "work", split_fractions=[1.0, 0.0, 0.0])
    cache, items = parser.get_parsed_content("slice_cache"), parser.get_parsed_content("datalist")["training"]
    capsys.readouterr()
    with pytest.raises(MedAdvInputError, match="is all zero"):
        cache.build(items, progress=True)
    assert capsys.readouterr().err.endswith("\n")  # the bar was closed before the error left build()
    args = ["cache", "--dataset_dir", str(data), "--work_dir", str(tmp_path / "work"), "--image_size", "[32,32]",
            "--split_fractions", "[1.0,0.0,0.0]"]
    assert main(args) == 2
    _last_line(capsys, str(victim), "is all zero")


def _process_table() -> dict[int, tuple[str, int]]:
    """``{pid: (state, parent pid)}`` of every process, from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(stat.parent.name)] = (fields[0], int(fields[1]))
    return table


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_killed_cache_leaves_no_worker_behind(tmp_path):
    make_synthetic_brats(tmp_path / "data", subjects=8, shape=(96, 96, 64), seed=0)  # a few seconds to build
    extra = tmp_path / "two_workers.yaml"
    extra.write_text("slice_cache#num_workers: 2\n")
    args = [sys.executable, "-m", "medadv_monai", "cache", "--config", f"['{CLASSIFIER_TRAIN}','{extra}']",
            "--dataset_dir", str(tmp_path / "data"), "--work_dir", str(tmp_path / "work"),
            "--split_fractions", "[1.0,0.0,0.0]"]
    proc = subprocess.Popen(args, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        while len(workers) < 2:
            assert proc.poll() is None, "medadv cache ended before its workers were seen"
            assert time.time() < deadline
            workers = [pid for pid, (_, ppid) in _process_table().items() if ppid == proc.pid]
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 15
        while time.time() < deadline:
            alive = [pid for pid in workers if _process_table().get(pid, ("X",))[0] not in "ZX"]
            if not alive:
                break
            time.sleep(0.1)
        assert not alive, f"build workers {alive} outlived the killed `medadv cache`"
    finally:
        for pid in [proc.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.wait(timeout=30)


# ------------------------------------------------------------------------------------------ 8, 9: aliases
def test_subject_folder_name_is_matched_literally(synth_dir, tmp_path):
    src = sorted(synth_dir.iterdir())[0]
    sid = "sub[01]"
    root = tmp_path / "data"
    (root / sid).mkdir(parents=True)
    for key in KEYS:
        shutil.copy(src / f"{src.name}_{key}.nii.gz", root / sid / f"{sid}_{key}.nii.gz")
    shutil.copy(src / f"{src.name}_t2.nii.gz", root / sid / "sub0_t1.nii.gz")  # what the glob reading would take
    for aliases in ("auto", "brats2021"):
        (entry,) = find_subjects(root, layout=aliases)
        assert entry["t1"] == str((root / sid / f"{sid}_t1.nii.gz").resolve()), aliases


@pytest.mark.parametrize("pattern,message", [
    ("/data/{subject}_t1.nii.gz", "is absolute; patterns are relative to the subject folder"),
    ("{subj}_t1.nii.gz", "only {subject} may stand in braces"),
])
def test_bad_alias_pattern_is_one_line(pattern, message, synth_dir, tmp_path, capsys):
    table = {**{k: [f"{{subject}}_{k}.nii.gz"] for k in KEYS}, "t1": [pattern]}
    with pytest.raises(MedAdvInputError, match=f"layout: pattern '{pattern}' for 't1'"):
        find_subjects(synth_dir, layout=table)
    out = tmp_path / "dl.json"
    assert main(["datalist", "--dataset_dir", str(synth_dir), "--out", str(out), "--layout", json.dumps(table)]) == 2
    _one_line(capsys, message)
    assert not out.exists()


# ------------------------------------------------------------------------------------------ 11: write failures
def test_disk_full_or_denied_while_writing_is_one_line_naming_the_path(synth_dir, tmp_path, capsys, monkeypatch):
    data = copy_subjects(synth_dir, tmp_path / "data", n=3)
    work = tmp_path / "work"
    args = ["cache", "--dataset_dir", str(data), "--work_dir", str(work), "--image_size", "[32,32]",
            "--split_fractions", "[1.0,0.0,0.0]"]
    real_write_text = Path.write_text

    def full_datalist(self, *a, **k):
        if ".datalist.json." in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", full_datalist)
        with pytest.raises(MedAdvInputError, match="cannot write it"):
            ensure_datalist(data, work / "datalist.json", fractions=[1.0, 0.0, 0.0])
        assert main(args) == 2
    _one_line(capsys, f"datalist '{work / 'datalist.json'}': cannot write it (No space left on device)")
    assert not (work / "datalist.json").exists()
    _nothing_half_written(work)

    real_save = np.save

    def full_shard(file, *a, **k):
        if str(file).endswith("mask.npy"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(file, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(np, "save", full_shard)  # forked build workers inherit it
        parser = classifier_config(data, work, split_fractions=[1.0, 0.0, 0.0])
        with pytest.raises(MedAdvInputError, match="cannot write it"):
            build_cache(parser)
        assert main(args) == 2
    _last_line(capsys, "cannot write it (No space left on device)", str(work / "slice_cache"))
    assert not [p for p in work.glob("slice_cache/*/*") if p.is_dir()]
    _nothing_half_written(work)

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkdtemp", denied)
        assert main(args) == 2
    _last_line(capsys, "cannot write it (Permission denied)", str(work / "slice_cache"))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert main([*args[:3], "--work_dir", str(a_file / "work"), *args[5:]]) == 2  # a file where a folder should be
    _one_line(capsys, f"datalist '{a_file / 'work' / 'datalist.json'}': cannot write it")
    assert main([*args, "--cache_dir", str(a_file / "cache")]) == 2
    _one_line(capsys, f"slice cache '{a_file / 'cache'}", "cannot write it")
