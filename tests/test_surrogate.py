"""Tests for jaxdd.surrogate: SupCon loss, surrogate training, embed, cache. (The crop
augmentation is tested in test_augment.py.)"""
from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import surrogate as S
from jaxdd import train


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def supcon_reference(z: np.ndarray, labels: np.ndarray, temperature: float) -> float:
  """Naive float64 loop over anchors, positives and denominators (L_out)."""
  z = np.asarray(z, np.float64)
  m = z.shape[0]
  per_anchor = []
  for i in range(m):
    denom = sum(math.exp(z[i] @ z[a] / temperature) for a in range(m) if a != i)
    pos = [p for p in range(m) if p != i and labels[p] == labels[i]]
    if not pos:
      continue
    terms = [z[i] @ z[p] / temperature - math.log(denom) for p in pos]
    per_anchor.append(-sum(terms) / len(pos))
  return sum(per_anchor) / len(per_anchor)


def toy_biased(seed=0, num_classes=3, per_class=32, conflicting_per_class=4, size=8, noise=0.05):
  """Tiny colour-biased set: class = shape, bias = colour (aligned: colour c)."""
  rng = np.random.default_rng(seed)
  palette = np.eye(3, dtype=np.float32)[:num_classes] * 0.9 + 0.05
  shapes = np.zeros((num_classes, size, size), np.float32)
  shapes[0, size // 2 - 1:size // 2 + 1, 1:-1] = 1
  shapes[1, 1:-1, size // 2 - 1:size // 2 + 1] = 1
  for i in range(1, size - 1):
    shapes[2, i, i] = shapes[2, i, size - 1 - i] = 1
  xs, ys, aligned = [], [], []
  for c in range(num_classes):
    for k in range(per_class):
      conf = k < conflicting_per_class
      colour = palette[(c + 1 + k % (num_classes - 1)) % num_classes] if conf else palette[c]
      img = shapes[c][..., None] * colour[None, None, :] + noise * rng.normal(size=(size, size, 3))
      xs.append(np.clip(img, 0, 1))
      ys.append(c)
      aligned.append(not conf)
  return np.stack(xs).astype(np.float32), np.array(ys, np.int32), np.array(aligned)


# One tiny config shared by every training test, so the epoch program is compiled once.
CFG = S.SurrogateConfig.preset("smoke", width=4, depth=1, proj_dim=8, batch_size=24, epochs=4)


@pytest.fixture(scope="module")
def toy():
  return toy_biased()


@pytest.fixture(scope="module")
def trained(toy):
  x, y, _ = toy
  params, history = S.train_surrogate(jax.random.key(0), x, y, config=CFG, progress=False)
  return params, history


# ---------------------------------------------------------------------------
# supcon_loss
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.07])
def test_supcon_hand_orthogonal(temperature):
  # Two samples, two identical views each, the samples orthogonal. Every anchor
  # sees its positive at dot 1 and two negatives at dot 0:
  #   L = -log(e^{1/t} / (e^{1/t} + 2)) = log(1 + 2 e^{-1/t}).
  # t = 1: log(1 + 2/e) = 0.551444713932...
  z = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
  expected = math.log(1 + 2 * math.exp(-1 / temperature))
  got = float(S.supcon_loss(z, jnp.array([0, 1, 0, 1]), temperature=temperature))
  assert got == pytest.approx(expected, rel=1e-5)
  if temperature == 1.0:
    assert got == pytest.approx(0.551444713932, abs=1e-6)


def test_supcon_hand_identical():
  # All four embeddings equal: the 3 terms of every denominator are equal, so
  # each positive has probability 1/3 and L = log 3 = 1.0986..., whether an
  # anchor has 1 positive (labels 0,1,0,1) or 3 (all one label).
  z = jnp.ones((4, 3)) / math.sqrt(3)
  for labels in ([0, 1, 0, 1], [0, 0, 0, 0]):
    got = float(S.supcon_loss(z, jnp.array(labels), temperature=0.3))
    assert got == pytest.approx(math.log(3), rel=1e-6)


