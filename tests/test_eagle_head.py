"""The draft head: save/load round trip, a head for another target (or none) is a one-line error, a random head is
still lossless (only slower), and the trainer's data, loss and output."""

import pytest
import torch

import llava_accel as la
from llava_accel.eagle.head import DEFAULT_HEAD, HeadConfig, HeadError, fingerprint, load_head, new_head, save_head
from llava_accel.eagle.sizing import AcceptanceProfile, candidate_trees, tree_key
from llava_accel.eagle.train import Example, _batch, eagle_loss
from llava_accel.models.tiny import build_tiny_llava
from llava_accel.tasks import synthetic_samples


@pytest.fixture(scope="module")
def eager():
    return la.load_backend("eager", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """Same architecture and vocabulary as the default model, other weights."""
    path = tmp_path_factory.mktemp("other")
    build_tiny_llava(path, seed=5)
    return str(path)


def _config(model, **training):
    text = model.config.text_config
    return HeadConfig("default", fingerprint(model.lm_head), text.hidden_size, text.vocab_size, training)


def test_save_load_round_trip(eager, tmp_path):
    head = new_head(eager.model, seed=3)
    save_head(head, _config(eager.model, note="round trip"), tmp_path)
    loaded, config = load_head(tmp_path, eager.model, eager.loaded.model_id)
    assert config.training == {"note": "round trip"} and config.target == "default"
    saved, back = head.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
    x = torch.randn(1, 3, head.config.hidden_size)
    allowed = torch.ones(1, 3, 3, dtype=torch.bool).tril()
    with torch.no_grad():
        assert torch.equal(head(x, x, torch.arange(3)[None], allowed), loaded(x, x, torch.arange(3)[None], allowed))


def test_head_of_another_target_is_a_one_line_error(other_model):
    with pytest.raises(HeadError) as err:
        la.load_backend("eagle", model=other_model, device="cpu", dtype="float32", head=DEFAULT_HEAD)
    msg = str(err.value)
    assert "was trained for 'default'" in msg and "eagle-train --model" in msg and "\n" not in msg


def test_missing_head_says_how_to_train_one(other_model, tmp_path):
    with pytest.raises(HeadError, match=r"needs a draft head for .*llava-accel eagle-train --model"):
        la.load_backend("eagle", model=other_model, device="cpu", dtype="float32")
    with pytest.raises(HeadError, match="no EAGLE head at"):
        la.load_backend("eagle", device="cpu", dtype="float32", head=str(tmp_path))


def test_random_head_is_lossless_only_slower(eager, tmp_path, mixed_batch):
    save_head(new_head(eager.model, seed=1), _config(eager.model), tmp_path)
    images, prompts = mixed_batch
    expected = [o.token_ids for o in eager.generate(images, prompts, max_new_tokens=16)]
    taus = []
    for head in (str(tmp_path), DEFAULT_HEAD):
        backend = la.load_backend("eagle", device="cpu", dtype="float32", head=head)
        assert [o.token_ids for o in backend.generate(images, prompts, max_new_tokens=16)] == expected
        taus.append(backend.stats()["mean_acceptance_length"])
    assert 1.0 <= taus[0] < taus[1]


def test_batch_masks_answer_positions():
    h = 4
    ex = Example(torch.randn(6, h), torch.randn(6, h), answer_start=3)  # prompt 0-2, answer 3-5 (5 = EOS)
    short = Example(torch.randn(5, h), torch.randn(5, h), answer_start=2)
    batch = _batch([ex, short], torch.device("cpu"))
    assert batch["embeds"].shape == (2, 5, h)
    assert torch.equal(batch["embeds"][0], ex.embeds[1:]) and torch.equal(batch["features"][0], ex.features[:-1])
    assert torch.equal(batch["targets"][0], ex.features[1:])
    # outputs 2 and 3 predict the features at answer tokens 3 and 4; the feature at EOS predicts nothing we draft
    assert batch["loss_mask"].tolist() == [[False, False, True, True, False], [False, True, True, False, False]]
    assert batch["allowed"][1, 3].tolist() == [True] * 4 + [False]  # real queries never see padding
    assert batch["allowed"][0].tolist() == torch.ones(5, 5, dtype=torch.bool).tril().tolist()


def test_loss_of_a_perfect_prediction_is_the_target_entropy():
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(4, 7, bias=False)
    batch = _batch([Example(torch.randn(6, 4), torch.randn(6, 4), answer_start=2)], torch.device("cpu"))
    perfect = lambda embeds, features, positions, allowed: batch["targets"]  # noqa: E731
    loss, top1 = eagle_loss(perfect, lm_head, batch, noise=0.0, ce_weight=0.1)
    p = torch.softmax(lm_head(batch["targets"][batch["loss_mask"]]), -1)
    entropy = -(p * p.log()).sum(-1).mean()
    assert loss.item() == pytest.approx(0.1 * entropy.item(), rel=1e-5) and top1.item() == 1.0


def test_trainer_writes_a_head_for_its_target(tmp_path, capsys):
    from llava_accel.cli import main

    code = main(["eagle-train", "--out", str(tmp_path), "--task", "synthetic-coco", "--samples", "6", "--epochs", "2",
                 "--max-new-tokens", "8", "--profile-samples", "1"])
    assert code == 0 and "6 examples, 2 steps" in capsys.readouterr().out
    profile = AcceptanceProfile.load(tmp_path)  # one tau per candidate tree, from one held-out prompt
    assert profile.data["samples"] == 1 and set(profile.taus) == {tree_key(t) for t in candidate_trees()}
    backend = la.load_backend("eagle", device="cpu", dtype="float32", head=str(tmp_path), tree="auto")
    assert backend.describe()["tree_mode"] == "auto" and 1 in backend.describe()["trees"]
    training = backend.head_config.training
    assert backend.head_config.target == "default" and training["tasks"] == ["synthetic-coco"]
    assert training["examples"] == 6 and training["loss"] > 0 and 0 <= training["top1"] <= 1
    sample = synthetic_samples("synthetic-coco", 1, seed=2)[0]
    assert backend.generate([sample.image], [sample.prompt], max_new_tokens=4)[0].token_ids


def test_trainer_rejects_unknown_task_before_loading(capsys):
    from llava_accel.cli import main

    assert main(["eagle-train", "--out", "unused", "--task", "synthetic-coco,nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_grouped_kv_heads_and_unfused_projections_are_lossless(tmp_path, monkeypatch, mixed_batch):
    """A random 4-layer model with 2 key/value heads for 4 query heads, its projections read unfused (the path
    large models take), a random head: still exactly eager's tokens."""
    from llava_accel.lean import layer
    from llava_accel.models import architecture, tiny

    spec = tiny.TinySpec(text_layers=4)
    tokenizer = tiny.build_tokenizer(tiny.default_corpus(n=100), spec.vocab_size)
    config = tiny.tiny_config(spec, tokenizer)
    config.text_config.num_key_value_heads = 2
    model = architecture.build_model(config, device="cpu", seed=3)
    tiny.save_tiny(tmp_path / "gqa", model, tiny.build_processor(tokenizer, spec), {"weights": "tiny-random"})
    save_head(new_head(model, seed=4), _config(model), tmp_path / "head")
    monkeypatch.setattr(layer, "FUSE_MAX_HIDDEN", 0)
    options = {"model": str(tmp_path / "gqa"), "device": "cpu", "dtype": "float32"}
    eagle = la.load_backend("eagle", head=str(tmp_path / "head"), tree="chain", depth=3, **options)
    assert len(eagle.decoder._target_w[0].qkv) == 3 and eagle.model.config.text_config.num_key_value_heads == 2
    images, prompts = mixed_batch
    expected = la.load_backend("eager", **options).generate(images, prompts, max_new_tokens=12, min_new_tokens=12)
    got = eagle.generate(images, prompts, max_new_tokens=12, min_new_tokens=12)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
