"""Reconstruction: a grid -> cameras + deformable 3D Gaussians -> standard 3DGS ``.ply`` splats.

Design note (what lives where, and what does not):
- ``api.reconstruct_run`` is the one entry point (CLI, studio, benchmark); it owns all file I/O
  (``splats/`` swapped in atomically, then ``recon.json``).
- ``checks``: early, one-line refusals of grids that cannot be reconstructed.
- ``cameras``: cameras from the frames only (SIFT, fundamental/essential matrices, PnP,
  triangulation, a Schur-complement bundle adjustment with a shared focal length, a second
  round of matching guided by the first cameras), with an orbit prior as fallback. Ground-truth
  cameras are never read here; ``metrics.camera_errors`` compares against them afterwards.
- ``model``: canonical isotropic Gaussians, the temporal deformation MLP (zero at init), the
  per-view compensation offsets, a temporal window per Gaussian (when it exists), an
  environment-map background, per-view pose corrections and a shared focal correction.
- ``fit``: seeding (the first cells from the camera estimate's points; what moves from each
  column's moving pixels, triangulated with the estimated cameras) and the optimisation loop
  (L1 + SSIM, gsplat's ``DefaultStrategy``, photometric camera refinement).
- ``splat_torch``: a pure-torch copy of gsplat's classic rasterizer for CPUs; on CUDA the same
  call goes to ``gsplat.rasterization``. gsplat is imported only inside functions: on a machine
  without CUDA its kernels would start a compile.
- ``ply``: the standard 3DGS ``.ply`` layout, written and read back.
- ``toyscene``: a small known scene with exact cameras for tests and the benchmark;
  ``bench``: the GPU benchmark (``python -m core.recon.bench``).
Not here: the synthetic world, the 3D viewer (it reads ``splats/*.ply`` with ``ply.read_splat_ply``
and the cameras from ``recon.json``).
"""
