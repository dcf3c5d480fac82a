"""The runs layer: end-to-end runs and studies built from the library's pure parts.

One run goes biased data -> SupCon surrogate -> KDE weights -> DM / CFM / DSA / DC / MTT ->
SynSet -> evaluation, and lives in a directory::

    <workdir>/
      config.json          the resolved RunConfig + code version + config hash
      checkpoints/<step>/  orbax checkpoints of the distillation state
      metrics.jsonl        one JSON object per logged step (loss, grad norm, ...)
      synset/              the SynSet artifact (see jaxdd.synset)
      eval.json            per-group accuracies, stamped with protocol/model/seeds
      weights.json         diagnostics of the KDE weights (KDE runs)
      buffer.json          trajectory matching: the expert buffer used (path, digest)
      plots/synset.png, plots/weights.png

Every file is written atomically. A killed run started again with the same
config resumes from its last checkpoint; because the step key is
``fold_in(key, step)``, it ends with exactly the result of an uninterrupted run.
The configuration of a run (:class:`jaxdd.config.RunConfig`, presets) is in
:mod:`jaxdd.config`.

Which module holds what:

* :mod:`~jaxdd.runs.rundir`: the run directory, its lock, the check that it holds this
  run, its stored evaluation; :mod:`~jaxdd.runs.version`: the code version a run records;
* :mod:`~jaxdd.runs.keys`: the random keys of a run, from its seed;
* :mod:`~jaxdd.runs.rundata`: the data of a run (:class:`RunData`) and its checks;
  :mod:`~jaxdd.runs.bias`: the bias-attribute classifier of the bias score;
* :mod:`~jaxdd.runs.surrogate_stage`: the SupCon surrogate and its embeddings;
* :mod:`~jaxdd.runs.biased_stage`: the bias-amplified classifier (``--weighting gce``, ``jtt``,
  ``--kde-features biased``) and the embeddings a run's weighting reads;
* :mod:`~jaxdd.runs.weights`: how a run weighs its real samples, and the diagnostics;
* :mod:`~jaxdd.runs.experts`: trajectory matching's expert buffers;
* :mod:`~jaxdd.runs.distiller`: the distiller of a run's method, and its device mesh;
* :mod:`~jaxdd.runs.checkpoints`, :mod:`~jaxdd.runs.metrics_log`: orbax checkpoints and
  ``metrics.jsonl``;
* :mod:`~jaxdd.runs.driver`: the distillation loop (chunks, checkpoints, Ctrl-C);
* :mod:`~jaxdd.runs.single`: one run (:func:`distill_stage`, :func:`jaxdd.runs.single.run`);
  :mod:`~jaxdd.runs.auto`: ``--weighting auto``, the label-free weighting chosen on validation
  data once per dataset, and :func:`run` (a run with that weighting resolved first);
* :mod:`~jaxdd.runs.group`: runs that differ in hyperparameters, in one program;
* :mod:`~jaxdd.runs.cell`: a results-table cell's DM rows x seeds, in one program;
* :mod:`~jaxdd.runs.paper`: the paper table as a queue of units resumable across machines
  (cells and rows, the units, their records and handovers, the cell tables), whose command line
  is ``experiments/paper_table.py``;
* :mod:`~jaxdd.runs.comparison`: :func:`reproduce`, vanilla vs KDE side by side;
  :mod:`~jaxdd.runs.baseline_runs`: the baselines under the same protocol;
* :mod:`~jaxdd.runs.text`: method names and the text of stored results and comparisons;
* the study (choices on validation data, one test evaluation per reported setting):
  :mod:`~jaxdd.runs.knobs` (the candidate settings), :mod:`~jaxdd.runs.study_runs`
  (one directory per setting and seed, evaluated once), :mod:`~jaxdd.runs.selection`
  (:func:`tune`), :mod:`~jaxdd.runs.final_table` (:func:`final`) and
  :mod:`~jaxdd.runs.tables` (the markdown tables, :func:`format_pm`).
* artifacts and trust: :mod:`~jaxdd.runs.artifacts` (evaluating a saved SynSet, ELF, the
  cross-architecture matrix), :mod:`~jaxdd.runs.audit` (the backdoor audit of a SynSet with the
  data and surrogate its run names), :mod:`~jaxdd.runs.attacks` (the post-hoc backdoor attack,
  which distils); :mod:`~jaxdd.runs.diagnose` (how the KDE weights find the bias).

Presets (docs/protocols.md): ``paper`` (published hyperparameters, for an accelerator),
``cpu`` (one DM vs DM+KDE comparison in minutes on 2 CPU cores) and ``smoke``
(seconds, for tests).
"""
from jaxdd.runs.baseline_runs import BASELINES, DEBIASED, run_baselines
from jaxdd.runs.cell import cell_groupable, cell_key, distill_cell, program_rows
from jaxdd.runs.bias import bias_classifier
from jaxdd.runs.biased_stage import biased_artifact, difficulty_weights, weighting_embeddings
from jaxdd.runs.comparison import reproduce
from jaxdd.runs.distiller import device_mesh, make_distiller
from jaxdd.runs.driver import Interrupted, distill_run, steps_per_call, track_every
from jaxdd.runs.experts import (
                                EXPERT_BATCH,
                                build_expert_buffer,
                                default_buffer_dir,
                                expert_buffer,
                                expert_run_epochs,
                                expert_spec,
                                expert_weights,
)
from jaxdd.runs.final_table import final
from jaxdd.runs.group import (GROUP_KNOBS, distill_group, distill_seeds, group_key, groupable,
                              seed_groupable, seed_key)
