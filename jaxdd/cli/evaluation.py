"""``jaxdd evaluate`` and ``jaxdd cross-arch``: fresh networks trained on a saved SynSet."""
from __future__ import annotations

import argparse
import os

from jaxdd import elf, protocols, results, synset
from jaxdd.cli import arguments, flags
from jaxdd.cli.trust import signature_line, synset_path
from jaxdd.runs import artifacts, files, outputs
from jaxdd.security import signing


def _overrides(args) -> artifacts.Overrides:
  return artifacts.Overrides(dataset=args.dataset, conflict_ratio=args.conflict_ratio,
                             source=args.source, seed=args.seed)


def _features(args) -> artifacts.FeatureModel | None:
  return artifacts.FeatureModel(args.feature_model, args.feature_protocol) if args.elf else None


def _check_out(args, what: str, owns) -> None:
  """``--out`` destroys nothing and can be written (:func:`jaxdd.runs.outputs.check_output_file`):
  checked before the SynSet is loaded or any network trained."""
  if args.out:
    outputs.check_output_file(args.out, what=what, owns=owns)


def _is_evaluation(path: str) -> bool:
  return outputs.json_object_with(path, ("protocol", "summary", "per_model"))


def _is_matrix(path: str) -> bool:
  try:
    return files.read_cross_arch(path) is not None
  except (ValueError, OSError):
    return False


def cmd_evaluate(args) -> int:
  _check_out(args, "an evaluation", _is_evaluation)
  syn, meta = signing.load_synset(synset_path(args.synset), trust=args.trust)
  if args.out:  # refused before any work: --out in a run directory of another setting
    artifacts.check_out(args.out, artifacts.evaluation_setting(
        meta, _overrides(args), protocol=args.protocol, model=args.model,
        num_models=args.num_models))
  print(signature_line(meta))
  result = artifacts.evaluate_synset(syn, meta, _overrides(args), protocol=args.protocol,
                                     model=args.model, num_models=args.num_models,
                                     features=_features(args), progress=not args.quiet)
  if args.elf:
    print("track: ELF (a feature model trained on the REAL training set; not comparable with "
          "a plain evaluation)")
  print(result.format_table())
  if args.out:
    synset.atomic_write_json(args.out, {**result.to_dict(),
                                        "synset": os.path.abspath(synset_path(args.synset))})
    print(f"written to {args.out}")
  return 0


def cmd_cross_arch(args) -> int:
  specs = [s.strip() for s in args.models.split(",") if s.strip()]
  if not specs:
    raise ValueError("--models needs at least one model spec, e.g. convnet,convnet-d4,resnet18,mlp")
  _check_out(args, "a cross-architecture matrix", _is_matrix)
  syn, meta = signing.load_synset(synset_path(args.synset), trust=args.trust)
  features = _features(args)
  setting = artifacts.cross_arch_setting(synset_path(args.synset), specs, _overrides(args),
                                         protocol=args.protocol, num_models=args.num_models,
                                         features=features)
  if args.out:  # refused before any work: --out holding another setting's results
    artifacts.check_matrix_out(args.out, setting)
  print(signature_line(meta))
  test = artifacts.artifact_split(meta, "test", _overrides(args))
  read = artifacts.data_read(test)
  print(f"data: {results.data_line(read)}")
  matrix = artifacts.cross_arch(syn, meta, specs, _overrides(args), protocol=args.protocol,
                                num_models=args.num_models, features=features,
                                progress=not args.quiet, test=test)
  print(f"{meta.get('method', '?')} SynSet, protocol {args.protocol}, {args.num_models} networks "
        "per cell" + (f"; ELF feature model {args.feature_model} ({args.feature_protocol}) trained "
                      "on the real training set" if args.elf else ""))
  print(elf.format_matrix(matrix))
  if args.out:
    synset.atomic_write_json(args.out, artifacts.cross_arch_record(setting, matrix, data=read))
    print(f"written to {args.out}")
  return 0


def register(sub: argparse._SubParsersAction, preset: str) -> None:
  """Adds ``evaluate`` and ``cross-arch``."""
  p = sub.add_parser("evaluate", help="evaluate a saved SynSet on its dataset's test split")
  p.add_argument("synset", help="SynSet artifact directory")
  p.add_argument("--protocol", default=None, choices=tuple(protocols.PROTOCOLS),
                 help="default: the protocol recorded in the artifact")
  p.add_argument("--model", default=None,
                 help="architecture spec, e.g. convnet, resnet18 (default: the artifact's)")
  p.add_argument("--num-models", type=arguments.positive_int, default=None,
                 help="networks to train (default: the artifact's run setting, else 5)")
  flags.add_artifact_data_flags(p, out="write the result JSON here")
  p.set_defaults(fn=cmd_evaluate)

  p = sub.add_parser("cross-arch", help="train several architectures on a SynSet, plainly and "
                                        "with ELF: the cross-architecture matrix")
  p.add_argument("synset", help="SynSet artifact directory")
  p.add_argument("--models", default="convnet,convnet-d4,resnet18,mlp",
                 help="comma-separated architecture specs (default: convnet,convnet-d4,"
                      "resnet18,mlp)")
  p.add_argument("--protocol", default="cpu", choices=tuple(protocols.PROTOCOLS),
                 help="evaluation protocol of every cell (default: cpu)")
  p.add_argument("--num-models", type=arguments.positive_int, default=3, help="networks per cell (default: 3)")
  flags.add_artifact_data_flags(p, out="write the matrix JSON here")
  p.set_defaults(fn=cmd_cross_arch)
