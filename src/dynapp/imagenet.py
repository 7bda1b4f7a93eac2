"""ImageNet's per-channel mean and standard deviation: the normalisation of every clip.

The data pipeline normalises with them (:mod:`dynapp.data.transforms`) and the representations
that need pixel values back (optical flow on grey levels) undo it; both read them here, so that
neither imports the other.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
