"""The run configuration's parts: literal choices equal to the library's registries, the flat
serialisation and the digests that name run directories pinned, checks split by part."""
from __future__ import annotations

import dataclasses
import json

import pytest

from jaxdd import cli, data, distill, presets, protocols, surrogate
from jaxdd.config import (
  CHOICES,
  FIELDS,
  METHODS,
  OWNER,
  PARTS,
  PRESETS,
  RunConfig,
  get_config,
  parts,
)
from jaxdd.config import run as run_module
from jaxdd.runs import checks
from jaxdd.weighting import batch_clusters as weighting_batch_clusters
from jaxdd.weighting import kde as weighting_kde

# (digest, distill_digest) of every preset x method x weighting the config accepts, computed
# before the config was split into parts: run directories and config.json files stay valid.
DIGESTS = {
    "cpu/dm/none": ("aefd760edd712ac9", "9fe31da8d2040616"),
    "cpu/dm/kde": ("dc12b134acdffe6a", "4b17318e4fa04e95"),
    "cpu/dm/oracle": ("fa548a4b427be8fc", "7e2c9c3f651ee459"),
    "cpu/dm/fairdd": ("5580b3f7da32a5f8", "7cc22867c8826a12"),
    "cpu/dsa/none": ("ccd5d5f7002f78a4", "5d4944ef383ba01e"),
    "cpu/dsa/kde": ("462ec2fdd4ed9e36", "f0b9d4f15e89d2b0"),
    "cpu/dsa/oracle": ("07910d798ec5b1a0", "b710b62c2b530b60"),
    "cpu/dc/none": ("36c7495105b01800", "e019dc7a32761ecc"),
    "cpu/dc/kde": ("33445982353d93d0", "b05b4017ab8fac13"),
    "cpu/dc/oracle": ("a0c696e68c08fc29", "b81a1912fa875611"),
    "cpu/mtt/none": ("c317789341c02d5c", "bdf4d8dcbf3b828b"),
    "cpu/mtt/kde": ("52b592e1f6fffcf1", "d0d294585b1380ed"),
    "cpu/mtt/oracle": ("92bd13412e0d4fcf", "cc64988f942717c8"),
    "cpu/cfm/none": ("93d5ca2d450fdd6a", "84cec3976b16fb73"),
    "cpu/cfm/kde": ("e71c513a8cae2964", "f9fbfe12fd923f58"),
    "cpu/cfm/oracle": ("46ccddcf98436356", "5233b3e110aae10e"),
    "paper/dm/none": ("24c70c95cb8fc3b4", "2094d925a562c859"),
    "paper/dm/kde": ("e41de787f1e8fccb", "de88be6379d808b3"),
    "paper/dm/oracle": ("12023e284c59e519", "5927c935338fd060"),
    "paper/dm/fairdd": ("b425c10e76fee967", "02cbe922d294e9c9"),
    "paper/dsa/none": ("8880ff4257784114", "c0a552d4edadb6e7"),
    "paper/dsa/kde": ("0c0470e38efdca18", "75195e868d707bed"),
    "paper/dsa/oracle": ("e122dd9384e599a6", "a6fe73786b57b24b"),
    "paper/dc/none": ("64cc11dbf73df47e", "72a8975ced16a318"),
    "paper/dc/kde": ("3c3d2319271cf225", "b12a0879c1b737a2"),
    "paper/dc/oracle": ("84af76995399c7a7", "164331fcdc511485"),
    "paper/mtt/none": ("927be621c3ef5b0f", "57608ae35230e887"),
    "paper/mtt/kde": ("60353c2cb4fcac3f", "9ea4511f58756d55"),
    "paper/mtt/oracle": ("01edd21f83836e5e", "de53065c35390cce"),
    "paper/cfm/none": ("61648f46be9e61c6", "61fd78fee5a5b09b"),
    "paper/cfm/kde": ("a87fc488407534a0", "1a6c33c95c05dabc"),
    "paper/cfm/oracle": ("276bbc31ebe4b97c", "987254f480df5902"),
    "proxy/dm/none": ("50544500c9688895", "f65379c21f8f479d"),
    "proxy/dm/kde": ("9a7400f693004a8a", "28fbb110e1efa275"),
    "proxy/dm/oracle": ("11f7a6ea5eb88e02", "5f300ca8ebfcc0cb"),
    "proxy/dm/fairdd": ("b48e40df42916505", "cc5049059d0913af"),
    "proxy/dsa/none": ("b680eb7f95c8e892", "ff0b87a509c95db8"),
    "proxy/dsa/kde": ("3a8fae8bc59b8319", "7a923b4d64924f32"),
    "proxy/dsa/oracle": ("ee3850e2e5deeab1", "43f0893e12b1d852"),
    "proxy/dc/none": ("e14e5120aacc9edd", "e98a30546cd9b9de"),
    "proxy/dc/kde": ("7aaaf3a1ba69cfbe", "b2a2bf521c19f047"),
    "proxy/dc/oracle": ("e3fd4676fc5e6ccc", "fc6daabbaa9bec5b"),
    "proxy/mtt/none": ("6e9f71675b16e358", "1762a31540f71fbd"),
    "proxy/mtt/kde": ("07a73918384ace2a", "1817c84392a89b27"),
    "proxy/mtt/oracle": ("b060caf451be32b5", "610ba3648b4e0c28"),
    "proxy/cfm/none": ("e55d4cc133611ee9", "c8366399b268cffe"),
    "proxy/cfm/kde": ("f9cd0359132c7ce3", "b445e0f727b1c4cf"),
    "proxy/cfm/oracle": ("17611c8b0231a3d9", "9a4e4434363e17bd"),
    "smoke/dm/none": ("8a69314fc5bb24da", "86707f64b0fa48ba"),
    "smoke/dm/kde": ("3991ceceb8f48c28", "3231773c6c5bf2e2"),
    "smoke/dm/oracle": ("f0bab8e5966fce0e", "d3b3d4e7e35232fa"),
    "smoke/dm/fairdd": ("c40d6be3e33b5e43", "2847927e1c0622a5"),
    "smoke/dsa/none": ("e40295730d2b5a37", "7453a70aadad69b4"),
    "smoke/dsa/kde": ("7cd6734e362193ec", "4967bf5c101cf5aa"),
    "smoke/dsa/oracle": ("fcffc9385ec51c3e", "dd5a59ce7340c831"),
    "smoke/dc/none": ("8e91f9eb29a0e477", "66a65fdbf8131aa3"),
    "smoke/dc/kde": ("92914c7459096f62", "822d53f725ed3a01"),
    "smoke/dc/oracle": ("76ceed548f1894d6", "4e888ae059089e5f"),
    "smoke/mtt/none": ("ad2db2c75865f04d", "b8699eb5c5822b05"),
    "smoke/mtt/kde": ("9bb818ed7c11b80d", "a2f111c2fc16d9f5"),
    "smoke/mtt/oracle": ("3a34ef05b6d0fdf8", "195713ab28d79c89"),
    "smoke/cfm/none": ("ff7d3dc4bbb00dca", "92de34736efeab35"),
    "smoke/cfm/kde": ("b1c3bd229286e733", "afb16f3ade65bba2"),
    "smoke/cfm/oracle": ("886400fce6a9a037", "47f48d53f33ca96c"),
}
REFUSED = ('cpu/dsa/fairdd', 'cpu/dc/fairdd', 'cpu/mtt/fairdd', 'cpu/cfm/fairdd', 'paper/dsa/fairdd', 'paper/dc/fairdd', 'paper/mtt/fairdd', 'paper/cfm/fairdd', 'proxy/dsa/fairdd', 'proxy/dc/fairdd', 'proxy/mtt/fairdd', 'proxy/cfm/fairdd', 'smoke/dsa/fairdd', 'smoke/dc/fairdd', 'smoke/mtt/fairdd', 'smoke/cfm/fairdd')

