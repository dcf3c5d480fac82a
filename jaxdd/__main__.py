"""``python -m jaxdd`` and the ``jaxdd`` console script: the command line.

While the command line loads (JAX, Flax, the commands: a second or more), Ctrl-C is held until
the imports are done and then ends the process with one line and status 130, as it does later:
an import interrupted half-way prints tracebacks of its own, some from C extensions.
"""
import signal
import sys
import threading

_pressed: list[int] = []
_held = threading.current_thread() is threading.main_thread()
if _held:
  _previous = signal.signal(signal.SIGINT, lambda signum, frame: _pressed.append(signum))
try:
  from jaxdd.cli import app
finally:
  if _held:
    signal.signal(signal.SIGINT, _previous)


def main() -> None:
  """Runs the command line (:func:`jaxdd.cli.app.entry`), or ends at once when Ctrl-C came
  while it loaded."""
  if _pressed:
    print(app.INTERRUPTED_STARTING, file=sys.stderr)
    sys.exit(130)
  app.entry()


if __name__ == "__main__":
  main()
