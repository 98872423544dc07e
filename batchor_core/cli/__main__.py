"""``python -m batchor_core.cli`` runs the ``batchor`` command."""

from batchor_core.cli import main

main()
