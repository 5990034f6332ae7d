"""``python -m medadv_monai`` runs the ``medadv`` command."""

import sys

from medadv_monai.cli import main

sys.exit(main())
