"""``python -m audit.cli`` (what ``accelerate launch -m audit.cli generate ...`` runs in every process)."""

from audit.cli import main

main()
