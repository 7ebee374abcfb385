"""Fine-tuning: plain SGD on each task in turn, no protection against forgetting (the lower bound)."""
from cl.approaches.base import ContinualApproach


class SGD(ContinualApproach):
    pass
