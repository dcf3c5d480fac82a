"""Reading back the JSON files jaxdd wrote, checked against the structure their readers expect.

Every JSON file jaxdd reads back (a run's ``config.json`` and ``eval.json``, ``baselines.json``,
``weights.json``, ``selection.json``, ``table.json``, a SynSet's ``manifest.json`` and
``meta.json``, the caches' records) goes through :func:`read_json` (or :func:`parse_json` for
bytes already read) with a small spec of the types and keys its reader uses. A file that is not
UTF-8, not JSON, or JSON of another structure raises one error, :class:`FileFormatError`, whose
message is one line: the file, what is wrong in it, and the fix.

A spec is built from :data:`STR`, :data:`INT`, :data:`NUM`, :data:`BOOL`, :data:`ANY`,
:func:`opt` (the value may be null), :func:`list_of`, :func:`map_of` (an object of any keys)
and :func:`obj` (an object with required and optional keys; other keys are allowed).

Example:
  >>> spec = obj({"digest": STR}, optional={"mean": map_of(NUM)})
  >>> check({"digest": "ab", "mean": {"overall": 0.5}}, spec, path="eval.json", fix="rerun")
  {'digest': 'ab', 'mean': {'overall': 0.5}}
  >>> try:
  ...   check({"digest": 3}, spec, path="eval.json", fix="delete it and rerun")
  ... except FileFormatError as e:
  ...   print(e)
  eval.json: 'digest' must be a string, got a number; delete it and rerun
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

from jaxdd._src import io as _io

__all__ = ["ANY", "BOOL", "FileFormatError", "INT", "NUM", "STR", "Spec", "check", "list_of",
           "map_of", "obj", "opt", "parse_json", "read_json"]

_MISSING = object()


class FileFormatError(ValueError):
  """A file jaxdd reads back that is unreadable or holds another structure than expected.

  ``str(e)`` is one line: ``"<path>: <what is wrong>; <fix>"``. ``working`` says whether it
  was found while the command was working (after it wrote something: exit status 1) or
  before any work (a refused input: exit status 2).
  """

  def __init__(self, path: str, problem: str, fix: str, *, working: bool = False):
    self.path, self.problem, self.fix, self.working = str(path), problem, fix, working
    super().__init__(f"{self.path}: {problem}; {fix}")

  @property
  def status(self) -> int:
    """The command line's exit status: 1 found while working, 2 refused before work."""
    return 1 if self.working else 2


class _Mismatch(Exception):
  def __init__(self, where: tuple, problem: str):
    super().__init__(problem)
    self.where, self.problem = where, problem


def _kind(value: Any) -> str:
  """What a JSON value is, as a message says it."""
  if value is None:
    return "null"
  if isinstance(value, bool):
    return "true/false"
  if isinstance(value, (int, float)):
    return "a number"
  if isinstance(value, str):
    return "a string"
  if isinstance(value, list):
    return "a list"
  if isinstance(value, dict):
    return "an object"
  return type(value).__name__


def _where(where: tuple) -> str:
  out = ""
  for part in where:
    # keys are escaped (json.dumps, ASCII), so that the message stays one line
    name = json.dumps(str(part))[1:-1]
    out += f"[{part}]" if isinstance(part, int) else (f".{name}" if out else name)
  return f"'{out}'" if out else "the file"


class Spec:
  """One node of a spec: ``check(value, where)`` raises on a mismatch."""

  def __init__(self, name: str, test: Callable[[Any], bool]):
    self.name, self.test = name, test

  def check(self, value: Any, where: tuple) -> None:
    if not self.test(value):
      raise _Mismatch(where, f"must be {self.name}, got {_kind(value)}")


