"""Post-distillation debiasing baselines: LfF, DFA and SelecMix trained on a SynSet.

Cui et al. (docs/protocols.md) compare their reweighted distillation
with "a state-of-the-art debiasing method applied on the same synthetic set":
the evaluation networks are trained on a *vanilla* distilled set with a
debiasing method that needs no bias labels. This package provides three such
methods, trained under the same :class:`~jaxdd.protocols.Protocol` as every
other number (SGD, schedule, DSA augmentation, epochs), compiled as one
``lax.scan`` like :func:`jaxdd.train.train_fresh`, and evaluated with the
same per-group metrics:

* **LfF** (Nam et al., "Learning from Failure", NeurIPS 2020; alinlab/LfF). A
  biased network is trained with the generalized cross-entropy (GCE, q = 0.7),
  which emphasises easy (bias-aligned) samples, alongside the debiased
  network. Each sample's CE under both networks is tracked as an exponential
  moving average (alpha = 0.7; the first update stores the loss itself),
  normalised per class by the class maximum of the EMA over the whole training
  set, and the debiased network's CE is weighted by the relative difficulty
  ``W(x) = L_b / (L_b + L_d + 1e-8)``. The debiased network is evaluated.
* **DFA** (Lee et al., "Learning Debiased Representation via Disentangled
  Feature Augmentation", NeurIPS 2021; kakaoenterprise/
  Learning-Debiased-Disentangled). Two encoders give intrinsic and bias
  features ``z_i``, ``z_b``; two linear heads read ``[z_i, z_b]`` (each head
  only back-propagates into its own encoder). The intrinsic head gets
  ``W(x)``-weighted CE, the bias head GCE, with W from the same per-class
  normalised EMAs. After a warm-up the bias features are swapped across the
  batch (``z_b[perm]``) to synthesise bias-conflicting features: the
  intrinsic head must still predict ``y``, the bias head ``y[perm]``.
  Loss: ``L_dis + lambda_swap * L_swap`` with ``L_dis = mean(W CE_i) +
  lambda_dis_align * mean(GCE_b)`` and ``L_swap = mean(W CE_i^swap) +
  lambda_swap_align * mean(GCE_b^swap)``. Prediction: the intrinsic head on
  ``[z_i, z_b]``. Defaults are the authors' Colored-MNIST values
  (lambda_dis_align = lambda_swap_align = 10, lambda_swap = 1, swap after
  10k of 50k steps, i.e. ``swap_start = 0.2`` of training).

GCE as in the LfF/DFA code: ``GCE = CE * q * stop_gradient(p_y) ** q``, whose
gradient is ``q`` times the gradient of the GCE formula ``(1 - p_y^q) / q``.

* **SelecMix** (Hwang et al., NeurIPS 2022; iwhwang/SelecMix): mixup with pairs that
  contradict the bias, chosen by an auxiliary network trained with a generalized
  supervised-contrastive loss (:mod:`jaxdd.debias.selecmix`, with its own deviations).

Simplifications (documented deviations from the original code): the methods
use the protocol's SGD (momentum 0.9, coupled weight decay, step decay, shared
by all their parameters) instead of Adam, the protocol's epochs instead of a
step budget, and the DSA augmentation of the protocol on the shared batch;
DFA's encoders are the evaluation architecture's feature extractor (its own
classifier is left unused) instead of the authors' MLP / ResNet18, and its
lr schedule is the protocol's. No validation-based checkpoint selection: the
final networks are evaluated, as for every other jaxdd number.

Data contract: as :mod:`jaxdd.evaluate` (NHWC float32 normalised images,
integer labels; soft labels are refused because the per-sample EMAs and SelecMix's pairs
need a class per row).

The bias-amplified classifier (:mod:`~jaxdd.debias.biased`) is LfF's biased network on its own:
trained with GCE on a biased training set, its per-sample difficulty, error set and features
weigh the real images of a distillation (:mod:`jaxdd.weighting.difficulty`).

Modules: :mod:`~jaxdd.debias.common` (GCE, loss EMAs, relative difficulty),
:mod:`~jaxdd.debias.biased` and :mod:`~jaxdd.debias.biased_cache` (the bias-amplified classifier
and its cache),
:mod:`~jaxdd.debias.lff`, :mod:`~jaxdd.debias.dfa`, :mod:`~jaxdd.debias.selecmix` (the
training tasks), :mod:`~jaxdd.debias.api` (training and evaluation on a SynSet).
"""
from jaxdd.debias.api import METHODS, evaluate_debiased, train_dfa, train_lff, train_selecmix
from jaxdd.debias.biased import BiasedConfig, BiasedOutputs, biased_outputs, gce_task, train_biased
from jaxdd.debias.common import (gce_loss, generalized_cross_entropy, relative_difficulty,
                                 update_ema)
from jaxdd.debias.dfa import dfa_predict, dfa_task
from jaxdd.debias.lff import lff_task
from jaxdd.debias.selecmix import (contradicting_partners, generalized_supcon_loss, mix_pairs,
                                   selecmix_task)

__all__ = ["BiasedConfig", "BiasedOutputs", "METHODS", "biased_outputs", "contradicting_partners",
           "dfa_predict", "dfa_task", "evaluate_debiased", "gce_loss", "gce_task",
           "generalized_cross_entropy", "generalized_supcon_loss", "lff_task", "mix_pairs",
           "relative_difficulty", "selecmix_task", "train_biased", "train_dfa", "train_lff",
           "train_selecmix", "update_ema"]
