"""The pieces of EAGLE decoding on hand-built inputs: draft tree selection, mask and positions, greedy acceptance,
slot-cache compaction, and the plain-function decoder layer against transformers' own."""

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from llava_accel.lean.cache import SlotCache
from llava_accel.lean.layer import decoder_layer, layer_weights, rope
from llava_accel.eagle.tree import accept, ancestor_mask, chain_tree, select_tree

# Candidates in drafting order (parents first): depth 1 = a, b (children of the root); depth 2 = children of a
# (c, d) and of b (e, f). Parents are 1 + candidate index, 0 = the root.
A, B, C, D, E, F_, ROOT = 10, 11, 12, 13, 14, 15, 7
TOKENS = torch.tensor([[A, B, C, D, E, F_]])
SCORES = torch.tensor([[-0.1, -1.0, -0.3, -2.0, -1.5, -3.0]])
PARENTS = torch.tensor([[0, 0, 1, 1, 2, 2]])
DEPTHS = torch.tensor([[1, 1, 2, 2, 2, 2]])


def hand_tree(batch=1):
    return select_tree(torch.tensor([ROOT] * batch), TOKENS.repeat(batch, 1), SCORES.repeat(batch, 1),
                       PARENTS.repeat(batch, 1), DEPTHS.repeat(batch, 1), total=4, max_depth=2)


def test_select_keeps_best_nodes_in_drafting_order_with_mask_and_positions():
    tree = hand_tree()
    # best four by score: a (-0.1), c (-0.3), b (-1.0), e (-1.5); drafting order a, b, c, e
    assert tree.tokens.tolist() == [[ROOT, A, B, C, E]]
    assert tree.parents.tolist() == [[0, 0, 0, 1, 2]]
    assert tree.depths.tolist() == [[0, 1, 1, 2, 2]]
    expected = torch.tensor([[1, 0, 0, 0, 0],   # root sees itself
                             [1, 1, 0, 0, 0],   # a: root, a
                             [1, 0, 1, 0, 0],   # b: root, b
                             [1, 1, 0, 1, 0],   # c: root, a, c
                             [1, 0, 1, 0, 1]], dtype=torch.bool)  # e: root, b, e
    assert torch.equal(tree.mask[0], expected)
    assert tree.positions(torch.tensor([40])).tolist() == [[40, 41, 41, 42, 42]]


def test_equal_scores_still_keep_every_parent():
    # a child with log-probability 0 ties its parent; the parent must win the tie
    tree = select_tree(torch.tensor([ROOT]), torch.tensor([[A, B, C]]), torch.tensor([[-1.0, -0.5, -1.0]]),
                       torch.tensor([[0, 0, 1]]), torch.tensor([[1, 1, 2]]), total=2, max_depth=2)
    assert tree.tokens.tolist() == [[ROOT, A, B]]
    tree = select_tree(torch.tensor([ROOT]), torch.tensor([[A, B, C]]), torch.tensor([[-0.5, -1.0, -0.5]]),
                       torch.tensor([[0, 0, 1]]), torch.tensor([[1, 1, 2]]), total=2, max_depth=2)
    assert tree.tokens.tolist() == [[ROOT, A, C]] and tree.parents.tolist() == [[0, 0, 1]]


def test_ancestor_mask_of_a_chain():
    mask = ancestor_mask(torch.tensor([[0, 0, 1, 2]]), max_depth=3)
    assert torch.equal(mask[0], torch.ones(4, 4, dtype=torch.bool).tril())


def test_acceptance_per_row():
    tree = hand_tree(batch=3)
    # target's greedy token after each node [root, a, b, c, e]; X = a token nobody drafted
    X = 99
    target = torch.tensor([[A, C, X, X, X],     # root -> a (ok) -> c (ok) -> bonus X: 3 tokens
                           [B, X, X, X, X],     # root -> b (ok); b -> X, but e was drafted: 2 tokens
                           [X, C, E, X, X]])    # root -> X: nothing drafted matches: bonus only
    path, counts = accept(tree, target, max_depth=2)
    assert counts.tolist() == [3, 2, 1]
    assert path[0].tolist() == [0, 1, 3] and path[1, :2].tolist() == [0, 2] and path[2, 0] == 0
    emitted = [target[b].gather(0, path[b, :counts[b]]).tolist() for b in range(3)]
    assert emitted == [[A, C, X], [B, X], [X]]


