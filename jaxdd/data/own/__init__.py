"""Your own dataset, as it is: images and class labels, optional group (bias) labels and splits.

``parse("KIND:PATH", **options)`` describes it (:mod:`jaxdd.data.own.spec`: ``folder``,
``csv``, ``celeba``, ``pattern``, ``npz``, ``tfds``); :func:`load_own` reads one split into a
:class:`~jaxdd.data.card.BiasedDataset` (:mod:`jaxdd.data.own.dataset`; :class:`OwnData` opens
the data once for several splits), decoding image files
once into a memory-mapped cache (:mod:`jaxdd.data.own.decoding`); :func:`export_layout` writes
splits in the layouts it reads (:mod:`jaxdd.data.own.export`). Group labels are never made up:
without them ``bias`` and ``aligned`` are None, and only evaluation ever reads them.

Example:
  >>> spec = parse("csv:waterbirds/metadata.csv", path_col="img_filename", label_col="y",
  ...              group_col="place", split_col="split", image_size=64)
  >>> spec.group_col
  'place'
"""
from __future__ import annotations

from jaxdd.data.own.dataset import (DataChangedWarning, HeldOutTestWarning, OwnData,
                                    content_sha256, from_arrays, load_own, read_index,
                                    split_codes)
from jaxdd.data.own.decoding import cache_folder, decode
from jaxdd.data.own.export import LAYOUTS, export_layout
from jaxdd.data.own.readers import IMAGE_EXTS, Index
from jaxdd.data.own.spec import ALIGNED_RULES, KINDS, DataSpec, parse

__all__ = ["ALIGNED_RULES", "DataChangedWarning", "DataSpec", "HeldOutTestWarning", "IMAGE_EXTS",
           "Index", "KINDS", "LAYOUTS", "OwnData", "cache_folder", "content_sha256", "decode",
           "export_layout", "from_arrays", "load_own", "parse", "read_index", "split_codes"]
