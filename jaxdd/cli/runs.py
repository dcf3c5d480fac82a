"""The commands that run distillations: ``distill``, ``buffers``, ``reproduce``, ``tune``,
``final``, ``baselines``, and ``report``, which prints what finished runs wrote."""
from __future__ import annotations

import argparse
import os
import sys

from jaxdd import protocols
from jaxdd import runs as runs_lib
from jaxdd.cli import arguments, flags, runtime
from jaxdd.runs import artifacts, files

#: RunConfig fields that ``jaxdd baselines`` does not use (it neither distils nor weighs).
BASELINES_IGNORE = ("weighting", "kde_variance", "kde_temperature", "kde_normalize", "kde_scope",
                    "kde_floor", "fairdd_clusters", "fairdd_eps",
                    "iterations", "real_per_class", "lr_img", "momentum", "lr_net", "outer_loop",
                    "inner_loop", "init", "real_sampling", "dsa_strategy", "width", "depth",
                    "method", "log_every", "checkpoint_every")


def seeds(text: str) -> tuple[int, ...]:
  """``--seeds``: distinct comma-separated integers.

  >>> seeds("0,1, 2")
  (0, 1, 2)
  >>> seeds("0,,1")
  Traceback (most recent call last):
    ...
  ValueError: --seeds takes comma-separated integers such as 0,1,2; got '0,,1'
  """
  try:
    values = tuple(int(s) for s in text.split(","))  # an empty entry ("0,,1") is refused
  except ValueError:
    raise ValueError(f"--seeds takes comma-separated integers such as 0,1,2; got {text!r}") from None
  if not values or len(set(values)) != len(values):
    raise ValueError(f"--seeds needs distinct integers such as 0,1,2; got {text!r}")
  return values


def cmd_distill(args) -> int:
  if args.coordinator is None and (args.num_processes is not None
                                   or args.process_id is not None):
    raise ValueError("--num-processes and --process-id belong to a multi-process run; add "
                     "--coordinator HOST:PORT (process 0's address)")
  cfg = flags.resolve(args)
  if cfg is None:
    return 0
  if cfg.weighting == "auto" and args.coordinator is not None:
    raise ValueError("--weighting auto chooses on one process: run the same command without "
                     "--coordinator first (it prints the chosen --weighting), then give that "
                     "weighting to the multi-process run")
  workdir = args.workdir if args.coordinator is None else runtime.join_processes(
      args.workdir, args.coordinator, args.num_processes, args.process_id,
      args.coordinator_timeout)
  primary = workdir == args.workdir
  runs_lib.run(cfg, workdir, progress=not args.quiet and primary, show=primary,
               reevaluate=args.reevaluate, buffer_dir=args.buffer_dir)
  print(f"run directory: {workdir}")
  return 0


def cmd_buffers(args) -> int:
  if args.method not in (None, "mtt"):
    raise ValueError(f"expert buffers belong to trajectory matching; drop --method {args.method} "
                     "(buffers is always --method mtt)")
  args.method = "mtt"
  cfg = flags.resolve(args, lambda c: {**flags.describe_run(c), "buffer_dir": args.buffer_dir},
                      workdir=False)
  if cfg is None:
    return 0
  path, shape = runs_lib.build_expert_buffer(cfg, buffer_dir=args.buffer_dir,
                                             progress=not args.quiet)
  print(f"expert buffer: {path} ({shape[0]} experts, {shape[1] - 1} epochs, "
        f"{shape[2]} parameters)")
  return 0


def _describe_reproduce(args):
  def describe(cfg):
    runs = {runs_lib.method_name(cfg.replace(weighting=w)):
            flags.describe_run(cfg.replace(weighting=w)) for w in ("none", "kde")}
    return {"runs": runs, "with_baselines": args.with_baselines}
  return describe


def cmd_reproduce(args) -> int:
  cfg = flags.resolve(args, _describe_reproduce(args))
  if cfg is None:
    return 0
  which = tuple(args.with_baselines.split(",")) if args.with_baselines else ()
  unknown = set(which) - set(runs_lib.BASELINES)
  if unknown:
    raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {runs_lib.BASELINES}")
  runs_lib.reproduce(cfg, args.workdir, with_baselines=which, progress=not args.quiet, show=True,
                     reevaluate=args.reevaluate)
  print(f"run directory: {args.workdir} (comparison.md, plots/accuracy.png)")
  return 0


def _describe_tune(args):
  return lambda cfg: {"base": flags.describe_run(cfg), "seeds": list(seeds(args.seeds)),
                      "sweep_protocol": args.sweep_protocol, "sweep_models": args.sweep_models,
                      "candidates": [s.name(cfg) for s in runs_lib.knob_grid(cfg)]}


