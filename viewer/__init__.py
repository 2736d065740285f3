"""The viser 3D viewer of the studio: deformable Gaussians over time and the grid's cameras."""
