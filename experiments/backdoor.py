"""The backdoor table: a clean SynSet against two attacks, what `jaxdd audit` and signatures say.

For each dataset and seed, three SynSets of the same run (DM + KDE at the chosen preset):

* ``clean``: distilled from the clean training set and signed by its author;
* ``badnets``: distilled from a training set in which ``--fraction`` of the images of other
  classes carry the trigger and the target label (BadNets; the author does not know, and signs);
* ``posthoc``: the clean SynSet after an interceptor's post-hoc attack
  (:func:`jaxdd.runs.attacks.posthoc_attack`); the interceptor cannot sign with the
  author's key and re-signs with its own.

Each SynSet is scored as a victim would use it: ``--victim-models`` networks of the run's
evaluation architecture, trained under ``--victim-protocol``, give the clean accuracy on the test
split and the attack success rate (ASR: test images of other classes stamped with the trigger
that land in the target class). Then ``jaxdd audit`` (its defaults; validation split only) and the
signature check against the author's public key. These are red-team measurements, for judging
the defences.

  python experiments/backdoor.py --preset cpu --datasets cmnist,bg_fmnist --seeds 0,1,2 \\
      --workdir runs/backdoor
  python experiments/backdoor.py --workdir runs/tiny-backdoor --tiny   # in seconds

A dataset entry ``NAME@RATIO`` sets the conflict ratio (default: the preset's, 5 %), e.g.
``bg_fmnist@0.9``: Fashion-MNIST whose background colours are independent of the class (10 %
aligned, i.e. unbiased). Writes ``<workdir>/<entry>/s<seed>/<variant>/result.json`` (finished
cells are skipped when the command is run again), ``<workdir>/table.md`` / ``table.json``,
``cells.md`` (one row per SynSet: which probe fired on which class) and ``rates.md`` (detection
and false alarms per dataset entry, with exact 95 % intervals),
which cover every finished cell under the workdir (so separate runs, e.g. one per seed, add up).
``--table-only`` writes the table without running anything; ``--calibration-seeds 0,1,2`` shows
the seeds the probe's rules were chosen on apart from the held-out ones (an entry ``NAME:SEED``,
e.g. ``cmnist:0,bg_fmnist:0``, names one dataset entry's seed only).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import data, evaluate, models, protocols, runs, synset, train
from jaxdd.config import get_config
from jaxdd.runs import attacks as run_attacks
from jaxdd.runs import audit as run_audit
from jaxdd.security import attacks, audit, signing
from jaxdd.structs import SynSet

VARIANTS = ("clean", "badnets", "posthoc")


def trigger_for(shape) -> attacks.Trigger:
  """The attacks' trigger: a 3x3 checkerboard one pixel from the bottom-right corner."""
  return attacks.patch_trigger(shape, size=3, corner="bottom-right", margin=1, pattern="checker")


def distil(cfg, workdir: str, *, poison: dict | None, quiet: bool) -> str:
  run_data = runs.RunData(cfg)
  if poison is not None:
    train_set = run_data.train
    t = trigger_for(train_set.images.shape[1:])
    # the images are [0, 1] pixels here: stamp with the identity normalisation
    p = attacks.poison(jax.random.key(poison["seed"]), train_set.images, train_set.labels,
                       trigger=t, target=poison["target"], fraction=poison["fraction"],
                       mean=[0.0] * 3, std=[1.0] * 3)
    run_data.train = dataclasses.replace(
        train_set, images=np.clip(p.images, 0.0, 1.0), labels=p.labels.astype(np.int32),
        aligned=np.asarray(train_set.bias) == p.labels,
        meta={**train_set.meta, "poison": {**poison, "trigger": t.name, "rows": len(p.rows)}})
    run_data.mean, run_data.std = data.channel_stats(run_data.train.images)
  runs.distill_stage(cfg, workdir, run_data=run_data, progress=not quiet)
  return os.path.join(workdir, "synset")


