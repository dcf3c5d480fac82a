"""Weight diagnostics experiment (issue: surrogate + KDE reweighting).

Same as ``jaxdd diagnose``; kept here as the experiment entry point:

  python experiments/diagnose.py --dataset cmnist --conflict-ratio 0.05 --preset cpu --workdir runs/diag

The implementation lives in :mod:`jaxdd.diagnose` so that the installed
``jaxdd`` command can run it too.
"""
import sys

from jaxdd.diagnose import build_parser, main  # noqa: F401  (re-exported for scripts and tests)

if __name__ == "__main__":
  main()
  sys.exit(0)
