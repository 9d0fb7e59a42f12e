"""snap3d: 3D/4D neural scenes on every device."""

from snap3d.errors import Snap3dError

__version__ = "0.1.0"
__all__ = ["Snap3dError", "__version__"]
