"""Big ImageFolders: decoded a chunk at a time (on a pool or here) into the cache, exactly as one
by one, and read back mapped, as plain arrays that go to Ray's object store without a copy."""

import pickle

import numpy as np
import pytest
from PIL import Image

from tests.test_image_folder import make_tree
from trainables.data import dataset, imagefolder
from trainables.data.load import load_dataset


def odd_files(root):
    """Class folders whose unreadable files fall inside chunks and on their edges."""
    make_tree(root, per_class=9, size=(30, 20))
    (root / "apple" / "apple_0.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "pear" / "pear_3.jpg").write_bytes(b"")
    Image.new("L", (20, 50), 90).save(root / "pear" / "grey.png")
    files = imagefolder.scan_images(root)
    return [f.path for f in files], [int("/pear/" in f.path) for f in files]


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("to_file", [False, True])
def test_chunked_decoding_gives_exactly_what_one_by_one_gives(tmp_path, monkeypatch, cores,
                                                              to_file):
    monkeypatch.setattr(imagefolder, "available_cores", lambda: cores)  # 2: a forked pool
    paths, labels = odd_files(tmp_path / "tree")
    one_by_one = [imagefolder.decode(p, 12) for p in paths]
    kept = [i for i, a in enumerate(one_by_one) if a is not None]
    out = tmp_path / "images.npy" if to_file else None
    before = imagefolder.DECODED
    split, meta = imagefolder.decode_all(paths, labels, 12, out, rows_per_chunk=4)
    assert imagefolder.DECODED - before == len(paths), "every file counted once, pool or not"
    assert np.array_equal(split.images, np.stack([one_by_one[i] for i in kept]))
    assert split.labels.tolist() == [labels[i] for i in kept]
    assert split.paths == tuple(paths[i] for i in kept)
    assert sorted(meta["unreadable"]) == sorted(p for p, a in zip(paths, one_by_one, strict=True)
                                                if a is None)
    assert len(meta["unreadable"]) == 2
    if to_file:  # the header says the rows kept, and the file ends after them
        assert np.load(out).shape == (len(kept), 3, 12, 12)
        assert out.stat().st_size == split.images.base.offset + len(kept) * 3 * 12 * 12


def test_image_rows_refuse_more_rows_than_planned(tmp_path):
    with dataset.ImageRows(2, 4, tmp_path / "x.npy") as rows:
        rows.append(np.zeros((2, 3, 4, 4), np.uint8))
        with pytest.raises(ValueError, match="does not fit"):
            rows.append(np.zeros((1, 3, 4, 4), np.uint8))
        assert rows.finish().shape == (2, 3, 4, 4)


def splits(data):
    return {name: getattr(data, name) for name in ("train", "val", "test")}


def test_cached_splits_are_mapped_read_only_plain_arrays_equal_to_the_uncached(tmp_path):
    root, cache = make_tree(tmp_path / "tree", per_class=20), tmp_path / "cache"
    in_memory = load_dataset(str(root), image_size=16, seed=1)
    mapped = load_dataset(str(root), image_size=16, seed=1, cache_dir=cache)
    for name, split in splits(mapped).items():
        images = split.images
        # a plain ndarray over the map: Ray pickles it out-of-band, straight into its store
        assert type(images) is np.ndarray and isinstance(images.base, np.memmap)
        assert str(images.base.filename).startswith(str(cache)) and not images.flags.writeable
        buffers = []
        pickle.dumps(images, protocol=5, buffer_callback=buffers.append)
        assert len(buffers) == 1 and buffers[0].raw().nbytes == images.nbytes
        same = getattr(in_memory, name)
        assert np.array_equal(images, same.images)
        assert split.labels.tolist() == same.labels.tolist() and split.paths == same.paths
    assert mapped.fingerprint == in_memory.fingerprint


def test_another_seed_draws_other_splits_from_the_same_decoded_images(tmp_path):
    root, cache = make_tree(tmp_path / "tree", per_class=20), tmp_path / "cache"
    load_dataset(str(root), image_size=16, seed=1, cache_dir=cache)
    before = imagefolder.DECODED
    other = load_dataset(str(root), image_size=16, seed=2, cache_dir=cache)
    again = load_dataset(str(root), image_size=16, seed=2, cache_dir=cache)
    assert imagefolder.DECODED == before, "a seed's split comes from the cached images"
    reference = load_dataset(str(root), image_size=16, seed=2)
    for name, split in splits(other).items():
        assert np.array_equal(split.images, getattr(reference, name).images)
        assert split.paths == getattr(again, name).paths == getattr(reference, name).paths
    # one entry of decoded images, and one of splits per seed
    entries = sorted(p.name for p in (cache / "data").iterdir())
    assert len(entries) == 3 and not [n for n in entries if ".tmp" in n]


def test_a_val_split_drawn_from_given_train_is_mapped_too(tmp_path):
    for part, n in (("train", 10), ("test", 3)):
        make_tree(tmp_path / "tree" / part, per_class=n)
    cache = tmp_path / "cache"
    mapped = load_dataset(str(tmp_path / "tree"), image_size=8, cache_dir=cache)
    in_memory = load_dataset(str(tmp_path / "tree"), image_size=8)
    assert (len(mapped.train), len(mapped.val), len(mapped.test)) == (16, 4, 6)
    for name, split in splits(mapped).items():
        assert isinstance(split.images.base, np.memmap)
        assert np.array_equal(split.images, getattr(in_memory, name).images)


def test_row_blocks_read_a_mapped_file_and_slice_an_array_the_same(tmp_path):
    images = np.arange(7 * 3 * 2 * 2, dtype=np.uint8).reshape(7, 3, 2, 2)
    np.save(tmp_path / "a.npy", images)
    mapped = dataset.mapped_images(tmp_path / "a.npy")
    for source in (images, mapped):
        blocks = list(dataset.row_blocks(source, 3))
        assert [start for start, _ in blocks] == [0, 3, 6]
        assert np.array_equal(np.concatenate([b for _, b in blocks]), images)
