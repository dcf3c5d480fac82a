"""Trusting distilled sets: signatures, backdoor attacks to test against, and an audit.

* :mod:`jaxdd.security.signing` -- ed25519 signatures over a SynSet's manifest,
  checked on load against trusted public keys (``jaxdd keys`` / ``sign`` /
  ``verify``).
* :mod:`jaxdd.security.attacks` -- a red team for evaluating defences: BadNets
  poisoning of the real data before distillation, and a post-hoc attack on a
  finished SynSet.
* :mod:`jaxdd.security.audit` -- ``jaxdd audit``: candidate triggers, Neural
  Cleanse trigger reverse-engineering and KDE outliers under the run's surrogate.
"""
