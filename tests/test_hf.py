"""The Hugging Face Trainer callback: next-token labels, statistics, logging, reports.

Tiny GPT-2 models built from a config (never downloaded) on synthetic Zipf
token streams; the references are float64 NumPy formulas over hidden states
captured independently of the callback (``output_hidden_states`` or a hook
on the final layer norm).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from ncgeom import NCReport, nc_report  # noqa: E402
from ncgeom_torch.hf import NCTrainerCallback, next_token_targets  # noqa: E402

VOCAB, DIM, LENGTH = 64, 16, 24


def zipf_rows(rows: int, seed: int, length: int = LENGTH) -> torch.Tensor:
    """Token ids drawn with probability proportional to 1 / rank."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, VOCAB + 1)
    return torch.from_numpy(rng.choice(VOCAB, size=(rows, length), p=p / p.sum()))


def tiny_model(seed: int = 0, *, tied: bool = True) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=DIM, n_layer=2, n_head=2, n_positions=LENGTH,
        tie_word_embeddings=tied,
    )  # fmt: skip
    return GPT2LMHeadModel(config).double()


def padded_batch(seed: int) -> list[dict[str, torch.Tensor]]:
    """Rows with right padding (mask 0, label -100) and a few -100 labels inside."""
    ids = zipf_rows(12, seed)
    rng = np.random.default_rng(seed + 1)
    rows = []
    for row in ids:
        length = int(rng.integers(LENGTH // 2, LENGTH + 1))
        mask = torch.zeros(LENGTH, dtype=torch.long)
        mask[:length] = 1
        labels = row.clone()
        labels[length:] = -100
        labels[int(rng.integers(0, LENGTH))] = -100
        rows.append({"input_ids": row, "attention_mask": mask, "labels": labels})
    return rows


def arguments(tmp_path, **extra) -> TrainingArguments:
    options = {
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "logging_steps": 1000,
        "learning_rate": 1e-2,
        **extra,
    }
    return TrainingArguments(str(tmp_path), **options)


def trainer_for(model, args, callbacks, train=None, evaluation=None) -> Trainer:
    trainer = Trainer(
        model=model, args=args, train_dataset=train, eval_dataset=evaluation, callbacks=callbacks
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def reference_pairs(hidden, rows) -> tuple[np.ndarray, np.ndarray]:
    """(features, next tokens) by a loop over positions: label != -100, both positions real."""
    features, labels = [], []
    for b, row in enumerate(rows):
        lab, mask = row["labels"].numpy(), row["attention_mask"].numpy()
        for t in range(LENGTH - 1):
            if lab[t + 1] != -100 and mask[t] and mask[t + 1]:
                features.append(hidden[b, t])
                labels.append(lab[t + 1])
    return np.array(features), np.array(labels)


def numpy_nc1(x: np.ndarray, y: np.ndarray) -> float:
    """tr(Sigma_W Sigma_B^+) / K over the populated classes, centred at the sample mean."""
    classes = np.unique(y)
    means = np.stack([x[y == k].mean(axis=0) for k in classes])
    centred = x - means[np.searchsorted(classes, y)]
    sigma_w = centred.T @ centred / len(x)
    spread = means - x.mean(axis=0)
    sigma_b = spread.T @ spread / len(classes)
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b)) / len(classes))


# ---------------------------------------------------------------------------- labels
def test_next_token_targets_against_a_loop():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 9, (3, 7), generator=g)
    labels[0, 3] = labels[2, 6] = -100
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 0] = 0  # left padding: the pair (0 -> 1) starts at a pad
    x, y = next_token_targets(hidden, labels=labels, attention_mask=mask)
    want = [
        (b, t)
        for b in range(3)
        for t in range(6)
        if labels[b, t + 1] != -100 and mask[b, t] and mask[b, t + 1]
    ]
    assert y.tolist() == [int(labels[b, t + 1]) for b, t in want]
    assert torch.equal(x, torch.stack([hidden[b, t] for b, t in want]))
    assert y.dtype == torch.int64