# The label-free FairDD (added later; the digests above stay those of before the field).
DIGESTS.update({
    "cpu/dm/fairdd_pseudo": ("451fb9e3ec743b2d", "c19fedb1e054deae"),
    "paper/dm/fairdd_pseudo": ("d470dffd7f297ce6", "be781f70a9a34dfc"),
    "proxy/dm/fairdd_pseudo": ("092730a901a75217", "f319b023eccc075c"),
    "smoke/dm/fairdd_pseudo": ("e9291b42bbf80326", "4940d44b50ab4308"),
})
REFUSED += tuple(f"{p}/{m}/fairdd_pseudo" for p in ("cpu", "paper", "proxy", "smoke")
                 for m in ("dsa", "dc", "mtt", "cfm"))
# FairDD with in-batch DBSCAN groups (added later still).
DIGESTS.update({
    "cpu/dm/fairdd_batch": ("429cb6a9becb7fb4", "ce02495d39782b15"),
    "paper/dm/fairdd_batch": ("0d8149b675c14789", "e14d8c30c8055062"),
    "proxy/dm/fairdd_batch": ("4ff69c6335170bcf", "f8f22e4cebd8ffaa"),
    "smoke/dm/fairdd_batch": ("88a7b3ca811ad434", "2c5cc8554f8119e8"),
})
REFUSED += tuple(f"{p}/{m}/fairdd_batch" for p in ("cpu", "paper", "proxy", "smoke")
                 for m in ("dsa", "dc", "mtt", "cfm"))

