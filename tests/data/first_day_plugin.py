"""A custom layer for the --plugin tests (tests/test_first_day.py): LeakyReLU, registered as
FirstDayLeakyReLU so it cannot clash with a layer gpucnn may add."""

from typing import Any

from gpucnn.backend import namespace
from gpucnn.layers import LAYERS, Layer


@LAYERS.register("FirstDayLeakyReLU")
class FirstDayLeakyReLU(Layer):
    """``x`` where positive, ``alpha * x`` elsewhere; any shape in, same shape out."""

    def __init__(self, alpha: float = 0.1, name: str | None = None):
        super().__init__(name)
        self.alpha = float(alpha)

    def forward(self, x, training: bool = False):
        self.check_input(x)
        xp = namespace(x)
        self._cache = x if training else None  # backward needs the sign of the input
        return xp.where(x > 0, x, self.alpha * x)

    def backward(self, grad_out, need_input_grad: bool = True):
        xp = namespace(grad_out)
        return xp.where(self._cache > 0, grad_out, self.alpha * grad_out)

    def onnx_nodes(self, graph: Any) -> None:  # makes the layer exportable
        graph.node("LeakyRelu", self, [], alpha=self.alpha)

    def get_config(self) -> dict[str, Any]:  # what the JSON file and saved models hold
        return {**super().get_config(), "alpha": self.alpha}
