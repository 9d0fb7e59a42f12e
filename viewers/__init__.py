"""The viser web viewer (``snap3d view``, ``snap3d train ... --viewer``).

Needs the ``viewer`` extra (``pip install 'snap3d[viewer]'``); viser itself is imported
only when a viewer starts.
"""

from .scene import ViewerScene, open_scene
from .server import SceneViewer, view_command

__all__ = ["SceneViewer", "ViewerScene", "open_scene", "view_command"]
