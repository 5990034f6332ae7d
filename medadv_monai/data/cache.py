"""Slice cache: run the config's slice transform chain once per subject and keep the slices as ``.npy`` shards.

The chain in the bundle config stays the one place that says how a slice is made; the cache only runs it and
stores every slice's modalities (the whole modality set), tumour mask and label, so a bundle picks its input
channels with a ``modalities`` list and never rebuilds for a modality swap.

Layout::

    <cache_dir>/<chain fingerprint>/
        chain.json                      what the fingerprint was computed from (for people)
        <subject>-<inputs fingerprint>/ one shard per subject, written atomically
            images.npy                  (S, C, H, W) float32, the modality set's channels in its order
            mask.npy                    (S, 1, H, W) uint8 tumour mask
            slices.json                 subject, slice_index, label, nonzero_fraction per slice; the modality set;
                                        the content digest of each input file and the size and checksum of each
                                        .npy file

The chain fingerprint is a hash of the chain's classes and settings (every transform's attributes), so editing
any setting that shapes a slice (size, percentiles, labels, thresholds, reader, ...) selects a new folder and the
cache is rebuilt (the modality set is one of them: it is the stored channels). A subject's shard is keyed by the
content digests of its input files (:func:`~medadv_monai.utils.fingerprint.file_digest`, computed once per file per
call) and the entry's other fields (its layout, an MSD channel map), so a file replaced by other content, or read
under another layout, is rebuilt, whatever its size and time stamp, and nothing else. Before a shard is used
(:meth:`SliceCache.missing`, :meth:`~SliceCache.slices`, :meth:`~SliceCache.dataset`, ``medadv stats``) its files are
checked against the sizes and checksums in its ``slices.json``; a damaged shard is rebuilt, or, where building is
not allowed, named in an error. Build workers end with the process that started them. Reads are memory-mapped.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import Compose, Transform

from medadv_monai.data.layouts import MODALITIES, SEG_KEY
from medadv_monai.errors import MedAdvInputError, find_input_error
from medadv_monai.utils import atomic_dir, save_json
from medadv_monai.utils.fingerprint import describe, file_digest, fingerprint

__all__ = ["CACHE_FORMAT", "LoadCachedSliced", "SliceCache", "SliceDataset", "pos_weight", "transform_fingerprint"]

CACHE_FORMAT = 3  # 2: shards keyed by input content, slices.json records each file's size and checksum; 3: shards
#                   keyed by the entry's layout and channel map too, slices.json records the modality set
_ARRAYS = ("images.npy", "mask.npy")
_REBUILD = "run `medadv cache` with the same config and overrides to rebuild it"


def transform_fingerprint(transform: Callable) -> tuple[str, Any]:
    """Fingerprint of a transform chain: ``(sha256 hex, description)`` of its classes and settings."""
    description = {"format": CACHE_FORMAT, "chain": describe(transform)}
    return fingerprint(description), description


class SliceCache:
    """Builds and reads the slice cache of one transform chain.

    Args:
        cache_dir: root folder; each chain gets its own sub-folder named by its fingerprint.
        transform: the chain that turns a datalist entry into a list of slice dicts (a MONAI ``Compose``).
        image_keys: modality keys the chain outputs, stored as channels in this order.
        mask_key: tumour mask key the chain outputs.
        label_key: slice label key the chain outputs.
        file_keys: datalist keys whose files feed the chain (their content digests key each subject's shard;
            default ``image_keys`` and ``seg``).
        num_workers: processes used to build (default: all cores).
    """

    def __init__(self, cache_dir: str | os.PathLike, transform: Callable, image_keys: Sequence[str] = MODALITIES,
                 mask_key: str = "mask", label_key: str = "label", file_keys: Sequence[str] | None = None,
                 num_workers: int | None = None) -> None:
        self.transform = transform
        self.image_keys = tuple(image_keys)
        self.mask_key, self.label_key = mask_key, label_key
        self.file_keys = (*self.image_keys, SEG_KEY) if file_keys is None else tuple(file_keys)
        self.num_workers = num_workers or os.cpu_count() or 1
        self.fingerprint, self.description = transform_fingerprint(transform)
        self.path = Path(cache_dir) / self.fingerprint[:16]
        self._memo: dict[str, dict] | None = None

    def __getstate__(self) -> dict[str, Any]:  # build workers need the chain, not this call's digests
        return {k: v for k, v in self.__dict__.items() if k != "_memo"} | {"_memo": None}

    @contextlib.contextmanager
    def _scope(self) -> Iterator[dict[str, dict]]:
        """Within one public call, each input file is digested once and each shard checked once."""
        if self._memo is not None:
            yield self._memo
            return
        self._memo = {"digest": {}, "shard": {}}
        try:
            yield self._memo
        finally:
            self._memo = None

    # ------------------------------------------------------------------ keys and checks
    def _inputs(self, items: Sequence[Mapping[str, Any]]) -> None:
        """Digest every input file of ``items`` not digested yet in this call (in threads)."""
        memo = self._memo["digest"]
        todo = []
        for item in items:
            for key in self.file_keys:
                if key not in item:
                    raise MedAdvInputError(f"subject {item.get('subject')!r}: the datalist entry has no {key!r}; "
                                           f"expected a file for each of {list(self.file_keys)}")
                todo.append(str(item[key]))
        todo = [p for p in dict.fromkeys(todo) if p not in memo]
        with cf.ThreadPoolExecutor(max(1, min(self.num_workers, len(todo), 8))) as pool:
            memo.update(zip(todo, pool.map(file_digest, todo)))

    def _inputs_of(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """What a subject's shard is made from: each input file's content digest, and the entry's other fields."""
        with self._scope() as memo:
            self._inputs([item])
            fields = {k: v for k, v in item.items() if k != "subject" and k not in self.file_keys}
            return {**fields, **{key: memo["digest"][str(item[key])] for key in self.file_keys}}

    def shard_dir(self, item: Mapping[str, Any]) -> Path:
        """The shard folder of a datalist entry (depends on the chain and on the content of the subject's files)."""
        key = hashlib.sha256(json.dumps(self._inputs_of(item), sort_keys=True).encode()).hexdigest()
        return self.path / f"{item['subject']}-{key[:16]}"

    def _checks(self, items: Sequence[Mapping[str, Any]]) -> list[str | None]:
        """Per item: ``None`` if its shard is built and intact, else why not (checked once per call, in threads)."""
        with self._scope() as memo:
            self._inputs(items)
            shards = [self.shard_dir(item) for item in items]
            todo = [s for s in dict.fromkeys(shards) if s not in memo["shard"]]
            with cf.ThreadPoolExecutor(max(1, min(self.num_workers, len(todo), 8))) as pool:
                memo["shard"].update(zip(todo, pool.map(_check_shard, todo)))
            return [None if isinstance(memo["shard"][s], dict) else memo["shard"][s] for s in shards]

    def missing(self, items: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """Entries whose shard is not built yet, or is damaged (a file whose size or checksum does not match)."""
        return [item for item, why in zip(items, self._checks(items)) if why is not None]

    # ------------------------------------------------------------------ build
    def build(self, items: Sequence[Mapping[str, Any]], progress: bool = False) -> dict[str, Any]:
        """Build the shards of ``items`` that are missing or damaged, in parallel; return timing figures.

        Raises:
            MedAdvInputError: the first bad subject found, or a cache folder that cannot be written (nothing
                half-written is left behind; a progress bar is closed before the error propagates).
        """
        with self._scope() as memo:
            todo = self.missing(items)
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                if not (self.path / "chain.json").is_file():
                    save_json(self.description, self.path / "chain.json")
            except OSError as e:
                raise _write_error(self.path, e) from e
            start = time.perf_counter()
            results: list[dict[str, Any]] = []
            jobs = [(self, item, self.shard_dir(item), self._inputs_of(item)) for item in todo]
            bar = _progress(len(jobs), "slice cache") if progress and jobs else None
            try:
                with contextlib.closing(self._run(jobs)) as run:  # the pool ends here, whatever happens
                    for result in run:
                        results.append(result)
                        memo["shard"][Path(result["shard"])] = result["meta"]
                        bar and bar.update(1)
            finally:
                bar and bar.close()  # before any error line, so the line is not drawn over
        seconds = time.perf_counter() - start
        return {
            "subjects_built": len(results),
            "subjects_cached": len(items) - len(results),
            "slices_built": sum(r["slices"] for r in results),
            "seconds": seconds,
            "seconds_per_subject": seconds / len(results) if results else 0.0,
        }

    def _run(self, jobs: list[tuple]) -> Iterator[dict[str, Any]]:
        if self.num_workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield _build_shard(*job)
            return
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        workers = min(self.num_workers, len(jobs))
        with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                    initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(_build_shard, *job) for job in jobs]
            try:
                for fut in cf.as_completed(futures):
                    yield fut.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def run_chain(self, item: Mapping[str, Any]) -> dict[str, np.ndarray | list]:
        """Run the chain on one datalist entry and stack its slices into arrays."""
        try:
            slices = self.transform(dict(item))
        except Exception as e:  # noqa: BLE001 - MONAI wraps transform errors; surface ours
            err = find_input_error(e)
            if err is not None:
                raise MedAdvInputError(str(err)) from None
            raise
        if isinstance(slices, Mapping):
            slices = [slices]
        need = (*self.image_keys, self.mask_key, self.label_key)
        images, masks, labels, index, fraction = [], [], [], [], []
        for s in slices:
            missing = [k for k in need if k not in s]
            if missing:
                raise MedAdvInputError(
                    f"subject {item.get('subject')!r}: the slice transform chain produced no {missing}; "
                    f"it must output {list(need)} per slice"
                )
            images.append(torch.cat([torch.as_tensor(s[k]).float() for k in self.image_keys]).numpy())
            masks.append(torch.as_tensor(s[self.mask_key]).to(torch.uint8).numpy())
            labels.append(int(torch.as_tensor(s[self.label_key]).reshape(-1)[0]))
            index.append(int(s.get("slice_index", len(index))))
            fraction.append(float(s.get("nonzero_fraction", float("nan"))))
        c = len(self.image_keys)
        return {
            "images": np.stack(images).astype(np.float32) if images else np.zeros((0, c, 0, 0), np.float32),
            "mask": np.stack(masks).astype(np.uint8) if masks else np.zeros((0, 1, 0, 0), np.uint8),
            "label": labels,
            "slice_index": index,
            "nonzero_fraction": fraction,
        }

    # ------------------------------------------------------------------ read
    def slices(self, items: Sequence[Mapping[str, Any]], build: bool = True) -> list[dict[str, Any]]:
        """A MONAI datalist of the cached slices of ``items``: ``{subject, slice_index, label, shard, row}`` each.

        Builds missing or damaged shards first unless ``build`` is False (then such a shard is an error naming it).
        The entries are read by :class:`LoadCachedSliced`.
        """
        with self._scope() as memo:
            if build:
                self.build(items)
            else:
                self._require(items)
            out = []
            for item in items:
                shard = self.shard_dir(item)
                meta = memo["shard"][shard]
                out += [
                    {"subject": meta["subject"], "slice_index": z, "label": lab, "shard": str(shard), "row": r}
                    for r, (z, lab) in enumerate(zip(meta["slice_index"], meta["label"]))
                ]
        return out

    def _require(self, items: Sequence[Mapping[str, Any]]) -> None:
        checks = self._checks(items)
        absent = [i["subject"] for i, why in zip(items, checks) if why == "not built"]
        damaged = [(i, why) for i, why in zip(items, checks) if why not in (None, "not built")]
        if damaged:  # the first one named; `medadv cache` rebuilds them all
            raise MedAdvInputError(f"slice cache shard {str(self.shard_dir(damaged[0][0]))!r} is damaged "
                                   f"({damaged[0][1]}); {_REBUILD}")
        if absent:
            raise MedAdvInputError(f"slice cache {self.path}: subjects {absent} are not built; run `medadv cache` "
                                   "first")

    def dataset(
        self,
        items: Sequence[Mapping[str, Any]],
        modalities: Sequence[str] = ("t2",),
        transform: Callable | None = None,
        build: bool = True,
    ) -> SliceDataset:
        """A dataset over the cached slices of ``items`` with the chosen ``modalities`` as channels."""
        return SliceDataset(self.slices(items, build=build), modalities, self.image_keys, transform)

    def datasets(self, datalist: Mapping[str, Sequence[Mapping[str, Any]]], **kwargs: Any) -> dict[str, SliceDataset]:
        """One :meth:`dataset` per split of a datalist (one parallel build for all of them)."""
        with self._scope():
            self.build([item for items in datalist.values() for item in items])
            return {name: self.dataset(items, build=False, **kwargs) for name, items in datalist.items()}