# The calibrated CPU preset (added later still).
DIGESTS.update({
    "cpu-paper/dm/none": ("4aad351cf166e4b4", "f2d1c7950e649587"),
    "cpu-paper/dm/kde": ("a261e26a8f46b7ee", "c2c15d5eec19be0b"),
    "cpu-paper/dm/oracle": ("b6bfaa5ce6e2ec44", "a75cbcc4bd05c3c0"),
    "cpu-paper/dm/fairdd": ("6b84e5a51dbe2d31", "ad37a6deb257784f"),
    "cpu-paper/dm/fairdd_pseudo": ("92671c37b1866f91", "462a442c002281bd"),
    "cpu-paper/dm/fairdd_batch": ("81031cf9193b2ae6", "5cd420590908d8a7"),
    "cpu-paper/dsa/none": ("d748c599108e4ff2", "8327d09bf552f595"),
    "cpu-paper/dsa/kde": ("6ff8641bde81ee9d", "3e6ae4a7e1588b4b"),
    "cpu-paper/dsa/oracle": ("96c4676aa9a813d3", "21498029645e2f06"),
    "cpu-paper/dc/none": ("d953c2e7f3936c02", "d54f72bec7f183e3"),
    "cpu-paper/dc/kde": ("c4f12082741cc0c0", "861528642da4e411"),
    "cpu-paper/dc/oracle": ("1bf0d4f4a1b6bb3b", "37356694e903725b"),
    "cpu-paper/mtt/none": ("c4c8d3b3fee64054", "89164d93e1eef148"),
    "cpu-paper/mtt/kde": ("ca22f960fbeaeec4", "1d0cecd928a43244"),
    "cpu-paper/mtt/oracle": ("fa54116a2d753b15", "809e326e8be8b4a3"),
    "cpu-paper/cfm/none": ("25aa6ed48d506843", "15016451ad5128d5"),
    "cpu-paper/cfm/kde": ("b2844235aeb4424d", "380f293783cd1d40"),
    "cpu-paper/cfm/oracle": ("71f29d815f9db11a", "74cb79cdcb5def74"),
})
REFUSED += tuple(f"cpu-paper/{m}/{w}" for m in ("dsa", "dc", "mtt", "cfm")
                 for w in ("fairdd", "fairdd_pseudo", "fairdd_batch"))
# FairDD with DBSCAN groups of whole classes (added later still).
DIGESTS.update({
    "cpu/dm/fairdd_dbscan": ("d4c7bd3d5107f2a1", "359d03b749a36a53"),
    "cpu-paper/dm/fairdd_dbscan": ("26200e7660fa46ff", "212d204d5be017f5"),
    "paper/dm/fairdd_dbscan": ("7cb5621d051ce04a", "cf61fd2a910d3906"),
    "proxy/dm/fairdd_dbscan": ("d814f5dd0ca9ef1b", "18dc363a83cf68c2"),
    "smoke/dm/fairdd_dbscan": ("014ea370c0ea5241", "1590277741772993"),
})
REFUSED += tuple(f"{p}/{m}/fairdd_dbscan" for p in ("cpu", "cpu-paper", "paper", "proxy", "smoke")
                 for m in ("dsa", "dc", "mtt", "cfm"))
