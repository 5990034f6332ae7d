"""Model-zoo conformance of each bundle's ``configs/metadata.json``, checked offline.

``tests/data/meta_schema_20240725.json`` is the MONAI model-zoo metadata schema, vendored verbatim from the
MONAI-extra-test-data 0.8.1 release (the URL the metadata cites; text taken from the copy in
Project-MONAI/project-monai.github.io, commit 0c25c2d "Adding schemas", which states it was copied verbatim from
that release). Its md5 is pinned below so an edit to the vendored file is caught.

Each metadata.json must
- cite that schema by URL (the URL's file name is the vendored file's name), so the field names it uses
  (``required_packages_version``, the 2024 name; the 2022 schema wanted ``optional_packages_version``) are the
  ones the cited schema defines;
- validate against it with ``jsonschema`` and with MONAI's own ``monai.bundle.verify_metadata`` (which skips the
  download when ``filepath`` exists; a download attempt fails the test);
- carry numeric ``eval_metrics``, a ``network_data_format`` with ``inputs.image`` and ``outputs.pred``, and a
  changelog entry for its ``version``.
The negative tests show that each check fails when a required piece is taken away.
"""

from __future__ import annotations

import copy
import hashlib
import json
import numbers
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")  # in the `test` extra

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ("brats_slice_classifier", "brats_advgan", "brats_attack_eval", "brats_tumour_segmentation",
           "brats_adv_detection")
SCHEMA_PATH = ROOT / "tests" / "data" / "meta_schema_20240725.json"
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"  # of the file as published in the 0.8.1 release copy
SCHEMA_URL_PREFIX = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"


def _meta_path(bundle: str) -> Path:
    return ROOT / "bundles" / bundle / "configs" / "metadata.json"


def _load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def check_metadata(meta: dict) -> None:
    """All checks but MONAI's own; raises ``jsonschema.ValidationError`` or ``AssertionError``."""
    schema = _load_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls(schema).validate(meta)

    url = meta["schema"]
    assert url.startswith(SCHEMA_URL_PREFIX), url
    assert url.rsplit("/", 1)[-1] == SCHEMA_PATH.name, f"{url} does not name the vendored {SCHEMA_PATH.name}"

    metrics = meta.get("eval_metrics")
    assert isinstance(metrics, dict) and metrics, "eval_metrics must be a non-empty dict"
    for k, v in metrics.items():
        assert isinstance(v, numbers.Real) and not isinstance(v, bool), f"eval_metrics[{k!r}] = {v!r} is not a number"

    ndf = meta["network_data_format"]
    assert "image" in ndf.get("inputs", {}), "network_data_format.inputs.image missing"
    assert "pred" in ndf.get("outputs", {}), "network_data_format.outputs.pred missing"

    assert meta["version"] in meta.get("changelog", {}), f"no changelog entry for version {meta['version']}"


def monai_verify(meta_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``monai.bundle.verify_metadata`` against the vendored schema; any download attempt raises."""
    import monai.apps.utils
    from monai.bundle import verify_metadata

    def _no_download(*args, **kwargs):
        raise AssertionError(f"verify_metadata tried to download {args} {kwargs}")

    monkeypatch.setattr(monai.apps.utils, "_download_with_progress", _no_download)
    verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA_PATH), hash_val=SCHEMA_MD5, hash_type="md5")


def test_vendored_schema_is_pinned_and_valid():
    assert hashlib.md5(SCHEMA_PATH.read_bytes()).hexdigest() == SCHEMA_MD5
    schema = _load_schema()
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert "required_packages_version" in schema["required"]
    assert "optional_packages_version" not in schema["properties"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_conforms(bundle, monkeypatch):
    meta_file = _meta_path(bundle)
    check_metadata(json.loads(meta_file.read_text()))
    monai_verify(meta_file, monkeypatch)


# ---- negative tests: each check must be able to fail ----


def _drop(path: str):
    def mutate(meta):
        *parents, leaf = path.split(".")
        node = meta
        for p in parents:
            node = node[p]
        del node[leaf]

    return mutate


def _set(path: str, value):
    def mutate(meta):
        *parents, leaf = path.split(".")
        node = meta
        for p in parents:
            node = node[p]
        node[leaf] = value

    return mutate


def _rename_2022(meta):  # the pre-fix state: 2022 field name under the 2024 schema
    meta["optional_packages_version"] = meta.pop("required_packages_version")


SCHEMA_BREAKS = {  # caught by jsonschema and by MONAI's verify_metadata
    "no required_packages_version": _drop("required_packages_version"),
    "2022 field name": _rename_2022,
    "no network_data_format": _drop("network_data_format"),
    "no outputs": _drop("network_data_format.outputs"),
    "no version": _drop("version"),
    "no monai_version": _drop("monai_version"),
    "no authors": _drop("authors"),
    "eval_metrics not a dict": _set("eval_metrics", "see docs/README.md"),
    "image without dtype": _drop("network_data_format.inputs.image.dtype"),
}
OTHER_BREAKS = {  # caught by check_metadata's own checks
    "old schema url": _set(
        "schema", SCHEMA_URL_PREFIX + "meta_schema_20220324.json"
    ),
    "eval metric is a string": _set("eval_metrics", {"val_auc": "see docs/README.md"}),
    "eval metric is a bool": _set("eval_metrics", {"val_auc": True}),
    "empty eval_metrics": _set("eval_metrics", {}),
    "no inputs.image": lambda m: m["network_data_format"]["inputs"].update(
        {"img": m["network_data_format"]["inputs"].pop("image")}
    ),
    "no outputs.pred": lambda m: m["network_data_format"]["outputs"].update(
        {"logits": m["network_data_format"]["outputs"].pop("pred")}
    ),
    "version not in changelog": _set("version", "9.9.9"),
}


def _broken(bundle: str, mutate) -> dict:
    meta = copy.deepcopy(json.loads(_meta_path(bundle).read_text()))
    mutate(meta)
    return meta


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("case", sorted(SCHEMA_BREAKS))
def test_schema_break_is_caught(bundle, case, tmp_path, monkeypatch):
    meta = _broken(bundle, SCHEMA_BREAKS[case])
    with pytest.raises(jsonschema.ValidationError):
        check_metadata(meta)
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="Failed validating"):
        monai_verify(bad, monkeypatch)


@pytest.mark.parametrize("case", sorted(OTHER_BREAKS))
def test_other_break_is_caught(case):
    meta = _broken(BUNDLES[0], OTHER_BREAKS[case])
    with pytest.raises(AssertionError):
        check_metadata(meta)
