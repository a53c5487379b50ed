"""gradcheck_cli.batches: synthetic shapes, batch files and callables (small, direct)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from gradcheck_cli import batches  # noqa: E402
from gradcheck_cli.batches_shape import parse_shape  # noqa: E402
from gradcheck_cli.errors import InputError, UserCodeError  # noqa: E402

CPU = torch.device("cpu")


@pytest.mark.parametrize("text, dims", [("8,3,32,32", (8, 3, 32, 32)), ("8x16", (8, 16)), (" 4 , 5 ", (4, 5)),
                                        ("1", (1,))])
def test_parse_shape(text, dims):
    assert parse_shape(text) == dims


@pytest.mark.parametrize("text", ["", "8,", "a,b", "8,0", "-1,4", "8;4", "2.5,4"])
def test_parse_shape_rejects(text):
    with pytest.raises(InputError) as info:
        parse_shape(text)
    assert "--input-shape" in info.value.one_line()


@pytest.mark.parametrize("first, shape", [
    (nn.Linear(12, 4), (8, 12)),
    (nn.Conv1d(5, 4, 3), (8, 5, 64)),
    (nn.Conv2d(3, 4, 3), (8, 3, 32, 32)),
    (nn.Conv3d(2, 4, 3), (8, 2, 16, 16, 16)),
    (nn.Embedding(50, 4), (8, 32)),
    (nn.LSTM(7, 4, batch_first=True), (8, 32, 7)),
    (nn.GRU(7, 4), (32, 8, 7)),
])
def test_inferred_input_shape(first, shape):
    model = nn.Sequential(first)
    assert batches.infer_input_shape(model) == shape


def test_inferred_shape_impossible_asks_for_input_shape():
    with pytest.raises(InputError) as info:
        batches.infer_input_shape(nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2)))
    assert "--input-shape" in info.value.one_line()


def test_embedding_first_model_gets_token_ids_below_vocab():
    model = nn.Sequential(nn.Embedding(13, 4), nn.Linear(4, 2))
    src = batches.make_batch_source(None, None, model, seed=0)
    b = src.get(0, CPU)
    (x,) = b.args
    assert b.token_input and not x.is_floating_point()
    assert x.shape == (8, 32) and int(x.min()) >= 0 and int(x.max()) < 13


def test_synthetic_batches_differ_per_step_and_repeat_per_seed():
    model = nn.Linear(6, 2)
    a = batches.make_batch_source(None, (4, 6), model, seed=0)
    b = batches.make_batch_source(None, (4, 6), model, seed=0)
    c = batches.make_batch_source(None, (4, 6), model, seed=1)
    assert torch.equal(a.get(0, CPU).args[0], b.get(0, CPU).args[0])
    assert not torch.equal(a.get(0, CPU).args[0], a.get(1, CPU).args[0])
    assert not torch.equal(a.get(0, CPU).args[0], c.get(0, CPU).args[0])


def test_synthetic_batch_uses_model_dtype():
    model = nn.Linear(6, 2).double()
    (x,) = batches.make_batch_source(None, (4, 6), model, seed=0).get(0, CPU).args
    assert x.dtype == torch.float64


def test_pt_float64_inputs_are_cast_to_model_dtype(tmp_path):
    p = tmp_path / "b.pt"
    torch.save((torch.randn(3, 6, dtype=torch.float64), torch.tensor([0, 1, 1])), p)
    b = batches.make_batch_source(str(p), None, nn.Linear(6, 2), seed=0).get(0, CPU)
    assert b.args[0].dtype == torch.float32
    assert b.target.dtype == torch.int64, "integer targets are left alone"


def test_pt_dict_batch_is_keyword_arguments(tmp_path):
    p = tmp_path / "d.pt"
    ids = torch.randint(0, 10, (2, 5))
    torch.save({"input_ids": ids, "attention_mask": torch.ones(2, 5)}, p)
    b = batches.make_batch_source(str(p), None, nn.Linear(6, 2), seed=0).get(0, CPU)
    assert b.args == () and set(b.kwargs) == {"input_ids", "attention_mask"}
    assert b.token_input and torch.equal(b.kwargs["input_ids"], ids)


def test_npz_keys(tmp_path):
    np = pytest.importorskip("numpy")
    model = nn.Linear(6, 2)
    p = tmp_path / "pair.npz"
    np.savez(p, inputs=np.ones((3, 6), "float32"), targets=np.array([0, 1, 0]))
    b = batches.make_batch_source(str(p), None, model, 0).get(0, CPU)
    assert b.args[0].shape == (3, 6) and b.target.tolist() == [0, 1, 0]
    p = tmp_path / "only.npz"
    np.savez(p, x=np.ones((3, 6), "float32"))
    b = batches.make_batch_source(str(p), None, model, 0).get(0, CPU)
    assert b.args[0].shape == (3, 6) and b.target is None
    p = tmp_path / "kw.npz"
    np.savez(p, features=np.ones((3, 6), "float32"), mask=np.zeros((3, 6), "float32"))
    b = batches.make_batch_source(str(p), None, model, 0).get(0, CPU)
    assert b.args == () and set(b.kwargs) == {"features", "mask"}


def test_npy_is_inputs_only(tmp_path):
    np = pytest.importorskip("numpy")
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((2, 6)))
    b = batches.make_batch_source(str(p), None, nn.Linear(6, 2), 0).get(0, CPU)
    assert b.args[0].shape == (2, 6) and b.args[0].dtype == torch.float32 and b.target is None


def test_pt_with_three_items_is_refused(tmp_path):
    p = tmp_path / "three.pt"
    torch.save((torch.zeros(2, 6), torch.zeros(2), torch.zeros(2)), p)
    with pytest.raises(InputError) as info:
        batches.make_batch_source(str(p), None, nn.Linear(6, 2), 0)
    assert "(inputs, targets)" in info.value.one_line()


def test_callable_is_called_once_per_step(write_file):
    src = write_file("calls.py", """
        import torch
        CALLS = []

        def make():
            CALLS.append(1)
            return torch.full((2, 6), float(len(CALLS)))
    """)
    source = batches.make_batch_source(f"{src}:make", None, nn.Linear(6, 2), 0)
    xs = [source.get(i, CPU).args[0] for i in range(3)]
    assert [float(x[0, 0]) for x in xs] == [1.0, 2.0, 3.0]


def test_generator_is_drawn_from_once_per_step(write_file):
    src = write_file("gen.py", """
        import torch

        def stream():
            i = 0
            while True:
                i += 1
                yield torch.full((2, 6), float(i))
    """)
    source = batches.make_batch_source(f"{src}:stream", None, nn.Linear(6, 2), 0)
    assert [float(source.get(i, CPU).args[0][0, 0]) for i in range(3)] == [1.0, 2.0, 3.0]


def test_callable_raising_is_a_user_code_error(write_file):
    src = write_file("raises.py", """
        def make():
            raise FileNotFoundError("shard-0001.bin")
    """)
    source = batches.make_batch_source(f"{src}:make", None, nn.Linear(6, 2), 0)
    with pytest.raises(UserCodeError) as info:
        source.get(0, CPU)
    assert info.value.exit_code == 3 and "shard-0001.bin" in info.value.one_line()


def test_callable_returning_garbage_is_an_input_error(write_file):
    src = write_file("garbage.py", """
        def make():
            return "not a batch"
    """)
    source = batches.make_batch_source(f"{src}:make", None, nn.Linear(6, 2), 0)
    with pytest.raises(InputError) as info:
        source.get(0, CPU)
    assert "str" in info.value.one_line()
