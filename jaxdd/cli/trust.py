"""The trust commands: ``keys``, ``sign``, ``verify`` (SynSet signatures) and ``audit``
(a backdoor search; exit status 3 when a SynSet looks poisoned)."""
from __future__ import annotations

import argparse
import base64
import json
import os

from jaxdd import protocols, synset
from jaxdd.cli import arguments, flags
from jaxdd.runs import audit as audit_run
from jaxdd.runs import checks, outputs
from jaxdd.security import audit, signing


def signature_line(meta: dict) -> str:
  """The one-line signature status of a loaded SynSet artifact."""
  return signing.SignatureStatus(**meta["signature"]).line()


def synset_path(path: str) -> str:
  """``path``, the SynSet artifact a command reads; a directory that holds SynSets below it
  instead (a run or a work directory) is refused with the paths to pass.

  The SynSet is never chosen for the user, even when there is one: the path given is the one
  the command's output names.
  """
  if not os.path.isdir(path) or os.path.exists(os.path.join(path, "manifest.json")):
    return path  # the loader says what is wrong with it, if anything
  try:
    found = signing.find_synsets(path)
  except FileNotFoundError:
    return path
  if found == [os.path.join(path, "synset")]:
    raise ValueError(f"{path} is a run directory; its SynSet is {found[0]}: pass that path")
  if len(found) == 1:
    raise ValueError(f"{path} is not a SynSet artifact; the one below it is {found[0]}: pass "
                     "that path")
  shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
  raise ValueError(f"{path} is not a SynSet artifact but holds {len(found)} ({shown}); pass "
                   "one of them")


def probe_list(text: str) -> tuple[str, ...]:
  """``--verdict-probes``: comma-separated audit probe names.

  >>> probe_list("triggers, kde")
  ('triggers', 'kde')
  """
  names = tuple(v.strip() for v in text.split(",") if v.strip())
  if not names or any(n not in audit.PROBES for n in names) or len(set(names)) != len(names):
    raise argparse.ArgumentTypeError(
        f"{text!r}: name distinct probes among {','.join(audit.PROBES)}, e.g. triggers,kde")
  return names


def _passphrase(var: str | None) -> bytes | None:
  if var is None:
    return None
  value = os.environ.get(var)
  if not value:
    raise ValueError(f"--passphrase-env names ${var}, which is unset or empty; export the "
                     "passphrase in it")
  return value.encode()


def cmd_keys(args) -> int:
  signing.require_crypto()  # the package first: nothing is written without it
  checks.check_writable(os.path.dirname(os.path.abspath(args.name)))
  private, public, kid = signing.new_keys(args.name, passphrase=_passphrase(args.passphrase_env))
  print(f"key {kid}\n  private: {private} (keep it secret; mode 0600)\n  public:  {public} "
        f"(give it to whoever should trust your SynSets: --trust {public})")
  return 0


def signed_by(path: str) -> str | None:
  """The id of the key whose signature the SynSet at ``path`` holds: None when unsigned,
  ``"unreadable"`` when its signature file is not a signature record."""
  try:
    with open(os.path.join(path, signing.SIGNATURE_FILE)) as f:
      record = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return "unreadable"
  try:
    return signing.key_id(base64.b64decode(record["public_key"], validate=True))
  except (KeyError, TypeError, ValueError):
    return "unreadable"


def _refuse_other_signatures(paths: list[str], mine: str) -> None:
  """Refuses (before anything is signed) to replace another key's signature without --replace."""
  others = [(p, kid) for p in paths if (kid := signed_by(p)) not in (None, mine)]
  if not others:
    return
  (path, kid), more = others[0], len(others) - 1
  also = f" (and {more} more SynSet{'s' if more > 1 else ''} signed by other keys)" if more else ""
  held = "an unreadable signature" if kid == "unreadable" else f"a signature by key {kid}"
  raise ValueError(f"{path} already holds {held}, not this key's ({mine}){also}; pass --replace "
                   "to replace it")


def cmd_sign(args) -> int:
  signing.require_crypto()
  key = signing.load_private_key(args.key, passphrase=_passphrase(args.passphrase_env))
  paths = signing.find_synsets(args.path)
  for path in paths:  # every artifact is verified first: a damaged one stops before any signing
    synset.load(path)
    checks.check_writable(path)  # and can take its signature
  if not args.replace:
    _refuse_other_signatures(paths, signing.key_id(key.public_key().public_bytes_raw()))
  for path in paths:
    record = signing.sign_synset(path, key)
    print(f"signed {path} (key {record['key_id']})")
  return 0


def cmd_verify(args) -> int:
  trust = signing.trusted_keys(args.trust)
  if trust is None:
    raise ValueError("verify needs a trust anchor: pass --trust KEY.pub (or a folder of them) or "
                     f"set {signing.TRUST_ENV}")
  failed = 0
  for path in signing.find_synsets(args.path):
    try:
      _, meta = signing.load_synset(path, trust=trust)
      print(f"{path}: {signature_line(meta)}")
    except (ValueError, FileNotFoundError) as e:
      print(f"{path}: REFUSED: {e}")
      failed += 1
  return 1 if failed else 0


