"""Trusting distilled sets: signatures, backdoor attacks to test against, and an audit.

* :mod:`jaxdd.security.signing` -- ed25519 signatures over a SynSet's manifest,
  checked on load against trusted public keys (``jaxdd keys`` / ``sign`` /
  ``verify``; :func:`~jaxdd.security.signing.load_synset`, also
  ``jaxdd.load_synset``, is the loader that checks them).
* :mod:`jaxdd.security.attacks` -- a red team for evaluating defences: BadNets
  poisoning of the real data before distillation, and the pieces of a post-hoc
  attack on a finished SynSet (:func:`jaxdd.runs.attacks.posthoc_attack` runs it).
* :mod:`jaxdd.security.audit` -- ``jaxdd audit``: candidate triggers, Neural
  Cleanse trigger reverse-engineering and KDE outliers under the run's surrogate
  (:func:`jaxdd.runs.audit.audit_artifact` audits a SynSet artifact);
  :mod:`jaxdd.security.cleanse` holds its Neural Cleanse probe.

The package imports only the layers below it (the core and the base), never
:mod:`jaxdd.distill` or the runs: the contracts in ``pyproject.toml`` check it.
"""
