from cl.approaches.base import ContinualApproach
from cl.approaches.blip import BLIP
from cl.approaches.hat import HAT
from cl.approaches.independent import Independent
from cl.approaches.joint import Joint
from cl.approaches.sgd import SGD
from cl.approaches.sgd_frozen import SGDFrozen

__all__ = ["ContinualApproach", "BLIP", "HAT", "SGD", "SGDFrozen", "Joint", "Independent"]
