"""The viewer: a viser server drawing a :class:`~.scene.ViewScene`, one GUI checkbox per layer.

viser renders the splats in the browser (WebGL) from the arrays it is sent; this machine renders only the
image the camera panel asks for (:mod:`.photo_render`). viser's web client is a single page inside its wheel:
nothing is fetched from the internet.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from patchsplat.errors import InputError
from patchsplat.view.scene import CameraPoses, ViewScene

# Layer colours (RGB): the cameras a patch trains on and those held out for evaluation must differ at a
# glance; core cells (owned ground) are drawn strong, expanded cells (ground trained on) light.
TRAINING_CAMERA_COLOUR = (40, 90, 230)
HELDOUT_CAMERA_COLOUR = (245, 130, 20)
CORE_CELL_COLOUR = (20, 150, 70)
EXPANDED_CELL_COLOUR = (150, 200, 160)
# Frustum depth and line widths relative to the scene's ground extent / in screen pixels.
_FRUSTUM_SCALE = 0.04
_LINE_PIXELS = 2.0


@dataclass(frozen=True)
class ViewerOptions:
    """Where the viewer listens. 127.0.0.1: this machine only; another address makes it reachable from others."""

    host: str = "127.0.0.1"
    port: int = 8080        # taken when free, else the next free one (viser's choice); 0: any free port


@dataclass
class Layer:
    """A set of scene nodes shown and hidden together by one checkbox."""

    label: str
    visible: bool
    handles: list = field(default_factory=list)

    def show(self, visible: bool) -> None:
        self.visible = visible
        for handle in self.handles:
            handle.visible = visible


def start_viewer(scene: ViewScene, options: ViewerOptions):
    """A running viser server showing ``scene`` (it serves in its own thread until ``stop()``)."""
    import viser

    check_address(options.host)
    mesh = _read_mesh(scene.mesh_path) if scene.mesh_path is not None else None  # a damaged one: refused before serving
    server = viser.ViserServer(host=options.host, port=options.port, verbose=False)
    _refuse_share_links(server)
    server.scene.set_up_direction(tuple(float(v) for v in scene.up))
    server.initial_camera.position = tuple(float(v) for v in scene.start_position)
    server.initial_camera.look_at = tuple(float(v) for v in scene.look_at)
    layers = [_splat_layer(server, scene), *_camera_layers(server, scene), *_cell_layers(server, scene)]
    if mesh is not None:
        layers.append(_mesh_layer(server, mesh))
    _add_controls(server, scene, layers)
    _add_camera_panel(server, scene)
    return server


def check_address(host: str) -> None:
    """InputError unless this machine can listen on ``host``. viser moves on to the next port when binding fails,
    1000 times, and then waits for ever: an address of no interface here would hang, so it is tried first."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.bind(address)
    except OSError as error:
        raise InputError("--host", f"cannot serve on {host!r} ({error.strerror or error})", kind="bad_address") from None


def _refuse_share_links(server) -> None:
    """No share button: viser's share link is a tunnel through its relay on the internet, which would make the
    viewer public whatever ``--host`` says; a client asking for one anyway gets nothing."""
    server.gui.configure_theme(show_share_button=False)
    server.request_share_url = lambda *args, **kwargs: None


def _splat_layer(server, scene: ViewScene) -> Layer:
    splats = scene.splats
    handle = server.scene.add_gaussian_splats("/splats", centers=splats.centers, covariances=splats.covariances,
                                              rgbs=splats.rgbs, opacities=splats.opacities)
    return Layer(f"splats ({len(splats):,})", True, [handle])


def _camera_layers(server, scene: ViewScene) -> list[Layer]:
    cameras = scene.cameras
    return [
        _frusta(server, "training", cameras, ~cameras.heldout, TRAINING_CAMERA_COLOUR, scene.extent),
        _frusta(server, "held-out", cameras, cameras.heldout, HELDOUT_CAMERA_COLOUR, scene.extent),
    ]


def _frusta(server, kind: str, cameras: CameraPoses, chosen: np.ndarray, colour: tuple[int, int, int], extent: float) -> Layer:
    import viser.transforms as transforms

    layer = Layer(f"{kind} cameras ({int(chosen.sum())})", True)
    for index in np.flatnonzero(chosen):
        wxyz = transforms.SO3.from_matrix(cameras.world_from_camera[index]).wxyz
        layer.handles.append(server.scene.add_camera_frustum(
            f"/cameras/{kind}/{index}", fov=float(cameras.vertical_fov[index]), aspect=float(cameras.aspect[index]),
            scale=_FRUSTUM_SCALE * extent, thickness=_LINE_PIXELS, thickness_units="screen", color=colour,
            wxyz=wxyz, position=cameras.positions[index],
        ))
    return layer