from jaxdd.runs.keys import (baseline_keys, biased_key, expert_key, pseudo_group_key, run_keys,
                             seed_keys)
from jaxdd.runs.knobs import (
                                KNOBS,
                                Setting,
                                default_setting,
                                knob_grid,
                                literal_setting,
                                settings_from_selection,
)
from jaxdd.runs.metrics_log import MetricsLog
from jaxdd.runs.rundata import RunData, check_models, num_bias_values
from jaxdd.runs.rundir import locked, under_policy, workdir_lock
from jaxdd.runs.selection import criterion_noise, format_selection, select, tune
from jaxdd.runs.auto import run
from jaxdd.runs.single import distill_stage
from jaxdd.runs.study_runs import bias_score_cached, distil_groups, evaluate_cached, run_dir
from jaxdd.runs.surrogate_stage import surrogate_artifact, surrogate_embeddings
from jaxdd.runs.tables import (
                                ROW_ORDER,
                                format_methods,
                                format_pm,
                                format_series,
                                format_summary,
                                format_table,
                                row_order,
)
from jaxdd.runs.text import format_comparison, format_stored, method_name
from jaxdd.runs.version import code_version
from jaxdd.runs.weights import (
                                format_weight_summary,
                                needs_biased,
                                run_groups,
                                run_log_density,
                                run_num_groups,
                                run_pseudo_groups,
                                run_weights,
                                weight_diagnostics,
                                whole_class_weights,
)

__all__ = [
    # one run, its comparison and baselines
    "run", "distill_stage", "reproduce", "run_baselines", "BASELINES", "DEBIASED", "distill_group",
    "GROUP_KNOBS", "groupable", "group_key", "distill_seeds", "seed_groupable", "seed_key",
    "distill_cell", "cell_key", "cell_groupable", "program_rows",
    # the pieces of a run
    "RunData", "check_models", "num_bias_values", "bias_classifier",
    "baseline_keys", "run_keys", "seed_keys", "expert_key", "pseudo_group_key", "biased_key",
    "code_version",
    "workdir_lock", "locked", "under_policy",
    "surrogate_artifact", "surrogate_embeddings",
    "biased_artifact", "difficulty_weights", "weighting_embeddings", "needs_biased",
    "run_log_density", "run_groups", "run_num_groups", "run_pseudo_groups", "run_weights",
    "whole_class_weights", "weight_diagnostics",
    "format_weight_summary",
    "build_expert_buffer", "expert_buffer", "expert_spec", "expert_weights", "expert_run_epochs",
    "default_buffer_dir", "EXPERT_BATCH",
    "device_mesh", "make_distiller", "distill_run", "steps_per_call", "track_every",
    "Interrupted", "MetricsLog",
    # text
    "method_name", "format_stored", "format_comparison",
    # the study
    "Setting", "KNOBS", "knob_grid", "literal_setting", "default_setting",
    "settings_from_selection", "run_dir", "evaluate_cached", "bias_score_cached",
    "distil_groups", "tune", "select", "criterion_noise", "format_selection", "final",
    "format_pm", "format_table", "format_summary", "format_series", "format_methods",
    "row_order", "ROW_ORDER",
]
