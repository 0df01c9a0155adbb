"""Module definitions for original YOLOv5 (v6.x/v7.0) checkpoints, written for orinflow.

Those checkpoints pickle whole modules of the yolov5 repository (`models.yolo.Model`,
`models.common.C3`, ...). Unpickling restores each module's attributes and weights; only
the classes must exist. These classes supply forward passes for those attributes, so the
checkpoint loads with no yolov5 repository on the path (see `yolov5.py` for the mapping).
"""
from __future__ import annotations

import torch
from torch import nn


class Conv(nn.Module):
    """conv -> bn -> act; after fusing, the bn is folded into conv and removed."""

    def forward(self, x):
        x = self.conv(x)
        if getattr(self, "bn", None) is not None:
            x = self.bn(x)
        return self.act(x)


class DWConv(Conv):
    pass


class DWConvTranspose2d(nn.ConvTranspose2d):
    """Depth-wise transposed conv (v7.0): nn.ConvTranspose2d with groups, nothing more."""


class GhostConv(nn.Module):
    """Half the channels from a conv, the other half from a cheap depth-wise conv of those."""

    def forward(self, x):
        y = self.cv1(x)
        return torch.cat((y, self.cv2(y)), 1)


class GhostBottleneck(nn.Module):
    def forward(self, x):
        return self.conv(x) + self.shortcut(x)


class CrossConv(nn.Module):
    """(1, k) then (k, 1) convolutions, with an optional residual (models.experimental in v7.0)."""

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class TransformerLayer(nn.Module):
    def forward(self, x):
        x = self.ma(self.q(x), self.k(x), self.v(x))[0] + x
        return self.fc2(self.fc1(x)) + x


class TransformerBlock(nn.Module):
    """Optional conv to c2 channels, then transformer layers over the flattened positions (+ a learned offset)."""

    def forward(self, x):
        if self.conv is not None:
            x = self.conv(x)
        b, _, w, h = x.shape
        p = x.flatten(2).permute(2, 0, 1)
        return self.tr(p + self.linear(p)).permute(1, 2, 0).reshape(b, self.c2, w, h)


class BottleneckCSP(nn.Module):
    def forward(self, x):
        y1 = self.cv3(self.m(self.cv1(x)))
        y2 = self.cv2(x)
        return self.cv4(self.act(self.bn(torch.cat((y1, y2), 1))))