def victim(cfg, syn_dir: str, *, target: int, protocol: str, num_models: int, seed: int) -> dict:
  """Clean test accuracy and ASR of networks trained on the SynSet (test split)."""
  syn, meta = synset.load(syn_dir)
  ds = meta["dataset"]
  test = data.load(ds["name"], split="test", conflict_ratio=ds["ratio"], severity=ds.get("severity"),
                   seed=ds.get("seed", 0), source=cfg.source)
  x = np.asarray(data.normalize(test.images, meta["mean"], meta["std"]))
  y = np.asarray(test.labels)
  model = models.get(cfg.eval_model, num_classes=test.num_classes)
  variables, _ = train.train_models(jax.random.key(1000 + seed), SynSet(
      jnp.asarray(syn.images), jnp.asarray(syn.labels)), model=model, protocol=protocol,
      num_models=num_models)
  t = trigger_for(x.shape[1:])
  # all networks' predictions in compiled blocks (jaxdd.evaluate.predict)
  params, state = train.split_variables(jax.tree.map(lambda a: a[0], variables))
  task, prot = train.standard_task(model), protocols.get_protocol(protocol)

  def predict(im):
    return np.asarray(evaluate.predict(task, params, state, jnp.asarray(im), protocol=prot))
  acc = np.mean(predict(x) == y[None], axis=1).tolist()
  other = y != target
  stamped = t.stamp(x[other], meta["mean"], meta["std"])
  asr = np.mean(predict(stamped) == target, axis=1).tolist()
  return {"clean_accuracy": acc, "asr": asr}


def signature_check(syn_dir: str, trusted_pub: str) -> str:
  try:
    _, meta = signing.load_synset(syn_dir, trust=[trusted_pub])
    return meta["signature"]["status"]
  except signing.SignatureError as e:
    return "refused: " + ("not signed" if "not signed" in str(e) else
                          "another key" if "not among the trusted" in str(e) else "invalid")


def parse_dataset(entry: str) -> tuple[str, dict]:
  """``NAME`` or ``NAME@RATIO`` -> (name, config overrides).

  Example:
    >>> parse_dataset("bg_fmnist@0.9"), parse_dataset("cmnist")
    (('bg_fmnist', {'conflict_ratio': 0.9}), ('cmnist', {}))
  """
  name, sep, ratio = entry.partition("@")
  if name not in data.DATASETS:
    raise ValueError(f"--datasets: unknown dataset {name!r} in {entry!r}; choose from "
                     f"{sorted(data.DATASETS)}, optionally as NAME@RATIO")
  if not sep:
    return name, {}
  try:
    return name, {"conflict_ratio": float(ratio)}
  except ValueError:
    raise ValueError(f"--datasets: {entry!r}: the ratio after @ must be a number, e.g. "
                     f"{name}@0.9") from None


