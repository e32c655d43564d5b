"""Input-preprocessing defences applied to a dataset's test inputs before classification.

Each defence returns a new ``ArrayDataset`` with transformed ``x_test``, so the same
``accuracy`` task measures clean, attacked and defended data alike. Applying a defence to
clean data as well shows what it costs when there is no attack.
"""

from dioptra import pyplugs

from dioptra_builtins._quiet import art_import
from dioptra_builtins.datasets.arrays import ArrayDataset

with art_import():
    from art.defences.preprocessor import FeatureSqueezing, JpegCompression, SpatialSmoothing


@pyplugs.register
def feature_squeezing(data: ArrayDataset, bit_depth: int = 1) -> ArrayDataset:
    """Reduce every input value to ``bit_depth`` bits, erasing small perturbations.

    On 8x8 digits, ``bit_depth=1`` (black or white pixels) keeps most clean accuracy
    while undoing part of an FGSM attack.
    """
    squeezer = FeatureSqueezing(clip_values=data.clip_values, bit_depth=bit_depth)
    squeezed, _ = squeezer(data.x_test)
    return data.with_test_inputs(squeezed.astype(data.x_test.dtype), f"squeeze({bit_depth})")


@pyplugs.register
def spatial_smoothing(data: ArrayDataset, window_size: int = 3) -> ArrayDataset:
    """Replace each pixel by the median of its ``window_size`` neighbourhood.

    A classic defence for natural images; on tiny 8x8 digits it also blurs the strokes
    that tell digits apart, which the clean-data accuracy makes visible.
    """
    smoother = SpatialSmoothing(
        window_size=window_size, channels_first=False, clip_values=data.clip_values
    )
    smoothed, _ = smoother(data.test_images())
    flat = smoothed.reshape(data.x_test.shape).astype(data.x_test.dtype)
    return data.with_test_inputs(flat, f"smooth({window_size})")


@pyplugs.register
def jpeg_compression(data: ArrayDataset, quality: int = 50) -> ArrayDataset:
    """Round-trip each test image through JPEG at ``quality`` (1-95), discarding fine detail."""
    compressor = JpegCompression(
        clip_values=data.clip_values, quality=quality, channels_first=False
    )
    compressed, _ = compressor(data.test_images())
    flat = compressed.reshape(data.x_test.shape).astype(data.x_test.dtype)
    return data.with_test_inputs(flat, f"jpeg({quality})")