class Contract(nn.Module):
    """Space to depth by `gain`: (b, c, h, w) -> (b, c*s*s, h/s, w/s)."""

    def forward(self, x):
        b, c, h, w = x.shape
        s = self.gain
        x = x.view(b, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4).contiguous()
        return x.view(b, c * s * s, h // s, w // s)


class Expand(nn.Module):
    """Depth to space by `gain`: (b, c, h, w) -> (b, c/(s*s), h*s, w*s), the inverse of Contract."""

    def forward(self, x):
        b, c, h, w = x.shape
        s = self.gain
        x = x.view(b, s, s, c // s ** 2, h, w).permute(0, 3, 4, 1, 5, 2).contiguous()
        return x.view(b, c // s ** 2, h * s, w * s)


class Sum(nn.Module):
    """Weighted (sigmoid(w) * 2) or plain sum of several inputs (models.experimental)."""

    def forward(self, x):
        y = x[0]
        weights = torch.sigmoid(self.w) * 2 if self.weight else None
        for i in self.iter:
            y = y + (x[i + 1] * weights[i] if weights is not None else x[i + 1])
        return y


class MixConv2d(nn.Module):
    """Convolutions of several kernel sizes side by side, then bn and act (models.experimental)."""

    def forward(self, x):
        return self.act(self.bn(torch.cat([m(x) for m in self.m], 1)))


class Proto(nn.Module):
    """The segmentation head's mask prototypes (not used for detection)."""

    def forward(self, x):
        return self.cv3(self.cv2(self.upsample(self.cv1(x))))


class Focus(nn.Module):
    """YOLOv5 < v6: space-to-depth then conv."""

    def forward(self, x):
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


class Bottleneck(nn.Module):
    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3x(C3):
    """C3 whose bottlenecks are CrossConvs."""


class C3TR(C3):
    """C3 whose bottlenecks are a TransformerBlock."""


class C3SPP(C3):
    """C3 whose bottleneck is an SPP."""


class C3Ghost(C3):
    """C3 whose bottlenecks are GhostBottlenecks."""


class SPP(nn.Module):
    def forward(self, x):
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [pool(x) for pool in self.m], 1))


class SPPF(nn.Module):
    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    def forward(self, xs):
        return torch.cat(xs, self.d)


class Detect(nn.Module):
    """Anchor-based head: per level, sigmoid, grid/anchor decode, flatten; output (B, N, 5+nc)."""

    keep_raw = False  # set by the YOLOv5 training loss: keep each level's pre-sigmoid output in self.raw

    def forward(self, xs):
        outputs, raw = [], []
        for level in range(self.nl):
            x = self.m[level](xs[level])
            bs, _, ny, nx = x.shape
            x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2)
            raw.append(x)
            x = x.sigmoid()
            grid, anchor_grid = self._grid(level, nx, ny, x.device)
            xy = (x[..., 0:2] * 2 + grid) * self.stride[level]
            wh = (x[..., 2:4] * 2) ** 2 * anchor_grid
            outputs.append(torch.cat((xy, wh, x[..., 4:]), -1).view(bs, -1, self.no))
        if self.keep_raw:
            self.raw = raw
        return torch.cat(outputs, 1)

    def _grid(self, level: int, nx: int, ny: int, device):
        """Cell offsets (already shifted by -0.5) and anchor sizes in pixels, built from the shape."""
        yv, xv = torch.meshgrid(torch.arange(ny, device=device), torch.arange(nx, device=device), indexing="ij")
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).float() - 0.5
        anchor_grid = (self.anchors[level] * self.stride[level]).view(1, self.na, 1, 1, 2).float()
        return grid, anchor_grid


class Segment(Detect):
    """The segmentation head, read as a detector: its boxes, objectness and classes (the mask coefficients
    and prototypes are left out; orinflow scores boxes)."""

    def forward(self, xs):
        return super().forward(xs)[..., :5 + self.nc]


class Classify(nn.Module):
    def forward(self, x):
        if isinstance(x, list):
            x = torch.cat(x, 1)
        return self.linear(self.drop(self.pool(self.conv(x)).flatten(1)))


class Model(nn.Module):
    """Sequential graph with skip connections: each layer reads the outputs named by its `f`."""

    def forward(self, x):
        saved = []
        for layer in self.model:
            if layer.f != -1:
                x = saved[layer.f] if isinstance(layer.f, int) else [x if j == -1 else saved[j] for j in layer.f]
            x = layer(x)
            saved.append(x if layer.i in self.save else None)
        return x


DetectionModel = SegmentationModel = BaseModel = Model  # v7.0 names

COMMON = ("Conv", "DWConv", "DWConvTranspose2d", "GhostConv", "GhostBottleneck", "CrossConv", "TransformerLayer",
          "TransformerBlock", "Bottleneck", "BottleneckCSP", "C3", "C3x", "C3TR", "C3SPP", "C3Ghost", "SPP", "SPPF",
          "Focus", "Contract", "Expand", "Concat", "Proto", "Classify")
EXPERIMENTAL = ("CrossConv", "Sum", "MixConv2d")
YOLO = ("Detect", "Segment", "Model", "DetectionModel", "SegmentationModel", "BaseModel")

# Classes the yolov5 checkpoints reference, by (module, name); everything else is refused (or taken from --modules).
PICKLE_CLASSES = ({("models.common", n): globals()[n] for n in COMMON}
                  | {("models.experimental", n): globals()[n] for n in EXPERIMENTAL}
                  | {("models.yolo", n): globals()[n] for n in YOLO})