def test_supcon_anchor_without_positive_is_left_out():
  # z = e1, e1, e2 with labels 0, 0, 1 and t = 1. Anchors 0, 1: positive at
  # dot 1, negative at dot 0 -> L = log(e + 1) - 1 = log(1 + 1/e) = 0.31326...
  # Anchor 2 has no positive and is left out of the mean (not counted as 0,
  # which would give 2/3 of that).
  z = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  got = float(S.supcon_loss(z, jnp.array([0, 0, 1]), temperature=1.0))
  assert got == pytest.approx(math.log(1 + 1 / math.e), rel=1e-6)


def test_supcon_matches_numpy_loop(getkey):
  for m, d, t in ((8, 4, 0.07), (13, 6, 0.5), (20, 3, 1.0)):
    z = jax.random.normal(getkey(), (m, d))
    z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
    labels = jax.random.randint(getkey(), (m,), 0, 3)
    ref = supcon_reference(np.asarray(z), np.asarray(labels), t)
    got = float(S.supcon_loss(z, labels, temperature=t))
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_supcon_jit_grad_and_permutation(getkey):
  z = jax.random.normal(getkey(), (12, 5))
  z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
  labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
  eager = S.supcon_loss(z, labels, temperature=0.2)
  jitted = jax.jit(lambda a, b: S.supcon_loss(a, b, temperature=0.2))(z, labels)
  np.testing.assert_allclose(eager, jitted, rtol=1e-6)
  # The loss is a mean over anchors: invariant to a joint permutation.
  perm = jax.random.permutation(getkey(), 12)
  np.testing.assert_allclose(S.supcon_loss(z[perm], labels[perm], temperature=0.2), eager, rtol=1e-5)
  g = jax.grad(lambda a: S.supcon_loss(a, labels, temperature=0.2))(z)
  assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0


def _supcon_plain_jnp(z, labels, t):
  """Textbook formula with jax.nn.log_softmax, used as a gradient reference."""
  m = z.shape[0]
  eye = jnp.eye(m, dtype=bool)
  logp = jax.nn.log_softmax(jnp.where(eye, -jnp.inf, z @ z.T / t), axis=1)
  pos = (labels[:, None] == labels[None, :]) & ~eye
  return jnp.mean(-jnp.where(pos, logp, 0.0).sum(1) / pos.sum(1))


def test_supcon_gradient_matches_plain_formula_including_ties(getkey):
  labels = jnp.array([0, 1, 0, 1, 2, 2])
  z = jax.random.normal(getkey(), (6, 4))
  tied = z.at[1].set(z[0]).at[3].set(z[0])  # exact ties in several rows' max
  for emb in (z, tied):
    emb = emb / jnp.linalg.norm(emb, axis=1, keepdims=True)
    g = jax.grad(lambda a: S.supcon_loss(a, labels, temperature=0.5))(emb)
    g_ref = jax.grad(lambda a: _supcon_plain_jnp(a, labels, 0.5))(emb)
    np.testing.assert_allclose(g, g_ref, atol=1e-5)