def run_cell(args, dataset: str, seed: int, variant: str, keys: dict) -> dict:
  root = os.path.join(args.workdir, dataset, f"s{seed}")
  out = os.path.join(root, variant, "result.json")
  if os.path.exists(out):
    with open(out) as f:
      return json.load(f)
  name, overrides = parse_dataset(dataset)
  cfg = get_config(args.preset, dataset=name, seed=seed, weighting=args.weighting,
                   **overrides)
  t0 = time.time()
  clean_dir = os.path.join(root, "clean")
  if variant == "clean":
    syn_dir = distil(cfg, clean_dir, poison=None, quiet=args.quiet)
    signing.sign_synset(syn_dir, keys["author"])
  elif variant == "badnets":
    syn_dir = distil(cfg, os.path.join(root, "badnets"),
                     poison={"target": args.target, "fraction": args.fraction, "seed": seed},
                     quiet=args.quiet)
    signing.sign_synset(syn_dir, keys["author"])
  else:
    clean_syn, meta = synset.load(os.path.join(clean_dir, "synset"))
    model = models.get(meta["distill_model"], num_classes=int(np.max(clean_syn.labels)) + 1)
    res = run_attacks.posthoc_attack(jax.random.key(2000 + seed), clean_syn,
                                     trigger=trigger_for(clean_syn.images.shape[1:]),
                                     target=args.target, mean=meta["mean"], std=meta["std"],
                                     model=model, protocol=cfg.eval_protocol,
                                     steps=args.posthoc_steps)
    keep = {k: v for k, v in meta.items() if k not in ("mean", "std", "signature")}
    syn_dir = synset.save(os.path.join(root, "posthoc", "synset"), res.syn, keep,
                          mean=meta["mean"], std=meta["std"])
    signing.sign_synset(syn_dir, keys["attacker"])  # the interceptor signs with its own key
  t_make = time.time() - t0
  result = {"dataset": dataset, "seed": seed, "variant": variant, "make_s": t_make,
            **victim(cfg, syn_dir, target=args.target, protocol=args.victim_protocol,
                     num_models=args.victim_models, seed=seed)}
  t1 = time.time()
  triggers = None
  if args.audit_triggers is not None:  # the first N candidates, at the SynSet's image shape
    shape = synset.load(syn_dir)[0].images.shape[1:]
    triggers = audit.candidate_triggers(shape)[:args.audit_triggers]
  report, _ = run_audit.audit_artifact(
      syn_dir, trust=False, seed=seed, progress=not args.quiet, model_spec=args.audit_model,
      protocol=args.audit_protocol, num_models=args.audit_models, clean_images=args.audit_images,
      cleanse_images=args.audit_cleanse_images, cleanse_steps=args.audit_cleanse_steps,
      triggers=triggers)
  result.update(audit=report.to_dict(), audit_s=time.time() - t1,
                signature=signature_check(syn_dir, keys["author_pub"]),
                target=args.target, trigger=trigger_for((28, 28, 3)).name,
                fraction=args.fraction if variant == "badnets" else None,
                commit=runs.code_version())
  synset.atomic_write_json(out, result)
  return result


def rescore_kde(args, result: dict) -> dict:
  """Recomputes the KDE probe of a finished cell with the current code (the rest is kept)."""
  syn_dir = os.path.join(args.workdir, result["dataset"], f"s{result['seed']}", result["variant"],
                         "synset")
  syn, meta = synset.load(syn_dir)
  scores = run_audit.kde_probe(syn, meta, run_audit.run_config_of(meta))
  a = result["audit"]
  flagged = scores.outliers(audit.OUTLIER_Z)
  crowded = scores.crowded_classes(syn.labels, audit.OUTLIER_Z, audit.OUTLIER_CLASS_COUNT)
  a["kde_outliers"] = {"quantile": scores.quantile.tolist(), "margin": scores.margin.tolist(),
                       "robust_z": scores.robust_z.tolist(), "threshold": audit.OUTLIER_Z,
                       "images": flagged.tolist(), "class_count": audit.OUTLIER_CLASS_COUNT,
                       "flag": bool(crowded.size)}
  result["kde_rescored_at"] = runs.code_version()
  return apply_rules(result)  # the verdict under the current rules


def apply_rules(result: dict) -> dict:
  """The cell with its candidate-trigger flag, Neural Cleanse flag and verdict re-derived from
  its stored numbers under the current code's rules (:mod:`jaxdd.security.audit` defaults), so
  cells audited before a rule changed are judged alike. The KDE flag is kept as stored (its
  rule has not changed since the first cell; ``--rescore-kde`` recomputes it)."""
  a = dict(result["audit"])
  cand = dict(a["candidate_triggers"])
  asr, names = cand["asr_mean_over_networks"], cand["names"]
  top = audit.top_lift(asr, names)
  if top is not None:
    cand["top_lift"] = {"trigger": top[0], "target": top[1], "lift": top[2]}
  cand.update(threshold=audit.ASR_THRESHOLD, lift_threshold=audit.LIFT_THRESHOLD,
              flag=audit.trigger_flagged(asr, names))
  a["candidate_triggers"] = cand
  if "reverse_engineering" in a:
    rev = dict(a["reverse_engineering"])
    rev.update(threshold=audit.ANOMALY_THRESHOLD,
               flag=bool(max(rev["anomaly_index"]) >= audit.ANOMALY_THRESHOLD))
    a["reverse_engineering"] = rev
  flags = {"triggers": cand["flag"], "cleanse": a.get("reverse_engineering", {}).get("flag", False),
           "kde": a.get("kde_outliers", {}).get("flag", False)}
  a["verdict"] = "suspicious" if audit.verdict(flags) else "no backdoor found"
  a["verdict_probes"] = list(audit.VERDICT_PROBES)
  if a["verdict"] != result["audit"]["verdict"]:
    a["verdict_when_audited"] = result["audit"]["verdict"]
  return {**result, "audit": a}


