"""The Gradio studio: inputs, generation, the scrubbable grid, exports and the 3D viewer panel."""
