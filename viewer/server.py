"""The 3D viewer: one viser server playing a run's deformable Gaussians over time, with the grid's
cameras as frusta showing their frames, and a button to look through any of them.

Playback follows viser's record3d example: one splat node per time step, all sent once, and a time
change only toggles visibility inside ``server.atomic()`` (a full splat update per frame would
cost megabytes over the websocket). The caller (the studio) reads the files and passes arrays; this
module never reads run folders and never imports the app.

    viewer = ViewerServer("127.0.0.1", 8080)
    viewer.show_splats(frames, cameras=[{"viewmat": ..., "K": ...}], images=grid.frames, fps=8)
    print(viewer.url)
"""

from __future__ import annotations

import threading

import numpy as np

from .splats import CameraPose, Normaliser, camera_pose, fit_normaliser, scene_up, splat_arrays

FRUSTUM_THUMB_WIDTH = 160  # frames on the frusta are sent as small JPEGs
BRAND = (255, 170, 40)  # the studio's amber
FRUSTUM_COLOR = (150, 155, 165)


def _thumb(image: np.ndarray, width: int = FRUSTUM_THUMB_WIDTH) -> np.ndarray:
    """Nearest-neighbour downscale of uint8 [H, W, 3] to at most ``width`` wide (no cv2 needed)."""
    h, w = image.shape[:2]
    if w <= width:
        return np.ascontiguousarray(image)
    step = w / width
    ys = (np.arange(round(h / step)) * step).astype(int).clip(0, h - 1)
    xs = (np.arange(width) * step).astype(int).clip(0, w - 1)
    return np.ascontiguousarray(image[ys][:, xs])


