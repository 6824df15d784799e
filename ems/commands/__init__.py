"""One module per ``ems`` subcommand; each exposes ``register(subparsers)``."""
