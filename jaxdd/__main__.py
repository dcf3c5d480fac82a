"""``python -m jaxdd`` and the ``jaxdd`` console script: the command line.

While the command line loads (JAX, Flax, the commands: a second or more), Ctrl-C is held until
the imports are done and then ends the process with one line and status 130, as it does later:
an import interrupted half-way prints tracebacks of its own, some from C extensions.
"""
import signal
import sys
import threading


def main() -> None:
  """Imports the command line and runs it (:func:`jaxdd.cli.app.entry`)."""
  pressed: list[int] = []
  held = threading.current_thread() is threading.main_thread()
  if held:
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
  try:
    from jaxdd.cli import app
  finally:
    if held:
      signal.signal(signal.SIGINT, previous)
  if pressed:
    print("jaxdd: interrupted while starting; nothing was done", file=sys.stderr)
    sys.exit(130)
  app.entry()


if __name__ == "__main__":
  main()
