"""Small shared helpers: atomic output writing."""

from __future__ import annotations

from medadv_monai.utils.io import atomic_dir, atomic_path, save_csv, save_json, save_text, torch_save

__all__ = ["atomic_dir", "atomic_path", "save_csv", "save_json", "save_text", "torch_save"]