def test_next_token_targets_from_input_ids_without_labels():
    hidden = torch.arange(12.0).reshape(1, 4, 3)
    ids = torch.tensor([[4, 5, 6, 7]])
    x, y = next_token_targets(hidden, input_ids=ids, attention_mask=torch.tensor([[1, 1, 1, 0]]))
    assert y.tolist() == [5, 6]
    assert x.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({}, TypeError, "`labels` or `input_ids`"),
        ({"labels": torch.zeros(2, 5)}, TypeError, "`labels` must hold integer"),
        ({"labels": torch.zeros(2, 4, dtype=torch.long)}, ValueError, "`labels` must have shape"),
        (
            {"labels": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.ones(5)},
            ValueError,
            "`attention_mask` must have shape",
        ),
    ],
)
def test_next_token_targets_errors(kwargs, error, text):
    with pytest.raises(error, match=text):
        next_token_targets(torch.zeros(2, 5, 3), **kwargs)
    with pytest.raises(TypeError, match="`hidden` must be a floating"):
        next_token_targets(torch.zeros(2, 5, 3, dtype=torch.long), input_ids=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="`hidden` must be 3-D"):
        next_token_targets(torch.zeros(2, 5), input_ids=torch.zeros(2, 5, dtype=torch.long))


# ---------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("batch", [1, 4])  # 1: rows are held over batches (fewer than K)
def test_eval_pass_equals_the_gathered_hidden_states(tmp_path, batch):
    model, rows = tiny_model(), padded_batch(3)
    callback = NCTrainerCallback(source="eval")
    args = arguments(tmp_path, per_device_eval_batch_size=batch)
    trainer = trainer_for(model, args, [callback], evaluation=rows)
    metrics = trainer.evaluate()
    with torch.no_grad():
        out = model(
            input_ids=torch.stack([r["input_ids"] for r in rows]),
            attention_mask=torch.stack([r["attention_mask"] for r in rows]),
            output_hidden_states=True,
        )
    x, y = reference_pairs(out.hidden_states[-1].numpy(), rows)
    stats = callback.last_stats
    counts = np.bincount(y, minlength=VOCAB)
    assert stats.counts.tolist() == counts.tolist()
    seen = counts > 0
    means = np.stack([x[y == k].mean(axis=0) for k in np.flatnonzero(seen)])
    np.testing.assert_allclose(stats.means.numpy()[seen], means, rtol=0, atol=1e-12)
    report = callback.last_report
    assert report.nc1 == pytest.approx(numpy_nc1(x, y), rel=1e-8)
    weight = model.lm_head.weight.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = nc_report((torch.from_numpy(x), torch.from_numpy(y)), weight, num_classes=VOCAB)
    for name in ("nc1", "cdnv", "within_variance", "etf_error", "self_duality_error"):
        assert getattr(report, name) == pytest.approx(getattr(direct, name), rel=1e-10), name
    assert metrics["eval_nc/nc1"] == report.nc1
    assert metrics["eval_nc/tokens"] == len(y)
    assert metrics["eval_nc/classes_excluded"] == VOCAB - seen.sum()
    assert trainer.state.log_history[-1]["eval_nc/nc1"] == report.nc1


