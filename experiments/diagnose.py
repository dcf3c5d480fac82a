"""Weight diagnostics experiment (surrogate + KDE reweighting).

Same as ``jaxdd diagnose``; kept here as the experiment entry point:

  python experiments/diagnose.py --dataset cmnist --conflict-ratio 0.05 --preset cpu --workdir runs/diag

The implementation is the ``diagnose`` command of :mod:`jaxdd.cli`.
"""
import argparse
import sys

from jaxdd import cli


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="experiments/diagnose.py", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  cli.add_diagnose_flags(p)
  return p


def main(argv=None) -> dict:
  """Runs the diagnosis; returns the report (also written to <workdir>/report.json)."""
  return cli.diagnose_report(build_parser().parse_args(argv))


if __name__ == "__main__":
  main()
  sys.exit(0)