def cmd_tune(args) -> int:
  cfg = flags.resolve(args, _describe_tune(args))
  if cfg is None:
    return 0
  runs_lib.tune(cfg, args.workdir, seeds=seeds(args.seeds), protocol=args.sweep_protocol,
             num_models=args.sweep_models, progress=not args.quiet, show=True)
  print(f"selection: {os.path.join(args.workdir, 'selection.md')}")
  return 0


def _describe_final(args):
  selection = args.selection or os.path.join(args.workdir or "<workdir>", "selection.json")
  return lambda cfg: {"base": flags.describe_run(cfg), "seeds": list(seeds(args.seeds)),
                      "protocol": args.protocol, "selection": selection,
                      "with_random": not args.no_random, "full_models": args.full_models}


def _settings(args, cfg) -> dict:
  """The rows of ``final`` from the selection.json of a finished ``jaxdd tune``."""
  path = args.selection or os.path.join(args.workdir, "selection.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: run `jaxdd tune --workdir {args.workdir} ...` "
                            "first, or pass --selection PATH of a finished tune")
  return files.read_selection(path, cfg)


def cmd_final(args) -> int:
  cfg = flags.resolve(args, _describe_final(args))
  if cfg is None:
    return 0
  settings = _settings(args, cfg)
  runs_lib.final(cfg, args.workdir, settings=settings, seeds=seeds(args.seeds),
              protocol=args.protocol, num_models=cfg.num_eval_models,
              with_random=not args.no_random, full_models=args.full_models,
              progress=not args.quiet, show=True)
  print(f"table: {os.path.join(args.workdir, 'table.md')}")
  return 0


def _baselines_which(args) -> tuple[str, ...]:
  """``--which``, or everything that needs no other run (plus the debiasing methods given a
  vanilla SynSet)."""
  if not args.which:
    return tuple(b for b in runs_lib.BASELINES
                 if args.vanilla_synset is not None or b not in runs_lib.DEBIASED)
  which = tuple(w.strip() for w in args.which.split(",") if w.strip())
  if set(runs_lib.DEBIASED) & set(which) and args.vanilla_synset is None:
    raise ValueError("lff, dfa and selecmix train on a vanilla DM SynSet: pass --vanilla-synset "
                     "DIR, the synset/ directory of a vanilla run (e.g. runs/x/dm/synset from `jaxdd "
                     "reproduce`, or `jaxdd distill --weighting none --workdir D` gives D/synset)")
  return which


def cmd_baselines(args) -> int:
  cfg = flags.resolve(args, lambda c: {**flags.describe_run(c), "which": args.which,
                                       "vanilla_synset": args.vanilla_synset})
  if cfg is None:
    return 0
  results = runs_lib.run_baselines(cfg, args.workdir, which=_baselines_which(args),
                                   vanilla_synset=args.vanilla_synset, progress=not args.quiet,
                                   trust=args.trust)
  print(runs_lib.format_comparison(results, cfg))
  return 0


def cmd_report(args) -> int:
  if not os.path.exists(args.path):
    raise FileNotFoundError(f"{args.path} does not exist; pass a run directory or a folder of "
                            "runs")
  damaged: list[str] = []
  found = artifacts.finished_runs(args.path, damaged)
  for line in (line for lines in found for line in lines):
    print(line)
  for message in damaged:  # the good runs are reported; each damaged file in one line
    print(f"jaxdd report: error: {message}", file=sys.stderr)
  if not found and not damaged:
    print(f"jaxdd report: error: no finished runs under {args.path} (looked for comparison.md, "
          "eval.json, baselines.json); finish a run there or pass another folder",
          file=sys.stderr)
  if damaged:  # a file that does not hold what jaxdd writes, read before any work: refused
    return 2
  return 0 if found else 1


