"""The ``jaxdd`` command line (also ``python -m jaxdd``); ``jaxdd --help`` lists the commands.

One module per group of commands, each with a ``register(subparsers, preset)`` that adds its
subcommands: :mod:`~jaxdd.cli.data` (data, data fetch), :mod:`~jaxdd.cli.runs` (distill,
buffers, reproduce, tune, final, baselines, report), :mod:`~jaxdd.cli.evaluation` (evaluate,
cross-arch), :mod:`~jaxdd.cli.trust` (audit, keys, sign, verify) and
:mod:`~jaxdd.cli.diagnose`. :mod:`~jaxdd.cli.arguments` is the parser class whose refusals
are one line, :mod:`~jaxdd.cli.flags` builds the shared flags,
:mod:`~jaxdd.cli.runtime` sets up the process (compile cache, allocator, logging) and
:mod:`~jaxdd.cli.app` runs one command and maps its failures to exit statuses.
"""
from jaxdd.cli.app import entry, main
from jaxdd.cli.parser import build_parser
from jaxdd.cli.runtime import enable_compile_cache, tune_allocator

__all__ = ["build_parser", "enable_compile_cache", "entry", "main", "tune_allocator"]