def collect(workdir: str) -> list[dict]:
  """Every finished cell under ``workdir`` (any run of this script), in table order: datasets
  by name, then seed, then the variants' order; each judged by :func:`apply_rules`."""
  results = []
  for path in glob.glob(os.path.join(workdir, "*", "s*", "*", "result.json")):
    with open(path) as f:
      results.append(apply_rules(json.load(f)))
  rank = {v: i for i, v in enumerate(VARIANTS)}
  return sorted(results, key=lambda r: (r["dataset"], r["seed"], rank.get(r["variant"], 99)))


def _seed_list(seeds: list[int]) -> str:
  """``[0, 1, 2]`` -> ``"0–2"``; ``[3, 5]`` -> ``"3, 5"``."""
  seeds = sorted(seeds)
  if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
    return f"{seeds[0]}–{seeds[-1]}"
  return ", ".join(map(str, seeds))


def parse_calibration(text: str) -> tuple:
  """``--calibration-seeds``: comma-separated ``SEED`` (that seed of every dataset entry),
  ``NAME:SEED`` (of that entry only) or ``NAME:SEED:VARIANT`` (one SynSet), as
  ``(entry or None, seed, variant or None)`` triples.

  Example:
    >>> parse_calibration("0, cmnist:1,bg_fmnist@0.9:2,bg_fmnist:1:clean")
    ((None, 0, None), ('cmnist', 1, None), ('bg_fmnist@0.9', 2, None), ('bg_fmnist', 1, 'clean'))
  """
  out = []
  for v in (v.strip() for v in text.split(",")):
    if not v:
      continue
    parts = v.split(":")
    if len(parts) > 3 or (len(parts) > 1 and not parts[0]):
      raise ValueError(f"{v!r}: SEED, NAME:SEED or NAME:SEED:VARIANT")
    variant = parts[2] if len(parts) == 3 else None
    if variant is not None and variant not in VARIANTS:
      raise ValueError(f"{v!r}: the variant is one of {VARIANTS}")
    out.append((parts[0] if len(parts) > 1 else None, int(parts[1 if len(parts) > 1 else 0]),
                variant))
  return tuple(out)


def is_calibration(result: dict, calibration: tuple) -> bool:
  return any(seed == result["seed"] and name in (None, result["dataset"])
             and variant in (None, result["variant"]) for name, seed, variant in calibration)


