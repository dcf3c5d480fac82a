"""The 19 image corruptions (+ "original") of Corrupted CIFAR-10, LfF protocol.

Data contract: :func:`corrupt` takes ``images`` of shape (N, H, W, 3), float in
[0, 1] (uint8 in 0..255 is accepted and divided by 255), any H, W >= 8, and
returns a new (N, H, W, 3) float32 array in [0, 1]. Severities are the
Hendrycks & Dietterich (2019) levels 1..5. LfF's ``make_dataset.py`` calls
the protocol at ``severity + 1``, so LfF's "Severity4" folders hold level 5.
That offset belongs to the dataset builder, not to this module.

Randomness. ``key`` is a typed ``jax.random.key``. It seeds a numpy
``SeedSequence``, which spawns one independent ``numpy.random.Generator`` per
image, in index order. Image ``i``'s corruption therefore depends only on
``(key, i, images[i], name, severity)``. It does not depend on the other
images, on N, or on the internal chunking. Draw a fresh key for every call
(e.g. one per class): two calls with the same key give image ``i`` the same
noise.

Class -> corruption (LfF ``make_dataset.py``): ``TYPE0[k]`` / ``TYPE1[k]`` is
the bias attribute of class ``k``.

Per-severity constants. They are facts taken from LfF's
``data/corrupted_cifar10_protocol.py`` (alinlab/LfF), which is the CIFAR
variant of Hendrycks & Dietterich's ``make_cifar_c.py`` (hendrycks/robustness).
Motion blur uses LfF's constants ((6,1), (6,1.5), (6,2), (8,2), (9,2.5)). The
zoom-blur factor lists are ``np.arange(1, 1 + 0.05k + 0.01, 0.01)``. Floating
point gives 7, 12, 16, 21 and 26 factors. The code here is our own. It uses
numpy, scipy.ndimage and Pillow only: no ImageMagick/Wand, cv2 or skimage.

Fidelity. The code was checked against the reference implementations (cv2
5.0 / scikit-image 0.25 / scipy / Pillow). The checks ran outside the test
suite, on fixed random fields fed to both sides. These match to float
precision (<= 1e-6): gaussian_blur, defocus_blur, glass_blur, zoom_blur,
brightness, saturate, contrast, elastic, spatter (all five levels), fog
(the plasma fractal fed the same uniforms), snow except its motion blur, and
the noises (same formulas). jpeg calls Pillow directly. Where this differs
from the reference (beyond the random stream itself):

* ``frost`` is a **procedural approximation**. The reference blends a random
  crop of one of five frost photographs (LfF ``data/resource/frost1..5``,
  downscaled 5x) into the image: ``clip(a * x + b * frost)``. We keep exactly
  those per-severity weights ``(a, b)``. The photograph is replaced by a seeded
  texture of the same character: a blue-white haze (smoothed noise), fine
  grain, and bright crystalline needles. The needles are sparse seeds streaked
  along three random directions. The texture's mean is about 0.55. Its spatial
  statistics only resemble real frost; they are not calibrated against it.
* ``snow`` and ``motion_blur`` used ImageMagick's ``MagickMotionBlurImage``.
  We re-implement that filter from MagickCore's ``MotionBlurImage``: a
  one-sided Gaussian line kernel of width ``2 * ceil(radius) + 1``, with
  weights ``exp(-i^2 / (2 sigma^2))``, sampling the pixel at
  ``(ceil(i cos t - 0.5), ceil(i sin t - 0.5))`` (x right, y down), with
  edge-replicated borders (the default virtual-pixel method). This was not
  run against ImageMagick itself (no ImageMagick here). ``motion_blur``
  skips the reference's 8-bit PNG round trip. ``snow`` keeps the 8-bit
  quantisation of its snow layer.
* ``spatter`` levels 1-3 used cv2's ``Canny``, ``distanceTransform`` (L2,
  5x5 chamfer mask), ``equalizeHist``, ``filter2D`` and ``blur``. They are
  re-implemented here, including cv2's integer/fixed-point and rounding
  details. cv2's IPP-accelerated distance transform can differ from the
  plain chamfer by up to 1.5e-4 before the truncation to uint8.
* ``elastic`` uses float bilinear resampling where cv2 uses 5-bit fixed-point
  bilinear in ``warpAffine`` (<1e-6 difference). Its pixel constants are
  fractions of ``min(H, W)``. The reference uses a fixed 32, which is
  identical on CIFAR.
* ``fog``'s plasma fractal uses map size = the next power of two >= max(H, W)
  (32 on CIFAR, as in the reference).
* ``pixelate`` runs Pillow's BOX resampling in float (mode "F") rather than
  8-bit. The two differ by at most one 8-bit level.
* ``jpeg`` rounds the input to uint8, as JPEG needs.
* The output is float32 in [0, 1]. LfF stored ``astype(uint8)``, i.e.
  truncated, 8-bit images. Quantise in the caller if you need that storage.

Example:
  >>> import jax, numpy as np
  >>> from jaxdd.data import corruptions
  >>> x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
  >>> y = corruptions.corrupt(jax.random.key(0), x, "fog", severity=5)
  >>> y.shape, y.dtype
  ((4, 32, 32, 3), dtype('float32'))

Modules: :mod:`~jaxdd.data.corruptions.api` (the registry and :func:`corrupt`),
the corruption families :mod:`~jaxdd.data.corruptions.noise_blur`,
:mod:`~jaxdd.data.corruptions.weather` and :mod:`~jaxdd.data.corruptions.digital`, and
their building blocks :mod:`~jaxdd.data.corruptions.filters`,
:mod:`~jaxdd.data.corruptions.cv2ops` and :mod:`~jaxdd.data.corruptions.colour`.
"""
from __future__ import annotations

from jaxdd.data.corruptions.api import CORRUPTIONS, TYPE0, TYPE1, corrupt
from jaxdd.data.corruptions.colour import hsv_to_rgb, rgb_to_hsv

__all__ = ["TYPE0", "TYPE1", "CORRUPTIONS", "corrupt", "rgb_to_hsv", "hsv_to_rgb"]
