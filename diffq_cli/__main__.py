"""``python -m diffq_cli`` (and ``torchrun -m diffq_cli``) runs the CLI."""

from diffq_cli.cli.app import main

main()
