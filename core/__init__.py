"""The 4D video engine: grids, run folders, video I/O, the synthetic world, the model, sampling,
training, evaluation and reconstruction. Importable without gradio or viser."""

__version__ = "0.1.0"
