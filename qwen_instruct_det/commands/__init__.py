"""The ``qid`` command line: one module per group of subcommands, each a dataclass of arguments and a thin call into the library.

The library never imports this package (as ``trl/trainer`` never imports ``trl/scripts``).
"""