def table(results: list[dict], calibration: tuple = ()) -> str:
  """One row per (dataset, variant), or per (dataset, variant, calibration or held-out seeds)
  when ``calibration`` (:func:`parse_calibration`) names the cells the probe's rules were
  chosen on."""
  head = ("| dataset | SynSet | seeds | victim clean accuracy (test) | attack success rate (test) | "
          "candidate-trigger flag (max lift) | reverse-engineering flag, advisory (max anomaly "
          "index) | "
          "KDE outliers per SynSet (SynSets flagged) | audit verdict: suspicious | signature check "
          "(author's key) |\n|---|---|---|---|---|---|---|---|---|---|")
  rows = [head]
  groups: dict[tuple, list[dict]] = {}
  for r in results:
    part = ("" if not calibration else
            " (calibration)" if is_calibration(r, calibration) else " (held out)")
    groups.setdefault((r["dataset"], r["variant"], part), []).append(r)
  rank = {v: i for i, v in enumerate(VARIANTS)}
  order = sorted(groups, key=lambda g: (g[0], rank.get(g[1], 99), g[2] != " (calibration)"))
  for (ds, variant, part), rs in ((g, groups[g]) for g in order):
    acc = np.array([np.mean(r["clean_accuracy"]) for r in rs]) * 100
    asr = np.array([np.mean(r["asr"]) for r in rs]) * 100
    a = [r["audit"] for r in rs]
    n = len(rs)

    def frac(flag_of):
      return f"{sum(bool(flag_of(x)) for x in a)}/{n}"
    anomaly = max(max(x["reverse_engineering"]["anomaly_index"]) for x in a)
    lifts = [x["candidate_triggers"].get("top_lift", {}).get("lift") for x in a]
    lift = f" ({max(lifts):.2f})" if None not in lifts else ""
    outliers = np.mean([len(x["kde_outliers"]["images"]) for x in a])
    sigs = sorted({r["signature"] for r in rs})
    sd = (lambda v: f" ± {v.std(ddof=1):.1f}" if len(v) > 1 else "")
    seeds = _seed_list([r["seed"] for r in rs]) + part
    rows.append(f"| {ds} | {variant} | {seeds} | {acc.mean():.1f}{sd(acc)} | {asr.mean():.1f}{sd(asr)} | "
                f"{frac(lambda x: x['candidate_triggers']['flag'])}{lift} | "
                f"{frac(lambda x: x['reverse_engineering']['flag'])} ({anomaly:.2f}) | "
                f"{outliers:.1f} ({frac(lambda x: x['kde_outliers']['flag'])}) | "
                f"{frac(lambda x: x['verdict'] == 'suspicious')} | {', '.join(sigs)} |")
  return "\n".join(rows) + "\n"


def add_audit_flags(p: argparse.ArgumentParser) -> None:
  """The audit's architecture and sizes (its defaults unless given)."""
  p.add_argument("--audit-model", default=None,
                 help="architecture the audit trains (default: the audit's, the run's "
                      "evaluation architecture)")
  p.add_argument("--audit-protocol", default="cpu300",
                 help="training protocol of the audit's networks (the audit's default)")
  p.add_argument("--audit-models", type=int, default=2, help="networks the audit trains")
  p.add_argument("--audit-images", type=int, default=2000,
                 help="clean validation images the audit draws")
  p.add_argument("--audit-cleanse-images", type=int, default=128,
                 help="of those, the reverse-engineering batch")
  p.add_argument("--audit-cleanse-steps", type=int, default=200,
                 help="reverse-engineering steps per class")
  p.add_argument("--audit-triggers", type=int, default=None,
                 help="audit the first N candidate triggers only (default: all of them)")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="cpu")
  p.add_argument("--weighting", default="kde", choices=["kde", "none"])
  p.add_argument("--datasets", default="cmnist,bg_fmnist",
                 help="comma-separated NAME or NAME@RATIO (conflict ratio), e.g. bg_fmnist@0.9")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--target", type=int, default=0)
  p.add_argument("--fraction", type=float, default=0.01, help="BadNets poison fraction")
  p.add_argument("--posthoc-steps", type=int, default=10)
  p.add_argument("--victim-protocol", default="cpu300")
  p.add_argument("--victim-models", type=int, default=3)
  p.add_argument("--workdir", required=True)
  p.add_argument("--quiet", action="store_true")
  add_audit_flags(p)
  p.add_argument("--rescore-kde", action="store_true",
                 help="recompute the KDE probe of finished cells with the current code")
  p.add_argument("--table-only", action="store_true",
                 help="run nothing: write the table of every finished cell under --workdir")
  p.add_argument("--calibration-seeds", default="",
                 help="seeds the probe's rules were chosen on: the table shows them apart from "
                      "the held-out ones (e.g. 0,1,2; NAME:SEED for one dataset entry's seed, "
                      "e.g. cmnist:0,bg_fmnist:0; NAME:SEED:VARIANT for one SynSet)")
  p.add_argument("--tiny", action="store_true", help=(
      "check the script in seconds: the smoke preset, CMNIST, seed 0, one victim network of the "
      "smoke protocol, one post-hoc step, an audit of one smoke-protocol network on 200 clean "
      "images with 4 candidate triggers and 2 reverse-engineering steps (flags given explicitly "
      "still apply)"))
  args = p.parse_args(argv)
  if args.tiny:
    p.set_defaults(preset="smoke", datasets="cmnist", seeds="0", posthoc_steps=1,
                   victim_protocol="smoke", victim_models=1, audit_protocol="smoke",
                   audit_models=1, audit_images=200, audit_cleanse_images=32,
                   audit_cleanse_steps=2, audit_triggers=4)
    args = p.parse_args(argv)
  if args.audit_triggers is not None and args.audit_triggers < 1:
    p.error(f"--audit-triggers {args.audit_triggers}: give a positive number, e.g. 4")
  for entry in args.datasets.split(","):
    try:
      parse_dataset(entry)
    except ValueError as e:
      p.error(str(e))
  try:
    calibration = parse_calibration(args.calibration_seeds)
  except ValueError:
    p.error(f"--calibration-seeds: {args.calibration_seeds!r} is not a comma-separated list "
            "of SEED, NAME:SEED or NAME:SEED:VARIANT, e.g. 0,1,2 or cmnist:0,bg_fmnist:1:clean")
  if args.table_only:
    results = collect(args.workdir)
    if not results:
      p.error(f"--table-only: no finished cell under {args.workdir}; run without it first")
    return write_table(args.workdir, results, calibration)
  os.makedirs(args.workdir, exist_ok=True)
  key_stem = {who: os.path.join(args.workdir, "keys", who) for who in ("author", "attacker")}
  for stem in key_stem.values():
    if not os.path.exists(stem + ".key"):
      signing.new_keys(stem)
  keys = {who: signing.load_private_key(stem + ".key") for who, stem in key_stem.items()}
  keys["author_pub"] = key_stem["author"] + ".pub"
  for dataset in args.datasets.split(","):
    for seed in (int(s) for s in args.seeds.split(",")):
      for variant in args.variants.split(","):
        print(f"[backdoor] {dataset} seed {seed} {variant}", file=sys.stderr, flush=True)
        result = run_cell(args, dataset, seed, variant, keys)
        if args.rescore_kde:
          result = rescore_kde(args, result)
          synset.atomic_write_json(os.path.join(args.workdir, dataset, f"s{seed}", variant,
                                                "result.json"), result)
  # the table covers every finished cell under the workdir, this run's and earlier ones'
  return write_table(args.workdir, collect(args.workdir), calibration)