def _check_shard(shard: Path) -> dict[str, Any] | str:
    """The shard's metadata if it is intact, else why not: files whose size or checksum differ from slices.json."""
    try:
        meta = json.loads((shard / "slices.json").read_text())
    except FileNotFoundError:
        return "not built"
    except (OSError, ValueError) as e:
        return f"slices.json is unreadable: {e}"
    body = {k: v for k, v in meta.items() if k != "checksum"} if isinstance(meta, dict) else None
    if body is None or meta.get("checksum") != fingerprint(body):
        return "slices.json does not match its checksum"
    files = meta.get("files")
    if not isinstance(files, dict) or set(files) != set(_ARRAYS):
        return f"slices.json records no checksum of {list(_ARRAYS)}"
    for name, recorded in files.items():
        size = (shard / name).stat().st_size if (shard / name).is_file() else "no"
        if str(size) != str(recorded).split(":")[0]:
            return f"{name} has {size} bytes where slices.json records {str(recorded).split(':')[0]}"
        if file_digest(shard / name) != recorded:
            return f"{name} does not match the checksum in slices.json"
    return meta


def _write_error(path: Path, e: OSError) -> MedAdvInputError:
    return MedAdvInputError(f"slice cache {str(path)!r}: cannot write it ({e.strerror or e}); free disk space or "
                            "choose a writable cache_dir / work_dir (nothing half-written is kept)")


