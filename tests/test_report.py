"""Reports a researcher can share: rates with intervals, HTML links, no machine paths, what produced them."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from medadv_monai.utils import RunLog
from medadv_monai.utils.logs import DETAIL_LOGGER
from medadv_monai.utils.provenance import portable_path, provenance, provenance_markdown
from medadv_monai.visualize import attack_examples, markdown_table, write_html


def test_rates_print_with_their_interval():
    rows = [{"attack": "pgd", "asr": 0.5, "asr_lo": 0.2366, "asr_hi": 0.7634, "n": 10},
            {"attack": "fgsm", "asr": float("nan"), "asr_lo": float("nan"), "asr_hi": float("nan"), "n": 0}]
    table = markdown_table(rows, ["attack", "n", "asr"]).splitlines()
    assert table[2] == "| PGD | 10 | 0.500 [0.24, 0.76] |"
    assert table[3] == "| FGSM | 0 | – |"


def test_html_links_point_at_the_html_versions(tmp_path):
    text = "[full table](attack_eval/report.md) and [web](https://example.org/x.md) ![fig](figures/a.png)"
    html = write_html(text, tmp_path / "report.html").read_text()
    assert 'href="attack_eval/report.html"' in html and 'href="https://example.org/x.md"' in html
    assert 'src="figures/a.png"' in html


def test_portable_paths_never_absolute(tmp_path):
    base = tmp_path / "out"
    assert portable_path(base / "data" / "x.nii.gz", base) == os.path.join("data", "x.nii.gz")
    repo = Path(__file__).resolve().parents[1]
    assert portable_path(repo / "bundles" / "b", base) == os.path.join("<repo>", "bundles", "b")
    assert portable_path(Path.home() / "scans", base) == os.path.join("~", "scans")
    elsewhere = portable_path(tmp_path / "models" / "model.pt", base)
    assert not os.path.isabs(elsewhere) and elsewhere == os.path.join("..", "models", "model.pt")
    assert portable_path("relative/path", base) == "relative/path"


def test_provenance_records_code_packages_command_and_settings(tmp_path):
    info = provenance(tmp_path, argv=["/usr/bin/medadv", "demo", "--out", str(tmp_path / "demo")], seed=3)
    assert info["command"] == "medadv demo --out demo" and info["seed"] == 3
    repo = Path(__file__).resolve().parents[1] / "bundles"
    files = f"['{repo / 'a.yaml'}','{tmp_path / 'b.yaml'}']"  # a config list, as monai.bundle takes it
    listed = provenance(tmp_path, argv=["__main__.py", "run", "--config_file", files])["command"]
    assert listed == "__main__.py run --config_file ['<repo>/bundles/a.yaml','b.yaml']"
    assert {"monai", "torch", "medadv-monai"} <= set(info["packages"]) and info["git_commit"]
    text = provenance_markdown(info)
    assert text.startswith("## Reproduce") and "- seed: `3`" in text and str(tmp_path) not in text


def test_run_log_keeps_detail_lines_off_the_console(tmp_path, capsys):
    log = RunLog(tmp_path / "runs" / "train.log").open()
    console = logging.StreamHandler()
    logging.getLogger().addHandler(console)
    try:
        summary = logging.getLogger("medadv.test.summary")
        summary.setLevel(logging.INFO)
        summary.info("Epoch[1] Metrics -- acc: 0.9")
        logging.getLogger(DETAIL_LOGGER).info("Epoch: 1/1, Iter: 3/9 -- loss: 0.5")
    finally:
        logging.getLogger().removeHandler(console)
        log.close()
    logging.getLogger(DETAIL_LOGGER).info("after close")
    text = (tmp_path / "runs" / "train.log").read_text()
    assert "Epoch[1] Metrics" in text and "Iter: 3/9" in text and "after close" not in text
    err = capsys.readouterr().err
    assert "Epoch[1] Metrics" in err and "Iter: 3/9" not in err


def test_attack_examples_figure(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((2, 16, 16))
    samples = {"image": x, "adv": np.clip(x + 0.03, 0, 1), "mask": np.ones_like(x),
               "rows": [{"subject": "s1", "slice_index": 4, "label": 1, "clean_prob": 0.9, "clean_pred": 1,
                         "adv_prob": 0.2, "adv_pred": 0},
                        {"subject": "s2", "slice_index": 7, "label": 0, "clean_prob": 0.1, "clean_pred": 0,
                         "adv_prob": 0.3, "adv_pred": 0}]}
    path = attack_examples(samples, tmp_path / "grid.png", eps=8 / 255, title="PGD")
    assert path.is_file() and path.stat().st_size > 10_000
