"""Datasets for training and evaluation: the embedded digits, TFDS names, image folders, arrays.

Everything here is NumPy and Pillow: no JAX, so the data never touches the accelerator and
the prefetch thread cannot race with a device computation. :mod:`.sources` reads,
:mod:`.tfds` reads TFDS, :mod:`.batches` batches, :mod:`.dataset` holds the shared parts.

Sources accepted by :func:`load`:

``"digits"`` (the default)
    ``sklearn.datasets.load_digits``: 1,797 real 8x8 handwritten digits (values 0..16),
    shipped inside scikit-learn, so the default run works offline. Scaled to [0, 1] (stored
    float32), resized to the model's input and split train/test 80/20 (1,438 / 359),
    stratified, from ``seed``.
a TFDS name (``"mnist"``, ``"cifar10"``, ... see :data:`DATASET_CHOICES`; any other TFDS
image classification dataset as ``"tfds:NAME"``)
    Read from ``data_dir`` with ``download=False`` semantics: data that is not prepared fails
    at once with the command that prepares it (TFDS would otherwise retry a download for
    minutes on a machine without network). Train split ``"train"``; eval split ``"test"``,
    or ``"validation"`` when there is no test split.
a folder path
    One subfolder per class (class names = sorted subfolder names, hidden ones ignored),
    image files in any format Pillow reads, found recursively. Evaluation data comes from
    ``val_dataset`` (another such folder with the same classes) or a stratified
    ``val_fraction`` of the folder (default 0.2). Extensions match in any case (.JPG);
    hidden files (.DS_Store, ._x.jpg) are ignored; other non-image files are skipped with
    one warning that counts them. Links are followed once per real path: a folder already
    walked, one of another class or one above the class folder (a loop) is ignored with
    one warning. Every mode is read as 8-bit gray or RGB (:mod:`zoo.image_files`: 16-bit
    scaled by 255/65535, transparency over white). Image files that cannot be read
    (empty, truncated, damaged, not an image) are skipped with one warning that counts
    and names them, or with ``strict_images=True`` are an error (:class:`ImageFileError`);
    a folder or a class left without images is that error either way.
``(images, labels)``
    NumPy arrays (Python API): images (N, H, W, C) uint8 0..255, float in [0, 1] (finite)
    or bool (0/255), labels (N,) integers 0..K-1 (whole floats accepted), K = max + 1 at
    most ``zoo.registry.MAX_CLASSES``; labels are checked before anything is sized by
    them, and an error names the offending value and its index. Evaluation data from
    ``val_fraction`` (default 0.2).

Sizes are checked before allocating: the images at the model's size must fit in half of
the machine's memory (:func:`check_memory`).

Fitting images to the model (one rule for every source, :func:`zoo.images.fit_images`): an image
smaller than the target by at most 1/8 of the target's size on each axis is zero-padded,
centred (MNIST's 28x28 in LeNet-5's 32x32 field, as the paper did); any other image is
resized with a bilinear (triangle) filter, widened when shrinking (antialiased, as Pillow
does), so that it covers the target with its aspect ratio kept, then centre-cropped (the
8x8 digits become 32x32 for LeNet-5). Small sources are resized as a batch by NumPy matrix
products, large ones by Pillow (same filter). Grayscale becomes RGB by repeating the
channel; RGB becomes grayscale with ITU-R 601 luma weights (Pillow's "L"); RGBA arrays lose
alpha (image files with transparency are composited over white).
Images are kept in memory at the target size (uint8 where the source is 8-bit): CIFAR-10
at 32x32 is 150 MB, at 224x224 7.5 GB. Larger sets are streamed: :func:`open_stream` lists a
folder or opens a TFDS data source, and :func:`stream_batches` decodes, augments and
normalises batches in Grain worker processes, a pure function of ``(seed, epoch, index)``
(:mod:`.stream`); :func:`plan_data` chooses the path (``auto``: memory when the decoded set
fits :data:`MEMORY_BUDGET` of the machine's memory).

Normalisation statistics (``Dataset.mean``/``std``, per channel, of images scaled to
[0, 1]) are computed on the training split and copied to the evaluation split, so
``batches(eval_ds, ...)`` normalises exactly like training.

Augmentation (``Dataset.augment``, :mod:`.augment`): ``"none"``, ``"crop_flip"`` (zero-pad
by ``max(1, size // 8)``, random crop, flip with probability 1/2; CIFAR) or
``"random_resized_crop"`` (torchvision's ImageNet rule, then the flip). ``augment="auto"``
(the default) never flips single-channel sources or glyph datasets (a flipped digit is a
different digit), gives RGB ``crop_flip`` at inputs of at most 64 px and
``random_resized_crop`` above; ``Dataset.augment_reason`` says why. Applied by
:func:`batches` in training only, drawn from ``(seed, epoch, index)``.
"""
from ..images import fit_image, fit_images
from .batches import batches, check_batch_size, steps_per_epoch
from .dataset import (AUGMENTATIONS, DataError, Dataset, ImageFileError, check_labels,
                      check_memory, stratified_split)
from .sources import DATASET_CHOICES, load
from .stream import (DATA_MODES, MEMORY_BUDGET, DataPlan, RunStream, StreamBatches,
                     memory_bytes, plan_data, stream_batches)
from .stream_sources import STATS_SAMPLE, StreamSet, open_stream
from .tfds import TFDS_DATASETS

__all__ = ["AUGMENTATIONS", "DATASET_CHOICES", "DataError", "Dataset", "ImageFileError",
           "TFDS_DATASETS", "batches", "check_batch_size", "check_labels", "check_memory",
           "fit_image", "fit_images", "load", "steps_per_epoch", "stratified_split",
           "DATA_MODES", "MEMORY_BUDGET", "DataPlan", "RunStream", "STATS_SAMPLE", "StreamBatches",
           "StreamSet", "memory_bytes", "open_stream", "plan_data", "stream_batches"]
