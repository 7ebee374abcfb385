"""The actor-critic of continual RL: one shared trunk (what the approaches protect) and, per game, an actor head
(logits over that game's actions) and a critic head (its value), as BLIP's official `QPolicy`."""
from __future__ import annotations

import torch
from torch import nn

from cl.config.options import Int, options


@options(features=Int(ge=1))
def nature_cnn(in_channels: int, features: int = 1024) -> nn.Sequential:
    """The official BLIP RL trunk on 84×84 frames: the Nature DQN convolutions with 128 filters in the third layer
    and a 1024-unit layer (docs/rl.md)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(128 * 7 * 7, features), nn.ReLU())


@options(filters=Int(ge=1), features=Int(ge=1))
def minatar_cnn(in_channels: int, filters: int = 16, features: int = 128) -> nn.Sequential:
    """The MinAtar paper's network on 10×10 object channels: one 3×3 convolution and a hidden layer."""
    return nn.Sequential(
        nn.Conv2d(in_channels, filters, 3, stride=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(filters * 8 * 8, features), nn.ReLU())


class ActorCritic(nn.Module):
    def __init__(self, trunk: nn.Module, obs_shape: tuple[int, ...], n_actions: list[int], obs_scale: float,
                 name: str = "actor_critic"):
        super().__init__()
        self.trunk, self.obs_scale, self.name = trunk, obs_scale, name
        with torch.no_grad():
            width = trunk(torch.zeros(1, *obs_shape)).shape[1]
        self.actors = nn.ModuleList(nn.Linear(width, n) for n in n_actions)
        self.critics = nn.ModuleList(nn.Linear(width, 1) for _ in n_actions)
        self._initialize()

    @torch.no_grad()
    def _initialize(self):
        """The official initialization: orthogonal with ReLU gain in the trunk, 0.01 for the actors (near-uniform
        first policies), 1 for the critics; biases 0."""
        gains = [(m, nn.init.calculate_gain("relu")) for m in self.trunk.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        gains += [(m, 0.01) for m in self.actors] + [(m, 1.0) for m in self.critics]
        for module, gain in gains:
            nn.init.orthogonal_(module.weight, gain=gain)
            nn.init.zeros_(module.bias)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.trunk(obs.float() / self.obs_scale)

    def logits(self, obs: torch.Tensor, task: int) -> torch.Tensor:
        return self.actors[task](self.features(obs))

    def forward(self, obs: torch.Tensor, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(action logits, value) of game `task` for uint8 observations."""
        h = self.features(obs)
        return self.actors[task](h), self.critics[task](h).squeeze(-1)
