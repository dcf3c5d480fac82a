"""SelecMix (Hwang et al., "SelecMix: Debiased Learning by Contradicting-pair Sampling",
NeurIPS 2022; iwhwang/SelecMix) as a training task: mixup with pairs chosen to contradict the bias.

An auxiliary network (encoder plus a two-layer projection head, L2-normalised output) is trained
beside the classifier with the *generalized* supervised-contrastive loss (GSC: SupCon whose
log-probabilities are weighted by ``q * stop_gradient(p)^q``, like GCE; tau = 0.2, q = 0.7), so
its embedding captures what is easy to learn: the bias. At each step its cosine similarities
over the batch choose, for every sample ``i``, one partner ``j``; a fair coin per step picks the
mode:

* *intra*: the least similar sample of the same label (same class, other bias);
* *inter*: the most similar sample of another label (other class, same bias).

The classifier is trained on ``x~ = lam * x_i + (1 - lam) * x_j`` with ``lam ~ U(0, lam_max)``
(lam_max = 0.5, so ``x_j`` dominates), labelled ``y_j``: cross-entropy on the mixed batch times
``mix_weight`` plus, with ``clean_weight`` > 0, cross-entropy on the batch itself. The defaults
are the authors' "vanilla + SelecMix" Colored-MNIST setting (mix_weight 1, clean_weight 0,
``configs/v_ours.cfg``). The classifier is evaluated.

Facts from the authors' code (``util.py``, ``module/loss.py``, ``learner.py``): the intra mask
fills other labels with similarity 1 before the argmin, the inter mask fills same labels with 0
before the argmax (ties: the first index); the coin is drawn once per step; the auxiliary network
is trained on the un-mixed batch after the classifier's update.

Documented deviations, the same as for LfF and DFA (:mod:`jaxdd.debias`): the protocol's SGD,
epochs, schedule and DSA augmentation for every parameter (the authors: Adam, lr 0.005 for the
classifier and 0.02 for the projection network on CMNIST); the auxiliary encoder is the
evaluation architecture's feature extractor (theirs: a ResNet-18) and pairs are chosen within
the protocol's training batch (theirs: a 1,024 batch cut into four 256 steps). No checkpoint is
chosen on test data: the final classifier is evaluated.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd.debias.common import num_classes_of, value_task
from jaxdd.layers import TorchDense
from jaxdd.train import StepBatch, TrainTask, apply_train, cross_entropy, split_variables


def generalized_supcon_loss(z: jax.Array, labels: jax.Array, *, tau: float = 0.2,
                            q: float = 0.7) -> jax.Array:
  """SelecMix's GSC loss: SupCon over one view, each log-probability weighted by ``q p^q``.

  For anchors ``i`` and the other samples ``a != i``, ``log p_ia = s_ia - log sum_{a != i}
  exp(s_ia)`` with ``s = z z^T / tau``; the loss of ``i`` is the mean of ``-q * sg(p_ip)^q *
  log p_ip`` over its positives ``p`` (same label, ``p != i``), 0 when it has none, and the loss
  is the mean over all anchors. ``q = 0`` gives the plain supervised-contrastive loss.

  Args:
    z: (n, d) L2-normalised embeddings.
    labels: (n,) integer labels.
    tau: temperature > 0.
    q: GSC exponent (the weight is ``q * p^q``).

  Returns:
    Scalar loss.

  Example:
    >>> import jax.numpy as jnp
    >>> z = jnp.array([[1., 0.], [1., 0.], [0., 1.]])
    >>> y = jnp.array([0, 0, 1])  # anchors 0 and 1: p = e / (e + 1); anchor 2: no positive
    >>> round(float(generalized_supcon_loss(z, y, tau=1.0, q=0.0)), 4)  # 2/3 * log(1 + 1/e)
    0.2088
    >>> round(float(generalized_supcon_loss(z, y, tau=1.0, q=1.0)), 4)  # ... times p
    0.1527
  """
  z = z.astype(jnp.float32)
  n = z.shape[0]
  s = (z @ z.T) / tau
  off = ~jnp.eye(n, dtype=bool)
  # The row maximum shifts the exponent only (it cancels in log p); it is a constant there.
  s = s - jax.lax.stop_gradient(s.max(axis=1, keepdims=True))
  log_denominator = jnp.log(jnp.where(off, jnp.exp(s), 0.0).sum(axis=1, keepdims=True))
  log_p = s - log_denominator
  if q:
    log_p = q * jax.lax.stop_gradient(jnp.exp(log_p)) ** q * log_p
  pos = (labels[:, None] == labels[None, :]) & off
  per_anchor = -jnp.where(pos, log_p, 0.0).sum(axis=1) / jnp.maximum(pos.sum(axis=1), 1)
  return per_anchor.mean()


def contradicting_partners(sim: jax.Array, labels: jax.Array, intra: jax.Array) -> jax.Array:
  """Each sample's SelecMix partner under the similarities ``sim``.

  Args:
    sim: (n, n) similarities of the auxiliary (bias-capturing) embeddings.
    labels: (n,) integer labels.
    intra: scalar bool: True picks the least similar sample of the same label, False the
      most similar sample of another label.

  Returns:
    (n,) partner indices (the first one at ties).

  Example:
    >>> import jax.numpy as jnp
    >>> sim = jnp.array([[1.0, 0.2, 0.9], [0.2, 1.0, 0.1], [0.9, 0.1, 1.0]])
    >>> y = jnp.array([0, 0, 1])
    >>> contradicting_partners(sim, y, jnp.array(True)).tolist()   # same label, least similar
    [1, 0, 0]
    >>> contradicting_partners(sim, y, jnp.array(False)).tolist()  # other label, most similar
    [2, 2, 0]
  """
  same = labels[:, None] == labels[None, :]
  least_similar_same = jnp.argmin(jnp.where(same, sim, 1.0), axis=1)
  most_similar_other = jnp.argmax(jnp.where(same, 0.0, sim), axis=1)
  return jnp.where(intra, least_similar_same, most_similar_other)


def mix_pairs(images: jax.Array, labels: jax.Array, partners: jax.Array,
              lam: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``lam * x_i + (1 - lam) * x_j`` labelled ``y_j``, for ``j = partners[i]``.

  Args:
    images: (n, ...) batch.
    labels: (n,) integer labels.
    partners: (n,) partner indices.
    lam: (n,) mixing weights of the samples themselves.

  Returns:
    ``(mixed images, partner labels)``.

  Example:
    >>> import jax.numpy as jnp
    >>> x, y = jnp.array([[0.0], [10.0]]), jnp.array([3, 7])
    >>> xm, ym = mix_pairs(x, y, jnp.array([1, 0]), jnp.array([0.25, 0.5]))
    >>> xm.tolist(), ym.tolist()
    ([[7.5], [5.0]], [7, 3])
  """
  lam = lam.reshape((-1,) + (1,) * (images.ndim - 1)).astype(images.dtype)
  return lam * images + (1 - lam) * images[partners], labels[partners]


