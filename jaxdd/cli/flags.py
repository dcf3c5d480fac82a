"""The flags several commands share, and the run config they resolve to.

The run flags (``jaxdd distill``, ``reproduce``, ``tune``, ...) are built from the parts of
:class:`jaxdd.config.RunConfig`: one argument group per part (titled by its stage), one
``--flag-name`` per field, its help showing the chosen preset's default. :func:`resolve` turns
them into the validated config a command runs (checked against the library too,
:func:`jaxdd.runs.checks.check_config`), or prints it (``--print-config``, one object per part)
and runs nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, Callable, Sequence

from jaxdd.cli import arguments
from jaxdd.config import FIELDS, PARTS, PRESETS, RunConfig, get_config, validate
from jaxdd.data import biased
from jaxdd.runs import checks, rundata


def add_common_flags(p: argparse.ArgumentParser) -> None:
  """``--quiet``, ``--debug`` and ``--no-compile-cache``: every command but ``report`` has them."""
  p.add_argument("--quiet", action="store_true", help="no progress bars or progress log lines")
  p.add_argument("--debug", action="store_true",
                 help="also show the full traceback of an error (same exit status)")
  p.add_argument("--no-compile-cache", action="store_true",
                 help="do not use JAX's persistent compilation cache ($JAXDD_CACHE/xla)")


def add_trust_flag(p: argparse.ArgumentParser,
                   unset: str = "load and report the signature status") -> None:
  """``--trust``: the public keys a loaded SynSet must be signed with; ``unset`` says what
  the command does when neither the flag nor ``$JAXDD_TRUSTED_KEYS`` gives any."""
  p.add_argument("--trust", default=None,
                 help="trusted public keys (.pub files or folders, comma-separated): an unsigned "
                      "SynSet or one signed by another key is refused (default: "
                      f"$JAXDD_TRUSTED_KEYS; unset: {unset})")


def add_elf_flags(p: argparse.ArgumentParser) -> None:
  """``--elf`` and its feature model."""
  p.add_argument("--elf", action="store_true",
                 help="ELF evaluation track: also learn from a feature model trained on the REAL "
                      "training set (its numbers are not comparable with a plain evaluation)")
  p.add_argument("--feature-model", default="convnet-d3-w128",
                 help="ELF's feature model (default convnet-d3-w128; ELF uses width 512)")
  p.add_argument("--feature-protocol", default="cpu",
                 help="the feature model's training protocol (default: cpu)")


def add_artifact_data_flags(p: argparse.ArgumentParser, *, out: str) -> None:
  """The flags of commands that train on a SynSet artifact: where its evaluation data and
  key come from (its own, unless overridden), the output, ELF, trust and the common ones."""
  p.add_argument("--seed", type=arguments.non_negative_int, default=None,
                 help="evaluation seed (default: the run's own evaluation key, so a run's "
                      "SynSet reproduces the run's numbers exactly)")
  p.add_argument("--dataset", default=None, choices=sorted(biased.DATASETS),
                 help="default: the artifact's")
  p.add_argument("--conflict-ratio", type=float, default=None, help="default: the artifact's")
  p.add_argument("--source", default=None,
                 help="default: the artifact's run source, else the dataset's offline default")
  p.add_argument("--out", default=None, help=out)
  add_elf_flags(p)
  add_trust_flag(p)
  add_common_flags(p)


def add_buffer_dir_flag(p: argparse.ArgumentParser) -> None:
  """``--buffer-dir``: where a trajectory-matching run keeps its experts."""
  p.add_argument("--buffer-dir", default=None,
                 help="trajectory matching (--method mtt): the expert buffer's folder (reused "
                      "when it holds this run's experts, refused when it holds others; default: "
                      "$JAXDD_CACHE/buffers/<digest of the experts' settings>)")


def flag_type(field: dataclasses.Field) -> type:
  """The argparse type of a config field: int, float or str."""
  kind = str(field.type)
  if "int" in kind and "str" not in kind:
    return int
  return float if "float" in kind else str


def add_run_flags(p: argparse.ArgumentParser, preset: str, *,
                  exclude: tuple[str, ...] = (), workdir: bool = True) -> None:
  """``--preset``, ``--workdir``, ``--print-config`` and one flag per RunConfig field, in one
  argument group per part of the config.

  Args:
    p: the command's parser.
    preset: whose defaults the help text shows.
    exclude: fields the command does not accept.
    workdir: whether the command takes ``--workdir``.
  """
  p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                 help="scale: paper (published settings, accelerator), cpu (minutes on 2 cores), "
                      "smoke (seconds). Default: cpu. The defaults shown below are this "
                      f"preset's ({preset}); pass --preset before --help to see another's")
  if workdir:
    p.add_argument("--workdir", default=None,
                   help="run directory (created; resumed if it exists); required unless "
                        "--print-config")
  p.add_argument("--print-config", action="store_true",
                 help="print the resolved config as JSON and exit (nothing is run or written)")
  defaults = PRESETS[preset]
  for part in PARTS.values():
    group = p.add_argument_group(part.TITLE)
    for f in dataclasses.fields(part):
      if f.name in exclude:
        continue
      default = getattr(defaults, f.name)
      choices = part.CHOICES.get(f.name) or None
      flag = part.FLAGS.get(f.name, f.name)
      group.add_argument("--" + flag.replace("_", "-"), dest=f.name, type=flag_type(f),
                         default=None, choices=choices, metavar=None if choices else f.name.upper(),
                         help=(part.HELP[f.name] + "; " if f.name in part.HELP else "")
                         + f"default ({preset} preset): {'none' if default is None else default}")


def preset_in(argv: Sequence[str]) -> str:
  """The --preset value in argv (for the help text), else the default.

  >>> preset_in(["distill", "--preset=smoke", "--help"]), preset_in(["tune", "--preset", "x"])
  ('smoke', 'cpu')
  """
  for i, a in enumerate(argv):
    value = argv[i + 1] if a == "--preset" and i + 1 < len(argv) else (
        a.split("=", 1)[1] if a.startswith("--preset=") else None)
    if value in PRESETS:
      return value
  return "cpu"


def run_config(args: argparse.Namespace) -> RunConfig:
  """The run config of the parsed flags: the preset's, with every flag given."""
  overrides = {name: getattr(args, name) for name in FIELDS
               if name != "preset" and getattr(args, name, None) is not None}
  return get_config(args.preset, **overrides)


