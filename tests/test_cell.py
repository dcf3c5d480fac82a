"""DM whose weighting is data (``dm_cell``) and a table cell's rows x seeds in one program
(``cell_runs``): every run equals the ``dm`` run of its weighting made alone, up to float
rounding."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import augment, distill, models, weighting

NC, IPC, B = 3, 2, 6
MODEL = models.ConvNet(NC, depth=1, width=8)
KW = dict(num_classes=NC, ipc=IPC, model=MODEL, real_per_class=B,
          augment=augment.dsa("crop_flip"))


def _toy(seed=0):
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(NC), 10)
  x = (rng.normal(size=(len(y), 8, 8, 3)) + y[:, None, None, None]).astype(np.float32)
  emb = rng.normal(size=(len(y), 4)).astype(np.float32)
  groups = rng.integers(0, 2, size=len(y)).astype(np.int32)
  return x, y, emb, groups


def _flat_class_weights(real, cfg):
  """(N,) the whole-class weights of ``class_weights`` put back on their rows (exactly)."""
  w = np.asarray(distill.class_weights(real, cfg))
  idx, counts = np.asarray(real.index.indices), np.asarray(real.index.counts)
  out = np.zeros(len(real.images), np.float32)
  for c in range(NC):
    out[idx[c, :counts[c]]] = w[c, :counts[c]]
  return out


def _rows(seed=0):
  """Each row: (its dm alone, its real data alone, the cell's fields, the cell's hparams)."""
  x, y, emb, groups = _toy(seed)
  log_f = distill.class_log_density(emb, y, num_classes=NC, variance=0.5)
  kde = distill.KDEConfig(variance=0.5, temperature=0.5)
  cls = distill.KDEConfig(variance=0.5, temperature=0.5, scope="class")
  plain = distill.real_data(x, y, num_classes=NC)
  with_emb = distill.real_data(x, y, num_classes=NC, embeddings=emb)
  with_logf = distill.real_data(x, y, num_classes=NC, log_density=log_f)
  with_groups = distill.real_data(x, y, num_classes=NC, groups=groups)
  cw = _flat_class_weights(with_logf, cls)
  ones, zeros = np.ones(len(y), np.float32), np.zeros(len(y), np.int32)
  base = dict(lr=1.0, variance=0.5, temperature=0.5, kde=0.0, groups=0.0, batch_groups=0.0,
              weighted_sampling=0.0)
  rows = {
      "vanilla": (distill.dm(**KW), plain, dict(sample_weight=ones, sample_prob=ones,
                                                groups=zeros), base),
      "kde": (distill.dm(kde_config=kde, **KW), with_emb,
              dict(sample_weight=ones, sample_prob=ones, groups=zeros), {**base, "kde": 1.0}),
      "kde_lr": (distill.dm(kde_config=kde.replace(temperature=1.0), lr=3.0, **KW), with_emb,
                 dict(sample_weight=ones, sample_prob=ones, groups=zeros),
                 {**base, "kde": 1.0, "temperature": 1.0, "lr": 3.0}),
      "class": (distill.dm(kde_config=cls, **KW), with_logf,
                dict(sample_weight=cw, sample_prob=ones, groups=zeros), base),
      "weighted": (distill.dm(kde_config=cls, syn_init="weighted", real_sampling="weighted", **KW),
                   with_logf, dict(sample_weight=ones, sample_prob=cw, groups=zeros),
                   {**base, "weighted_sampling": 1.0}),
      "fairdd": (distill.dm(group_matching=2, **KW), with_groups,
                 dict(sample_weight=ones, sample_prob=ones, groups=groups),
                 {**base, "groups": 1.0}),
      "batch": (distill.dm(batch_clusters=4, **KW), plain,
                dict(sample_weight=ones, sample_prob=ones, groups=zeros),
                {**base, "batch_groups": 1.0}),
  }
  return x, y, emb, rows


def _alone(d, real, key, steps):
  state = d.init(key, real)
  start = state.syn
  for _ in range(steps):
    state, m = d.step(state, real)
  return start, state, m


def _cell_inputs(seeds, names, per_seed):
  """The cell's seed-major keys, shared real data (each seed's embeddings, each run's fields),
  starts and hyperparameters, and each run's state and metrics after 2 steps alone."""
  x, y = per_seed[0][0], per_seed[0][1]
  keys, starts, hps, fields, alone = [], [], [], [], []
  for s, (_, _, _emb, rows) in zip(seeds, per_seed):
    for name in names:
      d, real, f, hp = rows[name]
      real = real._replace(images=jnp.asarray(x))
      start, want, want_m = _alone(d, real, jax.random.key(10 + s), 2)
      keys.append(jax.random.key(10 + s))
      starts.append(start)
      hps.append(hp)
      fields.append(f)
      alone.append((want, want_m))
  real = distill.real_data(x, y, num_classes=NC)._replace(
      embeddings=jnp.stack([jnp.asarray(r[2]) for r in per_seed]),
      **{k: jnp.stack([jnp.asarray(f[k]) for f in fields]) for k in fields[0]})
  syn = jax.tree.map(lambda *a: jnp.stack(a), *starts)
  hparams = {k: jnp.asarray([h[k] for h in hps], jnp.float32) for k in hps[0]}
  return keys, real, syn, hparams, alone