# --weighting auto (added later still): a config the run replaces by its chosen candidate's.
DIGESTS.update({
    "cpu/dm/auto": ("3ce6b0fa1ea26de8", "d7a6ce3cf224fd5a"),
    "cpu/dsa/auto": ("7a46675971a4611e", "5bc2d49306171025"),
    "cpu/dc/auto": ("18a82d6a448961a6", "9c5da3e286909893"),
    "cpu/mtt/auto": ("3edb2ae550aec057", "8d026f9c6d10125a"),
    "cpu/cfm/auto": ("d02f744b43e54a99", "89d41366245699f3"),
    "cpu-paper/dm/auto": ("4246a5594b732d25", "4ad9e3f35f505944"),
    "cpu-paper/dsa/auto": ("8751561176ca9190", "ae31594944d21f20"),
    "cpu-paper/dc/auto": ("879743dc37b52feb", "1f6ecc32c054c6ad"),
    "cpu-paper/mtt/auto": ("0bb76097e95896ae", "74c2fa1a096b3a75"),
    "cpu-paper/cfm/auto": ("1dcae8d98f13ab83", "cfbffaf438af312c"),
    "paper/dm/auto": ("b86b7c362d91981a", "553425b2ef1db5f2"),
    "paper/dsa/auto": ("60254040fa4d0387", "df61e51ab916ef68"),
    "paper/dc/auto": ("5e5078279b36676a", "5bf5b34fde6d105d"),
    "paper/mtt/auto": ("9c48e54e98aafa2a", "dfcb8388216a0f6e"),
    "paper/cfm/auto": ("ff140b179af1927a", "c15d98ddd481fee0"),
    "proxy/dm/auto": ("b96b0b2f46abc578", "d399fa982e648c80"),
    "proxy/dsa/auto": ("426fa2372d0a98bd", "cffb305b79cfeaf0"),
    "proxy/dc/auto": ("4b6c696627d850e6", "683063b06541c78f"),
    "proxy/mtt/auto": ("0ad67f24dc40f671", "1b23b20ddbf87994"),
    "proxy/cfm/auto": ("d6f3f422de7aa270", "413f359eacf386d0"),
    "smoke/dm/auto": ("11a2718f129b8d1d", "7976c1d851e2246c"),
    "smoke/dsa/auto": ("160b09c13c75a437", "00b753a93ea044e9"),
    "smoke/dc/auto": ("ea5d70b2c899d076", "04b1aa1ce386dbd8"),
    "smoke/mtt/auto": ("6b4a3c3f4fdb31de", "c04c6fbf5407ebed"),
    "smoke/cfm/auto": ("aba0073b0391302c", "213b1536b90c8843"),
})
# The weightings of a bias-amplified classifier (added later still; every method takes them).
DIGESTS.update({
    "cpu/dm/gce": ("e3bd61763d4f1719", "04e5eafcb9d403cc"),
    "cpu/dsa/gce": ("174cce8bca00fc15", "35a53cd6d2c5d062"),
    "cpu/dc/gce": ("ebaedbbe0e4c91d9", "d8304a74e7b46b8e"),
    "cpu/mtt/gce": ("93d4496933417fb4", "85d033753b7a958d"),
    "cpu/cfm/gce": ("17e40550d22c9b3b", "130e90c7e6927c70"),
    "cpu-paper/dm/gce": ("58cb27ff6a390ab3", "afbdf4d8d082e13e"),
    "cpu-paper/dsa/gce": ("c1e532f641948f46", "a3e56c09ab621ac2"),
    "cpu-paper/dc/gce": ("1c8a07962e131601", "a3d16614c9973f4a"),
    "cpu-paper/mtt/gce": ("e7859a3e83bc0fcf", "1223896a93852f26"),
    "cpu-paper/cfm/gce": ("5e6aba89c5715220", "c8b75679a0fae7c9"),
    "paper/dm/gce": ("f0d4348a43e7865f", "2b20486a76c5ec8f"),
    "paper/dsa/gce": ("5fc783aca8a3e3cd", "a2f7ea0e1c9aa52d"),
    "paper/dc/gce": ("122fc813d7e235b1", "af939e086d8d4930"),
    "paper/mtt/gce": ("561643aceea12e69", "fb94079e07fa7e1b"),
    "paper/cfm/gce": ("27fe7255bfd081ce", "3e7ec40975cbcbae"),
    "proxy/dm/gce": ("4d0f5a1e5bcba669", "c1c13e720a6f58e7"),
    "proxy/dsa/gce": ("208e3813b424f04e", "f6ba3b1ef42d2ba2"),
    "proxy/dc/gce": ("c729e376bbbc8f30", "e6553c28d43f5f20"),
    "proxy/mtt/gce": ("b5615ab1ff2d9602", "a7990db7deb81e36"),
    "proxy/cfm/gce": ("b561c104d785b150", "58607c37091b0d25"),
    "smoke/dm/gce": ("7294129471ea98ce", "e2109c7b77c9f784"),
    "smoke/dsa/gce": ("0be2502817b6c8f0", "d3b3f64341c778ec"),
    "smoke/dc/gce": ("249f3ec69dfd9618", "1a2761a36fa2e1f7"),
    "smoke/mtt/gce": ("a81c315894826b6a", "d817b0091b9b4fd5"),
    "smoke/cfm/gce": ("104dfd5e958b0fcb", "b24d321729328b89"),
    "cpu/dm/jtt": ("3577847962febceb", "938cc630fbebf143"),
    "cpu/dsa/jtt": ("8e53e5c59dba8b10", "90bcd088bd05ef7e"),
    "cpu/dc/jtt": ("ffa6d45efc4647b3", "461d9d7f14460647"),
    "cpu/mtt/jtt": ("8550ae1196babb69", "c859fc0b7b65bc96"),
    "cpu/cfm/jtt": ("8a04189226e9ec2b", "c4fedc6c94662901"),
    "cpu-paper/dm/jtt": ("3f5c1e2465d528a9", "610271eb92e0f5d7"),
    "cpu-paper/dsa/jtt": ("ddee2ff10b6dfc03", "ecee4d8ed3c9760a"),
    "cpu-paper/dc/jtt": ("522f5d0094dceb93", "468c8a3ad438e58c"),
    "cpu-paper/mtt/jtt": ("ce6ae49068f8967a", "9ba433414876191e"),
    "cpu-paper/cfm/jtt": ("bd1c1557a015bbf0", "c90479ec4ed262b9"),
    "paper/dm/jtt": ("b2c9ca14b833c323", "0a6594930ce735ee"),
    "paper/dsa/jtt": ("fd828ee9aff6f28b", "d1ce7cdfeef58112"),
    "paper/dc/jtt": ("79ffed0806973856", "db2c0572daef468e"),
    "paper/mtt/jtt": ("05a59a8f2a97fe8d", "c2c2443445bddf62"),
    "paper/cfm/jtt": ("857d9b8aaf48a7bd", "d6a91b3f0a1444b0"),
    "proxy/dm/jtt": ("3e9245459eac3fe3", "8919ef923733c2f2"),
    "proxy/dsa/jtt": ("f709557b7d09cf60", "688266781646e9b3"),
    "proxy/dc/jtt": ("65c4f715ab3f54a4", "3c858b61d23946dc"),
    "proxy/mtt/jtt": ("330bf642690dd9a2", "b24fb08f6064f1d0"),
    "proxy/cfm/jtt": ("e9a6cde8259dd46e", "50814b20efda4b7f"),
    "smoke/dm/jtt": ("f065ba7ef21d5b8c", "1d33f7630eeb82ce"),
    "smoke/dsa/jtt": ("6eaf6ea142bdf708", "307e00fac41f7b55"),
    "smoke/dc/jtt": ("0009b0e490c1ab11", "2fbd10bdaf4fb98f"),
    "smoke/mtt/jtt": ("f0ae20dd24c76116", "21a90e3c3d8eeadc"),
    "smoke/cfm/jtt": ("58ae6b72bfbc3986", "2a40ab94da910cd9"),
})


