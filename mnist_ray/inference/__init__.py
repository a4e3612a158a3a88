"""Inference: checkpoint sources, the Ray Data scoring pipeline, batch prediction and serving exports."""
