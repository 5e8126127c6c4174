"""The training script of the embedded default: its data, its loss mask, its metrics, and a few real steps."""

import json
from dataclasses import asdict

import pytest
import torch

from llava_accel.models.tiny import TinySpec
from llava_accel.models.train_tiny import (HELDOUT_SEED, TRAIN_SEED_BASE, TrainConfig, build, encode_for_training,
                                           main, score, task_schedule, train, training_batch)
from llava_accel.preprocessing import encode_batch
from llava_accel.tasks import synthetic_samples

SMALL = TinySpec(patch_size=16, vision_hidden=32, vision_layers=2, text_hidden=32, text_layers=1, text_heads=2)


@pytest.fixture(scope="module")
def small():
    return build(SMALL, seed=0)


def test_training_prompt_is_tokenized_as_at_inference(small):
    _, processor = small
    samples = [s for t in ("synthetic-coco", "synthetic-textvqa", "synthetic-scienceqa")
               for s in synthetic_samples(t, 1, seed=5)]
    batch = encode_for_training(processor, samples)
    tok = processor.tokenizer
    for row, s in enumerate(samples):
        alone = encode_batch(processor, [s.image], [s.prompt])
        n = alone["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][row, :n], alone["input_ids"][0])
        assert torch.equal(batch["pixel_values"][row], alone["pixel_values"][0])
        # the loss sees exactly the answer and EOS, nothing of the prompt or the padding
        answer = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert answer[-1] == tok.eos_token_id and tok.decode(answer[:-1]).strip() == s.references[0]
        assert (batch["labels"][row, :n] == -100).all()
        assert batch["attention_mask"][row].sum() == n + len(answer)


def test_training_data_is_deterministic_and_never_held_out():
    cfg = TrainConfig(batch_size=4, task_weights={"synthetic-coco": 1, "synthetic-scienceqa": 2})
    assert task_schedule(cfg.task_weights) == ["synthetic-coco", "synthetic-scienceqa", "synthetic-scienceqa"]
    task, a = training_batch(4, cfg)
    _, b = training_batch(4, cfg)
    assert task == "synthetic-scienceqa" and [s.id for s in a] == [s.id for s in b] and len(a) == 4
    assert all(int(s.id.split("/")[1]) >= TRAIN_SEED_BASE > HELDOUT_SEED for s in a)
    assert [s.id for s in training_batch(4, TrainConfig(seed=1, batch_size=4))[1]] != [s.id for s in a]


def test_scores_are_the_library_metrics():
    coco = synthetic_samples("synthetic-coco", 2, seed=3)
    words = [s.references[0].split() for s in coco]
    # one substitution in the first caption, the second exact: WER = 1 / reference words (percent)
    preds = [" ".join(["zzz"] + words[0][1:]), coco[1].references[0].upper() + "."]
    assert score(coco, preds)["wer"] == pytest.approx(100 / (len(words[0]) + len(words[1])))
    sqa = synthetic_samples("synthetic-scienceqa", 3, seed=3)
    wrong = next(c for c in "ABCDE" if c != sqa[2].references[0])
    got = score(sqa, [sqa[0].references[0], sqa[1].references[0], wrong])
    assert got["accuracy"] == pytest.approx(2 / 3) and got["wer"] == pytest.approx(100 / 3)
    vqa = synthetic_samples("synthetic-textvqa", 2, seed=3)
    assert score(vqa, [vqa[0].references[0], "zzz"])["vqa_accuracy"] == pytest.approx(0.5)


def test_a_few_steps_lower_the_loss_and_are_reproducible():
    cfg = TrainConfig(steps=12, batch_size=8, warmup=2, lr=3e-3, vision_lr=3e-3, eval_every=1000,
                      final_eval_samples=2, threads=1, task_weights={"synthetic-textvqa": 1})
    lines = []
    model, _, history = train(cfg, SMALL, log=lambda *a, **k: lines.append(a[0]))
    loss = history["loss"]
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3 - 1.0  # nats per answer token
    assert any("ETA" in line for line in lines) and any(line.startswith("final held-out") for line in lines)
    again, _, history2 = train(cfg, SMALL, log=lambda *a, **k: None)
    assert history2["loss"] == loss
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), again.state_dict().values()))


def test_script_writes_a_loadable_model_with_card(tmp_path, capsys):
    from llava_accel.models.loading import load_model

    main(["--out", str(tmp_path), "--steps", "2", "--batch-size", "2", "--final-eval-samples", "2",
          "--threads", "1", "--spec", json.dumps(asdict(SMALL))])
    assert "ETA" in capsys.readouterr().out
    marker = json.loads((tmp_path / "llava_accel.json").read_text())
    assert marker["weights"] == "tiny-trained" and marker["train"]["steps"] == 2
    assert "## Scores" in (tmp_path / "README.md").read_text()
    loaded = load_model(str(tmp_path), torch.device("cpu"), torch.float32)
    assert loaded.weights == "tiny-trained"
