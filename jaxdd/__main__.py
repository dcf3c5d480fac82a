"""``python -m jaxdd`` runs the command line."""
from jaxdd.cli import entry

if __name__ == "__main__":
  entry()
