"""The Fashion-MNIST models shipped in the package load by name and draw recognisable images of the requested
classes (judged by the shipped classifier). Small batches: the benchmark (benchmarks/fmnist_quality.py) measures
quality on 10k samples; this only guards against a broken or mis-shipped model."""
import numpy as np
import pytest
import torch

from vision_ar.eval.fmnist_metrics import FashionMNISTEvaluator
from vision_ar.pipelines import SHIPPED, load_pipeline, shipped_models


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_draws_its_classes(name):
    if name not in shipped_models():
        pytest.fail(f"shipped model {name} is missing from vision_ar/weights")
    pipe = load_pipeline(name)
    labels = list(range(10)) * 3
    out = pipe(class_labels=labels, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (30, 32, 32, 3) and out.images.dtype == np.uint8
    again = pipe(class_labels=labels, generator=torch.Generator().manual_seed(0), output_type="np")
    assert np.array_equal(again.images, out.images)  # same seed, same images
    accuracy = FashionMNISTEvaluator().accuracy(out.images, labels)
    assert accuracy >= 0.7, f"{name}: only {accuracy:.0%} of samples classified as their class"