def _worker_init(parent: int) -> None:
    torch.set_num_threads(1)
    _end_with_parent(parent)


def _end_with_parent(parent: int) -> None:
    """End this worker when the process that started it ends, even by SIGKILL.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; elsewhere (or if that fails) a daemon thread that polls
    ``os.getppid()`` and exits once the parent is gone.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0:  # 1: PR_SET_PDEATHSIG
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError, TypeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="medadv-cache-watchdog", daemon=True).start()


def _build_shard(cache: SliceCache, item: Mapping[str, Any], shard: Path, inputs: Mapping[str, str]) -> dict[str, Any]:
    start = time.perf_counter()
    arrays = cache.run_chain(item)
    try:
        with atomic_dir(shard) as tmp:
            np.save(tmp / "images.npy", arrays["images"])
            np.save(tmp / "mask.npy", arrays["mask"])
            meta = {"subject": item["subject"], "modalities": list(cache.image_keys),
                    **{k: arrays[k] for k in ("label", "slice_index", "nonzero_fraction")},
                    "inputs": dict(inputs), "files": {name: file_digest(tmp / name) for name in _ARRAYS}}
            meta["checksum"] = fingerprint(meta)
            save_json(meta, tmp / "slices.json")
    except OSError as e:
        raise _write_error(shard, e) from None
    return {"subject": item["subject"], "slices": len(arrays["label"]), "seconds": time.perf_counter() - start,
            "shard": str(shard), "meta": meta}


def _progress(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="subject")


class LoadCachedSliced(Transform):
    """Read a cached slice named by a :meth:`SliceCache.slices` entry (``shard``, ``row``).

    Adds ``image`` (C, H, W) float32 with the chosen ``modalities`` as channels, ``mask`` (1, H, W) float32 tumour
    mask and ``label`` (1,) float32. Shards are memory-mapped once per process and kept open.

    Args:
        modalities: channels, by name (e.g. ``["t2"]`` or ``["t1ce", "flair"]``).
        stored: the modality order in the shards.
    """

    def __init__(self, modalities: Sequence[str] = ("t2",), stored: Sequence[str] = MODALITIES) -> None:
        modalities = [modalities] if isinstance(modalities, str) else list(modalities)
        unknown = [m for m in modalities if m not in stored]
        if not modalities or unknown:
            raise MedAdvInputError(f"modalities {modalities}: unknown {unknown or 'none given'}; "
                                   f"expected a non-empty list from {list(stored)}")
        self.modalities = modalities
        self.channels = [list(stored).index(m) for m in modalities]
        self._open: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _arrays(self, shard: str) -> tuple[np.ndarray, np.ndarray]:
        if shard not in self._open:
            try:
                self._open[shard] = (np.load(Path(shard) / "images.npy", mmap_mode="r"),
                                     np.load(Path(shard) / "mask.npy", mmap_mode="r"))
            except (OSError, ValueError) as e:
                raise MedAdvInputError(f"slice cache shard {shard!r} cannot be read ({e}); {_REBUILD}") from e
        return self._open[shard]

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        images, masks = self._arrays(d["shard"])
        row = d["row"]
        d["image"] = torch.from_numpy(np.ascontiguousarray(images[row, self.channels]))
        d["mask"] = torch.from_numpy(masks[row].astype(np.float32))
        d["label"] = torch.tensor([float(d["label"])])
        return d


class SliceDataset(Dataset):
    """A MONAI ``Dataset`` of cached slices: :class:`LoadCachedSliced` then an optional ``transform``.

    Args:
        data: entries from :meth:`SliceCache.slices`.
        modalities: channels to return, by name.
        stored: the modality order in the shards.
        transform: MONAI transform applied after loading (e.g. augmentation).
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        modalities: Sequence[str] = ("t2",),
        stored: Sequence[str] = MODALITIES,
        transform: Callable | None = None,
    ) -> None:
        loader = LoadCachedSliced(modalities, stored)
        super().__init__(list(data), Compose([loader, transform]) if transform is not None else loader)
        self.modalities = loader.modalities

    @property
    def labels(self) -> np.ndarray:
        """Slice labels in dataset order (for class weights and statistics)."""
        return np.array([d["label"] for d in self.data], dtype=np.int64)

    @property
    def subjects(self) -> list[str]:
        """Subject ids that have at least one slice, in order."""
        return list(dict.fromkeys(d["subject"] for d in self.data))


def pos_weight(data: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """``BCEWithLogitsLoss`` ``pos_weight`` for a slice datalist: negatives / positives, as a (1,) tensor."""
    labels = [int(d["label"]) for d in data]
    pos = sum(labels)
    if pos == 0:
        raise MedAdvInputError("the training split has no tumour slice; a tumour classifier needs positives")
    return torch.tensor([(len(labels) - pos) / pos], dtype=torch.float32)
