"""The `cagefs` command: one module per verb, each exposing `add_parser(subparsers)`."""
