"""sentiment-lstm and sentiment-transformer: packed and padded batches give the same outputs, every backend agrees
with torch, a few steps lower the loss, the vocabulary is the training split's and travels in the checkpoint, and
train / eval / predict run on the real IMDb sample with the TF-IDF baseline beside the model."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import deepfuse
from deepfuse import cli, models
from deepfuse.backend import record_choices
from deepfuse.data import DataError
from deepfuse.data.text import Vocabulary, collate_padded
from deepfuse.models.sentiment import CheapMaskDropout
from deepfuse.training.checkpoint import load_checkpoint
from tests.data.test_imdb import write_imdb
from tests.models.helpers import assert_backend_agrees, assert_loss_falls, forward_and_grads
from tests.tolerances import ATOL, assert_close_to_reference

LSTM, TRANSFORMER = models.get("sentiment-lstm"), models.get("sentiment-transformer")
TINY = {
    "sentiment-lstm": {"embed_dim": 8, "hidden_size": 16, "vocab_size": 60, "max_len": 6, "dropout": 0.0},
    "sentiment-transformer": {
        "d_model": 16,
        "heads": 2,
        "ffn_dim": 32,
        "layers": 2,
        "vocab_size": 60,
        "max_len": 8,
        "dropout": 0.0,
    },
}
TASKS = [LSTM, TRANSFORMER]
IDS = [t.name for t in TASKS]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Each test its own cache of TF-IDF baselines: nothing written to the user's cache, no result shared."""
    monkeypatch.setenv("DEEPFUSE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def _fixture_data(tmp_path, task):
    write_imdb(tmp_path, test_positive=["A masterpiece, great"] * 2, test_negative=["awful masterpiece"] * 2)
    return task.load_data(tmp_path, TINY[task.name])


def _batch(task, lengths):
    """Random ids (B, max length), padded with 0 past each length."""
    generator = torch.Generator().manual_seed(len(lengths))
    lengths = torch.tensor(lengths)
    ids = torch.randint(2, TINY[task.name]["vocab_size"], (len(lengths), int(lengths.max())), generator=generator)
    ids = ids * (torch.arange(ids.shape[1])[None] < lengths[:, None])
    return ids, lengths, torch.tensor([1, 0, 1, 0][: len(lengths)])


def test_load_data_fits_the_vocabulary_on_the_training_split(tmp_path):
    data = _fixture_data(tmp_path, LSTM)
    assert (len(data.train), len(data.val), len(data.test)) == (7, 1, 4)
    vocabulary = Vocabulary.from_json(data.state["tokenizer"])
    assert data.state["vocab_size"] == len(vocabulary) and data.state["pad_id"] == 0
    assert "masterpiece" not in vocabulary.tokenizer.get_vocab()  # only the test reviews use it
    masterpiece = next(ids for ids, label in data.test if label == 1)
    assert masterpiece.tolist()[1] == vocabulary.unk_id
    assert data.lengths == [len(data.train[i][0]) for i in range(len(data.train))]
    assert max(data.lengths) <= TINY["sentiment-lstm"]["max_len"]
    for split in (data.val, data.test):
        assert set(split.extra["baseline"]()) == {"baseline_accuracy", "baseline_roc_auc", "baseline_f1", "baseline_c"}
    (ids, lengths), labels = data.collate([data.train[i] for i in range(3)])
    assert ids.shape == (3, int(lengths.max())) and labels.dtype == torch.int64


@pytest.mark.parametrize("task", TASKS, ids=IDS)
def test_a_review_gets_the_same_output_alone_in_a_batch_or_with_more_padding(task):
    """Packing: a sequence's output does not depend on the other sequences or the padding around it."""
    torch.manual_seed(0)
    model = task.build(TINY[task.name], {"vocab_size": 60, "pad_id": 0}).double().eval()
    ids, lengths, _ = _batch(task, [3, 6, 1, 5])
    batched = model(ids, lengths)
    wider = model(F.pad(ids, (0, 4)), lengths)  # four more padding columns
    alone = torch.cat([model(ids[i : i + 1, : lengths[i]], lengths[i : i + 1]) for i in range(len(lengths))])
    torch.testing.assert_close(batched, alone, rtol=0, atol=ATOL[torch.float64])
    torch.testing.assert_close(wider, alone, rtol=0, atol=ATOL[torch.float64])


def test_transformer_packed_tokens_match_the_padded_key_mask_path():
    torch.manual_seed(0)
    model = TRANSFORMER.build(TINY["sentiment-transformer"], {"vocab_size": 60, "pad_id": 0}).double().eval()
    ids, lengths, _ = _batch(TRANSFORMER, [2, 8, 5])
    torch.testing.assert_close(
        model(ids, lengths), model.forward_padded(ids, lengths), rtol=0, atol=ATOL[torch.float64]
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cheap_mask_dropout_drops_p_in_every_lane_and_keeps_the_mean(dtype):
    torch.manual_seed(0)
    dropout = CheapMaskDropout(0.1)
    x = torch.ones(1000, 1000, dtype=dtype, requires_grad=True)
    out = dropout(x)
    assert out.dtype == dtype
    kept_value = 65536 / (65536 - 6554)  # p = 0.1 is 6554 of the 65536 values of a 16-bit draw
    assert set(out.unique().tolist()) == {0.0, torch.tensor(kept_value, dtype=dtype).item()}
    # each of a 64-bit draw's four 16-bit lanes drops p of its elements (torch's default int64 random_ never sets
    # the top bit: the fourth lane would then drop nothing)
    dropped_per_lane = (out == 0).view(-1, 4).float().mean(0)
    torch.testing.assert_close(dropped_per_lane, torch.full((4,), 0.1), rtol=0, atol=0.003)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(x.grad, out.detach())  # the gradient goes through the same mask and scale


def test_cheap_mask_dropout_is_reproducible_and_the_identity_in_eval():
    dropout, x = CheapMaskDropout(0.3), torch.randn(7, 33)
    torch.manual_seed(1)
    first = dropout(x)
    torch.manual_seed(1)
    torch.testing.assert_close(dropout(x), first, rtol=0, atol=0)
    assert not torch.equal(dropout(x), first)  # a new draw without the seed
    assert torch.equal(dropout.eval()(x), x)
    assert torch.equal(CheapMaskDropout(1.0)(x), torch.zeros_like(x))
    assert torch.equal(CheapMaskDropout(0.0)(x), x)


def test_the_transformer_drops_out_with_cheap_masks_everywhere():
    model = TRANSFORMER.build(TINY["sentiment-transformer"], {"vocab_size": 60, "pad_id": 0})
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 1 + 3 * TINY["sentiment-transformer"]["layers"]
    assert all(type(m) is CheapMaskDropout for m in dropouts)


@pytest.mark.parametrize("task", TASKS, ids=IDS)
def test_triton_agrees_with_torch(task):
    """Tiny shapes on the models' real layer structure: T <= 8, B = 3, H = 16, through the interpreter."""
    config = TINY[task.name]
    ids, lengths, labels = _batch(task, [3, config["max_len"], 2])
    state = {"vocab_size": 60, "pad_id": 0}
    with record_choices() as chosen, deepfuse.use_backend("triton"):
        task.build(config, state)(ids, lengths)
    expected = {"lstm"} if task is LSTM else {"attention"}
    assert {op for op, backend in chosen if backend == "triton"} == expected | {"linear_act"}
    assert_backend_agrees(task, state, config, (ids, lengths), labels, "triton")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("task", TASKS, ids=IDS)
def test_gpu_backends_agree_with_torch_at_the_models_shapes(task, backend):
    """The default widths, 16 reviews of 64-256 tokens, on the GPU: outputs and every parameter gradient."""
    if not deepfuse.available_backends()[backend][0]:
        pytest.skip(f"backend {backend} is not available here")
    config = {"dropout": 0.0, "max_len": 256}
    state, (ids, lengths), labels = task.example(16, config)
    torch.manual_seed(0)
    model = task.build(config, state).cuda()
    inputs, labels = (ids.cuda(), lengths.cuda()), labels.cuda()
    ours = forward_and_grads(copy.deepcopy(model), task, inputs, labels, backend, True)
    theirs = forward_and_grads(copy.deepcopy(model), task, inputs, labels, "torch", True)
    exact = forward_and_grads(copy.deepcopy(model).double(), task, inputs, labels, "torch", True)
    assert_close_to_reference("outputs", ours[0], exact[0], theirs[0], torch.float32)
    for name in exact[1]:
        assert_close_to_reference(f"d{name}", ours[1][name], exact[1][name], theirs[1][name], torch.float32)


@pytest.mark.parametrize("task", TASKS, ids=IDS)
def test_a_few_steps_lower_the_loss(tmp_path, task):
    data = _fixture_data(tmp_path, task)
    (ids, lengths), labels = data.collate([data.train[i] for i in range(len(data.train))])
    assert_loss_falls(task, data.state, TINY[task.name], (ids, lengths), labels, lr=1e-2)


@pytest.mark.parametrize("task", TASKS, ids=IDS)
def test_example_batch_builds(task):
    state, inputs, targets = task.example(2, {"max_len": 32})
    assert task.build({"max_len": 32}, state)(*inputs).shape == (2, 2) and targets.shape == (2,)


@pytest.mark.parametrize("task", TASKS, ids=IDS)
def test_cli_train_eval_predict_on_the_real_sample(realdata, tmp_path, capsys, task):
    run = tmp_path / "run"
    sizes = ["--embed-dim", "8", "--hidden-size", "8"] if task is LSTM else ["--d-model", "16", "--ffn-dim", "32"]
    argv = [
        "train",
        task.name,
        "--data",
        str(realdata / "imdb"),
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        str(run),
        "--vocab-size",
        "500",
        "--max-len",
        "32",
        "--batch-size",
        "64",
        *sizes,
    ]
    assert cli.main(argv) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and 0.0 <= metrics["accuracy"] <= 1.0
    assert 0.5 < metrics["baseline_accuracy"] <= 1.0 and "baseline_accuracy" in metrics["val"]
    for picture in ("learning_curves.png", "confusion_matrix.png", "roc_curve.png"):
        assert (run / picture).stat().st_size > 0
    capsys.readouterr()
    assert cli.main(["eval", task.name, "--checkpoint", str(run / "best.pt")]) == 0
    shown = capsys.readouterr().out
    assert f"accuracy {metrics['accuracy']:.4f}" in shown
    assert f"baseline_accuracy {metrics['baseline_accuracy']:.4f}" in shown

    # the tokenizer travels in the checkpoint: predict uses the ids training used
    payload = load_checkpoint(run / "best.pt", task.name)
    trained = task.load_data(realdata / "imdb", payload["config"]).state["tokenizer"]
    assert payload["state"]["tokenizer"] == trained
    review = realdata / "imdb" / "aclImdb" / "test" / "neg" / "53_4.txt"
    text = "A wonderful, moving film."
    assert cli.main(["predict", task.name, "--checkpoint", str(run / "best.pt"), text, str(review)]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert lines[0].startswith(f"{text!r}: ") and lines[1].startswith(f"{review}: ")
    model = task.build(payload["config"], payload["state"])
    model.load_state_dict(payload["model_state"])
    ids = Vocabulary.from_json(trained).encode([text], 32)
    (padded, lengths), _ = collate_padded([(torch.tensor(ids[0]), torch.tensor(0))])
    positive = torch.softmax(model.eval()(padded, lengths), -1)[0, 1].item()
    label, probability = ("positive", positive) if positive >= 0.5 else ("negative", 1 - positive)
    assert lines[0] == f"{text!r}: {label} (probability {probability:.3f})"


def test_predict_names_a_missing_file(tmp_path):
    data = _fixture_data(tmp_path, LSTM)
    model = LSTM.build(TINY["sentiment-lstm"], data.state).eval()
    with pytest.raises(DataError, match=r"nosuch\.txt: no such file"):
        LSTM.predict_inputs(
            model, ["great", str(tmp_path / "nosuch.txt")], TINY["sentiment-lstm"], data.state, tmp_path
        )
    lines = LSTM.predict_inputs(
        model, ["great", str(tmp_path / "aclImdb" / "test" / "pos")], TINY["sentiment-lstm"], data.state, tmp_path
    )
    assert len(lines) == 1 + 2 and lines[0].startswith("'great': ")


@pytest.mark.parametrize("text", ["", "   ", "<br><br>"], ids=["empty", "spaces", "tags"])
def test_predict_refuses_an_empty_review(tmp_path, text):
    data = _fixture_data(tmp_path, LSTM)
    model = LSTM.build(TINY["sentiment-lstm"], data.state).eval()
    with pytest.raises(DataError, match=r"an empty review \(only white space\), nothing to classify"):
        LSTM.predict_inputs(model, ["great", text], TINY["sentiment-lstm"], data.state, tmp_path)
    empty_file = tmp_path / "empty.txt"
    empty_file.write_text(text)
    with pytest.raises(DataError, match=r"empty\.txt: an empty review"):
        LSTM.predict_inputs(model, [str(empty_file)], TINY["sentiment-lstm"], data.state, tmp_path)


def test_cli_predict_of_an_empty_text_is_a_one_line_error(tmp_path, capsys):
    write_imdb(tmp_path)
    run = tmp_path / "run"
    settings = [f"--{k.replace('_', '-')}={v}" for k, v in TINY["sentiment-lstm"].items()]
    argv = ["train", "sentiment-lstm", "--data", str(tmp_path), "--epochs", "1", "--out", str(run), *settings]
    assert cli.main([*argv, "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["predict", "sentiment-lstm", "--checkpoint", str(run / "best.pt"), ""]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'': an empty review (only white space), nothing to classify" in err


def test_load_data_shows_each_phase_and_fits_the_baseline_once_per_dataset(tmp_path, capsys, monkeypatch):
    from sklearn.linear_model import LogisticRegression

    fits = []
    original = LogisticRegression.fit
    monkeypatch.setattr(LogisticRegression, "fit", lambda self, *a, **k: fits.append(self.C) or original(self, *a, **k))
    base = write_imdb(tmp_path)
    data = LSTM.load_data(tmp_path, TINY["sentiment-lstm"] | {"progress": True})
    assert fits == []  # training starts without the baseline: it comes with the first validation
    val, test = data.val.extra["baseline"](), data.test.extra["baseline"]()
    err = capsys.readouterr().err
    for phase in (
        "reading train reviews",
        "reading test reviews",
        "fitting the vocabulary",
        "encoding",
        "TF-IDF baseline: fitting the vectorizer on train",
        "TF-IDF baseline: fitting logistic regression",
    ):
        assert phase in err, phase
    assert fits == [4.0] and val["baseline_c"] == 4.0 and set(test) == set(val)
    assert val["baseline_roc_auc"] is None  # one validation review: null, not NaN
    again = LSTM.load_data(tmp_path, TINY["sentiment-lstm"] | {"progress": False})
    assert again.test.extra["baseline"]() == test and again.val.extra["baseline"]() == val
    assert capsys.readouterr().err == "" and fits == [4.0]  # the same files: the cached metrics, no fit
    changed = base / "test" / "pos" / "1_10.txt"
    changed.write_text("Awful, dull and bad")  # another text (size and time): fitted again
    changed_data = LSTM.load_data(tmp_path, TINY["sentiment-lstm"] | {"progress": False})
    assert changed_data.test.extra["baseline"]() != test and fits == [4.0, 4.0]


def test_an_unwritable_cache_warns_and_the_run_goes_on(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("DEEPFUSE_CACHE_DIR", str(blocker / "cache"))
    write_imdb(tmp_path / "data")
    data = LSTM.load_data(tmp_path / "data", TINY["sentiment-lstm"] | {"progress": False})
    with pytest.warns(UserWarning, match=r"could not cache the TF-IDF baseline in .*set DEEPFUSE_CACHE_DIR"):
        assert "baseline_accuracy" in data.test.extra["baseline"]()