def test_supcon_bad_input():
  z = jnp.eye(4)
  y = jnp.array([0, 1, 0, 1])
  for t in (0.0, -1.0, float("nan")):
    with pytest.raises(ValueError, match="temperature"):
      S.supcon_loss(z, y, temperature=t)
  with pytest.raises(ValueError, match="labels must have shape"):
    S.supcon_loss(z, y[:3])
  with pytest.raises(ValueError, match="NaN"):
    S.supcon_loss(z.at[0, 0].set(jnp.nan), y)
  with pytest.raises(ValueError, match="two views"):
    S.supcon_loss(z, jnp.arange(4))


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def test_surrogate_shapes_and_unit_norm(getkey):
  net = S.Surrogate(encoder_width=4, depth=2, proj_dim=8)
  x = jax.random.uniform(getkey(), (3, 12, 12, 3))
  variables = jax.jit(net.init)(getkey(), x[:1])
  feats, z = jax.jit(lambda v, a: net.apply(v, a, return_features=True))(variables, x)
  assert feats.shape == (3, 3 * 3 * 4) and z.shape == (3, 8)
  np.testing.assert_allclose(jnp.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
  # Head = Linear(d, d) - ReLU - Linear(d, proj_dim).
  p = variables["params"]
  assert p["head_hidden"]["Dense_0"]["kernel"].shape == (36, 36)
  assert p["head_out"]["Dense_0"]["kernel"].shape == (36, 8)


def test_config_presets_and_validation():
  long = S.SurrogateConfig.preset("long")
  assert long == S.SurrogateConfig()  # the defaults
  assert (long.width, long.depth, long.proj_dim, long.temperature, long.epochs,
          long.batch_size, long.learning_rate, long.momentum, long.weight_decay) == (
              128, 3, 128, 0.07, 20, 256, 0.05, 0.9, 1e-4)
  assert long.flip is False and long.crop_scale == (0.5, 1.0)
  # the paper preset's surrogate is the short one validation chose at paper scale
  paper = S.SurrogateConfig.preset("paper")
  assert paper == S.SurrogateConfig.preset("cpu")
  assert (paper.width, paper.steps, paper.epochs) == (32, 210, 20)
  assert paper.for_size(54_000).epochs == 1  # under one epoch of full MNIST's training split
  assert S.SurrogateConfig.preset("cpu").width < long.width
  with pytest.raises(ValueError, match="temperature"):
    S.SurrogateConfig(temperature=0.0)
  with pytest.raises(ValueError, match="preset"):
    S.SurrogateConfig.preset("huge")
  hash(long)  # usable as a cache key


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def test_training_lowers_loss_deterministically_one_trace(toy, trained):
  x, y, _ = toy
  params, history = trained
  assert len(history["loss"]) == CFG.epochs
  assert history["steps_per_epoch"] == 96 // 24 and history["dropped_per_epoch"] == 0
  assert history["loss"][-1] < history["loss"][0]
  # Same key -> bitwise the same params, and the compiled step is reused (no new trace:
  # the CPU default drives steps from the host, one program per task and size).
  traced = train._host_step._cache_size()
  again, history2 = S.train_surrogate(jax.random.key(0), x, y, config=CFG, progress=False)
  jax.tree.map(np.testing.assert_array_equal, params, again)
  assert history2["loss"] == history["loss"]
  assert train._host_step._cache_size() == traced


def test_scan_and_step_loops_agree(toy, trained):
  # The single-program epoch (lax.scan) and the host-driven steps run the same
  # step body: same losses and params up to float rounding.
  x, y, _ = toy
  params, history = trained
  assert history["loop"] == "step"
  traced = train._host_epoch._cache_size()
  scanned, history_scan = S.train_surrogate(jax.random.key(0), x, y, config=CFG, progress=False,
                                            loop="scan")
  assert history_scan["loop"] == "scan"
  np.testing.assert_allclose(history_scan["loss"], history["loss"], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), scanned, params)
  assert train._host_epoch._cache_size() == traced + 1  # one epoch program for all epochs


def test_training_drops_last_partial_batch(toy):
  x, y, _ = toy
  cfg = dataclasses.replace(CFG, batch_size=40, epochs=1)
  _, history = S.train_surrogate(jax.random.key(1), x, y, config=cfg, progress=False)
  assert history["steps_per_epoch"] == 2 and history["dropped_per_epoch"] == 16


def test_training_bad_input(toy):
  x, y, _ = toy
  bad = x.copy()
  bad[0, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    S.train_surrogate(jax.random.key(0), bad, y, config=CFG)
  with pytest.raises(ValueError, match="labels must have shape"):
    S.train_surrogate(jax.random.key(0), x, y[:-1], config=CFG)
  with pytest.raises(ValueError, match="batch_size 200 is larger"):
    S.train_surrogate(jax.random.key(0), x, y, config=dataclasses.replace(CFG, batch_size=200))
  y1 = y.copy()
  y1[0] = 3  # class 3 has a single sample
  with pytest.raises(ValueError, match=r"class\(es\) \[3\] have a single sample"):
    S.train_surrogate(jax.random.key(0), x, y1, config=CFG)
  with pytest.raises(ValueError, match="NHWC"):
    S.train_surrogate(jax.random.key(0), x[..., 0], y, config=CFG)
  with pytest.raises(ValueError, match="loop"):
    S.train_surrogate(jax.random.key(0), x, y, config=CFG, loop="while")


def test_batch_norm_surrogate_updates_running_stats(toy):
  x, y, _ = toy
  cfg = dataclasses.replace(CFG, norm="batch", epochs=1)
  params, history = S.train_surrogate(jax.random.key(0), x, y, config=cfg, progress=False)
  assert set(params) == {"params", "batch_stats"} and math.isfinite(history["loss"][0])
  init = cfg.model().init(jax.random.key(0), x[:1])
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), params["batch_stats"],
                       init["batch_stats"])
  assert min(jax.tree.leaves(moved)) > 0  # running mean/var were updated in training
  # Inference uses the running statistics: a sample's embedding does not
  # depend on the rest of its block.
  z_all = S.embed(params, x, config=cfg)
  z_one = S.embed(params, x[:1], config=cfg)
  np.testing.assert_allclose(z_one, z_all[:1], atol=1e-5)


