"""Data layer: IDX reading, verified downloads, the MNIST-like datasets and one's own data.

Imports only numpy, the standard library, Pillow (for image folders, lazily) and the random
streams of the backend floor, and never prints (downloads report through an
optional ``progress(done_bytes, total_bytes_or_None)`` callback).

>>> train, test = load_dataset("embedded")        # 5,000 / 1,000 images, no network
>>> train.images.shape, train.images.dtype         # ((5000, 784), dtype('uint8'))
"""

from scratchvae.data.custom import load_image_folder, load_npz, load_path, split_test
from scratchvae.data.dataset import Dataset
from scratchvae.data.datasets import DATASETS, default_cache_dir, load_dataset, load_embedded
from scratchvae.data.download import GZ_CHECKS, MIRRORS, SHA256, download_dataset, download_file
from scratchvae.data.idx import FILES, MAX_PAYLOAD_BYTES, read_idx

__all__ = [
    "DATASETS", "Dataset", "FILES", "GZ_CHECKS", "MAX_PAYLOAD_BYTES", "MIRRORS", "SHA256",
    "default_cache_dir", "download_dataset", "download_file", "load_dataset", "load_embedded",
    "load_image_folder", "load_npz", "load_path", "read_idx", "split_test",
]
