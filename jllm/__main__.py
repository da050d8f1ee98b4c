"""``python -m jllm ...`` runs the CLI, the same as the ``jllm`` console script: for environments where the package
is on the path but not installed (a checkout with PYTHONPATH set, the GPU image).

Where this module sits: docs/architecture.md.
"""

import sys

from jllm.cli import main

sys.exit(main())
