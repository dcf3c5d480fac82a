"""How good are the KDE weights? A sweep of the weighting knobs, judged two ways.

For one run's data and surrogate (the same cached surrogate `jaxdd distill` uses for that
preset and seed), the whole-class weights are computed for every (variance, temperature)
of a grid, the variance also given relative to the embedding's nearest-neighbour distances
(`--nn-factors`: v = f * median squared distance to the nearest other image of the class).
Each setting is scored by criteria that need **no bias labels** (the mean whole-class
effective sample size; the share of the weight on the largest density cluster of each class,
clusters from k-means on the embeddings) and, as a check only, by the true bias groups
(the share of the weight on conflicting images, the smallest and largest colour share
against the balanced 0.1, AUROC).

  python experiments/weight_quality.py --preset proxy --seed 0 --out runs/weights-proxy.md
  python experiments/weight_quality.py --out runs/tiny-weights.md --tiny  # in seconds
"""
from __future__ import annotations

import os
import sys

import jax
import numpy as np

from jaxdd import runs, synset, weighting
from jaxdd.config import get_config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fidelity  # noqa: E402  (the sibling experiment's shared flags)


def nn_sq_distance(emb: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """Median over images of the squared distance to the nearest other image of its class."""
  out = []
  for c in range(num_classes):
    z = emb[labels == c].astype(np.float64)
    sq = (z ** 2).sum(1)
    best = np.full(len(z), np.inf)
    for s in range(0, len(z), 1024):
      d = sq[s:s + 1024, None] + sq[None, :] - 2 * z[s:s + 1024] @ z.T
      d[np.arange(d.shape[0]), s + np.arange(d.shape[0])] = np.inf
      best[s:s + 1024] = d.min(1)
    out.append(np.maximum(best, 0.0))
  return float(np.median(np.concatenate(out)))


def kmeans(key: jax.Array, z: np.ndarray, k: int, iters: int = 30) -> np.ndarray:
  """Plain Lloyd's k-means (k-means++ start); returns the cluster of each row."""
  rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2 ** 31 - 1)))
  centres = [z[rng.integers(len(z))]]
  for _ in range(1, k):
    d = np.min([((z - c) ** 2).sum(1) for c in centres], axis=0)
    centres.append(z[rng.choice(len(z), p=d / d.sum())])
  centres = np.stack(centres)
  for _ in range(iters):
    assign = np.argmin(((z[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    for j in range(k):
      if (assign == j).any():
        centres[j] = z[assign == j].mean(0)
  return assign


def main(argv=None) -> int:
  p = fidelity.data_parser(__doc__)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--variances", default="0.003,0.01,0.03,0.1")
  p.add_argument("--temperatures", default="0.1,0.25,0.5,1")
  p.add_argument("--nn-factors", default="1,4")
  p.add_argument("--clusters", type=int, default=10)
  p.add_argument("--out", required=True)
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: the smoke preset, one variance, temperature and NN factor, 2 "
      "clusters (flags given explicitly still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(preset="smoke", variances="0.1", temperatures="1", nn_factors="1", clusters=2)
    args = p.parse_args(argv)
  cfg = get_config(args.preset, dataset=args.dataset,
                   conflict_ratio=args.conflict_ratio, seed=args.seed, weighting="kde",
                   **fidelity.data_overrides(args))
  run_data = runs.RunData(cfg)
  train, nc = run_data.train, run_data.num_classes
  emb = runs.surrogate_embeddings(cfg, run_data, runs.run_keys(cfg)[0], progress=False)
  labels, bias, aligned = np.asarray(train.labels), np.asarray(train.bias), np.asarray(train.aligned)
  nn = nn_sq_distance(emb, labels, nc)
  clusters = np.zeros(len(labels), int)
  for c in range(nc):
    sel = labels == c
    clusters[sel] = kmeans(jax.random.fold_in(jax.random.key(args.seed), c), emb[sel],
                           args.clusters)
  variances = [(float(v), f"{float(v):g}") for v in args.variances.split(",")]
  variances += [(float(f) * nn, f"{float(f):g} x NN² = {float(f) * nn:.3g}")
                for f in args.nn_factors.split(",")]
  rows = []
  for v, v_label in variances:
    for t in (float(x) for x in args.temperatures.split(",")):
      w = weighting.class_scope_weights(emb, labels, variance=v, temperature=t,
                                        normalize="power", num_classes=nc)
      groups = weighting.group_report(w, labels, bias, num_classes=nc)
      top_cluster = np.mean([np.bincount(clusters[labels == c], weights=w[labels == c],
                                         minlength=args.clusters).max() for c in range(nc)])
      report = weighting.weight_report(w, labels, aligned, num_classes=nc)["overall"]
      rows.append(dict(variance=v_label, temperature=t,
                       ess=float(np.mean([g["ess"] for g in groups])),
                       top_cluster=float(top_cluster),
                       conflicting=report["conflicting_fraction_weighted"],
                       min_share=float(np.mean([g["min_share"] for g in groups])),
                       max_share=float(np.mean([g["max_share"] for g in groups])),
                       auroc=report["auroc"]))
  lines = [f"{args.dataset} {args.conflict_ratio:g}, preset {args.preset}, surrogate "
           f"{cfg.surrogate_preset}, source {cfg.source}, seed {args.seed}: "
           f"{len(labels)} training images; median squared NN distance {nn:.4g}; "
           f"k-means with {args.clusters} clusters per class",
           "",
           "| variance | T | ESS (mean over classes) | largest cluster's share | "
           "conflicting share | colour share min / max (balanced 0.1) | AUROC |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['variance']} | {r['temperature']:g} | {r['ess']:.0f} | "
                 f"{r['top_cluster']:.2f} | {r['conflicting']:.2f} | {r['min_share']:.3f} / "
                 f"{r['max_share']:.3f} | {r['auroc']:.3f} |")
  md = "\n".join(lines)
  synset.atomic_write_bytes(args.out, (md + "\n").encode())
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())
