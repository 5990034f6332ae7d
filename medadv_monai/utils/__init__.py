"""Small shared helpers: atomic output writing, a run's log file."""

from __future__ import annotations

from medadv_monai.utils.io import atomic_dir, atomic_path, save_csv, save_json, save_text, torch_save
from medadv_monai.utils.logs import RunLog

__all__ = ["RunLog", "atomic_dir", "atomic_path", "save_csv", "save_json", "save_text", "torch_save"]
