"""Simulated patient motion on 2D MR slices, and the SSIM that measures it.

:func:`simulate_motion` corrupts a magnitude image with rigid in-plane motion in k-space;
:func:`ssim` compares the corrupted image with the clean one (MONAI, Wang et al. 2004).
:func:`medres.datasets.motion.export.export_motion` applies both to real volumes to make
the "MR motion QA" training set.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from medres.datasets._export import unit_interval
from medres.errors import ConfigError

# Motion model defaults (see simulate_motion); tuned so that on a 96x96 MNI slice the
# mean SSIM falls from 1 (severity 0) through ~0.87 (0.2) and ~0.74 (0.5) to ~0.6 (1).
MAX_FRACTION = 0.4  # share of phase-encoding lines hit at severity 1
MAX_SHIFT_PX = 3.0  # largest in-plane translation at severity 1, pixels of the image
MAX_PHASE_RAD = math.pi / 2  # largest per-line phase error at severity 1
CENTRE_FRACTION = 0.08  # central band of k-space lines protected from motion
CENTRE_WEIGHT = 0.1  # relative chance of a central line being hit: CENTRE_WEIGHT * severity²

# SSIM (Wang et al. 2004): gaussian window 11, sigma 1.5, K1 0.01, K2 0.03.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def simulate_motion(
    image: np.ndarray,
    rng: np.random.Generator | int,
    *,
    severity: float,
    pe_axis: int = 0,
    max_fraction: float = MAX_FRACTION,
    max_shift_px: float = MAX_SHIFT_PX,
    max_phase_rad: float = MAX_PHASE_RAD,
    centre_fraction: float = CENTRE_FRACTION,
) -> np.ndarray:
    """Corrupt a 2D magnitude image with simulated rigid in-plane motion, in k-space.

    Written with numpy's FFT rather than TorchIO's ``RandomMotion``: TorchIO is not a
    dependency. The model (after Shaw et al. 2019, simplified to per-line motion):

    1. ``K = fftshift(fft2(image))``; line ``i`` is ``K[i, :]`` for ``pe_axis=0`` (one
       phase-encoding step, all readout samples).
    2. ``round(severity * max_fraction * n_lines)`` lines are hit, drawn without
       replacement. Lines in the central band (``centre_fraction`` of the lines around
       k = 0) are ``CENTRE_WEIGHT * severity²`` times as likely as outer ones, so the
       contrast-carrying centre is almost never hit at low severity (real motion
       corrupts outer lines far more often, as they are most of the acquisition).
    3. Each hit line is multiplied by ``exp(-2πi(k_pe·d_pe + k_ro·d_ro) + iφ)``: a
       translation (d_pe, d_ro) uniform in ``±severity * max_shift_px`` pixels and a
       constant phase error φ uniform in ``±severity * max_phase_rad``; k_pe is the
       line's frequency, k_ro the readout frequencies (cycles per pixel).
    4. ``|ifft2(ifftshift(K))|``.

    Args:
        image: (X, Y) float, a magnitude image (non-negative, finite), any scale.
        rng: a numpy Generator (or a seed) that draws the lines, shifts and phases.
        severity: in [0, 1]; 0 returns the image unchanged (an exact float64 copy).
        pe_axis: the phase-encoding axis of ``image`` (0 or 1).
        max_fraction, max_shift_px, max_phase_rad, centre_fraction: the motion at
            severity 1 (defaults above; they are recorded in an export's ``SOURCE.md``).

    Returns:
        (X, Y) float64, non-negative, same intensity scale as ``image`` (ringing may
        exceed the input's maximum slightly; clip before quantising).

    Raises:
        ConfigError: image not 2D, not finite or negative; severity outside [0, 1];
            pe_axis not 0 or 1.
    """
    image = _magnitude_image(image)
    severity = unit_interval("severity", severity)
    if pe_axis not in (0, 1):
        raise ConfigError(f"pe_axis must be 0 or 1; got {pe_axis!r}")
    rng = np.random.default_rng(rng)
    if pe_axis == 1:
        image = image.T
    n_lines, n_read = image.shape
    n_hit = round(severity * max_fraction * n_lines)
    if n_hit == 0:
        out = image.copy()
        return out.T.copy() if pe_axis == 1 else out

    weights = np.ones(n_lines)
    centre, half = n_lines // 2, max(1, round(centre_fraction * n_lines / 2))
    weights[max(0, centre - half) : centre + half + 1] = CENTRE_WEIGHT * severity**2
    lines = rng.choice(n_lines, size=n_hit, replace=False, p=weights / weights.sum())
    shifts = rng.uniform(-1.0, 1.0, size=(n_hit, 2)) * max_shift_px * severity
    phases = rng.uniform(-1.0, 1.0, size=n_hit) * max_phase_rad * severity

    k_lines = np.fft.fftshift(np.fft.fftfreq(n_lines))[lines]  # cycles / pixel
    k_read = np.fft.fftshift(np.fft.fftfreq(n_read))
    kspace = np.fft.fftshift(np.fft.fft2(image))
    kspace[lines] *= np.exp(
        -2j * np.pi * (k_lines[:, None] * shifts[:, :1] + k_read[None, :] * shifts[:, 1:])
        + 1j * phases[:, None]
    )
    out = np.abs(np.fft.ifft2(np.fft.ifftshift(kspace)))
    return out.T.copy() if pe_axis == 1 else out


def _magnitude_image(image: np.ndarray) -> np.ndarray:
    """``image`` as a (X, Y) float64 array; ConfigError unless it is 2D, real, finite and
    non-negative."""
    image = np.asarray(image)
    if image.ndim != 2 or min(image.shape) < 1:
        raise ConfigError(f"simulate_motion needs a 2D (X, Y) image; got shape {image.shape}")
    if image.dtype.kind not in "uif":
        raise ConfigError(f"simulate_motion needs a real-valued image; got dtype {image.dtype}")
    image = image.astype(np.float64)
    if not np.all(np.isfinite(image)):
        raise ConfigError("simulate_motion: the image holds NaN or infinite values")
    if image.min() < 0:
        raise ConfigError(
            f"simulate_motion needs a magnitude image (>= 0); its minimum is {image.min():g}. "
            "Shift or clip it first (e.g. percentile-normalise to [0, 1])"
        )
    return image


def ssim(clean: np.ndarray, corrupted: np.ndarray, data_range: float) -> float:
    """Structural similarity of two 2D images (Wang et al. 2004) with MONAI.

    Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03; the mean of the SSIM map over the
    positions where the window fits wholly inside the image (no padding), as in Wang et
    al.'s reference code. MONAI computes in float32: values are good to about 1e-4
    (flat bright regions are the worst case), and are capped at 1.

    Args:
        clean: (X, Y) the reference image.
        corrupted: (X, Y) the image to compare, same shape.
        data_range: the intensities' range (255 for 8-bit images, 1 for [0, 1]).

    Returns:
        SSIM as a float, 1.0 for identical images, lower for less similar ones.

    Raises:
        ConfigError: shapes differ, are not 2D or are smaller than 11x11; data_range <= 0.
    """
    clean, corrupted = np.asarray(clean), np.asarray(corrupted)
    if clean.shape != corrupted.shape or clean.ndim != 2:
        raise ConfigError(
            f"ssim needs two 2D images of the same shape; got {clean.shape} and {corrupted.shape}"
        )
    return float(ssim_batch(clean, corrupted[None], data_range)[0])


def ssim_batch(clean: np.ndarray, corrupted: np.ndarray, data_range: float) -> np.ndarray:
    """SSIM of one (X, Y) image against each of (N, X, Y): (N,) float64."""
    import torch
    from monai.metrics.regression import compute_ssim_and_cs

    if not (isinstance(data_range, int | float) and data_range > 0):
        raise ConfigError(f"ssim: data_range must be a positive number; got {data_range!r}")
    if min(clean.shape) < SSIM_WINDOW:
        raise ConfigError(
            f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} (the window); got "
            f"{clean.shape}"
        )
    # Scaled to [0, 1] first: MONAI computes in float32, where x² - mean² on 0..255 loses
    # digits. The N images go in as channels (MONAI convolves them as groups): measured
    # 8x faster than as a batch of N one-channel images.
    x = torch.from_numpy(np.asarray(corrupted, dtype=np.float64) / data_range)[None]
    y = torch.from_numpy(np.asarray(clean, dtype=np.float64) / data_range)[None, None]
    with one_torch_thread():
        ssim_map, _ = compute_ssim_and_cs(
            x,
            y.expand_as(x),
            spatial_dims=2,
            kernel_size=(SSIM_WINDOW, SSIM_WINDOW),
            kernel_sigma=(SSIM_SIGMA, SSIM_SIGMA),
            data_range=1.0,
            k1=SSIM_K1,
            k2=SSIM_K2,
        )
    # MONAI works in float32 (~1e-4 error near flat regions); SSIM is at most 1
    return np.minimum(ssim_map[0].mean(dim=(1, 2)).double().numpy(), 1.0)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread: its ops here are tiny, and on 2 busy cores two threads
    were measured 4x slower (SSIM of 8 slices of 96x96: 11.7 vs 3.0 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
