"""``python -m jaxdd`` runs the command line."""
from jaxdd.cli import entry

entry()
