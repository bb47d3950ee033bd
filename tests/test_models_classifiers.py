"""DSRF3D-v2, RB3D, CB3D: shapes on 32³ and 40³, gradients, parameter counts against AITom's layer widths."""

from __future__ import annotations

import pytest
import torch

from aitom.errors import InputError
from aitom.models import CB3D, RB3D, DSRF3Dv2

NETWORKS = [DSRF3Dv2, RB3D, CB3D]


def conv_parameters(in_channels: int, out_channels: int, kernel: int, batch_norm: bool) -> int:
    """Weights of a 3-D convolution (+ bias without batch norm, + BN scale and shift with it)."""
    return in_channels * out_channels * kernel**3 + (2 * out_channels if batch_norm else out_channels)


def dense_parameters(in_features: int, out_features: int) -> int:
    return in_features * out_features + out_features


def expected_parameters(name: str, num_classes: int, batch_norm: bool) -> int:
    """Parameter counts written out from the layer tables in the docstrings (AITom's widths)."""
    if name == "DSRF3Dv2":
        widths = [(1, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
        convs = sum(conv_parameters(i, o, 3, batch_norm) for i, o in widths)
        return (
            convs
            + dense_parameters(128 * 4**3, 1024)
            + dense_parameters(1024, 1024)
            + dense_parameters(1024, num_classes)
        )
    if name == "RB3D":
        block = (
            conv_parameters(32, 16, 3, batch_norm)  # shortcut
            + conv_parameters(32, 16, 1, batch_norm)
            + conv_parameters(16, 32, 3, batch_norm)
            + conv_parameters(32, 16, 1, batch_norm)
        )
        return (
            conv_parameters(1, 32, 3, batch_norm)
            + 4 * block
            + dense_parameters(32 * 4**3, 1024)
            + dense_parameters(1024, 1024)
            + dense_parameters(1024, num_classes)
        )
    widths = [(1, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512), (512, 512)]
    convs = sum(conv_parameters(i, o, 3, batch_norm) for i, o in widths)
    return (
        convs
        + dense_parameters(512, 4096)
        + dense_parameters(4096, 4096)
        + dense_parameters(4096, num_classes)
    )


def count_parameters(net: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in net.parameters())


@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: n.__name__)
@pytest.mark.parametrize("box", [32, 40])
def test_forward_and_backward(network, box, device):
    torch.manual_seed(0)
    net = network(num_classes=5).to(device)
    volume = torch.randn(2, 1, box, box, box, device=device, requires_grad=True)
    logits = net(volume)
    assert logits.shape == (2, 5)
    assert logits.device == volume.device and logits.dtype == torch.float32
    logits.sum().backward()
    assert volume.grad is not None and torch.isfinite(volume.grad).all() and volume.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: n.__name__)
@pytest.mark.parametrize("batch_norm", [True, False])
def test_parameter_counts_follow_the_layer_widths(network, batch_norm):
    net = network(num_classes=7, batch_norm=batch_norm)
    count = count_parameters(net)
    print(f"{network.__name__} batch_norm={batch_norm}: {count:,} parameters")
    assert count == expected_parameters(network.__name__, 7, batch_norm)


def test_dsrf3d_matches_aitom_keras_parameter_count():
    # AITom's Keras Cgg at 32³ with 10 labels, counted by hand: convolutions 858,400 (with biases),
    # fc1 8192*1024+1024, fc2 1024*1024+1024, output 1024*10+10.
    assert (
        count_parameters(DSRF3Dv2(num_classes=10, batch_norm=False))
        == 858_400 + 8_389_632 + 1_049_600 + 10_250
    )


@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: n.__name__)
def test_eval_mode_is_deterministic_and_batch_independent(network):
    torch.manual_seed(1)
    net = network(num_classes=3).eval()
    volumes = torch.randn(3, 1, 32, 32, 32)
    with torch.no_grad():
        together = net(volumes)
        alone = torch.cat([net(volumes[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: n.__name__)
def test_box_below_minimum_is_refused(network):
    net = network(num_classes=3)
    small = network.minimum_box_voxels - 1
    with pytest.raises(InputError, match=f"at least {network.minimum_box_voxels} voxels"):
        net(torch.zeros(1, 1, small, 40, 40))
    assert net(torch.zeros(1, 1, *(3 * [network.minimum_box_voxels]))).shape == (1, 3)


def test_bad_arguments_and_shapes():
    with pytest.raises(ValueError, match=r"\(B, 1, Z, Y, X\)"):
        RB3D(num_classes=3)(torch.zeros(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 1, Z, Y, X\)"):
        RB3D(num_classes=3)(torch.zeros(1, 16, 16, 16))
    with pytest.raises(InputError, match="num_classes"):
        DSRF3Dv2(num_classes=1)
    with pytest.raises(InputError, match="dropout"):
        CB3D(num_classes=3, dropout=1.0)
