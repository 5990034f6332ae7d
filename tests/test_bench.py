"""The benchmarks (medadv_monai.bench): they time the bundles' own networks; figures and errors (no timing bounds)."""

from __future__ import annotations

import json

import pytest
from torch import nn

from medadv_monai.bench import (
    bench_advgan,
    bench_data,
    bench_pgd,
    bench_realsize,
    bundle_advgan,
    bundle_classifier,
    format_bench,
    run_benchmarks,
)
from medadv_monai.errors import MedAdvInputError
from medadv_monai.networks import AdvGANGenerator, SliceClassifier


def _same_layout(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)


def test_bundle_networks_are_the_configs_network_defs():
    net, shape = bundle_classifier()
    assert shape == (1, 64, 64) and not net.training  # modalities [t2], image_size [64, 64]
    assert _same_layout(net, SliceClassifier(1, channels=(32, 64, 128), batch_norm=True))
    classifier, generator, shape = bundle_advgan()
    assert shape == (1, 64, 64) and not generator.training and not classifier.training
    assert _same_layout(classifier, net)
    assert isinstance(generator, AdvGANGenerator)
    assert _same_layout(generator, AdvGANGenerator(1, channels=(16, 32, 64, 128, 128), num_res_units=0))
    net2, shape2 = bundle_classifier({"modalities": ["t1ce", "flair"], "image_size": [32, 32]})
    assert shape2 == (2, 32, 32) and net2.features[0].in_channels == 2
    assert bundle_advgan({"modalities": ["t1ce", "flair"]})[2] == (2, 64, 64)


def test_bench_pgd_times_the_bundle_classifier():
    r = bench_pgd(batch=2, repeats=1)
    assert {"model", "pgd_s", "limit_s", "ratio", "peak_mem_mb", "device", "batch", "shape", "steps"} <= set(r)
    assert r["model"] == "SliceClassifier" and r["shape"] == [1, 64, 64]
    assert r["pgd_s"] > 0 and r["limit_s"] > 0 and r["ratio"] > 0
    assert r["device"] == "cpu" and r["batch"] == 2 and r["steps"] == 10
    json.dumps(r)  # JSON-ready as it is


def test_bench_pgd_given_model_and_3d_shape():
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 1))
    r = bench_pgd(model, batch=2, shape=(1, 8, 8, 8), steps=2, repeats=1)
    assert r["model"] == "Sequential" and r["shape"] == [1, 8, 8, 8] and r["ratio"] > 0


def test_bench_pgd_overrides_change_the_channels():
    r = bench_pgd(batch=2, steps=1, repeats=1, overrides={"modalities": ["t1ce", "flair"], "image_size": [32, 32]})
    assert r["shape"] == [2, 32, 32]


