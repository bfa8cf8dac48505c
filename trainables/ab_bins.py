"""Colorization as classification (Zhang, Isola & Efros, ECCV 2016): ab quantised into the
in-gamut bins of a 10-unit grid, a soft-encoded target over the 5 nearest bins (Gaussian,
sigma 5), class rebalancing toward rare colours, and the annealed mean (T = 0.38) to decode.

The gamut is that of sRGB: a bin is in it when some sRGB colour's ab falls in its cell. With this
module's sRGB-to-Lab conversion (D65) that gives `len(bin_centers())` bins, near the paper's 313.
"""

from __future__ import annotations

import functools

import torch

from trainables.lab import AB_SCALE, rgb_to_lab

GRID = 10.0  # the width of a bin, in Lab units
NEIGHBOURS, SIGMA = 5, 5.0  # the soft encoding
REBALANCE_LAMBDA = 0.5  # the mix of the empirical distribution and the uniform one
TEMPERATURE = 0.38  # the annealed mean's
CELLS = int(2 * AB_SCALE // GRID) + 1  # per axis: cells centred on -110, -100, ..., 110


def cell_of(ab: torch.Tensor) -> torch.Tensor:
    """The grid cell (row-major index) each ab pair (..., 2) in Lab units falls in."""
    ij = ((ab + AB_SCALE) / GRID).round().long().clamp(0, CELLS - 1)
    return ij[..., 0] * CELLS + ij[..., 1]


@functools.cache
def _cell_bins() -> torch.Tensor:
    """(CELLS^2,) the bin of each grid cell where the cell is in the gamut, else -1."""
    centres = bin_centers()
    ij = ((centres + AB_SCALE) / GRID).round().long()
    table = torch.full((CELLS * CELLS,), -1, dtype=torch.long)
    table[ij[:, 0] * CELLS + ij[:, 1]] = torch.arange(len(centres))
    return table


@functools.cache
def _gamut() -> tuple[torch.Tensor, torch.Tensor]:
    """(centres (Q, 2) of the in-gamut bins, the bin of each grid cell (CELLS^2,): the cell's
    own bin where it is in the gamut, else the nearest one)."""
    steps = torch.linspace(0, 1, 64)
    rgb = torch.stack(torch.meshgrid(steps, steps, steps, indexing="ij")).reshape(1, 3, -1, 1)
    ab = rgb_to_lab(rgb.double())[0, 1:, :, 0].T.float()
    cells = torch.unique(cell_of(ab))
    centres = torch.stack([cells // CELLS, cells % CELLS], 1).float() * GRID - AB_SCALE
    every = torch.arange(CELLS * CELLS)
    every_centre = torch.stack([every // CELLS, every % CELLS], 1).float() * GRID - AB_SCALE
    nearest = torch.cdist(every_centre, centres).argmin(1)
    return centres, nearest


def bin_centers() -> torch.Tensor:
    """(Q, 2): the ab centre of each in-gamut bin, in Lab units."""
    return _gamut()[0]


def nearest_bin(ab: torch.Tensor) -> torch.Tensor:
    """The in-gamut bin of each ab pair (..., 2), in Lab units."""
    return _gamut()[1].to(ab.device)[cell_of(ab)]


# the 4 x 4 cells around a point: its 5 nearest in-gamut bins lie among them (a bin further
# than 15 units would weigh under 1% of the nearest's)
WINDOW = torch.stack(torch.meshgrid(torch.arange(-1, 3), torch.arange(-1, 3), indexing="ij"),
                     -1).reshape(-1, 2)


def soft_encode(ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights), each (..., 5): the 5 nearest bins of each ab pair (..., 2) in Lab
    units, weighted by a Gaussian of their distance (sigma 5) and normalised to sum to 1. The
    candidates are the 16 cells around each pair, not every bin: 16 distances a pixel, not Q."""
    flat = ab.reshape(-1, 2).float()
    corner = ((flat + AB_SCALE) / GRID).floor().long()  # the cell below and left of the pair
    cells = corner[:, None, :] + WINDOW.to(ab.device)
    off_grid = ((cells < 0) | (cells >= CELLS)).any(-1)
    cells = cells.clamp(0, CELLS - 1)
    bins = _cell_bins().to(ab.device)[cells[..., 0] * CELLS + cells[..., 1]]  # (N, 16)
    bins = bins.masked_fill(off_grid, -1)
    centres = cells.float() * GRID - AB_SCALE
    squared = ((centres - flat[:, None, :]) ** 2).sum(-1).masked_fill(bins < 0, float("inf"))
    near, pick = squared.topk(NEIGHBOURS, dim=1, largest=False)
    index = bins.gather(1, pick).clamp_min(0)  # a missing neighbour weighs 0 below
    weights = torch.softmax(-near / (2 * SIGMA**2), dim=1)
    shape = (*ab.shape[:-1], NEIGHBOURS)
    return index.reshape(shape), weights.reshape(shape)


def rebalancing_weights(counts: torch.Tensor, lam: float = REBALANCE_LAMBDA) -> torch.Tensor:
    """(Q,) weights from each bin's pixel count: w proportional to ((1 - lam) p + lam / Q)^-1,
    p the empirical distribution smoothed by a Gaussian (sigma 5) over the bins, and normalised
    so that their expectation under p is 1, as the paper does."""
    centres = bin_centers()
    p = counts.double() / counts.sum().clamp_min(1)
    kernel = torch.exp(-torch.cdist(centres, centres).double() ** 2 / (2 * SIGMA**2))
    smooth = kernel @ p
    smooth = smooth / smooth.sum()
    weights = 1 / ((1 - lam) * smooth + lam / len(centres))
    return (weights / (smooth * weights).sum()).float()


def count_bins(ab_batches) -> torch.Tensor:
    """(Q,) pixel counts per bin over an iterable of ab batches (B, 2, H, W) in Lab units."""
    counts = torch.zeros(len(bin_centers()), dtype=torch.float64)
    for ab in ab_batches:
        bins = nearest_bin(ab.movedim(1, -1)).flatten()
        counts += torch.bincount(bins, minlength=len(counts)).double().cpu()
    return counts


def classification_loss(logits: torch.Tensor, ab: torch.Tensor, weights: torch.Tensor
                        ) -> torch.Tensor:
    """The rebalanced cross-entropy of logits (B, Q, H, W) against the soft encoding of ab
    (B, 2, H, W) in Lab units; each pixel weighs as its nearest bin's rebalancing weight."""
    index, soft = soft_encode(ab.movedim(1, -1))
    log_probs = torch.log_softmax(logits.float(), 1).movedim(1, -1)
    per_pixel = -(log_probs.gather(-1, index) * soft).sum(-1)
    return (per_pixel * weights.to(logits.device)[index[..., 0]]).mean()


def annealed_mean(logits: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """ab (B, 2, H, W) in Lab units from logits (B, Q, H, W): the mean of the bin centres under
    the distribution sharpened by `temperature` (1: the mean, toward 0: the mode)."""
    probs = torch.softmax(logits.float() / temperature, 1)
    centres = bin_centers().to(logits.device)
    return torch.einsum("bqhw,qc->bchw", probs, centres)
