"""The DM step sharded over 8 simulated CPU devices equals the single-device step."""
import jax
import numpy as np
import pytest

from jaxdd import distill, models, parallel
from jaxdd.config import get_config


def _toy(num_classes, per_class=16, size=8, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(num_classes), per_class)
  images = rng.normal(size=(len(labels), size, size, 3)).astype(np.float32)
  emb = rng.normal(size=(len(labels), 4)).astype(np.float32)
  return images, labels, emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _run(mesh, class_axis, batch_axis, num_classes, steps=2, kde=False):
  x, y, emb = _toy(num_classes)
  real = distill.real_data(x, y, num_classes=num_classes, embeddings=emb, mesh=mesh)
  d = distill.dm(num_classes=num_classes, ipc=2, model=models.ConvNet(num_classes, depth=2, width=8),
                 real_per_class=8, execution=distill.Execution(mesh=mesh, class_axis=class_axis,
                                                               batch_axis=batch_axis),
                 kde_config=distill.KDEConfig(variance=0.5) if kde else None)
  state = d.init(jax.random.key(0), real)
  losses = []
  for _ in range(steps):
    state, m = d.step(state, real)
    losses.append(float(m["loss"]))
  return np.asarray(state.syn.images), np.array(losses)


@pytest.mark.parametrize("axes,class_axis,batch_axis,num_classes,kde", [
    ({"data": 8}, None, "data", 3, False),   # real batch split over 8 devices
    ({"cls": 4, "real": 2}, "cls", "real", 4, True),  # classes x batch, KDE weights
])
def test_sharded_equals_single_device(axes, class_axis, batch_axis, num_classes, kde):
  assert jax.device_count() == 8, "conftest must force 8 CPU devices"
  ref_images, ref_losses = _run(None, None, None, num_classes, kde=kde)
  mesh = parallel.make_mesh(axes)
  images, losses = _run(mesh, class_axis, batch_axis, num_classes, kde=kde)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
  np.testing.assert_allclose(images, ref_images, rtol=1e-4, atol=1e-4)


def test_make_mesh_checks_size():
  with pytest.raises(ValueError, match="needs 6 devices"):
    parallel.make_mesh({"a": 3, "b": 2})


@pytest.mark.slow
def test_devices_flag_shards_a_run_with_the_same_numbers(tmp_path):
  from jaxdd import runs
  assert jax.device_count() == 8
  cfg = get_config("smoke", weighting="none", iterations=3)
  mesh_of = lambda c: runs.device_mesh(c.execution, 10, c.real_per_class)  # noqa: E731
  mesh = mesh_of(cfg.replace(devices="8"))
  assert dict(mesh.shape) == {"cls": 2, "real": 4}
  assert mesh_of(cfg.replace(devices="all")).size == 8
  assert mesh_of(cfg) is None
  assert cfg.replace(devices="8").digest() == cfg.digest()  # layout only
  with pytest.raises(ValueError, match="only 8 devices"):
    mesh_of(cfg.replace(devices="16"))
  with pytest.raises(ValueError, match="multiple of 4"):
    mesh_of(cfg.replace(devices="8", real_per_class=6))
  with pytest.raises(ValueError, match="devices must be"):
    cfg.replace(devices="two")
  one = runs.distill_stage(cfg, str(tmp_path / "one"), progress=False)
  eight = runs.distill_stage(cfg.replace(devices="8"), str(tmp_path / "eight"), progress=False)
  scale = float(np.abs(one.images).max())
  np.testing.assert_allclose(eight.images, one.images, atol=1e-4 * scale)
