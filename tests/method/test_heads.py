import torch

from attnseg.method.heads import aggregate_heads, head_weights


def test_two_head_toy_matches_hand_computation():
    # Two heads, d = 1, one pixel. O = [2, 1]; W = identity (C_out = C = 2).
    # r_0 = [2, 0], r_1 = [0, 1], o = [2, 1]; s = [4, 1]; w = [0.8, 0.2].
    out = torch.tensor([2.0, 1.0]).view(1, 2, 1, 1)
    w = head_weights(out, torch.eye(2))
    assert torch.allclose(w.view(-1), torch.tensor([0.8, 0.2]))


def test_head_weights_can_be_negative_and_sum_to_one():
    # r_0 = [1, 0], r_1 = [-0.5, 1]; o = [0.5, 1]; s = [0.5, 0.75]; a head opposing o gets less weight.
    out = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)
    weight = torch.tensor([[1.0, -0.5], [0.0, 1.0]])  # C_out×C
    w = head_weights(out, weight).view(-1)
    assert torch.allclose(w, torch.tensor([0.4, 0.6]))
    out2 = torch.tensor([1.0, -3.0]).view(1, 2, 1, 1)
    w2 = head_weights(out2, torch.eye(2)).view(-1)  # s = [1, 9] → [0.1, 0.9]
    assert torch.allclose(w2, torch.tensor([0.1, 0.9]))
    out3 = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    w3 = head_weights(out3, torch.tensor([[1.0, -1.0]])).view(-1)  # r = [1, -2], o = -1, s = [-1, 2]
    assert torch.allclose(w3, torch.tensor([-1.0, 2.0]))
    assert torch.allclose(w3.sum(), torch.tensor(1.0))


def test_head_weights_equal_explicit_per_head_products():
    torch.manual_seed(0)
    b, h, p, d, c_out = 2, 3, 5, 4, 7
    out = torch.randn(b, h, p, d)
    weight = torch.randn(c_out, h * d)
    r = torch.stack([out[:, i] @ weight[:, i * d : (i + 1) * d].T for i in range(h)], 1)  # B×H×P×C_out
    o = r.sum(1, keepdim=True)
    s = (r * o).sum(-1)
    expected = s / s.sum(1, keepdim=True)
    assert torch.allclose(head_weights(out, weight), expected, atol=1e-5)


def test_aggregate_heads_mean_and_weighted():
    probs = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # B=1,H=2,P=1,N=2
    assert torch.allclose(aggregate_heads(probs, None), torch.tensor([[[0.5, 0.5]]]))
    weights = torch.tensor([[[0.8], [0.2]]])
    assert torch.allclose(aggregate_heads(probs, weights), torch.tensor([[[0.8, 0.2]]]))
