"""The parser class of every ``jaxdd`` command: argparse's refusals as one line on stderr.

argparse prints the whole usage before a refusal; :class:`Parser` prints one line instead,
``jaxdd COMMAND: error: ...``, naming the flag, what it accepts and the closest valid spelling
(:mod:`difflib`), and exits with status 2. ``--help`` is argparse's own.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import math
import re
import sys
from typing import NoReturn, Sequence

_CHOICE = re.compile(r"invalid choice: (?P<value>.+?) \(choose from .*\)$")
_TYPE = re.compile(r"invalid (?P<type>\S+) value: ")
_COUNT = re.compile(r"expected (one|at least one|at most one|\d+) arguments?$")
_KINDS = {int: "an integer", float: "a number", str: "a value"}


def closest(word: str, candidates: Sequence[str]) -> str | None:
  """The candidate closest to ``word`` (difflib), if one is close enough.

  >>> closest("kd", ["none", "kde", "oracle", "fairdd"]), closest("xyz", ["none", "kde"])
  ('kde', None)
  """
  found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
  return found[0] if found else None


def _action(parser: argparse.ArgumentParser, name: str | None) -> argparse.Action | None:
  """The action argparse names ``name`` in its messages (its option strings, metavar or dest)."""
  for action in parser._actions:
    if name in ("/".join(action.option_strings), action.metavar, action.dest):
      return action
  return None


def accepts(action: argparse.Action) -> str:
  """What a flag takes, in words.

  >>> p = argparse.ArgumentParser()
  >>> accepts(p.add_argument("--n", type=int)), accepts(p.add_argument("--m", choices=["a", "b"]))
  ('an integer', 'choose from a, b')
  """
  if action.choices is not None:
    return "choose from " + ", ".join(str(c) for c in action.choices)
  if action.type in _KINDS or action.type is None:
    return _KINDS.get(action.type, "a value")
  doc = (action.type.__doc__ or "").strip().splitlines()
  return doc[0].split(": ", 1)[-1].rstrip(".") if doc else "a value"


def _invalid_choice(name: str, message: str, action: argparse.Action | None) -> str:
  match = _CHOICE.match(message)
  if match is None or action is None or action.choices is None:
    return f"{name}: {message}"
  try:
    value = ast.literal_eval(match["value"])
  except (ValueError, SyntaxError):
    value = match["value"]
  choices = [str(c) for c in action.choices]
  near = closest(str(value), choices)
  hint = f"; did you mean {near!r}?" if near else ""
  return f"{name}: invalid choice: {value!r} ({accepts(action)}{hint})"


def argument_line(parser: argparse.ArgumentParser, error: argparse.ArgumentError) -> str:
  """The one-line message of an argparse refusal about one argument."""
  name, message = error.argument_name, error.message
  action = _action(parser, name)
  if name is None:
    return message
  if message.startswith("invalid choice: "):
    return _invalid_choice(name, message, action)
  if action is not None and _TYPE.match(message):
    if action.type not in _KINDS:  # jaxdd's own types: say the rule, not the function's name
      return f"{name}: {message[_TYPE.match(message).end():]} is not {accepts(action)}"
    return f"{name}: {message} (expects {accepts(action)})"
  if action is not None and _COUNT.match(message):
    return f"{name}: {message} ({accepts(action)})"
  return f"{name}: {message}"


def unrecognized(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
  """The one-line refusal of arguments no flag of ``parser`` takes, with the closest flags.

  >>> p = Parser(prog="jaxdd x")
  >>> _ = p.add_argument("--iterations", type=int)
  >>> unrecognized(p, ["--iteratons", "5"])
  'unrecognized arguments: --iteratons 5 (did you mean --iterations?)'
  """
  flags = {s.lstrip("-"): s for a in parser._actions for s in a.option_strings}
  hints = []
  for arg in extras:
    if arg.startswith("-") and len(arg) > 1:
      near = closest(arg.split("=", 1)[0].lstrip("-"), list(flags))
      if near:
        hints.append(flags[near])
  noun = "argument" if len(extras) == 1 else "arguments"
  hint = (f"did you mean {' / '.join(dict.fromkeys(hints))}?" if hints
          else f"{parser.prog} --help lists what it takes")
  return f"unrecognized {noun}: {' '.join(extras)} ({hint})"


def _subparser(parser: argparse.ArgumentParser,
               namespace: argparse.Namespace) -> argparse.ArgumentParser:
  """The subcommand's parser that parsed ``namespace`` (else ``parser`` itself)."""
  for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
      chosen = action.choices.get(getattr(namespace, action.dest, None) or "")
      if chosen is not None:
        return _subparser(chosen, namespace)
  return parser


def positive_int(text: str) -> int:
  """Type: an integer >= 1.

  >>> positive_int("3")
  3
  """
  value = int(text)
  if value < 1:
    raise ValueError(text)
  return value


def non_negative_int(text: str) -> int:
  """Type: an integer >= 0.

  >>> non_negative_int("0")
  0
  """
  value = int(text)
  if value < 0:
    raise ValueError(text)
  return value


def index_list(text: str) -> list[int]:
  """Type: comma-separated distinct integers >= 0, none empty.

  >>> index_list("0,1,2")
  [0, 1, 2]
  """
  parts = text.split(",")
  values = [non_negative_int(t) for t in parts]
  if len(set(values)) != len(values):
    raise ValueError(text)
  return values


def positive_float(text: str) -> float:
  """Type: a finite number > 0.

  >>> positive_float("2.5")
  2.5
  """
  value = float(text)
  if not math.isfinite(value) or value <= 0:
    raise ValueError(text)
  return value


class Parser(argparse.ArgumentParser):
  """An :class:`argparse.ArgumentParser` whose refusals are one line on stderr and status 2.

  Its subcommands' parsers are of this class too (argparse makes them of the parent's class).

  >>> p = Parser(prog="jaxdd demo")
  >>> _ = p.add_argument("--weighting", choices=["none", "kde"])
  >>> import contextlib, io
  >>> err = io.StringIO()
  >>> with contextlib.redirect_stderr(err):
  ...   try:
  ...     p.parse_args(["--weighting", "kd"])
  ...   except SystemExit as e:
  ...     print(e.code)
  2
  >>> print(err.getvalue(), end="")
  jaxdd demo: error: --weighting: invalid choice: 'kd' (choose from none, kde; did you mean 'kde'?)
  """

  def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
    namespace, extras = self.parse_known_args(args, namespace)
    if extras:  # refused by the subcommand that was given them, naming its own flags
      _subparser(self, namespace).error(unrecognized(_subparser(self, namespace), extras))
    return namespace

  def error(self, message: str) -> NoReturn:
    """Prints ``PROG: error: MESSAGE`` as one line and exits with status 2.

    argparse calls this inside the handler of the :class:`argparse.ArgumentError` it caught,
    when there is one: its argument gives the flag, its value and what it accepts.
    """
    caught = sys.exc_info()[1]
    if isinstance(caught, argparse.ArgumentError) and str(caught) == message:
      message = argument_line(self, caught)
    elif message.startswith("the following arguments are required: command"):
      message = f"a command is required; {self.prog} --help lists them"
    self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")
