"""Deprecated: ``jaxdd diagnose`` lives in :mod:`jaxdd.cli` (kept for one release).

The command's flags are :func:`jaxdd.cli.add_diagnose_flags`, its work is
:func:`jaxdd.cli.diagnose_report` and the library functions behind it are
:func:`jaxdd.diagnostics.kde_weights` and :func:`jaxdd.diagnostics.weight_sweep`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from jaxdd import cli, diagnostics


def build_parser() -> argparse.ArgumentParser:
  """A standalone parser with the flags of ``jaxdd diagnose``."""
  p = argparse.ArgumentParser(prog="jaxdd diagnose",
                              description="KDE weight diagnostics (same as `jaxdd diagnose`).")
  cli.add_diagnose_flags(p)
  return p


def main(argv: Sequence[str] | None = None) -> dict:
  """Runs ``jaxdd diagnose`` with ``argv``; returns the report (also in report.json)."""
  return cli.diagnose_report(build_parser().parse_args(argv))


def compute_weights(key, embeddings, labels, *, scope, variance, temperature, normalize,
                    num_classes, batch_size, num_rounds):
  """Deprecated alias of :func:`jaxdd.diagnostics.kde_weights`."""
  from jaxdd import kde
  return diagnostics.kde_weights(key, embeddings, labels,
                                 kde.KDEConfig(variance, temperature, normalize, scope),
                                 num_classes=num_classes, batch_size=batch_size,
                                 num_rounds=num_rounds)


if __name__ == "__main__":
  main(sys.argv[1:])
