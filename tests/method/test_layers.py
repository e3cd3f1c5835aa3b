import torch

from attnseg.method.layers import (
    combine_layers,
    layer_similarity,
    layer_weights,
    reference_affinity,
    resize_self_attention,
    resolution_weights,
)


def test_layer_whose_self_attention_equals_reference_gets_most_weight():
    torch.manual_seed(0)
    feature = torch.randn(1, 16, 8) * 3
    ref = reference_affinity(feature)
    same = ref.clone()
    uniform = torch.full_like(ref, 1 / 16)
    scrambled = ref[:, torch.randperm(16)][:, :, torch.randperm(16)]
    scores = torch.stack([layer_similarity(ref, s) for s in (uniform, same, scrambled)], 1)
    w = layer_weights(scores)
    assert w.argmax().item() == 1
    assert torch.allclose(w.sum(), torch.tensor(1.0))


def test_layer_weights_clip_negative_scores_and_fall_back_to_uniform():
    w = layer_weights(torch.tensor([[2.0, -1.0, 2.0]]))
    assert torch.allclose(w, torch.tensor([[0.5, 0.0, 0.5]]))
    assert torch.allclose(layer_weights(torch.tensor([[-1.0, -2.0]])), torch.tensor([[0.5, 0.5]]))


def test_reference_affinity_rows_sum_to_one_and_channel0_differs():
    feature = torch.randn(2, 9, 4)
    ref = reference_affinity(feature)
    assert torch.allclose(ref.sum(-1), torch.ones(2, 9))
    assert not torch.allclose(ref, reference_affinity(feature, channel0=True))


def test_resize_self_attention_keeps_rows_normalised_and_identity_structure():
    eye = torch.eye(16).unsqueeze(0)  # 4×4 grid, each position attends to itself
    up = resize_self_attention(eye, (4, 4), (8, 8), renormalize=True)
    assert up.shape == (1, 64, 64)
    assert torch.allclose(up.sum(-1), torch.ones(1, 64))
    # A query's mass stays near its own location after resizing.
    q = 3 * 8 + 3
    assert up[0, q].reshape(8, 8)[1:5, 1:5].sum() > 0.9
    raw = resize_self_attention(eye, (4, 4), (8, 8), renormalize=False)
    assert raw[0].sum(-1).mean() > 1.5  # without renormalising, upsampling inflates row mass (about 4×)
    down = resize_self_attention(torch.eye(64).unsqueeze(0), (8, 8), (4, 4), renormalize=True)
    assert down.shape == (1, 16, 16) and torch.allclose(down.sum(-1), torch.ones(1, 16))


def test_combine_layers_normalises_tokens_and_weights_layers():
    a = torch.tensor([[[1.0, 0.0]] * 4])  # B=1, P=4 (2×2), N=2: all mass on token 0
    b = torch.tensor([[[0.0, 1.0]] * 16])  # P=16 (4×4): all on token 1
    out = combine_layers([a, b], [(2, 2), (4, 4)], torch.tensor([[0.75, 0.25]]), (4, 4))
    assert out.shape == (1, 2, 4, 4)
    assert torch.allclose(out[0, 0], torch.full((4, 4), 0.75))
    assert torch.allclose(out.sum(1), torch.ones(1, 4, 4))


def test_resolution_weights_follow_levels():
    w = resolution_weights([(2, 2), (4, 4), (4, 4)], (0.6, 0.4))
    assert torch.allclose(w, torch.tensor([0.6, 0.2, 0.2]))


def test_resize_picking_rows_first_equals_resizing_keys_first():
    import torch.nn.functional as F

    def keys_then_queries(a, grid, target):
        b, p, _ = a.shape
        (h, w), (ht, wt) = grid, target
        k = F.interpolate(a.reshape(b, p, h, w), size=target, mode="bilinear", align_corners=False)
        k = k.reshape(b, h, w, ht * wt).permute(0, 3, 1, 2)
        out = F.interpolate(k, size=target, mode="nearest").reshape(b, ht * wt, ht * wt).transpose(1, 2)
        return out / out.sum(-1, keepdim=True)

    for grid, target in [((8, 8), (4, 4)), ((6, 4), (3, 2)), ((4, 4), (8, 8))]:
        a = torch.rand(2, grid[0] * grid[1], grid[0] * grid[1])
        assert torch.allclose(
            resize_self_attention(a, grid, target, True), keys_then_queries(a, grid, target), atol=1e-6
        )
