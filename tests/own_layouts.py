"""Small generated datasets in the layouts of the field's naturally biased datasets, for the tests
of ``jaxdd.data.own``: Waterbirds (``metadata.csv``), CelebA (attribute list and partition file),
UTKFace (fields in the file name), a class-folder tree and npz arrays.

Each writer draws its images with a numpy Generator of a fixed seed, returns what it wrote (the
labels, groups and splits a reader must recover), and colours each image by its group, so a
network can learn the group (the bias) as a shortcut.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 16


def _image(rng: np.random.Generator, label: int, group: int) -> np.ndarray:
  a = rng.integers(0, 80, (SIDE, SIDE, 3), dtype=np.uint8)
  a[..., group % 3] += 150  # the group's colour: the shortcut
  a[2 + 4 * label: 6 + 4 * label, 4:12] = 255  # the class's shape: a bar at its row
  return a


def _draw(n: int, num_classes: int, num_groups: int, conflict: float, seed: int):
  """Labels, groups (aligned group = label % num_groups, the rest spread) and images."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(num_classes), n // num_classes)
  groups = labels % num_groups
  flip = rng.random(len(labels)) < conflict
  groups = np.where(flip, (groups + 1 + rng.integers(0, num_groups - 1, len(labels)))
                    % num_groups, groups)
  images = np.stack([_image(rng, int(y), int(g)) for y, g in zip(labels, groups)])
  return labels, groups, images


