"""Model container: the SDK users wrap a model with, and the runtime that serves it."""

# Separates the flags of the models one container process serves (each its own replica):
# `python -m services.model_container --model a ... --and --model b ...`.
MEMBER_SEPARATOR = "--and"
