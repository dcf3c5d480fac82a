"""The fidelity table: where the reweighted method stands between vanilla DM and its ceilings.

For each arm and distillation seed: distil (``jaxdd.runs.distill_stage``, so the
run directory holds the SynSet, ``weights.json`` with the weight diagnostics and the bias
score over the course of distillation, and ``metrics.jsonl``), then train the preset's
evaluation networks on the SynSet and score them on the **validation** split (what any
choice between arms may use) and on the **test** split (reported once, never used to
choose), with one set of evaluation networks. Arms that need the true bias labels are marked as
such.

  python experiments/fidelity.py --preset proxy --ipc 50 --seeds 0,1,2 \\
      --workdir runs/fidelity-ipc50 [--arms vanilla,kde,...] [--dataset cmnist]
  python experiments/fidelity.py --workdir runs/tiny-fidelity --tiny   # in seconds

Writes ``<workdir>/<arm>/s<seed>/result.json`` (a finished arm/seed is skipped when the
command is run again) and ``<workdir>/table.md`` / ``table.json``: mean ± sample std over
the seeds of the per-seed means over evaluation networks, the share of synthetic images in
their class's aligned bias at the start and end of distillation, and wall times.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax.numpy as jnp
import numpy as np

from jaxdd import evaluate, models, runs, synset, weighting
from jaxdd.config import RunConfig, get_config
from jaxdd.runs import weights as weights_lib
from jaxdd.structs import SynSet

#: arm -> (RunConfig overrides, what it is, uses the true bias labels).
ARMS: dict[str, tuple[dict, str, bool]] = {
    "vanilla": (dict(weighting="none"), "vanilla DM", False),
    "kde": (dict(weighting="kde"), "DM + KDE (paper: uniform batches, in-batch weights)", False),
    "kde_class": (dict(weighting="kde", kde_scope="class"),
                  "DM + KDE, density over the whole class", False),
    "kde_init": (dict(weighting="kde", init="weighted"),
                 "DM + KDE, init ∝ weight", False),
    "kde_is": (dict(weighting="kde", real_sampling="weighted"),
               "DM + KDE, batches importance-sampled ∝ weight", False),
    "kde_init_is": (dict(weighting="kde", init="weighted", real_sampling="weighted"),
                    "DM + KDE, init ∝ weight + importance-sampled batches", False),
    "kde_floor_init": (dict(weighting="kde", init="weighted", kde_floor=0.05),
                       "DM + KDE, density floor, init ∝ weight", False),
    "kde_floor_init_is": (dict(weighting="kde", init="weighted", real_sampling="weighted",
                               kde_floor=0.05),
                          "DM + KDE, density floor, init ∝ weight + importance-sampled batches",
                          False),
    "kde_floor_selection": (dict(weighting="kde", init="weighted", kde_floor=0.05, iterations=0),
                            "selection alone with the density floor, not distilled", False),
    "selection": (dict(weighting="kde", init="weighted", iterations=0),
                  "selection alone: real images drawn ∝ KDE weight, not distilled", False),
    "kde_class_init": (dict(weighting="kde", kde_scope="class", init="weighted"),
                       "DM + KDE, density over the whole class, init ∝ weight", False),
    "oracle": (dict(weighting="oracle"), "oracle group-balanced weights", True),
    "oracle_init": (dict(weighting="oracle", init="weighted"),
                    "oracle weights, init ∝ weight", True),
    "oracle_init_is": (dict(weighting="oracle", init="weighted", real_sampling="weighted"),
                       "oracle weights, init ∝ weight + importance-sampled batches", True),
    "fairdd": (dict(weighting="fairdd"), "FairDD synchronized matching", True),
    # Diagnostic hybrids of the KDE weights and the true colours (see HYBRIDS).
    "hybrid_shares_init_is": (dict(weighting="oracle", init="weighted", real_sampling="weighted"),
                              "hybrid: every colour the same share, KDE weights inside it; init ∝ "
                              "weight + importance-sampled batches", True),
    "hybrid_flat_init_is": (dict(weighting="oracle", init="weighted", real_sampling="weighted"),
                            "hybrid: each colour the share KDE gives it, equal weights inside it; "
                            "init ∝ weight + importance-sampled batches", True),
    "unbiased": (dict(weighting="none", conflict_ratio=0.9),
                 "vanilla DM on unbiased data (10 % aligned): DM's ceiling", False),
}

METRICS = ("overall", "aligned", "conflicting", "worst_group")

#: Arms whose whole-class weights mix the KDE weights (power, the preset's v and T) with the
#: true colours, to split what the KDE weights cost: 'shares' keeps the KDE weights' order
#: inside each (class, colour) group but gives every group the same total; 'flat' keeps each
#: group's KDE total but spreads it evenly over the group's images.
HYBRIDS = {"hybrid_shares_init_is": "shares", "hybrid_flat_init_is": "flat"}


def hybrid_log_density(mode: str, config: RunConfig, run_data: runs.RunData
                       ) -> np.ndarray:
  """A "log density" whose power weights at T = 1 (the oracle's form) are the hybrid's weights."""
  train, nc = run_data.train, run_data.num_classes
  kde_cfg = config.replace(weighting="kde", init="real", real_sampling="uniform")
  emb = runs.surrogate_embeddings(kde_cfg, run_data, runs.run_keys(kde_cfg)[0],
                                  progress=False)
  labels, bias = np.asarray(train.labels), np.asarray(train.bias)
  w = weighting.class_scope_weights(emb, labels, variance=kde_cfg.kde_variance,
                                    temperature=kde_cfg.kde_temperature, normalize="power",
                                    num_classes=nc).astype(np.float64)
  out = np.zeros(len(labels))
  for c in range(nc):
    rows = labels == c
    g, wc = bias[rows], w[rows] / w[rows].sum()
    share = np.bincount(g, weights=wc, minlength=g.max() + 1)
    size = np.bincount(g, minlength=g.max() + 1)
    new = wc / share[g] / (size > 0).sum() if mode == "shares" else share[g] / size[g]
    out[rows] = -np.log(np.maximum(new, 1e-300))
  return out.astype(np.float32)


def refresh_diagnostics(result: dict, path: str) -> dict:
  """Adds the in-group ESS to a result written before it existed, from the run's saved config.

  The weight diagnostics are recomputed with :func:`jaxdd.runs.weight_diagnostics`
  (the same key and code as a new run); nothing is distilled or evaluated again.
  """
  config = RunConfig.from_dict(result["config"])
  run_data = runs.RunData(config)
  keys = runs.run_keys(config)
  emb = (runs.surrogate_embeddings(config, run_data, keys[0], progress=False)
         if config.weighting == "kde" else None)
  report = runs.weight_diagnostics(config, run_data, emb, keys[3])
  result = {**result, **within_group_ess(report["groups"]), "ess_recomputed": True}
  synset.atomic_write_json(path, result)
  return result


def run_arm(config: RunConfig, workdir: str, progress: bool,
            refresh: bool = False, run_data: runs.RunData | None = None) -> dict:
  """One arm's run (distilled, evaluated on valid and test) and its diagnostics, or the stored
  result. ``run_data``: the seed's data, shared by its arms (they differ in the weighting
  only), so its bias classifier is trained once (:func:`jaxdd.runs.bias_classifier`)."""
  path = os.path.join(workdir, "result.json")
  if os.path.exists(path):
    with open(path) as f:
      result = json.load(f)
    if refresh and result.get("ess_in_aligned") is None:
      result = refresh_diagnostics(result, path)
    return result
  t0 = time.perf_counter()
  run_data = runs.RunData(config) if run_data is None else run_data
  syn = runs.distill_stage(config, workdir, run_data=run_data, progress=progress)
  t_distill = time.perf_counter() - t0
  k_eval = runs.run_keys(config)[2]
  model = models.get(config.eval_model, num_classes=run_data.num_classes)
  syn = SynSet(jnp.asarray(syn.images), jnp.asarray(syn.labels))
  out = {"config": config.to_dict(), "distill_s": t_distill}
  t1 = time.perf_counter()
  # One set of networks, scored on validation (conflicting accuracy, for choices) and on test.
  res = evaluate.evaluate_synset(k_eval, syn, run_data.batch(run_data.test), model=model,
                                 protocol=config.eval_protocol, num_models=config.num_eval_models,
                                 valid=run_data.batch(run_data.valid), select_on="conflicting",
                                 progress=progress)
  out["valid"] = {"conflicting": float(np.mean(res.valid_scores))}
  out["test"] = {m: res.mean(m) for m in METRICS}
  out["eval_s"] = time.perf_counter() - t1
  with open(os.path.join(workdir, "weights.json")) as f:
    w = json.load(f)
  traj = w.get("bias_trajectory", [])
  out["bias_start"] = traj[0]["bias_aligned_fraction"] if traj else None
  out["bias_end"] = traj[-1]["bias_aligned_fraction"] if traj else None
  out["batch_ess"] = float(np.nanmean([e for e in w["batch_ess"] if e is not None]))
  out["class_ess"] = float(np.mean([g["ess"] for g in w["groups"] if g["ess"]]))
  out["min_share"] = float(np.mean([g["min_share"] for g in w["groups"]]))
  out["max_share"] = float(np.mean([g["max_share"] for g in w["groups"]]))
  out.update(within_group_ess(w["groups"]))
  synset.atomic_write_json(path, out)
  return out


def within_group_ess(groups: list[dict]) -> dict:
  """Mean over classes of the in-group ESS fraction of the largest (aligned) group and of the others.

  Uses the true bias labels (a diagnostic). Empty for runs from before ``group_ess`` existed.
  """
  if not groups or "group_ess" not in groups[0]:
    return {}
  major, minor = [], []
  for g in groups:
    biggest = max(g["counts"], key=lambda v: g["counts"][v])
    ess = {k: e for k, e in g["group_ess"].items() if e is not None}
    if biggest in ess:
      major.append(ess[biggest])
    minor += [e for k, e in ess.items() if k != biggest]
  return {"ess_in_aligned": float(np.mean(major)) if major else None,
          "ess_in_conflicting": float(np.mean(minor)) if minor else None}


def table(rows: dict[str, list[dict]]) -> str:
  lines = ["| arm | bias labels | valid conflicting | test overall | test aligned | "
           "test conflicting | test worst group | in aligned colour, start → end | "
           "batch ESS | group share min / max | in-group ESS / size, aligned · conflicting | "
           "distill + eval s |",
           "|---" * 12 + "|"]
  for arm, results in rows.items():
    label = ARMS[arm][1]
    pm = lambda split, m: runs.format_pm([r[split][m] for r in results])
    bias = (f"{runs.format_pm([r['bias_start'] for r in results])} → "
            f"{runs.format_pm([r['bias_end'] for r in results])}")
    not_distilled = all(r["config"]["iterations"] == 0 for r in results)
    ess = ("– (not distilled)" if not_distilled else
           f"{np.mean([r['batch_ess'] for r in results]):.1f}")
    share = (f"{np.mean([r['min_share'] for r in results]):.3f} / "
             f"{np.mean([r['max_share'] for r in results]):.3f}")
    in_group = [(r.get("ess_in_aligned"), r.get("ess_in_conflicting")) for r in results]
    in_group = ("–" if any(a is None or b is None for a, b in in_group) else
                f"{np.mean([a for a, _ in in_group]):.3f} · {np.mean([b for _, b in in_group]):.2f}")
    secs = np.median([r["distill_s"] + r.get("eval_s", r.get("eval_valid_s", 0) +
                                                   r.get("eval_test_s", 0)) for r in results])
    lines.append(f"| {label} | {'yes' if ARMS[arm][2] else 'no'} | {pm('valid', 'conflicting')} | "
                 f"{pm('test', 'overall')} | {pm('test', 'aligned')} | "
                 f"{pm('test', 'conflicting')} | {pm('test', 'worst_group')} | {bias} | "
                 f"{ess} | {share} | {in_group} | {secs:.0f} |")
  return "\n".join(lines)


def data_parser(doc: str) -> argparse.ArgumentParser:
  """A parser with the flags that pick the run preset and the data (shared by experiments)."""
  p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="proxy")
  p.add_argument("--dataset", default="cmnist")
  p.add_argument("--surrogate-preset", default=None,
                 help="the surrogate's preset (default: the preset's own), e.g. cpu for the "
                      "short proxy surrogate at paper scale")
  p.add_argument("--source", default=None,
                 help="the data source (default: the preset's; 'full' is the full base "
                      "dataset, e.g. the 60,000 MNIST digits of `jaxdd data fetch mnist`)")
  p.add_argument("--conflict-ratio", type=float, default=0.05)
  return p


def data_overrides(args: argparse.Namespace) -> dict:
  """The RunConfig fields that :func:`data_parser`'s optional flags set (the rest: the preset's).

  Example:
    >>> data_overrides(data_parser("").parse_args(["--source", "full"]))
    {'source': 'full'}
  """
  return {k: v for k, v in (("source", args.source), ("surrogate_preset", args.surrogate_preset))
          if v is not None}


def main(argv=None) -> int:
  p = data_parser(__doc__)
  p.add_argument("--ipc", type=int, default=None)
  p.add_argument("--iterations", type=int, default=None)
  p.add_argument("--lr-img", type=float, default=None)
  p.add_argument("--method", default="dm")
  p.add_argument("--kde-variance", type=float, default=None,
                 help="the KDE bandwidth of every KDE arm (default: the preset's)")
  p.add_argument("--kde-temperature", type=float, default=None,
                 help="the KDE normalisation temperature of every KDE arm (default: the preset's)")
  p.add_argument("--kde-floor", type=float, default=None,
                 help="the density floor (a quantile) of the arms that have one (default 0.05)")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--arms", default=",".join(ARMS))
  p.add_argument("--workdir", required=True)
  p.add_argument("--quiet", action="store_true")
  p.add_argument("--table-only", action="store_true",
                 help="only tabulate the finished arm/seed runs in --workdir (runs nothing)")
  p.add_argument("--refresh-diagnostics", action="store_true",
                 help="add the in-group ESS to finished runs written before it existed "
                      "(recomputed from each run's saved config; nothing is distilled again)")
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: the smoke preset, seed 0, arms vanilla and kde (flags given "
      "explicitly still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(preset="smoke", seeds="0", arms="vanilla,kde")
    args = p.parse_args(argv)
  arms = [a for a in args.arms.split(",") if a]
  unknown = [a for a in arms if a not in ARMS]
  if unknown:
    print(f"fidelity: error: unknown arms {unknown}; choose from {list(ARMS)}", file=sys.stderr)
    return 2
  seeds = [int(s) for s in args.seeds.split(",")]
  base = get_config(args.preset, dataset=args.dataset, method=args.method,
                    **data_overrides(args),
                    conflict_ratio=args.conflict_ratio, ipc=args.ipc,
                    iterations=args.iterations, lr_img=args.lr_img,
                    kde_variance=args.kde_variance,
                    kde_temperature=args.kde_temperature)
  # Seed-major: an interrupted queue still has every arm at the first seeds.
  def arm_config(arm: str, seed: int) -> RunConfig:
    fields = dict(ARMS[arm][0])
    if "kde_floor" in fields and args.kde_floor is not None:
      fields["kde_floor"] = args.kde_floor
    return base.replace(seed=seed, **fields)

  configs = {(a, s): arm_config(a, s) for s in seeds for a in arms}
  rows: dict[str, list[dict]] = {a: [] for a in arms}
  seed_data: dict[int, runs.RunData] = {}
  for (arm, seed), cfg in configs.items():
    done = os.path.exists(os.path.join(args.workdir, arm, f"s{seed}", "result.json"))
    if args.table_only and not done:
      continue
    print(f"[fidelity] {arm} seed {seed}", flush=True)
    plain = weights_lib.run_log_density
    if arm in HYBRIDS:  # the run (and its weights.json) see the hybrid weights
      weights_lib.run_log_density = lambda c, rd, e, mode=HYBRIDS[arm]: hybrid_log_density(mode, c, rd)
    try:
      rows[arm].append(
          run_arm(cfg, os.path.join(args.workdir, arm, f"s{seed}"), progress=not args.quiet,
                  refresh=args.refresh_diagnostics,
                  run_data=None if done else seed_data.setdefault(seed, runs.RunData(cfg))))
    finally:
      weights_lib.run_log_density = plain
    md = table({a: r for a, r in rows.items() if r})
    synset.atomic_write_bytes(os.path.join(args.workdir, "table.md"), (md + "\n").encode())
    synset.atomic_write_json(os.path.join(args.workdir, "table.json"), rows)
  print(table({a: r for a, r in rows.items() if r}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
