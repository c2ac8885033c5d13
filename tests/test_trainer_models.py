"""Backbones (shapes, Slow-R50's temporal kernels), heads, momentum updates, schedules, config, LARS."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainer.backbones import SlowR50, build_backbone
from trainer.config import ConfigError, PRESETS, make_config, parse_args
from trainer.heads import BYOLPredictionHead, BYOLProjectionHead, MoCoProjectionHead, ProjectionHead, SwaVPrototypes
from trainer.optim import LARS, build_optimizer
from trainer.utils import cosine_schedule, normalize_clips, update_momentum, warmup_cosine_lr


# ----------------------------------------------------------------------------- backbones
def test_tiny_backbone_shape_and_gradient():
    model, dim = build_backbone("tiny")
    x = torch.randn(3, 3, 4, 32, 32, requires_grad=True)  # (N, C, T, H, W)
    y = model(x)
    assert y.shape == (3, dim) == (3, 64)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# The large backbones are built on the meta device: real modules and real shape propagation through
# every layer, without spending seconds on random initialisation of 30M+ weights on a loaded CPU.
@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18"])
def test_torchvision_backbones_drop_the_classifier(name):
    with torch.device("meta"):
        model, dim = build_backbone(name)
        y = model(torch.randn(2, 3, 4, 32, 32))
    assert dim == 512 and isinstance(model.fc, nn.Identity)
    assert y.shape == (2, 512)


def test_mvit_feature_shape_and_clear_error_for_other_clip_shapes():
    with torch.device("meta"):
        model, dim = build_backbone("mvit_v2_s")
        assert dim == 768 and model(torch.randn(1, 3, 16, 224, 224)).shape == (1, 768)
        with pytest.raises(ValueError, match=r"mvit_v2_s needs clips \(N, 3, 16, 224, 224\)"):
            model(torch.randn(1, 3, 8, 64, 64))


def test_unknown_backbone_is_rejected():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'"):
        build_backbone("resnet9000")


def _temporal_kernel_sizes(stage: nn.Module) -> list[int]:
    return [m.kernel_size[0] for m in stage.modules() if isinstance(m, nn.Conv3d)]


def test_slow_r50_shape_and_temporal_kernels_only_in_res4_res5():
    with torch.device("meta"):
        model = SlowR50().eval()
    seen = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.shape))
             for n in ("stem", "res2", "res3", "res4", "res5")]
    with torch.no_grad():
        y = model(torch.randn(1, 3, 4, 64, 64, device="meta"))  # T = 4
    for h in hooks:
        h.remove()
    assert y.shape == (1, 2048)
    # no temporal downsampling anywhere: T stays 4 until the global pool
    assert [seen[n][2] for n in ("stem", "res2", "res3", "res4", "res5")] == [4, 4, 4, 4, 4]
    assert [seen[n][1] for n in ("res2", "res3", "res4", "res5")] == [256, 512, 1024, 2048]
    assert all(m.stride[0] == 1 for m in model.modules() if isinstance(m, nn.Conv3d))
    assert _temporal_kernel_sizes(model.stem) == [1]  # conv1: 1×7×7
    assert set(_temporal_kernel_sizes(model.res2)) == {1}
    assert set(_temporal_kernel_sizes(model.res3)) == {1}
    for stage, blocks in ((model.res4, 6), (model.res5, 3)):
        assert len(stage) == blocks
        for block in stage:  # [3×1², 1×3², 1×1²] as SlowFast's Table 1
            assert block.conv1[0].kernel_size == (3, 1, 1)
            assert block.conv2[0].kernel_size == (1, 3, 3)
            assert block.conv3[0].kernel_size == (1, 1, 1)
    assert [len(s) for s in (model.res2, model.res3, model.res4, model.res5)] == [3, 4, 6, 3]


# ----------------------------------------------------------------------------- heads
def test_heads_are_block_lists_with_the_paper_dimensions():
    moco = MoCoProjectionHead()
    linears = [m for m in moco.modules() if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(2048, 2048), (2048, 2048), (2048, 128)]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in moco.modules())
    proj, pred = BYOLProjectionHead(), BYOLPredictionHead()
    assert [(l.in_features, l.out_features) for l in proj.modules() if isinstance(l, nn.Linear)] == [(2048, 4096), (4096, 256)]
    assert [(l.in_features, l.out_features) for l in pred.modules() if isinstance(l, nn.Linear)] == [(256, 4096), (4096, 256)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in proj.modules()) == 1
    assert proj.layers[0].bias is None  # no bias before BN
    head = ProjectionHead([(4, 3, nn.BatchNorm1d(3), nn.ReLU()), (3, 2, None, None)])
    assert head(torch.randn(5, 4)).shape == (5, 2)
    with pytest.raises(ValueError):
        ProjectionHead([])


def test_prototypes_normalise_to_unit_rows():
    protos = SwaVPrototypes(8, 10)
    with torch.no_grad():
        protos.layer.weight.mul_(3.0)
    protos.normalize_()
    torch.testing.assert_close(protos.layer.weight.norm(dim=1), torch.ones(10))


# ----------------------------------------------------------------------------- momentum and schedules
def test_update_momentum_is_an_ema_of_parameters():
    online, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    w_online, w_ema = online.weight.detach().clone(), ema.weight.detach().clone()
    update_momentum(online, ema, 0.9)
    torch.testing.assert_close(ema.weight, 0.9 * w_ema + 0.1 * w_online)
    update_momentum(online, ema, 0.0)
    torch.testing.assert_close(ema.weight, online.weight)
    before = ema.weight.detach().clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    update_momentum(online, ema, 1.0)
    torch.testing.assert_close(ema.weight, before)
    with pytest.raises(ValueError):
        update_momentum(online, ema, 1.5)


def test_cosine_schedule_matches_pyslowfast_momentum_annealing():
    m0, total = 0.994, 100
    for step in (0, 1, 25, 50, 99, 100):
        expected = 1 - (1 - m0) * (math.cos(math.pi * step / total) + 1) / 2  # PySlowFast
        assert cosine_schedule(step, total, m0, 1.0) == pytest.approx(expected)
    assert cosine_schedule(0, total, m0, 1.0) == pytest.approx(m0)
    assert cosine_schedule(total, total, m0, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(5 * total, total, m0, 1.0) == pytest.approx(1.0)
    values = [cosine_schedule(s, total, 0.996, 1.0) for s in range(total + 1)]
    assert values == sorted(values)


def test_warmup_cosine_lr():
    kw = dict(base_lr=1.0, warmup_steps=10, warmup_start_lr=0.1, final_lr=0.0)
    assert warmup_cosine_lr(0, 110, **kw) == pytest.approx(0.1)
    assert warmup_cosine_lr(5, 110, **kw) == pytest.approx(0.55)
    assert warmup_cosine_lr(10, 110, **kw) == pytest.approx(1.0)
    assert warmup_cosine_lr(60, 110, **kw) == pytest.approx(0.5)
    assert warmup_cosine_lr(110, 110, **kw) == pytest.approx(0.0)


def test_normalize_clips():
    clips = torch.full((1, 2, 3, 1, 2, 2), 255, dtype=torch.uint8)
    x = normalize_clips(clips, "cpu")
    assert x.dtype == torch.float32 and x.shape == clips.shape
    torch.testing.assert_close(x, torch.full(x.shape, (1 - 0.45) / 0.225))
    torch.testing.assert_close(normalize_clips(clips.numpy(), "cpu"), x)  # a NumPy batch works too
    with pytest.raises(TypeError):
        normalize_clips(clips.float(), "cpu")


# ----------------------------------------------------------------------------- config
def test_config_presets_and_overrides():
    c = parse_args(["--objective", "byol", "--max-steps", "7", "--base-lr=0.5", "--resume"])
    assert (c.objective, c.optimizer, c.output_dim, c.mlp_hidden_dim, c.momentum_start) == ("byol", "lars", 256, 4096, 0.996)
    assert c.max_steps == 7 and c.base_lr == 0.5 and c.resume is True and c.sync_batchnorm is True
    m = parse_args(["--objective", "moco"])
    assert (m.moco_queue_size, m.temperature, m.momentum_start, m.weight_decay, m.base_lr) == (65536, 0.1, 0.994, 1e-4, 0.4)
    cpu = parse_args(["--objective", "swav", "--profile", "cpu", "--swav-num-prototypes", "50"])
    assert cpu.swav_num_prototypes == 50 and cpu.reference_batch_size == 0
    assert set(PRESETS) == {"moco", "byol", "simclr", "swav"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-stepz", "3"], "unknown option --max-stepz (did you mean --max-steps?)"),
        (["--max-steps", "three"], "--max-steps expects int, got 'three'"),
        (["--resume", "maybe"], "--resume expects a boolean"),
        (["--objective", "dino"], "--objective must be one of"),
        (["--max-steps", "0"], "--max-steps must be > 0"),
        (["--max-steps"], "--max-steps needs a value"),
        (["stray"], "expected --key value"),
    ],
)
def test_config_rejects_bad_flags(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_args(argv)
    assert message in str(err.value)


def test_simclr_positive_form_flag_reaches_the_loss():
    from trainer.objectives import build_objective

    assert parse_args(["--objective", "simclr"]).simclr_positives == "eq1"  # the paper's eq. (1) by default
    config = parse_args(["--objective", "simclr", "--profile", "cpu", "--simclr-positives", "supcon"])
    assert build_objective(config, num_clips=3).criterion.positives == "supcon"
    with pytest.raises(ConfigError, match="--simclr-positives must be one of eq1, supcon; got 'mean'"):
        parse_args(["--objective", "simclr", "--simclr-positives", "mean"])


def test_make_config_checks_types():
    with pytest.raises(ConfigError, match="expects int"):
        make_config("moco", max_steps=2.5)
    with pytest.raises(ConfigError, match="unknown config keys: nope"):
        make_config("moco", nope=1)


# ----------------------------------------------------------------------------- optimizers
def test_lars_scales_updates_by_the_trust_ratio_and_skips_1d_params():
    layer = nn.Linear(4, 3)
    opt = build_optimizer(layer, name="lars", lr=1.0, weight_decay=0.0, momentum=0.0, nesterov=False, trust_coefficient=0.01)
    assert isinstance(opt, LARS)
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    layer(torch.randn(5, 4)).pow(2).sum().backward()
    g_w, g_b = layer.weight.grad.clone(), layer.bias.grad.clone()
    opt.step()
    ratio = 0.01 * w0.norm() / g_w.norm()
    torch.testing.assert_close(layer.weight.detach(), w0 - ratio * g_w)
    torch.testing.assert_close(layer.bias.detach(), b0 - g_b)  # bias: plain SGD step
