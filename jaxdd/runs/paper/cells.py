"""The paper table's cells and rows: what each setting and each row of the table runs.

A cell is one setting (dataset, conflicting fraction, IPC, method); a row is a way of weighing
the real data, as :class:`jaxdd.config.RunConfig` overrides. :func:`row_config` makes the
configuration of one row and seed of a cell from the cell's base configuration.

>>> [c.name for c in CELLS][:3]
['cmnist5-ipc50', 'bg10-ipc10', 'cmnist5-ipc10']
>>> dsa = next(c for c in CELLS if c.method == "dsa")
>>> cell_rows(dsa)  # FairDD's rows are DM's only
['vanilla', 'kde', 'kde_init', 'kde_floor_init_is', 'gce', 'jtt', 'kde_biased', 'oracle', 'ceiling']
>>> choice_pool(CELLS[2], ("vanilla", "kde", "fairdd_batch"))
['kde', 'fairdd_batch']
"""
from __future__ import annotations

import dataclasses

from jaxdd.config import RunConfig


@dataclasses.dataclass(frozen=True)
class Cell:
  """One setting of the table: dataset, conflicting fraction, IPC and method."""
  name: str
  dataset: str
  ratio: float
  ipc: int
  method: str = "dm"


#: The cells, in the order they run (the paper's own setting first).
CELLS = (
    Cell("cmnist5-ipc50", "cmnist", 0.05, 50),
    # FairDD's appendix M: label-free FairDD (in-batch DBSCAN) against FairDD with labels;
    # a background bias, what users' own data have: right after the paper's own setting
    Cell("bg10-ipc10", "cmnist_bg", 0.1, 10),
    Cell("cmnist5-ipc10", "cmnist", 0.05, 10),
    Cell("fg10-ipc10", "cmnist_fg", 0.1, 10),
    Cell("bgfmnist5-ipc50", "bg_fmnist", 0.05, 50),
    Cell("cmnist1-ipc50", "cmnist", 0.01, 50),
    Cell("cmnist2-ipc50", "cmnist", 0.02, 50),
    Cell("fg10-ipc50", "cmnist_fg", 0.1, 50),
    Cell("fg5-ipc50", "cmnist_fg", 0.05, 50),
    Cell("bgfmnist5-ipc10", "bg_fmnist", 0.05, 10),
    Cell("cmnist5-ipc10-dsa", "cmnist", 0.05, 10, "dsa"),
    # a natural-looking background bias: garments on textured backgrounds
    Cell("textured5-ipc10", "textured_fmnist", 0.05, 10),
)

#: The conflicting fraction at which each dataset is unbiased (every bias value equally likely).
UNBIASED = {"cmnist": 0.9, "bg_fmnist": 0.9, "cmnist_fg": 0.9, "cmnist_bg": 0.9,
            "textured_fmnist": 0.9}


@dataclasses.dataclass(frozen=True)
class Row:
  """A row: its RunConfig overrides, its label, whether it reads the true bias labels, the
  methods it exists for, and whether it is reported (else a label-free candidate only)."""
  overrides: dict
  label: str
  bias_labels: bool = False
  methods: tuple = ("dm", "dsa")
  reported: bool = True


ROWS: dict[str, Row] = {
    "vanilla": Row(dict(weighting="none"), "vanilla DM"),
    "kde": Row(dict(weighting="kde"), "DM + KDE (the paper's method)"),
    "kde_init": Row(dict(weighting="kde", init="weighted"), "DM + KDE, init ∝ weight",
                    reported=False),
    "kde_floor_init_is": Row(dict(weighting="kde", init="weighted", real_sampling="weighted",
                                  kde_floor=0.05),
                             "DM + KDE, density floor 0.05, init ∝ weight + importance-sampled "
                             "batches", reported=False),
    "fairdd_pseudo": Row(dict(weighting="fairdd_pseudo"),
                         "FairDD, pseudo-groups from clustering the surrogate's embeddings",
                         methods=("dm",)),
    "fairdd_batch": Row(dict(weighting="fairdd_batch"),
                        "FairDD, pseudo-groups from DBSCAN of each batch (its appendix M)",
                        methods=("dm",)),
    "fairdd_batch_knee": Row(dict(weighting="fairdd_batch", fairdd_eps="knee"),
                             "FairDD, pseudo-groups from DBSCAN of each batch, the radius at "
                             "the knee of the k-distance curve", methods=("dm",), reported=False),
    "fairdd_dbscan": Row(dict(weighting="fairdd_dbscan"),
                         "FairDD, pseudo-groups from DBSCAN of each whole class",
                         methods=("dm",), reported=False),
    "gce": Row(dict(weighting="gce"), "weights from a GCE-trained biased classifier's "
               "difficulty", reported=False),
    "jtt": Row(dict(weighting="jtt"), "weights up on the biased classifier's error set (JTT)",
               reported=False),
    "kde_biased": Row(dict(weighting="kde", kde_features="biased"),
                      "DM + KDE in the biased classifier's features", reported=False),
    "fairdd": Row(dict(weighting="fairdd"), "FairDD synchronized matching (true bias labels)",
                  bias_labels=True, methods=("dm",)),
    "oracle": Row(dict(weighting="oracle"), "oracle group-balanced weights (true bias labels)",
                  bias_labels=True),
    "ceiling": Row(dict(weighting="none"), "vanilla DM on unbiased data (the ceiling)"),
}

#: The label-free rows the best label-free setting is chosen from, the candidates of
#: ``--weighting auto`` (:data:`jaxdd.runs.auto.CANDIDATES`); the first is the incumbent.
LABEL_FREE = ("kde", "kde_init", "kde_floor_init_is", "fairdd_pseudo", "fairdd_batch",
              "fairdd_batch_knee", "fairdd_dbscan", "gce", "jtt", "kde_biased")
#: The rows a queue runs unless ``rows`` says otherwise: the table's reported rows and its
#: first label-free candidates (the units of the paper preset are grouped from these); the
#: newer candidates of ``--weighting auto`` are asked for by name (the label-free table).
DEFAULT_ROWS = ("vanilla", "kde", "kde_init", "kde_floor_init_is", "fairdd_pseudo",
                "fairdd_batch", "fairdd", "oracle", "ceiling")
#: Rows distilled on other data than the cell's (not in the cell's one program).
OWN_DATA = ("ceiling",)
#: The fields a cell sets; a queue's own settings do not take them.
CELL_FIELDS = ("dataset", "conflict_ratio", "ipc", "method", "seed")


def cell_rows(cell: Cell, only: tuple = tuple(ROWS)) -> list[str]:
  """The rows (reported and candidates) that exist for a cell's method, in table order."""
  return [name for name, row in ROWS.items() if cell.method in row.methods and name in only]


def choice_pool(cell: Cell, only: tuple) -> list[str]:
  """The label-free rows of ``cell`` among ``only`` that the best label-free row is chosen
  from, the incumbent (the paper's DM + KDE) first."""
  return [n for n in LABEL_FREE if n in cell_rows(cell, only)]


def row_config(base: RunConfig, cell: Cell, name: str, seed: int) -> RunConfig:
  """The configuration of the row ``name`` and ``seed`` of ``cell``, from the cell's base
  configuration: the row's overrides, and the ceiling on the dataset's unbiased data."""
  fields = dict(ROWS[name].overrides)
  if name == "ceiling":
    fields["conflict_ratio"] = UNBIASED[cell.dataset]
  return base.replace(seed=seed, **fields)
