import math

import pytest
import torch

from models.masking.sampling import masked_weight_samples, soft_sample
from tests.models.reference import masked_weight_samples_reference


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


# -- counter-based noise: any index range --------------------------------------------------------

def _lowbias32(x: int) -> int:
    """Wellons' lowbias32 on unsigned 32-bit Python ints (written out independently of the library)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _reference_uniform(key: tuple[int, int], counter: int) -> float:
    """The documented noise of counter c: hash(hash(c_low ^ k0) ^ k1 ^ hash(c_high)) >> 8, over 2^24."""
    k0, k1 = (k & 0xFFFFFFFF for k in key)
    low, high = counter & 0xFFFFFFFF, counter >> 32
    x = _lowbias32(_lowbias32(low ^ k0) ^ k1 ^ _lowbias32(high))
    return (x >> 8) / 2**24


@pytest.mark.parametrize("start", [0, 2**31 - 3, 2**32 - 2, 5 * 2**32 + 7, 2**40 - 1])
def test_counter_noise_is_the_hash_of_the_full_index_at_any_offset(start):
    from models.masking.counter_noise import counter_uniform

    key = (-123456789, 987654321)
    u = counter_uniform(torch.tensor(key, dtype=torch.int32), (6,), start=start)
    expected = torch.tensor([_reference_uniform(key, start + i) for i in range(6)])
    assert torch.equal(u, expected)


def test_counter_noise_does_not_repeat_past_2_to_the_31_or_32():
    from models.masking.counter_noise import counter_uniform

    key = torch.tensor([11, -7], dtype=torch.int32)
    first = counter_uniform(key, (1000,))
    for offset in (2**31, 2**32, 2**33):
        later = counter_uniform(key, (1000,), start=offset)
        assert (later != first).float().mean() > 0.99


def test_counter_noise_is_laid_out_row_major_over_a_large_k_stack():
    """A [K, *S] stack with K·numel ≥ 2^32 (shapes only, on the meta device: nothing allocated) has the
    right shape, and the slice of a real stack at sample k is the counter range starting at k·numel."""
    from models.masking.counter_noise import counter_uniform

    meta_key = torch.zeros(2, dtype=torch.int32, device="meta")
    assert counter_uniform(meta_key, (4, 2**30 + 1)).shape == (4, 2**30 + 1)
    key = torch.tensor([3, 4], dtype=torch.int32)
    stack = counter_uniform(key, (3, 5, 7))
    assert torch.equal(stack[2].flatten(), counter_uniform(key, (35,), start=70))


# -- the fused forward kernel: loaded indices, integer keep test ----------------------------------

@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 6), (33,)])
def test_fused_forward_keeps_exactly_where_the_counter_uniform_exceeds_sigmoid_minus_logit(shape):
    """Bit for bit against the keep rule u > σ(-l) on uniforms materialised by counter_uniform, for
    both ways the forward gets its counters (element indices loaded on CPU, computed elsewhere)
    and with logits that put σ(-l) near 0, near 1 and at 1/2."""
    from models.masking.counter_noise import counter_uniform
    from models.masking.fused_sampling import _element_indices, _keyed_forward

    K = 3
    weight = torch.randn(shape)
    logits = torch.randn(shape) * 4
    logits.view(-1)[:3] = torch.tensor([-30.0, 30.0, 0.0])
    key = torch.tensor([-5, 77], dtype=torch.int32)
    expected = torch.where(counter_uniform(key, (K, *shape)) > torch.sigmoid(-logits), weight, 0.0)
    indices = _element_indices(torch.Size(shape), K)
    assert torch.equal(indices.flatten(), torch.arange(weight.numel(), dtype=torch.int32))
    assert torch.equal(_keyed_forward(weight, logits, key, K, indices), expected)
    assert torch.equal(_keyed_forward(weight, logits, key, K), expected)


def test_integer_keep_threshold_equals_the_float_comparison():
    """m / 2^24 > t exactly when m > floor(t · 2^24), for integers m near the threshold of every t,
    including thresholds on the 2^-24 grid (where > and >= differ), 0, 1 and tiny t."""
    grid = torch.tensor([0, 1, 2, 12345, 2**23, 2**24 - 1, 2**24], dtype=torch.float64) / 2**24
    t = torch.cat([torch.rand(2000, dtype=torch.float64), grid, torch.tensor([1e-30, 1 - 2**-24])]).float()
    threshold = torch.floor(t * (1 << 24)).to(torch.int32)
    for offset in (-1, 0, 1, 2):
        m = (threshold + offset).clamp(0, 2**24 - 1)
        float_rule = m.double() / 2**24 > t.double()  # exact in float64, independent of the float32 path
        assert torch.equal(m > threshold, float_rule)


def test_element_indices_are_not_made_where_the_counters_need_64_bits():
    """K · numel above 2^31: no index tensor is allocated (the kernel computes 64-bit counters)."""
    from models.masking.fused_sampling import _element_indices

    assert _element_indices(torch.Size([2**20, 2**10]), 3) is None