# ---------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------


def test_embed_blocks_match_direct_apply(toy, trained):
  x, _, _ = toy
  params, _ = trained
  direct_feats, direct_z = CFG.model().apply(params, jnp.asarray(x), return_features=True)
  z = S.embed(params, x, config=CFG, block_size=7)  # 96 = 13 * 7 + 5: ragged last block
  np.testing.assert_allclose(z, direct_z, atol=1e-5)
  np.testing.assert_allclose(S.embed(params, x, config=CFG), direct_z, atol=1e-5)
  enc = S.embed(params, x, config=CFG, space="encoder", block_size=32)
  ref = direct_feats / jnp.linalg.norm(direct_feats, axis=1, keepdims=True)
  np.testing.assert_allclose(enc, ref, atol=1e-5)
  with pytest.raises(ValueError, match="space"):
    S.embed(params, x, config=CFG, space="logits")
  with pytest.raises(ValueError, match="NaN"):
    S.embed(params, np.full_like(x, np.nan), config=CFG)


# ---------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------


def test_cache_roundtrip_tamper_and_keying(toy, trained, tmp_path):
  x, y, _ = toy
  meta = {"name": "toy", "split": "train", "conflict_ratio": 0.125, "seed": 0}
  first = S.load_or_train(jax.random.key(0), meta, x, y, config=CFG, progress=False)
  assert not first.from_cache
  # Default cache root comes from $JAXDD_CACHE (set per test by conftest).
  assert first.path.startswith(os.path.join(os.environ["JAXDD_CACHE"], "surrogates"))
  # Training inside load_or_train is the same as a plain train_surrogate run.
  jax.tree.map(np.testing.assert_array_equal, first.params, trained[0])
  root = os.path.dirname(first.path)
  assert sorted(os.listdir(first.path)) == ["embeddings.npz", "meta.json", "params.npz"]
  assert [d for d in os.listdir(root) if d.startswith(".")] == []  # no temp leftovers

  second = S.load_or_train(jax.random.key(0), meta, x, y, config=CFG, progress=False)
  assert second.from_cache and second.path == first.path
  jax.tree.map(np.testing.assert_array_equal, second.params, first.params)
  np.testing.assert_array_equal(second.embeddings, first.embeddings)
  assert second.history["loss"] == first.history["loss"]
  np.testing.assert_allclose(S.embed(second.params, x, config=CFG), second.embeddings, atol=1e-6)

  # Tampered file: sha256 mismatch -> warning, retrain, entry rewritten.
  p = os.path.join(first.path, "params.npz")
  with open(p, "r+b") as f:
    f.seek(-20, os.SEEK_END)
    f.write(b"\x00" * 8)
  with pytest.warns(RuntimeWarning, match="sha256 mismatch"):
    third = S.load_or_train(jax.random.key(0), meta, x, y, config=CFG, progress=False)
  assert not third.from_cache
  assert S.load_or_train(jax.random.key(0), meta, x, y, config=CFG, progress=False).from_cache

  # Any change of meta, key or data is a different entry.
  other = S.load_or_train(jax.random.key(0), {**meta, "conflict_ratio": 0.05}, x, y, config=CFG,
                          progress=False)
  assert other.path != first.path
  with pytest.raises(ValueError, match="JSON-serialisable"):
    S.load_or_train(jax.random.key(0), {"name": object()}, x, y, config=CFG)
  explicit = S.load_or_train(jax.random.key(0), meta, x, y, config=CFG, cache_dir=tmp_path / "c",
                             progress=False)
  assert os.path.dirname(explicit.path) == str(tmp_path / "c")