def _is_num(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


#: A string.
STR = Spec("a string", lambda v: isinstance(v, str))
#: An integer (not true/false).
INT = Spec("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
#: A number (NaN included: jaxdd writes NaN where a metric is undefined).
NUM = Spec("a number", _is_num)
#: true or false.
BOOL = Spec("true/false", lambda v: isinstance(v, bool))
#: Any value.
ANY = Spec("anything", lambda v: True)


class _Opt(Spec):
  def __init__(self, inner: Spec):
    super().__init__(f"{inner.name} or null", lambda v: True)
    self.inner = inner

  def check(self, value: Any, where: tuple) -> None:
    if value is not None:
      self.inner.check(value, where)


class _List(Spec):
  def __init__(self, item: Spec):
    super().__init__("a list", lambda v: isinstance(v, list))
    self.item = item

  def check(self, value: Any, where: tuple) -> None:
    super().check(value, where)
    for i, v in enumerate(value):
      self.item.check(v, where + (i,))


class _Map(Spec):
  def __init__(self, value: Spec):
    super().__init__("an object", lambda v: isinstance(v, dict))
    self.value = value

  def check(self, value: Any, where: tuple) -> None:
    super().check(value, where)
    for k, v in value.items():
      self.value.check(v, where + (k,))


class _Obj(Spec):
  def __init__(self, required: Mapping[str, Spec], optional: Mapping[str, Spec]):
    super().__init__("an object", lambda v: isinstance(v, dict))
    self.required, self.optional = dict(required), dict(optional)

  def check(self, value: Any, where: tuple) -> None:
    super().check(value, where)
    for k, spec in self.required.items():
      if k not in value:
        raise _Mismatch(where + (k,), "is missing")
      spec.check(value[k], where + (k,))
    for k, spec in self.optional.items():
      if k in value:
        spec.check(value[k], where + (k,))


def opt(inner: Spec) -> Spec:
  """``inner`` or null."""
  return _Opt(inner)


def list_of(item: Spec) -> Spec:
  """A list whose every element is ``item``."""
  return _List(item)


def map_of(value: Spec) -> Spec:
  """An object (any keys) whose every value is ``value``."""
  return _Map(value)


def obj(required: Mapping[str, Spec] | None = None, *,
        optional: Mapping[str, Spec] | None = None) -> Spec:
  """An object with the ``required`` keys and, where present, the ``optional`` ones; other
  keys are allowed (a newer version may add some)."""
  return _Obj(required or {}, optional or {})


def check(value: Any, spec: Spec, *, path: str, fix: str, working: bool = False) -> Any:
  """``value`` (parsed from ``path``) if it matches ``spec``, else :class:`FileFormatError`."""
  try:
    spec.check(value, ())
  except _Mismatch as e:
    where = _where(e.where)
    problem = f"{where} {e.problem}" if where != "the file" else \
        e.problem.replace("must be", "must hold", 1)
    raise FileFormatError(path, problem, fix, working=working) from None
  return value


def parse_json(data: bytes | str, spec: Spec, *, path: str, fix: str,
               working: bool = False) -> Any:
  """The JSON value in ``data`` (the bytes of ``path``), checked against ``spec``."""
  try:
    text = data.decode("utf-8") if isinstance(data, bytes) else data
  except UnicodeDecodeError as e:
    raise FileFormatError(path, f"is not UTF-8 text (byte {e.start})", fix,
                          working=working) from None
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    where = f"line {e.lineno} column {e.colno}"  # some of json's messages end in "at"
    what = f"{e.msg} {where}" if e.msg.endswith(" at") else f"{e.msg} at {where}"
    raise FileFormatError(path, f"is not valid JSON ({what})", fix, working=working) from None
  except RecursionError:
    raise FileFormatError(path, "is not valid JSON (nested too deeply)", fix,
                          working=working) from None
  return check(value, spec, path=path, fix=fix, working=working)


def read_json(path: str | os.PathLike, spec: Spec, *, fix: str, working: bool = False,
              default: Any = _MISSING) -> Any:
  """The JSON value in the file ``path``, checked against ``spec``.

  Args:
    path: the file.
    spec: its expected structure.
    fix: what the user should do when it does not match (the end of the message).
    working: True where the file is read after the command has started writing (exit status
      1 on the command line), False where it is read before any work (status 2).
    default: returned when there is no such file (else the OSError propagates).

  Raises:
    FileFormatError: the file is not UTF-8, not JSON, or JSON of another structure.
  """
  path = os.fspath(path)
  if default is not _MISSING and not os.path.exists(path):
    return default
  try:
    data = _io.read_bounded(path, _io.MAX_JSON_BYTES, fix=fix)
  except _io.NotAFileError as e:  # a FIFO, a device, a folder, a file too large to be ours
    raise FileFormatError(path, str(e).split("; ")[0].removeprefix(f"{path} "), fix,
                          working=working) from None
  return parse_json(data, spec, path=path, fix=fix, working=working)
