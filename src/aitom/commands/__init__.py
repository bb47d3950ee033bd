"""One module per ``aitom`` subcommand; each defines ``add_parser(subparsers)`` and ``run(args) -> int``."""
