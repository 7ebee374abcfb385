from cl.models.mlp import MLP
from cl.models.network import TaskNetwork

__all__ = ["MLP", "TaskNetwork"]