def _combinations():
  for preset in sorted(PRESETS):
    for method in METHODS:
      for weighting in CHOICES["weighting"]:
        yield f"{preset}/{method}/{weighting}", preset, method, weighting


def test_digests_of_every_preset_method_and_weighting_are_pinned():
  seen = set()
  for key, preset, method, weighting in _combinations():
    if key in REFUSED:
      with pytest.raises(ValueError):
        get_config(preset, method=method, weighting=weighting)
      continue
    cfg = get_config(preset, method=method, weighting=weighting)
    assert (cfg.digest(), cfg.distill_digest()) == DIGESTS[key], key
    seen.add(key)
  assert seen == set(DIGESTS)


def test_the_literal_choices_equal_the_librarys_registries():
  assert parts.INITS == distill.INITS
  assert parts.REAL_SAMPLING == distill.REAL_SAMPLING
  assert parts.GM_LOOP_IPCS == tuple(sorted(distill.GM_LOOPS))
  assert parts.KDE_NORMALIZE == weighting_kde._NORMALIZE and parts.KDE_SCOPES == weighting_kde.SCOPES
  assert parts.FAIRDD_EPS == weighting_batch_clusters.EPS_RULES
  assert CHOICES["eval_protocol"] == tuple(protocols.PROTOCOLS)
  assert CHOICES["surrogate_preset"] == tuple(presets.SURROGATE)
  for name in CHOICES["surrogate_preset"]:
    surrogate.SurrogateConfig.preset(name)
  # the policy is any name or variant jaxdd.policy resolves, checked by resolving it
  # (tests/test_presets.py), not a fixed list
  assert "policy" not in CHOICES
  assert set(parts.DATASETS) == set(data.DATASETS)
  for name, spec in data.DATASETS.items():
    assert parts.DATASETS[name] == (spec.semantics, spec.severities, spec.default_severity), name
  assert CHOICES["dataset"] == tuple(sorted(data.DATASETS))


