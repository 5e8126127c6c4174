"""The draft tree sized to the machine: the choice is a pure function of measured costs and the head's acceptance
profile (tested with injected costs), the costs are measured once per machine/model/dtype/batch and cached, an
explicit tree wins, and describe() says what was chosen and why."""

import pytest
import torch

import llava_accel as la
from llava_accel.eagle import sizing
from llava_accel.eagle.decoding import TreeConfig
from llava_accel.eagle.sizing import AcceptanceProfile, CycleCosts, candidate_trees, choose_tree, tree_key

PROFILE = AcceptanceProfile({"1,1,1": 1.8, "3,1,3": 3.0, "6,2,10": 4.5, "6,4,24": 4.6, "2,2,4": 2.6})


def costs(verify_per_node: float, round_ms: float = 0.3, batch: int = 1, threads: int = 1) -> CycleCosts:
    """Verification of n nodes = 2 ms + n x verify_per_node; every top-k costs the same per round."""
    return CycleCosts(batch, threads, draft_ms={k: 0.2 for k in (1, 2, 3, 4)}, round_ms={k: round_ms for k in (1, 2, 3, 4)},
                      verify_ms={n: 2.0 + verify_per_node * n for n in (1, 2, 4, 8, 16, 32)}, feed_ms=0.3)


def test_choice_is_the_best_tokens_per_second_of_the_profile():
    for c in (costs(0.0), costs(0.05), costs(0.5), costs(0.05, round_ms=3.0)):
        choice = choose_tree(c, PROFILE)
        best = max(PROFILE.trees(), key=lambda item: item[1] / c.cycle_ms(item[0]))
        assert choice.tree == best[0] and choice.tau == best[1]
        assert choice.cycle_ms == pytest.approx(c.cycle_ms(choice.tree))
        assert choice.expected_speedup == pytest.approx(choice.tau * c.verify(1) / choice.cycle_ms)


def test_cheap_verification_buys_a_wide_tree_and_dear_one_a_small_tree():
    assert tree_key(choose_tree(costs(0.0), PROFILE).tree) == "6,4,24"  # free nodes: the highest tau
    assert tree_key(choose_tree(costs(0.05), PROFILE).tree) == "6,2,10"  # 14 more nodes for 0.1 tau: not worth it
    assert tree_key(choose_tree(costs(0.5), PROFILE).tree) == "3,1,3"  # dear nodes: a chain
    assert tree_key(choose_tree(costs(0.05, round_ms=3.0), PROFILE).tree) == "1,1,1"  # dear head rounds: one token


def test_more_threads_must_win_by_a_margin():
    one, two = costs(0.05, threads=1), costs(0.05, threads=2)
    assert choose_tree([two, one], PROFILE).threads == 1  # equal costs
    two.verify_ms = {n: v * 0.97 for n, v in two.verify_ms.items()}
    assert choose_tree([two, one], PROFILE).threads == 1  # a few percent: within the noise of a shared machine
    two.verify_ms = {n: v / 2 for n, v in two.verify_ms.items()}
    choice = choose_tree([one, two], PROFILE)
    assert choice.threads == 2 and choice.cycle_ms == pytest.approx(two.cycle_ms(choice.tree))


def test_cycle_time_model():
    c = costs(0.1)
    assert c.verify(8) == pytest.approx(2.8) and c.verify(11) == pytest.approx(3.1)  # between measured sizes
    assert c.verify(40) == pytest.approx(6.0)  # beyond: the last slope
    assert c.cycle_ms(TreeConfig(6, 2, 10)) == pytest.approx(0.2 + 5 * 0.3 + c.verify(11) + 0.3)
    assert CycleCosts(**{**c.__dict__, "verify_ms": {"1": 1.0}}).verify(9) == 1.0  # JSON keys are strings


def test_candidate_trees_are_valid_and_distinct():
    trees = candidate_trees()
    keys = [tree_key(t) for t in trees]
    assert len(set(keys)) == len(keys) and "6,2,10" in keys and "1,1,1" in keys
    assert all(t.depth <= t.total_tokens for t in trees)


def test_shipped_head_has_a_profile_of_every_candidate():
    from llava_accel.eagle.head import DEFAULT_HEAD

    profile = AcceptanceProfile.load(DEFAULT_HEAD)
    assert profile is not None and set(profile.taus) == {tree_key(t) for t in candidate_trees()}
    assert all(1.0 <= tau <= int(key.split(",")[0]) + 1 for key, tau in profile.taus.items())