def test_a_llama_decoder_untied_with_rms_norm(tmp_path):
    # Another architecture: the LM head's input is the output of the final RMSNorm.
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=DIM, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=LENGTH,
        tie_word_embeddings=False,
    )  # fmt: skip
    model, rows = LlamaForCausalLM(config).double(), padded_batch(8)
    callback = NCTrainerCallback(source="eval")
    trainer = trainer_for(model, arguments(tmp_path), [callback], evaluation=rows)
    trainer.evaluate()
    captured = []
    handle = model.model.norm.register_forward_hook(
        lambda module, args, output: captured.append(output.detach().clone())
    )
    with torch.no_grad():
        model(
            input_ids=torch.stack([r["input_ids"] for r in rows]),
            attention_mask=torch.stack([r["attention_mask"] for r in rows]),
        )
    handle.remove()
    x, y = reference_pairs(captured[0].numpy(), rows)
    report = callback.last_report
    assert callback.last_stats.counts.tolist() == np.bincount(y, minlength=VOCAB).tolist()
    assert report.nc1 == pytest.approx(numpy_nc1(x, y), rel=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = nc_report(
            (torch.from_numpy(x), torch.from_numpy(y)), model.lm_head.weight.detach(),
            num_classes=VOCAB,
        )  # fmt: skip
    for name in ("nc1", "cdnv", "etf_error", "self_duality_error"):
        assert getattr(report, name) == pytest.approx(getattr(direct, name), rel=1e-10), name
    saved = json.loads(callback.save(tmp_path / "llama").read_text())
    assert saved["tied_embeddings"] is False and saved["layer"] == "lm_head"


def test_training_stream_of_the_reported_steps(tmp_path):
    model = tiny_model(1)
    rows = [{"input_ids": r, "labels": r} for r in zipf_rows(16, 5)]
    hidden, tokens = [], []
    model.transformer.ln_f.register_forward_hook(
        lambda module, args, output: hidden.append(output.detach().clone())
    )
    model.register_forward_pre_hook(
        lambda module, args, kwargs: tokens.append(kwargs["labels"].clone()), with_kwargs=True
    )
    callback = NCTrainerCallback(every_n_steps=2, window_steps=1)
    args = arguments(tmp_path, max_steps=4, gradient_accumulation_steps=2)
    trainer = trainer_for(model, args, [callback], train=rows)
    trainer.train()
    # steps 2 and 4 are reported, each from the two micro-batches of that step only
    assert [step for step, _ in callback.history] == [2, 4]
    assert len(hidden) == 8
    x = torch.cat(hidden[-2:])[:, :-1].reshape(-1, DIM).numpy()
    y = torch.cat(tokens[-2:])[:, 1:].reshape(-1).numpy()
    stats = callback.last_stats
    assert stats.counts.tolist() == np.bincount(y, minlength=VOCAB).tolist()
    seen = np.flatnonzero(np.bincount(y, minlength=VOCAB))
    means = np.stack([x[y == k].mean(axis=0) for k in seen])
    np.testing.assert_allclose(stats.means.numpy()[seen], means, rtol=0, atol=1e-12)
    assert callback.last_report.nc1 == pytest.approx(numpy_nc1(x, y), rel=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = nc_report((torch.from_numpy(x), torch.from_numpy(y)), num_classes=VOCAB)
    assert callback.last_report.nc1 == pytest.approx(direct.nc1, rel=1e-10)
    logged = {e["step"]: e for e in trainer.state.log_history if "nc/nc1" in e}
    assert sorted(logged) == [2, 4]
    assert logged[4]["nc/nc1"] == callback.last_report.nc1
    assert logged[4]["nc/tokens"] == len(y)


def test_bf16_hidden_states_are_summed_in_float64(tmp_path):
    model, rows = tiny_model().to(torch.bfloat16), padded_batch(3)
    callback = NCTrainerCallback(source="eval")
    trainer_for(model, arguments(tmp_path), [callback], evaluation=rows).evaluate()
    with torch.no_grad():
        out = model(
            input_ids=torch.stack([r["input_ids"] for r in rows]),
            attention_mask=torch.stack([r["attention_mask"] for r in rows]),
            output_hidden_states=True,
        )
    x, y = reference_pairs(out.hidden_states[-1].double().numpy(), rows)
    stats = callback.last_stats
    assert stats.dtype == torch.float64
    seen = np.flatnonzero(np.bincount(y, minlength=VOCAB))
    means = np.stack([x[y == k].mean(axis=0) for k in seen])
    np.testing.assert_allclose(stats.means.numpy()[seen], means, rtol=1e-12, atol=1e-12)
    variances = np.array([((x[y == k] - x[y == k].mean(axis=0)) ** 2).sum(1).mean() for k in seen])
    np.testing.assert_allclose(stats.class_variances.numpy()[seen], variances, rtol=1e-10)


def test_min_count_leaves_out_and_counts(tmp_path):
    model, rows = tiny_model(), padded_batch(7)
    callback = NCTrainerCallback(source="eval", min_count=5)
    trainer = trainer_for(model, arguments(tmp_path), [callback], evaluation=rows)
    metrics = trainer.evaluate()
    labels = np.concatenate([r["labels"].numpy()[1:] for r in rows])
    masks = np.concatenate(
        [(r["attention_mask"].numpy()[1:] * r["attention_mask"].numpy()[:-1]) for r in rows]
    )
    counts = np.bincount(labels[(labels != -100) & (masks == 1)], minlength=VOCAB)
    left_out = int(np.sum(counts < 5))
    report = callback.last_report
    assert len(report.excluded) == left_out > 0
    assert metrics["eval_nc/classes_excluded"] == left_out
    assert metrics["eval_nc/classes_measured"] == VOCAB - left_out
    assert report.nc1 is None or np.isnan(report.nc1)  # the Gram pools every class
    assert "eval_nc/cdnv" in metrics


def _same_report(got: dict, want: dict, rel: float = 1e-10) -> None:
    """Two reports' metrics, counts and reasons (ncc_agreement aside)."""
    assert got["counts"] == want["counts"] and got["excluded"] == want["excluded"]
    assert got["num_samples"] == want["num_samples"]
    for name in (*NCReport.METRICS, *NCReport.PER_CLASS):
        a, b = got[name], want[name]
        if b is None or (isinstance(b, float) and np.isnan(b)):
            assert a is None or np.isnan(a), name
        else:
            np.testing.assert_allclose(a, b, rtol=rel, atol=1e-13, err_msg=name)
    why = {k: v for k, v in want["unavailable"].items() if k != "ncc_agreement"}
    assert {k: v for k, v in got["unavailable"].items() if k != "ncc_agreement"} == why


@pytest.mark.parametrize("source", ["eval", "train"])
def test_class_shards_give_the_report_of_the_whole_table(tmp_path, source):
    # One process owns the one shard; the rows are handed over at every step.
    rows = padded_batch(7)
    kwargs = {"source": "eval"} if source == "eval" else {"every_n_steps": 2}
    plain = NCTrainerCallback(min_count=2, **kwargs)
    sharded = NCTrainerCallback(min_count=2, shard_classes=True, **kwargs)
    if source == "eval":
        args = arguments(tmp_path, per_device_eval_batch_size=2)
        trainer_for(tiny_model(), args, [plain, sharded], evaluation=rows).evaluate()
    else:
        train = [{"input_ids": r, "labels": r} for r in zipf_rows(16, 5)]
        args = arguments(tmp_path, max_steps=4, per_device_train_batch_size=2)
        trainer_for(tiny_model(1), args, [plain, sharded], train=train).train()
    assert [s for s, _ in sharded.history] == [s for s, _ in plain.history]
    assert sharded.last_stats is None
    _same_report(sharded.last_report.to_dict(), plain.last_report.to_dict())
    assert sharded.last_report.excluded and sharded.last_report.cdnv > 0


class Recorder(TrainerCallback):
    """Stands for a reporting integration: keeps what each on_log receives."""

    def __init__(self):
        self.seen: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen.append(dict(logs))


def test_attach_reaches_earlier_callbacks_and_reports_are_written(tmp_path):
    model = tiny_model(2)
    rows = [{"input_ids": r, "labels": r} for r in zipf_rows(8, 9)]
    before = Recorder()
    callback = NCTrainerCallback(every_n_steps=1, out=tmp_path / "nc")
    trainer = trainer_for(model, arguments(tmp_path, max_steps=2), [before])
    trainer.train_dataset = rows
    callback.attach(trainer)
    assert trainer.callback_handler.callbacks[0] is callback
    trainer.train()
    steps = [entry for entry in before.seen if "nc/nc1" in entry]
    assert len(steps) == 2
    assert steps[-1]["nc/nc1"] == callback.last_report.nc1
    saved = json.loads((tmp_path / "nc" / "neural_collapse.json").read_text())
    assert [e["step"] for e in saved["history"]] == [1, 2]
    assert saved["tied_embeddings"] is True
    assert saved["layer"] == "lm_head"
    assert saved["history"][-1]["report"]["num_samples"] == 4 * (LENGTH - 1)
    text = (tmp_path / "nc" / "neural_collapse.md").read_text()
    assert "step 2" in text and f"{4 * (LENGTH - 1)} tokens" in text


def test_labels_taken_out_by_the_trainer_come_from_input_ids(tmp_path):
    # label smoothing makes the Trainer pop the labels before calling the model
    model, rows = tiny_model(), padded_batch(4)
    callback = NCTrainerCallback(source="eval")
    args = arguments(tmp_path, label_smoothing_factor=0.1)
    trainer_for(model, args, [callback], evaluation=rows).evaluate()
    ids = np.concatenate([r["input_ids"].numpy()[1:] for r in rows])
    masks = np.concatenate(
        [(r["attention_mask"].numpy()[1:] * r["attention_mask"].numpy()[:-1]) for r in rows]
    )
    want = np.bincount(ids[masks == 1], minlength=VOCAB)
    assert callback.last_stats.counts.tolist() == want.tolist()


def test_untied_head_and_the_embeddings_as_classifier(tmp_path):
    model, rows = tiny_model(tied=False), padded_batch(3)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn(VOCAB, DIM, dtype=torch.float64))
    reports = {}
    for choice in ("lm_head", "embeddings", None):
        callback = NCTrainerCallback(source="eval", classifier=choice)
        trainer_for(model, arguments(tmp_path), [callback], evaluation=rows).evaluate()
        reports[choice] = callback.last_report
    stats = callback.last_stats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for choice, weight in (
            ("lm_head", model.lm_head.weight),
            ("embeddings", model.transformer.wte.weight),
        ):
            direct = nc_report(stats, weight.detach())
            assert reports[choice].self_duality_error == pytest.approx(
                direct.self_duality_error, rel=1e-12
            )
    assert reports["lm_head"].self_duality_error != reports["embeddings"].self_duality_error
    assert reports[None].self_duality_error is None


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"source": "test"}, ValueError, "`source` must be 'train' or 'eval'"),
        ({"source": "eval", "every_n_steps": 2}, ValueError, "eval_strategy"),
        ({"every_n_steps": 2, "every_n_epochs": 1}, ValueError, "at most one"),
        ({"window_steps": 2}, ValueError, "`window_steps` needs `every_n_steps`"),
        ({"every_n_steps": 2, "window_steps": 3}, ValueError, "at most `every_n_steps`"),
        ({"every_n_steps": 0}, ValueError, "every_n_steps"),
        ({"min_count": 0}, ValueError, "min_count"),
        ({"classifier": "head"}, ValueError, "`classifier` must be"),
        ({"layer": 3}, TypeError, "`layer` must be"),
        ({"dtype": torch.int64}, TypeError, "`dtype` must be a floating"),
        ({"prefix": 1}, TypeError, "`prefix` must be a str"),
        ({"ignore_index": 1.5}, TypeError, "`ignore_index` must be an int"),
        ({"num_classes": 0}, ValueError, "num_classes"),
    ],
)
def test_bad_arguments(kwargs, error, text):
    with pytest.raises(error, match=text):
        NCTrainerCallback(**kwargs)