def test_each_flat_field_belongs_to_one_part_and_reads_through():
  cfg = get_config("smoke", kde_variance=0.02, devices="1", dataset="cmnist_dd",
                   conflict_ratio=0.9)
  assert len(FIELDS) == len(set(FIELDS)) and FIELDS[0] == "preset"
  for name in FIELDS[1:]:
    assert getattr(cfg, name) == getattr(getattr(cfg, OWNER[name]), name)
  assert cfg.weights.kde_variance == 0.02 and cfg.data.dataset == "cmnist_dd"
  assert cfg.execution.devices == "1"
  with pytest.raises(AttributeError):
    cfg.ipc = 3  # read-only
  # the flat dict round-trips, through JSON too (a config.json read back)
  assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
  assert list(cfg.to_dict()) == list(FIELDS)
  tree = cfg.to_tree()
  assert set(tree) == {"preset"} | set(PARTS)
  assert {k: v for part in PARTS for k, v in tree[part].items()} == {
      k: v for k, v in cfg.to_dict().items() if k != "preset"}
  with pytest.raises(TypeError, match="unexpected fields"):
    RunConfig.from_dict({**cfg.to_dict(), "no_such_field": 1})
  assert RunConfig.from_dict({**cfg.to_dict(), "no_such_field": 1}, ignore_unknown=True) == cfg
  # a part given whole, with flat overrides on top
  built = RunConfig(preset="smoke", data=cfg.data, ipc=4)
  assert built.data == cfg.data and built.ipc == 4


def test_each_part_validates_itself_with_the_configs_messages():
  with pytest.raises(ValueError, match="KDEConfig.variance"):
    parts.WeightingConfig(kde_variance=0.0)
  with pytest.raises(ValueError, match="kde_floor"):
    parts.WeightingConfig(kde_floor=1.0)
  with pytest.raises(ValueError, match="conflict_ratio"):
    parts.DataConfig(conflict_ratio=0.0)
  assert parts.DataConfig(dataset="cmnist_dd", conflict_ratio=1.0).conflict_ratio == 1.0
  with pytest.raises(ValueError, match="severity must be one of"):
    parts.DataConfig(severity=9)
  with pytest.raises(ValueError, match="has no severity"):
    parts.DataConfig(dataset="bffhq", severity=1)
  with pytest.raises(ValueError, match="dataset must be one of"):
    parts.DataConfig(dataset="imagenet")
  with pytest.raises(ValueError, match="ipc must be >= 1"):
    parts.DistillConfig(ipc=0)
  with pytest.raises(ValueError, match="lr_img"):
    parts.DistillConfig(lr_img=float("nan"))
  with pytest.raises(ValueError, match="num_eval_models"):
    parts.EvaluationConfig(num_eval_models=0)
  with pytest.raises(ValueError, match="devices"):
    parts.ExecutionConfig(devices="two")
  with pytest.raises(ValueError, match="no reference loop counts"):
    parts.GradientMatchingConfig().validate(ipc=7)
  with pytest.raises(ValueError, match="syn_steps"):
    parts.MTTConfig(syn_steps=0).validate("mtt")
  parts.MTTConfig(syn_steps=0)  # read only by trajectory matching
  with pytest.raises(ValueError, match="cfm_beta"):
    parts.CFMConfig(cfm_beta=-1.0).validate("cfm")


