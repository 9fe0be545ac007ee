"""The model zoo. Importing this package registers every model in ``registry``."""

from ssagan_dist.models import registry
from ssagan_dist.models.registry import build_networks, get, names

__all__ = ["registry", "build_networks", "get", "names"]
