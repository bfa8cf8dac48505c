"""ONNX export of a kept model: onnxruntime's probabilities equal torch's through predict.py's
own preprocessing, the metadata, an experiment's winner, and bad input (exit 2, one line, no
file). One export per module, of conftest's tiny model saved as the final evaluation saves it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from search.export import main as export_main
from search.predict import NoModel, find_model
from tests.helpers import TINY_MODEL, run_script

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

IMAGE_SIZE = 32  # conftest's kept model_dir


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert export_main([str(model_dir), "--onnx", str(out)]) == 0
    return out


def test_onnxruntime_gives_torchs_probabilities_within_1e_4(model_dir, exported, image_files):
    from trainables.data.imagefolder import decode
    from trainables.export import load_model
    from trainables.loop import predict

    # predict_files' own path (decode, then loop.predict), pinned to the CPU: a GPU's autocast
    # would differ by more than the tolerance
    arrays = np.stack([decode(p, IMAGE_SIZE) for p in image_files])
    model, norm, _ = load_model(model_dir)
    expected, _ = predict(model, arrays, normalize=norm, device=torch.device("cpu"))
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"images": arrays.astype(np.float32)})[0]
    assert got.shape == (len(image_files), 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-4)
    assert np.allclose(got.sum(1), 1, atol=1e-5)
    assert (got.max(1) - got.min(1)).min() > 0.05  # far from uniform: the check means something
    one = session.run(None, {"images": arrays[:1].astype(np.float32)})[0]  # the batch is dynamic
    np.testing.assert_allclose(one, got[:1], rtol=0, atol=1e-5)


def test_the_graph_and_its_metadata_say_how_to_feed_it(model_dir, exported, tiny_demo):
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto)
    (given,), (output,) = proto.graph.input, proto.graph.output
    dims = given.type.tensor_type.shape.dim
    assert given.name == "images" and given.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, IMAGE_SIZE, IMAGE_SIZE]
    assert output.name == "probabilities"
    props = {p.key: p.value for p in proto.metadata_props}
    kept = json.loads((model_dir / "model.json").read_text())
    assert json.loads(props["classes"]) == list(tiny_demo.classes)
    assert json.loads(props["mean"]) == kept["normalize"]["mean"]
    assert json.loads(props["std"]) == kept["normalize"]["std"]
    assert {k: props[k] for k in ("image_size", "resize", "interpolation", "crop",
                                  "normalization", "backbone", "strategy", "test_acc")} == {
        "image_size": str(IMAGE_SIZE), "resize": "shorter_side", "interpolation": "bilinear",
        "crop": "center", "normalization": "in_graph", "backbone": TINY_MODEL,
        "strategy": "unfrozen", "test_acc": "0.625"}
    assert "[0, 255]" in props["input"]


def copy_model(model_dir: Path, to: Path) -> Path:
    shutil.copytree(model_dir, to)
    return to


def test_an_experiment_directory_stands_for_its_winners_model(model_dir, tmp_path):
    exp = tmp_path / "exp"
    with pytest.raises(NoModel, match="not a model"):
        find_model(exp.parent)
    exp.mkdir()
    (exp / "experiment.json").write_text("{}")
    with pytest.raises(NoModel, match="search/evaluate.py"):
        find_model(exp)
    frozen = copy_model(model_dir, exp / "eval" / "model" / "frozen")
    assert find_model(exp) == frozen
    unfrozen = copy_model(model_dir, exp / "eval" / "model" / "unfrozen")  # --keep-all
    with pytest.raises(NoModel, match="pass one of"):
        find_model(exp)
    (exp / "leaderboard.csv").write_text("strategy,val_acc\nscratch,0.7\nunfrozen,0.6\n"
                                         "frozen,0.5\n")
    assert find_model(exp) == unfrozen  # the best by validation among the kept
    assert find_model(frozen) == frozen


def bad_cases(tmp_path: Path, model_dir: Path) -> dict[str, tuple[list[str], str, Path]]:
    """name: (arguments, what the message must say, the path that must not appear)."""
    out = tmp_path / "out.onnx"
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = copy_model(model_dir, tmp_path / "broken")
    (broken / "model.json").write_text(json.dumps({"format": 99}))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    return {
        "missing": ([str(tmp_path / "nowhere"), "--onnx", str(out)], "no such folder", out),
        "not a model": ([str(empty), "--onnx", str(out)], "not a model", out),
        "broken model": ([str(broken), "--onnx", str(out)], "cannot load the model", out),
        "missing folder": ([str(model_dir), "--onnx", str(tmp_path / "no" / "m.onnx")],
                           "does not exist", tmp_path / "no"),
        "under a file": ([str(model_dir), "--onnx", str(a_file / "m.onnx")],
                         "is not a folder", a_file / "m.onnx"),
        "a folder": ([str(model_dir), "--onnx", str(empty)], "is a folder", empty / "x"),
    }


def test_bad_input_is_one_line_exit_2_and_writes_nothing(model_dir, tmp_path):
    for name, (args, says, absent) in bad_cases(tmp_path, model_dir).items():
        before = sorted(tmp_path.rglob("*"))
        result = run_script("export.py", *args, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (name, result.stderr)
        assert lines[0].startswith("export.py: error: ") and says in lines[0], (name, lines)
        assert not absent.exists() and sorted(tmp_path.rglob("*")) == before, name


def test_a_failed_write_leaves_no_file(model_dir, tmp_path, monkeypatch, capsys):
    class Program:  # what torch.onnx.export returns, failing half-way through its write
        model = type("Model", (), {"metadata_props": {}})()

        def save(self, path, external_data=None):
            Path(path).write_bytes(b"half")
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: Program())
    assert export_main([str(model_dir), "--onnx", str(tmp_path / "m.onnx")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "cannot write" in error, error
    assert list(tmp_path.iterdir()) == []


def test_transfer_search_export_runs_export_and_search_flags_still_search(tmp_path):
    script = Path(sys.executable).parent / "transfer-search"
    if not script.is_file():
        pytest.skip("no transfer-search script beside this Python: pip install -e .")
    result = subprocess.run([str(script), "export", str(tmp_path / "nowhere"), "--onnx",
                             str(tmp_path / "m.onnx")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("transfer-search export: error: ") and \
        "no such folder" in result.stderr
    from search.run import console

    assert console(["--strategy", "frozen", "--samples", "0"]) == 2  # the search's own check