def cmd_audit(args) -> int:
  if args.out:  # destroys nothing and writable, before any network is trained
    outputs.check_output_file(args.out, what="an audit report", owns=lambda p: (
        outputs.json_object_with(p, ("synset", "signature"))))
  report, meta = audit_run.audit_artifact(
      synset_path(args.synset), trust=args.trust, seed=args.seed, model_spec=args.model,
      protocol=args.protocol, num_models=args.num_models, clean_images=args.clean_images,
      kde=not args.no_kde, source=args.source, progress=not args.quiet,
      cleanse=not args.no_cleanse, cleanse_images=args.cleanse_images,
      cleanse_steps=args.cleanse_steps, asr_threshold=args.asr_threshold,
      anomaly_threshold=args.anomaly_threshold, outlier_z=args.outlier_z,
      lift_threshold=args.lift_threshold, verdict_probes=args.verdict_probes)
  print(signature_line(meta))
  print(report.format())
  if args.out:
    synset.atomic_write_json(args.out, {"synset": args.synset, "signature": meta["signature"],
                                        **report.to_dict()})
    print(f"written to {args.out}")
  return 3 if report.suspicious else 0


def _register_audit(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("audit", help="look for a backdoor in a SynSet: candidate triggers, trigger "
                                   "reverse-engineering, KDE outliers (exit 3 when suspicious)")
  p.add_argument("synset", help="SynSet artifact directory")
  p.add_argument("--model", default=None,
                 help="networks trained on the SynSet (default: the run's evaluation "
                      "architecture; e.g. convnet-d3-w32 is ~10x cheaper on a CPU)")
  p.add_argument("--protocol", default="cpu300", choices=tuple(protocols.PROTOCOLS),
                 help="how those networks are trained (default: cpu300)")
  p.add_argument("--num-models", type=arguments.positive_int, default=2, help="networks (default: 2)")
  p.add_argument("--seed", type=arguments.non_negative_int, default=0, help="default: 0")
  p.add_argument("--clean-images", type=arguments.positive_int, default=2000,
                 help="trusted clean images drawn from the dataset's validation split (default: "
                      "2000)")
  p.add_argument("--cleanse-images", type=arguments.positive_int, default=128,
                 help="of those, the reverse-engineering batch (default: 128)")
  p.add_argument("--cleanse-steps", type=arguments.positive_int, default=200,
                 help="Adam steps of the reverse engineering (default: 200)")
  p.add_argument("--no-cleanse", action="store_true", help="skip the reverse engineering")
  p.add_argument("--no-kde", action="store_true", help="skip the KDE outlier probe")
  p.add_argument("--asr-threshold", type=float, default=audit.ASR_THRESHOLD,
                 help="flag a candidate trigger at this attack success rate (default: "
                      f"{audit.ASR_THRESHOLD:g})")
  p.add_argument("--lift-threshold", type=float, default=audit.LIFT_THRESHOLD,
                 help="or when its ASR exceeds the median candidate's to the same class by "
                      f"this much (default: {audit.LIFT_THRESHOLD:g})")
  p.add_argument("--anomaly-threshold", type=float, default=audit.ANOMALY_THRESHOLD,
                 help="flag a reverse-engineered class at this anomaly index (default: "
                      f"{audit.ANOMALY_THRESHOLD:g})")
  p.add_argument("--verdict-probes", type=probe_list, default=audit.VERDICT_PROBES,
                 help="comma-separated probes whose flags make the verdict, among "
                      f"{','.join(audit.PROBES)} (default: {','.join(audit.VERDICT_PROBES)}; "
                      "Neural Cleanse's is reported only, docs/results/security.md)")
  p.add_argument("--outlier-z", type=float, default=audit.OUTLIER_Z,
                 help="flag a synthetic image closer to another class's real images whose KDE "
                      "margin is this many robust sds below the SynSet's median (default: "
                      f"{audit.OUTLIER_Z:g})")
  p.add_argument("--source", default=None, help="default: the artifact's run source")
  p.add_argument("--out", default=None, help="write the report JSON here")
  flags.add_trust_flag(p)
  flags.add_common_flags(p)
  p.set_defaults(fn=cmd_audit)


def _register_signing(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("keys", help="`jaxdd keys new NAME`: an ed25519 key pair to sign SynSets")
  p.add_argument("action", choices=["new"])
  p.add_argument("name", help="path stem: writes NAME.key (private) and NAME.pub (public)")
  p.add_argument("--passphrase-env", default=None,
                 help="encrypt the private key with the passphrase in this environment variable")
  flags.add_common_flags(p)
  p.set_defaults(fn=cmd_keys)

  p = sub.add_parser("sign", help="sign a SynSet (or every SynSet of a run / work directory)")
  p.add_argument("path", help="a SynSet artifact, a run directory or a work directory of runs")
  p.add_argument("--key", required=True, help="the private key (NAME.key from `jaxdd keys new`)")
  p.add_argument("--passphrase-env", default=None,
                 help="environment variable holding the private key's passphrase")
  p.add_argument("--replace", action="store_true",
                 help="replace a signature made by another key (refused without it; re-signing "
                      "with the same key needs no flag)")
  flags.add_common_flags(p)
  p.set_defaults(fn=cmd_sign)

  p = sub.add_parser("verify", help="check the signatures of a SynSet (or of every SynSet below "
                                    "a directory) against trusted public keys")
  p.add_argument("path", help="a SynSet folder, or a folder with SynSets below it (a run, a "
                              "work directory)")
  flags.add_trust_flag(p, unset="refused: verify needs the keys to check against")
  flags.add_common_flags(p)
  p.set_defaults(fn=cmd_verify)


def register(sub: argparse._SubParsersAction, preset: str) -> None:
  """Adds ``audit``, ``keys``, ``sign`` and ``verify``."""
  _register_audit(sub)
  _register_signing(sub)
