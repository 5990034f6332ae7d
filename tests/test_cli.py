"""The `medadv` command: each subcommand on tiny data, and bad input as one line with exit status 2."""

from __future__ import annotations

import json

import pytest

from medadv_monai.cli import main


def test_synth_datalist_cache_stats(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), "--subjects", "4", "--shape", "[32,32,16]"]) == 0
    assert len([p for p in data.iterdir() if p.is_dir()]) == 4 and (data / "synthetic.stamp.json").is_file()
    assert main(["datalist", "--dataset_dir", str(data), "--out", str(tmp_path / "dl.json")]) == 0
    assert sum(len(v) for v in json.loads((tmp_path / "dl.json").read_text()).values()) == 4
    common = ["--dataset_dir", str(data), "--work_dir", str(tmp_path / "work"), "--image_size", "[32,32]"]
    assert main(["cache", *common]) == 0
    assert main(["stats", *common, "--out", str(tmp_path / "stats.json")]) == 0
    out = capsys.readouterr().out
    assert "subjects_built" in out and "positive" in out
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["total"]["subjects"] == 4 and stats["total"]["slices"] > 0


@pytest.mark.parametrize("args,message", [
    (["datalist", "--dataset_dir", "/nonexistent", "--out", "x.json"], "dataset_dir '/nonexistent' does not exist"),
    (["synth", "--out", "s", "--subjects", "0"], "subjects=0"),
    (["stats", "--config", "/nonexistent.yaml"], "config file '/nonexistent.yaml' does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medadv: error: ") and message in err[0]
    assert not list(tmp_path.iterdir())  # nothing written


def test_bench_quick_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--out", str(out), "--quick"]) == 0
    figures = json.loads(out.read_text())
    assert figures["data"]["cache_slices_per_s"] > 0 and figures["data"]["nifti_slices_per_s"] > 0
    assert figures["data"]["peak_rss_mb"] > 0
    assert figures["attacks"]["cpu"]["ratio"] > 0 and figures["attacks"]["cpu"]["model"] == "SliceClassifier"
    assert figures["attacks"]["cpu"]["shape"] == [1, 64, 64]  # the bundles' default input, also when quick
    assert figures["advgan"]["cpu"]["speedup"] > 0 and figures["advgan"]["peak_rss_mb"] > 0
    assert figures["advgan"]["cpu"]["generator"] == "AdvGANGenerator"
    assert "[data]" in capsys.readouterr().out
