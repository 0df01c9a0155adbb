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


DetectionModel = Model  # v7.0 name

# Classes the yolov5 checkpoints reference, by (module, name); everything else is refused.
PICKLE_CLASSES = {
    ("models.common", n): globals()[n] for n in ("Conv", "DWConv", "Focus", "Bottleneck", "C3", "SPP", "SPPF", "Concat")
} | {("models.yolo", n): globals()[n] for n in ("Detect", "Model", "DetectionModel")}
