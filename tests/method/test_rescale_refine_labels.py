import torch

from attnseg.method.labels import assign_labels
from attnseg.method.refine import propagate, sharpen_affinity
from attnseg.method.rescale import gaussian_blur, minmax, rescale_scores


def _imbalanced_attention():
    """Start token takes most of the mass, unevenly: at the cat pixel (left) 0.9, on grass (right) 0.3."""
    attn = torch.zeros(1, 4, 1, 2)  # tokens: start, cat, grass, end
    attn[0, :, 0, 0] = torch.tensor([0.9, 0.06, 0.03, 0.01])  # left pixel is cat
    attn[0, :, 0, 1] = torch.tensor([0.3, 0.25, 0.40, 0.05])  # right pixel is grass
    return attn


def test_rescaling_removes_start_token_imbalance():
    attn = _imbalanced_attention()
    classes = [[[1]], [[2]]]
    vanilla = rescale_scores(attn, classes, content_tokens=[1, 2], per_pixel=False, blur=False)
    goca = rescale_scores(attn, classes, content_tokens=[1, 2], per_pixel=True, blur=False)
    # Vanilla: the cat map is higher on the grass pixel (0.25 > 0.06), because the start token
    # swallowed the cat pixel's mass. Per-pixel rescaling (0.06/0.09 vs 0.25/0.65) fixes it.
    assert vanilla[0, 0, 0, 1] > vanilla[0, 0, 0, 0]
    assert goca[0, 0, 0, 0] > goca[0, 0, 0, 1]
    labels = assign_labels(goca[0], tau=0.0)
    assert labels.tolist() == [[1, 2]]
    assert assign_labels(vanilla[0], tau=0.0)[0, 0] != 1  # vanilla loses the cat pixel


def test_minmax_and_blur_basic_properties():
    x = torch.rand(2, 3, 8, 8)
    y = minmax(x)
    assert torch.allclose(y.amin(dim=(2, 3)), torch.zeros(2, 3)) and torch.allclose(
        y.amax(dim=(2, 3)), torch.ones(2, 3)
    )
    const = torch.full((1, 1, 8, 8), 0.7)
    assert torch.allclose(gaussian_blur(const), const, atol=1e-6)
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1
    blurred = gaussian_blur(spike)
    assert abs(blurred.sum().item() - 1) < 1e-5 and blurred[0, 0, 4, 4] < 1


def test_propagation_on_known_affinity():
    # Two blocks of positions that attend only within their block: propagation averages within blocks.
    maps = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # 2×2 grid, K=1
    affinity = torch.tensor([[[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]]])
    out = propagate(maps, affinity, steps=1)
    assert torch.allclose(out, torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]))
    assert torch.equal(propagate(maps, affinity, 0), maps)


def test_sharpen_lowers_entropy():
    a = torch.tensor([[[0.6, 0.3, 0.1]]])
    s = sharpen_affinity(a, 2.0)

    def entropy(t):
        return -(t * t.log()).sum()

    assert entropy(s) < entropy(a) and torch.allclose(s.sum(-1), torch.ones(1, 1))


def test_labels_background_words_raise_the_background():
    scores = torch.tensor([[[0.6, 0.2]]])  # K=1, 1×2
    assert assign_labels(scores, 0.5).tolist() == [[1, 0]]
    bg = torch.tensor([[[0.9, 0.0]]])
    assert assign_labels(scores, 0.5, bg).tolist() == [[0, 0]]


def test_a_lone_class_with_no_other_word_keeps_its_token_map():
    # X / Z with Z = X is 1 everywhere, and min-max would turn it into 0 ("background only").
    attn = torch.zeros(1, 3, 4, 4)
    attn[:, 1, :2] = 0.8  # the class's token lights the top half
    attn[:, 1, 2:] = 0.1
    attn[:, 0] = 0.5  # start token
    maps = rescale_scores(attn, [[[1]]], [1], per_pixel=True, blur=False)
    assert torch.allclose(maps[0, 0, :2], torch.ones(2, 4)) and torch.allclose(
        maps[0, 0, 2:], torch.zeros(2, 4)
    )


def test_a_lone_class_is_scored_against_the_prompts_other_words():
    # Columns: 1 = the class, 2 = "photo". Per pixel, the class's share of the two.
    attn = torch.zeros(1, 3, 2, 2)
    attn[:, 1] = torch.tensor([[0.6, 0.6], [0.2, 0.2]])
    attn[:, 2] = torch.tensor([[0.2, 0.2], [0.6, 0.6]])
    maps = rescale_scores(attn, [[[1]]], [1, 2], per_pixel=True, blur=False)
    assert maps[0, 0].tolist() == [[1.0, 1.0], [0.0, 0.0]]
