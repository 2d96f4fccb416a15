"""``python -m converter`` runs the ``rootfs`` command."""

from .entry import main

main()
