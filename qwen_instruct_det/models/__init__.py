"""Qwen-VL models: what travels with one, loading, the trainable parts, batched inference, tiny models for CPU tests."""