@pytest.fixture
def counted_measure(monkeypatch, tmp_path):
    """A fresh cache folder and a list of the real cost measurements made: (batch, threads)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    real = sizing.measure_costs

    def measure(decoder, batch, threads=None, **kwargs):
        calls.append((batch, threads))
        return real(decoder, batch, threads, budget_s=0.05)

    monkeypatch.setattr("llava_accel.backends.eagle.measure_costs", measure)
    return calls


def test_auto_tree_is_measured_once_cached_and_described(counted_measure, mixed_batch):
    assert la.load_backend("eagle", device="cpu", dtype="float32").describe()["tree_mode"] == "dynamic"  # the default
    assert counted_measure == []
    b = la.load_backend("eagle", device="cpu", dtype="float32", tree="auto")
    options = sizing.thread_options(b.device)
    assert options == sorted({1, torch.get_num_threads()})
    assert counted_measure == [(1, t) for t in options]  # batch 1 at load, at each thread count
    d = b.describe()
    assert d["tree_mode"] == "auto" and d["trees"][1]["threads"] in options
    measured = d["trees"][1]["measured"]
    assert set(measured) == set(options) and all(m["measured_now"] for m in measured.values())
    for threads, m in measured.items():
        assert "batch=1" in m["cache_key"] and "float32" in m["cache_key"] and f"threads={threads}" in m["cache_key"]
    costs = [CycleCosts(**m["costs"]) for m in measured.values()]
    assert all(c.batch == 1 and all(v > 0 for v in c.verify_ms.values()) for c in costs)
    assert {k: v for k, v in d["trees"][1].items() if k != "measured"} == choose_tree(costs, b.profile).as_dict()
    assert d["tree"] == d["trees"][1]["tree"]

    images, prompts = mixed_batch
    threads = torch.get_num_threads()
    b.generate(images, prompts, max_new_tokens=4)
    assert counted_measure == [(n, t) for n in (1, 4) for t in options] and set(b.describe()["trees"]) == {1, 4}
    assert torch.get_num_threads() == threads  # the cycles' thread count is restored after the call
    again = la.load_backend("eagle", device="cpu", dtype="float32", tree="auto")
    again.generate(images, prompts, max_new_tokens=4)
    assert len(counted_measure) == 2 * len(options)  # both batch sizes read from the cache
    assert again.describe()["trees"][4]["measured"] == {
        t: {**m, "measured_now": False} for t, m in b.describe()["trees"][4]["measured"].items()}


def test_explicit_tree_wins(counted_measure):
    b = la.load_backend("eagle", device="cpu", dtype="float32", depth=3)
    assert counted_measure == [] and b.describe()["tree_mode"] == "dynamic"
    assert b.tree_for(4) == TreeConfig(3, 2, 10) and "trees" not in b.describe()
    chain = la.load_backend("eagle", device="cpu", dtype="float32", tree="chain", depth=4)
    assert counted_measure == [] and chain.tree_for(1) == TreeConfig.chain(4)


def test_a_head_without_profile_keeps_the_default_tree_and_says_so(counted_measure, tmp_path):
    import shutil

    from llava_accel.eagle.head import DEFAULT_HEAD

    head = tmp_path / "head"
    shutil.copytree(DEFAULT_HEAD, head)
    (head / sizing.PROFILE_FILE).unlink()
    b = la.load_backend("eagle", device="cpu", dtype="float32", head=str(head), tree="auto")
    assert counted_measure == [] and b.tree_for(1) == TreeConfig()
    assert "no acceptance profile" in b.describe()["tree_reason"]


def test_measuring_leaves_counters_alone_and_acceptance_is_deterministic():
    b = la.load_backend("eagle", device="cpu", dtype="float32", tree="dynamic")
    before = b.stats()
    threads = torch.get_num_threads()
    c = sizing.measure_costs(b.decoder, 2, threads=1, budget_s=0.05)
    assert b.stats() == before and torch.get_num_threads() == threads
    assert c.batch == 2 and c.threads == 1 and c.feed_ms > 0
    from llava_accel.tasks import synthetic_samples
    samples = synthetic_samples("synthetic-coco", 4, seed=3)
    trees = [TreeConfig.chain(1), TreeConfig(4, 2, 6)]
    first = sizing.measure_acceptance(b, samples, trees, batch_size=4, max_new_tokens=8)
    assert first.taus == sizing.measure_acceptance(b, samples, trees, batch_size=2, max_new_tokens=8).taus
    assert 1.0 <= first.taus["1,1,1"] <= 2.0 and first.taus["1,1,1"] <= first.taus["4,2,6"] <= 5.0
    assert b.stats() == before