def describe_run(cfg: RunConfig) -> dict[str, Any]:
  """A run as ``--print-config`` shows it: its config (one object per part) and digest; for a
  user's own data also ``data``, what names them in the run's records (spec, images per
  split, classes, groups, content sha256: :func:`jaxdd.runs.rundata.data_identity`, which
  reads the data as the run would, from the cache once decoded)."""
  out = {"config": cfg.to_tree(), "digest": cfg.digest()}
  if cfg.data_spec is not None:
    out["data"] = rundata.data_identity(cfg)
  return out


def resolve(args: argparse.Namespace,
            describe: Callable[[RunConfig], dict[str, Any]] = describe_run, *,
            workdir: bool = True) -> RunConfig | None:
  """The validated run config of a command, or None after ``--print-config`` printed it.

  Args:
    args: the parsed flags.
    describe: what ``--print-config`` prints of the command besides its name.
    workdir: whether the command needs ``--workdir`` to run.
  """
  cfg = run_config(args)
  validate(cfg)
  checks.check_config(cfg)
  if args.print_config:
    print(json.dumps({"command": args.command, **describe(cfg)}, indent=2, sort_keys=True,
                     default=str))
    return None
  if workdir and not args.workdir:
    raise ValueError("--workdir is required (the run directory)")
  return cfg
