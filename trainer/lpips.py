"""LPIPS-style perceptual distance (Zhang et al. 2018) from a local weights file only; nothing downloads.

distance(x, y) = sum over 5 layers l of mean over positions (h, w) of
    sum_c w_lc * (f_l(x)_chw - f_l(y)_chw)^2,
where f_l are torchvision VGG16 or AlexNet feature activations (after relu1_2 ... relu5_3, or relu1 ...
relu5) normalised to unit length over channels, and w_l the learned 1x1 "linear" weights of the lpips
package (keys lin0..lin4). Inputs are images in [0, 1], scaled to [-1, 1] and then shifted and scaled
per channel as the lpips package does (its ScalingLayer); grayscale images are repeated to 3 channels;
images under 64 px are upsampled bilinearly to 64 px on the short side (LPIPS was calibrated on
64 x 64 patches, and AlexNet needs at least 31 px).

The weights come from one file the user names (`--lpips-weights PATH`): a flat state dict of a
torchvision vgg16 or alexnet (`features.N.weight/bias`; `classifier.*` is ignored) or of an
`lpips.LPIPS` module (`net.sliceK.N.*`), optionally with the linear layers `linK.model.1.weight`
(1, C, 1, 1). It is read with `torch.load(..., weights_only=True)` or safetensors, never by
unpickling arbitrary objects. With the linear layers the number is LPIPS; without them every channel
weighs 1 and it is called "perceptual distance, uniform weights" (the lpips package's `lpips=False`
baseline), not LPIPS. No file, no metric: `load_optional(None)` is None.

One file from the two usual ones (torchvision's vgg16 weights and the lpips package's v0.1 vgg.pth):
    sd = torch.load("vgg16-397923af.pth", weights_only=True) | torch.load("vgg.pth", weights_only=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, "lpips-vgg.safetensors")
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MIN_SIZE = 64  # px: shorter image side fed to the network (LPIPS's 64 x 64 patches)
MAX_WEIGHTS_BYTES = 2 << 30  # a full torchvision vgg16 state dict is 528 MiB
NORM_EPS = 1e-10  # as lpips.normalize_tensor
SHIFT = (-0.030, -0.088, -0.188)  # lpips ScalingLayer, applied to images in [-1, 1]
SCALE = (0.458, 0.448, 0.450)
UNIFORM_NAME = "perceptual distance, uniform weights"


class LPIPSError(ValueError):
    """A weights file that cannot serve as LPIPS weights; the message is one line."""


@dataclass(frozen=True)
class NetSpec:
    build: str  # torchvision.models constructor
    slices: tuple[tuple[int, int], ...]  # feature-module index ranges; each slice's output is one layer
    channels: tuple[int, ...]  # channels of each layer (the linear layers' widths)


NETS: dict[str, NetSpec] = {
    "alex": NetSpec("alexnet", ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)), (64, 192, 384, 256, 256)),
    "vgg16": NetSpec("vgg16", ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)), (64, 128, 256, 512, 512)),
}
FIRST_KERNEL = {11: "alex", 3: "vgg16"}  # features.0.weight is (64, 3, k, k)

_FEATURE_KEY = re.compile(r"^(?:features|net\.slice[1-5])\.(\d+)\.(weight|bias)$")
_LIN_KEY = re.compile(r"^lin(\d+)\.model\.[01]\.weight$")
_IGNORED_KEY = re.compile(r"^(?:classifier\.|scaling_layer\.(?:shift|scale)$)")


def _feature_layers(net: str) -> nn.Sequential:
    """torchvision's feature layers of `net` up to the last LPIPS layer, parameters on the meta device."""
    spec = NETS[net]
    with torch.device("meta"):
        import torchvision  # here, not at import: torchvision.models pulls in torch._dynamo (seconds per process)

        features = getattr(torchvision.models, spec.build)(weights=None).features
    return features[: spec.slices[-1][1]]


