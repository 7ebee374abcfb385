from cl.approaches.base import ContinualApproach
from cl.approaches.blip import BLIP
from cl.approaches.independent import Independent
from cl.approaches.joint import Joint
from cl.approaches.lwf import LwF
from cl.approaches.sgd import SGD
from cl.approaches.sgd_frozen import SGDFrozen

__all__ = ["ContinualApproach", "BLIP", "SGD", "SGDFrozen", "Joint", "Independent", "LwF"]
