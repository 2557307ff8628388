"""Masks trained together in a MaskPack equal the same masks trained alone, bit for bit."""

import copy
import threading

import pytest
import torch
from torch import nn

from models.masking import MaskConfig, MaskedModel, make_optimizer, training_step
from models.masking.packing import MaskPack
from tests.models.architectures import UnseenModel

STEPS = 12


def _fnn() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5)).eval()


def _classification(batch: int):
    def make(generator):
        return (torch.randn(batch, 12, generator=generator),), torch.randint(0, 5, (batch,), generator=generator)
    return make


def _sequences(batch: int):
    def make(generator):
        return (torch.randint(0, 13, (batch, 6), generator=generator),), torch.randint(0, 3, (batch,), generator=generator)
    return make


class _Member:
    """One mask: its own β, noise seed, data stream and optimiser over a copy of the network."""

    def __init__(self, network, beta, seed, make_batch, fused, pack=None, fail_at=None):
        self.masked = MaskedModel(copy.deepcopy(network), MaskConfig.from_beta(beta, 32, num_samples=4), fused=fused)
        self.masked.noise_generator = torch.Generator().manual_seed(seed)
        self.masked.pack = pack
        self.data = torch.Generator().manual_seed(1000 + seed)
        self.optimizer = make_optimizer(self.masked)
        self.make_batch, self.fail_at, self.pack = make_batch, fail_at, pack

    def loss(self):
        inputs, targets = self.make_batch(self.data)
        return nn.functional.cross_entropy(self.masked(*inputs), targets)

    def train(self, started: threading.Barrier | None = None):
        with self.pack.member() if self.pack else _nothing():
            if started:
                started.wait()  # every member joined before the first step: the first rounds pack too
            for step in range(STEPS):
                if step == self.fail_at:
                    raise RuntimeError("member failed on purpose")
                training_step(self.masked, self.optimizer, self.loss)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _train_together(members: list[_Member]) -> list[BaseException]:
    started, errors = threading.Barrier(len(members)), []

    def run(member):
        try:
            member.train(started)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(m,)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a member of the pack never finished (deadlock)"
    return errors


def _assert_same_logits(alone: _Member, packed: _Member):
    for a, b in zip(alone.masked.logits, packed.masked.logits):
        assert torch.equal(a, b), f"logits differ by up to {(a - b).abs().max().item():.3g}"


SETTINGS = [(1e-4, 1), (1e-3, 2), (3e-3, 3)]  # (β, noise seed): the grid points of an α sweep


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("network, make_batch", [(_fnn, _classification(32)), (UnseenModel, _sequences(32))],
                         ids=["fnn", "attention"])
def test_packed_masks_equal_masks_trained_alone(fused, network, make_batch):
    net = network().eval()
    alone = [_Member(net, beta, seed, make_batch, fused) for beta, seed in SETTINGS]
    for member in alone:
        member.train()
    pack = MaskPack()
    packed = [_Member(net, beta, seed, make_batch, fused, pack) for beta, seed in SETTINGS]
    assert _train_together(packed) == []
    assert pack.packed_forwards >= len(SETTINGS) * (STEPS - 2), "the members' forwards did not run together"
    for a, p in zip(alone, packed):
        _assert_same_logits(a, p)
    assert not torch.equal(packed[0].masked.logits[0], packed[2].masked.logits[0]), "different β, same masks?"


def test_members_with_different_batch_shapes_run_apart_and_stay_exact():
    net = _fnn()
    shapes = [_classification(32), _classification(16)]
    alone = [_Member(net, 1e-4, seed, make, True) for seed, make in enumerate(shapes)]
    for member in alone:
        member.train()
    pack = MaskPack()
    packed = [_Member(net, 1e-4, seed, make, True, pack) for seed, make in enumerate(shapes)]
    assert _train_together(packed) == []
    assert pack.packed_forwards == 0
    for a, p in zip(alone, packed):
        _assert_same_logits(a, p)


def test_members_over_different_weights_never_share_a_call():
    first, second = _fnn(), _fnn()
    pack = MaskPack()
    members = [_Member(first, 1e-4, 1, _classification(32), False, pack),
               _Member(second, 1e-4, 1, _classification(32), False, pack)]
    assert _train_together(members) == []
    assert pack.packed_forwards == 0
    assert members[0].masked.frozen_identity() != members[1].masked.frozen_identity()


def test_a_failing_member_leaves_and_the_others_finish_exactly():
    net = _fnn()
    alone = _Member(net, 1e-3, 2, _classification(32), True)
    alone.train()
    pack = MaskPack()
    members = [_Member(net, 1e-4, 1, _classification(32), True, pack, fail_at=5),
               _Member(net, 1e-3, 2, _classification(32), True, pack)]
    errors = _train_together(members)
    assert [str(e) for e in errors] == ["member failed on purpose"]
    _assert_same_logits(alone, members[1])


def test_attention_fast_path_setting_is_restored_after_threads_leave():
    before = torch.backends.mha.get_fastpath_enabled()
    net = UnseenModel().eval()
    pack = MaskPack()
    assert _train_together([_Member(net, 1e-4, s, _sequences(16), False, pack) for s in (1, 2)]) == []
    assert torch.backends.mha.get_fastpath_enabled() == before


def test_fused_kernels_stay_compiled_in_other_threads():
    """Dynamo's recompile limit is a per-thread setting (8 by default): a mask training in a pack's
    thread gets the fused kernels' higher limit too (past the limit dynamo silently runs them eagerly)."""
    import torch._dynamo

    _Member(_fnn(), 1e-4, 1, _classification(32), True).train()  # the kernels first run in this thread
    seen = []

    def train():
        assert torch._dynamo.config.recompile_limit == 8  # a fresh thread: dynamo's default
        member = _Member(UnseenModel().eval(), 1e-4, 1, _sequences(32), True)
        member.train()
        seen.append(torch._dynamo.config.recompile_limit)

    thread = threading.Thread(target=train)
    thread.start()
    thread.join(timeout=120)
    assert seen and seen[0] >= 32


@pytest.mark.parametrize("shape", [(30, 20), (7,), (4, 3, 3, 3)], ids=["matrix", "vector", "conv"])
def test_one_kernel_draws_every_members_samples_as_each_draws_them_alone(shape):
    """keyed_masked_weight_pack: M masks' K samples of one weight in one kernel, forward and logit
    gradient equal to M calls of keyed_masked_weight_samples bit for bit."""
    from models.masking.counter_noise import draw_keys
    from models.masking.fused_sampling import keyed_masked_weight_pack, keyed_masked_weight_samples

    members, samples = 3, 4
    weight = torch.randn(*shape)
    stored = [torch.randn(*shape[::-1]).t() if len(shape) == 2 else torch.randn(*shape) for _ in range(members)]
    logits = [s.detach().requires_grad_() for s in stored]  # matrices stored transposed, as MaskedModel does
    keys = draw_keys(members, "cpu", torch.Generator().manual_seed(1))
    upstream = torch.randn(members * samples, *shape)

    alone = torch.cat([keyed_masked_weight_samples(weight, l, k, samples) for l, k in zip(logits, keys)])
    alone_grads = torch.autograd.grad((alone * upstream).sum(), logits)
    joint = torch.stack([l.t() for l in logits]).transpose(-1, -2) if len(shape) == 2 else torch.stack(logits)
    packed = keyed_masked_weight_pack(weight, joint, torch.stack(keys), samples)
    packed_grads = torch.autograd.grad((packed * upstream).sum(), logits)

    assert torch.equal(packed, alone)
    assert all(torch.equal(a, b) for a, b in zip(alone_grads, packed_grads))
