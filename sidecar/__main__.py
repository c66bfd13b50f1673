"""``python -m tidings.sidecar``: the sidecar process itself (what ``tidings sidecar`` runs)."""

from .cli.main import main

raise SystemExit(main(["sidecar", *__import__("sys").argv[1:]]))