def test_a_cache_entry_carried_to_another_machine_loads_without_training(toy, tmp_path,
                                                                          monkeypatch):
  # Only the parameters and the spec travel (cache.PORTABLE_FILES); the importing machine
  # recomputes the embeddings and then loads the surrogate instead of training another.
  import shutil
  x, y, _ = toy
  meta = {"name": "toy", "split": "train", "seed": 0}
  here = S.load_or_train(jax.random.key(0), meta, x, y, config=CFG,
                         cache_dir=tmp_path / "a", progress=False)
  assert S.cache.portable_entries(x, y, cache_dir=tmp_path / "a") == [here.path]
  assert S.cache.portable_entries(x[:-1], y[:-1], cache_dir=tmp_path / "a") == []
  carried = tmp_path / "carried" / os.path.basename(here.path)
  carried.mkdir(parents=True)
  for name in S.cache.PORTABLE_FILES:
    shutil.copy(os.path.join(here.path, name), carried / name)
  entry = S.cache.import_entry(carried, x, y, cache_dir=tmp_path / "b")
  assert os.path.dirname(entry) == str(tmp_path / "b")
  monkeypatch.setattr(S.cache, "train_surrogate",
                      lambda *a, **k: pytest.fail("the imported surrogate was trained again"))
  there = S.load_or_train(jax.random.key(0), meta, x, y, config=CFG,
                          cache_dir=tmp_path / "b", progress=False)
  assert there.from_cache and there.path == entry
  jax.tree.map(np.testing.assert_array_equal, there.params, here.params)
  np.testing.assert_allclose(there.embeddings, here.embeddings, atol=1e-6)  # same program
  assert S.cache.import_entry(carried, x, y, cache_dir=tmp_path / "b") == entry  # kept
  # other data, a renamed folder, a changed parameter file: refused
  with pytest.raises(ValueError, match="other data"):
    S.cache.import_entry(carried, x[::-1], y[::-1], cache_dir=tmp_path / "c")
  renamed = tmp_path / "carried" / "0000"
  shutil.copytree(carried, renamed)
  with pytest.raises(ValueError, match="not its spec's hash"):
    S.cache.import_entry(renamed, x, y, cache_dir=tmp_path / "c")
  with open(carried / "params.npz", "r+b") as f:
    f.seek(-20, os.SEEK_END)
    f.write(b"\x00" * 8)
  with pytest.raises(ValueError, match="not the file its entry recorded"):
    S.cache.import_entry(carried, x, y, cache_dir=tmp_path / "c")
  assert not (tmp_path / "c").exists()


def test_package_exports_the_surrogate():
  import jaxdd
  with pytest.raises(ImportError):  # the deprecated alias is gone
    from jaxdd import contrastive  # noqa: F401
  assert jaxdd.train_surrogate is S.train_surrogate and jaxdd.surrogate is S


def test_the_runs_surrogate_batch_follows_a_small_dataset(monkeypatch):
  # 60 training images at the smoke preset (batch 64): the batch becomes the data, one batch
  # an epoch, instead of a refusal whose fix (SurrogateConfig.batch_size) a command-line user
  # cannot apply; data at least one batch large keeps its preset's batch
  import types
  import jax
  import numpy as np
  from jaxdd import surrogate
  from jaxdd.config import get_config
  from jaxdd.runs import surrogate_stage
  seen = []
  monkeypatch.setattr(surrogate, "load_or_train",
                      lambda key, meta, images, labels, config, progress: seen.append(config))
  for n in (60, 640):
    train = types.SimpleNamespace(meta={}, images=np.zeros((n, 8, 8, 3), np.float32),
                                  labels=np.arange(n) % 4)
    surrogate_stage.surrogate_artifact(get_config("smoke"), types.SimpleNamespace(train=train),
                                       jax.random.key(0), progress=False)
  assert [c.batch_size for c in seen] == [60, surrogate.SurrogateConfig.preset("smoke").batch_size]