def _register_distill(sub, preset: str) -> None:
  p = sub.add_parser("distill", help="one run: surrogate, KDE weights, DM / DSA / DC / MTT, "
                                     "SynSet, evaluation")
  flags.add_run_flags(p, preset)
  p.add_argument("--reevaluate", action="store_true",
                 help="evaluate a finished run again (default: show its stored results)")
  flags.add_buffer_dir_flag(p)
  g = p.add_argument_group("several processes (hosts)",
                           "one command per process, the same flags except --process-id; "
                           "with --devices all the mesh spans every process's devices")
  g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                 help="process 0's address (jax.distributed.initialize)")
  g.add_argument("--num-processes", type=arguments.positive_int, default=None, metavar="N")
  g.add_argument("--process-id", type=arguments.non_negative_int, default=None, metavar="I",
                 help="0 .. N-1; process 0 writes --workdir, process I its "
                      "<workdir>/.process-I")
  g.add_argument("--coordinator-timeout", type=arguments.positive_float, default=runtime.COORDINATOR_TIMEOUT,
                 metavar="SECONDS",
                 help="how long a process waits for every process to join before it gives up "
                      f"with exit status 1 (default: {runtime.COORDINATOR_TIMEOUT:g})")
  flags.add_common_flags(p)
  p.set_defaults(fn=cmd_distill)

  p = sub.add_parser("buffers", help="train (or reuse) the expert trajectories of a "
                                     "trajectory-matching run, without distilling")
  flags.add_run_flags(p, preset, workdir=False)
  flags.add_buffer_dir_flag(p)
  flags.add_common_flags(p)
  p.set_defaults(fn=cmd_buffers)

  p = sub.add_parser("reproduce", help="vanilla DM vs DM+KDE, same settings (the main job)")
  # reproduce runs both weightings itself: --weighting would be ignored, so it is not accepted
  flags.add_run_flags(p, preset, exclude=("weighting",))
  p.add_argument("--with-baselines", default=None,
                 help="also run these baselines, e.g. random,herding,kcenter,lff,dfa,selecmix,full")
  p.add_argument("--reevaluate", action="store_true",
                 help="evaluate finished runs again (default: show their stored results)")
  flags.add_common_flags(p)
  p.set_defaults(fn=cmd_reproduce)


def _register_study(sub, preset: str) -> None:
  p = sub.add_parser("tune", help="choose the weighting knobs and lr_img on VALIDATION data "
                                  "(a grid over seeds; writes selection.md)")
  flags.add_run_flags(p, preset, exclude=("weighting",))
  p.add_argument("--seeds", default="0,1", help="distillation seeds of the sweep (default: 0,1)")
  p.add_argument("--sweep-protocol", default="cpu", choices=tuple(protocols.PROTOCOLS),
                 help="evaluation protocol of the sweep (default: cpu)")
  p.add_argument("--sweep-models", type=arguments.positive_int, default=3,
                 help="evaluation networks per SynSet in the sweep (default: 3)")
  flags.add_common_flags(p)
  p.set_defaults(fn=cmd_tune)

  p = sub.add_parser("final", help="the result table: the settings chosen by `tune`, the literal "
                                   "paper setting and baselines, each evaluated once on test")
  flags.add_run_flags(p, preset, exclude=("weighting",))
  p.add_argument("--selection", default=None,
                 help="selection.json of a finished `jaxdd tune` (default: WORKDIR/selection.json)")
  p.add_argument("--seeds", default="0,1,2", help="distillation seeds (default: 0,1,2)")
  p.add_argument("--protocol", default="cpu300", choices=tuple(protocols.PROTOCOLS),
                 help="evaluation protocol of the table (default: cpu300, 301 epochs)")
  p.add_argument("--no-random", action="store_true", help="skip the random-real-subset row")
  p.add_argument("--full-models", type=arguments.non_negative_int, default=3,
                 help="networks trained on the full biased training set, first seed only "
                      "(default: 3; 0 skips the row)")
  flags.add_common_flags(p)
  p.set_defaults(fn=cmd_final)

  p = sub.add_parser("baselines", help="random / herding / k-center / LfF / DFA / SelecMix / "
                                       "full-set baselines under the same protocol")
  # Baselines neither distil nor weigh: flags of those stages would be ignored, so they are
  # not accepted (argparse refuses them with exit status 2).
  flags.add_run_flags(p, preset, exclude=BASELINES_IGNORE)
  p.add_argument("--which", default=None,
                 help="comma-separated subset of random,herding,kcenter,lff,dfa,selecmix,full (default: "
                      "random,herding,kcenter,full, plus lff,dfa,selecmix when --vanilla-synset is given)")
  p.add_argument("--vanilla-synset", default=None,
                 help="synset/ directory of a vanilla DM run (lff, dfa and selecmix train on it)")
  flags.add_trust_flag(p)
  flags.add_common_flags(p)
  p.set_defaults(fn=cmd_baselines)


def register(sub: argparse._SubParsersAction, preset: str) -> None:
  """Adds distill, buffers, reproduce, tune, final and baselines (before evaluate)."""
  _register_distill(sub, preset)
  _register_study(sub, preset)


def register_report(sub: argparse._SubParsersAction, preset: str) -> None:
  """Adds ``report`` (listed last; it needs no setup and no compile cache)."""
  p = sub.add_parser("report", help="print the tables of finished runs under a directory")
  p.add_argument("path", help="a run directory, or a folder with runs below it")
  p.set_defaults(fn=cmd_report, quiet=False, no_compile_cache=True)