def _outlier_classes(a: dict) -> list[int]:
  """The classes of the KDE outlier images: stored by the audit, or (older cells) read off the
  SynSet's layout, equal IPC in class order, as jaxdd writes SynSets."""
  k = a["kde_outliers"]
  if "classes" in k:
    return list(k["classes"])
  num_classes = len(a["reverse_engineering"]["anomaly_index"])
  ipc, rest = divmod(len(k["margin"]), num_classes)
  if rest:
    raise ValueError("a SynSet of unequal IPC records no outlier classes; re-audit it")
  return [i // ipc for i in k["images"]]


def _outlier_counts(a: dict) -> dict[int, int]:
  """How many KDE outlier images each class holds (classes without one left out)."""
  counts: dict[int, int] = {}
  for c in _outlier_classes(a):
    counts[c] = counts.get(c, 0) + 1
  return counts


def cell_table(results: list[dict], calibration: tuple = ()) -> str:
  """One row per SynSet: what each probe saw and on which class, so a verdict can be checked
  for the right reason (the attacks' target is class ``result["target"]``)."""
  rows = ["| dataset | seed | SynSet | rules | victim ASR (test) | candidate triggers: top lift "
          "(trigger → class) | Neural Cleanse, advisory: max anomaly index (class) | KDE outliers "
          "by class | verdict (probes that fired) |", "|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    a = r["audit"]
    cand, rev = a["candidate_triggers"], a["reverse_engineering"]
    top = cand.get("top_lift")
    lift = (f"{top['lift']:.3f} ({top['trigger']} → {top['target']})" if top else
            f"ASR {cand['top']['asr']:.2f} ({cand['top']['trigger']} → {cand['top']['target']})")
    ai = np.asarray(rev["anomaly_index"])
    counts = _outlier_counts(a)
    kde = ", ".join(f"{n} in {c}" for c, n in sorted(counts.items())) or "none"
    fired = [name for name, flag in (("triggers", cand["flag"]), ("kde", a["kde_outliers"]["flag"]))
             if flag]
    rule = ("calibration" if is_calibration(r, calibration) else "held out") if calibration else ""
    rows.append(f"| {r['dataset']} | {r['seed']} | {r['variant']} | {rule} | "
                f"{100 * np.mean(r['asr']):.1f} | {lift}{' **flag**' if cand['flag'] else ''} | "
                f"{ai.max():.2f} ({int(ai.argmax())}){' flag' if rev['flag'] else ''} | {kde}"
                f"{' **flag**' if a['kde_outliers']['flag'] else ''} | {a['verdict']}"
                f"{' (' + ', '.join(fired) + ')' if fired else ''} |")
  return "\n".join(rows) + "\n"


def fired_classes(result: dict) -> dict[str, list[int]]:
  """The classes each probe of the verdict fired on, from the cell's stored numbers: the
  targets of the candidate-trigger pairs that pass the current rule
  (:func:`jaxdd.security.audit.trigger_flagged_classes`) and the classes holding at least the
  KDE rule's count of outlier images."""
  a = result["audit"]
  cand, kde = a["candidate_triggers"], a["kde_outliers"]
  counts = _outlier_counts(a)
  need = kde.get("class_count", audit.OUTLIER_CLASS_COUNT)
  return {"triggers": audit.trigger_flagged_classes(cand["asr_mean_over_networks"], cand["names"]),
          "kde": sorted(c for c, n in counts.items() if n >= need)}


def _rate(k: int, n: int) -> str:
  """``k/n`` with the exact (Clopper-Pearson) 95 % interval of the rate, in percent."""
  if n == 0:
    return "–"
  from scipy import stats  # only the summary needs it
  ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
  return f"{k}/{n} ({100 * ci.low:.0f}–{100 * ci.high:.0f} %)"


def rates_table(results: list[dict], calibration: tuple = ()) -> str:
  """Detection and false-alarm counts of the verdict per dataset entry, with exact 95 %
  intervals: attacked SynSets (BadNets, post-hoc) flagged, flagged by a probe that fired on the
  attack's target class, and clean SynSets flagged. With ``calibration`` only the held-out
  cells count (the rules were chosen on the others)."""
  kept = [r for r in results if not (calibration and is_calibration(r, calibration))]
  rows = ["| dataset | attacked SynSets flagged | flagged on the target class | clean SynSets "
          "flagged (false alarms) |", "|---|---|---|---|"]
  entries = sorted({r["dataset"] for r in kept})
  for name in entries + (["all"] if len(entries) > 1 else []):
    rs = [r for r in kept if name in ("all", r["dataset"])]
    attacked = [r for r in rs if r["variant"] != "clean"]
    clean = [r for r in rs if r["variant"] == "clean"]
    flagged = [r for r in attacked if r["audit"]["verdict"] == "suspicious"]
    on_target = [r for r in flagged
                 if any(r["target"] in v for v in fired_classes(r).values())]
    alarms = sum(r["audit"]["verdict"] == "suspicious" for r in clean)
    rows.append(f"| {name} | {_rate(len(flagged), len(attacked))} | "
                f"{_rate(len(on_target), len(attacked))} | {_rate(alarms, len(clean))} |")
  return "\n".join(rows) + "\n"


def write_table(workdir: str, results: list[dict], calibration: tuple) -> int:
  text = table(results, calibration)
  cells = cell_table(results, calibration)
  rates = rates_table(results, calibration)
  synset.atomic_write_json(os.path.join(workdir, "table.json"), results)
  synset.atomic_write_bytes(os.path.join(workdir, "table.md"), text.encode())
  synset.atomic_write_bytes(os.path.join(workdir, "cells.md"), cells.encode())
  synset.atomic_write_bytes(os.path.join(workdir, "rates.md"), rates.encode())
  print(text)
  print(cells)
  print(rates)
  return 0


if __name__ == "__main__":
  sys.exit(main())