def test_the_pseudo_group_count_is_checked_and_hashed_only_where_read():
  for bad in (1, 2.5, True, "10", 65, 100000):
    with pytest.raises(ValueError, match=r"fairdd_clusters .* integer in \[2, 64\]"):
      parts.WeightingConfig(weighting="fairdd_pseudo", fairdd_clusters=bad)
  assert "fairdd_clusters" in get_config("smoke", weighting="fairdd_batch")._hashed()
  assert get_config("smoke", weighting="fairdd_batch", fairdd_clusters=4).fairdd_clusters == 4
  with pytest.raises(ValueError, match="distribution matching only"):
    get_config("smoke", weighting="fairdd_batch", method="dsa")
  with pytest.raises(ValueError, match="use it with that weighting"):
    get_config("smoke", weighting="fairdd", fairdd_clusters=4)
  with pytest.raises(ValueError, match="distribution matching only"):
    get_config("smoke", weighting="fairdd_pseudo", method="dc")
  with pytest.raises(ValueError, match="kde or oracle"):
    get_config("smoke", weighting="fairdd_pseudo", init="weighted")
  base = get_config("smoke", weighting="fairdd_pseudo")
  assert base.fairdd_clusters == parts.FAIRDD_CLUSTERS
  assert "fairdd_clusters" not in get_config("smoke", weighting="fairdd")._hashed()
  four = base.replace(fairdd_clusters=4)
  assert four.digest() != base.digest() and four.distill_digest() != base.distill_digest()
  assert RunConfig.from_dict(four.to_dict()) == four


def test_library_checks_run_before_anything_is_written(tmp_path, capsys):
  with pytest.raises(ValueError, match="bad architecture spec"):
    checks.check_config(get_config("smoke", eval_model="transformer"))
  # --debug shows the traceback and keeps the refusal's status
  assert cli.main(["distill", "--preset", "smoke", "--eval-model", "transformer", "--workdir",
                   str(tmp_path / "r"), "--debug"]) == 2
  assert "bad architecture spec" in capsys.readouterr().err
  assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("module", ["parts", "run"])
def test_the_config_imports_only_the_base_layer(module):
  source = open({"parts": parts, "run": run_module}[module].__file__).read()
  imported = {line.split()[1] for line in source.splitlines()
              if line.startswith(("import ", "from "))}
  assert {m for m in imported if m.startswith("jaxdd")} <= {
      "jaxdd", "jaxdd._src", "jaxdd.structs", "jaxdd.policy", "jaxdd.presets", "jaxdd.config"}
  assert all(dataclasses.is_dataclass(cls) and cls.TITLE for cls in PARTS.values())


def test_compute_dtype_float32_keeps_the_digests_and_bfloat16_is_dm_only():
  from jaxdd.config import RunConfig, get_config, validate
  base = get_config("smoke")
  assert base.compute_dtype == "float32"
  # the default is left out of the digest: runs from before the field keep theirs
  assert "compute_dtype" not in base._hashed()
  low = base.replace(compute_dtype="bfloat16")
  validate(low)
  assert low.digest() != base.digest() and low.distill_digest() != base.distill_digest()
  assert RunConfig.from_dict(low.to_dict()) == low
  with pytest.raises(ValueError, match="compute_dtype 'bfloat16' is a DM option"):
    validate(get_config("smoke", method="dsa", compute_dtype="bfloat16"))
  with pytest.raises(ValueError, match="compute_dtype"):
    validate(base.replace(compute_dtype="float16"))


def test_iterations_are_bounded_by_the_step_counter():
  from jaxdd.config import get_config, validate
  validate(get_config("smoke", iterations=2**31 - 1))
  for n in (2**31, 10**12, 10**23):
    with pytest.raises(ValueError, match="is more than 2,147,483,647"):
      validate(get_config("smoke", iterations=n))


@pytest.mark.parametrize("field,value,kind", [
    ("ipc", 2.5, "a whole number"), ("ipc", True, "a whole number"), ("ipc", "5", "a whole number"),
    ("seed", "0", "a whole number"), ("lr_img", "big", "a number"), ("source", 3, "a string"),
])
def test_a_field_of_another_kind_is_refused_when_the_config_is_built(field, value, kind):
  # a float IPC had reached the distiller and failed inside JAX after the run wrote files
  with pytest.raises(ValueError, match=f"^{field} must be {kind}, got {value!r}$"):
    get_config("smoke", **{field: value})


def test_numpy_numbers_and_none_where_allowed_are_taken():
  import numpy as np
  cfg = get_config("smoke", ipc=np.int64(3), lr_img=np.float32(2.0), severity=None)
  assert cfg.ipc == 3 and cfg.lr_img == 2.0
