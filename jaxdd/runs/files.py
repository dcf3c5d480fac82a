"""The JSON files of work directories, read back checked: one reader per file, each with the
structure its users expect (:mod:`jaxdd._src.schema`).

A file that is not JSON, or JSON of another structure, raises
:class:`jaxdd._src.schema.FileFormatError`: one line naming the file, what is wrong and the fix.
Files read before a command starts its work are refusals (exit status 2); those read back while
it works (its own caches and records) are faults (status 1).
"""
from __future__ import annotations

import os

from jaxdd._src import schema
from jaxdd._src.schema import ANY, INT, NUM, STR, FileFormatError, list_of, map_of, obj, opt
from jaxdd.config import RunConfig
from jaxdd.config.run import BUILTIN_DATA_FIELDS, OWN_FIELDS
from jaxdd.metrics import METRICS
from jaxdd.runs.knobs import settings_from_selection

__all__ = ["FileFormatError", "read_auto_choice", "read_baselines", "read_bias_score", "read_buffer_record",
           "read_comparison", "read_cross_arch", "read_eval", "read_eval_cache", "read_run_config", "read_selection", "read_table",
           "read_weights", "run_setting", "SETTING_FIELDS"]

#: The four group metrics of a stored evaluation's ``mean`` and ``std``.
_METRICS4 = obj({m: NUM for m in ("overall", "aligned", "conflicting", "worst_group")})
_CONFIG = map_of(ANY)

#: A user's data as a run records it (:meth:`jaxdd.data.own.OwnData.identity`).
DATA_IDENTITY = obj({"spec": STR, "sha256": STR},
                    optional={"source": STR, "images": map_of(INT), "classes": INT,
                              "groups": INT})
CONFIG_JSON = obj({"digest": STR}, optional={"distill_digest": STR, "config": _CONFIG,
                                             "data": DATA_IDENTITY})
EVAL_JSON = obj({"mean": _METRICS4, "std": _METRICS4},
                optional={"digest": STR, "method": STR, "config": _CONFIG, "data": DATA_IDENTITY,
                          "result": obj(optional={"per_model": map_of(list_of(opt(NUM))),
                                                  "num_models": INT})})
BASELINES_JSON = map_of(obj({"mean": _METRICS4, "std": _METRICS4},
                            optional={"digest": STR, "config": _CONFIG, "data": DATA_IDENTITY,
                                      "bias_score": opt(obj({"aligned_fraction": NUM}))}))
# valid_scores: (learning rates, networks), as EvalResult.to_dict writes it
EVAL_CACHE_JSON = obj({"result": obj(
    {"num_models": INT, "per_model": obj({m: list_of(opt(NUM)) for m in METRICS})},
    optional={"valid_scores": opt(list_of(list_of(opt(NUM)))), "select_on": opt(STR)})})
BIAS_SCORE_JSON = obj({"aligned_fraction": NUM})
WEIGHTS_JSON = obj(optional={
    "batch_ess": list_of(opt(NUM)),
    "groups": list_of(obj({"min_share": NUM, "max_share": NUM, "balanced_share": NUM})),
    "bias_trajectory": list_of(obj({"step": INT, "bias_aligned_fraction": NUM}))})
BUFFER_JSON = obj({"digest": STR})
AUTO_CHOICE_JSON = obj({"version": INT, "chosen": STR, "overrides": map_of(ANY), "judged": schema.BOOL,
                        "reason": STR}, optional={k: ANY for k in (
                            "candidates", "left_out", "usable", "seeds", "criterion", "decision",
                            "valid_conflicting_per_seed", "can_judge", "cannot_judge", "fix")})
_SCALAR = schema.Spec("a string or a number",
                      lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool))
SELECTION_JSON = obj({"chosen": map_of(map_of(_SCALAR))})
TABLE_JSON = map_of(ANY)
COMPARISON_JSON = map_of(obj({"mean": _METRICS4, "std": _METRICS4},
                             optional={"bias_score": ANY, "data": ANY}))
CROSS_ARCH_JSON = obj({"synset": STR, "protocol": STR, "num_models": INT, "matrix": map_of(ANY)},
                      optional={k: ANY for k in ("synset_manifest_sha256", "models", "overrides",
                                                 "data", "elf", "feature_model",
                                                 "feature_protocol")})

#: The RunConfig fields that make results comparable side by side: the data, the IPC, the
#: evaluation (what ``jaxdd baselines`` uses of a run's config).
SETTING_FIELDS = ("dataset", "conflict_ratio", "severity", "source", "seed", "ipc",
                  "eval_protocol", "eval_model", "num_eval_models")


