"""The skeleton every Clay `evaluate` metric module shares: its texts and input features as class attributes, the
`MetricInfo` built from them, and the docstring `evaluate.inspect_evaluation_module` shows."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import datasets
import evaluate


class ClayMetric(evaluate.Metric, ABC):
    """An `evaluate` metric: a subclass sets `DESCRIPTION`, `KWARGS_DESCRIPTION`, `CITATION` and `FEATURES` and
    implements `_compute`. Abstract, so that `evaluate.load` picks the module's own class, never this one."""

    DESCRIPTION: ClassVar[str]
    KWARGS_DESCRIPTION: ClassVar[str]  # Args and Returns of `compute`
    CITATION: ClassVar[str]
    FEATURES: ClassVar[datasets.Features]  # one entry per example: predictions, references (and more)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "DESCRIPTION" in cls.__dict__:
            cls.__doc__ = cls.DESCRIPTION + cls.KWARGS_DESCRIPTION

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.DESCRIPTION,
            citation=self.CITATION,
            inputs_description=self.KWARGS_DESCRIPTION,
            features=self.FEATURES,
        )

    @abstractmethod
    def _compute(self, predictions: Any, references: Any, **kwargs: Any) -> dict[str, Any]:
        """The scores of all examples added so far."""


__all__ = ["ClayMetric"]
