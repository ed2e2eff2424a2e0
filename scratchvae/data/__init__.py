"""Data layer: IDX reading, verified downloads and the MNIST-like datasets.

Imports only numpy and the standard library, and never prints (downloads report through an
optional ``progress(done_bytes, total_bytes_or_None)`` callback).

>>> train, test = load_dataset("embedded")        # 5,000 / 1,000 images, no network
>>> train.images.shape, train.images.dtype         # ((5000, 784), dtype('uint8'))
"""

from scratchvae.data.datasets import (
    DATASETS,
    Dataset,
    default_cache_dir,
    load_dataset,
    load_embedded,
)
from scratchvae.data.download import FILES, MIRRORS, SHA256, download_dataset, download_file
from scratchvae.data.idx import MAX_PAYLOAD_BYTES, read_idx

__all__ = [
    "DATASETS", "Dataset", "FILES", "MAX_PAYLOAD_BYTES", "MIRRORS", "SHA256",
    "default_cache_dir", "download_dataset", "download_file",
    "load_dataset", "load_embedded", "read_idx",
]
