import math

import pytest
import torch

from models.masking.sampling import masked_weight_samples, masked_weight_samples_reference, soft_sample


def test_hard_samples_are_bernoulli_of_sigmoid_logit():
    """Appendix A.3: P(b = 1) = σ(l), checked against the closed form for several logits."""
    logits = torch.tensor([-4.0, -2.0, -0.5, 0.0, 0.3, 1.0, 2.1972, 4.0])
    n = 200_000
    uniform = torch.rand(n, logits.numel())
    keep = masked_weight_samples(torch.ones_like(logits), logits, uniform)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    for l, mean in zip(logits.tolist(), keep.mean(0).tolist()):
        p = 1 / (1 + math.exp(-l))
        standard_error = math.sqrt(p * (1 - p) / n)
        assert abs(mean - p) < 5 * standard_error, (l, mean, p)


def test_hard_samples_match_the_two_uniform_formula_in_distribution():
    """Eq. 1 with two uniforms and our one-uniform form agree in keep rate."""
    logit = torch.tensor(0.7)
    n = 200_000
    u1, u2 = torch.rand(n), torch.rand(n)
    paper = (torch.sigmoid(logit - torch.log(torch.log(u1) / torch.log(u2))) > 0.5).float().mean()
    ours = masked_weight_samples(torch.ones(1), logit.reshape(1), torch.rand(n, 1)).mean()
    assert abs(float(paper) - float(ours)) < 5 * math.sqrt(2 * 0.25 / n)


def test_soft_sample_fast_path_equals_logistic_formula():
    logits = torch.randn(50)
    uniform = torch.rand(4, 50)
    expected = torch.sigmoid(logits + torch.log(uniform) - torch.log(1 - uniform))
    torch.testing.assert_close(soft_sample(logits, uniform, 1.0), expected)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_straight_through_matches_autograd_of_eq_2(temperature):
    weight = torch.randn(6, 5, requires_grad=True)
    logits = torch.randn(6, 5, requires_grad=True)
    uniform = torch.rand(3, 6, 5)
    upstream = torch.randn(3, 6, 5)

    ours = masked_weight_samples(weight, logits, uniform, temperature)
    ours_grads = torch.autograd.grad((ours * upstream).sum(), [weight, logits])
    reference = masked_weight_samples_reference(weight, logits, uniform, temperature)
    reference_grads = torch.autograd.grad((reference * upstream).sum(), [weight, logits])

    torch.testing.assert_close(ours, reference)
    for a, b in zip(ours_grads, reference_grads):
        torch.testing.assert_close(a, b)
