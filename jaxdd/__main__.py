"""``python -m jaxdd`` runs the command line."""
import sys

from jaxdd.cli import main

sys.exit(main())