@pytest.mark.parametrize("kwargs,message", [
    ({"shape": (4, 64, 64)}, "does not fit the bundle's classifier"),
    ({"shape": (1, 8, 8, 8)}, "does not fit the bundle's classifier"),
    ({"batch": 0}, "batch, steps and repeats must be >= 1"),
    ({"model": nn.Linear(2, 1), "shape": (2,)}, "shape must be (C, H, W) or (C, D, H, W)"),
])
def test_bench_pgd_bad_input(kwargs, message):
    with pytest.raises(MedAdvInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bench_pgd(**kwargs)


def test_bench_advgan_times_the_bundle_generator():
    r = bench_advgan(batch=2, repeats=1)
    assert r["classifier"] == "SliceClassifier" and r["generator"] == "AdvGANGenerator"
    assert r["shape"] == [1, 64, 64] and r["batch"] == 2
    assert r["advgan_s_per_image"] > 0 and r["pgd10_s_per_image"] > 0
    assert r["speedup"] == pytest.approx(r["pgd10_s_per_image"] / r["advgan_s_per_image"], rel=1.0)


def test_bench_advgan_given_networks_use_the_bundle_shape():
    classifier, generator = SliceClassifier(1, channels=(8,)).eval(), nn.Conv2d(1, 1, 3, padding=1)
    r = bench_advgan(classifier, generator, batch=2, repeats=1)
    assert r["generator"] == "Conv2d" and r["shape"] == [1, 64, 64]


def test_bench_data_small():
    r = bench_data(subjects=2, shape=(32, 32, 12), repeats=1)
    assert r["subjects"] == 2 and r["volume_shape"] == [32, 32, 12] and r["slices"] > 0
    assert r["nifti_slices_per_s"] > 0 and r["cache_slices_per_s"] > 0
    assert r["cache_speedup"] == pytest.approx(r["cache_slices_per_s"] / r["nifti_slices_per_s"])


def _check_realsize(r, subjects):
    positive = ["build_s_per_subject_1_worker", "build_s_per_subject_all_workers", "nifti_load_s_per_subject",
                "nifti_load_share_1_worker", "rss_mb_before_build", "peak_rss_mb_1_worker_process",
                "peak_rss_mb_all_workers_parent", "peak_rss_mb_per_worker", "shard_mb_per_subject",
                "nifti_mb_per_subject", "slices_per_subject", "brats2021_build_hours_all_workers",
                "brats2021_build_hours_1_worker", "brats2021_shards_gb"]
    assert all(r[k] > 0 for k in positive), {k: r[k] for k in positive}
    assert r["subjects"] == subjects and r["build_workers"] == 2 and r["image_size"] == [64, 64]
    assert r["peak_rss_mb_1_worker_process"] >= r["rss_mb_before_build"]
    assert r["brats2021_subjects"] == 1251
    assert r["brats2021_build_hours_all_workers"] == pytest.approx(1251 * r["build_s_per_subject_all_workers"] / 3600)
    assert r["brats2021_build_hours_1_worker"] == pytest.approx(1251 * r["build_s_per_subject_1_worker"] / 3600)
    assert r["brats2021_shards_gb"] == pytest.approx(1251 * r["shard_mb_per_subject"] / 1024)
    assert r["nifti_load_share_1_worker"] == pytest.approx(r["nifti_load_s_per_subject"]
                                                           / r["build_s_per_subject_1_worker"])
    json.dumps(r)


def test_bench_realsize_synthetic_figures_and_extrapolation():
    r = bench_realsize(subjects=2, shape=(24, 24, 12), workers=2)
    assert r["data"] == "synthetic" and r["volume_shape"] == [24, 24, 12] and r["voxel_mm"] == [1.0, 1.0, 1.0]
    _check_realsize(r, 2)
    table = format_bench({"realsize": r}).splitlines()
    assert table[0] == "[realsize]" and len(table) == len(r) + 1
    assert any(line.split()[0] == "brats2021_build_hours_all_workers" for line in table)


def test_bench_realsize_reads_a_given_folder_only(tmp_path):
    from medadv_monai.data import make_synthetic_brats

    data = tmp_path / "data"
    make_synthetic_brats(data, subjects=3, shape=(24, 24, 12), seed=1)
    before = sorted((p.relative_to(data), p.stat().st_mtime_ns) for p in data.rglob("*"))
    r = bench_realsize(data, subjects=2, workers=2)
    assert r["data"] == str(data.resolve()) and r["volume_shape"] == [24, 24, 12]
    _check_realsize(r, 2)
    assert sorted((p.relative_to(data), p.stat().st_mtime_ns) for p in data.rglob("*")) == before  # only read


def test_bench_realsize_section_reads_the_environment(tmp_path, monkeypatch):
    import medadv_monai.bench.realsize as realsize

    seen = []
    monkeypatch.setattr(realsize, "bench_realsize", lambda data_dir, **kw: seen.append((data_dir, kw)) or {})
    monkeypatch.setenv(realsize.DATA_ENV, str(tmp_path))
    realsize.section(quick=True)
    realsize.section(data_dir="/given")
    monkeypatch.delenv(realsize.DATA_ENV)
    realsize.section()
    assert seen == [(str(tmp_path), {"subjects": 2, "shape": (48, 48, 32)}), ("/given", {}), (None, {})]


@pytest.mark.parametrize("kwargs,message", [
    ({"subjects": 0}, "subjects and workers must be >= 1"),
    ({"shape": (24, 24)}, "shape must be (H, W, D)"),
    ({"data_dir": "/nonexistent/brats"}, "is not a folder"),
])
def test_bench_realsize_bad_input(kwargs, message):
    with pytest.raises(MedAdvInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bench_realsize(**kwargs)


def test_format_bench_flattens_nested_figures():
    text = format_bench({"machine": {"torch": "2"}, "attacks": {"cpu": {"ratio": 1.23456, "shape": [1, 64, 64]}}})
    lines = text.splitlines()
    assert lines[0] == "[machine]" and lines[2] == "[attacks]"
    assert lines[3].split() == ["cpu.ratio", "1.235"] and lines[4].split()[0] == "cpu.shape"


def test_run_benchmarks_unknown_section_and_missing_module(tmp_path, monkeypatch):
    with pytest.raises(MedAdvInputError, match="unknown benchmark section"):
        run_benchmarks(tmp_path / "b.json", only=["nope"])
    with pytest.raises(MedAdvInputError, match=r"unknown benchmark section\(s\) \['realsizes'\]"):
        run_benchmarks(tmp_path / "b.json", only="realsizes")  # one name, not its letters
    assert not (tmp_path / "b.json").exists()
    import medadv_monai.bench.runner as runner

    monkeypatch.setattr(runner, "SECTIONS", {"later": "medadv_monai.bench.not_built_yet"})
    out = run_benchmarks(tmp_path / "b.json")
    assert "not_built_yet" in out["later"]["skipped"]
    assert json.loads((tmp_path / "b.json").read_text())["later"] == out["later"]


def test_bench_peers_times_ours_against_torchattacks_on_the_bundle_classifier():
    from medadv_monai.bench import bench_peers

    r = bench_peers(batch=2, steps=2, queries=3, repeats=1)
    assert r["model"] == "SliceClassifier" and r["shape"] == [1, 64, 64] and r["torchattacks"]
    for name in ("apgd", "square", "cw_l2"):
        assert r[name]["ours_s"] > 0 and r[name]["torchattacks_s"] > 0 and r[name]["ratio"] > 0
        assert r[name]["ours_calls"] >= 1 and r[name]["torchattacks_calls"] >= 1
    assert r["apgd"]["ours_calls"] == 3 and r["cw_l2"]["ours_calls"] == 2  # steps + 1, and steps
    json.dumps(r)
