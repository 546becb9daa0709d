"""Model container: the SDK users wrap a model with, and the runtime that serves it."""