def read_run_config(workdir: str) -> dict | None:
  """A run directory's ``config.json`` (None when there is none)."""
  return schema.read_json(os.path.join(workdir, "config.json"), CONFIG_JSON, default=None,
                          fix="it is not a config.json that jaxdd wrote: use another --workdir, "
                              "or delete the directory to start over")


def read_eval(path: str) -> dict:
  """A run's ``eval.json`` (its stored evaluation)."""
  return schema.read_json(path, EVAL_JSON, fix="delete it, or rerun the run's command with "
                                               "--reevaluate to evaluate the run again")


def read_baselines(path: str) -> dict:
  """A ``baselines.json``: baseline name -> its evaluation summary."""
  return schema.read_json(path, BASELINES_JSON,
                          fix="delete baselines.json to compute the baselines again")


def read_weights(path: str, *, working: bool = True) -> dict:
  """A run's ``weights.json`` (read back by ``reproduce`` once its runs are done)."""
  return schema.read_json(path, WEIGHTS_JSON, working=working,
                          fix=f"delete {os.path.dirname(path) or '.'} and rerun the same command "
                              "to distil that run again")


def read_buffer_record(path: str) -> dict:
  """A trajectory-matching run's ``buffer.json`` (read once its distillation is done)."""
  return schema.read_json(path, BUFFER_JSON, working=True,
                          fix=f"delete {os.path.dirname(path) or '.'} and rerun the same command "
                              "to distil that run again")


def read_auto_choice(path: str) -> dict | None:
  """``--weighting auto``'s stored decision (``choice.json`` in the cache), None when there is
  none."""
  return schema.read_json(path, AUTO_CHOICE_JSON, working=True, default=None,
                          fix=f"delete {os.path.dirname(path) or '.'} and rerun the same command "
                              "to choose again")


def read_eval_cache(path: str) -> dict | None:
  """A study's stored evaluation (``eval-<split>-<protocol>.json``), None when there is none."""
  return schema.read_json(path, EVAL_CACHE_JSON, working=True, default=None,
                          fix="delete it and rerun the same command to evaluate that run again")


def read_bias_score(path: str) -> dict | None:
  """A study's stored ``bias_score.json``, None when there is none."""
  return schema.read_json(path, BIAS_SCORE_JSON, working=True, default=None,
                          fix="delete it and rerun the same command to score that run again")


def read_table(path: str) -> dict | None:
  """``jaxdd final``'s ``table.json``, None when there is none."""
  return schema.read_json(path, TABLE_JSON, default=None,
                          fix="use another --workdir, or delete table.json and table.md to "
                              "replace it")


def read_comparison(path: str) -> dict:
  """``jaxdd reproduce``'s ``comparison.json`` (read to show a finished comparison again)."""
  return schema.read_json(path, COMPARISON_JSON,
                          fix="rerun the command with --reevaluate to compare the runs again, or "
                              "delete it and comparison.md")


def read_cross_arch(path: str) -> dict | None:
  """A ``jaxdd cross-arch --out`` record, None when there is no such file (read before the
  command replaces it)."""
  return schema.read_json(path, CROSS_ARCH_JSON, default=None,
                          fix="it is not a cross-architecture matrix that jaxdd wrote: use "
                              "another --out, or delete it to replace it")


def read_selection(path: str, base: RunConfig) -> dict:
  """``jaxdd tune``'s ``selection.json`` as the rows of ``jaxdd final`` (name -> Setting);
  a setting this version refuses is a fault of the file too."""
  fix = "rerun `jaxdd tune` into a new --workdir, or pass --selection PATH of a finished tune"
  selection = schema.read_json(path, SELECTION_JSON, fix=fix)
  try:
    settings = settings_from_selection(selection, base)
    for setting in settings.values():
      setting.apply(base)
  except (ValueError, TypeError) as e:
    raise FileFormatError(path, f"holds a setting this version refuses ({' '.join(str(e).split())})", fix) from None
  return settings


def run_setting(config: dict | RunConfig, data: dict | None = None) -> dict:
  """The :data:`SETTING_FIELDS` of a config (a RunConfig or a stored flat dict). A run on a
  user's own data has its own-data fields instead of the built-in dataset's (``data_spec``,
  the columns, the image size, ...: those that are set) and, given its recorded ``data``
  identity, ``data_sha256``, the digest of the data's content."""
  flat = config.to_dict() if isinstance(config, RunConfig) else config
  if flat.get("data_spec") is None:
    return {k: flat.get(k) for k in SETTING_FIELDS}
  setting = {k: flat[k] for k in OWN_FIELDS if flat.get(k) is not None}
  setting.update({k: flat.get(k) for k in SETTING_FIELDS if k not in BUILTIN_DATA_FIELDS})
  if data is not None:
    setting["data_sha256"] = data["sha256"]
  return setting