class ViewerServer:
    """A viser server bound to ``host:port`` (the next free port if taken; 0 picks any).

    ``show_splats`` replaces what is shown. GUI: a time slider, Play, speed, camera frusta on/off,
    a camera picker with "Look through", and "Reset view". Clicking a frustum looks through it.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, dark: bool = True):
        import viser

        self.host = host
        self.server = viser.ViserServer(host=host, port=port, label="4D viewer", verbose=False)
        self.server.gui.configure_theme(dark_mode=dark, show_logo=False, show_share_button=False,
                                        brand_color=BRAND, control_width="medium")
        self._lock = threading.RLock()
        self._splats: list = []  # one splat handle per time step
        self._frusta: list = []  # one frustum handle per grid view
        self._poses: list[CameraPose] = []
        self._images: np.ndarray | None = None  # uint8 [V, T', h, w, 3] thumbnails
        self._time = 0
        self._fps = 8.0
        self._home: tuple[np.ndarray, np.ndarray] | None = None  # camera position, look-at
        self._stop = threading.Event()
        self._build_gui()
        self._player = threading.Thread(target=self._play_loop, name="viewer-play", daemon=True)
        self._player.start()

    # -- public ----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.server.get_port()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def times(self) -> int:
        return len(self._splats)

    @property
    def time(self) -> int:
        return self._time

    def show_splats(self, frames: list[dict], cameras: list[dict] | None = None,
                    images: np.ndarray | None = None, fps: float = 8.0, title: str = "") -> None:
        """Show one splat set per time step (``frames``; see ``viewer.splats.splat_arrays`` for the
        keys), the grid ``cameras`` (``{"viewmat" [4,4] world-to-camera, "K" [3,3]}`` per view) and
        their frames ``images`` (uint8 [V, T, H, W, 3]) on the frusta."""
        if not frames:
            raise ValueError("show_splats needs at least one time step")
        arrays = [splat_arrays(f) for f in frames]
        norm = fit_normaliser(np.concatenate([a.centers for a in arrays]))
        arrays = [norm.apply(a) for a in arrays]
        with self._lock:
            self._clear_scene()
            self._fps = float(fps)
            scene = self.server.scene
            with self.server.atomic():
                for t, a in enumerate(arrays):
                    self._splats.append(scene.add_gaussian_splats(
                        f"/splats/t{t:03d}", centers=a.centers, covariances=a.covariances,
                        rgbs=a.rgbs, opacities=a.opacities, visible=(t == 0)))
                self._add_cameras(cameras or [], images, norm)
            self._time = 0
            T = len(arrays)
            self._gui_time.max = max(T - 1, 1)
            self._gui_time.disabled = T < 2
            self._gui_play.disabled = T < 2
            self._gui_time.value = 0
            self._gui_fps.value = float(np.clip(fps, 1, 30))
            n = len(arrays[0])
            self._gui_info.content = (f"**{title or 'Deformable Gaussians'}**  \n"
                                      f"{n:,} Gaussians · {T} time step{'s' if T != 1 else ''}"
                                      f" · {len(self._poses)} cameras")
            names = [f"view {v}" for v in range(len(self._poses))] or ["(no cameras)"]
            self._gui_camera.options = names
            self._gui_camera.value = names[0]
            self._gui_look.disabled = not self._poses
            self._set_home()
            for client in self.server.get_clients().values():
                self._go_home(client)

    def set_time(self, t: int) -> None:
        """Show time step ``t`` (clamped): splat visibility and frustum images, in one update."""
        with self._lock:
            if not self._splats:
                return
            t = int(np.clip(t, 0, len(self._splats) - 1))
            prev, self._time = self._time, t
            with self.server.atomic():
                if prev != t and prev < len(self._splats):
                    self._splats[prev].visible = False
                self._splats[t].visible = True
                self._update_frustum_images()

    def look_through(self, view: int, client=None) -> CameraPose:
        """Move ``client``'s camera (every client if None) onto grid camera ``view``."""
        pose = self._poses[int(view)]
        clients = [client] if client is not None else list(self.server.get_clients().values())
        for c in clients:
            with c.atomic():
                c.camera.fov = pose.fov
                c.camera.wxyz = pose.wxyz
                c.camera.position = pose.position
        return pose

    def stop(self) -> None:
        self._stop.set()
        self.server.stop()

    # -- scene -----------------------------------------------------------------------------
    def _clear_scene(self) -> None:
        for h in self._splats + self._frusta:
            h.remove()
        self._splats, self._frusta, self._poses, self._images = [], [], [], None

    def _add_cameras(self, cameras: list[dict], images: np.ndarray | None, norm: Normaliser) -> None:
        if images is not None:
            images = np.asarray(images)
            self._images = np.stack([np.stack([_thumb(im) for im in row]) for row in images])
        h, w = (images.shape[2:4] if images is not None else (9, 16))
        self._poses = [camera_pose(c["viewmat"], c["K"], h, w, norm) for c in cameras]
        if self._poses:
            self.server.scene.set_up_direction(scene_up(self._poses))
        size = self._frustum_size()
        for v, pose in enumerate(self._poses):
            handle = self.server.scene.add_camera_frustum(
                f"/cameras/view_{v:02d}", fov=pose.fov, aspect=pose.aspect, scale=size,
                thickness=2.0, thickness_units="screen", color=BRAND if v == 0 else FRUSTUM_COLOR,
                image=self._frame_for(v, 0), wxyz=pose.wxyz, position=pose.position,
                visible=self._gui_frusta.value)
            handle.on_click(lambda event, v=v: self.look_through(v, event.client))
            self._frusta.append(handle)

    def _frustum_size(self) -> float:
        """Frusta a fraction of the rig's distance to the scene, so they frame it, not hide it."""
        if not self._poses:
            return 0.2
        dist = float(np.median([np.linalg.norm(p.position) for p in self._poses]))
        return float(np.clip(0.08 * dist, 0.03, 0.3))

    def _frame_for(self, v: int, t: int) -> np.ndarray | None:
        if self._images is None or v >= len(self._images):
            return None
        T_img = self._images.shape[1]
        T = max(len(self._splats), 1)
        ti = round(t * (T_img - 1) / (T - 1)) if T > 1 else 0  # splat steps may differ from grid times
        return self._images[v, int(np.clip(ti, 0, T_img - 1))]

    def _update_frustum_images(self) -> None:
        if self._images is None or not self._gui_frusta.value:
            return
        for v, handle in enumerate(self._frusta):
            handle.image = self._frame_for(v, self._time)

    def _set_home(self) -> None:
        """Start above and to the side of camera 0, looking at the scene's centre (the origin), so
        the frusta are seen at an angle instead of covering the view."""
        if self._poses:
            p, up = self._poses[0].position, scene_up(self._poses)
            dist = max(float(np.linalg.norm(p)), 0.5)
            a = np.deg2rad(35.0)  # Rodrigues: turn p about the up axis
            turned = p * np.cos(a) + np.cross(up, p) * np.sin(a) + up * float(up @ p) * (1 - np.cos(a))
            position = turned * 1.7 + up * 0.7 * dist
        else:
            position = np.array([1.6, -1.2, 1.2])
        self._home = (position, np.zeros(3))
        self.server.initial_camera.position = position
        self.server.initial_camera.look_at = (0.0, 0.0, 0.0)

    def _go_home(self, client) -> None:
        if self._home is None:
            return
        with client.atomic():
            client.camera.position = self._home[0]
            client.camera.look_at = self._home[1]
            client.camera.up_direction = scene_up(self._poses)

    # -- GUI -------------------------------------------------------------------------------
    def _build_gui(self) -> None:
        gui = self.server.gui
        self._gui_info = gui.add_markdown("Waiting for a reconstruction…")
        with gui.add_folder("Time"):
            self._gui_time = gui.add_slider("Time step", min=0, max=1, step=1, initial_value=0,
                                            disabled=True)
            self._gui_play = gui.add_checkbox("Play", initial_value=False, disabled=True)
            self._gui_fps = gui.add_slider("Speed (fps)", min=1.0, max=30.0, step=1.0, initial_value=8.0)
        with gui.add_folder("Cameras"):
            self._gui_frusta = gui.add_checkbox("Show grid cameras", initial_value=True)
            self._gui_camera = gui.add_dropdown("Camera", options=["(no cameras)"])
            self._gui_look = gui.add_button("Look through camera", disabled=True)
            self._gui_home = gui.add_button("Reset view")

        @self._gui_time.on_update
        def _(_event) -> None:
            self.set_time(int(self._gui_time.value))

        @self._gui_frusta.on_update
        def _(_event) -> None:
            with self._lock, self.server.atomic():
                for h in self._frusta:
                    h.visible = self._gui_frusta.value
                self._update_frustum_images()

        @self._gui_look.on_click
        def _(event) -> None:
            name = self._gui_camera.value
            if self._poses and name.startswith("view "):
                self.look_through(int(name.split()[1]), event.client)

        @self._gui_home.on_click
        def _(event) -> None:
            self._go_home(event.client)

    def _play_loop(self) -> None:
        """Advance the time slider while Play is ticked (the slider's callback does the rest)."""
        while not self._stop.wait(1.0 / max(float(self._gui_fps.value), 1.0)):
            if self._gui_play.value and len(self._splats) > 1:
                self._gui_time.value = (self._time + 1) % len(self._splats)
