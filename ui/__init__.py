"""Gradio tabs. Each module exposes `create_demo(...)` returning a Blocks that also runs alone."""
