"""How well does DBSCAN's radius find the minority? Median k-NN distance against the knee.

No distillation: for each dataset, the real batches a DM step would draw (``--batches`` real
images per class, ``--batches-per-class`` batches of each class per seed, drawn as DM draws
them, :func:`jaxdd.weighting.batch_plan`) are given FairDD's group-balanced weights
(:func:`jaxdd.weighting.group_balanced_weights`) over the groups of each row below, and the
weights are scored against the TRUE bias labels (:func:`jaxdd.weighting.weight_report`): the
share of a class's weight on bias-conflicting images, and the AUROC with which the weights rank
conflicting above aligned images. The groups:

* uniform weights (vanilla DM) and the true bias groups (FairDD with labels): the references;
* DBSCAN of each batch (``--weighting fairdd_batch``) in the step's features (a fresh random
  ConvNet of the preset's architecture per seed, unaugmented images) or in the surrogate's
  embedding (on the unit sphere), eps the median 5-NN distance or the knee of the batch's
  2-distance curve (``--fairdd-eps``);
* DBSCAN of each whole class in the surrogate's embedding (``--weighting fairdd_dbscan`` with
  the knee; the median rule beside it), and k-means of each whole class (``fairdd_pseudo``).

The column "whole class" balances the groups over each whole class at once. Every DBSCAN has
3 samples per core point and at most ``--clusters`` clusters (noise one more group).

  python experiments/dbscan_radius.py                      # results/fairdd-label-free/dbscan-radius.json
  python experiments/dbscan_radius.py --tiny --out runs/dbscan-tiny.json   # the smoke preset, in a minute
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import models, runs, weighting
from jaxdd._src import io as _io
from jaxdd.config import get_config
from jaxdd.results import format_pm
from jaxdd.runs import version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "results", "fairdd-label-free", "dbscan-radius.json")
#: (row label, features, groups): features 'random' (the step's) or 'surrogate'; groups
#: 'uniform', 'true', 'batch:<rule>', 'class:<rule>' or 'kmeans'.
ROWS = (("uniform weights (vanilla DM)", "–", "uniform"),
        ("true bias groups (FairDD with labels)", "–", "true"),
        ("DBSCAN of each batch, median eps (`fairdd_batch`)", "random", "batch:median"),
        ("DBSCAN of each batch, knee eps (`--fairdd-eps knee`)", "random", "batch:knee"),
        ("DBSCAN of each batch, median eps", "surrogate", "batch:median"),
        ("DBSCAN of each batch, knee eps", "surrogate", "batch:knee"),
        ("DBSCAN of each whole class, median eps", "surrogate", "class:median"),
        ("DBSCAN of each whole class, knee eps (`fairdd_dbscan`)", "surrogate", "class:knee"),
        ("k-means of each whole class (`fairdd_pseudo`)", "surrogate", "kmeans"))


def pm2(values) -> str:
  """``"mean ± std"`` with two decimals (AUROC); the sample std, 0 for one value."""
  v = np.asarray(values, float)
  return f"{v.mean():.2f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.2f}"


def unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def random_features(key: jax.Array, images: np.ndarray, depth: int, width: int, nc: int,
                    chunk: int = 2048) -> np.ndarray:
  """(N, f) features of a fresh random ConvNet (the network a DM step draws)."""
  model = models.ConvNet(nc, depth=depth, width=width)
  v = model.init(key, jnp.asarray(images[:1]))
  fn = jax.jit(lambda x: model.apply(v, x, return_features=True)[0])
  return np.concatenate([np.asarray(fn(jnp.asarray(images[i:i + chunk])))
                         for i in range(0, len(images), chunk)])


def batch_groups(feats: np.ndarray, mask: np.ndarray, rule: str, k: int,
                 chunk_rows: int = 16384) -> np.ndarray:
  """(num_batches, B) DBSCAN ids of each batch, a chunk of batches at a time (one program)."""
  nb, b = mask.shape
  per = max(1, chunk_rows // b)
  run = jax.jit(lambda f, m: weighting.batch_pseudo_groups(f, m, max_clusters=k, eps_rule=rule))
  out = []
  for i in range(0, nb, per):
    f, m = feats[i:i + per], mask[i:i + per]
    pad = per - len(m)  # the last chunk padded with empty batches: the same program
    f = np.concatenate([f, np.zeros((pad,) + f.shape[1:], f.dtype)])
    m = np.concatenate([m, np.zeros((pad, b), bool)])
    out.append(np.asarray(run(jnp.asarray(f), jnp.asarray(m)))[:per - pad])
  return np.concatenate(out)


def score(w: np.ndarray, rows: np.ndarray, mask: np.ndarray, labels, aligned, nc: int):
  """(conflicting share, mean per-class AUROC) of per-batch weights (each batch sums to 1)."""
  valid = mask.astype(bool)
  rep = weighting.weight_report(np.asarray(w, np.float64)[valid], labels[rows[valid]],
                                aligned[rows[valid]], num_classes=nc)
  aurocs = [c["auroc"] for c in rep["per_class"] if c["auroc"] is not None]
  return rep["overall"]["conflicting_fraction_weighted"], float(np.mean(aurocs))


def class_plan(labels: np.ndarray, nc: int) -> tuple[np.ndarray, np.ndarray]:
  """One 'batch' per class holding the whole class (padded): the whole-class column."""
  size = int(np.bincount(labels, minlength=nc).max())
  index, mask = np.zeros((nc, size), np.int64), np.zeros((nc, size), bool)
  for c in range(nc):
    idx = np.flatnonzero(labels == c)
    index[c, :idx.size], mask[c, :idx.size] = idx, True
  return index, mask


def measure(args, name: str, ratio: float) -> tuple[list, list]:
  """The table rows of one dataset and its notes."""
  cfg = get_config(args.preset, dataset=name, conflict_ratio=ratio, weighting="fairdd_dbscan",
                   fairdd_clusters=args.clusters)
  rd = runs.RunData(cfg)
  train, nc, k = rd.train, rd.num_classes, args.clusters
  labels, aligned = np.asarray(train.labels), np.asarray(train.aligned)
  bias = np.asarray(train.bias)
  num_bias = int(bias.max()) + 1
  emb = unit(runs.surrogate_embeddings(cfg, rd, runs.run_keys(cfg)[0], progress=False))
  images = np.asarray(rd.normalized(train))
  whole, seconds = {}, {}
  for rule in ("median", "knee"):
    t = time.perf_counter()
    whole[rule] = weighting.dbscan_pseudo_groups(emb, labels, num_classes=nc, max_clusters=k,
                                                 eps_rule=rule)
    seconds[rule] = (time.perf_counter() - t) / nc
  kmeans = runs.run_pseudo_groups(cfg.replace(weighting="fairdd_pseudo"), labels, emb, nc)
  sizes = [int(b) for b in args.batches.split(",")]
  cols: dict = {}  # (row, size) -> [(share, auroc) per seed]
  present: dict = {}  # row -> groups per class (B = the middle size, or the whole class)
  for seed in range(args.seeds):
    k_plan, k_net = jax.random.split(jax.random.key(seed))
    rnd = None
    for b in sizes + ["whole"]:
      if b == "whole":
        if seed:  # deterministic: one seed
          continue
        index, mask = class_plan(labels, nc)
      else:
        index, mask = weighting.batch_plan(jax.random.fold_in(k_plan, b), labels, batch_size=b,
                                           num_classes=nc, num_rounds=1)
        rng = np.random.default_rng([seed, b])  # at most batches_per_class of each class
        first = labels[index[:, 0]]
        keep = np.concatenate([rng.permutation(np.flatnonzero(first == c))[
            :args.batches_per_class] for c in range(nc)])
        index, mask = index[keep], mask[keep]
      index = np.asarray(index)
      for label, feats, groups in ROWS:
        if groups.startswith("batch:") and b == "whole":
          continue
        if groups == "uniform":
          g, ng = np.zeros(index.shape, np.int32), 1
        elif groups == "true":
          g, ng = bias[index], num_bias
        elif groups == "kmeans":
          g, ng = kmeans[index], k
        elif groups.startswith("class:"):
          g, ng = whole[groups[6:]][index], k + 1
        else:
          if feats == "random" and rnd is None:
            rnd = random_features(k_net, images, cfg.depth, cfg.width, nc)
          space = rnd if feats == "random" else emb
          g, ng = batch_groups(space[index], mask, groups[6:], k), k + 1
        w, _ = weighting.group_balanced_weights(jnp.asarray(g), jnp.asarray(mask), ng)
        cols.setdefault((label, feats, b), []).append(
            score(np.asarray(w), index, mask, labels, aligned, nc))
        if b == (sizes[len(sizes) // 2] if groups.startswith("batch:") else "whole") and not seed:
          present[(label, feats)] = np.mean([len(np.unique(gi[mi])) for gi, mi in
                                             zip(np.asarray(g), mask)])
  out = []
  for label, feats, _ in ROWS:
    row = [f"{name} {ratio:g}", label, feats]
    for b in sizes + ["whole"]:
      vals = cols.get((label, feats, b))
      row += (["–", "–"] if vals is None else
              [format_pm([v[0] for v in vals]), pm2([v[1] for v in vals])])
    row.append(round(float(present[(label, feats)]), 1))
    out.append(row)
  notes = [f"{name} {ratio:g}: {len(labels)} training images; the whole-class DBSCAN took "
           f"{seconds['median']:.1f} s (median) and {seconds['knee']:.1f} s (knee) a class "
           f"({emb.shape[1]}-d embedding, the first includes its compilation)."]
  return out, notes


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--preset", default="proxy")
  p.add_argument("--datasets", default="cmnist:0.05,cmnist_bg:0.1",
                 help="comma-separated NAME:CONFLICT_RATIO")
  p.add_argument("--batches", default="64,256,1024", help="real images per class of a batch")
  p.add_argument("--batches-per-class", type=int, default=8)
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--clusters", type=int, default=10)
  p.add_argument("--out", default=OUT)
  p.add_argument("--tiny", action="store_true", help=(
      "check the script quickly: the smoke preset's embedded data, batches 16,32, 2 seeds, 2 "
      "batches per class, CMNIST only (flags given explicitly still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(preset="smoke", datasets="cmnist:0.05", batches="16,32", seeds=2,
                   batches_per_class=2)
    args = p.parse_args(argv)
  t0 = time.perf_counter()
  rows, notes = [], []
  for spec in args.datasets.split(","):
    name, ratio = spec.split(":")
    r, n = measure(args, name, float(ratio))
    rows += r
    notes += n
    print(*r, sep="\n", flush=True)
  sizes = args.batches.split(",")
  columns = ["data", "groups", "features"]
  for b in sizes + ["whole class"]:
    columns += [f"conflicting share, {b}" if b != "whole class" else "conflicting share, whole class",
                f"AUROC, {b}"]
  columns.append("groups per class")
  notes = [
      "Conflicting share: the share of a class's weight on its bias-conflicting images, in % (mean "
      "over classes; uniform weights give the conflict ratio). AUROC: the probability that a random "
      "conflicting image of a class outweighs a random aligned one (ties 1/2), mean over classes. "
      "Columns by real images per class of a batch; 'whole class' balances the groups over each "
      "whole class at once. Groups per class: distinct groups (noise included) in a batch of the "
      f"middle size ({sizes[len(sizes) // 2]}) for the DBSCAN of each batch, else in a whole class.",
      f"± is the sample standard deviation over {args.seeds} seeds; a seed draws "
      f"{args.batches_per_class} batches of each class as DM does and, for the step's features, "
      "one fresh random network for all of them. The whole-class column is one deterministic "
      "value (± 0). Every DBSCAN: 3 samples per core point, at most "
      f"{args.clusters} clusters, noise one more group; no bias label is read until the scoring.",
  ] + notes + [f"Total {time.perf_counter() - t0:.0f} s."]
  _io.atomic_write_json(args.out, {
      "caption": f"How the groups of label-free FairDD weigh the minority, without distilling "
                 f"(`{args.preset}` preset: its data, surrogate and step network).",
      "columns": columns, "rows": rows, "notes": notes,
      "date": time.strftime("%Y-%m-%d"), "commit": version.short_commit(),
      "machine": version.machine(),
      "command": [" ".join(["python experiments/dbscan_radius.py"] + sys.argv[1:])]})
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