def test_attach_needs_a_trainer_and_an_lm_head():
    with pytest.raises(TypeError, match=r"`trainer` must be a transformers\.Trainer"):
        NCTrainerCallback().attach(object())
    with pytest.raises(ValueError, match="no output embeddings"):
        NCTrainerCallback().install(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------- two ranks
WORLD = 2


def _worker(rank: int, port: int, out: str) -> None:
    """One rank of 2-process gloo runs through the Trainer: an evaluation pass,
    then 4 training steps (DDP) reported at steps 2 and 4 from each step alone.
    Writes its reports and the hidden states and next tokens of its last step."""
    import os
    import traceback
    from pathlib import Path

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
    )  # fmt: skip
    try:
        torch.set_num_threads(1)
        callback = NCTrainerCallback(source="eval")
        sharded = NCTrainerCallback(source="eval", shard_classes=True)
        args = arguments(Path(out), per_device_eval_batch_size=2, ddp_backend="gloo")
        trainer = trainer_for(tiny_model(), args, [callback, sharded], evaluation=padded_batch(3))
        trainer.evaluate()
        result = {
            "report": callback.last_report.to_dict(),
            "sharded": sharded.last_report.to_dict(),
            "world": int(torch.distributed.get_world_size()),
        }
        model, steps = tiny_model(4), []
        model.transformer.ln_f.register_forward_hook(
            lambda module, args, output: steps[-1].__setitem__("hidden", output.detach().clone())
        )
        model.register_forward_pre_hook(
            lambda module, args, kwargs: steps.append({"labels": kwargs["labels"].clone()}),
            with_kwargs=True,
        )
        callback = NCTrainerCallback(every_n_steps=2, window_steps=1)
        args = arguments(Path(out), max_steps=4, per_device_train_batch_size=2, ddp_backend="gloo")
        rows = [{"input_ids": r, "labels": r} for r in zipf_rows(16, 6)]
        trainer_for(model, args, [callback], train=rows).train()
        last = steps[-1]
        result["train"] = {
            "reported": [step for step, _ in callback.history],
            "report": callback.last_report.to_dict(),
            "hidden": last["hidden"][:, :-1].reshape(-1, DIM).tolist(),
            "tokens": last["labels"][:, 1:].reshape(-1).tolist(),
        }
    except Exception:
        result = {"crash": traceback.format_exc()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result, default=float))
    os._exit(0)  # skip the interpreter's teardown of the gloo threads