def waterbirds(root: Path, n: int = 120, seed: int = 0) -> dict:
  """Waterbirds' layout: ``metadata.csv`` (img_id, img_filename, y, split, place,
  place_filename), images in per-species folders; split 0 train / 1 valid / 2 test."""
  labels, groups, images = _draw(n, 2, 2, 0.2, seed)
  splits = np.tile(np.array([0, 0, 0, 0, 0, 0, 1, 2, 2, 0]), len(labels) // 10 + 1)[:len(labels)]
  rows = ["img_id,img_filename,y,split,place,place_filename"]
  for i, (y, g, s, img) in enumerate(zip(labels, groups, splits, images)):
    rel = f"{y:03d}.Species_{y}/img_{i:04d}.jpg"
    os.makedirs(root / os.path.dirname(rel), exist_ok=True)
    Image.fromarray(img).save(root / rel, quality=95)
    rows.append(f"{i + 1},{rel},{y},{s},{g},/place/{g}/x.jpg")
  (root / "metadata.csv").write_text("\n".join(rows) + "\n")
  return {"labels": labels, "groups": groups, "splits": splits}


def celeba(root: Path, n: int = 120, seed: int = 1) -> dict:
  """CelebA's layout: ``list_attr_celeba.txt`` (count, attribute names, then ``name v ...``
  with -1/1), ``list_eval_partition.txt`` (``name 0|1|2``), ``img_align_celeba/*.jpg``.
  Target Blond_Hair, bias Male."""
  labels, groups, images = _draw(n, 2, 2, 0.15, seed)
  groups = 1 - groups  # blond (1) mostly female (Male = 0): aligned groups differ from labels
  names = ["5_o_Clock_Shadow", "Blond_Hair", "Male", "Smiling"]
  (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
  attr = [str(len(labels)), " ".join(names)]
  part = []
  rng = np.random.default_rng(seed + 10)
  for i, (y, g, img) in enumerate(zip(labels, groups, images)):
    name = f"{i + 1:06d}.jpg"
    Image.fromarray(img).save(root / "img_align_celeba" / name, quality=95)
    vals = [rng.choice([-1, 1]), 2 * y - 1, 2 * g - 1, rng.choice([-1, 1])]
    attr.append(name + "  " + " ".join(f"{v:2d}" for v in vals))
    part.append(f"{name} {[0, 0, 0, 0, 0, 0, 0, 1, 2, 2][i % 10]}")
  (root / "list_attr_celeba.txt").write_text("\n".join(attr) + "\n")
  (root / "list_eval_partition.txt").write_text("\n".join(part) + "\n")
  return {"labels": labels, "groups": groups,
          "splits": np.array([[0, 0, 0, 0, 0, 0, 0, 1, 2, 2][i % 10] for i in range(len(labels))])}


def utkface(root: Path, n: int = 120, seed: int = 2) -> dict:
  """UTKFace's layout: ``[age]_[gender]_[race]_[date&time].jpg.chip.jpg`` in one folder; here
  ``age_gender_race_date.jpg`` (label gender, group race in 0..3)."""
  labels, groups, images = _draw(n, 2, 4, 0.3, seed)
  root.mkdir(parents=True, exist_ok=True)
  for i, (y, g, img) in enumerate(zip(labels, groups, images)):
    Image.fromarray(img).save(root / f"{20 + i % 50}_{y}_{g}_2017011{i:05d}.jpg", quality=95)
  return {"labels": labels, "groups": groups}


def class_folders(root: Path, n: int = 120, seed: int = 3, splits: bool = False) -> dict:
  """``root/[split/]class/NNNN.png`` (PNG, so the pixels read back exactly)."""
  labels, groups, images = _draw(n, 3, 3, 0.1, seed)
  codes = np.tile(np.array([0, 0, 0, 0, 0, 0, 0, 0, 2, 2]), len(labels) // 10 + 1)[:len(labels)]
  paths = []
  for i, (y, img) in enumerate(zip(labels, images)):
    top = f"{['train', 'valid', 'test'][codes[i]]}/" if splits else ""
    rel = f"{top}{['apple', 'banana', 'cherry'][y]}/{i:04d}.png"
    os.makedirs(root / os.path.dirname(rel), exist_ok=True)
    Image.fromarray(img).save(root / rel)
    paths.append(rel)
  return {"labels": labels, "groups": groups, "images": images, "paths": paths,
          "splits": codes if splits else None}


def cifar10s(path: Path, n: int = 120, seed: int = 4) -> dict:
  """CIFAR10-S as ``npz:`` holds it: ``x_train, y_train, g_train`` (group 0 colour, 1 grey,
  a skewed share of grey images per class: the even classes mostly colour, the odd mostly
  grey) and a test split holding each of its images in both versions; grey images
  replicated to three channels."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(4), n // 4)
  grey = np.where(labels % 2 == 0, rng.random(len(labels)) < 0.1, rng.random(len(labels)) < 0.9)
  colour = np.stack([_image(rng, int(y), int(y)) for y in labels])
  as_grey = np.repeat(colour.mean(-1, keepdims=True).astype(np.uint8), 3, axis=-1)
  x = np.where(grey[:, None, None, None], as_grey, colour)
  test = rng.permutation(len(labels))[: n // 4]
  np.savez(path, x_train=x, y_train=labels, g_train=grey.astype(np.int64),
           x_test=np.concatenate([colour[test], as_grey[test]]),
           y_test=np.concatenate([labels[test], labels[test]]),
           g_test=np.repeat([0, 1], len(test)))
  return {"labels": labels, "groups": grey.astype(np.int64)}


def bffhq(root: Path, n: int = 120, seed: int = 5) -> dict:
  """BFFHQ's folder layout (the DFA release): ``0.5pct/align/``, ``0.5pct/conflict/``,
  ``valid/`` and ``test/`` of PNGs named ``<i>_<target>_<bias>`` (target age, bias gender);
  the training folders hold mostly aligned images (bias = target), valid and test half
  conflicting."""
  labels, groups, images = _draw(n, 2, 2, 0.1, seed)
  codes = np.tile(np.array([0, 0, 0, 0, 0, 0, 1, 2, 2, 0]), len(labels) // 10 + 1)[:len(labels)]
  for i, (y, g, code, img) in enumerate(zip(labels, groups, codes, images)):
    if code:  # valid / test: a balanced share of conflicting images
      g = (y + i) % 2
      img = _image(np.random.default_rng(seed + i), int(y), int(g))
    folder = {0: f"0.5pct/{'align' if g == y else 'conflict'}", 1: "valid", 2: "test"}[code]
    (root / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / folder / f"{i:04d}_{y}_{g}.png")
  return {"labels": labels, "splits": codes}
