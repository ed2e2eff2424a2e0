"""The :class:`Dataset`: one split of images (flattened rows), their labels and image shape."""

from dataclasses import dataclass

import numpy as np

from scratchvae.errors import DataError


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a dataset.

    ``images`` (N, D): uint8 pixels 0..255, or floats (float32/float64); ``labels`` (N,)
    non-negative integers, or None for unlabelled data; ``name``; ``image_shape`` (H, W) or
    (H, W, C) with C = 1 or 3, the shape each row unflattens to for figures (None: not images);
    ``classes``: the name of each label value, where the data named them (image sub-folders);
    ``held_out``: on a test set that was split off the training images, the fraction held out.
    """

    images: np.ndarray
    labels: object
    name: str
    image_shape: object = None
    classes: object = None
    held_out: object = None

    def __post_init__(self):
        im, lb = self.images, self.labels
        if not isinstance(im, np.ndarray) or im.ndim != 2 or not (im.dtype == np.uint8 or im.dtype.kind == "f"):
            raise DataError(f"{self.name}: images must be an (N, D) array of uint8 or floats, "
                            f"got {_describe(im)}")
        if lb is not None:
            if not isinstance(lb, np.ndarray) or lb.ndim != 1 or lb.dtype.kind not in "ui":
                raise DataError(f"{self.name}: labels must be an integer array of shape (N,) or None, "
                                f"got {_describe(lb)}")
            if len(im) != len(lb):
                raise DataError(f"{self.name}: images and labels must have the same length, "
                                f"got {len(im)} images and {len(lb)} labels")
            if lb.size and int(lb.min()) < 0:
                raise DataError(f"{self.name}: labels must be >= 0, got a {int(lb.min())}")
        if self.image_shape is not None:
            shape = tuple(self.image_shape)
            ok = len(shape) in (2, 3) and all(isinstance(d, (int, np.integer)) and d > 0 for d in shape) \
                and (len(shape) == 2 or shape[2] in (1, 3)) and int(np.prod(shape)) == im.shape[1]
            if not ok:
                raise DataError(f"{self.name}: image_shape must be (H, W) or (H, W, C) with C 1 or 3 and "
                                f"H·W·C = {im.shape[1]} values per row, got {self.image_shape!r}")
            object.__setattr__(self, "image_shape", tuple(int(d) for d in shape))

    def __len__(self):
        return len(self.images)

    def take(self, index, name=None, held_out=None):
        """The rows ``index`` (an index array or slice) as a Dataset of the same kind."""
        return Dataset(self.images[index], None if self.labels is None else self.labels[index],
                       name or self.name, self.image_shape, self.classes, held_out)


def check_image_shape(image_shape, width):
    """``image_shape`` (H, W[, C]) as a tuple of ints, once it holds ``width`` values per image."""
    shape = tuple(int(d) for d in image_shape)
    if int(np.prod(shape)) != width:
        raise DataError(f"image_shape (--image-shape) {','.join(map(str, shape))} holds {int(np.prod(shape))} "
                        f"values per image; the data have {width}")
    return shape


def _describe(a):
    if hasattr(a, "dtype") and hasattr(a, "shape"):
        return f"{a.dtype} array of shape {tuple(a.shape)}"
    return type(a).__name__
