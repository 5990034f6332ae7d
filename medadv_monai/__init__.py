"""medadv-monai: adversarial stress tests for brain-tumour MRI models, as MONAI bundles."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
