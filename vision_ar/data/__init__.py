"""Data: Fashion-MNIST (Debian files), ImageNet-style class folders, cached tokenizer outputs, resumable sampler."""
from .cached import CachedTokens, cache_tokenizer_outputs, content_key
from .fashion_mnist import CLASS_NAMES as FASHION_MNIST_CLASSES, FashionMNIST, load_fashion_mnist_arrays
from .image_folder import ImageFolder, center_crop_arr
from .sampler import ResumableSampler

__all__ = ["CachedTokens", "cache_tokenizer_outputs", "content_key", "FASHION_MNIST_CLASSES", "FashionMNIST",
           "load_fashion_mnist_arrays", "ImageFolder", "center_crop_arr", "ResumableSampler"]
