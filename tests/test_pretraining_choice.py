"""Where weights come from: --pretrained, --pretrain-data and --weights pick the stage."""

import numpy as np
import pytest
from PIL import Image

from search.pretraining import StageData, check_stage_data, stage_for
from search.spec import parse_spec
from trainables.data.dataset import DataError
from trainables.data.load import load_pretrain_data


def spec(tmp_path, *args):
    return parse_spec(["--strategy", "all", "--storage", str(tmp_path / "runs"), *args])


def images(folder, n=6, classes=None):
    rng = np.random.default_rng(0)
    for c in classes or [None]:
        target = folder / c if c else folder
        target.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                target / f"{i}.png")
    return folder


def test_defaults_per_strategy_on_the_demo(tmp_path, tiny_demo):
    s = spec(tmp_path)
    stages = {name: stage_for(s, name, tiny_demo, StageData()) for name in s.strategies}
    assert stages["scratch"].kind == "none"
    assert stages["colorization"].kind == "colorization"
    assert stages["colorization"].data_fingerprint == tiny_demo.for_search().fingerprint
    for name in ("frozen", "unfrozen", "lp_ft", "partial"):
        assert stages[name].kind == "supervised"  # the demo's offline stand-in for imagenet
        assert stages[name].data_fingerprint == tiny_demo.source.fingerprint
    assert len({stages[n] for n in ("frozen", "unfrozen", "lp_ft", "partial")}) == 1


def test_flags_override_the_defaults(tmp_path, tiny_demo):
    explicit = spec(tmp_path, "--pretrained", "imagenet")
    assert stage_for(explicit, "frozen", tiny_demo, StageData()).kind == "imagenet"
    assert stage_for(explicit, "scratch", tiny_demo, StageData()).kind == "none"
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    from_file = spec(tmp_path, "--weights", str(weights))
    stage = stage_for(from_file, "colorization", tiny_demo, StageData())
    assert stage.weights_file == str(weights)
    colour = spec(tmp_path, "--pretrained", "colorization", "--pretext-init", "imagenet")
    stage = stage_for(colour, "unfrozen", tiny_demo, StageData())
    assert stage.kind == "colorization" and stage.config.init == "imagenet"


def test_pretrain_data_changes_the_stage_key(tmp_path, tiny_demo):
    flat = load_pretrain_data(str(images(tmp_path / "flat")), image_size=16)
    assert flat.classes == ("unlabeled",) and len(flat.train) == 6
    s = spec(tmp_path)
    own = stage_for(s, "colorization", tiny_demo, StageData())
    other = stage_for(s, "colorization", tiny_demo, StageData(pretext=flat))
    assert own.key != other.key and other.data_fingerprint == flat.fingerprint
    labeled = load_pretrain_data(str(images(tmp_path / "tree", classes=["a", "b"])),
                                 image_size=16)
    assert labeled.classes == ("a", "b")
    assert load_pretrain_data("demo:4").classes == tiny_demo.source.classes


def test_supervised_pretraining_needs_labels(tmp_path, tiny_demo):
    flat = load_pretrain_data(str(images(tmp_path / "flat")), image_size=16)
    with pytest.raises(DataError, match="two or more classes"):
        check_stage_data(spec(tmp_path, "--pretrained", "supervised"), tiny_demo,
                         StageData(pretrain=flat))
    check_stage_data(spec(tmp_path, "--pretrained", "colorization"), tiny_demo,
                     StageData(pretext=flat))


def test_a_flat_pretext_folder_holds_out_its_last_images_as_views(tmp_path):
    """5% held out for the stage's early stopping, none under 20 images; both parts views of
    the one prepared (memory-mapped) array, so a large pretext set is never copied."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(40):
        Image.new("RGB", (20, 20), (6 * i, 255 - 6 * i, 128)).save(folder / f"{i:03d}.png")
    data = load_pretrain_data(str(folder), image_size=16, cache_dir=tmp_path / "cache")
    assert (len(data.train), len(data.val)) == (38, 2)
    assert data.val.paths == (str(folder / "038.png"), str(folder / "039.png"))
    base = data.train.images.base
    assert base is not None and data.val.images.base is base  # views, no copy
    small = load_pretrain_data(str(images(tmp_path / "flat")), image_size=16)
    assert len(small.val) == 0  # 6 images: all to train
