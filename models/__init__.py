"""ONNX vision models: description, validation, golden check, pre/post-processing, engine, batcher, samples.

Importing `models` imports nothing heavy; onnxruntime is imported only by `models.engine`. See
docs/models.md for the public API and the design decisions.
"""
