"""The camera-only bench on grids rendered on the GPU machine (CUDA), as the reconstruction bench
renders them: `python scripts/gpu_cameras.py A..B [CACHE]` renders each seed's 8x8 grid at
288x512 with `--device cuda` into CACHE (default /tmp/camcache_cuda), then runs
`core.recon.bench.camera_bench` on it, one seed at a time, printing each result as it comes."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.recon.bench import _seed_range, cached_grid, camera_bench  # noqa: E402


def main() -> None:
    seeds = _seed_range(sys.argv[1] if len(sys.argv) > 1 else "1000000000..1000000019")
    cache = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/camcache_cuda")
    passed = 0
    for i, s in enumerate(seeds):
        cached_grid(cache, s, device="cuda")  # rendered on the GPU first, as the reconstruction bench renders
        passed += camera_bench([s], "288x512", 8, 8, cache)[0]["pass"]
        print(f"{passed} of {i + 1} pass so far", flush=True)


if __name__ == "__main__":
    main()
