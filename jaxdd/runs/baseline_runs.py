"""The baselines of a run (random, herding, k-center, LfF, DFA, SelecMix, full) under its protocol."""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from jaxdd import baselines, data, debias, evaluate, models, protocols, synset
from jaxdd import progress as progress_lib
from jaxdd.config import RunConfig, validate
from jaxdd.runs import checks, files, keys, outputs, rundata, rundir, surrogate_stage
from jaxdd.security import signing
from jaxdd.structs import SynSet

BASELINES = ("random", "herding", "kcenter", "lff", "dfa", "selecmix", "full")
#: The baselines trained on a vanilla DM SynSet (post-distillation debiasing).
DEBIASED = ("lff", "dfa", "selecmix")


@rundir.under_policy
def run_baselines(config: RunConfig, workdir: str, *, which: tuple[str, ...] = BASELINES,
                  vanilla_synset: str | None = None, full_epochs: int = 10,
                  progress: bool = True, trust=None) -> dict:
  """The obvious alternatives under the same evaluation protocol and model.

  * ``random``: ``ipc`` random real images per class;
  * ``herding`` / ``kcenter``: selection on the SupCon surrogate's embeddings;
  * ``lff`` / ``dfa`` / ``selecmix``: post-distillation debiasing (LfF, DFA, SelecMix)
    trained on the *vanilla* DM SynSet at ``vanilla_synset`` (docs/protocols.md);
  * ``full``: the whole biased training set (upper reference), with the
    protocol's epochs capped at ``full_epochs`` because every epoch is a pass
    over all training images.

  ``trust`` is the signature policy of ``vanilla_synset`` (see
  :func:`jaxdd.security.signing.load_synset`: None reads ``$JAXDD_TRUSTED_KEYS``).

  Results are written to ``<workdir>/baselines.json`` and returned. A
  ``baselines.json`` already there is added to when it was made with the same
  settings (config digest, weighting aside) and refused otherwise, before any work; so are a
  ``workdir`` that holds a run of another setting (data, IPC, evaluation:
  :func:`jaxdd.runs.rundir.check_setting`), missing data, an unusable vanilla SynSet and an
  unwritable ``workdir``.
  """
  unknown = set(which) - set(BASELINES)
  if unknown:
    raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
  if set(DEBIASED) & set(which) and vanilla_synset is None:
    raise ValueError("lff/dfa/selecmix train on a vanilla DM SynSet: pass vanilla_synset (the synset/ "
                     "directory of a --weighting none run)")
  if set(DEBIASED) & set(which):
    # a missing, incomplete or (under a trust anchor) unsigned artifact fails here, before any work
    signing.load_synset(vanilla_synset, trust=trust)
  validate(config)
  rundir.check_setting(files.run_setting(config), workdir, adding="baselines")
  outputs.check_work_folder(workdir, record="baselines.json", writes=(), what="baselines")
  results = stored_baselines(workdir, config)
  checks.check_writable(workdir)  # before the data are built into the cache
  run_data = rundata.load(config, workdir)
  rundata.check_models(config, run_data)
  run_data.test  # a bad test split is found now, not after the first baseline  # noqa: B018
  checks.check_writable(workdir)
  with rundir.workdir_lock(workdir):
    return _run_baselines(config, workdir, run_data, results, which=which,
                          vanilla_synset=vanilla_synset, full_epochs=full_epochs,
                          progress=progress, trust=trust)


def _run_baselines(config: RunConfig, workdir: str, run_data: rundata.RunData, results: dict, *,
                   which: tuple[str, ...], vanilla_synset: str | None, full_epochs: int,
                   progress: bool, trust) -> dict:
  """:func:`run_baselines` once checked, under the lock of ``workdir``."""
  digest = baselines_digest(config)
  x = run_data.normalized(run_data.train)
  test = run_data.batch(run_data.test)
  model = models.get(config.eval_model, num_classes=run_data.num_classes)
  protocol = protocols.get_protocol(config.eval_protocol)
  k_sur = keys.run_keys(config)[0]  # the same (cached) surrogate as run()
  k_sel, k_eval = keys.baseline_keys(config)
  embeddings = None
  if {"herding", "kcenter"} & set(which):
    embeddings = surrogate_stage.surrogate_embeddings(config, run_data, k_sur, progress)
  for i, name in enumerate(which):
    progress_lib.logger.info("baseline %d/%d: %s", i + 1, len(which), name)
    res, extra = _evaluate(name, config, run_data, (x, test), embeddings, (k_sel, k_eval),
                           model=model, protocol=protocol, vanilla_synset=vanilla_synset,
                           trust=trust, workdir=workdir, full_epochs=full_epochs,
                           progress=progress)
    summary = res.summary()
    summary.update(extra)
    summary["digest"] = digest
    summary["config"] = config.to_dict()  # the setting `jaxdd report` labels the rows with
    if run_data.identity is not None:
      summary["data"] = run_data.identity
    results[name] = summary
    if progress:
      print(f"{name}: " + ", ".join(f"{m} {100 * v:.1f}" for m, v in summary["mean"].items()))
    synset.atomic_write_json(os.path.join(workdir, "baselines.json"), results)
  return results


