from cl.approaches.agem import AGEM
from cl.approaches.base import ContinualApproach
from cl.approaches.bcl_dual import BCLDual
from cl.approaches.bcl_single import BCLSingle
from cl.approaches.blip import BLIP
from cl.approaches.er import ER
from cl.approaches.ewc import EWC
from cl.approaches.ftml import FTML
from cl.approaches.gem import GEM
from cl.approaches.hat import HAT
from cl.approaches.icarl import ICaRL
from cl.approaches.imm_mean import IMMMean
from cl.approaches.imm_mode import IMMMode
from cl.approaches.independent import Independent
from cl.approaches.joint import Joint
from cl.approaches.lwf import LwF
from cl.approaches.mas import MAS
from cl.approaches.mas_local import MASLocal
from cl.approaches.multimodal import Multimodal
from cl.approaches.online_ewc import OnlineEWC
from cl.approaches.sgd import SGD
from cl.approaches.sgd_frozen import SGDFrozen
from cl.approaches.si import SI

__all__ = ["AGEM", "BCLDual", "BCLSingle", "BLIP", "ContinualApproach", "ER", "EWC", "FTML", "GEM", "HAT", "ICaRL",
           "IMMMean", "IMMMode", "Independent", "Joint", "LwF", "MAS", "MASLocal", "Multimodal", "OnlineEWC", "SGD",
           "SGDFrozen", "SI"]