def test_compaction_moves_accepted_entries_behind_each_rows_prefix():
    cache = SlotCache(layers=2, batch=2, kv_heads=1, head_dim=1, capacity=12, dtype=torch.float32,
                      device=torch.device("cpu"))
    prefix = torch.arange(2 * 1 * 4, dtype=torch.float32).view(2, 1, 4, 1)
    cache.load([prefix, prefix + 100], [prefix + 1000, prefix + 1100], start=torch.tensor([0, 1]))
    cache.lens = torch.tensor([4, 3])  # row 1 holds one entry less (it accepted less before)
    cache.begin = 4
    new = torch.tensor([[50., 51., 52., 53.], [60., 61., 62., 63.]]).view(2, 1, 4, 1)
    for layer in range(2):
        k, v = cache.update(new + 100 * layer, new + 1000 + 100 * layer, layer)
        assert k.shape[2] == 8  # the prefix and the new entries
    # row 0 keeps new entries 0, 2, 3 (in that order); row 1 keeps entry 0 only
    cache.compact(torch.tensor([[0, 2, 3], [0, 1, 1]]), torch.tensor([3, 1]))
    assert cache.lens.tolist() == [7, 4] and cache.begin == 7
    assert cache.keys[0, 0, 0, :7, 0].tolist() == [0, 1, 2, 3, 50, 52, 53]
    assert cache.keys[1, 0, 0, 4:7, 0].tolist() == [150, 152, 153]
    assert cache.keys[0, 1, 0, 1:4, 0].tolist() == [5, 6, 60]
    assert cache.values[1, 1, 0, 3, 0] == 1160
    assert cache.prefix_mask().tolist() == [[True] * 7, [False, True, True, True, False, False, False]]
    cache.compact(torch.zeros(2, 1, dtype=torch.long), torch.tensor([0, 1]))  # a finished row keeps nothing
    assert cache.lens.tolist() == [7, 5]


@pytest.mark.parametrize("lens", [[6, 6], [6, 4]])
def test_in_order_compaction_equals_the_general_one(lens):
    """``in_order`` (a chain's path, a head feed) skips the move where every row's entries end at ``begin``; the
    cache must be the one the general gather/scatter makes, also where rows differ and it must move them."""
    caches = []
    for in_order in (False, True):
        cache = SlotCache(layers=1, batch=2, kv_heads=1, head_dim=1, capacity=12, dtype=torch.float32,
                          device=torch.device("cpu"))
        cache.kv.zero_()
        cache.lens, cache.begin = torch.tensor(lens), 6
        cache.update(torch.arange(8.).view(2, 1, 4, 1), torch.arange(8.).view(2, 1, 4, 1) + 10, 0)
        cache.compact(torch.arange(4).expand(2, 4), torch.tensor([3, 1]), in_order=in_order)
        caches.append(cache)
    assert torch.equal(caches[0].kv, caches[1].kv)
    assert caches[0].lens.tolist() == caches[1].lens.tolist() == [lens[0] + 3, lens[1] + 1]
    assert caches[0].begin == caches[1].begin


def test_chain_tree_is_a_path_with_a_causal_mask():
    tree = chain_tree(torch.tensor([7, 8]), torch.tensor([[1, 2, 3], [4, 5, 6]]))
    assert tree.tokens.tolist() == [[7, 1, 2, 3], [8, 4, 5, 6]]
    assert tree.parents[0].tolist() == [0, 0, 1, 2] and tree.depths[1].tolist() == [0, 1, 2, 3]
    assert torch.equal(tree.mask[1], torch.ones(4, 4, dtype=torch.bool).tril())
    path, counts = accept(tree, torch.tensor([[1, 2, 9, 9], [4, 9, 9, 9]]), max_depth=3)
    assert counts.tolist() == [3, 2] and path[0, :3].tolist() == [0, 1, 2]


def test_plain_layer_equals_transformers_layer_with_grouped_kv_heads():
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=1)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    layer, rotary = LlamaDecoderLayer(config, 0).eval(), LlamaRotaryEmbedding(config)
    x = torch.randn(2, 5, 64)
    positions = torch.tensor([[3, 4, 4, 5, 6], [0, 1, 2, 3, 3]])
    allowed = torch.rand(2, 1, 5, 5) > 0.3
    allowed |= torch.eye(5, dtype=torch.bool)
    with torch.no_grad():
        expected = layer(x, attention_mask=allowed, position_embeddings=rotary(x, positions))
        for fuse in (True, False):
            got = decoder_layer(layer_weights(layer, fuse=fuse), x, rope(rotary, x, positions), allowed)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
