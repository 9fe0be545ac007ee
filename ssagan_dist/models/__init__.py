"""The model zoo. Importing this package registers every model in ``registry``."""

from ssagan_dist.models import registry
from ssagan_dist.models import unet3d, hrvgan, video3d, convlstm, pix2pix, dcgan  # noqa: F401  (register)
from ssagan_dist.models.registry import build_networks, get, names

__all__ = ["registry", "build_networks", "get", "names"]
