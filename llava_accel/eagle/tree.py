"""The draft tree (EAGLE-2): which drafted tokens to verify, their attention mask and positions, and acceptance.

Pure tensor functions on a batch, so that each row can have its own tree shape and its own accepted length.
A tree has ``n`` nodes per row; node 0 is the root (the last accepted token, not yet in the target's KV cache),
and nodes are sorted so that every parent comes before its children.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Reranking prefers the shallower node on equal scores, so the kept nodes always include their ancestors: a
# child's score (parent's score + a log-probability <= 0) minus DEPTH_TIEBREAK x depth is strictly below its parent's.
DEPTH_TIEBREAK = 1e-4


@dataclass
class Tree:
    tokens: torch.Tensor  # (batch, n) long
    parents: torch.Tensor  # (batch, n) long, index of each node's parent; the root is its own parent
    depths: torch.Tensor  # (batch, n) long, root 0: the node's position is the root's position + depth
    mask: torch.Tensor  # (batch, n, n) bool, mask[b, i, j]: node j is node i or one of its ancestors
    chain: bool = False  # node i + 1 is the child of node i: acceptance and compaction take shortcuts

    def positions(self, root_positions: torch.Tensor) -> torch.Tensor:
        """Tree position ids: the root's position plus the depth (siblings share a position)."""
        return root_positions[:, None] + self.depths


def ancestor_mask(parents: torch.Tensor, max_depth: int) -> torch.Tensor:
    """(batch, n, n) bool: each node sees itself and its ancestors, found by following parents ``max_depth`` times."""
    batch, n = parents.shape
    mask = torch.eye(n, dtype=torch.bool, device=parents.device).repeat(batch, 1, 1)
    hop = parents
    for _ in range(max_depth):
        mask.scatter_(2, hop[..., None], True)
        hop = parents.gather(1, hop)
    return mask


def select_tree(root: torch.Tensor, tokens: torch.Tensor, scores: torch.Tensor, parents: torch.Tensor,
                depths: torch.Tensor, total: int, max_depth: int) -> Tree:
    """Keep the ``total`` best drafted candidates of each row (by cumulative log-probability) as a tree under
    ``root`` (batch,). Candidates are given in drafting order (parents first); ``parents`` holds each candidate's
    parent as 1 + its candidate index, 0 for a child of the root."""
    key = scores - DEPTH_TIEBREAK * depths
    keep = key.topk(total, dim=1).indices.sort(dim=1).values  # drafting order keeps parents before children
    batch = root.shape[0]
    # candidate index + 1 -> node index (the root is node 0)
    node_of = torch.zeros(batch, tokens.shape[1] + 1, dtype=torch.long, device=root.device)
    node_of.scatter_(1, keep + 1, torch.arange(1, total + 1, device=root.device).expand(batch, total))
    zero = torch.zeros(batch, 1, dtype=torch.long, device=root.device)
    node_parents = torch.cat([zero, node_of.gather(1, parents.gather(1, keep))], 1)
    return Tree(tokens=torch.cat([root[:, None], tokens.gather(1, keep)], 1), parents=node_parents,
                depths=torch.cat([zero, depths.gather(1, keep)], 1),
                mask=ancestor_mask(node_parents, max_depth))


def chain_tree(root: torch.Tensor, tokens: torch.Tensor) -> Tree:
    """The tree of a chain: ``root`` (batch,) followed by ``tokens`` (batch, n), each node the child of the previous."""
    batch, n = tokens.shape[0], tokens.shape[1] + 1
    order = torch.arange(n, device=root.device)
    return Tree(tokens=torch.cat([root[:, None], tokens], 1), parents=(order - 1).clamp(min=0).expand(batch, n),
                depths=order.expand(batch, n),
                mask=torch.ones(n, n, dtype=torch.bool, device=root.device).tril().expand(batch, n, n), chain=True)


def accept(tree: Tree, target: torch.Tensor, max_depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy acceptance. ``target``: (batch, n) the target's greedy token after each node.

    A node is accepted when its token is the target's choice after its parent and its parent is accepted; at most
    one child of a node can match, so the accepted nodes form one path from the root. Returns ``path`` (batch,
    max_depth + 1), the accepted nodes in depth order (the first ``counts[b]`` entries of row b are meaningful), and
    ``counts`` (batch,), accepted nodes including the root = tokens emitted this step (the target's choices at the
    path's nodes: the accepted drafts plus one bonus token)."""
    if tree.chain:  # the drafts agree with the target up to the first miss; the path is the nodes in order
        n = tree.tokens.shape[1]
        counts = 1 + (tree.tokens[:, 1:] == target[:, :-1]).cumprod(1).sum(1)
        return torch.arange(n, device=target.device).expand(target.shape[0], n), counts
    ok = tree.tokens == target.gather(1, tree.parents)
    ok[:, 0] = True
    accepted = ok
    for _ in range(max_depth):
        accepted = ok & accepted.gather(1, tree.parents)
    deepest = (accepted * (tree.depths + 1)).argmax(1)
    counts = tree.depths.gather(1, deepest[:, None])[:, 0] + 1
    n = tree.tokens.shape[1]
    on_path = tree.mask.gather(1, deepest[:, None, None].expand(-1, 1, n))[:, 0]
    order = torch.arange(n, device=target.device)
    path = torch.where(on_path, order, order + n).argsort(1)[:, :max_depth + 1]
    return path, counts
