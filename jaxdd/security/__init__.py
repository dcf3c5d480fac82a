"""Trusting distilled sets: signatures, backdoor attacks to test against, and an audit.

* :mod:`jaxdd.security.signing` -- ed25519 signatures over a SynSet's manifest,
  checked on load against trusted public keys.
"""