class ProjectionHead(nn.Module):
  """SupCon's MLP head: Linear(d, d), ReLU, Linear(d, features), L2-normalised."""
  features: int = 128

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    h = nn.relu(TorchDense(h.shape[-1])(h))
    z = TorchDense(self.features)(h)
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def selecmix_task(model: nn.Module, tau: float = 0.2, q: float = 0.7, lam_max: float = 0.5,
                  mix_weight: float = 1.0, clean_weight: float = 0.0,
                  projection_dim: int = 128) -> TrainTask:
  """The SelecMix training method as a :class:`~jaxdd.train.TrainTask` (equal for equal arguments).

  Args:
    model: evaluation architecture: the classifier, and the auxiliary encoder (its
      ``return_features`` output).
    tau: GSC temperature.
    q: GSC exponent.
    lam_max: the sample's own share is drawn from U(0, lam_max).
    mix_weight: weight of the cross-entropy on the mixed batch.
    clean_weight: weight of the cross-entropy on the batch itself.
    projection_dim: output size of the projection head.

  Returns:
    A task with params ``{"classifier", "encoder", "head"}``; it predicts with the classifier.

  Example:
    >>> from jaxdd import models
    >>> selecmix_task(models.ConvNet(num_classes=2, width=4)).name
    'selecmix'
  """
  return value_task("selecmix", _SelecMix(model, tau, q, lam_max, mix_weight, clean_weight,
                                          int(projection_dim), num_classes_of(model)))


@dataclasses.dataclass(frozen=True)
class _SelecMix:
  """SelecMix's arguments; its methods are the task's functions (value-compared through them)."""
  model: nn.Module
  tau: float
  q: float
  lam_max: float
  mix_weight: float
  clean_weight: float
  projection_dim: int
  num_classes: int

  def init(self, key, images, labels):
    kc, ke, kh = jax.random.split(key, 3)
    pc, sc = split_variables(self.model.init(kc, images[:1], train=False))
    pe, se = split_variables(self.model.init(ke, images[:1], train=False))
    h, _ = self.model.apply({"params": pe, **se}, images[:1], return_features=True)
    head = ProjectionHead(self.projection_dim).init(kh, jnp.zeros_like(h))["params"]
    return {"classifier": pc, "encoder": pe, "head": head}, {"classifier": sc, "encoder": se}

  def loss(self, params, state, batch: StepBatch):
    k_aux, k_mix, k_coin, k_lam, k_clean = jax.random.split(batch.key, 5)
    (h, _), se = apply_train(self.model, params["encoder"], state["encoder"], batch.images,
                             k_aux, return_features=True)
    z = ProjectionHead(self.projection_dim).apply({"params": params["head"]}, h)
    sim = jax.lax.stop_gradient(z @ z.T)
    intra = jax.random.uniform(k_coin) > 0.5
    partners = contradicting_partners(sim, batch.labels, intra)
    lam = self.lam_max * jax.random.uniform(k_lam, batch.labels.shape)
    mixed, y_mixed = mix_pairs(batch.images, batch.labels, partners, lam)
    logits, sc = apply_train(self.model, params["classifier"], state["classifier"], mixed, k_mix)
    total = self.mix_weight * cross_entropy(logits, y_mixed).mean()
    if self.clean_weight:
      clean, sc = apply_train(self.model, params["classifier"], sc, batch.images, k_clean)
      total = total + self.clean_weight * cross_entropy(clean, batch.labels).mean()
    # The auxiliary network's loss shares no parameter with the classifier's: one sum, two
    # separate gradients.
    total = total + generalized_supcon_loss(z, batch.labels, tau=self.tau, q=self.q)
    return total, ({"classifier": sc, "encoder": se}, (logits, y_mixed))

  def predict(self, params, state, images):
    return self.model.apply({"params": params["classifier"], **state["classifier"]}, images,
                            train=False)