def _assert_close(got_images, got_loss, want_state, want_m):
  # batched weights are renormalised and the rows vmapped: float32 rounding of the
  # loss and the images, relative to their scale
  scale = float(jnp.abs(want_state.syn.images).max())
  np.testing.assert_allclose(np.asarray(got_images), np.asarray(want_state.syn.images),
                             atol=2e-5 * scale)
  np.testing.assert_allclose(float(got_loss), float(want_m["loss"]), rtol=1e-4)


@pytest.mark.parametrize("name", ["vanilla", "kde", "class", "weighted", "fairdd", "batch"])
def test_dm_cell_run_equals_the_dm_run_of_its_weighting(name):
  x, y, emb, rows = _rows()
  d, real, fields, hp = rows[name]
  key = jax.random.key(4)
  start, want, want_m = _alone(d, real, key, 2)
  cell = distill.dm_cell(kde_config=distill.KDEConfig(variance=0.5, temperature=0.5),
                         num_groups=2, importance_sampling=True, batch_clusters=4, **KW)
  creal = distill.real_data(x, y, num_classes=NC, embeddings=emb, **fields)
  state = cell.init(key, creal, start, hparams=hp)
  for _ in range(2):
    state, m = cell.step(state, creal)
  _assert_close(state.syn.images, m["loss"], want, want_m)


def test_a_cell_of_rows_and_seeds_in_one_program_equals_every_run_alone():
  seeds = (0, 1)
  names = ["vanilla", "kde", "kde_lr", "class", "weighted", "fairdd", "batch"]
  per_seed = [_rows(s) for s in seeds]
  # the images are shared: seed 1's toy differs only in its embeddings and groups
  cell_d = distill.dm_cell(kde_config=distill.KDEConfig(variance=0.5, temperature=0.5),
                           num_groups=2, importance_sampling=True, batch_clusters=4, **KW)
  runs = distill.cell_runs(cell_d, num_seeds=2, num_rows=len(names), seed_fields=("embeddings",),
                           run_fields=("sample_weight", "sample_prob", "groups"),
                           parallel="map")
  keys, real, syn, hparams, alone = _cell_inputs(seeds, names, per_seed)
  state = runs.init(jnp.stack(keys), real, syn, hparams=hparams)
  assert state.syn.images.shape == (14, NC * IPC, 8, 8, 3)
  for _ in range(2):
    state, m = runs.step(state, real)
  assert m["loss"].shape == (14,)
  for i, (want, want_m) in enumerate(alone):
    _assert_close(state.syn.images[i], m["loss"][i], want, want_m)
  with pytest.raises(ValueError, match="must share its key"):
    runs.init(jax.random.split(jax.random.key(0), 14), real, syn, hparams=hparams)


