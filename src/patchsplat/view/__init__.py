"""``patchsplat view``: the merged splats (or one patch's), the cameras, the patches' cells and the mesh in a
browser, served by viser (the viewer library gsplat and nerfstudio use) on 127.0.0.1 unless told otherwise.

:mod:`.scene` reads what to show from a workspace as arrays; :mod:`.server` draws it with viser.
"""

from patchsplat.view.scene import ViewScene, load_view_scene
from patchsplat.view.server import ViewerOptions, serve_until_interrupted, start_viewer, viewer_url

__all__ = ["ViewScene", "ViewerOptions", "load_view_scene", "serve_until_interrupted", "start_viewer", "viewer_url"]