def _cell_layers(server, scene: ViewScene) -> list[Layer]:
    return [
        _segments(server, "core cells", "/cells/core", (cells.core for cells in scene.cells), CORE_CELL_COLOUR),
        _segments(server, "expanded cells", "/cells/expanded", (cells.expanded for cells in scene.cells), EXPANDED_CELL_COLOUR),
    ]


def _segments(server, label: str, name: str, outlines: Iterable[np.ndarray], colour: tuple[int, int, int]) -> Layer:
    points = np.concatenate(list(outlines)).astype(np.float32)
    handle = server.scene.add_line_segments(name, points=points, colors=colour, thickness=_LINE_PIXELS, thickness_units="screen")
    return Layer(label, True, [handle])


def _read_mesh(path: Path):
    import trimesh

    try:
        return trimesh.load(path, force="mesh")
    except Exception as error:  # noqa: BLE001 - trimesh raises many types for a damaged file
        raise InputError(path, f"cannot be read as a mesh: {error}", kind="corrupt_file") from None


def _mesh_layer(server, mesh) -> Layer:
    """The mesh stage's mesh, hidden at first (it covers the splats)."""
    handle = server.scene.add_mesh_trimesh("/mesh", mesh, visible=False)
    return Layer(f"mesh ({len(mesh.faces):,} faces)", False, [handle])


def _add_controls(server, scene: ViewScene, layers: list[Layer]) -> None:
    server.gui.add_markdown(f"**{scene.title}**  \n`{scene.splats_path}`"
                            + ("" if scene.mesh_path else "  \nno mesh yet (the mesh stage has not run)"))
    for layer in layers:
        checkbox = server.gui.add_checkbox(layer.label, initial_value=layer.visible)
        checkbox.on_update(lambda event, layer=layer: layer.show(event.target.value))


def _add_camera_panel(server, scene: ViewScene) -> None:
    """Pick a camera (held-out ones first): look through it in the viewer, or see its photo beside
    patchsplat's render from it (the only rendering done on this machine, and only on request)."""
    cameras = scene.cameras
    order = sorted(range(len(cameras.names)), key=lambda index: (not cameras.heldout[index], cameras.names[index]))
    choices = {f"{cameras.names[index]}{' (held out)' if cameras.heldout[index] else ''}": index for index in order}
    with server.gui.add_folder("camera"):
        dropdown = server.gui.add_dropdown("image", tuple(choices))
        look = server.gui.add_button("look through it")
        render = server.gui.add_button("photo | patchsplat render")
        note = server.gui.add_markdown("", visible=False)
        picture = server.gui.add_image(np.zeros((2, 4, 3), np.uint8), label="photo | render", visible=False)

    @look.on_click
    def _(event) -> None:
        index = choices[dropdown.value]
        if event.client is None:
            return
        import viser.transforms as transforms

        with event.client.atomic():
            event.client.camera.position = cameras.positions[index]
            event.client.camera.wxyz = transforms.SO3.from_matrix(cameras.world_from_camera[index]).wxyz
            event.client.camera.fov = float(cameras.vertical_fov[index])

    @render.on_click
    def _(_event) -> None:
        from patchsplat.view.photo_render import photo_and_render

        name = cameras.names[choices[dropdown.value]]
        render.disabled = True
        try:
            picture.image = photo_and_render(scene.gaussians, scene.model_dir, scene.images_dir, name)
            picture.label = f"{name}: photo | render"
            picture.visible, note.visible = True, False
        except InputError as error:  # e.g. a camera model the renderer cannot take: said in the panel
            note.content, note.visible = error.one_line(), True
        finally:
            render.disabled = False


def viewer_url(server) -> str:
    """The address to open: on every interface (0.0.0.0, ::) this machine's own one, localhost, works."""
    host = server.get_host()
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"
    return f"http://{f'[{host}]' if ':' in host else host}:{server.get_port()}"


def serve_until_interrupted(scene: ViewScene, options: ViewerOptions, say=print) -> None:
    """Serve ``scene``, say its URL, and stop on Ctrl-C (or SIGTERM)."""
    server = start_viewer(scene, options)
    say(f"view: {scene.title} ({len(scene.splats):,} Gaussians, {len(scene.cameras.names)} cameras) at {viewer_url(server)} "
        "(Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("view: stopped")
    finally:
        server.stop()
