"""``python -m converter`` runs the ``rootfs`` command."""

from .cli import main

main()
