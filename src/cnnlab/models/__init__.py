"""Models: the LeNet family as plain ``nn.Module``s (no Lightning, no Hydra)."""

from cnnlab.models.lenet import ACTIVATIONS, POOLINGS, LayerShape, LeNet, plan_shapes

__all__ = ["ACTIVATIONS", "POOLINGS", "LayerShape", "LeNet", "plan_shapes"]