def test_two_gloo_ranks_equal_one_process_on_all_tokens(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True, daemon=False)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for rank, result in enumerate(results):
        assert "crash" not in result, f"rank {rank} failed:\n{result['crash']}"
        assert result["world"] == WORLD
    model, rows = tiny_model().eval(), padded_batch(3)  # eval: no dropout
    with torch.no_grad():
        hidden = model(
            input_ids=torch.stack([r["input_ids"] for r in rows]),
            attention_mask=torch.stack([r["attention_mask"] for r in rows]),
            output_hidden_states=True,
        ).hidden_states[-1]
    x, y = reference_pairs(hidden.numpy(), rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = nc_report(
            (torch.from_numpy(x), torch.from_numpy(y)), model.lm_head.weight.detach(),
            num_classes=VOCAB,
        )  # fmt: skip
    for result in results:
        got = result["report"]
        assert got["counts"] == list(want.counts)
        for name in ("nc1", "cdnv", "within_variance", "etf_error", "self_duality_error"):
            assert got[name] == pytest.approx(getattr(want, name), rel=1e-10), name
        # each rank held half of the token classes: the same report
        _same_report(result["sharded"], got)
    # Training with DDP: each report pools the last step's tokens of both ranks.
    x = np.concatenate([np.array(r["train"]["hidden"]) for r in results])
    y = np.concatenate([np.array(r["train"]["tokens"]) for r in results])
    assert len(y) == WORLD * 2 * (LENGTH - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = nc_report((torch.from_numpy(x), torch.from_numpy(y)), num_classes=VOCAB)
    for result in results:
        train = result["train"]
        assert train["reported"] == [2, 4]
        assert train["report"]["counts"] == np.bincount(y, minlength=VOCAB).tolist()
        assert train["report"]["nc1"] == pytest.approx(numpy_nc1(x, y), rel=1e-8)
        for name in ("nc1", "cdnv", "within_variance", "etf_error"):
            assert train["report"][name] == pytest.approx(getattr(want, name), rel=1e-10), name


def test_eval_passes_during_training_are_measured_not_the_training_stream(tmp_path):
    model = tiny_model(3)
    train = [{"input_ids": r, "labels": r} for r in zipf_rows(8, 11)]
    evaluation = padded_batch(5)
    callback = NCTrainerCallback(source="eval")
    args = arguments(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2)
    trainer = trainer_for(model, args, [callback], train=train, evaluation=evaluation)
    trainer.train()
    assert [step for step, _ in callback.history] == [2, 4]
    _, y = reference_pairs(np.zeros((12, LENGTH, 1)), evaluation)
    assert callback.history[-1][1]["num_samples"] == len(y)
    logged = [e for e in trainer.state.log_history if "eval_nc/nc1" in e]
    assert [e["step"] for e in logged] == [2, 4]
    assert all("eval_loss" in e for e in logged)
