"""Work on saved artifacts: evaluate or cross-evaluate a SynSet, list what finished runs wrote.

A SynSet artifact records the dataset it was distilled from, its normalisation and the run's
config; :func:`evaluate_synset` and :func:`cross_arch` rebuild the evaluation data and key from
that record (``jaxdd evaluate`` / ``jaxdd cross-arch``), unless an :class:`Overrides` field says
otherwise. With the run's own seed, the evaluation key is the run's, so a run's SynSet
reproduces the run's numbers exactly.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd._src import schema
from jaxdd import data, elf, evaluate, models, protocols
from jaxdd.data import own
from jaxdd import synset as synset_lib
from jaxdd import progress as progress_lib
from jaxdd.results import EvalResult
from jaxdd.runs import files, rundir
from jaxdd.runs.keys import seed_keys
from jaxdd.structs import Batch, SynSet


@dataclasses.dataclass(frozen=True)
class Overrides:
  """What replaces the artifact's own record (None: the artifact's).

  Attributes:
    dataset: dataset name.
    conflict_ratio: the dataset's conflict ratio.
    source: where the dataset is read from (else the run's source, else the offline default).
    seed: evaluation seed (else the run's own evaluation key).
  """
  dataset: str | None = None
  conflict_ratio: float | None = None
  source: str | None = None
  seed: int | None = None


@dataclasses.dataclass(frozen=True)
class FeatureModel:
  """ELF's feature model, trained on the artifact's REAL training split.

  >>> FeatureModel()
  FeatureModel(spec='convnet-d3-w128', protocol='cpu')
  """
  spec: str = "convnet-d3-w128"
  protocol: str = "cpu"


def artifact_split(meta: dict, split: str, overrides: Overrides = Overrides()) -> data.BiasedDataset:
  """A split of the dataset a SynSet artifact was distilled from: a built-in dataset by name, or
  a user's (``--data``) from the spec its run recorded."""
  ds_meta = meta.get("dataset", {})
  run_cfg = meta.get("config", {})
  if ds_meta.get("kind") == "own" and overrides.dataset is None:
    if overrides.conflict_ratio is not None or overrides.source is not None:
      raise ValueError("the SynSet was distilled from your own data (--data); --conflict-ratio "
                       "and --source apply to the built-in datasets")
    try:
      own_spec = own.DataSpec.from_dict(ds_meta.get("spec") or {})
    except (TypeError, ValueError) as e:
      raise ValueError(f"the SynSet's record of its data is unreadable ({e}); pass --dataset "
                       "to evaluate it on a built-in dataset") from e
    ds = own.load_own(own_spec, split=split, seed=int(ds_meta.get("seed", 0)))
    then, now = ds_meta.get("data_sha256"), ds.meta["data_sha256"]
    if then is not None and then != now:
      warnings.warn(f"{own_spec.text} has changed since the SynSet was distilled (content "
                    f"sha256 {str(then)[:12]} then, {now[:12]} now): these numbers are not its "
                    "run's; restore the data to reproduce them", own.DataChangedWarning,
                    stacklevel=2)
    return ds
  name = overrides.dataset or ds_meta.get("name")
  if name is None:
    raise ValueError("the artifact does not name its dataset; pass --dataset and --conflict-ratio")
  ratio = overrides.conflict_ratio if overrides.conflict_ratio is not None else ds_meta.get("ratio")
  source = overrides.source if overrides.source is not None else run_cfg.get("source")
  return data.load(name, split=split, conflict_ratio=ratio, severity=ds_meta.get("severity"),
                   seed=ds_meta.get("seed", 0), source=source)


def normalized_batch(ds: data.BiasedDataset, meta: dict) -> Batch:
  """``ds`` normalised with the artifact's mean and std, as a Batch of device arrays."""
  images = data.normalize(ds.images, meta["mean"], meta["std"])
  return Batch(jnp.asarray(images), jnp.asarray(ds.labels),
               None if ds.bias is None else jnp.asarray(ds.bias),
               None if ds.aligned is None else jnp.asarray(ds.aligned))


def eval_key(run_cfg: dict, seed: int | None = None) -> jax.Array:
  """The evaluation key: ``seed``'s, else the run's own evaluation key, else seed 0's."""
  if seed is not None:
    return jax.random.key(seed)
  if "seed" in run_cfg:  # the run's own evaluation key: the run's numbers, exactly
    return seed_keys(int(run_cfg["seed"]))[2]
  return jax.random.key(0)


def elf_features(meta: dict, syn: SynSet, num_classes: int, key: jax.Array,
                 feature_model: FeatureModel, overrides: Overrides = Overrides(), *,
                 progress: bool = False) -> np.ndarray:
  """ELF's feature model, trained on the artifact's REAL training split, and its features
  of the synthetic images."""
  protocols.get_protocol(feature_model.protocol)
  fm = models.get(feature_model.spec, num_classes=num_classes)
  models.check_fits(fm, tuple(syn.images.shape[1:]))
  train = artifact_split(meta, "train", overrides)
  real = normalized_batch(train, meta)
  progress_lib.logger.info("ELF: training the feature model %s on %d real images (%s protocol)",
                       feature_model.spec, len(train.labels), feature_model.protocol)
  variables = elf.train_feature_model(jax.random.fold_in(key, 0xE1F), real.images, real.labels,
                                      model=fm, protocol=feature_model.protocol,
                                      progress=progress)
  return elf.distillation_features(fm, variables, syn.images)


def evaluation_setting(meta: dict, overrides: Overrides = Overrides(), *,
                       protocol: str | None = None, model: str | None = None,
                       num_models: int | None = None) -> dict:
  """The setting (:func:`jaxdd.runs.files.run_setting`) of an evaluation of a SynSet artifact
  by :func:`evaluate_synset` with these arguments: the artifact's run, as overridden."""
  run_cfg = meta.get("config") or {}
  setting = files.run_setting(run_cfg)
  if overrides.dataset is not None and "data_spec" in setting:  # a built-in dataset instead
    setting = files.run_setting({k: v for k, v in run_cfg.items() if k != "data_spec"})
  for name, value in (("dataset", overrides.dataset), ("conflict_ratio", overrides.conflict_ratio),
                      ("source", overrides.source), ("seed", overrides.seed)):
    if value is not None:
      setting[name] = value
  setting["ipc"] = run_cfg.get("ipc", meta.get("ipc"))
  setting["eval_protocol"] = (protocol or meta.get("eval_protocol")
                              or run_cfg.get("eval_protocol") or "dm")
  setting["eval_model"] = model or run_cfg.get("eval_model") or "convnet"
  setting["num_eval_models"] = num_models or run_cfg.get("num_eval_models") or 5
  return setting


#: The files of a run directory that ``jaxdd evaluate --out`` never replaces.
RUN_FILES = ("config.json", "eval.json", "weights.json", "baselines.json", "comparison.json",
             "selection.json", "table.json", "buffer.json")


def check_out(out: str, setting: dict) -> None:
  """Refuses ``--out`` in a run directory (one holding a ``config.json``, or a ``reproduce``
  folder of them: :func:`jaxdd.runs.rundir.check_setting`) when the evaluation has another
  setting, or when ``out`` would replace one of the run's own files (:data:`RUN_FILES`).
  Reads only."""
  folder = _refuse_run_file(out, "evaluation", "eval-again.json")
  rundir.check_setting(setting, folder, adding="this evaluation",
                       elsewhere="give an --out outside that run")


def _refuse_run_file(out: str, what: str, example: str) -> str:
  """Refuses an ``out`` that would replace a run's own file (:data:`RUN_FILES` in a folder
  holding ``config.json`` or ``comparison.md``); returns ``out``'s folder."""
  folder = os.path.dirname(os.path.abspath(out))
  if os.path.basename(out) in RUN_FILES and (
      os.path.exists(os.path.join(folder, "config.json"))
      or os.path.exists(os.path.join(folder, "comparison.md"))):
    raise ValueError(f"--out {out} would replace a file of the run in {folder}; write the "
                     f"{what} elsewhere (e.g. --out {example})")
  return folder


def evaluate_synset(syn: SynSet, meta: dict, overrides: Overrides = Overrides(), *,
                    protocol: str | None = None, model: str | None = None,
                    num_models: int | None = None, features: FeatureModel | None = None,
                    progress: bool = True) -> EvalResult:
  """Fresh networks trained on a loaded SynSet artifact, tested on its dataset's test split.

  Args:
    syn, meta: the artifact (:func:`jaxdd.security.signing.load_synset`).
    overrides: what replaces the artifact's dataset, source and seed.
    protocol, model, num_models: None: the artifact's run setting (else dm, convnet, 5).
    features: ELF's feature model (the ELF track; its numbers are not comparable with a
      plain evaluation), or None.
    progress: show progress.

  Returns:
    The EvalResult, its method named as the artifact's (``+elf`` on the ELF track).
  """
  run_cfg = meta.get("config", {})
  protocol = protocol or meta.get("eval_protocol") or run_cfg.get("eval_protocol") or "dm"
  model_spec = model or run_cfg.get("eval_model") or "convnet"
  num_models = num_models or run_cfg.get("num_eval_models") or 5
  protocols.get_protocol(protocol)
  test = artifact_split(meta, "test", overrides)
  batch = normalized_batch(test, meta)
  net = models.get(model_spec, num_classes=test.num_classes)
  models.check_fits(net, tuple(syn.images.shape[1:]))
  key = eval_key(run_cfg, overrides.seed)
  syn = syn._replace(images=jnp.asarray(syn.images), labels=jnp.asarray(syn.labels))
  if features is not None:
    feats = elf_features(meta, syn, test.num_classes, key, features, overrides,
                         progress=progress)
    result = elf.evaluate_elf(key, syn, batch, model=net, features=feats, protocol=protocol,
                              num_models=num_models, progress=progress)
  else:
    result = evaluate.evaluate_synset(key, syn, batch, model=net, protocol=protocol,
                               num_models=num_models, progress=progress)
  return dataclasses.replace(result, method=(meta.get("method") or result.method)
                             + ("+elf" if features is not None else ""),
                             data=data_read(test))


def data_read(ds: data.BiasedDataset) -> dict:
  """The split ``ds`` as an evaluation's record names it (:attr:`jaxdd.results.EvalResult.data`):
  the dataset's name and split, and a user's data's content digest or a built-in dataset's
  conflict ratio and source."""
  m = ds.meta
  out = {"name": m.get("name"), "split": m.get("split")}
  if m.get("kind") == "own":
    try:  # the spec as the user gave it (``folder:ROOT``), as the run's records name it
      out["name"] = own.DataSpec.from_dict(m.get("spec") or {}).text
    except (TypeError, ValueError):
      pass
    out["data_sha256"] = m.get("data_sha256")
  else:
    out.update(conflict_ratio=m.get("ratio"), source=m.get("source"))
  return out


def cross_arch(syn: SynSet, meta: dict, specs: list[str], overrides: Overrides = Overrides(), *,
               protocol: str = "cpu", num_models: int = 3, features: FeatureModel | None = None,
               progress: bool = True, test: data.BiasedDataset | None = None) -> dict:
  """The cross-architecture matrix of a loaded SynSet artifact (:func:`jaxdd.elf.cross_architecture`),
  plainly and, given ``features``, with ELF; every spec is checked before any training.
  ``test``: the test split already read (:func:`artifact_split` with ``overrides``), else
  read here."""
  for spec in specs:
    models.check_fits(models.get(spec, num_classes=int(np.max(syn.labels)) + 1),
                      tuple(syn.images.shape[1:]))
  protocols.get_protocol(protocol)
  test = artifact_split(meta, "test", overrides) if test is None else test
  key = eval_key(meta.get("config", {}), overrides.seed)
  syn = syn._replace(images=jnp.asarray(syn.images), labels=jnp.asarray(syn.labels))
  feats = (None if features is None
           else elf_features(meta, syn, test.num_classes, key, features, overrides,
                             progress=progress))
  return elf.cross_architecture(key, syn, normalized_batch(test, meta), model_specs=specs,
                                num_classes=test.num_classes, protocol=protocol,
                                num_models=num_models, features=feats, progress=progress)


def cross_arch_setting(path: str, specs: list[str], overrides: Overrides = Overrides(), *,
                       protocol: str, num_models: int,
                       features: FeatureModel | None = None) -> dict[str, Any]:
  """What a cross-architecture matrix was made of: the SynSet (its path and the sha256 of its
  manifest, which pins every file), the architectures, the data overrides, the protocol, the
  networks per cell and the ELF track (the fields of :func:`cross_arch_record` but the matrix)."""
  manifest = os.path.join(path, "manifest.json")
  return {
      "synset": os.path.abspath(path),
      "synset_manifest_sha256": synset_lib.sha256_file(manifest) if os.path.exists(manifest)
      else None,
      "models": list(specs), "overrides": dataclasses.asdict(overrides),
      "protocol": protocol, "num_models": num_models, "elf": features is not None,
      "feature_model": None if features is None else features.spec,
      "feature_protocol": None if features is None else features.protocol}


def cross_arch_record(setting: dict[str, Any], matrix: dict,
                      data: dict | None = None) -> dict[str, Any]:
  """The JSON record of a cross-architecture matrix (``jaxdd cross-arch --out``): its
  :func:`cross_arch_setting`, the test data (:func:`data_read`) and the matrix."""
  return {**setting, **({"data": data} if data is not None else {}),
          "matrix": {k: {kind: (None if v is None else {"mean": v["mean"], "std": v["std"]})
                         for kind, v in row.items()} for k, row in matrix.items()}}


def check_matrix_out(out: str, setting: dict[str, Any]) -> None:
  """Refuses ``jaxdd cross-arch --out`` where it would replace other results: a file of a run
  (:data:`RUN_FILES`), a file that is not a matrix jaxdd wrote, or the matrix of another
  setting (:func:`cross_arch_setting`; a field an older record lacks is not compared). The
  same setting's matrix is replaced (the command run again). Reads only."""
  _refuse_run_file(out, "matrix", "cross-arch.json")
  stored = files.read_cross_arch(out)
  if stored is None:
    return
  differ = [f"{k} {stored[k]!r} there, {v!r} now" for k, v in setting.items()
            if k in stored and stored[k] != v]
  if differ:
    raise ValueError(f"--out {out} holds the cross-architecture matrix of another setting "
                     f"({'; '.join(differ)}); use another --out, or delete it to replace it")


def _label(setting: dict | None) -> str:
  """The heading of one setting's records in ``jaxdd report``."""
  if setting is None:
    return "== setting not recorded (written by an older jaxdd) =="
  s = setting
  if s.get("data_spec") is not None:  # a user's data: its spec, options and content digest
    options = [f"{k.replace('_', ' ')} {s[k]}" for k in s
               if k not in ("data_spec", "data_sha256") and k not in files.SETTING_FIELDS]
    data = f"your data {s['data_spec']}" + "".join(f", {o}" for o in options)
    if s.get("data_sha256") is not None:
      data += f", sha256 {s['data_sha256'][:12]}"
  else:
    data = f"{s['dataset']}, conflict ratio {s['conflict_ratio']}"
    if s.get("severity") is not None:
      data += f", severity {s['severity']}"
    if s.get("source") is not None:
      data += f", source {s['source']}"
  return (f"== {data}, IPC {s['ipc']}, seed {s['seed']}, evaluation {s['eval_protocol']} x "
          f"{s['num_eval_models']} {s['eval_model']} ==")


def _setting_of(config, data: dict | None = None) -> dict | None:
  return files.run_setting(config, data) if isinstance(config, dict) else None


def _scores(mean: dict, std: dict | None = None) -> str:
  """A stored evaluation in one report line's words: overall (± std over networks), aligned,
  conflicting and worst group; without group labels (no aligned / conflicting score) overall
  and worst class only."""
  overall = f"overall {100 * mean['overall']:.1f}"
  if std is not None:
    overall += f"±{100 * std['overall']:.1f}"
  if not any(mean.get(m) is not None and np.isfinite(mean[m]) for m in ("aligned", "conflicting")):
    return f"{overall}, worst class {100 * mean['worst_group']:.1f}"
  return (f"{overall}, aligned {100 * mean['aligned']:.1f}, conflicting "
          f"{100 * mean['conflicting']:.1f}, worst group {100 * mean['worst_group']:.1f}")


def _baseline_records(root: str) -> list[tuple[dict | None, list[str]]]:
  results = files.read_baselines(os.path.join(root, "baselines.json"))
  out: dict = {}
  for name, ev in results.items():
    setting = _setting_of(ev.get("config"), ev.get("data"))
    out.setdefault(json.dumps(setting, sort_keys=True), (setting, []))[1].append(
        f"{root}: baseline {name}: {_scores(ev['mean'])}")
  return list(out.values())


def _eval_record(root: str) -> tuple[dict | None, list[str]]:
  ev = files.read_eval(os.path.join(root, "eval.json"))
  m, s = ev["mean"], ev["std"]
  return _setting_of(ev.get("config"), ev.get("data")), [
      f"{root}: {ev.get('method')}: {_scores(m, s)}"]


def _comparison_record(root: str, dirs: list[str], damaged: list[str] | None = None
                       ) -> tuple[dict | None, list[str]]:
  """``comparison.md``, with the setting of the runs beside it (reproduce's run directories):
  read off the first run whose ``eval.json`` reads; a damaged one is said in ``damaged`` (else
  raised) and the next one read."""
  setting = None
  for d in sorted(dirs):
    if os.path.exists(os.path.join(root, d, "eval.json")):
      try:
        ev = files.read_eval(os.path.join(root, d, "eval.json"))
      except schema.FileFormatError as e:
        if damaged is None:
          raise
        damaged.append(str(e))
        continue
      setting = _setting_of(ev.get("config"), ev.get("data"))
      break
  with open(os.path.join(root, "comparison.md")) as f:
    return setting, [f.read()]


def finished_records(path: str, damaged: list[str] | None = None
                     ) -> list[tuple[dict | None, list[str]]]:
  """``(setting, lines)`` of every finished record under ``path``, in walking order.

  A baselines.json gives one line per baseline, a comparison.md its whole text, and an
  eval.json outside a comparison one line; the setting is the data, IPC and evaluation of the
  config that made it (:func:`jaxdd.runs.files.run_setting`; None when the file does not
  record one). Every file is read checked (:mod:`jaxdd.runs.files`): a damaged one raises
  :class:`jaxdd._src.schema.FileFormatError` (one it may not read, an :class:`OSError`), or,
  given a ``damaged`` list, is skipped and its one-line message appended there, so the good
  records are still reported.
  """
  out: list[tuple[dict | None, list[str]]] = []
  for root, dirs, names in sorted(os.walk(path)):
    readers = []
    if "baselines.json" in names:
      readers.append(lambda root=root: _baseline_records(root))
    if "comparison.md" in names:
      readers.append(lambda root=root, dirs=dirs: [_comparison_record(root, dirs, damaged)])
    elif "eval.json" in names and not os.path.exists(os.path.join(os.path.dirname(root),
                                                                  "comparison.md")):
      readers.append(lambda root=root: [_eval_record(root)])
    for read in readers:
      try:
        out.extend(read())
      except schema.FileFormatError as e:
        if damaged is None:
          raise
        damaged.append(str(e))
      except OSError as e:  # a file this process may not read: said, the others reported
        if damaged is None:
          raise
        damaged.append(f"{e.filename or root}: {e.strerror or e}; it cannot be read: fix its "
                       "permissions, or move it away")
  return out


def finished_runs(path: str, damaged: list[str] | None = None) -> list[list[str]]:
  """What ``jaxdd report`` prints of the finished runs under ``path``; empty when nothing
  under ``path`` is finished. ``damaged``: as :func:`finished_records`.

  When every record has the same setting (data, IPC, evaluation) of a built-in dataset, the
  records in walking order; when they differ, or the data are a user's, one group per setting
  (a user's data by their spec and content digest), in order of first appearance, each opened by
  a heading line naming the setting, so that results of different settings are never read side
  by side.
  """
  records = finished_records(path, damaged)
  keys = [json.dumps(setting, sort_keys=True) for setting, _ in records]
  own_data = any(setting is not None and "data_spec" in setting for setting, _ in records)
  if len(set(keys)) <= 1 and not own_data:  # a user's data is always named
    return [lines for _, lines in records]
  out: list[list[str]] = []
  for key in dict.fromkeys(keys):
    group = [lines for k, (_, lines) in zip(keys, records) if k == key]
    out.append([_label(records[keys.index(key)][0])])
    out.extend(group)
  return out
