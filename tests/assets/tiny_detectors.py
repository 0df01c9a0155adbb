"""A user's own detector, written without any YOLO library: what `--arch file.py:factory --head` loads.

GridDetector is YOLOX-shaped: strides 8, 16 and 32, one output row per grid cell, each row
(x offset, y offset, log w, log h, objectness, class scores) with boxes relative to the cell
(--head yolox). `decoded()` returns the same network with the boxes decoded to input pixels
(--head yolov5). Untrained: the tests check plumbing and agreement, not accuracy.
"""
import torch
from torch import nn


def _block(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class GridDetector(nn.Module):
    def __init__(self, classes: int = 3, width: int = 16, decode: bool = False):
        super().__init__()
        self.decode = decode
        self.stem = nn.Sequential(_block(3, width), _block(width, width), _block(width, width))  # stride 8
        self.down = nn.ModuleList([_block(width, width * 2), _block(width * 2, width * 4)])  # 16, 32
        self.heads = nn.ModuleList(nn.Conv2d(c, 5 + classes, 1) for c in (width, width * 2, width * 4))

    def forward(self, x):
        features = [self.stem(x)]
        for down in self.down:
            features.append(down(features[-1]))
        rows = []
        for stride, feature, head in zip((8, 16, 32), features, self.heads):
            y = head(feature)
            b, c, h, w = y.shape
            y = y.flatten(2).transpose(1, 2)  # (B, h*w, 5+nc), row by row
            boxes = y[..., :4]
            if self.decode:
                gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                cells = torch.stack((gx, gy), -1).reshape(1, -1, 2).to(y)
                boxes = torch.cat(((boxes[..., :2] + cells) * stride, boxes[..., 2:4].exp() * stride), -1)
            rows.append(torch.cat((boxes, y[..., 4:].sigmoid()), -1))
        return torch.cat(rows, 1)


def grid():
    torch.manual_seed(0)
    return GridDetector()


def decoded():
    torch.manual_seed(0)
    return GridDetector(decode=True)


def broken():
    raise RuntimeError("the factory's own error")