def test_a_cell_split_by_how_rows_draw_equals_every_run_alone():
  # The rows that draw uniformly share one batch (and its forward pass) in one program; the
  # importance-sampled row has its own program beside it; one step of the whole: every run
  # still equals its dm run alone, laid out seed-major as one cell_runs program would be.
  seeds = (0, 1)
  names = ["vanilla", "weighted", "kde", "fairdd", "batch"]
  per_seed = [_rows(s) for s in seeds]
  fields_ = ("sample_weight", "sample_prob", "groups")

  def program(rows, sampling):
    cell_d = distill.dm_cell(kde_config=distill.KDEConfig(variance=0.5, temperature=0.5),
                             num_groups=2, importance_sampling=sampling, batch_clusters=4, **KW)
    return distill.cell_runs(cell_d, num_seeds=2, num_rows=len(rows),
                             seed_fields=("embeddings",), run_fields=fields_)
  uniform, weighted = [0, 2, 3, 4], [1]
  runs = distill.cell_row_groups([(program(uniform, False), uniform),
                                  (program(weighted, True), weighted)],
                                 num_seeds=2, num_rows=len(names), run_fields=fields_)
  keys, real, syn, hparams, alone = _cell_inputs(seeds, names, per_seed)
  state = runs.init(jnp.stack(keys), real, syn, hparams=hparams)
  assert state.syn.images.shape == (10, NC * IPC, 8, 8, 3)
  np.testing.assert_array_equal(np.asarray(state.hparams["weighted_sampling"]),
                                [0, 1, 0, 0, 0] * 2)
  for _ in range(2):
    state, m = runs.step(state, real)
  assert m["loss"].shape == (10,)
  for i, (want, want_m) in enumerate(alone):
    _assert_close(state.syn.images[i], m["loss"][i], want, want_m)
  with pytest.raises(ValueError, match="must share its key"):
    runs.init(jax.random.split(jax.random.key(0), 10), real, syn, hparams=hparams)
  with pytest.raises(ValueError, match="cover range"):
    distill.cell_row_groups([(program(uniform, False), uniform)], num_seeds=2, num_rows=5)


def test_the_cell_vmaps_the_seeds_too_and_checks_its_arguments():
  x, y, emb, rows = _rows()
  cell_d = distill.dm_cell(num_groups=2, **KW)
  runs = distill.cell_runs(cell_d, num_seeds=2, num_rows=2, parallel="vmap")
  real = distill.real_data(x, y, num_classes=NC, embeddings=emb)
  keys = jnp.stack([jax.random.key(0)] * 2 + [jax.random.key(1)] * 2)
  state, m = runs.step(runs.init(keys, real), real)
  mapped = distill.cell_runs(cell_d, num_seeds=2, num_rows=2, parallel="map")
  state_m, m_m = mapped.step(mapped.init(keys, real), real)
  np.testing.assert_allclose(np.asarray(m["loss"]), np.asarray(m_m["loss"]), rtol=1e-5)
  # rows of a seed with equal settings are the same run
  np.testing.assert_allclose(np.asarray(state.syn.images[0]), np.asarray(state.syn.images[1]),
                             atol=1e-6)
  with pytest.raises(ValueError, match="both per seed and per run"):
    distill.cell_runs(cell_d, num_seeds=2, num_rows=2, seed_fields=("groups",),
                      run_fields=("groups",))
  with pytest.raises(ValueError, match="one key per run"):
    runs.init(jax.random.key(0), real)
  with pytest.raises(ValueError, match="one value per run"):
    runs.init(keys, real, hparams={"lr": jnp.ones(3)})
  with pytest.raises(ValueError, match="num_groups must be"):
    distill.dm_cell(num_groups=0, **KW)
  assert weighting.KDEConfig().normalize == "power"


def test_dm_honours_per_sample_weights_given_as_data():
  # dm with sample_weight = the whole-class weights equals dm with the class-scope weighting;
  # a constant factor on the weights changes nothing
  x, y, emb, rows = _rows()
  d_cls, real_cls, fields, _ = rows["class"]
  key = jax.random.key(2)
  _, want, want_m = _alone(d_cls, real_cls, key, 2)
  plain = distill.dm(**KW)
  for factor in (1.0, 7.0):
    real = distill.real_data(x, y, num_classes=NC, sample_weight=factor * fields["sample_weight"])
    _, got, got_m = _alone(plain, real, key, 2)
    _assert_close(got.syn.images, got_m["loss"], want, want_m)
  with pytest.raises(ValueError, match="sample_weight must be"):
    distill.real_data(x, y, num_classes=NC, sample_weight=-np.ones(len(y)))
  with pytest.raises(ValueError, match="sample_prob is 0 on every image of classes"):
    distill.real_data(x, y, num_classes=NC, sample_prob=(y != 1).astype(np.float32))