def baselines_digest(config: RunConfig, *, legacy: bool = False) -> str:
  """The digest that baselines made with ``config`` record (the weighting aside); ``legacy``
  as :meth:`jaxdd.config.RunConfig.digest`."""
  return config.replace(weighting="none", init="real", real_sampling="uniform").digest(
      legacy=legacy)


def stored_baselines(workdir: str, config: RunConfig) -> dict:
  """The baselines already in ``<workdir>/baselines.json`` (kept and added to, but only
  for the same settings: others are refused with a ValueError)."""
  return _stored(os.path.join(workdir, "baselines.json"), baselines_digest(config),
                 baselines_digest(config, legacy=True))


def _stored(path: str, digest: str, legacy: str) -> dict:
  """The baselines already in ``path`` (kept and added to, but only for the same settings:
  ``digest``, or the ``legacy`` digest an older jaxdd gave them)."""
  if not os.path.exists(path):
    return {}
  results = files.read_baselines(path)
  other = sorted(n for n, r in results.items() if r.get("digest") not in (digest, legacy))
  if other:
    raise ValueError(f"{path} holds baselines made with other settings ({', '.join(other)}; "
                     f"config digest {digest} now); use another --workdir, or delete "
                     "baselines.json to replace them")
  return results


def _evaluate(name: str, config: RunConfig, run_data: rundata.RunData, arrays: tuple,
              embeddings: np.ndarray | None, keys_: tuple, *, model, protocol,
              vanilla_synset: str | None, trust, workdir: str, full_epochs: int,
              progress: bool) -> tuple:
  """One baseline's evaluation result and the extra fields of its summary.

  ``arrays``: the normalised training images and the test batch; ``keys_``: the
  (subset selection, evaluation) keys (:func:`jaxdd.runs.keys.baseline_keys`).
  """
  k_sel, k_eval = keys_
  x, test = arrays
  train = run_data.train
  if name in ("random", "herding", "kcenter"):
    if name == "random":
      rows = baselines.random_subset_indices(k_sel, train.labels, ipc=config.ipc)
    elif name == "herding":
      rows = baselines.herding(embeddings, train.labels, ipc=config.ipc)
    else:
      rows = baselines.k_center(embeddings, train.labels, ipc=config.ipc)
    syn = baselines.take(x, train.labels, rows)
    conflicting = (None if train.aligned is None
                   else float((~train.aligned[np.asarray(rows)]).mean()))
    res = evaluate.evaluate_synset(k_eval, syn, test, model=model, protocol=protocol,
                            num_models=config.num_eval_models, progress=progress)
    extra = {"selected_conflicting_fraction": conflicting}
  elif name in DEBIASED:
    syn, meta = signing.load_synset(vanilla_synset, trust=trust)
    # re-express the SynSet in this run's normalisation (a no-op for the same dataset)
    images = data.normalize(data.denormalize(syn.images, meta["mean"], meta["std"]),
                            run_data.mean, run_data.std)
    syn = SynSet(jnp.asarray(images), jnp.asarray(syn.labels))
    res = debias.evaluate_debiased(k_eval, syn, test, method=name, model=model,
                                   protocol=protocol, num_models=config.num_eval_models,
                                   progress=progress)
    extra = {"trained_on": os.path.relpath(vanilla_synset, workdir)}
  else:  # full
    syn = baselines.full_dataset(x, train.labels)
    prot = protocol.replace(epochs=min(protocol.epochs, full_epochs))
    res = evaluate.evaluate_synset(k_eval, syn, test, model=model, protocol=prot,
                            num_models=min(config.num_eval_models, 2), progress=progress)
    extra = {"epochs": prot.epochs}
  return res, extra
