"""Models: the LeNet family as plain ``nn.Module``s (no Lightning, no Hydra), and the layer walk."""

from cnnlab.models.lenet import ACTIVATIONS, POOLINGS, LeNet
from cnnlab.models.walk import LayerRow, layer_rows
from cnnlab.shapes import plan_layers

__all__ = ["ACTIVATIONS", "POOLINGS", "LayerRow", "LeNet", "layer_rows", "plan_layers"]
