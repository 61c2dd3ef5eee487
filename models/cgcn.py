"""C-GCN (Sec. 4.3): m steps of semantic reasoning over a target node TA and n
multigranularity nodes MG_1..MG_n, each step followed by the fixation refine layer.

Every node is a ``c x h x w`` class-map tensor. With ``R`` the reshape to ``c x hw``:
- Eq. 10: ``F(h_a, h_b) = R(Conv1x1(h_a))^T @ R(Conv1x1(h_b))`` (an ``hw x hw`` affinity);
- Eq. 9: ``e_{a,b} = softmax(F(h_a, h_b)^T)``, normalised over node b's positions (the
  dimension the message sums over; the only reading under which Eq. 11 is an
  attention-weighted average);
- Eq. 11 / 12: ``h_a <- R^-1( h_a * sigma( sum_{b != a} R(h_b) @ e_{a,b} ) )``. TA
  receives from every MG node, each MG node from TA and the other MG nodes, so every
  node receives from every other node;
- Eq. 13-14: :func:`factory.method.equations.fixation_refine` on every node after every step.

All nodes update from the states of the previous step (a synchronous update).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from factory.method.equations import fixation_refine
from models.config import NEW_LAYER_INIT_STD, CGCNConfig


def node_messages(states: torch.Tensor, keys: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """Summed messages into every node (Eq. 9-12 before the sigmoid gate).

    ``states`` (B, N, c, L) are ``R(h)``; ``keys`` (B, N, c, L) are ``R(Conv1x1(h))``.
    Returns (B, N, c, L): for node a, ``sum_{b != a} R(h_b) @ e_{a,b}``. The N (N - 1)
    ordered pairs run as one batched attention (no work on a node's pair with itself).
    ``fused`` runs it as ``scaled_dot_product_attention`` on 4-D inputs, so the fused
    kernels run (cuDNN / flash on GPU, flash on CPU; the (hw x hw) edge matrix is never
    written out): 20x faster than the math path on an H100; on the 2-core CPU, 3 nodes of
    32 frames, 4 channels at 16 x 16, 5x faster in inference and 3x with the backward
    pass (at 7 x 7 the two are equal). When training on a CPU it runs in float64
    (:func:`slow_cpu_backward` says why). ``fused=False`` is the plain softmax-matmul,
    the reference form (the two agree to ~1e-6).
    """
    b, n, c, length = states.shape
    src, dst = zip(*[(j, i) for i in range(n) for j in range(n) if i != j], strict=True)
    src_t = torch.tensor(src, device=states.device)
    dst_t = torch.tensor(dst, device=states.device)
    pairs = len(src)
    k_dst = keys[:, dst_t].transpose(-1, -2).reshape(b * pairs, length, c)  # p of node a
    k_src = keys[:, src_t].transpose(-1, -2).reshape(b * pairs, length, c)  # q of node b
    h_src = states[:, src_t].transpose(-1, -2).reshape(b * pairs, length, c)
    # softmax(k_dst @ k_src^T) @ h_src: e_{a,b} (normalised over q) applied to R(h_b),
    # an unscaled attention.
    if fused:
        # The flash / memory-efficient kernels want a head size that is a multiple of 8;
        # zero channels change no dot product and give zero output columns (dropped).
        # Under autocast the inputs go in its dtype (bf16), the flash kernels' own.
        pad = (-c) % 8
        dtype = (
            torch.get_autocast_dtype(states.device.type)
            if torch.is_autocast_enabled(states.device.type)
            else states.dtype
        )
        if slow_cpu_backward(states, dtype):
            dtype = torch.float64  # the result goes back to states.dtype below
        # (4-D: the fused kernels take (batch, heads, length, dim) only.)
        # Contiguous: on CPU a strided input (the transposed reshape above, when no pad
        # copies it) sends the kernel down a path ~9x slower than this one.
        q, k, v = (
            F.pad(x, (0, pad)).to(dtype)[:, None].contiguous() for x in (k_dst, k_src, h_src)
        )
        msg = F.scaled_dot_product_attention(q, k, v, scale=1.0)[:, 0, :, :c].to(states.dtype)
    else:
        msg = torch.bmm(torch.softmax(torch.bmm(k_dst, k_src.transpose(1, 2)), dim=-1), h_src)
    msg = msg.reshape(b, pairs, length, c)  # into a, from b
    out = torch.zeros(b, n, length, c, dtype=msg.dtype, device=msg.device)
    out.index_add_(1, dst_t, msg)
    return out.transpose(-1, -2)


INITS = ("identity", "normal")


def init_class_map_conv(conv: nn.Conv2d, init: str) -> None:
    """Initialise a square 1x1 conv that reads class maps: ``identity`` (weight = I, bias
    0: the layer starts as a pass-through, so Eq. 10 starts as the class maps' own
    spatial affinity ``R(h_a)^T R(h_b)``) or ``normal`` (normal(0, 0.01), bias 0: the
    authors' value for every new layer)."""
    if init not in INITS:
        raise ValueError(f"init {init!r}: one of {', '.join(INITS)}")
    if init == "identity":
        with torch.no_grad():
            conv.weight.copy_(torch.eye(conv.out_channels, conv.in_channels)[..., None, None])
    else:
        nn.init.normal_(conv.weight, std=NEW_LAYER_INIT_STD)
    nn.init.zeros_(conv.bias)


class CGCN(nn.Module):
    """Conservative GCN: ``forward(nodes)`` with nodes (B, 1 + n, c, h, w), node 0 = TA,
    returns the node states after m steps, same shape.

    >>> g = CGCN(channels=4, cfg=CGCNConfig(steps=2, nodes=2))
    >>> tuple(g(torch.rand(1, 3, 4, 5, 5)).shape)
    (1, 3, 4, 5, 5)
    """

    def __init__(self, channels: int, cfg: CGCNConfig, init: str = "normal") -> None:
        super().__init__()
        self.cfg = cfg
        # One Conv1x1 of Eq. 10 per reasoning step (the step's own edge weights).
        self.affinity_convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 1) for _ in range(cfg.steps)
        )
        for conv in self.affinity_convs:
            init_class_map_conv(conv, init)

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        b, n, c, h, w = nodes.shape
        if n != 1 + self.cfg.nodes:
            raise ValueError(f"C-GCN built for 1 + {self.cfg.nodes} nodes, got {n}")
        for conv in self.affinity_convs:
            keys = conv(nodes.reshape(b * n, c, h, w)).reshape(b, n, c, h * w)
            states = nodes.reshape(b, n, c, h * w)
            gated = states * torch.sigmoid(node_messages(states, keys))
            nodes = fixation_refine(gated.reshape(b, n, c, h, w), self.cfg.td, self.cfg.tr)
        return nodes


def slow_cpu_backward(states: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the attention's backward pass would run on the CPU in float32, where it
    is slow on these logits: Eq. 9's attention is unscaled, so on trained class maps
    ``logit - logsumexp`` reaches -87..-104, where float32's ``exp`` gives denormals
    and the CPU's vectorised ``exp`` falls to a path ~8x slower (measured on the 2-core
    Xeon: 1e7 such values 0.22 s against 0.03 s for values in -80..0). In float64 these
    are ordinary numbers. One attention of the STA+ students' shape (96 pairs, 484
    positions, 28 channels), forward and backward on such logits: 0.40-0.48 s in
    float32, 0.15 s in float64; an STA+ epoch of the tests' training corpus 14 s ->
    10 s. The forward pass alone is not affected (0.03 s either way), so inference
    stays in float32, as does everything on a GPU."""
    return states.device.type == "cpu" and dtype == torch.float32 and torch.is_grad_enabled()
