"""A model's answers checked against the outputs it declares (a manifest's `outputs`, or
the model's own, such as an ONNX model's): at warm-up, where a mismatch stops the start,
and on every answer served, where it fails that query alone with a message that says what
the model answered and what it declared, instead of passing a malformed answer on to
clients and to the ensemble's combining. A model that declares nothing is not checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common import named_tensors
from services.common.errors import ClipperError, InvalidInput
from services.common.tensors import NUMERIC_DTYPES, TensorSpec


@dataclass(frozen=True)
class AnswerCheck:
    """One declared output (`output_spec`), or named `outputs`, or neither."""

    output_spec: TensorSpec | None = None
    outputs: tuple[TensorSpec, ...] = ()

    @property
    def declared(self) -> str:
        """The declared outputs, for messages ("" when none)."""
        if self.outputs:
            return named_tensors.describe(self.outputs)
        return self.output_spec.describe() if self.output_spec is not None else ""

    def check(self, answer: Any) -> None:
        """Raise InvalidInput unless `answer` matches the declared output(s)."""
        if self.outputs:
            if not isinstance(answer, dict):
                raise InvalidInput(f"expected a dict of named outputs, got "
                                   f"{type(answer).__name__}")
            named_tensors.check_names(self.outputs, answer, "output")
            for spec in self.outputs:
                spec.check(np.asarray(answer[spec.name]))
        elif self.output_spec is not None:
            if isinstance(answer, dict):
                raise InvalidInput("expected one output, got a dict of named outputs")
            self.output_spec.check(np.asarray(answer))

    def served(self, answer: Any) -> None:
        """Raise ClipperError (INTERNAL: the model's fault, not the client's) unless
        `answer`, about to be served, matches the declared output(s)."""
        if self.outputs:
            if (isinstance(answer, dict) and len(answer) == len(self.outputs)
                    and all(s.name in answer and _fits(s, answer[s.name])
                            for s in self.outputs)):
                return
        elif self.output_spec is None or _fits(self.output_spec, answer):
            return
        try:
            self.check(answer)
        except InvalidInput as exc:
            raise ClipperError(f"the model's answer does not match its declared outputs "
                               f"({self.declared}): {exc}") from None


def _fits(spec: TensorSpec, value: Any) -> bool:
    """The common case, cheaply (on every answer): a numpy array or scalar of the spec's
    numeric dtype and shape. False sends the answer through the full check."""
    dtype, shape = NUMERIC_DTYPES.get(spec.dtype), getattr(value, "shape", None)
    return (dtype is not None and shape is not None and getattr(value, "dtype", None) == dtype
            and len(shape) == len(spec.shape)
            and all(want in (-1, have) for want, have in zip(spec.shape, shape, strict=True)))
