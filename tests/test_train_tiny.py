"""The training script of the embedded default: its data, its loss mask, its metrics, and a few real steps."""

import json
from dataclasses import asdict

import pytest
import torch

from llava_accel.models.tiny import TinySpec
from llava_accel.models.train_tiny import (HELDOUT_SEED, TRAIN_SEED_BASE, Phase, TrainConfig, build,
                                           encode_for_training, lr_factor, main, optimizer_for, score, set_lr,
                                           task_schedule, train, training_batch)
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
    cfg = TrainConfig(batch_size=4, phases=(Phase(10, {"synthetic-coco": 1, "synthetic-scienceqa": 2}),))
    assert task_schedule(cfg.phases[0].task_weights) == ["synthetic-coco", "synthetic-scienceqa", "synthetic-scienceqa"]
    task, a = training_batch(4, cfg)
    _, b = training_batch(4, cfg)
    assert task == "synthetic-scienceqa" and [s.id for s in a] == [s.id for s in b] and len(a) == 4
    assert all(int(s.id.split("/")[1]) >= TRAIN_SEED_BASE > HELDOUT_SEED for s in a)
    assert [s.id for s in training_batch(4, TrainConfig(seed=1, batch_size=4))[1]] != [s.id for s in a]


def test_phases_switch_the_mix_fade_the_colour_hints_and_restart_the_learning_rate():
    sqa = {"synthetic-scienceqa": 1}
    cfg = TrainConfig(batch_size=8, warmup=2, phases=(Phase(4, {"synthetic-coco": 1}), Phase(
        5, sqa, lr=1e-3, vision_lr=5e-4, colour_hints=(1.0, 0.0))))
    assert cfg.total_steps == 9 and cfg.phase_at(3) == (cfg.phases[0], 3) and cfg.phase_at(4) == (cfg.phases[1], 0)
    assert TrainConfig(steps=6, phases=cfg.phases).total_steps == 6
    with pytest.raises(IndexError):
        cfg.phase_at(9)
    assert training_batch(3, cfg)[0] == "synthetic-coco" and training_batch(4, cfg)[0] == "synthetic-scienceqa"

    def named(step):  # prompts whose context names the shape's colour (the answer's option)
        return sum(s.fields["choices"][ord(s.references[0]) - 65] in s.prompt.split("\n")[0]
                   for s in training_batch(step, cfg)[1])
    assert named(4) == 8 and named(8) == 0  # every context names it at the phase's start, none at its end
    # the images and answers are those of the same seed without hints: only the context changes
    plain = synthetic_samples("synthetic-scienceqa", 8, seed=TRAIN_SEED_BASE + 4)
    hinted = training_batch(4, cfg)[1]
    assert [s.references for s in plain] == [s.references for s in hinted]
    assert all(a.image.tobytes() == b.image.tobytes() and a.prompt != b.prompt for a, b in zip(plain, hinted))
    # each phase has its own warm-up and cosine decay, and the vision group its own rate
    opt = optimizer_for(torch.nn.Linear(2, 2), cfg)
    rates = []
    for step in range(9):
        set_lr(opt, step, cfg)
        rates.append([g["lr"] for g in opt.param_groups])
    assert rates[3][1] == pytest.approx(2e-3 * cfg.min_lr_ratio)  # the first phase decayed to its floor
    assert rates[4] == [5e-4 * lr_factor(0, 5, cfg), 1e-3 * lr_factor(0, 5, cfg)]  # warm-up again
    assert rates[8][1] == pytest.approx(1e-3 * cfg.min_lr_ratio)


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
    cfg = TrainConfig(batch_size=8, warmup=2, eval_every=1000, final_eval_samples=2, threads=1,
                      phases=(Phase(12, {"synthetic-textvqa": 1}, lr=3e-3, vision_lr=3e-3),))
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
