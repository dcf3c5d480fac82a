"""Private support code of jaxdd (file I/O, argument checks, XLA:CPU convolution
kernels, the Winograd convolution of gradient-free forwards), one owner per concern.

Nothing here is public API: names may change without notice. Public modules
re-export what users need (e.g. :func:`jaxdd.synset.atomic_write_json`).
"""