class PerceptualDistance(nn.Module):
    """LPIPS (learned linear weights) or the uniform-weights perceptual distance; forward gives (B,)."""

    def __init__(self, net: str, features: nn.Sequential, lin_weights: list[torch.Tensor] | None) -> None:
        super().__init__()
        self.net = net
        self.features = features.eval().requires_grad_(False)
        self.ends = [end for _, end in NETS[net].slices]
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.learned = lin_weights is not None
        for k, w in enumerate(lin_weights or []):
            self.register_buffer(f"lin{k}", w.reshape(1, -1, 1, 1))  # (1, C_k, 1, 1)

    @property
    def name(self) -> str:
        """What the number is: e.g. `LPIPS (vgg16)`, or `perceptual distance, uniform weights (alex)`."""
        return f"{'LPIPS' if self.learned else UNIFORM_NAME} ({self.net})"

    def _layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Channel-normalised activations of the 5 layers for images x in [0, 1], (B, C, H, W)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grayscale -> 3 channels
        short = min(x.shape[-2:])
        if short < MIN_SIZE:
            size = [round(s * MIN_SIZE / short) for s in x.shape[-2:]]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        h = ((2 * x - 1) - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i + 1 in self.ends:
                norm = torch.sqrt(h.pow(2).sum(dim=1, keepdim=True) + NORM_EPS)
                out.append(h / (norm + NORM_EPS))  # (B, C_l, H_l, W_l)
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance of each image pair (B,), x and y (B, C, H, W) in [0, 1] with C 1 or 3; 0 for x == y."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"{self.name} needs two (B, 1 or 3, H, W) batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        total = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        for k, (fx, fy) in enumerate(zip(self._layers(x.float()), self._layers(y.float()))):
            d = (fx - fy).pow(2)  # (B, C_l, H_l, W_l)
            d = (d * getattr(self, f"lin{k}")).sum(dim=1) if self.learned else d.sum(dim=1)
            total += d.mean(dim=(1, 2))
        return total


_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _reason(e: Exception) -> str:
    """The informative line of a reader's error (torch's weights_only message is mostly advice to unpickle)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.strip().startswith(_TORCH_BOILERPLATE)]
    return f"{type(e).__name__}: {lines[0] if lines else 'unreadable'}"[:200]


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from a safetensors file or a torch.save file, without running any code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LPIPSError(f"LPIPS weights {path}: no such file")
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise LPIPSError(f"LPIPS weights {path}: {size:,} bytes, more than the {MAX_WEIGHTS_BYTES:,} a vgg16 state dict needs")
    with path.open("rb") as f:
        head = f.read(16)
    try:
        if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then JSON
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is the file's fault; say so in one line
        raise LPIPSError(f"LPIPS weights {path}: not a safetensors or weights-only torch file of tensors ({_reason(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise LPIPSError(f"LPIPS weights {path}: expected a flat state dict of tensors (name -> tensor), got {type(state).__name__}")
    return state


def perceptual_distance_from_state(state: dict[str, torch.Tensor], where: str = "LPIPS weights") -> PerceptualDistance:
    """Check names and shapes against torchvision's vgg16/alexnet and the LPIPS linear layers, then build."""
    features_sd: dict[str, torch.Tensor] = {}
    lins: dict[int, torch.Tensor] = {}
    for key, value in state.items():
        if (m := _FEATURE_KEY.match(key)) is not None:
            features_sd[f"{m[1]}.{m[2]}"] = value
        elif (m := _LIN_KEY.match(key)) is not None:
            lins[int(m[1])] = value
        elif _IGNORED_KEY.match(key) is None:
            raise LPIPSError(f"{where}: unexpected key '{key}' (expected features.N.* of a torchvision vgg16/alexnet and lin0..lin4)")
    first = features_sd.get("0.weight")
    if first is None or first.ndim != 4 or first.shape[-1] not in FIRST_KERNEL:
        raise LPIPSError(f"{where}: no torchvision vgg16 or alexnet feature weights (features.0.weight of shape (64, 3, 3, 3) or (64, 3, 11, 11))")
    net = FIRST_KERNEL[first.shape[-1]]
    features = _feature_layers(net)
    expected = {k: tuple(v.shape) for k, v in features.state_dict().items()}
    for key, shape in expected.items():
        if key not in features_sd:
            raise LPIPSError(f"{where}: {net} weights lack features.{key}")
        if tuple(features_sd[key].shape) != shape:
            raise LPIPSError(f"{where}: features.{key} has shape {tuple(features_sd[key].shape)}, {net} needs {shape}")
    if extra := sorted(set(features_sd) - set(expected)):
        raise LPIPSError(f"{where}: features.{extra[0]} is not a parameter of {net}'s LPIPS layers")
    if not all(v.is_floating_point() and bool(torch.isfinite(v).all()) for v in features_sd.values()):
        raise LPIPSError(f"{where}: {net} weights must be finite floating-point tensors")
    features.load_state_dict({k: v.float() for k, v in features_sd.items()}, strict=True, assign=True)
    lin_weights = None
    if lins:
        channels = NETS[net].channels
        if sorted(lins) != list(range(len(channels))):
            raise LPIPSError(f"{where}: linear layers {sorted(lins)} given; LPIPS needs all of lin0..lin{len(channels) - 1}")
        for k, c in enumerate(channels):
            if tuple(lins[k].shape) != (1, c, 1, 1) or not lins[k].is_floating_point():
                raise LPIPSError(f"{where}: lin{k} has shape {tuple(lins[k].shape)}, {net} needs (1, {c}, 1, 1)")
        lin_weights = [lins[k].float() for k in range(len(channels))]
    return PerceptualDistance(net, features, lin_weights)


def load_perceptual_distance(path: str | Path) -> PerceptualDistance:
    """LPIPS (or the uniform-weights distance) from the weights file at path; LPIPSError (one line) if unusable."""
    return perceptual_distance_from_state(read_weights_file(path), where=f"LPIPS weights {Path(path).expanduser()}")


def load_optional(path: str | Path | None) -> PerceptualDistance | None:
    """None without a path: the metric is then absent, never estimated some other way."""
    return None if path is None or str(path) == "" else load_perceptual_distance(path)
